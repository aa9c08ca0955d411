//! etcd v3 driver for [lockkit](https://docs.rs/lockkit): `etcd://`. Applications use it
//! through `lockkit::connect` with the facade's `etcd` feature.
//!
#![doc = include_str!("../../docs/etcd.md")]
#![deny(missing_docs, missing_debug_implementations)]

mod lease;
mod locks;
mod watches;

use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions};
use lockkit_core::driver::LeasePool;
use lockkit_core::{DistributedLock, Error, LockGuard, LockUrl, Result, Settings};

use crate::locks::EtcdLocks;

use crate::watches::Watches;
/// The etcd client this driver uses, for building transactions around [`ownership`].
pub use etcd_client;

const BACKEND: &str = "etcd";

/// Connects to an etcd cluster and checks that it answers and accepts the credentials.
pub async fn connect(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    url.check_options(lockkit_core::driver::TLS_OPTIONS)?;
    if url.hosts().is_empty() {
        return Err(url.invalid("name at least one endpoint: etcd://127.0.0.1:2379"));
    }
    let settings = Settings::from_url(url)?;
    let endpoints = url.endpoints(2379);
    let scheme = if url.tls() { "https" } else { "http" };
    let addresses: Vec<String> = url.hosts().iter().map(|h| format!("{scheme}://{}", h.address(2379))).collect();
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.timeout)
        .with_keep_alive(settings.timeout, settings.timeout);
    if let Some(tls) = tls_options(url)? {
        options = options.with_tls(tls);
    }
    match (url.username(), url.password()) {
        (Some(user), Some(password)) => options = options.with_user(user, password.expose()),
        (None, None) => {}
        _ => return Err(url.invalid("give both user and password: etcd://user:password@host:2379")),
    }
    // Requests go to any live endpoint; until one answers (or the timeout), try again.
    let client = retry(settings.timeout, &endpoints, || {
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
        watches: Watches::new(client.clone(), settings.timeout),
        client,
        pool: LeasePool::new(BACKEND, settings.timeout),
        settings,
        local: Default::default(),
    }))
}

/// TLS settings for `etcds://`: the `ca` to trust (else the public roots) and a client
/// certificate from `cert` and `key`.
fn tls_options(url: &LockUrl) -> Result<Option<etcd_client::TlsOptions>> {
    let files = url.tls_files()?;
    if !url.tls() {
        return Ok(None);
    }
    let mut tls = etcd_client::TlsOptions::new().with_webpki_roots();
    if let Some(ca) = files.ca {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = files.identity {
        tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
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
pub(crate) async fn retry<T, F, Fut>(timeout: std::time::Duration, endpoints: &str, call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let pause = std::time::Duration::from_millis(50);
    lockkit_core::driver::retry_transient(timeout, pause, is_transient, call).await.map_err(|e| match e {
        Some(e) => error(endpoints, e),
        None => Error::connection(
            BACKEND,
            endpoints,
            format!("no answer within {timeout:?}; is etcd running there, and the `timeout` option long enough?"),
            None,
        ),
    })
}

/// Whether a client error is connection trouble that another try may get past (and after which
/// a request's outcome is unknown).
pub(crate) fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(status) => transport_status(status.code() as i32, std::error::Error::source(status).is_some()),
        _ => false,
    }
}

/// Whether a gRPC status (its `code`, and whether it has a `source`) says the request may not
/// have reached etcd or its answer got lost: etcd's own "unavailable" and "deadline exceeded",
/// or a status the client made of a transport failure (a broken connection: it carries that
/// failure as its source; statuses etcd sends carry none).
fn transport_status(code: i32, has_source: bool) -> bool {
    [grpc::UNAVAILABLE, grpc::DEADLINE_EXCEEDED].contains(&code) || code == grpc::UNKNOWN && has_source
}

/// Whether etcd said the lease is gone: its "requested lease not found" (gRPC NOT_FOUND), or
/// the client's own error when a keep-alive stream opens on a lease that is gone.
pub(crate) fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.code() as i32 == grpc::NOT_FOUND,
        etcd_client::Error::LeaseKeepAliveError(message) => message == "lease not found",
        _ => false,
    }
}

/// [`is_lease_not_found`] for a driver error, from the client error it was made of.
pub(crate) fn lost_its_lease(e: &Error) -> bool {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<etcd_client::Error>()).is_some_and(is_lease_not_found)
}

/// Maps a client error: authentication, connection trouble, or what the server answered.
fn error(endpoints: &str, e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    let text = e.to_string();
    match &e {
        E::GRpcStatus(status)
            if status.code() as i32 == grpc::UNAUTHENTICATED
                || text.contains("authentication failed")
                || text.contains("invalid auth token")
                || text.contains("permission denied") =>
        {
            Error::Authentication {
                backend: BACKEND,
                endpoint: endpoints.to_owned(),
                message: status.message().to_owned(),
            }
        }
        E::GRpcStatus(status) if is_transient(&e) => Error::connection(
            BACKEND,
            endpoints,
            format!("{}; is etcd running there?", status.message()),
            Some(Box::new(e)),
        ),
        E::TransportError(_) | E::IoError(_) => {
            Error::connection(BACKEND, endpoints, format!("{text}; is etcd running there?"), Some(Box::new(e)))
        }
        _ => Error::Backend {
            backend: BACKEND,
            message: format!("etcd at {endpoints} answered: {text}"),
            temporary: false,
            source: Some(Box::new(e)),
        },
    }
}

/// The gRPC status codes the mapping needs (their numbers are fixed by the gRPC spec).
mod grpc {
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}
