//! Elections: campaign, leader, resign on every backend; observe and proclaim where the
//! backend pushes changes (`observe` in the `conformance!` line).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lockkit::{Error, FencingToken, Leader, LeaderChanges};

use crate::Target;
use crate::support::TTL;

/// How long an observer may take to see a change.
const SEEN_WITHIN: Duration = Duration::from_secs(5);

/// The leader shows the value it campaigned with and its term; nobody else wins meanwhile.
pub async fn the_leader_shows_its_value_and_term(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    assert_eq!(b.leader("board").await.unwrap(), None, "nobody leads before a campaign");
    let leadership = a.try_campaign("board", "node-a:8080").await.unwrap().expect("an empty election is won");
    assert!(leadership.is_leader());
    assert_eq!((leadership.election(), leadership.value().as_str()), ("board", "node-a:8080"));
    let seen = b.leader("board").await.unwrap();
    assert_eq!(seen, Some(Leader { value: "node-a:8080".into(), term: leadership.term() }));
    assert!(b.try_campaign("board", "node-b").await.unwrap().is_none(), "two leaders at once");
    leadership.resign().await.unwrap();
    assert_eq!(b.leader("board").await.unwrap(), None, "nobody leads after the resign");
}

/// An election and a lock of one name are one: a lock held keeps every candidate from leading
/// (and shows as the leader), and a leader keeps every acquire out. (On ZooKeeper with
/// `recipe=curator-latch` a candidate's node is named as Curator's `LeaderLatch` names its own,
/// a lock's as `InterProcessMutex` does: both kinds are one line.)
pub async fn a_lock_and_an_election_of_one_name_are_one(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let guard = a.acquire("one-line").await.unwrap();
    assert!(b.try_campaign("one-line", "candidate").await.unwrap().is_none(), "a candidate led past a held lock");
    let seen = b.leader("one-line").await.unwrap().expect("the lock's holder shows as the leader");
    assert_eq!(seen.term, guard.fencing_token());
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign_timeout("one-line", "candidate", 4 * TTL).await })
    };
    guard.release().await.unwrap();
    let leadership = waiting.await.unwrap().expect("the candidate leads once the lock is released");
    assert!(leadership.term() > seen.term, "the term continues the lock's tokens");
    assert!(a.try_acquire("one-line").await.unwrap().is_none(), "a lock taken past a leader");
    leadership.resign().await.unwrap();
    assert!(a.try_acquire("one-line").await.unwrap().is_some(), "free once the leader resigned");
}

/// Three candidates on their own handles campaign in turns: never two leaders at once, each
/// sees itself as the leader while it leads, and terms strictly increase in the order the
/// leaders led.
pub async fn one_leader_at_a_time_with_increasing_terms(t: &Target) {
    let inside = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut candidates = Vec::new();
    for i in 0..3 {
        let (handle, inside, terms) = (t.connect().await, inside.clone(), terms.clone());
        candidates.push(tokio::spawn(async move {
            for round in 0..4 {
                let value = format!("candidate-{i}-{round}");
                let leadership = handle.campaign("turns", &value).await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two leaders at once");
                terms.lock().unwrap().push(leadership.term());
                let seen = handle.leader("turns").await.unwrap().expect("a leader while leading");
                assert_eq!((seen.value, seen.term), (value, leadership.term()));
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                leadership.resign().await.unwrap();
            }
        }));
    }
    for candidate in candidates {
        candidate.await.unwrap();
    }
    let terms = terms.lock().unwrap();
    assert_eq!(terms.len(), 12);
    assert!(terms.windows(2).all(|w| w[0] < w[1]), "terms in leadership order: {terms:?}");
}

/// A waiting candidate leads once the leader resigns, and once the leader's handle drops its
/// leadership; a later term each time.
pub async fn a_resign_or_a_drop_hands_over(t: &Target) {
    let (a, b) = (t.connect().await, t.connect().await);
    let first = a.campaign("handover", "a").await.unwrap();
    let second = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("handover", "b").await.unwrap() })
    };
    let term = first.term();
    first.resign().await.unwrap();
    let second = tokio::time::timeout(SEEN_WITHIN, second).await.expect("the waiting candidate leads").unwrap();
    assert!(second.term() > term && second.is_leader());
    let third = tokio::spawn(async move { a.campaign("handover", "a again").await.unwrap() });
    let term = second.term();
    drop(second);
    let third = tokio::time::timeout(SEEN_WITHIN, third).await.expect("a dropped leadership is resigned").unwrap();
    assert!(third.term() > term);
}

