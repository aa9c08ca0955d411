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
mod locks;
mod recipe;
mod session;

use std::sync::Arc;

use lockkit_core::driver::LeasePool;
use lockkit_core::{DistributedLock, Error, LockUrl, Namespace, Result, Settings};
use zookeeper_client::Acls;

use crate::locks::ZkLocks;
use crate::recipe::Recipe;
use crate::session::Connector;
/// The ZooKeeper client this driver uses.
pub use zookeeper_client;

const BACKEND: &str = "zookeeper";

/// Options of `zk://` URLs besides the common ones.
const OPTIONS: &[&str] = &["session_timeout", "recipe", "acl"];

/// Connects to a ZooKeeper ensemble: opens the handle's first session, so a wrong address or
/// an ensemble that does not answer is an error here.
pub async fn connect(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    url.check_options(OPTIONS)?;
    if url.hosts().is_empty() {
        return Err(url.invalid("name at least one server: zk://127.0.0.1:2181"));
    }
    if url.tls() {
        return Err(url.invalid("TLS is not supported for ZooKeeper yet; use zk://"));
    }
    let mut settings = Settings::from_url(url)?;
    if let Some(ttl) = url.duration_option("session_timeout")? {
        if url.option("ttl").is_some() {
            return Err(url.invalid("give `session_timeout` or `ttl`, not both: they are the same"));
        }
        settings.ttl = ttl;
    }
    settings.namespace = Namespace::new(url.option("namespace").unwrap_or(""));
    let digest = match (url.username(), url.password()) {
        (Some(user), Some(password)) => Some((user.to_owned(), password.clone())),
        (None, None) => None,
        _ => return Err(url.invalid("give both user and password: zk://user:password@host:2181")),
    };
    let acls = acls(url, digest.is_some())?;
    let endpoints = url.endpoints(2181);
    let locks = ZkLocks {
        connector: Connector { endpoints: endpoints.clone(), digest, timeout: settings.timeout },
        root: Namespace::new(url.path()),
        recipe: Recipe::from_url(url)?,
        acls,
        pool: LeasePool::new(BACKEND, settings.timeout),
        endpoints,
        settings,
    };
    locks.session(locks.settings.ttl, locks.settings.ttl / 3).await?;
    Ok(Arc::new(locks))
}

/// The `acl` option: who may touch the nodes the handle creates (see the crate docs).
fn acls(url: &LockUrl, authenticated: bool) -> Result<Acls<'static>> {
    match url.option("acl") {
        None | Some("open") => Ok(Acls::anyone_all()),
        Some("creator") if authenticated => Ok(Acls::creator_all()),
        Some("creator") => Err(url.invalid(
            "`acl=creator` gives the nodes to the handle's digest identity: give one, zk://user:password@host:2181",
        )),
        // Its value is not repeated: ZooKeeper's own ACL syntax (`digest:user:password`) holds secrets.
        Some(_) => Err(url.invalid("option `acl` takes `creator` or `open`")),
    }
}

/// Whether a request ended because its connection broke, so that nobody can tell whether the
/// server applied it: `ConnectionLoss`, or the I/O error or silence (`no response from
/// connection`) that ended the connection, which the client hands its requests in flight
/// as-is. The client reconnects by itself; the request may be tried again.
fn connection_broke(e: &zookeeper_client::Error) -> bool {
    matches!(e, zookeeper_client::Error::ConnectionLoss | zookeeper_client::Error::Custom(_))
}

/// Maps a client error: authentication, connection trouble (see [`connection_broke`]), or what
/// the server answered.
fn error(endpoints: &str, e: zookeeper_client::Error) -> Error {
    use zookeeper_client::Error as E;
    match e {
        E::AuthFailed | E::NoAuth => Error::Authentication {
            backend: BACKEND,
            endpoint: endpoints.to_owned(),
            message: format!("{e}; check the user and password (digest) and the nodes' ACLs"),
        },
        E::NoHosts | E::Timeout | E::ConnectionLoss | E::Custom(_) => {
            Error::connection(BACKEND, endpoints, format!("{e}; is ZooKeeper running there?"), Some(Box::new(e)))
        }
        E::SessionExpired | E::SessionMoved | E::ClientClosed => Error::Backend {
            backend: BACKEND,
            message: format!("ZooKeeper at {endpoints}: {e}"),
            temporary: true,
            source: Some(Box::new(e)),
        },
        _ => Error::Backend {
            backend: BACKEND,
            message: format!("ZooKeeper at {endpoints} answered: {e}"),
            temporary: false,
            source: Some(Box::new(e)),
        },
    }
}
