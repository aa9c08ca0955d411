//! Semaphores and read-write locks (`semaphores` and `rw_locks` in the `conformance!` line).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lockkit::{DistributedLock, Error, LockGuard};

use crate::Target;
use crate::support::{AfterAcquire, TTL, holder_process_of, vanished_in_a_thread};

/// A short wait that is meant to run out.
const BRIEF: Duration = Duration::from_millis(50);

/// Waits (without sleeping) until `name` has at least `count` waiters in line.
async fn until_waiting(locks: &dyn DistributedLock, name: &str, count: usize) {
    while locks.status(name).await.unwrap().waiting.is_some_and(|waiting| waiting < count) {
        tokio::task::yield_now().await;
    }
}

/// 3 permits, 8 contenders on 4 handles, 40 sections: never more than 3 inside at once; 3
/// held leave a fourth out; every permit's token is new.
pub async fn never_more_than_n_permits_are_held(t: &Target) {
    let handles = [t.connect().await, t.connect().await, t.connect().await, t.connect().await];
    let held: Vec<LockGuard> = {
        let mut held = Vec::new();
        for handle in &handles[..3] {
            held.push(handle.semaphore("pool", 3).try_acquire().await.unwrap().expect("3 permits for 3"));
        }
        held
    };
    assert!(handles[3].semaphore("pool", 3).try_acquire().await.unwrap().is_none(), "a fourth permit of 3");
    drop(held);
    let inside = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (handle, inside, tokens) = (handles[i % 4].clone(), inside.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let permit = handle.semaphore("pool", 3).acquire().await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(now <= 3, "{now} permits of 3 held at once");
                tokens.lock().unwrap().push(permit.fencing_token());
                tokio::time::sleep(Duration::from_millis(2)).await; // overlap with the others
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut tokens = tokens.lock().unwrap().clone();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 40, "every permit has a token of its own");
}

/// With both permits held, two waiters queue; each release lets exactly one of them in, with
/// a token above every earlier permit's.
pub async fn a_released_permit_wakes_one_waiter_with_a_later_token(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let (first, second) =
        (a.semaphore("pair", 2).acquire().await.unwrap(), a.semaphore("pair", 2).acquire().await.unwrap());
    let newest = first.fencing_token().max(second.fencing_token());
    let waiter = |value: &str| {
        let (b, value) = (b.clone(), value.to_owned());
        tokio::spawn(async move {
            let options = lockkit::LockOptions::new().holder(value).wait(lockkit::Wait::Timeout(4 * TTL));
            b.semaphore("pair", 2).acquire_with(&options).await.unwrap().expect("a permit")
        })
    };
    let mut waiters = vec![waiter("w1")];
    until_waiting(&*a, "pair", 1).await;
    waiters.push(waiter("w2"));
    until_waiting(&*a, "pair", 2).await;
    first.release().await.unwrap();
    let (granted, _, mut rest) = futures_select(waiters).await;
    assert!(granted.fencing_token() > newest, "{:?} after {newest:?}", granted.fencing_token());
    let status = a.status("pair").await.unwrap();
    assert_eq!(status.holders.len(), 2, "the released permit went to one waiter: {status:?}");
    second.release().await.unwrap();
    let last = rest.pop().unwrap().await.unwrap();
    assert!(last.fencing_token() > granted.fencing_token());
}

/// The first of `tasks` to finish, its index, and the others.
async fn futures_select<T>(mut tasks: Vec<tokio::task::JoinHandle<T>>) -> (T, usize, Vec<tokio::task::JoinHandle<T>>) {
    loop {
        if let Some(i) = tasks.iter().position(|task| task.is_finished()) {
            let done = tasks.remove(i);
            return (done.await.unwrap(), i, tasks);
        }
        tokio::task::yield_now().await;
    }
}

/// A permit whose holder vanished (its process killed, or its runtime gone and the guard never
/// released) returns within the TTL, and the next permit's token is above it.
pub async fn a_vanished_permit_holder_returns_its_permit_within_the_ttl(t: &Target) {
    let b = t.connect().await;
    let vanished = if b.capabilities().cross_process {
        // A process that dies, however it dies (file:// has no TTL: its locks go with the process).
        let mut holder = holder_process_of(t, "vanishing", AfterAcquire::Hold, Some(1)).await;
        assert!(b.semaphore("vanishing", 1).try_acquire().await.unwrap().is_none(), "the child holds the permit");
        holder.child.start_kill().unwrap();
        holder.child.wait().await.unwrap();
        holder.token
    } else {
        vanished_in_a_thread(t, "vanishing", Some(1))
    };
    let next = b.semaphore("vanishing", 1).acquire_timeout(TTL + Duration::from_secs(3)).await;
    let next = next.expect("the permit returns within TTL + slack");
    assert!(next.fencing_token() > vanished);
}