/// A campaign given up (timed out, or its future dropped) leaves no candidate behind: once the
/// leader resigns, nobody leads — the abandoned candidate did not win in its absence.
pub async fn a_cancelled_campaign_leaves_no_candidate(t: &Target) {
    let (a, b, c) = (t.connect().await, t.connect().await, t.connect().await);
    let leader = a.campaign("abandoned", "a").await.unwrap();
    let err = b.campaign_timeout("abandoned", "b", Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let dropped = tokio::time::timeout(Duration::from_millis(300), c.campaign("abandoned", "c")).await;
    assert!(dropped.is_err(), "nobody wins while `a` leads");
    leader.resign().await.unwrap();
    // Within the request timeout: a cleanup still under way may answer first.
    let settled = tokio::time::timeout(SEEN_WITHIN, async {
        loop {
            if b.leader("abandoned").await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "an abandoned candidate leads: {:?}", b.leader("abandoned").await);
    let winner = b.try_campaign("abandoned", "b again").await.unwrap();
    assert!(winner.is_some(), "the election is free");
}

/// A leader deposed behind its back (its grant removed) knows it, and its proclaim is refused
/// and changes nothing; the next leader's term is above it.
pub async fn a_deposed_leader_cannot_proclaim(t: &Target) {
    let (a, admin) = (t.connect().await, t.connect().await);
    let leadership = a.campaign("deposed", "a").await.unwrap();
    leadership.proclaim("a, proclaimed").await.unwrap();
    assert_eq!(admin.leader("deposed").await.unwrap().unwrap().value, "a, proclaimed");
    assert!(admin.force_release("deposed").await.unwrap());
    tokio::time::timeout(TTL, leadership.lost()).await.expect("the deposed leader knows it within the TTL");
    let err = leadership.proclaim("a, deposed").await.unwrap_err();
    assert!(matches!(err, Error::LockLost { .. } | Error::NotHeld { .. }), "{err}");
    let next = admin.campaign("deposed", "admin").await.unwrap();
    assert!(next.term() > leadership.term());
    assert_eq!(admin.leader("deposed").await.unwrap().unwrap().value, "admin", "the refused proclaim wrote nothing");
}

/// Proclaims of one leadership at once: afterwards its `term()` and `value()` are what
/// `leader()` shows — the last write, not whichever answer came back last. (Found by review on
/// Consul, whose term moves with each write, and ZooKeeper.)
pub async fn concurrent_proclaims_leave_the_last_write(t: &Target) {
    let locks = t.connect().await;
    let leadership = Arc::new(locks.campaign("proclaims", "v").await.unwrap());
    for round in 0..30 {
        let proclaims: Vec<_> = (0..3)
            .map(|i| {
                let leadership = leadership.clone();
                tokio::spawn(async move { leadership.proclaim(&format!("r{round}-{i}")).await })
            })
            .collect();
        for proclaim in proclaims {
            proclaim.await.unwrap().unwrap();
        }
        let shown = locks.leader("proclaims").await.unwrap().expect("still the leader");
        assert_eq!((leadership.value(), leadership.term()), (shown.value.clone(), shown.term), "round {round}");
    }
}

/// The next change an observer sees, within [`SEEN_WITHIN`].
async fn next_change(changes: &mut LeaderChanges) -> Option<Leader> {
    tokio::time::timeout(SEEN_WITHIN, changes.next()).await.expect("the observer saw the change").unwrap()
}

/// An observer sees the leader now, then every change in order and none twice: a leader, its
/// proclaim, the handover to the next term, and nobody leading.
pub async fn observers_see_every_change_in_order(t: &Target) {
    let (a, b, observer) = (t.connect().await, t.connect().await, t.connect().await);
    let mut changes = observer.observe("watched").await.unwrap();
    assert_eq!(next_change(&mut changes).await, None, "first: nobody leads yet");
    let first = a.campaign("watched", "a").await.unwrap();
    let term = first.term();
    assert_eq!(next_change(&mut changes).await, Some(Leader { value: "a".into(), term }));
    first.proclaim("a2").await.unwrap();
    // The same term (on Consul, whose tokens index writes, the proclaim's own and later one).
    assert!(first.term() >= term);
    let term = first.term();
    assert_eq!(next_change(&mut changes).await, Some(Leader { value: "a2".into(), term }));
    assert_eq!(observer.leader("watched").await.unwrap(), Some(Leader { value: "a2".into(), term }));
    let second = tokio::spawn(async move { b.campaign("watched", "b").await.unwrap() });
    first.resign().await.unwrap();
    let second = second.await.unwrap();
    // A handover may or may not pass through "nobody leads".
    let mut seen = next_change(&mut changes).await;
    if seen.is_none() {
        seen = next_change(&mut changes).await;
    }
    assert_eq!(seen, Some(Leader { value: "b".into(), term: second.term() }));
    assert!(second.term() > term);
    drop(second);
    assert_eq!(next_change(&mut changes).await, None, "nobody leads after the drop");
    let quiet = tokio::time::timeout(Duration::from_millis(300), changes.next()).await;
    assert!(quiet.is_err(), "a change shown twice: {quiet:?}");
}

/// Terms an observer sees only ever increase, across many quick handovers.
pub async fn observed_terms_only_increase(t: &Target) {
    let observer = t.connect().await;
    let mut changes = observer.observe("quick").await.unwrap();
    let watcher = tokio::spawn(async move {
        let mut terms: Vec<FencingToken> = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(500), changes.next()).await {
                Ok(Ok(Some(leader))) => terms.push(leader.term),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => panic!("the observation failed: {e}"),
                Err(_) => return terms,
            }
        }
    });
    let handles = [t.connect().await, t.connect().await];
    let mut led = Vec::new();
    for round in 0..10 {
        let leadership = handles[round % 2].campaign("quick", &format!("round {round}")).await.unwrap();
        led.push(leadership.term());
        leadership.resign().await.unwrap();
    }
    // The last leader stays until the observer has gone quiet: it is seen, whatever was skipped.
    let last = handles[0].campaign("quick", "last").await.unwrap();
    led.push(last.term());
    let seen = watcher.await.unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "observed terms went backwards or repeated: {seen:?}");
    assert!(seen.iter().all(|t| led.contains(t)), "a term nobody led: {seen:?} vs {led:?}");
    assert_eq!(seen.last(), Some(&last.term()), "the last leader was seen");
}
