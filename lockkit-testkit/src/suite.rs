//! The conformance suite: what every backend must do. One function per property; the
//! `conformance!` macro runs each of them as a test for a backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockkit::{DistributedLock, Error, FencingToken, LockOptions};

use crate::Target;
use crate::support::{AfterAcquire, CriticalSection, TTL, holder_process, in_line, vanished_in_a_thread};

// The fault properties (a proxy between a handle and its server), run by the same macro.
mod faults;
pub use faults::*;
// The whole system under faults: contender processes, a fenced register, pauses and partitions.
mod system;
pub use system::*;
// Elections on the lock machinery.
mod elections;
pub use elections::*;
// Semaphores and read-write locks on the lock machinery.
mod shared;
pub use shared::*;

/// The `conformance!` line of `t` lists the capabilities its backend has (`declared`), and
/// `network` exactly when the target has a fault proxy: the line decides which properties run,
/// so it must not claim what the backend lacks, nor leave out what it has.
pub async fn declares_the_capabilities_it_is_tested_for(t: &Target, declared: lockkit::Capabilities, network: bool) {
    let actual = t.connect().await.capabilities();
    assert_eq!(declared, actual, "the conformance! line of `{}` lists other capabilities than it has", t.label());
    let proxied = t.proxied(TTL, TTL).await.is_some();
    assert_eq!(
        network,
        proxied,
        "the conformance! line of `{}` says network: {network}; a fault proxy: {proxied}",
        t.label()
    );
}

/// 8 tasks over 2 connections run 200 critical sections: never two inside at once, no lost
/// update, and tokens strictly increase in the order the sections ran.
pub async fn mutual_exclusion_holds_under_contention(t: &Target) {
    let connections = [t.connect().await, t.connect().await];
    let section = Arc::new(CriticalSection::default());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (locks, section) = (connections[i % 2].clone(), section.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    let guard = locks.acquire("counter").await.expect("acquire");
                    section.enter(guard.fencing_token()).await;
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a contender panicked");
    }
    assert_eq!(section.count(), 200);
    let tokens = section.tokens();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens must strictly increase: {tokens:?}");
}

/// `try_acquire` gives `None` while the lock is held — also through the holder's own handle —
/// and a guard once it is released.
pub async fn try_acquire_is_none_while_held_and_succeeds_after_release(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let guard = a.try_acquire("door").await.unwrap().expect("a free lock is granted");
    assert!(b.try_acquire("door").await.unwrap().is_none(), "granted to a second holder");
    assert!(a.try_acquire("door").await.unwrap().is_none(), "granted twice through one handle");
    guard.release().await.unwrap();
    let again = b.try_acquire("door").await.unwrap().expect("granted after release");
    assert!(again.is_held());
}

/// A bounded wait on a held lock fails with `Timeout` after about the time asked for.
pub async fn acquire_timeout_fails_close_to_the_requested_time(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let _held = a.acquire("slow").await.unwrap();
    let asked = Duration::from_millis(300);
    let started = Instant::now();
    let err = b.acquire_timeout("slow", asked).await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(waited >= asked && waited < asked + Duration::from_millis(1500), "waited {waited:?} for {asked:?}");
    assert!(err.to_string().contains("slow"), "the error names the lock: {err}");
}

/// Each grant's token is above every earlier one, across connections.
pub async fn fencing_tokens_increase_across_connections(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let tokens = grants_through(&[&a, &b, &a], "fenced").await;
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens must strictly increase: {tokens:?}");
}

/// Each grant's token is above every earlier one: across connections and, the backend being
/// shared between processes, across processes.
pub async fn fencing_tokens_increase_across_connections_and_processes(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let mut tokens = grants_through(&[&a, &b, &a], "fenced").await;
    let child = holder_process(t, "fenced", AfterAcquire::Release).await;
    tokens.push(child.token);
    let status = child.child.wait_with_output().await.unwrap().status;
    assert!(status.success(), "the holder process failed: {status}");
    tokens.push(b.acquire("fenced").await.unwrap().fencing_token());
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens must strictly increase: {tokens:?}");
}

