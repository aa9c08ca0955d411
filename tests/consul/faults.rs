//! What Consul does that a lock must survive: writes applied after their client gave up,
//! releases it cannot confirm, blocking queries answered at the end of its jitter, lock-delays
//! of other sessions, rate limiting, indexes going backwards, sessions invalidated before
//! their TTL.

use super::*;

/// Waits (with blocking queries) until `key` is missing or held by no session.
async fn until_free(double: &ConsulDouble, key: &str) {
    let free = async {
        let mut index = 0;
        loop {
            let (status, body, next) =
                http_indexed(double, "GET", &format!("/v1/kv/{key}?index={index}&wait=5s"), "").await;
            if status == 404 || body[0]["Session"].is_null() {
                return;
            }
            index = next.unwrap();
        }
    };
    tokio::time::timeout(BOUND, free).await.unwrap_or_else(|_| panic!("{key} still held after {BOUND:?}"));
}

/// An acquire whose answer does not come within the request timeout may still be applied by
/// Consul later — after any release sent behind it, which would then leave the key held by the
/// handle's live session for good. The handle gives that session up instead (its other guards
/// fire), whether the acquire failed on the timeout or its caller gave up first; later
/// acquires get a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_consul_applies_after_its_timeout_gives_the_session_up() {
    let double = double();
    let locks = connect(&url(&double, "&timeout=500ms&lock_delay=1s")).await;
    for (name, caller_gives_up_first) in [("late", false), ("later", true)] {
        let bystander = locks.acquire("bystander").await.unwrap();
        let session = bystander.lease().id().to_owned();
        double.hold(Write::Acquire, Duration::from_millis(1500), 1);
        let err = if caller_gives_up_first {
            locks.acquire_timeout(name, Duration::from_millis(100)).await.unwrap_err()
        } else {
            locks.try_acquire(name).await.unwrap_err()
        };
        assert!(err.is_temporary(), "{err}");
        let reason = bounded("the bystander's loss", bystander.lost()).await;
        assert!(reason.contains(name) && reason.contains("given up"), "{reason}");
        bounded("the session's end", double.session_ended(&session)).await;
        bounded("the held acquire", double.held_writes_applied()).await;
        let key = format!("{name}/.lock");
        let (status, held) = http(&double, "GET", &format!("/v1/kv/{key}"), "").await;
        assert!(status == 404 || held[0]["Session"].is_null(), "the late acquire left {key} held: {held}");
        let again = locks.acquire_timeout(name, Duration::from_secs(2)).await.unwrap();
        assert_ne!(again.lease().id(), session, "a new session");
    }
}

/// An acquire whose caller gave up while Consul held it, but which was answered within the
/// request timeout, is released once answered — and the session, which holds other locks, is
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_answered_after_its_caller_gave_up_is_released() {
    let double = double();
    let locks = connect(&url(&double, "&timeout=2s")).await;
    let bystander = locks.acquire("bystander").await.unwrap();
    double.hold(Write::Acquire, Duration::from_millis(300), 1);
    let err = locks.acquire_timeout("slow", Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    bounded("the held acquire", double.held_writes_applied()).await;
    until_free(&double, "slow/.lock").await;
    assert!(bystander.is_held());
    let again = locks.try_acquire("slow").await.unwrap().expect("free again");
    assert_eq!(again.lease().id(), bystander.lease().id(), "the same session");
}

/// A release Consul does not confirm within the request timeout gives the session up; the
/// session's revoke still releases the key before destroying the session, so the next holder
/// does not wait out a lock-delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_cannot_be_confirmed_frees_the_key_without_a_lock_delay() {
    let double = double();
    let locks = connect(&url(&double, "&timeout=500ms&lock_delay=5s")).await;
    let guard = locks.acquire("stuck").await.unwrap();
    let session = guard.lease().id().to_owned();
    double.hold(Write::Release, Duration::from_millis(1500), 1);
    let err = guard.release().await.unwrap_err();
    assert!(err.to_string().contains("given up"), "{err}");
    bounded("the session's end", double.session_ended(&session)).await;
    let other = connect(&url(&double, "")).await;
    let taken = other.try_acquire("stuck").await.unwrap();
    assert!(taken.is_some(), "the key was left to its lock-delay");
    let taken = taken.unwrap();
    bounded("the held release", double.held_writes_applied()).await;
    let held = entry(&double, "stuck/.lock").await;
    assert_eq!(held["Session"].as_str(), Some(taken.lease().id()), "the late release touched the new holder");
}

/// Consul may answer a blocking query as late as wait + wait / 16. With a request timeout
/// shorter than that jitter (400 ms against 8 s / 16 = 500 ms), a late answer is not taken for a
/// dead server: the waiter keeps waiting until its own deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_answered_at_the_end_of_consuls_jitter_is_no_failure() {
    let double = double();
    double.latest_blocking_answers(true);
    let holder = connect(&url(&double, "")).await;
    let _guard = holder.acquire("busy").await.unwrap();
    let waiter = connect(&url(&double, "&timeout=400ms&blocking_wait=8s")).await;
    let err = waiter.acquire_timeout("busy", Duration::from_secs(9)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(double.blocking_queries_timed_out() >= 1, "the waiter's blocking query ran to its end");
}

