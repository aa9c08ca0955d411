//! The refresh of all locks of a handle in one pipeline: one bad reply loses one lock.

use super::{TTL, redis_reply};
use lockkit_testkit::servers::Server;
use lockkit_testkit::support::connect;

/// One handle holds two locks; another client replaces one key with a hash, so its refresh
/// script answers WRONGTYPE. Only that guard is lost: the other is still held and refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_refreshing_one_lock_loses_only_that_lock() {
    let server = Server::redis();
    let locks = connect(&format!("redis://127.0.0.1:{}?ttl={}ms", server.port, TTL.as_millis())).await;
    let kept = locks.acquire("kept").await.unwrap();
    let replaced = locks.acquire("replaced").await.unwrap();
    let replace = "redis.call('DEL', KEYS[1]); return redis.call('HSET', KEYS[1], 'owner', 'someone else')";
    assert_eq!(redis_reply(&server, &["EVAL", replace, "1", "replaced"]).await, "1");

    let reason = tokio::time::timeout(2 * TTL, replaced.lost()).await.expect("the replaced lock is lost");
    assert!(reason.contains("taken over"), "{reason}");
    // Held past a whole TTL after the loss: only refreshes can keep it.
    let kept_lost = tokio::time::timeout(TTL + TTL / 2, kept.lost()).await;
    assert!(kept_lost.is_err(), "the other lock was lost too: {kept_lost:?}");
    assert!(kept.is_held());
    let pttl: u64 = redis_reply(&server, &["PTTL", "kept"]).await.parse().unwrap();
    assert!(pttl > 0 && pttl <= TTL.as_millis() as u64, "the kept key's TTL: {pttl}");
    kept.release().await.unwrap();
}

/// The same with an error reply other than WRONGTYPE: the handle's user loses the right to one
/// lock's key (an ACL change), so that lock's refresh answers NOPERM every tick. The docs say an
/// error for one key leaves the others refreshed: that lock alone is lost at its deadline, the
/// other is still held and refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_error_refreshing_one_lock_loses_only_that_lock() {
    let port = lockkit_testkit::servers::free_port();
    let server = Server::redis_with(port, &["--user", "app", "on", ">app-secret", "~*", "&*", "+@all"]);
    let locks = connect(&format!("redis://app:app-secret@127.0.0.1:{port}?ttl={}ms", TTL.as_millis())).await;
    let kept = locks.acquire("kept").await.unwrap();
    let denied = locks.acquire("denied").await.unwrap();
    assert_eq!(redis_reply(&server, &["ACL", "SETUSER", "app", "resetkeys", "~kept", "~kept:{kept}:*"]).await, "OK");

    let reason = tokio::time::timeout(2 * TTL, denied.lost()).await.expect("the denied lock is lost");
    assert!(!reason.is_empty());
    let kept_lost = tokio::time::timeout(TTL + TTL / 2, kept.lost()).await;
    assert!(kept_lost.is_err(), "the other lock was lost too: {kept_lost:?}");
    assert!(kept.is_held());
    kept.release().await.unwrap();
}

/// A lock lost alone because its refresh kept failing (its user lost the right to its key) is
/// out of the handle's refreshes for good: once the right comes back, the handle must not
/// refresh it again — its guard reads lost, so that would keep the lock from everyone (a
/// ghost) — and another client gets it within a TTL. The guard's release then leaves the new
/// holder's grant alone, and the other lock of the handle is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_lost_alone_is_not_refreshed_again_when_its_key_is_allowed_again() {
    let port = lockkit_testkit::servers::free_port();
    let server = Server::redis_with(port, &["--user", "app", "on", ">app-secret", "~*", "&*", "+@all"]);
    let locks = connect(&format!("redis://app:app-secret@127.0.0.1:{port}?ttl={}ms", TTL.as_millis())).await;
    let kept = locks.acquire("kept").await.unwrap();
    let denied = locks.acquire("denied").await.unwrap();
    assert_eq!(redis_reply(&server, &["ACL", "SETUSER", "app", "resetkeys", "~kept", "~kept:{kept}:*"]).await, "OK");
    tokio::time::timeout(2 * TTL, denied.lost()).await.expect("the denied lock is lost");
    assert_eq!(redis_reply(&server, &["ACL", "SETUSER", "app", "~*"]).await, "OK");

    let other = connect(&format!("redis://127.0.0.1:{port}?ttl={}ms", TTL.as_millis())).await;
    let theirs = other.acquire_timeout("denied", TTL + TTL / 2).await.expect("the lost lock's key was left to expire");
    assert!(!denied.is_held(), "the lost guard reads held again");
    let err = denied.release().await.unwrap_err();
    assert!(matches!(err, lockkit::Error::NotHeld { .. }), "{err}");
    assert!(theirs.is_held() && kept.is_held());
    assert!(redis_reply(&server, &["GET", "denied"]).await.len() > 1, "the release deleted the new holder's key");
    theirs.release().await.unwrap();
    kept.release().await.unwrap();
}

/// Hundreds of locks on one Redlock lease (TTL 1 s, so each server's answer is bounded by
/// 100 ms): acquired one after the other — each joins with a TTL of its own and nudges the
/// refresh loop — they are all refreshed in one pipeline per server and all still held three
/// TTLs after the last one was granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_locks_on_one_redlock_lease_stay_held() {
    const LOCKS: usize = 500;
    let ttl = std::time::Duration::from_secs(1);
    let servers: Vec<Server> = (0..3).map(|_| Server::redis()).collect();
    let hosts: Vec<String> = servers.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let namespace = lockkit_testkit::support::unique("r");
    let locks = connect(&format!("redlock://{}?ttl=1s&namespace={namespace}", hosts.join(","))).await;
    let started = std::time::Instant::now();
    let mut guards = Vec::with_capacity(LOCKS);
    for i in 0..LOCKS {
        guards.push(locks.acquire(&format!("many-{i}")).await.unwrap());
    }
    let took = started.elapsed();
    let mut losses = tokio::task::JoinSet::new();
    for guard in &guards {
        let signal = guard.loss_signal();
        losses.spawn(async move { signal.lost().await });
    }
    let first = tokio::time::timeout(3 * ttl, losses.join_next()).await;
    let lost = guards.iter().filter(|g| !g.is_held()).count();
    assert!(
        first.is_err() && lost == 0,
        "{lost} of {LOCKS} locks lost within 3 TTLs (acquiring them took {took:?}); the first: {:?}",
        first.ok().flatten().map(|r| r.unwrap())
    );
    for guard in guards {
        guard.release().await.unwrap();
    }
}