/// The tokens of one grant of `name` through each of `handles` in turn, each released.
async fn grants_through(handles: &[&Arc<dyn DistributedLock>], name: &str) -> Vec<FencingToken> {
    let mut tokens = Vec::new();
    for locks in handles {
        let guard = locks.acquire(name).await.unwrap();
        tokens.push(guard.fencing_token());
        guard.release().await.unwrap();
    }
    tokens
}

/// A holder that disappears without releasing — a process killed with SIGKILL, or (for an
/// in-process backend) a runtime that stopped with the guard leaked — frees the lock within
/// TTL plus slack, and the next grant's token is larger.
pub async fn a_vanished_holder_frees_the_lock_within_the_ttl(t: &Target) {
    let b = t.connect().await;
    let vanished_token = if b.capabilities().cross_process {
        let mut holder = holder_process(t, "vanishing", AfterAcquire::Hold).await;
        assert!(b.try_acquire("vanishing").await.unwrap().is_none(), "the child holds the lock");
        holder.child.start_kill().unwrap();
        holder.child.wait().await.unwrap();
        holder.token
    } else {
        vanished_in_a_thread(t, "vanishing", None)
    };
    let next = b.acquire_timeout("vanishing", TTL + Duration::from_secs(3)).await.expect("freed within TTL + slack");
    assert!(next.fencing_token() > vanished_token, "{:?} after {vanished_token:?}", next.fencing_token());
}

/// A lock kept for three TTLs is refreshed in the background and granted to nobody else.
pub async fn a_refreshed_lock_is_held_for_three_ttls(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let guard = a.acquire("long-job").await.unwrap();
    let err = b.acquire_timeout("long-job", TTL * 3).await.expect_err("granted to a second holder while refreshed");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(guard.is_held(), "lost: {:?}", guard.loss_signal().reason());
    guard.release().await.expect("still held, so the release succeeds");
}

/// When the grant is removed behind the holder's back (an administrator's `force_release`
/// through another connection), the loss signal fires within the TTL, `is_held` turns false,
/// and work run under the lock is cancelled with `LockLost`.
pub async fn a_grant_removed_behind_the_holders_back_fires_the_loss_signal(t: &Target) {
    let (a, admin) = (t.connect().await, t.connect().await);
    let guard = a.acquire("stolen").await.unwrap();
    let work = guard.run_while_held(std::future::pending::<()>());
    let evict = async {
        assert!(admin.force_release("stolen").await.unwrap(), "there was a grant to remove");
        tokio::time::timeout(TTL, guard.lost()).await.expect("the loss signal fired within the TTL")
    };
    let (outcome, reason) = tokio::join!(work, evict);
    assert!(!reason.is_empty());
    assert!(!guard.is_held());
    assert!(matches!(outcome, Err(Error::LockLost { .. })), "{outcome:?}");
    assert!(admin.try_acquire("stolen").await.unwrap().is_some(), "the removed lock is free for others");
}

/// Revoking the lease that several locks of one handle share fires every guard on it, and the
/// backend frees their locks.
pub async fn revoking_a_lease_fires_every_guard_on_it(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let x = a.acquire("x").await.unwrap();
    let y = a.acquire("y").await.unwrap();
    assert_eq!(x.lease().id(), y.lease().id(), "one handle, one TTL: one lease");
    x.lease().revoke().await.unwrap();
    for guard in [&x, &y] {
        tokio::time::timeout(TTL, guard.lost()).await.expect("every guard on the lease fires");
    }
    assert!(b.try_acquire("x").await.unwrap().is_some() && b.try_acquire("y").await.unwrap().is_some());
    let fresh = a.acquire("z").await.unwrap();
    assert_ne!(fresh.lease().id(), x.lease().id(), "a lost lease is replaced");
    assert!(fresh.is_held());
}

