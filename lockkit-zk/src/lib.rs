//! ZooKeeper driver for [lockkit](https://docs.rs/lockkit): `zk://` (alias `zookeeper://`).
//! Applications use it through `lockkit::connect` with the facade's `zookeeper` feature.
//!
#![doc = include_str!("../../docs/zookeeper.md")]
#![deny(missing_docs, missing_debug_implementations)]

mod acquire;
mod config;
mod election;
mod error;
mod locks;
mod recipe;
mod session;

use std::sync::Arc;

use lockkit_core::driver::LeasePool;
use lockkit_core::{DistributedLock, LockUrl, Result};
use zookeeper_client::Acls;

pub use crate::config::{Acl, ZkConfig};
use crate::locks::ZkLocks;
pub use crate::recipe::Recipe;
use crate::session::Connector;
/// The ZooKeeper client this driver uses.
pub use zookeeper_client;

const BACKEND: &str = "zookeeper";

/// Connects to a ZooKeeper ensemble: opens the handle's first session, so a wrong address or
/// an ensemble that does not answer is an error here.
pub async fn connect(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    connect_config(ZkConfig::from_url(url)?).await
}

/// [`connect`] with a configuration read beforehand ([`ZkConfig::from_url`]).
pub async fn connect_config(config: ZkConfig) -> Result<Arc<dyn DistributedLock>> {
    let endpoints = config.servers.join(",");
    let settings = config.settings;
    let locks = ZkLocks {
        connector: Connector { endpoints: endpoints.clone(), digest: config.digest, timeout: settings.timeout },
        root: config.chroot,
        recipe: config.recipe,
        acls: match config.acl {
            Acl::Open => Acls::anyone_all(),
            Acl::Creator => Acls::creator_all(),
        },
        pool: LeasePool::new(BACKEND, settings.timeout),
        endpoints,
        settings,
    };
    locks.session(locks.settings.ttl, locks.settings.ttl / 3).await?;
    Ok(Arc::new(locks))
}
