//! Redis driver for [lockkit](https://docs.rs/lockkit): `redis://` on one server,
//! `redis-cluster://` on a Redis Cluster and `redlock://` on a majority of N independent
//! servers — one code path: a script runs on an *instance*, which is one server's reconnecting
//! connection or the cluster's slot-following connection. Applications use it through
//! `lockkit::connect` with the facade's `redis` feature.
//!
//! - **URLs**: `redis://[user:password@]host[:6379][/db][?namespace=…&ttl=…&timeout=…]`,
//!   `redis-cluster://seed1:port,seed2:port[,…][?…]` (any nodes of the cluster; database 0) and
//!   `redlock://host1:port,host2:port,host3:port[/db][?…]` (an odd number, at least 3).
//!   The path is the database number, as in every Redis URL; the namespace is an option.
//!   `?fair=true` (not on redlock://) grants in arrival order: waiters queue inside the scripts
//!   (`K:{K}:queue`, entries expire one TTL after their waiter last asked), a release wakes only the
//!   first in line, and a plain acquire does not barge ahead of the line. Handles without
//!   `fair=true` on the same lock ignore the line (and may get ahead of it).
//!   `rediss://`, `rediss-cluster://` and `redlocks://` use TLS: the server is checked against the public roots,
//!   or against `?ca=/path/ca.pem`; `&cert=…&key=…` give a client certificate (mutual TLS).
//! - **Keys**: the lock `K` is the namespaced name as written (`[ns/]NAME`): only `%`, `/`,
//!   `{`, `}` and control characters are percent-encoded (`a{b}` is the key `a%7Bb%7D`), so a
//!   lock named `jobs:nightly` is the key `jobs:nightly`, and distinct names never share a key.
//!   Its helper keys start with `K` and carry the whole of `K` as their Redis Cluster hash
//!   tag — `K:{K}:fence`, `K:{K}:wakeup`, `K:{K}:queue`, `K:{K}:waiters`, channel
//!   `K:{K}:released` — so each script touches one slot, and an ACL user limited to
//!   `~app/*` and `&app/*` can lock in namespace `app`.
//! - **Grant**: one script per server does `SET K owner NX PX ttl` and, only on success, mints
//!   the fencing token `max(counter + 1, now_µs)` — `now_µs` the server's clock (`TIME`) in
//!   microseconds — and writes it back to `K:{K}:fence`. The lock key is a plain string holding
//!   the owner value (a random token, a space, the holder metadata), as redis-py's `Lock`
//!   holds its token, so `Lock(r, "jobs:nightly")` and lockkit's `jobs:nightly` exclude each
//!   other, and the metadata expires with the grant. A counter holding anything but a whole
//!   number below 2^53 − 1 (tokens stay at most 2^53 − 1) is an error naming the key (delete
//!   it), before anything is written.
//! - **Release / refresh**: compare-owner-then-DEL / PEXPIRE scripts, so no grant of another
//!   owner is ever deleted or extended. All locks of a handle are refreshed in one pipelined
//!   round trip per server per tick; a refresh that finds a key gone (or replaced by another
//!   type) fires that guard's loss, and an error for one key leaves the others refreshed.
//! - **Waiting**: a waiter registers in `K:{K}:wakeup` (ranked by arrival) and a release pops
//!   the first and PUBLISHes its owner value on `K:{K}:released`, so one release wakes one
//!   waiter however many wait. Each handle keeps one pub/sub connection per server, shared by
//!   all its waiters, and wakes only the waiter a message names; a subscribe is bounded by the
//!   per-server call timeout and holds up no other waiter, so a stopped Redlock server costs a
//!   new waiter at most that timeout. A waiter
//!   also wakes when the holder's TTL runs out (it knows the PTTL), and after a bounded,
//!   jittered fallback (TTL / 4, 50 ms – 1 s) in case a message was missed.
//! - **Redis Cluster**: the `redis` crate's cluster client reads the slots from the seeds,
//!   sends each script to the master of its lock's slot (every key of a lock is in that slot),
//!   follows MOVED and ASK, and refreshes the slots after a failover; a handle's refresh is one
//!   pipeline per slot. Releases wake with `SPUBLISH` and waiters listen with `SSUBSCRIBE`
//!   (sharded pub/sub, RESP3 pushes on the same connections), so a release reaches only the
//!   lock's shard, where a `PUBLISH` would be broadcast to every node. Needs Redis 7.0 on
//!   every master (checked at connect). A failover promotes a replica that may lack the last
//!   grant (replication is asynchronous): the lock can be granted again while the old holder
//!   has not yet heard of its loss, so two holders may overlap for up to a TTL; the new token
//!   is still above the old one (see **Data loss**), which is what a fenced resource checks.
//! - **Redlock**: an attempt goes to every server at once and succeeds on a majority within the
//!   validity time (TTL − elapsed − margin); otherwise the partial grants are deleted. The token
//!   is the maximum of the majority's counters, written back to every server before the guard
//!   is handed out, so any later majority overlaps one that has seen it.
//! - **Data loss**: a server that loses its data (`FLUSHALL`, a restart without persistence,
//!   an evicted `K:{K}:fence`, a failover to a replica that missed the last writes) loses its
//!   grants — holders are told at their next refresh — but tokens do not go back: the next
//!   one comes from the server clock, past every token minted before, as long as the clock of
//!   the server minting it is not behind the one that minted the last token by more than the
//!   time between the two grants. On one server that holds unless its clock is set back; on a
//!   failover the clock skew between master and replica is the bound, so keep them on NTP.
//!   With Redlock the same holds on each server, and the majority's maximum is written back.
//! - **Server**: Redis 5.0 or later (the scripts use `ZPOPMIN`, and read `TIME` before writing,
//!   which replicates safely with the effects replication of 5.0 on); an older server is a
//!   clear error at connect.
//! - **Cancel safety**: an acquire dropped mid-way deletes (compare-and-delete) any grant it may
//!   have made; a reply lost to a dropped connection is recovered by asking again (the script
//!   is idempotent for its owner).
#![deny(missing_docs, missing_debug_implementations)]

mod cluster;
mod config;
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