/// `close()` releases every lock the handle holds and fires its guards' loss signals: another
/// handle gets the locks at once, long before their 30 s TTL could free them.
pub async fn closing_a_handle_releases_its_locks_and_fires_its_guards(t: &Target) {
    let long_ttl = Duration::from_secs(30);
    let (a, b) = (t.connect_to(&t.url_in("", long_ttl)).await, t.connect_to(&t.url_in("", long_ttl)).await);
    let guards = [a.acquire("closed-x").await.unwrap(), a.acquire("closed-y").await.unwrap()];
    a.close().await.expect("close");
    for guard in &guards {
        assert!(!guard.is_held(), "`{}` is still held after close()", guard.name());
        tokio::time::timeout(Duration::from_secs(1), guard.lost()).await.expect("the loss signal fired");
    }
    for guard in &guards {
        let taken = b.try_acquire(guard.name()).await.unwrap();
        let taken = taken.unwrap_or_else(|| panic!("`{}` is not free at once after close()", guard.name()));
        assert!(taken.fencing_token() > guard.fencing_token());
    }
}

/// `close()` also ends the handle's waits (an acquire under way fails instead of queueing again
/// on a fresh lease), and a closed handle takes no more locks: it says so instead.
pub async fn a_closed_handle_ends_its_waits_and_takes_no_more_locks(t: &Target) {
    let long_ttl = Duration::from_secs(30);
    let (a, b) = (t.connect_to(&t.url_in("", long_ttl)).await, t.connect_to(&t.url_in("", long_ttl)).await);
    let held = b.acquire("closed-wait").await.unwrap();
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.acquire("closed-wait").await.map(|g| g.fencing_token()) })
    };
    // Queued first where the backend counts waiters; elsewhere it fails just as well before.
    if b.status("closed-wait").await.unwrap().waiting.is_some() {
        in_line(b.as_ref(), "closed-wait", 1).await;
    }
    a.close().await.expect("close");
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the wait ended at close()");
    let err = ended.unwrap().expect_err("a wait of a closed handle fails");
    assert!(err.to_string().contains("closed"), "the error says the handle was closed: {err}");
    let err = a.try_acquire("closed-other").await.expect_err("a closed handle takes no more locks");
    assert!(err.to_string().contains("closed"), "{err}");
    assert!(b.try_acquire("closed-other").await.unwrap().is_some(), "and it left nothing behind");
    drop(held);
}

/// A waiter of a closed handle leaves the line: the waiter behind it gets the lock as soon as
/// it is released, not when the closed waiter's entry would have expired (30 s here).
pub async fn a_closed_handles_waiter_does_not_hold_up_the_line(t: &Target) {
    let long_ttl = Duration::from_secs(30);
    let url = t.url_in("", long_ttl);
    let (a, b, c) = (t.connect_to(&url).await, t.connect_to(&url).await, t.connect_to(&url).await);
    let held = b.acquire("closed-line").await.unwrap();
    let counted = b.status("closed-line").await.unwrap().waiting.is_some();
    let first = tokio::spawn({
        let a = a.clone();
        async move { a.acquire("closed-line").await.map(|g| g.fencing_token()) }
    });
    if counted {
        in_line(b.as_ref(), "closed-line", 1).await;
    }
    let behind = tokio::spawn(async move { c.acquire("closed-line").await.map(|g| (g.fencing_token(), g)) });
    if counted {
        in_line(b.as_ref(), "closed-line", 2).await;
    }
    a.close().await.expect("close");
    assert!(first.await.unwrap().is_err(), "the closed handle's wait ended");
    let token = held.fencing_token();
    drop(held);
    let (next, _guard) = tokio::time::timeout(Duration::from_secs(5), behind)
        .await
        .expect("the waiter behind a closed handle's waiter got the lock promptly")
        .unwrap()
        .unwrap();
    assert!(next > token);
}

