//! Redis driver for [lockkit](https://docs.rs/lockkit): `redis://` on one server,
//! `redis-cluster://` on a Redis Cluster and `redlock://` on a majority of N independent
//! servers — one code path: a script runs on an *instance*, which is one server's reconnecting
//! connection or the cluster's slot-following connection. Applications use it through
//! `lockkit::connect` with the facade's `redis` feature.
//!
#![doc = include_str!("../../docs/redis.md")]
#![deny(missing_docs, missing_debug_implementations)]

mod cluster;
mod config;
mod election;
mod error;
mod fence;
mod instance;
mod locks;
mod quorum;
mod scripts;
mod version;
mod wakeups;

use std::sync::Arc;

use futures_util::future::join_all;
use lockkit_core::driver::LeasePool;
use lockkit_core::{DistributedLock, Error, LockUrl, Result, Scheme};
use redis::{IntoConnectionInfo, RedisConnectionInfo};

pub use crate::config::RedisConfig;
use crate::error::error;
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
    connect_config(RedisConfig::from_url(url)?).await
}

/// [`connect`] with a URL already read.
pub async fn connect_config(config: RedisConfig) -> Result<Arc<dyn DistributedLock>> {
    let mut redis_settings = RedisConnectionInfo::default().set_db(config.db);
    if let Some(user) = &config.username {
        redis_settings = redis_settings.set_username(user);
    }
    if let Some(password) = &config.password {
        redis_settings = redis_settings.set_password(password.expose());
    }
    let certificates = tls_certificates(&config);
    let (instances, feeds) = match config.scheme {
        Scheme::RedisCluster => {
            let (instance, feed) = cluster::connect(&config, &redis_settings, certificates).await?;
            (vec![instance], vec![feed])
        }
        _ => servers(&config, &redis_settings, certificates)?,
    };
    let wakeups = Wakeups::start(feeds, config.settings.timeout, config.call_timeout);
    let quorum = Quorum {
        needed: instances.len() / 2 + 1,
        backend: config.backend(),
        fair: config.fair,
        sharded: config.scheme == Scheme::RedisCluster,
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
            config.endpoints(),
            format!(
                "only {answered} of {} servers answered, and Redlock needs {}; first error: {first}",
                quorum.instances.len(),
                quorum.needed
            ),
            None,
        ));
    }
    Ok(Arc::new(RedisLocks {
        pool: LeasePool::new(quorum.backend, config.settings.timeout),
        settings: config.settings,
        quorum: Arc::new(quorum),
        holdings: Default::default(),
    }))
}

/// The independent servers of `redis://` (one) or `redlock://` (several): lazily connecting
/// instances, and the feeds of their pub/sub messages.
fn servers(
    config: &RedisConfig,
    redis_settings: &RedisConnectionInfo,
    certificates: Option<redis::TlsCertificates>,
) -> Result<(Vec<Instance>, Vec<Feed>)> {
    let backend = config.backend();
    let mut instances = Vec::new();
    let mut feeds = Vec::new();
    for host in &config.servers {
        let address = RedisConfig::address(host);
        let info = config
            .connection_addr(host)
            .into_connection_info()
            .map_err(|e| error(backend, &address, e))?
            .set_redis_settings(redis_settings.clone());
        let client = match &certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
            None => redis::Client::open(info),
        }
        .map_err(|e| error(backend, &address, e))?;
        feeds.push(Feed::Server(Box::new(client.clone())));
        instances.push(Instance::server(backend, address, client, config.settings.timeout, config.call_timeout)?);
    }
    Ok((instances, feeds))
}

/// The CA and client certificate of the `ca`, `cert` and `key` options; `None` when there are
/// none (public roots are used).
fn tls_certificates(config: &RedisConfig) -> Option<redis::TlsCertificates> {
    if config.tls {
        // The redis client's rustls has no crypto provider of its own; one per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let files = config.tls_files.clone();
    let client_tls = files.identity.map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key });
    (files.ca.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates { client_tls, root_cert: files.ca })
}
