//! etcd v3 driver for [lockkit](https://docs.rs/lockkit): `etcd://`. Applications use it
//! through `lockkit::connect` with the facade's `etcd` feature.
//!
//! - **URL**: `etcd://[user:password@]host1:2379,host2:2379[/namespace][?ttl=…&timeout=…]`.
//!   Several endpoints are one cluster; requests go to any live one.
//! - **One lease per handle** (per TTL), granted on first use and kept alive by the core's
//!   refresh loop at TTL / 3 through one keep-alive stream; a keep-alive answering TTL 0 or
//!   "lease not found" loses the lease, fires every guard on it, and the next acquire grants a
//!   new one. etcd counts TTLs in whole seconds: a TTL is rounded up.
//! - **Key layout of Go's `concurrency.Mutex` and `etcdctl lock`**: lock `NAME` (after the
//!   namespace) is the prefix `NAME/`; each contender puts `NAME/<lease id in lowercase hex>`
//!   with its lease; the holder is the key with the lowest create revision. A lockkit guard and
//!   an `etcdctl lock NAME` exclude each other, both ways. The value is the holder metadata
//!   (`etcdctl` writes it empty; both are accepted).
//! - **Acquire** is one transaction (put-if-absent with the lease, plus a read of the first
//!   contender). A waiter watches its own key and **only its predecessor**, the latter from now
//!   (so etcd sends its deletion at once, not from its 100 ms catch-up loop): that watch covers
//!   the revisions after the one etcd reports at its creation, and when that is past the
//!   waiter's last read, one more read covers the gap. When woken, one read of its own key and the
//!   contender before it decides — a waiter paused past its lease never takes the lock. That
//!   read is serializable (served by the member without a Raft round), and linearizable only
//!   when the member has not reached the revision of the wake-up: deletions never come undone
//!   and no key can come before the waiter's, so a read that shows the waiter's key shows every
//!   contender before it. FIFO, no herd. The waiter's own-key watch becomes the guard's.
//! - **Fencing token** = the holder key's create revision.
//! - **Loss**: the guard watches its own key (all watches of a handle share one watch stream),
//!   so a deleted key or a revoked lease fires the loss signal at once. A released guard's
//!   watch stays, idle, for the next grant of the same name through the handle (at most 64
//!   per handle), so taking the same lock again makes no new watch. One task keeps the stream:
//!   when it breaks it reopens it, and each watch resumes from a fresh read of its key (a
//!   compaction since the watch began is no loss; a key gone meanwhile is).
//! - **Release** deletes the key only if its create revision is still the grant's, so a stale
//!   release never deletes a newer grant. A dropped or failed acquire deletes its waiter key
//!   (compared on its create revision too). Both are tried again until etcd confirms, for up
//!   to the request timeout; past it the handle gives the lease up (every guard on it fires,
//!   etcd ends the key with the lease, later acquires get a new lease), as it does when a put
//!   got no answer (it may still be applied). See `lockkit_core::driver::Cleanup`.
//! - **A waiter whose lease is lost** while it waits queues again on a new lease (the core does
//!   it for every backend, up to 3 times).
//! - **Force release** deletes the holder it read only if its key still has the create
//!   revision read, and reads again otherwise.
//! - **Same name twice through one handle**: the second acquire waits (in the process) until
//!   the first guard is released — both would use the same key — or gives `None` when trying.
//! - **TLS**: `etcds://` checks the server against the public roots, or against
//!   `?ca=/path/ca.pem`; `&cert=…&key=…` give a client certificate (etcd's `--client-cert-auth`).
#![deny(missing_docs, missing_debug_implementations)]

mod config;
mod error;
mod lease;
mod locks;
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
        client,
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
