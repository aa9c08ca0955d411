//! ZooKeeper driver for [lockkit](https://docs.rs/lockkit): `zk://` (alias `zookeeper://`).
//! Applications use it through `lockkit::connect` with the facade's `zookeeper` feature.
//!
//! - **URL**: `zk://[user:password@]host1:2181,host2:2181[/chroot][?namespace=…&session_timeout=…&timeout=…&recipe=…&acl=…]`.
//!   The path is a chroot: every lock lives under it (created as needed). `user:password` is
//!   ZooKeeper `digest` authentication. `session_timeout` is the TTL (`ttl` says the same).
//! - **ACLs** (`acl`): `open` (the default) creates every node — chroot, lock directories,
//!   contenders — readable and writable by anyone, as Curator and kazoo do by default; `creator`
//!   gives them to the handle's `digest` identity alone (ZooKeeper's `auth` ACL, so it needs
//!   `user:password`): clients without those credentials can neither read a lock nor delete or
//!   change its nodes (ZooKeeper checks a delete against the parent's ACL, so a lock directory
//!   made earlier by an `open` handle stays open to deletes). `open` stays the default even with credentials, because changing it would
//!   lock out the peers that share the locks today: Curator or kazoo services (open by default)
//!   and lockkit handles with other credentials or none would no longer be able to list a lock
//!   directory a `creator` handle made. Give `acl=creator` to every handle sharing the locks
//!   (with the same credentials) once all of them can have it.
//! - **One session per handle** (per TTL), opened at connect. Its state drives every guard:
//!   a disconnection makes them *suspect* — `is_held()` turns false once the session timeout
//!   has passed since the last round trip confirmed by the leader (a `sync`: a follower cut off
//!   from its quorum still answers reads for a while) — a reconnection in time clears that, and
//!   `Expired`/`Closed`/`AuthFailed` fire every guard's loss signal. A session the handle gives
//!   up or loses is closed for real (nothing else holds its client), so its nodes go with it.
//!   Later acquires open a new session.
//! - **Recipe of Apache Curator's `InterProcessMutex`**: lock `NAME` is the directory
//!   `/chroot/namespace/NAME`; each contender creates an ephemeral sequential node
//!   `_c_<uuid>-lock-<seq>` there, the lowest sequence holds the lock, and each waiter watches
//!   **only its predecessor** — FIFO, no herd. A Curator `InterProcessMutex` on the same path
//!   and a lockkit guard exclude each other. `recipe=kazoo` uses kazoo's `Lock` layout
//!   (`<uuid>__lock__<seq>`) instead.
//! - **Fencing token** = the `czxid` of the holder's node (global and monotonic, unlike
//!   sequence numbers, which restart when a directory is re-created).
//! - **Cancellation and lost replies** (Curator's protected mode): every acquire, and every
//!   retry of it on a new session, names its node with a new uuid. A create whose reply is lost
//!   finds its node again by that uuid, after a `sync` (a server behind the leader could miss
//!   it and the acquire would queue a second node behind its first); every node with the uuid
//!   is the acquire's own — the earliest is its place, the others are deleted. A dropped or
//!   failed acquire deletes its node through `lockkit_core::driver::Cleanup` (ZooKeeper runs one
//!   session's requests in order, so the delete always comes after the create). A waiter whose
//!   connection drops asks again once the session reconnects, until the session is lost.
//! - **Loss**: the guard watches its own node; deleted behind its back → loss signal.
//! - **Release** deletes the node without a version check (as Curator does: a foreign
//!   `setData` must not keep it; its path, unique to the acquire, makes it the guard's), one
//!   attempt at a time, repeated by the core until confirmed. Lock directories are container
//!   nodes, which ZooKeeper removes once they are empty (as Curator does).
//! - **Holder metadata** is the node's data.
//! - **Same name twice through one handle**: the second acquire waits in line behind the
//!   first, like any other contender (or gives `None` when trying).
#![deny(missing_docs, missing_debug_implementations)]

mod acquire;
mod config;
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
