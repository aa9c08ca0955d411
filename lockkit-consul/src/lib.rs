//! Consul driver for [lockkit](https://docs.rs/lockkit): `consul://`, `consuls://` (HTTPS).
//! Applications use it through `lockkit::connect` with the facade's `consul` feature.
//!
#![doc = include_str!("../../docs/consul.md")]
#![deny(missing_docs, missing_debug_implementations)]

mod api;
mod grant;
mod locks;
mod session;

use std::sync::Arc;
use std::time::Duration;

use lockkit_core::driver::{LeasePool, Secret};
use lockkit_core::{DistributedLock, Error, LockUrl, Result, Settings};

use crate::api::Api;
use crate::locks::ConsulLocks;

const BACKEND: &str = "consul";

/// The flags `api.Lock` and `consul lock` put on a lock key.
pub const FLAGS: u64 = 0x2ddccbc058a50c18;

/// Consul's default lock-delay (and `consul lock`'s).
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// How long one blocking query waits unless `blocking_wait` says otherwise.
const DEFAULT_BLOCKING_WAIT: Duration = Duration::from_secs(60);

/// Connects to a Consul agent: creates the handle's first session, so a wrong address or ACL
/// token is an error here.
pub async fn connect(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    let mut options = vec!["lock_delay", "blocking_wait", "dc", "token"];
    options.extend_from_slice(lockkit_core::driver::TLS_OPTIONS);
    url.check_options(&options)?;
    let [host] = url.hosts() else {
        return Err(url.invalid("name one Consul agent: consul://127.0.0.1:8500 (the agent forwards to the servers)"));
    };
    if url.username().is_some() {
        return Err(
            url.invalid("Consul takes an ACL token, not a user: consul://host:8500?token=… or CONSUL_HTTP_TOKEN")
        );
    }
    let mut settings = Settings::from_url(url)?;
    let lock_delay = url.duration_option("lock_delay")?.unwrap_or(DEFAULT_LOCK_DELAY);
    if lock_delay > Duration::from_secs(60) {
        return Err(url.invalid("`lock_delay` can be at most 60s (Consul's limit)"));
    }
    // A session Consul ends without its holder hearing of it (its node deregistered, its agent
    // gone) frees the keys after the lock-delay: a guard may count as held no longer than that.
    settings.cap_validity(lock_delay).map_err(|reason| url.invalid(lock_delay_too_short(lock_delay, &reason)))?;
    let wait = url.duration_option("blocking_wait")?.unwrap_or(DEFAULT_BLOCKING_WAIT);
    if wait.is_zero() || wait > Duration::from_secs(600) {
        return Err(url.invalid("`blocking_wait` must be above zero and at most 10m (Consul's limit)"));
    }
    let token =
        url.option("token").map(Secret::new).or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok().map(Secret::new));
    let scheme = if url.tls() { "https" } else { "http" };
    let base = format!("{scheme}://{}", host.address(8500));
    let api = Api::new(http_client(url)?, base, token, url.option("dc").map(str::to_owned), settings.timeout);
    let pool = LeasePool::for_settings(BACKEND, &settings);
    let locks = ConsulLocks { api, lock_delay, wait, pool, local: Default::default(), settings };
    let ttl = locks.settings.ttl;
    locks.session(ttl, locks.settings.refresh_for(ttl)).await?;
    Ok(Arc::new(locks))
}

/// Why a `lock_delay` is refused, and what to set.
fn lock_delay_too_short(lock_delay: Duration, reason: &str) -> String {
    let shown = if lock_delay.is_zero() { "0s".to_owned() } else { format!("{lock_delay:?}") };
    format!(
        "`lock_delay={shown}` is too short: {reason}. When Consul ends a session without its holder \
         hearing of it (its node deregistered, its agent gone), only the lock-delay keeps others out, so a guard \
         counts as held for at most min(ttl, lock_delay) after its last renew and must be renewed well within \
         that. Set `lock_delay` to at least twice the refresh interval — the ttl is a good choice (Consul's \
         default is 15s, its maximum 60s)"
    )
}

/// An HTTP client; for `consuls://`, trusting the public roots or `?ca=`, with a client
/// certificate from `cert` and `key`.
fn http_client(url: &LockUrl) -> Result<reqwest::Client> {
    let files = url.tls_files()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(90));
    if let Some(ca) = &files.ca {
        let ca = reqwest::Certificate::from_pem(ca).map_err(|e| url.invalid(format!("the `ca` file: {e}")))?;
        builder = builder.add_root_certificate(ca);
    }
    if let Some((cert, key)) = &files.identity {
        let pem = [cert.as_slice(), key.as_slice()].concat();
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|e| url.invalid(format!("the `cert`/`key` files: {e}")))?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| Error::backend(BACKEND, format!("cannot build the HTTP client: {e}")))
}
