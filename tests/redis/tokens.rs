//! Fencing tokens never go backwards when a Redis server loses data — FLUSHALL, a restart
//! without persistence, an evicted counter — and a counter holding garbage is a clear error
//! that leaves no grant behind.

use std::time::{Duration, Instant};

use lockkit::{DistributedLock, Error, FencingToken};

use super::{TTL, redis_number, redis_reply, redlock_url};
use lockkit_testkit::servers::Server;
use lockkit_testkit::support::connect;

fn url(server: &Server) -> String {
    format!("redis://127.0.0.1:{}?ttl={}ms", server.port, TTL.as_millis())
}

/// Holds `name`, runs `lose_data` (which must drop the grant), and checks that the old guard
/// reports the loss at its next refresh and that the next grant's token is above the old one.
async fn tokens_survive(locks: &dyn DistributedLock, name: &str, lose_data: impl AsyncFnOnce()) {
    let old = locks.acquire(name).await.unwrap();
    let old_token = old.fencing_token();
    lose_data().await;
    let reason = tokio::time::timeout(2 * TTL, old.lost()).await.expect("the old guard reports the loss");
    assert!(!old.is_held(), "{reason}");
    let new = locks.acquire_timeout(name, 2 * TTL).await.unwrap();
    assert!(
        new.fencing_token() > old_token,
        "after losing data the new holder got {} and the stale one has {old_token}: fencing favours the stale holder",
        new.fencing_token()
    );
}

/// FLUSHALL while a lock is held: the holder is told, and the next token is still higher
/// (plain and fair scripts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_increasing_after_flushall_while_held() {
    let server = Server::redis();
    for url in [url(&server), format!("{}&fair=true", url(&server))] {
        let locks = connect(&url).await;
        tokens_survive(locks.as_ref(), "flushed", async || {
            assert_eq!(redis_reply(&server, &["FLUSHALL"]).await, "OK");
        })
        .await;
    }
}

/// FLUSHALL on every Redlock server while a lock is held: the same, through the majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_tokens_keep_increasing_after_flushall_on_every_server() {
    let servers: Vec<Server> = (0..3).map(|_| Server::redis()).collect();
    let locks = connect(&redlock_url(&servers, "flush")).await;
    tokens_survive(locks.as_ref(), "flushed", async || {
        for server in &servers {
            assert_eq!(redis_reply(server, &["FLUSHALL"]).await, "OK");
        }
    })
    .await;
}

/// A server restarted without persistence (same port): the holder is told at its next
/// refresh, and the next token is still higher than the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_increasing_across_a_restart_without_persistence() {
    let server = Server::redis();
    let port = server.port;
    let locks = connect(&url(&server)).await;
    let mut restarted = None;
    tokens_survive(locks.as_ref(), "restarted", async || {
        server.kill();
        restarted = Some(Server::redis_with(port, &[]));
    })
    .await;
}

/// The counter evicted (DEL, as `allkeys-*` eviction may do: it has no TTL): the next token
/// is still higher than every earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_increasing_after_the_counter_is_evicted() {
    let server = Server::redis();
    let locks = connect(&url(&server)).await;
    let mut last = FencingToken::new(0);
    for _ in 0..2 {
        let guard = locks.acquire("evicted").await.unwrap();
        assert!(guard.fencing_token() > last);
        last = guard.fencing_token();
        guard.release().await.unwrap();
    }
    assert_eq!(redis_number(&server, &["DEL", "evicted:{evicted}:fence"]).await, 1, "the counter was there");
    let next = locks.acquire("evicted").await.unwrap();
    assert!(next.fencing_token() > last, "{} after {last}", next.fencing_token());
}