/// A `try_acquire` racing `close()`: once both are done — whatever the acquire returned, kept
/// alive — another handle gets the name at once (30 s TTL). A grant made on the lease the
/// close was revoking must not outlive the close.
pub async fn an_acquire_racing_close_leaves_the_name_free(t: &Target) {
    let long_ttl = Duration::from_secs(30);
    let url = t.url_in("", long_ttl);
    let other = t.connect_to(&url).await;
    let mut blocked = Vec::new();
    for round in 0..40u64 {
        let a = t.connect_to(&url).await;
        let name = format!("close-race-{round}");
        // The lease exists first (a lock on it), so the race is between its grant and the close.
        let warm = a.acquire(&format!("close-race-warm-{round}")).await.unwrap();
        let tried = {
            let (a, name) = (a.clone(), name.clone());
            tokio::spawn(async move { a.try_acquire(&name).await })
        };
        tokio::time::sleep(Duration::from_micros(150 * (round % 12))).await;
        a.close().await.expect("close");
        let kept = tried.await.unwrap();
        if !matches!(other.try_acquire(&name).await, Ok(Some(_))) {
            blocked.push((round, kept.map(|g| g.map(|g| g.is_held())).map_err(|e| e.to_string())));
        }
        drop(warm);
    }
    assert!(blocked.is_empty(), "held after close() returned (round, what the acquire returned): {blocked:?}");
}

/// Dropping a guard releases the lock: a waiter gets it far sooner than the TTL would allow.
pub async fn dropping_a_guard_lets_a_waiter_in_promptly(t: &Target) {
    let long_ttl = Duration::from_secs(30);
    let (a, b) = (t.connect_to(&t.url_in("", long_ttl)).await, t.connect_to(&t.url_in("", long_ttl)).await);
    let guard = a.acquire("handoff").await.unwrap();
    let waiter = tokio::spawn(async move { b.acquire("handoff").await.map(|g| g.fencing_token()) });
    let first = guard.fencing_token();
    drop(guard);
    let next = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("granted long before the 30 s TTL: the drop released it")
        .unwrap()
        .unwrap();
    assert!(next > first);
}

/// An acquire that times out, or whose future is dropped while waiting — even right as the lock
/// is handed to it — leaves no waiter and no orphan grant behind.
pub async fn a_dropped_acquire_leaves_nothing_behind(t: &Target) {
    let (a, b, c) = (t.connect().await, t.connect().await, t.connect().await);
    let guard = a.acquire("cancel").await.unwrap();
    assert!(b.acquire_timeout("cancel", Duration::from_millis(100)).await.is_err());
    tokio::select! {
        _ = b.acquire("cancel") => panic!("granted while held"),
        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
    guard.release().await.unwrap();
    // (The dropped waiters clean up in the background: give them a moment, far below the TTL.)
    let taken = c.acquire_timeout("cancel", TTL / 2).await.expect("no abandoned waiter is ahead in line");
    taken.release().await.unwrap();
    assert!(!c.status("cancel").await.unwrap().held, "nothing holds the lock");

    for _ in 0..10 {
        let guard =
            a.acquire_timeout("race", TTL / 2).await.expect("no orphan grant of the last round blocks the lock");
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.acquire("race").await });
        tokio::task::yield_now().await;
        drop(guard);
        waiter.abort();
        if let Ok(Ok(won)) = waiter.await {
            drop(won);
        }
        let next = c.acquire_timeout("race", TTL / 2).await.expect("no orphan grant blocks the lock until its TTL");
        next.release().await.unwrap();
    }

    // Dropped while its first request is in flight: whatever that request did is undone.
    for _ in 0..10 {
        let mut acquire = Box::pin(b.acquire("in-flight"));
        let granted = std::future::poll_fn(|cx| std::task::Poll::Ready(acquire.as_mut().poll(cx))).await;
        drop(granted);
        drop(acquire);
        let next = c.acquire_timeout("in-flight", TTL / 2).await.expect("the dropped acquire left no grant behind");
        next.release().await.unwrap();
    }
}

