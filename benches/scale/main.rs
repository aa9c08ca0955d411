//! Scale benchmark for every compiled backend (issue #18, "scale rows"):
//! `cargo bench --features full --bench scale`.
//!
//! - many locks, one handle: one handle (`?ttl=3s`, so its lease is refreshed every second)
//!   acquires `scale-0` … `scale-{N-1}`, 64 acquires in flight, and keeps every guard.
//!   Reported: the time to acquire them all and acquires/s; the client memory per held lock,
//!   the growth of the process's resident set (`/proc/self/statm`) from before the first
//!   acquire to when all are held, divided by N (and the same once `malloc_trim` has handed
//!   the allocator's free memory back, i.e. what stays allocated), and the file descriptors
//!   (sockets, files) opened per lock; the server requests per
//!   refresh tick while the N locks are held and nothing else runs (a window of 3 refresh
//!   intervals, after one interval to settle; the requests counted by the server divided by
//!   window / interval); then the time to release them all, 64 at a time.
//! - hot names: 64 handles, each its own `lockkit::connect`; handle i loops acquire
//!   (`acquire_timeout`, 5 s) → release on `hot-{i % 16}` (4 handles per name) for
//!   `LOCKKIT_BENCH_SECONDS` (default 2). Reported: grants/s (all names, and per name), the
//!   acquire latency p50 / p99, the client memory and file descriptors per handle (their growth
//!   over the connects / handles) and the server requests per grant.
//!
//! Server requests are the servers' own counters (see `counters`): Redis `INFO commandstats`,
//! etcd's `/metrics` (gRPC messages received), ZooKeeper's `mntr` (packets received); the
//! Consul API double (not Consul) counts only its `PUT ?acquire=` requests. The double runs in
//! a child process (this binary again), so that the client memory is the client's alone.
//!
//! `LOCKKIT_SCALE_LOCKS` sets N (default 10000); `LOCKKIT_BENCH_ONLY=etcd,zookeeper` runs only
//! those backends (memory, file, redis, etcd, zookeeper, consul). Servers are started like the
//! tests start them (`scripts/install-deps` installs them).

mod counters;
/// The Consul API double, in a process of its own.
#[cfg(feature = "consul")]
mod double;

use std::sync::Arc;
use std::time::{Duration, Instant};

use counters::{Counter, describe, ticks};
use lockkit::{DistributedLock, LockGuard};
use tokio::task::JoinSet;

/// Acquires (and releases) in flight at a time in the many-locks rows.
const IN_FLIGHT: usize = 64;
/// Handles and names of the hot-names row.
const HANDLES: usize = 64;
const NAMES: usize = 16;

/// One table row; every cell already formatted, "–" where it does not apply.
struct Row {
    backend: String,
    case: String,
    count: String,
    time: String,
    rate: String,
    latency: String,
    memory: String,
    requests: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    #[cfg(feature = "consul")]
    if double::serve_if_child() {
        return;
    }
    let started = Instant::now();
    let locks: usize = std::env::var("LOCKKIT_SCALE_LOCKS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = std::env::var("LOCKKIT_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let only = std::env::var("LOCKKIT_BENCH_ONLY").unwrap_or_default();
    let wanted = |backend: &str| only.is_empty() || only.split(',').any(|b| b == backend);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut targets = vec![
        ("memory", "memory://scale".to_owned(), Counter::None),
        ("file", format!("file://{}", dir.path().display()), Counter::None),
    ];
    targets.retain(|(backend, ..)| wanted(backend));
    // The servers live until the end of main.
    #[allow(unused_mut)]
    let mut servers: Vec<lockkit_testkit::servers::Server> = Vec::new();
    #[cfg(feature = "redis")]
    if wanted("redis") {
        let server = lockkit_testkit::servers::Server::redis();
        let url = format!("redis://127.0.0.1:{}", server.port);
        targets.push(("redis", url.clone(), Counter::redis(&url).await));
        servers.push(server);
    }
    #[cfg(feature = "etcd")]
    if wanted("etcd") {
        let server = lockkit_testkit::servers::Server::etcd();
        targets.push(("etcd", format!("etcd://127.0.0.1:{}", server.port), Counter::etcd(server.port)));
        servers.push(server);
    }
    #[cfg(feature = "zookeeper")]
    if wanted("zookeeper") {
        let server = lockkit_testkit::servers::Server::zookeeper();
        targets.push(("zookeeper", format!("zk://127.0.0.1:{}", server.port), Counter::Zookeeper(server.port)));
        servers.push(server);
    }
    #[cfg(feature = "consul")]
    if wanted("consul") {
        let double = double::Double::start();
        targets.push(("consul (double)", format!("consul://{}", double.addr), Counter::Consul(double)));
    }
    let mut rows = Vec::new();
    for (backend, url, counter) in &targets {
        eprintln!("{backend}: {locks} locks on one handle");
        rows.extend(many_locks(backend, url, counter, locks).await);
        eprintln!("{backend}: hot names");
        rows.push(hot_names(backend, url, counter, Duration::from_secs(seconds)).await);
    }
    println!(
        "\n| backend | case | count | time | per second | acquire p50 / p99 | client memory, file descriptors | server requests |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend, r.case, r.count, r.time, r.rate, r.latency, r.memory, r.requests
        );
    }
    drop(servers);
    eprintln!("run took {:.0} s", started.elapsed().as_secs_f64());
}

