//! What only the Redis Cluster backend does: sharded wake-ups, clear errors for a URL of the
//! wrong kind, and a failover during contention. The conformance suite runs on the cluster too
//! (`tests/conformance.rs`, line `redis_cluster`).
#![cfg(feature = "redis")]

mod failover;

use std::time::{Duration, Instant};

use lockkit::Error;
use lockkit_testkit::servers::{RedisCluster, Server, redis_cli, shared_redis_cluster_url};
use lockkit_testkit::support::{connect, unique};

/// The ports of the running cluster nodes, from the shared cluster's URL.
fn ports(url: &str) -> Vec<u16> {
    let hosts = url.trim_start_matches("redis-cluster://");
    hosts.split(',').map(|h| h.rsplit_once(':').unwrap().1.parse().unwrap()).collect()
}

/// How often a node ran `command` (from `INFO commandstats`).
fn calls(port: u16, command: &str) -> u64 {
    let stats = redis_cli(port, &["INFO", "commandstats"]).unwrap_or_default();
    let prefix = format!("cmdstat_{command}:calls=");
    let calls = stats.lines().find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned));
    calls.and_then(|c| c.split(',').next()?.parse().ok()).unwrap_or(0)
}

/// Handoffs on a cluster lock are woken by sharded pub/sub: each waiter gets the lock within
/// milliseconds of the release (the fallback retry would take 0.5–1 s with this TTL), and the
/// releases publish with SPUBLISH on the lock's own shard only, never with a PUBLISH that
/// every node would broadcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_wake_waiters_by_sharded_pubsub_on_the_locks_shard_only() {
    let url = shared_redis_cluster_url();
    let namespace = unique("c");
    let locks_url = format!("{url}?ttl=30s&namespace={namespace}");
    let (holder, waiter) = (connect(&locks_url).await, connect(&locks_url).await);
    let key = format!("{namespace}/handoff");
    let nodes = ports(&url);
    let before: Vec<(u64, u64)> = nodes.iter().map(|p| (calls(*p, "spublish"), calls(*p, "publish"))).collect();
    for round in 0..5 {
        let guard = holder.acquire("handoff").await.unwrap();
        let waiter = waiter.clone();
        let waiting = tokio::spawn(async move {
            let guard = waiter.acquire("handoff").await.unwrap();
            let woken = Instant::now();
            guard.release().await.unwrap();
            woken
        });
        lockkit_testkit::support::in_line(holder.as_ref(), "handoff", 1).await;
        let released = Instant::now();
        guard.release().await.unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
        let handoff = woken.duration_since(released);
        assert!(
            handoff < Duration::from_millis(300),
            "round {round}: handoff took {handoff:?}: not woken by a message"
        );
    }
    // Only the lock's own master ran SPUBLISH (its replica hears it over the cluster bus);
    // the other masters saw nothing, and no node ran a PUBLISH, which every node broadcasts.
    let after: Vec<(u64, u64)> = nodes.iter().map(|p| (calls(*p, "spublish"), calls(*p, "publish"))).collect();
    let master = RedisCluster::master_port(nodes[0], &key);
    for ((port, (s0, p0)), (s1, p1)) in nodes.iter().zip(&before).zip(&after) {
        assert_eq!(p1, p0, "node {port} ran PUBLISH: a release broadcast to the whole cluster");
        let is_master = redis_cli(*port, &["ROLE"]).is_some_and(|role| role.starts_with("master"));
        match *port == master {
            true => assert!(s1 - s0 >= 5, "the lock's master {port} ran {} SPUBLISH for 5 releases", s1 - s0),
            false if is_master => assert_eq!(s1, s0, "master {port} of another shard ran SPUBLISH"),
            false => {}
        }
    }
}

