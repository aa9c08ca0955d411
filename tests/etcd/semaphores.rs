//! Semaphores on etcd: the layout (Curator's `InterProcessSemaphoreV2` design), the recorded
//! number of permits, status and force release, and one waiter at a time watching the holders.

use std::time::Duration;

use lockkit::Error;
use lockkit::etcd::etcd_client::{Client, GetOptions};
use lockkit_testkit::servers::Server;
use lockkit_testkit::support::{connect, unique};

use super::{TTL, url};

/// The keys under `prefix`, as text.
async fn keys(server: &Server, prefix: &str) -> Vec<String> {
    let mut client = Client::connect([format!("127.0.0.1:{}", server.port)], None).await.unwrap();
    let answer = client.get(prefix, Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    answer.kvs().iter().map(|kv| kv.key_str().unwrap().to_owned()).collect()
}

/// Two permits are two `leases/` keys on the handle's lease; the number of permits is recorded
/// and another refused; `status` lists both holders with their tokens; `force_release` frees
/// both (their loss signals fire) and the next acquires get in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_are_keys_the_number_is_recorded_and_force_release_frees_them() {
    let server = Server::etcd();
    let ns = unique("sem");
    let (a, b) = (connect(&url(&server, &ns)).await, connect(&url(&server, &ns)).await);
    let first = a.semaphore("exports", 2).acquire().await.unwrap();
    let second = a.semaphore("exports", 2).acquire().await.unwrap();
    let layout = keys(&server, &format!("{ns}/exports/")).await;
    let permits: Vec<&String> = layout.iter().filter(|k| k.starts_with(&format!("{ns}/exports/@leases/"))).collect();
    assert_eq!(permits.len(), 2, "{layout:?}");
    assert!(layout.contains(&format!("{ns}/exports/@permits")), "{layout:?}");
    let err = b.semaphore("exports", 3).try_acquire().await.unwrap_err();
    assert!(matches!(&err, Error::InvalidOptions { reason } if reason.contains("\"2\" permits")), "{err}");
    let status = b.status("exports").await.unwrap();
    let tokens: Vec<_> = status.holders.iter().map(|h| h.token).collect();
    assert_eq!((status.permits, tokens), (Some(2), vec![Some(first.fencing_token()), Some(second.fencing_token())]));
    assert!(b.semaphore("exports", 2).try_acquire().await.unwrap().is_none(), "a third permit of 2");
    assert!(b.force_release("exports").await.unwrap());
    for guard in [&first, &second] {
        let lost = tokio::time::timeout(2 * TTL, guard.lost()).await;
        assert!(lost.is_ok(), "an evicted permit's loss signal fired");
    }
    let next = b.semaphore("exports", 2).acquire_timeout(TTL).await.unwrap();
    assert!(next.fencing_token() > second.fencing_token());
}

/// With both permits held and five waiters in line, only one waiter has a permit key (the one
/// holding the internal mutex, which watches the holders); the others wait on the mutex, each
/// watching its predecessor. Each release lets the next one in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_waiter_at_a_time_watches_the_holders() {
    let server = Server::etcd();
    let ns = unique("sem");
    let holders = connect(&url(&server, &ns)).await;
    let held =
        [holders.semaphore("pool", 2).acquire().await.unwrap(), holders.semaphore("pool", 2).acquire().await.unwrap()];
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let locks = connect(&url(&server, &ns)).await;
        waiters.push(tokio::spawn(async move {
            let permit = locks.semaphore("pool", 2).acquire_timeout(Duration::from_secs(20)).await.unwrap();
            permit.release().await.unwrap();
        }));
    }
    while holders.status("pool").await.unwrap().waiting < Some(5) {
        tokio::task::yield_now().await;
    }
    let layout = keys(&server, &format!("{ns}/pool/")).await;
    let count = |dir: &str| layout.iter().filter(|k| k.starts_with(&format!("{ns}/pool/{dir}/"))).count();
    assert_eq!(
        (count("@leases"), count("@locks")),
        (3, 5),
        "2 holders + the mutex holder's key; 5 in the mutex's line"
    );
    drop(held);
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let layout = keys(&server, &format!("{ns}/pool/")).await;
    assert_eq!(layout, [format!("{ns}/pool/@permits")], "nothing left but the recorded number");
}

/// Review findings, each failing before its fix: a lock of a namespace nested below a
/// semaphore's name (`leases`, `semaphore` in `ns/S`) shared the semaphore's keys (the lock
/// took a permit, or the recorded number held the lock forever); a record that is not a
/// number hid the semaphore's holders from `status` and `force_release`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_namespaces_and_a_garbage_record_do_not_confuse_a_semaphore() {
    let server = Server::etcd();
    let ns = unique("sem");
    let outer = connect(&url(&server, &ns)).await;
    let inner = connect(&url(&server, &format!("{ns}/S"))).await;
    let locks: Vec<_> = ["leases", "locks", "semaphore", "permits"]
        .into_iter()
        .map(|name| async { inner.acquire(name).await.unwrap() })
        .collect();
    let mut held = Vec::new();
    for lock in locks {
        held.push(lock.await);
    }
    let permit = outer.semaphore("S", 1).try_acquire().await.unwrap().expect("the nested locks are not permits");
    for lock in held {
        lock.release().await.unwrap();
    }
    for name in ["leases", "locks", "semaphore", "permits"] {
        assert!(inner.try_acquire(name).await.unwrap().is_some(), "lock `{name}` kept by the semaphore's keys");
    }
    permit.release().await.unwrap();

    let permit = outer.semaphore("g", 2).acquire().await.unwrap();
    let mut client = Client::connect([format!("127.0.0.1:{}", server.port)], None).await.unwrap();
    client.put(format!("{ns}/g/@permits"), "garbage", None).await.unwrap();
    let status = outer.status("g").await.unwrap();
    assert_eq!(status.holders.len(), 1, "the holder is still listed: {status:?}");
    let err = outer.semaphore("g", 2).try_acquire().await.unwrap_err();
    assert!(matches!(&err, Error::InvalidOptions { reason } if reason.contains("garbage")), "{err}");
    assert!(outer.force_release("g").await.unwrap(), "force release finds the holder");
    assert!(tokio::time::timeout(2 * TTL, permit.lost()).await.is_ok());
}