/// A waiter refused in another session's lock-delay (15 s here) backs off up to 1 s between
/// tries, whatever this handle's own `lock_delay` (1 s here): the delay in force is not its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_in_a_foreign_lock_delay_backs_off_whatever_its_own_lock_delay() {
    let double = double();
    let theirs = session(&double, r#"{"TTL": "15s", "LockDelay": "15s", "NodeChecks": []}"#).await;
    let acquire = format!("/v1/kv/delayed/.lock?acquire={theirs}&flags={}", lockkit::consul::FLAGS);
    assert_eq!(http(&double, "PUT", &acquire, "").await.1, Value::Bool(true));
    double.destroy_session(&theirs);
    let locks = connect(&url(&double, "&lock_delay=1s")).await;
    let before = double.acquires();
    let err = locks.acquire_timeout("delayed", Duration::from_secs(3)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let tries = double.acquires() - before;
    assert!(tries <= 8, "{tries} acquire requests in 3 s of a foreign lock-delay");
}

/// Requests Consul's rate limiter refuses (429, 503: nothing applied) are sent again: acquire and
/// release go through; a limiter that keeps refusing is a temporary error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_requests_are_sent_again() {
    let double = double();
    let locks = connect(&url(&double, "&timeout=1s")).await;
    double.fail_next(Fault::TooManyRequests, 3);
    let guard = locks.try_acquire("limited").await.unwrap().expect("granted through 429s");
    double.fail_next(Fault::Unavailable, 3);
    guard.release().await.expect("released through 503s");
    double.set_fault(Some(Fault::TooManyRequests));
    let err = locks.try_acquire("limited").await.unwrap_err();
    assert!(err.is_temporary() && err.to_string().contains("429"), "{err}");
    double.set_fault(None);
    assert!(locks.try_acquire("limited").await.unwrap().is_some());
}

/// Indexes can go backwards (the servers rebuilt from an older snapshot). A waiter whose
/// answer comes back with a lower index than it asked for starts over from there: it is woken
/// by the next change at once, instead of blocking on an index Consul may not reach for long
/// (and noticing changes only when each wait ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_starts_over_when_the_index_goes_backwards() {
    let double = double();
    let client = client();
    for value in 0..100 {
        // The index to fall back from.
        let url = format!("http://{}/v1/kv/busywork", double.addr);
        assert!(client.put(url).body(value.to_string()).send().await.unwrap().status().is_success());
    }
    let holder = connect(&url(&double, "")).await;
    let waiter = connect(&url(&double, "&blocking_wait=1s")).await;
    let guard = holder.acquire("rewound").await.unwrap();
    let waiting = tokio::spawn(async move { waiter.acquire_timeout("rewound", Duration::from_secs(5)).await });
    bounded("the blocking queries", double.blocking_queries_on("rewound/.lock", 2)).await;
    double.rewind_index(1000);
    // The holder writes its key again (as `api.Lock` may): a lower index, the same holder.
    let again = format!("/v1/kv/rewound/.lock?acquire={}&flags={}", guard.lease().id(), lockkit::consul::FLAGS);
    assert_eq!(http(&double, "PUT", &again, "again").await.1, Value::Bool(true));
    // The waiter sees that lower index when its blocking wait ends; then the holder releases.
    bounded("the waiter's wait", double.until_blocking_queries_timed_out(1)).await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let taken = waiting.await.unwrap().expect("granted");
    // Without starting over it would be woken only when its next wait (1 s) ends.
    assert!(released.elapsed() < Duration::from_millis(750), "woken {:?} after the release", released.elapsed());
    assert!(taken.is_held());
}

/// Deregistering the agent's node invalidates every session on it before its TTL: the holder's
/// guard fires its loss signal, and a waiter on the same agent gets the lock on a new session
/// once the lock-delay has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deregistered_behind_the_holders_back_fires_the_loss_signal() {
    let double = double();
    let delay = Duration::from_secs(1);
    let holder = connect(&url(&double, "&lock_delay=1s")).await;
    let waiter = connect(&url(&double, "&lock_delay=1s")).await;
    let guard = holder.acquire("node").await.unwrap();
    let waiting = tokio::spawn(async move { waiter.acquire_timeout("node", Duration::from_secs(5)).await });
    bounded("the blocking queries", double.blocking_queries_on("node/.lock", 2)).await;
    let started = Instant::now();
    double.deregister_node();
    let reason = tokio::time::timeout(TTL, guard.lost()).await.expect("loss within the TTL");
    assert!(!guard.is_held(), "{reason}");
    let taken = waiting.await.unwrap().expect("granted after the lock-delay");
    assert!(started.elapsed() >= delay - Duration::from_millis(50), "granted in the lock-delay");
    assert!(taken.fencing_token() > guard.fencing_token());
}

/// An acquire that Consul's rate limiter keeps refusing (429: nothing applied) is answered, not
/// "maybe applied": it costs the handle's session nothing, so the handle's other guards stay
/// held (found by the attack review: the session was given up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_the_rate_limiter_refused_costs_the_session_nothing() {
    let double = double();
    let url = format!("consul://{}?ttl=2s&timeout=500ms&lock_delay=2s", double.addr);
    let (locks, other) = (connect(&url).await, connect(&url).await);
    let bystander = locks.acquire("bystander").await.unwrap();
    let holder = other.acquire("limited").await.unwrap();
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move { locks.acquire_timeout("limited", Duration::from_secs(5)).await.map(|g| g.fencing_token()) }
    });
    // The holder's guard watches the key, and now the waiter too.
    tokio::time::timeout(BOUND, double.blocking_queries_on("limited/.lock", 2)).await.unwrap();
    // Every request from now on is refused; the waiter, woken, asks to acquire: refused too.
    double.set_fault(Some(Fault::TooManyRequests));
    double.destroy_session(holder.lease().id());
    tokio::time::sleep(Duration::from_millis(800)).await; // the refusals last this long
    double.set_fault(None);
    let waited = tokio::time::timeout(BOUND, waiter).await.unwrap().unwrap();
    let lost = tokio::time::timeout(Duration::from_millis(500), bystander.lost()).await;
    assert!(lost.is_err(), "a refusal that applied nothing gave the session up: {lost:?} (waiter: {waited:?})");
    drop(holder);
}