/// Releasing a guard whose grant was removed and re-granted reports an error and leaves the
/// new holder's grant untouched.
pub async fn a_stale_release_leaves_the_new_holder_alone(t: &Target) {
    let (a, b, admin) = (t.connect().await, t.connect().await, t.connect().await);
    let stale = a.acquire("shared").await.unwrap();
    assert!(admin.force_release("shared").await.unwrap());
    let current = b.acquire_timeout("shared", TTL).await.unwrap();
    let err = stale.release().await.expect_err("releasing a lost grant is an error");
    assert!(matches!(err, Error::NotHeld { .. } | Error::LockLost { .. }), "{err}");
    assert!(current.is_held());
    assert!(admin.try_acquire("shared").await.unwrap().is_none(), "the new holder's grant is still there");
    if let Some(token) = admin.status("shared").await.unwrap().token {
        assert_eq!(token, current.fencing_token());
    }
}

/// Names with separators, dots, NUL, unicode and the maximum length are distinct locks that
/// stay inside the namespace; empty and oversized names are `InvalidName` everywhere.
pub async fn names_are_escaped_and_validated(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let names = [
        "plain".to_owned(),
        "a/b".into(),
        "a%2Fb".into(),
        "a".into(),
        ".".into(),
        "..".into(),
        "../escape".into(),
        "nul\0byte".into(),
        "ünïcødé 🔒 name".into(),
        "x".repeat(lockkit::MAX_NAME_LEN),
        "🔒".repeat(lockkit::MAX_NAME_LEN / 4),
    ];
    let mut guards = Vec::new();
    for name in &names {
        let guard = a.try_acquire(name).await.unwrap_or_else(|e| panic!("{name:?}: {e}"));
        guards.push(guard.unwrap_or_else(|| panic!("{name:?} collided with another name")));
    }
    for name in &names {
        assert!(b.try_acquire(name).await.unwrap().is_none(), "{name:?} is not really held");
    }
    // Where a naive join would have put `../escape` and `a/b`:
    let root = t.connect_to(&t.root_url()).await;
    assert!(root.try_acquire("escape").await.unwrap().is_some(), "`../escape` left its namespace");
    let below = t.connect_to(&t.url_in("/a", TTL)).await;
    assert!(below.try_acquire("b").await.unwrap().is_some(), "`a/b` reached into namespace `a`");
    for bad in ["".to_owned(), "x".repeat(lockkit::MAX_NAME_LEN + 1)] {
        assert!(matches!(a.try_acquire(&bad).await, Err(Error::InvalidName { .. })));
        assert!(matches!(a.acquire(&bad).await, Err(Error::InvalidName { .. })));
        assert!(matches!(a.status(&bad).await, Err(Error::InvalidName { .. })));
        assert!(matches!(a.force_release(&bad).await, Err(Error::InvalidName { .. })));
    }
}

/// The same name in two namespaces is two locks, also when one namespace nests in the other.
pub async fn namespaces_never_interfere(t: &Target) {
    let one = t.connect_to(&t.url_in("/one", TTL)).await;
    let two = t.connect_to(&t.url_in("/two", TTL)).await;
    let nested = t.connect_to(&t.url_in("/one/x", TTL)).await;
    let _a = one.acquire("job").await.unwrap();
    assert!(two.try_acquire("job").await.unwrap().is_some());
    let _b = one.acquire("x/job").await.unwrap();
    assert!(nested.try_acquire("job").await.unwrap().is_some(), "`x/job` in `one` is not `job` in `one/x`");
}

