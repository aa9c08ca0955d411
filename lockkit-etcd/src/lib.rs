//! etcd v3 driver for [lockkit](https://docs.rs/lockkit): `etcd://`. Applications use it
//! through `lockkit::connect` with the facade's `etcd` feature.
//!
#![doc = include_str!("../../docs/etcd.md")]
#![deny(missing_docs, missing_debug_implementations)]

mod config;
mod election;
mod error;
mod lease;
mod locks;
mod own_key;
mod rwlock;
mod semaphore;
mod watches;

use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions};
use lockkit_core::driver::LeasePool;
use lockkit_core::{DistributedLock, LockGuard, LockUrl, Result};

pub use crate::config::EtcdConfig;
use crate::error::{Class, EtcdError};
use crate::locks::EtcdLocks;
use crate::watches::Watches;
/// The etcd client this driver uses, for building transactions around [`ownership`].
pub use etcd_client;

const BACKEND: &str = "etcd";

/// Connects to an etcd cluster and checks that it answers and accepts the credentials.
pub async fn connect(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    connect_config(EtcdConfig::from_url(url)?).await
}

/// [`connect`] with a configuration read beforehand ([`EtcdConfig::from_url`]).
pub async fn connect_config(config: EtcdConfig) -> Result<Arc<dyn DistributedLock>> {
    let endpoints = config.endpoint_list();
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let addresses: Vec<String> = config.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect();
    let timeout = config.settings.timeout;
    let mut options = ConnectOptions::new().with_connect_timeout(timeout).with_keep_alive(timeout, timeout);
    if let Some(tls) = config.tls.map(tls_options) {
        options = options.with_tls(tls);
    }
    if let Some((user, password)) = &config.credentials {
        options = options.with_user(user, password.expose());
    }
    // Requests go to any live endpoint; until one answers (or the timeout), try again.
    let client = retry(timeout, &endpoints, || {
        let (addresses, options) = (addresses.clone(), options.clone());
        async move {
            let mut client = Client::connect(&addresses, Some(options)).await?;
            client.status().await?;
            Ok(client)
        }
    })
    .await?;
    Ok(Arc::new(EtcdLocks {
        endpoints,
        watches: Watches::new(client.clone(), timeout),
        client: Arc::new(client),
        pool: LeasePool::new(BACKEND, timeout),
        settings: config.settings,
        local: Default::default(),
    }))
}

/// TLS settings for `etcds://`: the `ca` to trust (else the public roots) and a client
/// certificate from `cert` and `key`.
fn tls_options(files: lockkit_core::driver::TlsFiles) -> etcd_client::TlsOptions {
    let mut tls = etcd_client::TlsOptions::new().with_webpki_roots();
    if let Some(ca) = files.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = files.identity {
        tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
    }
    tls
}

/// A comparison that holds only while `guard`'s grant is current — put it in your own etcd
/// transactions to write only while you still hold the lock:
/// `Txn::new().when([lockkit_etcd::ownership(&*locks, &guard)]).and_then([...])`.
pub fn ownership(locks: &dyn DistributedLock, guard: &LockGuard) -> Compare {
    let name = lockkit_core::LockName::new(guard.name()).expect("a guard's name is valid");
    let key = format!("{}/{}", locks.settings().namespace.key(&name), guard.lease().id());
    Compare::create_revision(key, CompareOp::Equal, guard.fencing_token().get() as i64)
}

/// Runs a unary call, bounded by `timeout`, trying again while it fails with connection trouble
/// (a dead member of the cluster), so that another member answers.
pub(crate) async fn retry<T, F, Fut>(
    timeout: std::time::Duration,
    endpoints: &str,
    call: F,
) -> std::result::Result<T, EtcdError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let pause = std::time::Duration::from_millis(50);
    let unreachable = |e: &etcd_client::Error| Class::of(e) == Class::Unreachable;
    lockkit_core::driver::retry_transient(timeout, pause, unreachable, call).await.map_err(|e| match e {
        Some(e) => EtcdError::new(endpoints, e),
        None => EtcdError::NoAnswer { endpoints: endpoints.to_owned(), timeout },
    })
}
