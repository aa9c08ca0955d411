//! Semaphore and read-write lock benchmark for the backends that have them:
//! `cargo bench --bench semaphores`.
//!
//! Per backend, in one run:
//! - **permit, uncontended**: acquire + release of one of 4 permits, p50 / p90, beside a lock's
//!   acquire + release on the same handle (alternating, so both sides see the same machine);
//! - **4× contenders**: 16 tasks on 4 handles contend for 4 permits, back to back, for
//!   `LOCKKIT_BENCH_SECONDS` (default 2): grants per second, and never more than 4 inside;
//! - **90 % readers**: 8 tasks on 4 handles, each operation a read (9 in 10) or a write,
//!   back to back: operations per second.
//!
//! `LOCKKIT_BENCH_ROUNDS` sets the uncontended rounds (default 2000). With `--features etcd`
//! (or `full`), etcd runs too, on a server the bench starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lockkit::DistributedLock;

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

async fn connect(url: &str) -> Arc<dyn DistributedLock> {
    lockkit::connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Alternating rounds of a permit's and a lock's acquire + release: (permit, lock) samples.
async fn uncontended(locks: &dyn DistributedLock, rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let (mut permit, mut lock) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        locks.semaphore("bench-pool", 4).acquire().await.unwrap().release().await.unwrap();
        permit.push(started.elapsed());
        let started = Instant::now();
        locks.acquire("bench-lock").await.unwrap().release().await.unwrap();
        lock.push(started.elapsed());
    }
    (permit, lock)
}

/// 16 contenders for 4 permits for `run`: grants per second.
async fn contended(handles: &[Arc<dyn DistributedLock>], run: Duration) -> f64 {
    let (granted, inside) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + run;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (locks, granted, inside) = (handles[i % handles.len()].clone(), granted.clone(), inside.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let permit = locks.semaphore("bench-contended", 4).acquire().await.unwrap();
                    assert!(inside.fetch_add(1, Ordering::SeqCst) < 4, "more than 4 permits held");
                    inside.fetch_sub(1, Ordering::SeqCst);
                    granted.fetch_add(1, Ordering::Relaxed);
                    permit.release().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    granted.load(Ordering::Relaxed) as f64 / run.as_secs_f64()
}

/// 8 tasks, 9 reads in 10, for `run`: operations per second.
async fn mostly_reads(handles: &[Arc<dyn DistributedLock>], run: Duration) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + run;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (locks, done) = (handles[i % handles.len()].clone(), done.clone());
            tokio::spawn(async move {
                let mut n = i;
                while Instant::now() < deadline {
                    let lock = locks.rw_lock("bench-rw");
                    let guard = if n % 10 == 0 { lock.write().await } else { lock.read().await };
                    guard.unwrap().release().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / run.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("LOCKKIT_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let seconds: f64 = std::env::var("LOCKKIT_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let run = Duration::from_secs_f64(seconds);
    let dir = tempfile::tempdir().unwrap();
    let mut backends =
        vec![("memory", "memory://semaphore-bench".to_owned()), ("file", format!("file://{}", dir.path().display()))];
    #[cfg(feature = "etcd")]
    let _etcd = {
        let server = lockkit_testkit::servers::Server::etcd();
        backends.push(("etcd", format!("etcd://127.0.0.1:{}/semaphore-bench", server.port)));
        server
    };
    println!(
        "| backend | permit acquire + release (p50 / p90) | lock acquire + release, same run | permit ÷ lock (p50) | 16 contenders, 4 permits | 8 tasks, 90 % reads |"
    );
    println!("|---|---|---|---|---|---|");
    for (backend, url) in backends {
        eprintln!("{backend}…");
        let handles = [connect(&url).await, connect(&url).await, connect(&url).await, connect(&url).await];
        let (mut permit, mut lock) = uncontended(&*handles[0], rounds).await;
        let (p50, l50) = (quantile(&mut permit, 0.5), quantile(&mut lock, 0.5));
        let (p90, l90) = (quantile(&mut permit, 0.9), quantile(&mut lock, 0.9));
        let contended = contended(&handles, run).await;
        let reads = match handles[0].capabilities().rw_locks {
            true => format!("{:.0} ops/s", mostly_reads(&handles, run).await),
            false => "– (no read-write locks yet)".into(),
        };
        println!(
            "| {backend} | {} / {} | {} / {} | {:.2} | {contended:.0} grants/s | {reads} |",
            micros(p50),
            micros(p90),
            micros(l50),
            micros(l90),
            p50.as_secs_f64() / l50.as_secs_f64()
        );
    }
}
