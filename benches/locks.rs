//! Lock latency and handoff benchmark for every compiled backend: `cargo bench --bench locks`.
//!
//! - uncontended: acquire + release of one lock by one client, p50 / p99;
//! - contended: C contenders, each on its own connection, loop acquire → release on one lock
//!   for a fixed time. A *handoff* is a grant to a different contender than the previous
//!   holder; its latency runs from the previous holder's release call to the grant.
//!   Reported: grants/s, handoffs/s, handoff p50 / p99, how often the lock changed hands, and
//!   the p50 of the release calls (a handoff takes at least the release's round trip).
//!
//! - etcd, ZooKeeper and Consul (measured against the Consul API double in the test tree, not a
//!   real Consul): a raw-client baseline and one raw round trip in the same run. Contended etcd
//!   and ZooKeeper rows compare the handoff with what it is made of: the holder's release (a
//!   guarded delete) plus the waiter's check read, both made as the drivers make them by a
//!   probe on a connection of its own. The probe runs during the row, paced so as to add
//!   little load: those are round trips under the load the handoffs see, which is what
//!   "within 2 round trips" is measured against. It also runs unloaded right before and right
//!   after the row (a shared machine's speed drifts), for scale.
//! - Redis: a raw-client baseline in the same run (the same round trips made directly with the
//!   `redis` crate), one raw round trip (PING), and the server commands per grant while
//!   contended (from `INFO stats`); each contended row also shows its ratio to the p50 of PINGs
//!   made right before and right after it.
//!
//! `LOCKKIT_BENCH_SECONDS` sets the contended run time per row (default 2);
//! `LOCKKIT_BENCH_HOLD_MS` how long each contender holds the lock (default 0: back to back, so
//! the releaser's next acquire writes while the handoff runs);
//! `LOCKKIT_BENCH_ONLY=zookeeper,consul` runs only those backends (names as in the table).
//! Servers are started like the tests start them (`scripts/install-deps` installs them).

#[path = "../tests/conformance/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockkit::DistributedLock;

