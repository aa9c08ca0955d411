use super::*;

const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Raw SET NX PX + compare-and-delete, one raw round trip, and lockkit's acquire+release,
/// interleaved iteration by iteration so that all three see the same machine load.
pub(crate) async fn baseline(url: &str, iterations: usize) -> Vec<Row> {
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let trip = ("one round trip (PING)", redis::cmd("PING"));
    let peers = rslock_managers(|| rslock::LockManager::new(vec![url]));
    measure("redis", conn, trip, peers, url, iterations).await
}

/// The same on a Redis Cluster (seed nodes on `ports`): the raw calls go through the `redis`
/// crate's cluster client, and the round trip is a GET of the raw lock's key (PING would go to
/// every master).
pub(crate) async fn cluster_baseline(ports: &[u16], iterations: usize) -> Vec<Row> {
    let seeds: Vec<String> = ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
    let conn = redis::cluster::ClusterClient::new(seeds.clone()).unwrap().get_async_connection().await.unwrap();
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let url = format!("redis-cluster://{}", hosts.join(","));
    let mut get = redis::cmd("GET");
    get.arg("raw-bench");
    let trip = ("one round trip (GET on the raw lock's master)", get);
    let peers = rslock_managers(|| rslock::LockManager::new_cluster(seeds.clone()).unwrap());
    measure("redis-cluster", conn, trip, peers, &url, iterations).await
}

/// The peer a user would pick instead: `rslock`'s Redlock on this one instance (or cluster), with
/// its defaults (3 tries, up to 200 ms apart) and with a 2 ms retry delay.
fn rslock_managers(new: impl Fn() -> rslock::LockManager) -> [rslock::LockManager; 2] {
    let mut fast = new();
    fast.set_retry(3, Duration::from_millis(2));
    [new(), fast]
}

/// rslock's `acquire` (it waits, as lockkit's does) and its guard's `release`, with lockkit's
/// default TTL.
async fn rslock_cycle(manager: &rslock::LockManager) -> Duration {
    let t = Instant::now();
    manager.acquire(b"rslock-bench", Duration::from_secs(15)).await.unwrap().release().await;
    t.elapsed()
}

async fn measure(
    backend: &str,
    mut conn: impl redis::aio::ConnectionLike,
    (trip_case, trip_cmd): (&str, redis::Cmd),
    [defaults, fast]: [rslock::LockManager; 2],
    url: &str,
    iterations: usize,
) -> Vec<Row> {
    let release = redis::Script::new(RELEASE);
    let locks = connect(url).await;
    let [raw, trip, rslock_defaults, rslock_fast, ours] = interleave(iterations, async || {
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
        let _: redis::Value = trip_cmd.query_async(&mut conn).await.unwrap();
        let trip = t.elapsed();
        let (rslock_defaults, rslock_fast) = (rslock_cycle(&defaults).await, rslock_cycle(&fast).await);
        let t = Instant::now();
        locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
        [raw, trip, rslock_defaults, rslock_fast, t.elapsed()]
    })
    .await;
    let on = if backend == "redis" { "one instance" } else { "the cluster" };
    let peers = vec![
        Peer {
            short: "rslock defaults",
            case: format!("rslock 0.10 ({on}, defaults): acquire + release"),
            samples: rslock_defaults,
            target: (backend == "redis").then_some(1.10),
        },
        Peer {
            short: "rslock 2 ms retry",
            case: format!("rslock 0.10 ({on}, 2 ms retry delay): acquire + release"),
            samples: rslock_fast,
            target: (backend == "redis").then_some(1.10),
        },
    ];
    baseline_rows(backend, "SET NX PX + compare-and-delete", trip_case, [raw, trip, ours], peers)
}

/// The p50 of `iterations` PINGs on a fresh connection.
pub(crate) async fn ping_p50(url: &str, iterations: usize) -> Duration {
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
pub(crate) async fn commands(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
