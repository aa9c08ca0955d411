//! ZooKeeper driver for [lockkit](https://docs.rs/lockkit): `zk://` (alias `zookeeper://`).
//! Applications use it through `lockkit::connect` with the facade's `zookeeper` feature.
//!
#![doc = include_str!("../../docs/zookeeper.md")]
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
