//! Redis driver for [lockkit](https://docs.rs/lockkit): `redis://` on one server,
//! `redis-cluster://` on a Redis Cluster and `redlock://` on a majority of N independent
//! servers — one code path: a script runs on an *instance*, which is one server's reconnecting
//! connection or the cluster's slot-following connection. Applications use it through
//! `lockkit::connect` with the facade's `redis` feature.
//!
#![doc = include_str!("../../docs/redis.md")]
#![deny(missing_docs, missing_debug_implementations)]

mod cluster;
mod fence;
mod instance;
mod locks;
mod quorum;
mod scripts;
mod version;
mod wakeups;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lockkit_core::driver::LeasePool;
use lockkit_core::{DistributedLock, Error, LockUrl, Namespace, Result, Scheme, Settings};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::instance::Instance;
use crate::locks::RedisLocks;
use crate::quorum::Quorum;
use crate::wakeups::{Feed, Wakeups};

/// The backend name of single-server errors.
const BACKEND: &str = "redis";
/// The backend name of Redis Cluster errors.
const CLUSTER: &str = "redis-cluster";

/// Connects to `redis://`, `redis-cluster://` or `redlock://`; checks that enough servers
/// answer and accept the credentials.
pub async fn connect(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    url.check_options(&[lockkit_core::driver::TLS_OPTIONS, &["fair"]].concat())?;
    let scheme = url.scheme();
    let redlock = scheme == Scheme::Redlock;
    let hosts = url.hosts();
    if hosts.is_empty() {
        return Err(url.invalid(match scheme {
            Scheme::RedisCluster => "name the seed nodes: redis-cluster://127.0.0.1:7000,127.0.0.1:7001",
            _ => "name the server: redis://127.0.0.1:6379",
        }));
    }
    if scheme == Scheme::Redis && hosts.len() > 1 {
        return Err(url.invalid(
            "redis:// takes one server; for a Redis Cluster use redis-cluster://h1,h2,…, \
             for a majority of independent servers redlock://h1,h2,h3",
        ));
    }
    if redlock && (hosts.len() < 3 || hosts.len().is_multiple_of(2)) {
        return Err(url.invalid("redlock:// needs an odd number of independent servers, at least 3"));
    }
    let certificates = tls_certificates(url)?;
    let fair = match url.option("fair") {
        None | Some("false") => false,
        Some("true") if !redlock => true,
        Some("true") => {
            return Err(url
                .invalid("`fair=true` is for redis:// and redis-cluster://; Redlock grants by majority, not in line"));
        }
        Some(other) => return Err(url.invalid(format!("`fair` is true or false, not `{other}`"))),
    };
    let db = match url.path().trim_start_matches('/') {
        "" => 0,
        db => db.parse::<i64>().map_err(|_| {
            url.invalid(format!(
                "the path of a Redis URL is the database number, not `{db}`; set a namespace with ?namespace="
            ))
        })?,
    };
    if scheme == Scheme::RedisCluster && db != 0 {
        return Err(url.invalid("a Redis Cluster has only database 0; set a namespace with ?namespace="));
    }
    let mut settings = Settings::from_url(url)?;
    settings.namespace = Namespace::new(url.option("namespace").unwrap_or(""));
    // Redlock bounds each server's answer well below the TTL, so one dead server cannot eat
    // the validity time.
    let call_timeout = if redlock {
        settings.timeout.min((settings.ttl / 10).max(Duration::from_millis(50)))
    } else {
        settings.timeout
    };
    let mut redis_settings = RedisConnectionInfo::default().set_db(db);
    if let Some(user) = url.username() {
        redis_settings = redis_settings.set_username(user);
    }
    if let Some(password) = url.password() {
        redis_settings = redis_settings.set_password(password.expose());
    }
    let backend = match scheme {
        Scheme::Redlock => "redlock",
        Scheme::RedisCluster => CLUSTER,
        _ => BACKEND,
    };
    let (instances, feeds) = match scheme {
        Scheme::RedisCluster => {
            let (instance, feed) =
                cluster::connect(url, &redis_settings, certificates, settings.timeout, call_timeout).await?;
            (vec![instance], vec![feed])
        }
        _ => servers(url, backend, &redis_settings, certificates, settings.timeout, call_timeout)?,
    };
    let wakeups = Wakeups::start(feeds, settings.timeout, call_timeout);
    let quorum = Quorum {
        needed: instances.len() / 2 + 1,
        backend,
        fair,
        sharded: scheme == Scheme::RedisCluster,
        wakeups,
        instances,
    };
    let pings = join_all(quorum.instances.iter().map(Instance::check)).await;
    // Wrong credentials or too old a server: trying again will not help.
    if let Some(i) = pings.iter().position(|p| matches!(p, Err(e) if !e.is_temporary())) {
        return Err(pings.into_iter().nth(i).and_then(Result::err).expect("an error"));
    }
    let answered = pings.iter().filter(|p| p.is_ok()).count();
    if answered < quorum.needed {
        let first = pings.into_iter().find_map(Result::err).expect("an error");
        if quorum.instances.len() == 1 {
            return Err(first);
        }
        return Err(Error::connection(
            "redlock",
            url.endpoints(6379),
            format!(
                "only {answered} of {} servers answered, and Redlock needs {}; first error: {first}",
                quorum.instances.len(),
                quorum.needed
            ),
            None,
        ));
    }
    Ok(Arc::new(RedisLocks {
        pool: LeasePool::new(quorum.backend, settings.timeout),
        settings,
        quorum: Arc::new(quorum),
        holdings: Default::default(),
    }))
}

/// The independent servers of `redis://` (one) or `redlock://` (several): lazily connecting
/// instances, and the feeds of their pub/sub messages.
fn servers(
    url: &LockUrl,
    backend: &'static str,
    redis_settings: &RedisConnectionInfo,
    certificates: Option<redis::TlsCertificates>,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> Result<(Vec<Instance>, Vec<Feed>)> {
    let mut instances = Vec::new();
    let mut feeds = Vec::new();
    for host in url.hosts() {
        let address = host.address(6379);
        let (name, port) = (host.host.clone(), host.port.unwrap_or(6379));
        let addr = match url.tls() {
            true => ConnectionAddr::TcpTls { host: name, port, insecure: false, tls_params: None },
            false => ConnectionAddr::Tcp(name, port),
        };
        let info = addr
            .into_connection_info()
            .map_err(|e| instance::error(backend, &address, e))?
            .set_redis_settings(redis_settings.clone());
        let client = match &certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
            None => redis::Client::open(info),
        }
        .map_err(|e| instance::error(backend, &address, e))?;
        feeds.push(Feed::Server(Box::new(client.clone())));
        instances.push(Instance::server(backend, address, client, connect_timeout, call_timeout)?);
    }
    Ok((instances, feeds))
}

/// The CA and client certificate of the `ca`, `cert` and `key` options; `None` when there are
/// none (public roots are used).
fn tls_certificates(url: &LockUrl) -> Result<Option<redis::TlsCertificates>> {
    let files = url.tls_files()?;
    if url.tls() {
        // The redis client's rustls has no crypto provider of its own; one per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client_tls = files.identity.map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key });
    Ok((files.ca.is_some() || client_tls.is_some())
        .then_some(redis::TlsCertificates { client_tls, root_cert: files.ca }))
}