/// A counter holding garbage (negative, not a number, beyond 2^53 where Lua loses precision):
/// a try fails with an error naming the key and saying to delete it, and leaves no grant
/// behind; once deleted, the lock is granted again. Plain and fair scripts alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_counter_is_a_clear_error_and_sets_no_lock_key() {
    let server = Server::redis();
    for url in [url(&server), format!("{}&fair=true", url(&server))] {
        let locks = connect(&url).await;
        for garbage in ["-1", "abc", "9007199254740993", "1.5"] {
            assert_eq!(redis_reply(&server, &["SET", "garbage:{garbage}:fence", garbage]).await, "OK");
            let err = match locks.try_acquire("garbage").await {
                Err(err) => err,
                Ok(guard) => panic!("{url}, fence {garbage}: no error, but {:?}", guard.map(|g| g.fencing_token())),
            };
            assert!(matches!(err, Error::Backend { .. }) && !err.is_temporary(), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("garbage:{garbage}:fence") && text.contains(garbage) && text.contains("DEL"),
                "{text}"
            );
            assert_eq!(redis_number(&server, &["EXISTS", "garbage"]).await, 0, "{url}, fence {garbage}: lock key set");
            assert_eq!(
                redis_reply(&server, &["GET", "garbage:{garbage}:fence"]).await,
                garbage,
                "the counter was changed"
            );
        }
        assert_eq!(redis_number(&server, &["DEL", "garbage:{garbage}:fence"]).await, 1);
        let guard = locks.try_acquire("garbage").await.unwrap().expect("granted once the garbage is deleted");
        guard.release().await.unwrap();
    }
}

/// `acquire` on a lock whose counter holds garbage fails at once, instead of waiting (and
/// re-extending a grant of its own) until its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_with_a_garbage_counter_fails_instead_of_waiting() {
    let server = Server::redis();
    let locks = connect(&url(&server)).await;
    assert_eq!(redis_reply(&server, &["SET", "looping:{looping}:fence", "-1"]).await, "OK");
    let started = Instant::now();
    let err = locks.acquire_timeout("looping", Duration::from_secs(5)).await.unwrap_err();
    assert!(!matches!(err, Error::Timeout { .. }), "waited for a lock nobody holds: {err}");
    assert!(err.to_string().contains("looping:{looping}:fence"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(redis_number(&server, &["EXISTS", "looping"]).await, 0, "the lock key was left set");
}

/// A counter at 2^53 − 1 must not mint 2^53 — past the range a token is promised to stay in,
/// and a counter every later grant then refuses as garbage. (A counter near the limit but
/// below it is refused as far ahead of the clock: see the next test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_minted_past_2_pow_53_minus_1() {
    let server = Server::redis();
    let locks = connect(&url(&server)).await;
    assert_eq!(redis_reply(&server, &["SET", "max:{max}:fence", "9007199254740991"]).await, "OK");
    match locks.try_acquire("max").await {
        Ok(Some(guard)) => panic!("granted with token {}, past 2^53 - 1", guard.fencing_token()),
        Ok(None) => panic!("a free lock was said to be held"),
        Err(err) => assert!(err.to_string().contains("max:{max}:fence"), "{err}"),
    }
    assert_eq!(redis_reply(&server, &["GET", "max:{max}:fence"]).await, "9007199254740991", "the counter was changed");
}

/// Redlock tolerates a minority of bad servers. One server whose counter is near the end of the
/// range (a mistaken SET, a restore of the wrong key, a clock set back) used to hand its counter
/// to every server through the majority's raise; two grants later every server refused
/// (BADFENCE) and the lock was dead everywhere. A counter more than a day ahead of its server's
/// clock is refused on that server alone, so the majority keeps granting from its clock, and
/// the bad counter is neither used nor spread. One server alone says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redlock_server_with_a_huge_counter_does_not_stop_the_majority() {
    let servers: Vec<Server> = (0..3).map(|_| Server::redis()).collect();
    let locks = connect(&redlock_url(&servers, "poison")).await;
    assert_eq!(redis_reply(&servers[0], &["SET", "poison/huge:{poison/huge}:fence", "9007199254740988"]).await, "OK");
    for grant in 0..5 {
        match locks.try_acquire("huge").await {
            Ok(Some(guard)) => guard.release().await.unwrap(),
            other => {
                panic!("grant {grant}: {:?}", other.map(|g| g.map(|g| g.fencing_token())).map_err(|e| e.to_string()))
            }
        }
    }
    for (i, server) in servers.iter().enumerate().skip(1) {
        let counter: u64 = redis_reply(server, &["GET", "poison/huge:{poison/huge}:fence"]).await.parse().unwrap();
        assert!(counter < 1 << 52, "server {i} was raised to {counter}");
    }
    let server = &servers[0];
    let locks = connect(&url(server)).await;
    let far = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
        + 2 * 86_400_000_000)
        .to_string();
    assert_eq!(redis_reply(server, &["SET", "ahead:{ahead}:fence", &far]).await, "OK");
    let err = locks.try_acquire("ahead").await.map(|g| g.is_some()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ahead of this server's clock") && text.contains("ahead:{ahead}:fence"), "{text}");
    assert!(!err.is_temporary(), "{text}");
    assert_eq!(redis_number(server, &["EXISTS", "ahead"]).await, 0, "the lock key was left set");
}

