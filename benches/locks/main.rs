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
//!   after the row (a shared machine's speed drifts), for scale. For etcd, the same
//!   contended rows also run on the driver's protocol made directly with `etcd-client`
//!   (`etcd raw`), and lockkit's handoff p50 is shown as a ratio to that one's.
//! - Redis: a raw-client baseline in the same run (the same round trips made directly with the
//!   `redis` crate), one raw round trip (PING), and the server commands per grant while
//!   contended (from `INFO stats`); each contended row also shows its ratio to the p50 of PINGs
//!   made right before and right after it. Redis Cluster (3 masters + 3 replicas on loopback)
//!   the same way, through the crate's cluster client; its round trip is a GET on one master,
//!   and a contended row counts and PINGs the master of its lock's slot.
//!
//! - Peers, the crates a user would pick instead (issue #18), measured in the same interleaved
//!   loop as the raw baselines: `rslock` (Redlock on one instance, and on the cluster; its
//!   defaults and a 2 ms retry delay), etcd's lock RPC (`etcd-client`, one kept-alive lease) and
//!   `zookeeper-client`'s lock recipe (`LockPrefix::new_curator`; its delete awaited, and
//!   release by drop on a session of its own). lockkit's interleaved row shows its p50 ratio and
//!   paired median ratio to each. Contended etcd rows also run etcd's lock RPC, each contender
//!   with a connection and kept-alive lease of its own (`etcd peer: v3lock`), and lockkit's row
//!   shows its grants/s and handoff p90 as ratios to the peer's.
//!
//! `LOCKKIT_BENCH_SECONDS` sets the contended run time per row (default 2);
//! `LOCKKIT_BENCH_HOLD_MS` how long each contender holds the lock (default 0: back to back, so
//! the releaser's next acquire writes while the handoff runs);
//! `LOCKKIT_BENCH_ONLY=zookeeper,consul` runs only those backends (names as in the table;
//! `redis` includes `redis-cluster`).
//! Servers are started like the tests start them (`scripts/install-deps` installs them).

/// The same round trips as the Redis driver's, made directly with the `redis` crate.
#[cfg(feature = "redis")]
mod redis_raw;

/// The same writes as the etcd driver's, made directly with `etcd-client`: a put-if-absent
/// transaction with an existing lease (reading the first contender, as the driver does), then
/// a delete; interleaved with lockkit's acquire+release. And the driver's whole protocol, as
/// contenders of a contended row.
#[cfg(feature = "etcd")]
mod etcd_raw;

/// The same requests as the ZooKeeper driver's, made directly with `zookeeper-client`: create
/// an ephemeral sequential node, list the directory, delete the node; interleaved with lockkit's
/// acquire+release.
#[cfg(feature = "zookeeper")]
mod zk_raw;

/// The same HTTP calls as the Consul driver's, made directly with reqwest against the same
/// Consul API **double** (not Consul): read the key, acquire it with a session, read its index,
/// release it; interleaved with lockkit's acquire+release.
#[cfg(feature = "consul")]
mod consul_raw;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockkit::DistributedLock;

