//! Consul driver for [lockkit](https://docs.rs/lockkit): `consul://`, `consuls://` (HTTPS).
//! Applications use it through `lockkit::connect` with the facade's `consul` feature.
//!
#![doc = include_str!("../../docs/consul.md")]
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