/// A permit wait that timed out, or whose future was dropped, leaves no waiter behind: once
/// the holder releases, the permit is free for anyone.
pub async fn a_cancelled_permit_wait_leaves_nothing_behind(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let held = a.semaphore("cancelled", 1).acquire().await.unwrap();
    let err = b.semaphore("cancelled", 1).acquire_timeout(BRIEF).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(tokio::time::timeout(BRIEF, b.semaphore("cancelled", 1).acquire()).await.is_err());
    held.release().await.unwrap();
    let free = b.semaphore("cancelled", 1).try_acquire().await.unwrap();
    assert!(free.is_some(), "a cancelled wait kept the permit or its place");
    assert_eq!(b.status("cancelled").await.unwrap().waiting.unwrap_or(0), 0);
}

/// Readers on two handles share; a writer is kept out while they read, and keeps readers and
/// writers out while it writes; tokens increase across reads and writes.
pub async fn readers_share_and_a_writer_excludes_everyone(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let first = a.rw_lock("doc").try_read().await.unwrap().expect("a free lock reads");
    let second = b.rw_lock("doc").try_read().await.unwrap().expect("readers share");
    assert!(second.fencing_token() > first.fencing_token());
    assert!(b.rw_lock("doc").try_write().await.unwrap().is_none(), "a write while reading");
    assert_eq!(a.status("doc").await.unwrap().holders.len(), 2, "both readers are listed");
    let newest_read = second.fencing_token();
    drop(first);
    second.release().await.unwrap();
    let writer = b.rw_lock("doc").write_timeout(4 * TTL).await.expect("a writer once the readers left");
    assert!(writer.fencing_token() > newest_read);
    assert!(a.rw_lock("doc").try_read().await.unwrap().is_none(), "a read while writing");
    assert!(a.rw_lock("doc").try_write().await.unwrap().is_none(), "two writers");
    writer.release().await.unwrap();
    assert!(a.rw_lock("doc").try_read().await.unwrap().is_some());
}

/// A writer waiting behind a reader is served before readers that come after it: a later
/// try-read is refused, a later reader waits, the writer gets the lock once the reader leaves
/// (alone), and the later reader reads once the writer is done.
pub async fn a_waiting_writer_is_not_starved_by_later_readers(t: &Target) {
    let (a, b, c) = (t.connect().await, t.connect().await, t.connect().await);
    let reader = a.rw_lock("busy").read().await.unwrap();
    let writer = {
        let b = b.clone();
        tokio::spawn(async move { b.rw_lock("busy").write_timeout(4 * TTL).await })
    };
    until_waiting(&*a, "busy", 1).await;
    assert!(c.rw_lock("busy").try_read().await.unwrap().is_none(), "a later reader passed a waiting writer");
    let late_reader = {
        let c = c.clone();
        tokio::spawn(async move { c.rw_lock("busy").read_timeout(4 * TTL).await })
    };
    until_waiting(&*a, "busy", 2).await;
    reader.release().await.unwrap();
    let writer = writer.await.unwrap().expect("the writer goes first");
    let status = a.status("busy").await.unwrap();
    assert_eq!(status.holders.len(), 1, "the writer holds alone: {status:?}");
    assert_eq!(status.token, Some(writer.fencing_token()));
    let write_token = writer.fencing_token();
    writer.release().await.unwrap();
    let read = late_reader.await.unwrap().expect("the later reader follows the writer");
    assert!(read.fencing_token() > write_token);
}

/// Read and write waits that timed out or were dropped leave nothing behind.
pub async fn a_cancelled_read_or_write_wait_leaves_nothing_behind(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let writer = a.rw_lock("cancelled-rw").write().await.unwrap();
    let lock = b.rw_lock("cancelled-rw");
    assert!(matches!(lock.read_timeout(BRIEF).await, Err(Error::Timeout { .. })));
    assert!(matches!(lock.write_timeout(BRIEF).await, Err(Error::Timeout { .. })));
    assert!(tokio::time::timeout(BRIEF, lock.write()).await.is_err());
    assert!(tokio::time::timeout(BRIEF, lock.read()).await.is_err());
    writer.release().await.unwrap();
    let write = lock.try_write().await.unwrap();
    assert!(write.is_some(), "a cancelled wait kept its place");
    assert_eq!(b.status("cancelled-rw").await.unwrap().waiting.unwrap_or(0), 0);
}
