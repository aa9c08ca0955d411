//! A failover during contention: the master of the lock's slot crashes, its replica takes over
//! without the latest writes, and a fenced register shows what the clients did meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use lockkit_testkit::servers::{RedisCluster, redis_cli};
use lockkit_testkit::support::{connect, unique};

const LOCK: &str = "failover";
const CONTENDERS: usize = 4;
/// Bound on the failover: the replica is promoted and the lock granted again after the crash.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// A resource that checks fencing tokens: it accepts a write only with a token at or above the
/// highest it has seen. A holder announces its token (`grant`) before its first write.
#[derive(Default)]
struct Register {
    highest: u64,
    /// Who announced the highest token: the current holder, as far as the register knows.
    current: Option<usize>,
    /// Every token announced, in order, and whether the failover had been seen by then.
    grants: Vec<(u64, bool)>,
    accepted: u64,
    stale_rejected: u64,
    /// Writes accepted from someone other than the latest holder to announce its grant.
    stale_accepted: u64,
    /// Set once the replica is seen as the lock's master.
    failed_over: bool,
}

impl Register {
    fn grant(&mut self, token: u64, who: usize) {
        self.grants.push((token, self.failed_over));
        if token > self.highest {
            self.highest = token;
            self.current = Some(who);
        }
    }

    fn write(&mut self, token: u64, who: usize) {
        if token < self.highest {
            self.stale_rejected += 1;
            return;
        }
        self.accepted += 1;
        if self.current != Some(who) {
            self.stale_accepted += 1;
        }
    }

    fn grants_after_failover(&self) -> usize {
        self.grants.iter().filter(|(_, after)| *after).count()
    }
}

/// Contenders take one lock in turns and write to a fenced register; the master of the lock's
/// slot is killed (SIGKILL) after its replica lost its data (made certain here with FLUSHALL
/// on the replica; asynchronous replication can lose the latest writes the same way). The
/// register accepts no write from a superseded holder, no token repeats, every token granted
/// after the failover is above every token before it, and the lock is granted again within a
/// bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_during_contention_accepts_no_stale_write_and_tokens_keep_increasing() {
    let mut cluster = RedisCluster::start_quick_failover();
    let namespace = unique("f");
    let url = format!("{}?ttl=2s&timeout=1s&namespace={namespace}", cluster.url());
    let register = Arc::new(Mutex::new(Register::default()));
    let granted = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for who in 0..CONTENDERS {
        let (locks, register, granted, stop) = (connect(&url).await, register.clone(), granted.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(guard) = locks.acquire_timeout(LOCK, Duration::from_secs(3)).await else {
                    // The slot has no master for a while: try again soon.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let token = guard.fencing_token().get();
                register.lock().unwrap().grant(token, who);
                granted.notify_waiters();
                // Writes regardless of `is_held`: the register, not the client, must stop a
                // holder that was superseded.
                for _ in 0..3 {
                    register.lock().unwrap().write(token, who);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = guard.release().await;
            }
        }));
    }
    let grants = || register.lock().unwrap().grants.len();
    wait_for(&granted, Duration::from_secs(20), || grants() >= 20).await.expect("20 grants before the crash");

    let key = format!("{namespace}/{LOCK}");
    let master = cluster.master_of(&key);
    let replica = cluster.replica_of(master);
    for command in [&["CONFIG", "SET", "replica-read-only", "no"][..], &["FLUSHALL"]] {
        redis_cli(replica, command).unwrap_or_else(|| panic!("{command:?} on the replica"));
    }
    let crashed = Instant::now();
    cluster.kill(master);
    let grants_at_crash = grants();
    let mut failover = None;
    while failover.is_none() {
        assert!(crashed.elapsed() < FAILOVER_BOUND, "the replica {replica} was not promoted within {FAILOVER_BOUND:?}");
        if cluster.ports().next().and_then(|any| RedisCluster::serving(any, &key).ok()) == Some(replica) {
            failover = Some(crashed.elapsed());
            register.lock().unwrap().failed_over = true;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let regranted = wait_for(&granted, FAILOVER_BOUND.saturating_sub(crashed.elapsed()), || {
        register.lock().unwrap().grants_after_failover() >= 3
    })
    .await;
    let reacquired = crashed.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("a contender panicked");
    }

    let register = register.lock().unwrap();
    let before: Vec<u64> = register.grants.iter().filter(|(_, after)| !after).map(|(t, _)| *t).collect();
    let after: Vec<u64> = register.grants.iter().filter(|(_, after)| *after).map(|(t, _)| *t).collect();
    eprintln!(
        "FAILOVER grants_before={} grants_at_crash={grants_at_crash} grants_after={} max_before={:?} min_after={:?} \
         writes={} stale_rejected={} stale_accepted={} failover_ms={} reacquire_ms={}",
        before.len(),
        after.len(),
        before.iter().max(),
        after.iter().min(),
        register.accepted,
        register.stale_rejected,
        register.stale_accepted,
        failover.unwrap_or_default().as_millis(),
        reacquired.as_millis(),
    );
    assert!(regranted.is_some(), "the lock was not granted 3 times within {FAILOVER_BOUND:?} of the crash");
    assert_eq!(register.stale_accepted, 0, "writes of superseded holders were accepted");
    let mut unique_tokens: Vec<u64> = register.grants.iter().map(|(t, _)| *t).collect();
    unique_tokens.sort_unstable();
    unique_tokens.dedup();
    assert_eq!(unique_tokens.len(), register.grants.len(), "a token was granted twice: {:?}", register.grants);
    let highest_before = before.iter().max().copied().unwrap_or_default();
    assert!(
        after.iter().all(|t| *t > highest_before),
        "tokens went backwards across the failover: {after:?} after {highest_before}"
    );
}

/// Waits (woken by `event`, re-checking at least every 100 ms) until `done`, at most `bound`;
/// `None` if it never was.
async fn wait_for(event: &Notify, bound: Duration, done: impl Fn() -> bool) -> Option<()> {
    let deadline = Instant::now() + bound;
    while !done() {
        if Instant::now() >= deadline {
            return None;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), event.notified()).await;
    }
    Some(())
}