/// redis-py's cluster client, one call in a fresh process: `RedisCluster(port).lock(key,
/// timeout=2).acquire(blocking=False)`, printed (the lock is left to its timeout).
async fn redis_py_cluster_try(port: u16, key: &str) -> String {
    let code = "import sys; from redis.cluster import RedisCluster; \
                r = RedisCluster(host='127.0.0.1', port=int(sys.argv[1])); \
                print(r.lock(sys.argv[2], timeout=2).acquire(blocking=False))";
    let output = tokio::process::Command::new("python3")
        .args(["-c", code, &port.to_string(), key])
        .output()
        .await
        .expect("python3 with redis-py (scripts/install-deps installs it)");
    assert!(output.status.success(), "redis-py: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// On a cluster too, redis-py's `Lock` and lockkit's lock of the same name are one key and
/// exclude each other, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_cluster_locks_and_lockkit_exclude_each_other() {
    let url = shared_redis_cluster_url();
    let port = ports(&url)[0];
    let name = format!("jobs:{}", unique("nightly"));
    let locks = connect(&format!("{url}?ttl=2s")).await;
    let guard = locks.acquire(&name).await.unwrap();
    assert_eq!(redis_py_cluster_try(port, &name).await, "False", "redis-py got a lock lockkit holds");
    guard.release().await.unwrap();
    assert_eq!(redis_py_cluster_try(port, &name).await, "True", "redis-py did not get a free lock");
    assert!(locks.try_acquire(&name).await.unwrap().is_none(), "lockkit got a lock redis-py holds");
}

/// `rediss-cluster://` speaks TLS to every node it learns of, checking each certificate
/// against `?ca=`: locks on all three shards are granted, a release wakes a waiter (sharded
/// pub/sub over TLS), and without the CA the connect fails on the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_uses_tls_to_every_node() {
    let certs = tempfile::tempdir().unwrap();
    lockkit_testkit::servers::make_certificates(certs.path());
    let ca = certs.path().join("ca.crt").display().to_string();
    let cluster = RedisCluster::start_tls(certs.path());
    let url = format!("{}?ca={ca}&ttl=30s", cluster.url());
    assert!(url.starts_with("rediss-cluster://"), "{url}");
    let (locks, waiter) = (connect(&url).await, connect(&url).await);
    // `redis-cli --cluster create` gives the three masters these slot ranges.
    let shards = [0..5461, 5461..10923, 10923..16384];
    for shard in shards {
        let name = (0..).map(|i| format!("tls-{i}")).find(|n| shard.contains(&slot(n))).unwrap();
        let guard = locks.acquire(&name).await.unwrap_or_else(|e| panic!("{name} on slot {}: {e}", slot(&name)));
        let waiter = waiter.clone();
        let waiting = tokio::spawn(async move { waiter.acquire(&name).await.map(|g| g.fencing_token()) });
        lockkit_testkit::support::in_line(locks.as_ref(), guard.name(), 1).await;
        let first = guard.fencing_token();
        guard.release().await.unwrap();
        // Woken by the message: the fallback retry would take 0.5–1 s with this TTL.
        let next = tokio::time::timeout(Duration::from_millis(400), waiting).await.expect("woken by the release");
        assert!(next.unwrap().unwrap() > first);
    }
    let without_ca = cluster.url() + "?timeout=2s";
    let err = lockkit::connect(&without_ca).await.expect_err("an untrusted certificate");
    assert!(err.to_string().to_lowercase().contains("certificate") || err.to_string().contains("Issuer"), "{err}");
}

/// The cluster slot of a key (CRC16 of the key, as Redis computes it).
fn slot(key: &str) -> u16 {
    let mut crc: u16 = 0;
    for byte in key.bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

/// A `redis-cluster://` URL that names a single (non-cluster) server fails at connect and says
/// so, rather than at the first lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_naming_a_single_server_says_it_is_not_a_cluster() {
    let server = Server::redis();
    let err = lockkit::connect(&format!("redis-cluster://127.0.0.1:{}", server.port)).await.expect_err("an error");
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
    assert!(err.to_string().contains("not a Redis Cluster node"), "{err}");
    assert!(err.to_string().contains("redis://"), "the error names the right scheme: {err}");
}

/// A `redis://` URL that names one node of a cluster: a lock whose slot another node serves
/// fails with an error that points at `redis-cluster://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_url_naming_a_cluster_node_points_at_the_cluster_scheme() {
    let url = shared_redis_cluster_url();
    let nodes = ports(&url);
    let namespace = unique("c");
    let key = format!("{namespace}/moved");
    let master = RedisCluster::master_port(nodes[0], &key);
    let other = *nodes.iter().find(|p| **p != master).unwrap();
    let locks = connect(&format!("redis://127.0.0.1:{other}?namespace={namespace}")).await;
    let err = locks.try_acquire("moved").await.expect_err("the node redirects");
    assert!(err.to_string().contains("redis-cluster://"), "{err}");
}

/// Other wrong cluster URLs are refused at connect with what to write instead.
#[tokio::test]
async fn cluster_urls_are_checked() {
    for (url, expected) in [
        ("redis-cluster://", "name the seed nodes"),
        ("redis-cluster://127.0.0.1:1/3", "only database 0"),
        ("redis://127.0.0.1:1,127.0.0.1:2", "redis-cluster://"),
    ] {
        let err = lockkit::connect(url).await.err().unwrap_or_else(|| panic!("{url} connected"));
        assert!(err.to_string().contains(expected), "{url}: {err}");
    }
}
