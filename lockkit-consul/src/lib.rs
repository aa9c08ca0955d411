//! Consul driver for [lockkit](https://docs.rs/lockkit): `consul://`, `consuls://` (HTTPS).
//! Applications use it through `lockkit::connect` with the facade's `consul` feature.
//!
//! - **URL**: `consul://host:8500[/namespace][?ttl=15s&lock_delay=…&dc=…&token=…&timeout=…]`.
//!   The ACL token comes from `token` or else `CONSUL_HTTP_TOKEN`; it is sent as
//!   `X-Consul-Token` and never shown. `blocking_wait` (default 60 s, at most 10 min) is how
//!   long one blocking query waits; shorten it when a proxy between lockkit and Consul cuts
//!   requests idle for longer. A blocking query may take `timeout` + its wait + wait / 16
//!   (Consul's jitter).
//! - **One session per handle** (per TTL): `Behavior: release`, no node checks, `LockDelay`
//!   from `lock_delay` (default 15 s), created at connect and renewed by the core's refresh loop.
//! - **A guard counts as held for min(TTL, `lock_delay`) after its last confirmed renew was
//!   sent**, minus the core's safety margin. Consul can end a session before its TTL without
//!   the holder hearing of it (its node deregistered; a client agent leaving on SIGTERM); from
//!   then on only the lock-delay keeps others out of its keys, so a guard must not outlive it.
//!   Renews come every third of that (or every `refresh`, which must be at most half of it);
//!   a `lock_delay` too short for that (`0s`, below 100 ms, below twice `refresh`) is an error
//!   at connect. A renew answering 404 loses the session at once: every guard on it fires, and
//!   the next acquire creates a new one. Consul accepts TTLs from 10 s (its `session_ttl_min`)
//!   to 24 h.
//! - **Key layout of `consul lock PREFIX`**: lock `NAME` is the key `[ns/]NAME/.lock`, acquired
//!   with `?acquire=<session>` and flags `0x2ddccbc058a50c18` (`api.Lock`'s); a key with other
//!   flags is a conflict (a clear error). The value is the holder metadata. Only the `consul
//!   lock` command appends `/.lock` to its prefix; Go's `api.Lock` uses its `Key` as given, so
//!   lock `nightly` in namespace `jobs` is `consul lock jobs/nightly`'s lock, and a Go program's
//!   with `Key: "jobs/nightly/.lock"`.
//! - **Waiting** uses blocking queries on the key (with jitter), not polling; an index that goes
//!   backwards starts over. Every waiter is woken by a release (Consul has no queue): not fair.
//!   In the lock-delay after a holder's session ended (acquire refused with nobody holding), a
//!   waiter retries after growing pauses (50 ms doubling up to 1 s: the delay in force is the
//!   previous holder's, which Consul does not tell).
//! - **Requests** that Consul's rate limiter refuses (429, 503: nothing applied) are sent again
//!   after growing pauses, for up to the request timeout.
//! - **An acquire that goes unanswered** (no answer within the timeout, a cut connection, a 5xx)
//!   may still be applied by Consul later, after any release sent behind it: the handle then
//!   gives its session up (its other guards fire their loss signals, the session is destroyed)
//!   and later acquires get a new one — the rule of `lockkit_core::driver::Cleanup`. An acquire that
//!   was answered, then failed or was dropped, releases its key.
//! - **Fencing token** = the key's `ModifyIndex` just after the acquire (a Raft index).
//! - **Loss**: the guard watches its key with blocking queries: deleted, released or taken
//!   behind its back → loss signal.
//! - **Release** is `?release=<session>` (no lock-delay for the next holder), retried by the
//!   core until confirmed; if it cannot be confirmed in time the session is given up, and its
//!   revoke releases every key not confirmed released before destroying it. Closing the handle
//!   releases its keys and destroys its session.
//! - **Same name twice through one handle**: the second acquire waits (in the process) for the
//!   first guard — Consul would grant one session the same key twice.
#![deny(missing_docs, missing_debug_implementations)]

mod api;
mod config;
mod error;
mod grant;
mod locks;
mod session;

use std::sync::Arc;
use std::time::Duration;

use lockkit_core::driver::LeasePool;
use lockkit_core::{DistributedLock, Error, LockUrl, Result};

use crate::api::Api;
pub use crate::config::ConsulConfig;
use crate::locks::ConsulLocks;

const BACKEND: &str = "consul";

/// The flags `api.Lock` and `consul lock` put on a lock key.
pub const FLAGS: u64 = 0x2ddccbc058a50c18;

/// Connects to a Consul agent: creates the handle's first session, so a wrong address or ACL
/// token is an error here.
pub async fn connect(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    connect_config(ConsulConfig::from_url(url)?).await
}

/// [`connect`] with a URL already read.
pub async fn connect_config(config: ConsulConfig) -> Result<Arc<dyn DistributedLock>> {
    let ConsulConfig { settings, token, datacenter, lock_delay, blocking_wait, .. } = &config;
    let api = Api::new(http_client(&config)?, config.base(), token.clone(), datacenter.clone(), settings.timeout);
    let pool = LeasePool::for_settings(BACKEND, settings);
    let locks = ConsulLocks {
        api,
        lock_delay: *lock_delay,
        wait: *blocking_wait,
        pool,
        local: Default::default(),
        settings: config.settings,
    };
    let ttl = locks.settings.ttl;
    locks.session(ttl, locks.settings.refresh_for(ttl)).await?;
    Ok(Arc::new(locks))
}

/// An HTTP client; for `consuls://`, trusting the public roots or `?ca=`, with a client
/// certificate from `cert` and `key`.
fn http_client(config: &ConsulConfig) -> Result<reqwest::Client> {
    let invalid = |reason: String| Error::InvalidUrl { url: config.settings.url.clone(), reason };
    let files = &config.tls_files;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(90));
    if let Some(ca) = &files.ca {
        let ca = reqwest::Certificate::from_pem(ca).map_err(|e| invalid(format!("the `ca` file: {e}")))?;
        builder = builder.add_root_certificate(ca);
    }
    if let Some((cert, key)) = &files.identity {
        let pem = [cert.as_slice(), key.as_slice()].concat();
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|e| invalid(format!("the `cert`/`key` files: {e}")))?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| Error::backend(BACKEND, format!("cannot build the HTTP client: {e}")))
}