#[derive(Clone)]
struct Row {
    backend: String,
    case: String,
    ops_per_sec: f64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    /// Contended rows: grants per second (acquire → release cycles of all contenders).
    grants_per_sec: Option<f64>,
    changed_hands: Option<f64>,
    commands_per_grant: Option<f64>,
    /// Contended rows: the p50 of the release calls (the release's round trip under load).
    release_p50: Option<Duration>,
    /// Contended rows with a probe: one write round trip (the mean of the unloaded p50s right
    /// before and after the row).
    trip: Option<Duration>,
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
            let servers: Vec<lockkit_testkit::servers::Server> =
                (0..5).map(|_| lockkit_testkit::servers::Server::redis()).collect();
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
    #[cfg(feature = "redis")]
    let _redis_cluster = if wanted("redis") || wanted("redis-cluster") {
        Some({
            let cluster = lockkit_testkit::servers::RedisCluster::start();
            let ports: Vec<u16> = cluster.ports().collect();
            rows.extend(redis_raw::cluster_baseline(&ports, 2000).await);
            targets.push(("redis-cluster".to_owned(), cluster.url(), Some(Probe::Cluster(ports[0]))));
            cluster
        })
    } else {
        None
    };
    #[cfg(feature = "etcd")]
    let _etcd_server = if wanted("etcd") {
        Some({
            let server = lockkit_testkit::servers::Server::etcd();
            let url = format!("etcd://127.0.0.1:{}", server.port);
            rows.extend(etcd_raw::baseline(&url, server.port, 2000).await);
            targets.push(("etcd".to_owned(), url, Some(Probe::Etcd(server.port))));
            server
        })
    } else {
        None
    };
    #[cfg(feature = "zookeeper")]
    let _zk_server = if wanted("zookeeper") {
        Some({
            let server = lockkit_testkit::servers::Server::zookeeper();
            let url = format!("zk://127.0.0.1:{}", server.port);
            rows.extend(zk_raw::baseline(&url, server.port, 2000).await);
            targets.push(("zookeeper".to_owned(), url, Some(Probe::Zookeeper(server.port))));
            server
        })
    } else {
        None
    };
    #[cfg(feature = "consul")]
    let _consul_double = if wanted("consul") {
        Some({
            let double =
                lockkit_testkit::consul_double::ConsulDouble::start(lockkit_testkit::consul_double::Config::default());
            let url = format!("consul://{}", double.addr);
            rows.extend(consul_raw::baseline(&url, double.addr, 2000).await);
            targets.push(("consul (double)".to_owned(), url, None));
            double
        })
    } else {
        None
    };
    let run = Duration::from_secs(seconds);
    for (backend, url, probe) in &targets {
        rows.push(uncontended(backend, url, 2000).await);
        for &contenders in contender_counts(probe.as_ref()) {
            let raw = raw_contended(probe.as_ref(), contenders, run).await;
            let mut row = lockkit_contended(backend, url, probe.as_ref(), contenders, run).await;
            if let Some(raw) = raw {
                let times = row.p50.as_secs_f64() / raw.p50.as_secs_f64();
                row.backend = format!("{} ({times:.2}× the raw client's handoff)", row.backend);
                rows.push(raw);
            }
            if let Some(peer) = peer_contended(probe.as_ref(), contenders, run).await {
                // More rounds, lockkit and the peer alternately: the median of their ratios.
                let mut rounds = vec![(row.clone(), peer.clone())];
                for _ in 1..CONTENDED_ROUNDS {
                    let ours = lockkit_contended(backend, url, probe.as_ref(), contenders, run).await;
                    let theirs = peer_contended(probe.as_ref(), contenders, run).await.expect("the same probe");
                    rounds.push((ours, theirs));
                }
                let grants = Rounds(
                    rounds
                        .iter()
                        .map(|(o, t)| o.grants_per_sec.unwrap_or_default() / t.grants_per_sec.unwrap_or(f64::NAN))
                        .collect(),
                );
                let p90 = Rounds(rounds.iter().map(|(o, t)| o.p90.as_secs_f64() / t.p90.as_secs_f64()).collect());
                let trips = Rounds(
                    rounds
                        .iter()
                        .map(|(o, _)| o.p90.as_secs_f64() / o.trip.map_or(f64::NAN, |t| t.as_secs_f64()))
                        .collect(),
                );
                let line = format!(
                    "| {backend}, {contenders} contenders | {} | grants/s: {:.0} vs {:.0}; **{} the peer's** (≥ 10×: {}) | handoff p90: {} vs {}; **{} the peer's**; **{} round trips** (≤ 3: {}) |",
                    peer.backend,
                    row.grants_per_sec.unwrap_or_default(),
                    peer.grants_per_sec.unwrap_or_default(),
                    grants.describe(),
                    if grants.median() >= 10.0 { "met" } else { "**missed**" },
                    micros(row.p90),
                    micros(peer.p90),
                    p90.describe(),
                    trips.describe(),
                    if trips.median() <= 3.0 { "met" } else { "**missed**" },
                );
                CONTENDED_SUMMARY.lock().unwrap().push(line);
                row.backend = format!(
                    "{} (**{} the peer's grants/s; handoff p90 {} the peer's**)",
                    row.backend,
                    grants.describe(),
                    p90.describe()
                );
                rows.push(peer);
            }
            rows.push(row);
        }
    }
    println!("\n| backend | lockkit ÷ | lockkit p50 | its p50 | median of the rounds' p50 ratios | target (#18) |");
    println!("|---|---|---:|---:|---|---|");
    for line in SUMMARY.lock().unwrap().iter() {
        println!("{line}");
    }
    println!("\n| contended | peer | throughput | handoff |");
    println!("|---|---|---|---|");
    for line in CONTENDED_SUMMARY.lock().unwrap().iter() {
        println!("{line}");
    }
    println!(
        "\n| backend | case | ops/s (contended: handoffs/s) | grants/s | p50 | p90 | p99 | changed hands | server cmds/grant | release p50 |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let dash = || "–".to_owned();
    for r in rows {
        let changed = r.changed_hands.map_or_else(dash, |c| format!("{:.0} %", c * 100.0));
        let commands = r.commands_per_grant.map_or_else(dash, |c| format!("{c:.1}"));
        let release = r.release_p50.map_or_else(dash, micros);
        let grants = r.grants_per_sec.map_or_else(dash, |g| format!("{g:.0}"));
        println!(
            "| {} | {} | {:.0} | {grants} | {} | {} | {} | {changed} | {commands} | {release} |",
            r.backend,
            r.case,
            r.ops_per_sec,
            micros(r.p50),
            micros(r.p90),
            micros(r.p99)
        );
    }
}

async fn connect(url: &str) -> Arc<dyn DistributedLock> {
    lockkit::connect(url).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn uncontended(backend: &str, url: &str, iterations: usize) -> Row {
    let locks = connect(url).await;
    let name = format!("uncontended-{}", lockkit_core::driver::random_u64());
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

/// One contender of a contended row, on a connection of its own.
trait Contender: Send + 'static {
    /// Waits for the lock; false when it gave up (after a few seconds).
    fn acquire(&mut self) -> impl Future<Output = bool> + Send;
    fn release(&mut self) -> impl Future<Output = ()> + Send;
}

/// A lockkit handle as a contender.
struct Lockkit {
    locks: Arc<dyn DistributedLock>,
    name: String,
    guard: Option<lockkit::LockGuard>,
}

impl Contender for Lockkit {
    async fn acquire(&mut self) -> bool {
        self.guard = self.locks.acquire_timeout(&self.name, Duration::from_secs(5)).await.ok();
        self.guard.is_some()
    }

    async fn release(&mut self) {
        self.guard.take().expect("held").release().await.unwrap();
    }
}

/// lockkit's contended row: `contenders` handles of their own on one lock.
async fn lockkit_contended(backend: &str, url: &str, probe: Option<&Probe>, contenders: usize, run: Duration) -> Row {
    let name = format!("contended-{}", lockkit_core::driver::random_u64());
    let mut ours = Vec::new();
    for _ in 0..contenders {
        ours.push(Lockkit { locks: connect(url).await, name: name.clone(), guard: None });
    }
    // On a cluster, the probe is the master of this lock's slot.
    let probe = match probe {
        #[cfg(feature = "redis")]
        Some(Probe::Cluster(any)) => {
            let master = lockkit_testkit::servers::RedisCluster::master_port(*any, &name);
            Some(Probe::Redis(format!("redis://127.0.0.1:{master}")))
        }
        other => other.cloned(),
    };
    contended(backend, ours, &name, probe.as_ref(), run).await
}

/// The contended rows of a backend: 4 and 16 contenders, and 64 on etcd (issue #18).
fn contender_counts(probe: Option<&Probe>) -> &'static [usize] {
    match probe {
        #[cfg(feature = "etcd")]
        Some(Probe::Etcd(_)) => &[4, 16, 64],
        _ => &[4, 16],
    }
}

/// How many rounds a contended row and its peer's run, alternately.
const CONTENDED_ROUNDS: usize = 3;

/// The contended summary lines (etcd against its lock RPC), printed after the table.
static CONTENDED_SUMMARY: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The contended row of a backend's protocol made directly with its client (etcd), each
/// contender with a connection and lease of its own.
async fn raw_contended(probe: Option<&Probe>, contenders: usize, run: Duration) -> Option<Row> {
    match probe? {
        #[cfg(feature = "etcd")]
        Probe::Etcd(port) => {
            let name = format!("contended-raw-{}", lockkit_core::driver::random_u64());
            let mut raw = Vec::new();
            for _ in 0..contenders {
                raw.push(etcd_raw::Contender::new(*port, &name).await);
            }
            Some(contended("etcd raw", raw, &name, Some(&Probe::Etcd(*port)), run).await)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The contended row of the peer a user would pick instead (etcd's lock RPC), each contender
/// with a connection and kept-alive lease of its own.
async fn peer_contended(probe: Option<&Probe>, contenders: usize, run: Duration) -> Option<Row> {
    match probe? {
        #[cfg(feature = "etcd")]
        Probe::Etcd(port) => {
            let name = format!("contended-v3lock-{}", lockkit_core::driver::random_u64());
            let mut peer = Vec::new();
            for _ in 0..contenders {
                peer.push(etcd_raw::V3lock::new(*port, &name).await);
            }
            Some(contended("etcd peer: v3lock", peer, &name, Some(&Probe::Etcd(*port)), run).await)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// `contenders` loop acquire → release on lock `name` for `run`. `probe`: the server whose
/// unloaded round trips are measured right before and after, and during the run (etcd,
/// ZooKeeper) its round trips under the same load (for Redis, its commands are counted during
/// the run).
async fn contended(
    backend: &str,
    contenders: Vec<impl Contender>,
    name: &str,
    probe: Option<&Probe>,
    run: Duration,
) -> Row {
    let count = contenders.len();
    let hold =
        Duration::from_millis(std::env::var("LOCKKIT_BENCH_HOLD_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(0));
    let last = Arc::new(Mutex::new(LastRelease { holder: usize::MAX, at: Instant::now() }));
    let handoffs = Arc::new(Mutex::new(Vec::new()));
    let releases = Arc::new(Mutex::new(Vec::new()));
    let grants = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let trips_before = round_trips_p50(probe, Sampling::Unloaded(300)).await;
    let commands_before = command_count(probe).await;
    let deadline = Instant::now() + run;
    let during = probe.cloned().map(|p| {
        let sampling = Sampling::During(deadline, name.to_owned());
        tokio::spawn(async move { round_trips_p50(Some(&p), sampling).await })
    });
    let mut tasks = Vec::new();
    for (me, mut contender) in contenders.into_iter().enumerate() {
        let (last, handoffs, grants) = (last.clone(), handoffs.clone(), grants.clone());
        let releases = releases.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if !contender.acquire().await {
                    continue;
                }
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
                contender.release().await;
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
    let mut row = row(backend, &format!("{count} contenders: handoffs"), samples, Some(changed), commands);
    row.release_p50 = Some(percentiles(&mut releases.lock().unwrap()).0);
    // The machine's speed drifts: compare with unloaded round trips right before and after.
    if let Some((before, after)) = trips_before.zip(round_trips_p50(probe, Sampling::Unloaded(300)).await) {
        row.case = format!("{} ({})", row.case, compare(row.p50, &before, &after, during.as_ref()));
        row.trip = Some((before.write + after.write) / 2);
    }
    row.ops_per_sec = handoffs_per_sec;
    row.grants_per_sec = Some(grants as f64 / run.as_secs_f64());
    row
}

/// Runs `step` (raw operation, raw round trip, the peers' lock+unlock, lockkit's
/// acquire+release) `iterations` times after a 10 % warm-up, so that all of them see the same
/// machine load.
#[cfg(any(feature = "redis", feature = "etcd", feature = "zookeeper", feature = "consul"))]
async fn interleave<const N: usize>(
    iterations: usize,
    mut step: impl AsyncFnMut() -> [Duration; N],
) -> [Vec<Duration>; N] {
    let mut samples = std::array::from_fn(|_| Vec::with_capacity(iterations));
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

/// A crate a user would pick instead of lockkit, measured interleaved with lockkit's rows.
#[cfg(any(feature = "redis", feature = "etcd", feature = "zookeeper", feature = "consul"))]
struct Peer {
    /// What lockkit's row calls it, e.g. "rslock defaults".
    short: &'static str,
    /// Its row's case: the crate, its version and what one sample is.
    case: String,
    samples: Vec<Duration>,
    /// The ratio lockkit ÷ peer that issue #18 asks for at most, if any.
    target: Option<f64>,
}

/// How many rounds the interleaved samples are cut into, in time order: lockkit's ratio to
/// another is the median of the rounds' p50 ratios, so one noisy stretch does not decide.
const ROUNDS: usize = 5;

/// lockkit's ratio to another, round by round (samples interleaved iteration by iteration).
struct Rounds(Vec<f64>);

impl Rounds {
    fn of(ours: &[Duration], other: &[Duration]) -> Rounds {
        let per = ours.len().div_ceil(ROUNDS).max(1);
        let p50 = |samples: &[Duration]| percentiles(&mut samples.to_vec()).0.as_secs_f64();
        Rounds(ours.chunks(per).zip(other.chunks(per)).map(|(o, t)| p50(o) / p50(t)).collect())
    }

    fn median(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// "1.08× (rounds 1.05 1.11 1.08 1.07 1.09)".
    fn describe(&self) -> String {
        let rounds: Vec<String> = self.0.iter().map(|r| format!("{r:.2}")).collect();
        format!("{:.2}× (rounds {})", self.median(), rounds.join(" "))
    }
}

/// The summary lines of lockkit against the crates users would pick, printed after the table.
static SUMMARY: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Adds a line to the summary: `backend`, lockkit's p50, the other's, the rounds, the target.
fn summarize(backend: &str, other: &str, ours: Duration, theirs: Duration, rounds: &Rounds, target: Option<f64>) {
    let verdict = match target {
        Some(target) if rounds.median() <= target => format!("≤ {target:.2}×: met"),
        Some(target) => format!("≤ {target:.2}×: **missed**"),
        None => "–".to_owned(),
    };
    let line =
        format!("| {backend} | {other} | {} | {} | {} | {verdict} |", micros(ours), micros(theirs), rounds.describe());
    SUMMARY.lock().unwrap().push(line);
}

/// The rows of a raw baseline, of the peers and of lockkit measured beside them, with
/// lockkit's ratios to the raw calls and to each peer.
#[cfg(any(feature = "redis", feature = "etcd", feature = "zookeeper", feature = "consul"))]
fn baseline_rows(
    backend: &str,
    raw_case: &str,
    trip_case: &str,
    [raw_samples, trip, ours_samples]: [Vec<Duration>; 3],
    peers: Vec<Peer>,
) -> Vec<Row> {
    let trip = row(&format!("{backend} raw"), trip_case, trip, None, None);
    let raw = row(&format!("{backend} raw"), raw_case, raw_samples.clone(), None, None);
    let mut ours = row(
        backend,
        "lockkit acquire+release, interleaved with the raw and peer rows",
        ours_samples.clone(),
        None,
        None,
    );
    let to_raw = Rounds::of(&ours_samples, &raw_samples);
    summarize(backend, &format!("raw: {raw_case}"), ours.p50, raw.p50, &to_raw, None);
    let mut label = format!("{backend} ({} raw", to_raw.describe());
    let mut rows = vec![raw, trip];
    for peer in peers {
        let them = row(&format!("{backend} peer"), &peer.case, peer.samples.clone(), None, None);
        let to_peer = Rounds::of(&ours_samples, &peer.samples);
        summarize(backend, &peer.case, ours.p50, them.p50, &to_peer, peer.target);
        label.push_str(&format!("; **{} {}**", to_peer.describe(), peer.short));
        rows.push(them);
    }
    ours.backend = format!("{label})");
    rows.push(ours);
    rows
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
    let p90 = samples.get(((samples.len().max(1) - 1) as f64 * 0.9).round() as usize).copied().unwrap_or_default();
    Row {
        backend: backend.into(),
        case: case.into(),
        ops_per_sec,
        p50,
        p90,
        p99,
        grants_per_sec: None,
        changed_hands,
        commands_per_grant,
        release_p50: None,
        trip: None,
    }
}

/// A server whose round trips a contended row is compared with.
#[derive(Clone)]
enum Probe {
    /// A Redis URL: PINGs, and the commands counted during the run.
    #[cfg(feature = "redis")]
    Redis(String),
    /// A Redis Cluster, by the port of any node: a contended row probes the master of its
    /// lock's slot (as `Redis`).
    #[cfg(feature = "redis")]
    Cluster(u16),
    /// An etcd port: releases and the etcd waiter's read.
    #[cfg(feature = "etcd")]
    Etcd(u16),
    /// A ZooKeeper port: releases and the ZooKeeper waiter's read.
    #[cfg(feature = "zookeeper")]
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