/// One Redlock server of three whose clock is two days ahead (a wrong clock, a VM restored
/// from a snapshot with its time set forward) must not stop the majority. It is not refused by
/// its own script — its counter follows its own clock — but the token it mints would be the
/// majority's maximum, raised onto the two good servers, whose counters would then be two days
/// ahead of *their* clocks and refused (the lock dead everywhere for two days). Its clock is
/// compared with the others' and it is left out of the vote: the good servers grant, with
/// tokens from their own clocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redlock_server_with_its_clock_ahead_does_not_stop_the_majority() {
    let servers = [Server::redis_clock_ahead(Duration::from_secs(2 * 86_400)), Server::redis(), Server::redis()];
    let locks = connect(&redlock_url(&servers, &lockkit_testkit::support::unique("r"))).await;
    let mut tokens = Vec::new();
    for grant in 0..3 {
        match locks.try_acquire("skewed").await {
            Ok(Some(guard)) => {
                tokens.push(guard.fencing_token());
                guard.release().await.unwrap();
            }
            other => panic!(
                "grant {grant} (after tokens {tokens:?}): {:?}",
                other.map(|g| g.map(|g| g.fencing_token())).map_err(|e| e.to_string())
            ),
        }
    }
    let hour_from_now =
        (std::time::SystemTime::now() + Duration::from_secs(3600)).duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    assert!(
        tokens.iter().all(|t| t.get() < hour_from_now.as_micros() as u64),
        "a token from the skewed clock: {tokens:?}"
    );
}

/// A waiter on Redlock while one server of three refuses every grant (a counter far ahead of
/// its clock): the majority still wakes it when the holder releases, and it gets the lock with
/// a token above the holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redlock_waiter_is_granted_with_one_server_refusing_badfence() {
    let servers: Vec<Server> = (0..3).map(|_| Server::redis()).collect();
    let namespace = lockkit_testkit::support::unique("r");
    let url = redlock_url(&servers, &namespace);
    let far = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
        + 2 * 86_400_000_000)
        .to_string();
    let fence = format!("{namespace}/waited:{{{namespace}/waited}}:fence");
    assert_eq!(redis_reply(&servers[0], &["SET", &fence, &far]).await, "OK");
    let (holder, waiter) = (connect(&url).await, connect(&url).await);
    let held = holder.acquire("waited").await.expect("the majority grants");
    let token = held.fencing_token();
    let waiting = tokio::spawn(async move { waiter.acquire_timeout("waited", 3 * TTL).await.map(|g| (g, waiter)) });
    lockkit_testkit::support::in_line(holder.as_ref(), "waited", 1).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let (guard, _waiter) = waiting.await.unwrap().expect("the waiter gets the lock");
    assert!(released.elapsed() < TTL, "granted {:?} after the release", released.elapsed());
    assert!(guard.fencing_token() > token);
    assert_eq!(redis_reply(&servers[0], &["GET", &fence]).await, far, "the bad counter was changed");
    guard.release().await.unwrap();
}

/// One Redlock server of three refuses (a counter far ahead of its clock) and another is down:
/// the refusing server drops out of the vote like one that is down, so this is two of three
/// out — the temporary "only 1 of 3 servers answered" that trying again (once the down server
/// is back) fixes, not the one server's BADFENCE refusal (not temporary), which would tell a
/// caller that retries on `is_temporary()` to give up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badfence_server_and_a_down_server_are_a_temporary_quorum_error() {
    let mut servers: Vec<Server> = (0..3).map(|_| Server::redis()).collect();
    let namespace = lockkit_testkit::support::unique("r");
    let locks = connect(&redlock_url(&servers, &namespace)).await;
    let far = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
        + 2 * 86_400_000_000)
        .to_string();
    let fence = format!("{namespace}/out:{{{namespace}/out}}:fence");
    assert_eq!(redis_reply(&servers[0], &["SET", &fence, &far]).await, "OK");
    servers.pop().unwrap().kill();
    let err = locks.try_acquire("out").await.map(|g| g.is_some()).unwrap_err();
    assert!(err.is_temporary() && err.to_string().contains("only 1 of 3"), "{err}");
}