struct Row {
    backend: String,
    case: String,
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
    changed_hands: Option<f64>,
    commands_per_grant: Option<f64>,
    /// Contended rows: the p50 of the release calls (the release's round trip under load).
    release_p50: Option<Duration>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("LOCKKIT_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let only = std::env::var("LOCKKIT_BENCH_ONLY").unwrap_or_default();
    let wanted = |backend: &str| only.is_empty() || only.split(',').any(|b| b == backend);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut targets = vec![
        ("memory".to_owned(), "memory://bench".to_owned(), None),
        ("file".to_owned(), format!("file://{}", dir.path().display()), None::<Probe>),
    ];
    targets.retain(|(backend, ..)| wanted(backend));
    let mut rows = Vec::new();
    #[cfg(feature = "redis")]
    let _redis_servers = if wanted("redis") {
        Some({
            let servers: Vec<servers::Server> = (0..5).map(|_| servers::Server::redis()).collect();
            let single = format!("redis://127.0.0.1:{}", servers[0].port);
            let quorum: Vec<String> = servers.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
            rows.extend(redis_raw::baseline(&single, 2000).await);
            targets.push(("redis".to_owned(), single.clone(), Some(Probe::Redis(single.clone()))));
            targets.push(("redis fair=true".to_owned(), format!("{single}?fair=true"), Some(Probe::Redis(single))));
            targets.push(("redlock (5)".to_owned(), format!("redlock://{}", quorum.join(",")), None));
            servers
        })
    } else {
        None
    };
    #[cfg(feature = "etcd")]
    let _etcd_server = if wanted("etcd") {
        Some({
            let server = servers::Server::etcd();
            let url = format!("etcd://127.0.0.1:{}", server.port);
            rows.extend(etcd_raw::baseline(&url, server.port, 1000).await);
            targets.push(("etcd".to_owned(), url, Some(Probe::Etcd(server.port))));
            server
        })
    } else {
        None
    };
    #[cfg(feature = "zookeeper")]
    let _zk_server = if wanted("zookeeper") {
        Some({
            let server = servers::Server::zookeeper();
            let url = format!("zk://127.0.0.1:{}", server.port);
            rows.extend(zk_raw::baseline(&url, server.port, 1000).await);
            targets.push(("zookeeper".to_owned(), url, Some(Probe::Zookeeper(server.port))));
            server
        })
    } else {
        None
    };
    #[cfg(feature = "consul")]
    let _consul_double = if wanted("consul") {
        Some({
            let double = servers::consul_double::ConsulDouble::start(servers::consul_double::Config::default());
            let url = format!("consul://{}", double.addr);
            rows.extend(consul_raw::baseline(&url, double.addr, 1000).await);
            targets.push(("consul (double)".to_owned(), url, None));
            double
        })
    } else {
        None
    };
    for (backend, url, probe) in &targets {
        rows.push(uncontended(backend, url, 2000).await);
        for contenders in [4, 16] {
            rows.push(contended(backend, url, probe.as_ref(), contenders, Duration::from_secs(seconds)).await);
        }
    }
    println!("\n| backend | case | ops/s | p50 | p99 | changed hands | server cmds/grant | release p50 |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let dash = || "–".to_owned();
    for r in rows {
        let changed = r.changed_hands.map_or_else(dash, |c| format!("{:.0} %", c * 100.0));
        let commands = r.commands_per_grant.map_or_else(dash, |c| format!("{c:.1}"));
        let release = r.release_p50.map_or_else(dash, micros);
        println!(
            "| {} | {} | {:.0} | {} | {} | {changed} | {commands} | {release} |",
            r.backend,
            r.case,
            r.ops_per_sec,
            micros(r.p50),
            micros(r.p99)
        );
    }
}

/// The same round trips as the Redis driver's, made directly with the `redis` crate.
#[cfg(feature = "redis")]
mod redis_raw {
    use super::*;

    const RELEASE: &str =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

    /// Raw SET NX PX + compare-and-delete, one raw round trip, and lockkit's acquire+release,
    /// interleaved iteration by iteration so that all three see the same machine load.
    pub async fn baseline(url: &str, iterations: usize) -> Vec<Row> {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let release = redis::Script::new(RELEASE);
        let locks = connect(url).await;
        let [raw, trip, ours] = interleave(iterations, async || {
            let t = Instant::now();
            let _: Option<String> = redis::cmd("SET")
                .arg("raw-bench")
                .arg("owner")
                .arg("NX")
                .arg("PX")
                .arg(15000)
                .query_async(&mut conn)
                .await
                .unwrap();
            let _: i64 = release.key("raw-bench").arg("owner").invoke_async(&mut conn).await.unwrap();
            let raw = t.elapsed();
            let t = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            let trip = t.elapsed();
            let t = Instant::now();
            locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
            [raw, trip, t.elapsed()]
        })
        .await;
        baseline_rows("redis", "SET NX PX + compare-and-delete", "one round trip (PING)", raw, trip, ours)
    }

    /// The p50 of `iterations` PINGs on a fresh connection.
    pub async fn ping_p50(url: &str, iterations: usize) -> Duration {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
            samples.push(t.elapsed());
        }
        percentiles(&mut samples).0
    }

    /// Commands the server has processed so far.
    pub async fn commands(url: &str) -> u64 {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

async fn connect(url: &str) -> Arc<dyn DistributedLock> {
    lockkit::connect(url).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn uncontended(backend: &str, url: &str, iterations: usize) -> Row {
    let locks = connect(url).await;
    let name = format!("uncontended-{}", lockkit_core::random_u64());
    for _ in 0..iterations / 10 {
        locks.acquire(&name).await.unwrap().release().await.unwrap();
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let guard = locks.acquire(&name).await.unwrap();
        guard.release().await.unwrap();
        samples.push(t.elapsed());
    }
    row(backend, "uncontended acquire+release", samples, None, None)
}

/// Who released last and when: the next grant to someone else is a handoff.
struct LastRelease {
    holder: usize,
    at: Instant,
}

/// `probe`: the server whose unloaded round trips are measured right before and after, and
/// during the run (etcd, ZooKeeper) its round trips under the same load (for Redis, its
/// commands are counted during the run).
async fn contended(backend: &str, url: &str, probe: Option<&Probe>, contenders: usize, run: Duration) -> Row {
    let name = format!("contended-{}", lockkit_core::random_u64());
    let hold =
        Duration::from_millis(std::env::var("LOCKKIT_BENCH_HOLD_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(0));
    let last = Arc::new(Mutex::new(LastRelease { holder: usize::MAX, at: Instant::now() }));
    let handoffs = Arc::new(Mutex::new(Vec::new()));
    let releases = Arc::new(Mutex::new(Vec::new()));
    let grants = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut connections = Vec::new();
    for _ in 0..contenders {
        connections.push(connect(url).await);
    }
    let trips_before = round_trips_p50(probe, Sampling::Unloaded(300)).await;
    let commands_before = command_count(probe).await;
    let deadline = Instant::now() + run;
    let during = probe.cloned().map(|p| {
        let sampling = Sampling::During(deadline, name.clone());
        tokio::spawn(async move { round_trips_p50(Some(&p), sampling).await })
    });
    let mut tasks = Vec::new();
    for (me, locks) in connections.into_iter().enumerate() {
        let (name, last, handoffs, grants) = (name.clone(), last.clone(), handoffs.clone(), grants.clone());
        let releases = releases.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok(guard) = locks.acquire_timeout(&name, Duration::from_secs(5)).await else { continue };
                let granted = Instant::now();
                grants.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                {
                    let mut last = last.lock().unwrap();
                    if last.holder != me && last.holder != usize::MAX {
                        handoffs.lock().unwrap().push(granted - last.at);
                    }
                    last.holder = me;
                }
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                last.lock().unwrap().at = Instant::now();
                let released = Instant::now();
                guard.release().await.unwrap();
                releases.lock().unwrap().push(released.elapsed());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let during = match during {
        Some(probe) => probe.await.unwrap(),
        None => None,
    };
    let grants = grants.load(std::sync::atomic::Ordering::Relaxed);
    let commands = command_count(probe)
        .await
        .zip(commands_before)
        .map(|(after, before)| (after - before) as f64 / grants.max(1) as f64);
    let samples = handoffs.lock().unwrap().clone();
    let changed = samples.len() as f64 / grants.max(1) as f64;
    let handoffs_per_sec = samples.len() as f64 / run.as_secs_f64();
    let mut row = row(backend, &format!("{contenders} contenders: handoffs"), samples, Some(changed), commands);
    row.release_p50 = Some(percentiles(&mut releases.lock().unwrap()).0);
    // The machine's speed drifts: compare with unloaded round trips right before and after.
    if let Some((before, after)) = trips_before.zip(round_trips_p50(probe, Sampling::Unloaded(300)).await) {
        row.case = format!("{} ({})", row.case, compare(row.p50, &before, &after, during.as_ref()));
    }
    row.ops_per_sec = handoffs_per_sec;
    row
}

/// The same writes as the etcd driver's, made directly with `etcd-client`: a put-if-absent
/// transaction with an existing lease (reading the first contender, as the driver does), then
/// a delete; interleaved with lockkit's acquire+release.
#[cfg(feature = "etcd")]
mod etcd_raw {
    use lockkit::etcd::etcd_client::{
        Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchFilterType,
        WatchOptions,
    };

    use super::*;

    pub async fn baseline(url: &str, port: u16, iterations: usize) -> Vec<Row> {
        let mut client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
        let lease = client.lease_grant(60, None).await.unwrap().id();
        let locks = connect(url).await;
        let key = format!("raw-bench/{lease:x}");
        let first = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let [raw, trip, ours] = interleave(iterations, async || {
            let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([
                TxnOp::put(key.clone(), "", Some(PutOptions::new().with_lease(lease))),
                TxnOp::get("raw-bench/", Some(first.clone())),
            ]);
            let t = Instant::now();
            client.txn(txn).await.unwrap();
            client.delete(key.clone(), None).await.unwrap();
            let raw = t.elapsed();
            let t = Instant::now();
            client.get("raw-bench/none", None).await.unwrap();
            let trip = t.elapsed();
            let t = Instant::now();
            locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
            [raw, trip, t.elapsed()]
        })
        .await;
        let mut rows = baseline_rows(
            "etcd",
            "txn put-if-absent (existing lease) + delete",
            "one round trip (GET)",
            raw,
            trip,
            ours,
        );
        let write = async || client.put("raw-bench-write", "x", None).await.map(drop).unwrap();
        rows.insert(2, round_trips("etcd raw", "one write round trip (put)", iterations, write).await);
        rows
    }

    /// The p50s of the holder's release (a compare-create-revision delete of a key put just
    /// before, which a watch waits for, as a waiter's does) and of the waiter's read (a
    /// serializable range, newest first, two keys), on a connection of their own.
    pub async fn trips(port: u16, sampling: Sampling) -> Trips {
        let mut client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
        let deletions = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
        let (_watcher, mut events) = client.watch("raw-bench/probe", Some(deletions)).await.unwrap().split();
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} });
        let around = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_serializable()
            .with_limit(2);
        let write = || {
            let mut client = client.clone();
            async move {
                let put = client.put("raw-bench/probe", "x", None).await.unwrap();
                let revision = put.header().unwrap().revision();
                let t = Instant::now();
                let only_mine = Compare::create_revision("raw-bench/probe", CompareOp::Equal, revision);
                let release = Txn::new().when([only_mine]).and_then([TxnOp::delete("raw-bench/probe", None)]);
                assert!(client.txn(release).await.unwrap().succeeded());
                t.elapsed()
            }
        };
        let prefix = sampling.lock().map_or("raw-bench/".to_owned(), |lock| format!("{lock}/"));
        let read = || {
            let (mut client, around, prefix) = (client.clone(), around.clone(), prefix.clone());
            async move { client.get(prefix, Some(around)).await.map(drop).unwrap() }
        };
        let trips = paired_trips(&sampling, write, read).await;
        drain.abort();
        trips
    }
}

/// The same requests as the ZooKeeper driver's, made directly with `zookeeper-client`: create
/// an ephemeral sequential node, list the directory, delete the node; interleaved with lockkit's
/// acquire+release.
#[cfg(feature = "zookeeper")]
mod zk_raw {
    use lockkit::zookeeper::zookeeper_client::{Acls, Client, CreateMode};

    use super::*;

    pub async fn baseline(url: &str, port: u16, iterations: usize) -> Vec<Row> {
        let client = Client::connect(&format!("127.0.0.1:{port}")).await.unwrap();
        let directory = CreateMode::Persistent.with_acls(Acls::anyone_all());
        client.create("/raw-bench", &[], &directory).await.unwrap();
        let node = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let locks = connect(url).await;
        let [raw, trip, ours] = interleave(iterations, async || {
            let t = Instant::now();
            let (_, sequence) = client.create("/raw-bench/n-", b"holder", &node).await.unwrap();
            client.list_children("/raw-bench").await.unwrap();
            client.delete(&format!("/raw-bench/n-{sequence}"), None).await.unwrap();
            let raw = t.elapsed();
            let t = Instant::now();
            client.check_stat("/raw-bench").await.unwrap();
            let trip = t.elapsed();
            let t = Instant::now();
            locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
            [raw, trip, t.elapsed()]
        })
        .await;
        let mut rows = baseline_rows(
            "zookeeper",
            "create ephemeral-sequential + list + delete",
            "one round trip (exists)",
            raw,
            trip,
            ours,
        );
        let write = async || client.set_data("/raw-bench", b"x", None).await.map(drop).unwrap();
        rows.insert(2, round_trips("zookeeper raw", "one write round trip (setData)", iterations, write).await);
        rows
    }

    /// The p50s of the holder's release (a versioned delete of a node created just before) and
    /// of the waiter's read (a list of the lock's directory), on a session of their own.
    pub async fn trips(port: u16, sampling: Sampling) -> Trips {
        let client = Client::connect(&format!("127.0.0.1:{port}")).await.unwrap();
        let node = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
        let write = || {
            let (client, node) = (client.clone(), node.clone());
            async move {
                let (stat, _) = client.create("/raw-bench/probe", b"x", &node).await.unwrap();
                let t = Instant::now();
                client.delete("/raw-bench/probe", Some(stat.version)).await.unwrap();
                t.elapsed()
            }
        };
        let directory = format!("/{}", sampling.lock().unwrap_or("raw-bench"));
        let read = || {
            let (client, directory) = (client.clone(), directory.clone());
            async move {
                // Before the first acquire the lock's directory may not exist yet: still a read.
                let _ = client.list_children(&directory).await;
            }
        };
        paired_trips(&sampling, write, read).await
    }
}

/// The same HTTP calls as the Consul driver's, made directly with reqwest against the same
/// Consul API **double** (not Consul): read the key, acquire it with a session, read its index,
/// release it; interleaved with lockkit's acquire+release.
#[cfg(feature = "consul")]
mod consul_raw {
    use super::*;

    pub async fn baseline(url: &str, addr: std::net::SocketAddr, iterations: usize) -> Vec<Row> {
        // reqwest is built without a default TLS provider (the driver picks ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        let spec = r#"{"TTL": "60s", "Behavior": "release", "NodeChecks": []}"#;
        let created = http.put(format!("{base}/v1/session/create")).body(spec).send().await.unwrap();
        let created: serde_json::Value = serde_json::from_slice(&created.bytes().await.unwrap()).unwrap();
        let session = created["ID"].as_str().unwrap().to_owned();
        let key = format!("{base}/v1/kv/raw-bench/.lock");
        let flags = lockkit::consul::FLAGS;
        let locks = connect(url).await;
        let [raw, trip, ours] = interleave(iterations, async || {
            let t = Instant::now();
            http.get(&key).send().await.unwrap().bytes().await.unwrap();
            let acquire = format!("{key}?acquire={session}&flags={flags}");
            http.put(acquire).body("holder").send().await.unwrap().bytes().await.unwrap();
            http.get(&key).send().await.unwrap().bytes().await.unwrap();
            let release = format!("{key}?release={session}&flags={flags}");
            http.put(release).send().await.unwrap().bytes().await.unwrap();
            let raw = t.elapsed();
            let t = Instant::now();
            http.get(&key).send().await.unwrap().bytes().await.unwrap();
            let trip = t.elapsed();
            let t = Instant::now();
            locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
            [raw, trip, t.elapsed()]
        })
        .await;
        let case = "GET + PUT ?acquire + GET + PUT ?release";
        baseline_rows("consul (double)", case, "one round trip (GET)", raw, trip, ours)
    }
}

/// Runs `step` (raw operation, raw round trip, lockkit's acquire+release) `iterations` times
/// after a 10 % warm-up, so that all three see the same machine load.
#[cfg(any(feature = "redis", feature = "etcd", feature = "zookeeper", feature = "consul"))]
async fn interleave(iterations: usize, mut step: impl AsyncFnMut() -> [Duration; 3]) -> [Vec<Duration>; 3] {
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..iterations + iterations / 10 {
        let taken = step().await;
        if i >= iterations / 10 {
            for (column, sample) in samples.iter_mut().zip(taken) {
                column.push(sample);
            }
        }
    }
    samples
}

/// One raw write, `iterations` times: a handoff includes a write (the holder's delete), so
/// this gives its scale.
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
async fn round_trips(backend: &str, case: &str, iterations: usize, mut write: impl AsyncFnMut()) -> Row {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        write().await;
        samples.push(t.elapsed());
    }
    row(backend, case, samples, None, None)
}

/// The rows of a raw baseline and of lockkit measured beside it, with the p50 ratio.
#[cfg(any(feature = "redis", feature = "etcd", feature = "zookeeper", feature = "consul"))]
fn baseline_rows(
    backend: &str,
    raw_case: &str,
    trip_case: &str,
    raw: Vec<Duration>,
    trip: Vec<Duration>,
    ours: Vec<Duration>,
) -> Vec<Row> {
    let trip = row(&format!("{backend} raw"), trip_case, trip, None, None);
    // Also the median of the iterations' own ratios: each pairs lockkit with the raw calls made
    // right before it, so slow drifts of a noisy machine cancel out.
    let mut ratios: Vec<f64> = ours.iter().zip(&raw).map(|(o, r)| o.as_secs_f64() / r.as_secs_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    let paired = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let raw = row(&format!("{backend} raw"), raw_case, raw, None, None);
    let mut ours = row(backend, "lockkit acquire+release, interleaved with the raw rows", ours, None, None);
    let ratio = ours.p50.as_secs_f64() / raw.p50.as_secs_f64();
    ours.backend = format!("{backend} ({ratio:.2}× raw p50; paired median {paired:.2}×)");
    vec![raw, trip, ours]
}

/// A row from latency samples (ops/s from their sum).
fn row(
    backend: &str,
    case: &str,
    mut samples: Vec<Duration>,
    changed_hands: Option<f64>,
    commands_per_grant: Option<f64>,
) -> Row {
    let total: Duration = samples.iter().sum();
    let ops_per_sec = samples.len() as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE);
    let (p50, p99) = percentiles(&mut samples);
    Row {
        backend: backend.into(),
        case: case.into(),
        ops_per_sec,
        p50,
        p99,
        changed_hands,
        commands_per_grant,
        release_p50: None,
    }
}

/// A server whose round trips a contended row is compared with.
#[derive(Clone)]
#[allow(dead_code)] // which variants are made depends on the features
enum Probe {
    /// A Redis URL: PINGs, and the commands counted during the run.
    Redis(String),
    /// An etcd port: releases and the etcd waiter's read.
    Etcd(u16),
    /// A ZooKeeper port: releases and the ZooKeeper waiter's read.
    Zookeeper(u16),
}

/// The p50s of a probe's round trips: one kind of write (or Redis's PING), and the read a
/// waiter makes after the write where a handoff needs one.
struct Trips {
    write: Duration,
    read: Option<Duration>,
    /// The p50 of each write plus the read made right after it: two round trips, as one
    /// sample (the p50 of a sum is not the sum of the p50s).
    write_then_read: Option<Duration>,
}

/// How a probe samples its round trips.
enum Sampling {
    /// This many, back to back, with nothing else running; the reads read an empty place.
    Unloaded(usize),
    /// One write and one read every few milliseconds until then, while a contended row runs on
    /// the lock named: round trips under the load the handoffs see, adding little load of
    /// their own. The reads read the lock's contenders, as its waiters do.
    During(Instant, String),
}

impl Sampling {
    /// The lock whose contenders the reads read (None: an empty place).
    #[cfg(any(feature = "etcd", feature = "zookeeper"))]
    fn lock(&self) -> Option<&str> {
        match self {
            Sampling::Unloaded(_) => None,
            Sampling::During(_, lock) => Some(lock),
        }
    }
}

/// A write then a read, sampled as `sampling` says; their p50s. `write` times itself (it may prepare untimed first); `read` is timed here.
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
async fn paired_trips<W, R>(sampling: &Sampling, write: impl Fn() -> W, read: impl Fn() -> R) -> Trips
where
    W: Future<Output = Duration>,
    R: Future<Output = ()>,
{
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    loop {
        writes.push(write().await);
        let t = Instant::now();
        read().await;
        reads.push(t.elapsed());
        match sampling {
            Sampling::Unloaded(iterations) if writes.len() >= *iterations => break,
            Sampling::Unloaded(_) => {}
            Sampling::During(until, _) if Instant::now() >= *until => break,
            Sampling::During(..) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let mut sums: Vec<Duration> = writes.iter().zip(&reads).map(|(w, r)| *w + *r).collect();
    Trips {
        write: percentiles(&mut writes).0,
        read: Some(percentiles(&mut reads).0),
        write_then_read: Some(percentiles(&mut sums).0),
    }
}

async fn command_count(probe: Option<&Probe>) -> Option<u64> {
    match probe {
        #[cfg(feature = "redis")]
        Some(Probe::Redis(url)) => Some(redis_raw::commands(url).await),
        _ => None,
    }
}

/// A probe's round trips; None where it has none of that kind (Redis's PINGs are only
/// measured unloaded).
async fn round_trips_p50(probe: Option<&Probe>, sampling: Sampling) -> Option<Trips> {
    match (probe?, &sampling) {
        #[cfg(feature = "redis")]
        (Probe::Redis(url), Sampling::Unloaded(n)) => {
            Some(Trips { write: redis_raw::ping_p50(url, *n).await, read: None, write_then_read: None })
        }
        #[cfg(feature = "etcd")]
        (Probe::Etcd(port), _) => Some(etcd_raw::trips(*port, sampling).await),
        #[cfg(feature = "zookeeper")]
        (Probe::Zookeeper(port), _) => Some(zk_raw::trips(*port, sampling).await),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// A handoff p50 against the unloaded round trips measured right before and after it, and
/// against those measured during it.
fn compare(handoff: Duration, before: &Trips, after: &Trips, during: Option<&Trips>) -> String {
    let times = |trip: Duration| handoff.as_secs_f64() / trip.as_secs_f64();
    let both = |t: &Trips| t.read.zip(t.write_then_read);
    match (both(before), both(after), during.and_then(|d| both(d).map(|b| (d.write, b)))) {
        (Some((_, unloaded_before)), Some((_, unloaded_after)), Some((write, (read, loaded)))) => format!(
            "**{:.2}× a release then a read under the same load** ({} as one sample; {} + {} apart); \
             {:.1}× them unloaded ({} before, {} after)",
            times(loaded),
            micros(loaded),
            micros(write),
            micros(read),
            times((unloaded_before + unloaded_after) / 2),
            micros(unloaded_before),
            micros(unloaded_after),
        ),
        _ => {
            let ping = (before.write + after.write) / 2;
            format!("{:.1}× a PING: {} before, {} after", times(ping), micros(before.write), micros(after.write))
        }
    }
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

fn micros(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }
}
