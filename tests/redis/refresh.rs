//! The refresh of all locks of a handle in one pipeline: one bad reply loses one lock.

use super::{TTL, redis_reply};
use crate::support::connect;
use crate::support::servers::Server;

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
    let port = crate::support::servers::free_port();
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