/// One connection holding 1,000 locks keeps every one alive past twice the TTL.
pub async fn one_connection_keeps_a_thousand_locks_alive(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let mut guards = Vec::new();
    for i in 0..1000 {
        guards.push(a.acquire(&format!("many-{i}")).await.unwrap());
    }
    let first: Vec<FencingToken> = guards.iter().map(|g| g.fencing_token()).collect();
    tokio::time::sleep(TTL * 2).await; // the point of the test: time passes
    for (i, guard) in guards.iter().enumerate() {
        assert!(guard.is_held(), "lock {i} lost: {:?}", guard.loss_signal().reason());
        assert!(b.try_acquire(&format!("many-{i}")).await.unwrap().is_none(), "lock {i} expired");
    }
    assert_eq!(first, guards.iter().map(|g| g.fencing_token()).collect::<Vec<_>>());
}

/// `status` shows a held lock, its token where the backend stores it, and a released lock as
/// free.
pub async fn status_shows_the_holder_and_token(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    assert!(!b.status("shown").await.unwrap().held);
    let options = LockOptions::new().holder("conformance holder 7");
    let guard = a.acquire_with("shown", &options).await.unwrap().unwrap();
    let status = b.status("shown").await.unwrap();
    assert!(status.held);
    if let Some(token) = status.token {
        assert_eq!(token, guard.fencing_token());
    }
    if let Some(left) = status.ttl_left {
        assert!(left <= TTL, "{left:?}");
    }
    guard.release().await.unwrap();
    assert!(!b.status("shown").await.unwrap().held);
}

/// `status` shows a held lock's holder metadata, the backend storing it.
pub async fn status_shows_the_holders_metadata(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let options = LockOptions::new().holder("conformance holder 7");
    let guard = a.acquire_with("shown", &options).await.unwrap().unwrap();
    let status = b.status("shown").await.unwrap();
    assert_eq!(status.holder.as_deref(), Some("conformance holder 7"));
    guard.release().await.unwrap();
}

/// One handle, one name, two acquires: the second is not granted while the first guard holds
/// (on some backends both would be the same grant on the server), and gets the lock, with a
/// larger token, once the first is released.
pub async fn the_same_name_twice_through_one_handle_waits_for_the_first_guard(t: &Target) {
    let locks = t.connect().await;
    let first = locks.acquire("twice").await.unwrap();
    assert!(locks.try_acquire("twice").await.unwrap().is_none(), "granted twice through one handle");
    let second = tokio::spawn({
        let locks = locks.clone();
        async move { locks.acquire_timeout("twice", Duration::from_secs(5)).await.map(|g| g.fencing_token()) }
    });
    let token = first.fencing_token();
    first.release().await.unwrap();
    assert!(second.await.unwrap().unwrap() > token);
}

/// Three waiters in different handles are all granted once the holder releases; where the
/// backend keeps a line, `status` counts it.
pub async fn waiters_in_line_are_all_granted(t: &Target) {
    let (_, order) = three_waiters_in_line(t).await;
    assert_eq!(order.len(), 3);
}

/// A fair backend counts its line in `status` and grants waiters in different handles in the
/// order they joined the line.
pub async fn a_fair_backend_grants_in_arrival_order(t: &Target) {
    let (counted, order) = three_waiters_in_line(t).await;
    assert!(counted == Some(0), "a fair backend counts its line in `status`: {counted:?}");
    assert_eq!(order.len(), 3);
    assert_eq!(order, vec![0, 1, 2], "granted out of arrival order");
}

/// Three waiters join the line of a held lock (one after the other, where `status` counts the
/// line), then the holder releases: what `status` counted before they came, and the order they
/// were granted in.
async fn three_waiters_in_line(t: &Target) -> (Option<usize>, Vec<usize>) {
    let holder = t.connect().await;
    let guard = holder.acquire("line").await.unwrap();
    let counted = holder.status("line").await.unwrap().waiting;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..3 {
        let (locks, order) = (t.connect().await, order.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locks.acquire_timeout("line", Duration::from_secs(30)).await.unwrap();
            order.lock().unwrap().push(i);
            guard.release().await.unwrap();
        }));
        if counted.is_some() {
            in_line(holder.as_ref(), "line", i + 1).await;
        }
    }
    guard.release().await.unwrap();
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    (counted, order)
}
