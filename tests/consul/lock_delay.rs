//! The lock-delay bounds how long a guard counts as held: Consul can end a session before its
//! TTL without the holder hearing of it (its node deregistered, its agent gone), and from then
//! on only the lock-delay keeps the next holder out.

use lockkit_testkit::proxy::{Direction, ProxySet};

use super::*;

/// `consul://ADDR?ttl=…&lock_delay=…`.
fn timed_url(addr: std::net::SocketAddr, ttl: Duration, lock_delay: Duration) -> String {
    format!("consul://{addr}?ttl={}ms&lock_delay={}ms", ttl.as_millis(), lock_delay.as_millis())
}

/// The holder's agent goes away (nothing it sends reaches Consul, nothing comes back) and its
/// node is deregistered, which ends its session behind its back. A second handle gets the lock
/// once the lock-delay is over; by then the first guard has reported its loss: its local
/// deadline is before the server's grant, it reads as not held when the second acquire
/// returns, and its loss signal fired no later.
async fn a_session_ended_behind_the_holders_back_never_overlaps_the_next_holder(ttl: Duration, lock_delay: Duration) {
    let double = double();
    let proxies = ProxySet::start(&[double.addr]).await;
    let holder = connect(&timed_url(proxies.addrs()[0], ttl, lock_delay)).await;
    let guard = holder.acquire("ended").await.unwrap();
    let signal = guard.loss_signal();
    let lost = tokio::spawn(async move {
        signal.lost().await;
        Instant::now()
    });
    proxies.refuse(true);
    proxies.hold(Direction::Both);
    double.deregister_node();
    let next = connect(&timed_url(double.addr, ttl, lock_delay)).await;
    let taken = next.acquire_timeout("ended", BOUND).await.expect("granted after the lock-delay");
    let (taken_at, held_then) = (Instant::now(), guard.is_held());
    let granted_at = double.granted_at("ended/.lock").expect("the double saw the grant");
    let deadline = guard.valid_until();
    assert!(
        deadline <= granted_at,
        "the first guard counted as held until {:?} after the second grant",
        deadline - granted_at
    );
    assert!(!held_then, "the first guard still read as held when the second handle got the lock");
    let lost_at = bounded("the first guard's loss signal", lost).await.unwrap();
    assert!(lost_at <= taken_at, "the loss signal fired {:?} after the second acquire returned", lost_at - taken_at);
    assert!(taken.fencing_token() > guard.fencing_token());
    proxies.release();
}

/// With a lock-delay shorter than the TTL, the lock-delay bounds the guard (with the TTL alone
/// it read as held for about a second after the next grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_delay_shorter_than_the_ttl_bounds_the_guard() {
    let (ttl, lock_delay) = (Duration::from_secs(2), Duration::from_millis(700));
    a_session_ended_behind_the_holders_back_never_overlaps_the_next_holder(ttl, lock_delay).await;
}

/// With a lock-delay longer than the TTL, the TTL bounds the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_delay_longer_than_the_ttl_leaves_the_ttl_bounding_the_guard() {
    let (ttl, lock_delay) = (Duration::from_secs(1), Duration::from_secs(2));
    a_session_ended_behind_the_holders_back_never_overlaps_the_next_holder(ttl, lock_delay).await;
}

/// A lock-delay nothing can be renewed within is refused at connect, saying why and what to set:
/// none at all, one below 100 ms, one below twice an explicit refresh interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_delay_too_short_to_renew_within_is_refused_at_connect() {
    let double = double();
    for query in ["&lock_delay=0s", "&lock_delay=50ms", "&lock_delay=600ms&refresh=400ms"] {
        let err = match lockkit::connect(&url(&double, query)).await {
            Ok(_) => panic!("{query}: connected"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("too short")
                && err.contains("only the lock-delay keeps others out")
                && err.contains("Set `lock_delay`"),
            "{query}: {err}"
        );
    }
    assert!(double.sessions().is_empty(), "a refused handle created a session");
}

/// Under a lock-delay shorter than the TTL, renews come often enough to keep a guard held for
/// many lock-delays, and its local deadline is never further than the lock-delay away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_fit_within_a_lock_delay_shorter_than_the_ttl() {
    let double = double();
    let lock_delay = Duration::from_millis(600);
    let locks = connect(&url(&double, "&lock_delay=600ms")).await;
    let other = connect(&url(&double, "&lock_delay=600ms")).await;
    let guard = locks.acquire("renewed").await.unwrap();
    let err = other.acquire_timeout("renewed", lock_delay * 4).await.expect_err("granted to a second holder");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(guard.is_held(), "lost: {:?}", guard.loss_signal().reason());
    assert!(guard.valid_until() <= Instant::now() + lock_delay, "a deadline further away than the lock-delay");
    guard.release().await.unwrap();
}
