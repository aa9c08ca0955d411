//! Lock latency and handoff benchmark for every compiled backend: `cargo bench --bench locks`.
//!
//! - uncontended: acquire + release of one lock by one client, p50 / p99;
//! - contended: C contenders, each on its own connection, loop acquire → release on one lock
//!   for a fixed time. A *handoff* is a grant to a different contender than the previous
//!   holder; its latency runs from the previous holder's release call to the grant.
//!   Reported: grants/s, handoffs/s, handoff p50 / p99, and how often the lock changed hands.
//!
//! `LOCKKIT_BENCH_SECONDS` sets the contended run time per row (default 2).

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
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("LOCKKIT_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let targets = vec![
        ("memory".to_owned(), "memory://bench".to_owned()),
        ("file".to_owned(), format!("file://{}", dir.path().display())),
    ];
    let mut rows = Vec::new();
    for (backend, url) in &targets {
        rows.push(uncontended(backend, url, 2000).await);
        for contenders in [4, 16] {
            rows.push(contended(backend, url, contenders, Duration::from_secs(seconds)).await);
        }
    }
    println!("\n| backend | case | ops/s | p50 | p99 | changed hands |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in rows {
        let changed = r.changed_hands.map(|c| format!("{:.0} %", c * 100.0)).unwrap_or_else(|| "–".into());
        println!(
            "| {} | {} | {:.0} | {} | {} | {changed} |",
            r.backend,
            r.case,
            r.ops_per_sec,
            micros(r.p50),
            micros(r.p99)
        );
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
    let started = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        let guard = locks.acquire(&name).await.unwrap();
        guard.release().await.unwrap();
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    let (p50, p99) = percentiles(&mut samples);
    Row {
        backend: backend.into(),
        case: "uncontended acquire+release".into(),
        ops_per_sec: iterations as f64 / total.as_secs_f64(),
        p50,
        p99,
        changed_hands: None,
    }
}

/// Who released last and when: the next grant to someone else is a handoff.
struct LastRelease {
    holder: usize,
    at: Instant,
}

async fn contended(backend: &str, url: &str, contenders: usize, run: Duration) -> Row {
    let name = format!("contended-{}", lockkit_core::random_u64());
    let last = Arc::new(Mutex::new(LastRelease { holder: usize::MAX, at: Instant::now() }));
    let handoffs = Arc::new(Mutex::new(Vec::new()));
    let grants = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for me in 0..contenders {
        let locks = connect(url).await;
        let (name, last, handoffs, grants) = (name.clone(), last.clone(), handoffs.clone(), grants.clone());
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
                    last.at = Instant::now();
                }
                guard.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let grants = grants.load(std::sync::atomic::Ordering::Relaxed);
    let mut samples = handoffs.lock().unwrap().clone();
    let changed = samples.len() as f64 / grants.max(1) as f64;
    let handoffs_per_sec = samples.len() as f64 / run.as_secs_f64();
    let (p50, p99) = percentiles(&mut samples);
    Row {
        backend: backend.into(),
        case: format!("{contenders} contenders: handoffs"),
        ops_per_sec: handoffs_per_sec,
        p50,
        p99,
        changed_hands: Some(changed),
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
