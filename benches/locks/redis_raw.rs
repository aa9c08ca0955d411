use super::*;

const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

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