async fn connect(url: &str) -> Arc<dyn DistributedLock> {
    lockkit::connect(url).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// One handle acquires `n` locks and holds them through a few refresh ticks, then releases
/// them: the acquire, refresh and release rows.
async fn many_locks(backend: &'static str, url: &str, counter: &Counter, n: usize) -> Vec<Row> {
    let locks = connect(&format!("{url}?ttl=3s")).await;
    let refresh = locks.settings().refresh_for(locks.settings().ttl);
    let mut guards: Vec<LockGuard> = Vec::with_capacity(n);
    trim();
    let (before, fds_before) = (rss(), fds());
    let started = Instant::now();
    let mut acquiring = JoinSet::new();
    for i in 0..n {
        if acquiring.len() >= IN_FLIGHT {
            guards.push(joined(acquiring.join_next().await));
        }
        let locks = locks.clone();
        acquiring.spawn(async move {
            let name = format!("scale-{i}");
            locks.acquire(&name).await.unwrap_or_else(|e| panic!("{backend} acquire {name}: {e}"))
        });
    }
    while let Some(guard) = acquiring.join_next().await {
        guards.push(joined(Some(guard)));
    }
    let acquired = started.elapsed();
    let grown = rss().saturating_sub(before);
    let opened = fds().saturating_sub(fds_before) as f64 / n as f64;
    trim();
    let kept = rss().saturating_sub(before);
    let memory =
        format!("{} B/lock ({} B/lock after malloc_trim); {opened:.2} fds/lock", grown / n as u64, kept / n as u64);
    let count = format!("{n} locks");
    let acquire = Row {
        backend: backend.to_owned(),
        case: "one handle: acquire all, 64 in flight".to_owned(),
        count: count.clone(),
        time: millis(acquired),
        rate: format!("{:.0} acquires/s", n as f64 / acquired.as_secs_f64()),
        latency: "–".to_owned(),
        memory,
        requests: "–".to_owned(),
    };

    // Refresh ticks while all are held and nothing else runs.
    tokio::time::sleep(refresh).await;
    let counts_before = counter.sample().await;
    let window_start = Instant::now();
    tokio::time::sleep(refresh * 3).await;
    let counts_after = counter.sample().await;
    let window = window_start.elapsed();
    let held = guards.iter().filter(|g| g.is_held()).count();
    assert_eq!(held, n, "{backend}: {} of {n} locks were lost while held", n - held);
    let requests = describe(&counts_before, &counts_after, ticks(window, refresh), "per tick");
    let hold = Row {
        backend: backend.to_owned(),
        case: "one handle: hold all (refresh every tick)".to_owned(),
        count: format!("{n} held, {:.1} ticks of {}", ticks(window, refresh), millis(refresh)),
        time: millis(window),
        rate: "–".to_owned(),
        latency: "–".to_owned(),
        memory: "–".to_owned(),
        requests,
    };

    let started = Instant::now();
    let mut releasing = JoinSet::new();
    for guard in guards {
        if releasing.len() >= IN_FLIGHT {
            joined(releasing.join_next().await);
        }
        releasing.spawn(async move {
            let name = guard.name().to_owned();
            guard.release().await.unwrap_or_else(|e| panic!("{backend} release {name}: {e}"))
        });
    }
    while let Some(released) = releasing.join_next().await {
        joined(Some(released));
    }
    let released = started.elapsed();
    let release = Row {
        backend: backend.to_owned(),
        case: "one handle: release all, 64 in flight".to_owned(),
        count,
        time: millis(released),
        rate: format!("{:.0} releases/s", n as f64 / released.as_secs_f64()),
        latency: "–".to_owned(),
        memory: "–".to_owned(),
        requests: "–".to_owned(),
    };
    let _ = locks.close().await;
    vec![acquire, hold, release]
}

/// 64 handles, 4 per name, loop acquire → release on 16 names for `run`.
async fn hot_names(backend: &'static str, url: &str, counter: &Counter, run: Duration) -> Row {
    let count = HANDLES;
    trim();
    let (before, fds_before) = (rss(), fds());
    let mut handles = Vec::with_capacity(count);
    for _ in 0..count {
        handles.push(connect(url).await);
    }
    let per_handle = rss().saturating_sub(before) as f64 / count as f64 / 1024.0;
    let fds_per_handle = fds().saturating_sub(fds_before) as f64 / count as f64;
    let counts_before = counter.sample().await;
    let started = Instant::now();
    let deadline = started + run;
    let mut contenders = JoinSet::new();
    for (i, locks) in handles.iter().cloned().enumerate() {
        contenders.spawn(async move {
            let name = format!("hot-{}", i % NAMES);
            let (mut latencies, mut timeouts) = (Vec::new(), 0);
            while Instant::now() < deadline {
                let t = Instant::now();
                match locks.acquire_timeout(&name, Duration::from_secs(5)).await {
                    Ok(guard) => {
                        latencies.push(t.elapsed());
                        guard.release().await.unwrap_or_else(|e| panic!("{backend} release {name}: {e}"));
                    }
                    Err(lockkit::Error::Timeout { .. }) => timeouts += 1,
                    Err(e) => panic!("{backend} acquire {name}: {e}"),
                }
            }
            (latencies, timeouts)
        });
    }
    let (mut latencies, mut timeouts) = (Vec::new(), 0);
    while let Some(done) = contenders.join_next().await {
        let (mine, gave_up) = joined(Some(done));
        latencies.extend(mine);
        timeouts += gave_up;
    }
    let elapsed = started.elapsed();
    let counts_after = counter.sample().await;
    for locks in handles {
        let _ = locks.close().await;
    }
    let grants = latencies.len();
    latencies.sort();
    let at = |q: f64| latencies.get(((grants.max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or_default();
    let per_sec = grants as f64 / elapsed.as_secs_f64();
    let timed_out = if timeouts > 0 { format!(", {timeouts} timed out") } else { String::new() };
    Row {
        backend: backend.to_owned(),
        case: format!("{count} handles, {} per name: acquire → release", count / NAMES),
        count: format!("{grants} grants on {NAMES} names{timed_out}"),
        time: millis(elapsed),
        rate: format!("{per_sec:.0} grants/s ({:.0} per name)", per_sec / NAMES as f64),
        latency: format!("{} / {}", micros(at(0.50)), micros(at(0.99))),
        memory: format!("{per_handle:.1} KiB/handle; {fds_per_handle:.2} fds/handle"),
        requests: describe(&counts_before, &counts_after, grants.max(1) as f64, "per grant"),
    }
}

/// A finished task's output; a panic in it is resumed here.
fn joined<T>(task: Option<Result<T, tokio::task::JoinError>>) -> T {
    match task.expect("a task in flight") {
        Ok(output) => output,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task: {e}"),
    }
}

/// The process's resident set size in bytes (Linux: `/proc/self/statm`).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux)");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages in statm");
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page as u64
}

/// The process's open file descriptors (sockets, files).
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(Iterator::count).expect("/proc/self/fd (Linux)")
}

/// Hands the allocator's free memory back to the system (glibc), so that the resident set
/// shows what is allocated.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn millis(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn micros(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }
}