/// Read-write locks take Go's `recipes.RWMutex` layout: readers' keys under `NAME/read/`, a
/// writer's under `NAME/write/`. A writer key put as Go's recipe puts it (any name under
/// `write/`, on a lease) keeps lockkit readers out until it goes; `status` lists the readers;
/// `force_release` of the readers lets a waiting writer in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_locks_take_gos_rwmutex_layout() {
    let server = Server::etcd();
    let ns = unique("rw");
    let (a, b) = (connect(&url(&server, &ns)).await, connect(&url(&server, &ns)).await);
    let (r1, r2) = (a.rw_lock("doc").read().await.unwrap(), b.rw_lock("doc").read().await.unwrap());
    let layout = keys(&server, &format!("{ns}/doc/")).await;
    assert_eq!(layout.iter().filter(|k| k.starts_with(&format!("{ns}/doc/read/"))).count(), 2, "{layout:?}");
    let status = a.status("doc").await.unwrap();
    assert_eq!(
        status.holders.iter().map(|h| h.token).collect::<Vec<_>>(),
        [Some(r1.fencing_token()), Some(r2.fencing_token())]
    );
    let writer = tokio::spawn({
        let b = b.clone();
        async move { b.rw_lock("doc").write_timeout(Duration::from_secs(20)).await }
    });
    while a.status("doc").await.unwrap().waiting < Some(1) {
        tokio::task::yield_now().await;
    }
    assert!(a.force_release("doc").await.unwrap());
    let writer = writer.await.unwrap().expect("the writer got in once the readers were evicted");
    assert!(writer.fencing_token() > r2.fencing_token());
    writer.release().await.unwrap();

    let mut client = Client::connect([format!("127.0.0.1:{}", server.port)], None).await.unwrap();
    let lease = client.lease_grant(30, None).await.unwrap().id();
    let foreign = format!("{ns}/doc/write/1700000000000000000");
    let options = lockkit::etcd::etcd_client::PutOptions::new().with_lease(lease);
    client.put(foreign.clone(), "", Some(options)).await.unwrap();
    assert!(a.rw_lock("doc").try_read().await.unwrap().is_none(), "a read beside Go's writer key");
    let reader = tokio::spawn({
        let a = a.clone();
        async move { a.rw_lock("doc").read_timeout(Duration::from_secs(20)).await }
    });
    while a.status("doc").await.unwrap().waiting < Some(1) {
        tokio::task::yield_now().await;
    }
    client.delete(foreign, None).await.unwrap();
    assert!(reader.await.unwrap().is_ok(), "the reader got in once the writer key went");
}

/// Review findings, each failing before its fix: a lock named `read` or `write` in a namespace
/// nested below a read-write lock's name counted as its reader or writer (it kept writers out
/// and was evicted with the readers); a waiting reader whose lease was revoked waited on a key
/// that was gone (for its whole timeout) instead of queueing again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_locks_are_not_readers_and_a_waiter_hears_its_key_go() {
    let server = Server::etcd();
    let ns = unique("rw");
    let outer = connect(&url(&server, &ns)).await;
    let inner = connect(&url(&server, &format!("{ns}/doc"))).await;
    let nested = inner.acquire("read").await.unwrap();
    assert!(outer.rw_lock("doc").try_write().await.unwrap().is_some(), "a nested lock counted as a reader");
    assert!(!outer.force_release("doc").await.unwrap(), "nothing of the rw lock is held");
    assert!(nested.is_held());

    let writer = outer.rw_lock("doc").write().await.unwrap();
    let waiting = connect(&url(&server, &ns)).await;
    let reader = tokio::spawn({
        let waiting = waiting.clone();
        async move { waiting.rw_lock("doc").read_timeout(Duration::from_secs(30)).await }
    });
    while outer.status("doc").await.unwrap().waiting < Some(1) {
        tokio::task::yield_now().await;
    }
    let mut client = Client::connect([format!("127.0.0.1:{}", server.port)], None).await.unwrap();
    let all = client.get(format!("{ns}/doc/read/"), Some(GetOptions::new().with_prefix())).await.unwrap();
    let lease = all.kvs()[0].lease();
    client.lease_revoke(lease).await.unwrap();
    // The waiter hears its key go and queues again on a fresh lease (the core's rule for a
    // waiter whose lease is lost), instead of waiting on a key that no longer exists.
    let requeued = async {
        loop {
            let read = client.get(format!("{ns}/doc/read/"), Some(GetOptions::new().with_prefix())).await.unwrap();
            if read.kvs().iter().any(|kv| kv.lease() != lease) {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), requeued).await.expect("the waiter queued again on a fresh lease");
    writer.release().await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("the reader got in");
    assert!(read.unwrap().is_ok(), "the requeued reader reads once the writer is gone");
}
