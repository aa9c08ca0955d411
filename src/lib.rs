//! # lockkit
//!
//! One distributed-lock API over many coordination backends, chosen by URL: an application
//! reads a URL from its configuration and locks through the same API whatever the backend is.
//!
//! | URL | backend | driver |
//! |---|---|---|
//! | `memory://[store][/namespace]` | in-process | built in |
//! | `file:///dir[?namespace=…&mode=0600]` | OS advisory file locks on one host | built in |
//! | `etcd://`, `zk://`, `consul://`, `redis://`, `redis-cluster://`, `redlock://` | network backends | cargo features |
//!
//! Every backend gives the same guarantees where it can (see
//! [`DistributedLock::capabilities`]): server-minted [`FencingToken`]s that strictly increase
//! per lock name, a loss signal on every guard, RAII guards kept alive in the background,
//! cancel-safe acquires.
//!
//! | to … | use |
//! |---|---|
//! | get a handle from a URL | [`connect`] (or [`connect_from_env`]) |
//! | take a lock | [`DistributedLock::acquire`], [`try_acquire`](DistributedLock::try_acquire), [`acquire_timeout`](DistributedLock::acquire_timeout), [`acquire_with`](DistributedLock::acquire_with) + [`LockOptions`] |
//! | use a held lock | [`LockGuard`]: [`fencing_token`](LockGuard::fencing_token), [`run_while_held`](LockGuard::run_while_held), [`release`](LockGuard::release) |
//! | notice a loss | [`LockGuard::lost`], [`LockGuard::loss_signal`] ([`LossSignal`]) |
//! | see or break a lock | [`DistributedLock::status`], [`DistributedLock::force_release`] |
//! | elect a leader | [`DistributedLock::campaign`] → [`Leadership`] ([`term`](Leadership::term), [`proclaim`](Leadership::proclaim), [`run_while_leader`](Leadership::run_while_leader), [`resign`](Leadership::resign)); [`DistributedLock::leader`], [`DistributedLock::observe`] ([`LeaderChanges`]) |
//! | unit-test your application | `memory://` ([`memory`]) |
//! | write a driver | `lockkit_core::driver` (implement `LockBackend`) and the `lockkit-testkit` crate |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> lockkit::Result<()> {
//! use lockkit::DistributedLock;
//!
//! let locks = lockkit::connect("memory://").await?;
//! let guard = locks.acquire("nightly-report").await?;
//! let token = guard.fencing_token(); // send it with every write to the protected resource
//! let rows = guard.run_while_held(async { /* cancelled at once if the lock is lost */ 7 }).await?;
//! guard.release().await?;
//! # let _ = (token, rows); Ok(()) }
//! ```
#![deny(missing_docs, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;

/// The Consul driver.
#[cfg(feature = "consul")]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub use lockkit_consul as consul;
pub use lockkit_core::{
    COMMON_OPTIONS, Capabilities, DistributedLock, Error, FencingToken, GrantKind, Holding, Leader, LeaderChanges,
    Leadership, Lease, LockGuard, LockName, LockOptions, LockStatus, LockUrl, LossSignal, MAX_NAME_LEN, Result, RwLock,
    Scheme, Semaphore, Settings, Wait, default_holder, parse_duration,
};
pub use lockkit_core::{file, memory};
/// The etcd driver's extras (e.g. `ownership`, for guarding your own transactions).
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use lockkit_etcd as etcd;
/// The Redis driver.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use lockkit_redis as redis;
/// The ZooKeeper driver.
#[cfg(feature = "zookeeper")]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub use lockkit_zk as zookeeper;

/// The environment variable [`connect_from_env`] reads.
pub const URL_ENV: &str = "LOCKKIT_URL";

/// Connects to the backend a URL names.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = lockkit::connect("mysql://db").await.unwrap_err();
/// assert!(err.to_string().contains("unknown lock URL scheme `mysql`"));
/// # }
/// ```
///
/// # Errors
/// [`Error::InvalidUrl`] for a malformed URL or option, [`Error::UnknownScheme`],
/// [`Error::FeatureDisabled`] when the scheme's driver is not compiled in, and the driver's
/// connection errors.
pub async fn connect(url: &str) -> Result<Arc<dyn DistributedLock>> {
    connect_url(&LockUrl::parse(url)?).await
}

/// Connects to the backend a parsed URL names.
pub async fn connect_url(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    match url.scheme() {
        Scheme::Memory => memory::connect(url),
        Scheme::File => file::connect(url),
        #[cfg(feature = "etcd")]
        Scheme::Etcd => lockkit_etcd::connect(url).await,
        #[cfg(feature = "redis")]
        Scheme::Redis | Scheme::Redlock | Scheme::RedisCluster => lockkit_redis::connect(url).await,
        #[cfg(feature = "zookeeper")]
        Scheme::ZooKeeper => lockkit_zk::connect(url).await,
        #[cfg(feature = "consul")]
        Scheme::Consul => lockkit_consul::connect(url).await,
        other => Err(Error::FeatureDisabled {
            scheme: url.scheme_str().to_owned(),
            feature: other.feature().unwrap_or("unknown"),
        }),
    }
}

/// Connects to the URL in the `LOCKKIT_URL` environment variable.
///
/// # Errors
/// [`Error::InvalidUrl`] when the variable is unset or not Unicode, and whatever [`connect`]
/// returns.
pub async fn connect_from_env() -> Result<Arc<dyn DistributedLock>> {
    let url = std::env::var(URL_ENV).map_err(|e| Error::InvalidUrl {
        url: format!("${URL_ENV}"),
        reason: format!("{e}; set {URL_ENV} to a lock URL such as memory:// or etcd://127.0.0.1:2379"),
    })?;
    connect(&url).await
}

/// The README's examples, run as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
