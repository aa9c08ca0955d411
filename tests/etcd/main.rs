//! What only the etcd driver does: interop with `etcdctl lock` and `etcdctl elect`, loss
//! through `etcdctl`, a 3-member cluster losing its leader, authentication, unreachable
//! endpoints.
#![cfg(feature = "etcd")]

mod elections;
mod semaphores;

use std::process::Stdio;
use std::time::{Duration, Instant};

use lockkit::Error;
use lockkit_testkit::proxy::{Direction, Proxy};
use lockkit_testkit::servers::{self, Server};
use lockkit_testkit::support::{connect, contend_while, unique};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TTL: Duration = Duration::from_secs(2);

fn url(server: &Server, namespace: &str) -> String {
    format!("etcd://127.0.0.1:{}/{namespace}?ttl={}ms", server.port, TTL.as_millis())
}

fn etcdctl(server: &Server, args: &[&str]) -> Command {
    let mut command = Command::new("etcdctl");
    command.arg(format!("--endpoints=127.0.0.1:{}", server.port)).args(args).env("ETCDCTL_API", "3").kill_on_drop(true);
    command
}

async fn run(mut command: Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("etcdctl finished")
        .expect("etcdctl ran");
    assert!(out.status.success(), "etcdctl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lockkit holder makes `etcdctl lock` wait, and an `etcdctl lock` holder keeps lockkit out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_lockkit_exclude_each_other() {
    let server = Server::etcd();
    let namespace = unique("e");
    let locks = connect(&url(&server, &namespace)).await;
    let name = format!("{namespace}/shared");

    // lockkit holds: etcdctl waits, and runs its command only after the release.
    let guard = locks.acquire("shared").await.unwrap();
    let mut waiting = etcdctl(&server, &["lock", &name, "echo", "etcdctl-ran"]).stdout(Stdio::piped()).spawn().unwrap();
    let finished = tokio::time::timeout(Duration::from_millis(1500), waiting.wait()).await;
    assert!(finished.is_err(), "etcdctl lock did not wait for lockkit's holder");
    guard.release().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), waiting.wait_with_output()).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcdctl-ran"));

    // etcdctl holds (it prints its key once it has the lock): lockkit stays out until it lets go.
    let mut holding = etcdctl(&server, &["lock", "--ttl=5", &name]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(holding.stdout.take().unwrap()).lines();
    let key = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(key.starts_with(&format!("{name}/")), "the etcdctl key layout: {key}");
    assert!(locks.try_acquire("shared").await.unwrap().is_none(), "lockkit got a lock etcdctl holds");
    let status = locks.status("shared").await.unwrap();
    assert!(status.held && status.holder.is_none(), "etcdctl's empty value means no holder metadata: {status:?}");
    unsafe { libc::kill(holding.id().unwrap() as i32, libc::SIGINT) };
    let guard = locks.acquire_timeout("shared", Duration::from_secs(10)).await.expect("granted once etcdctl let go");
    assert!(guard.is_held());
}

/// Revoking the holder's lease with `etcdctl lease revoke`, or deleting its key with `etcdctl
/// del`, fires the loss signal at once (well within the TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_lease_or_deleting_the_key_with_etcdctl_fires_the_loss_signal() {
    let server = Server::etcd();
    let namespace = unique("e");
    let locks = connect(&url(&server, &namespace)).await;

    let guard = locks.acquire("revoked").await.unwrap();
    run(etcdctl(&server, &["lease", "revoke", guard.lease().id()])).await;
    let reason = tokio::time::timeout(TTL, guard.lost()).await.expect("loss within the TTL");
    assert!(reason.contains("deleted") || reason.contains("gone"), "{reason}");

    let guard = locks.acquire("deleted").await.unwrap();
    let key = format!("{namespace}/deleted/{}", guard.lease().id());
    assert_eq!(run(etcdctl(&server, &["del", &key])).await.trim(), "1");
    let reason = tokio::time::timeout(TTL, guard.lost()).await.expect("loss within the TTL");
    assert!(reason.contains("deleted"), "{reason}");
    let other = connect(&url(&server, &namespace)).await;
    assert!(other.try_acquire("deleted").await.unwrap().is_some());

    // A name taken again through the same handle adopts the released guard's watch: the earlier
    // grant's deletion does not fire the new guard; a deletion of its own key does.
    for round in 0..3 {
        let guard = locks.acquire("again").await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), guard.lost()).await;
        assert!(quiet.is_err(), "round {round}: the new guard was fired: {quiet:?}");
        if round < 2 {
            guard.release().await.unwrap();
            continue;
        }
        let key = format!("{namespace}/again/{}", guard.lease().id());
        assert_eq!(run(etcdctl(&server, &["del", &key])).await.trim(), "1");
        let reason = tokio::time::timeout(TTL, guard.lost()).await.expect("loss within the TTL");
        assert!(reason.contains("deleted"), "{reason}");
    }
}

/// The guard's `ownership` comparison lets a caller's own transaction write only while the
/// lock is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ownership_comparison_guards_a_callers_own_transactions() {
    use lockkit::etcd::etcd_client::{Client, Txn, TxnOp};
    let server = Server::etcd();
    let namespace = unique("e");
    let locks = connect(&url(&server, &namespace)).await;
    let mut client = Client::connect([format!("127.0.0.1:{}", server.port)], None).await.unwrap();
    let guard = locks.acquire("owned").await.unwrap();
    let write = |guard: &lockkit::LockGuard| {
        Txn::new().when([lockkit::etcd::ownership(&*locks, guard)]).and_then([TxnOp::put("protected", "v", None)])
    };
    assert!(client.txn(write(&guard)).await.unwrap().succeeded(), "the holder can write");
    assert!(locks.force_release("owned").await.unwrap());
    assert!(!client.txn(write(&guard)).await.unwrap().succeeded(), "a former holder cannot");
}

/// A 3-member cluster whose leader is killed while locks are held and contended: nobody gets
/// a double grant, holders keep their locks or are told they lost them, acquiring works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_losing_its_leader_never_double_grants() {
    let mut members = Server::etcd_cluster(3);
    let endpoints: Vec<String> = members.iter().map(|m| format!("127.0.0.1:{}", m.port)).collect();
    let url = format!("etcd://{}/{}?ttl={}ms", endpoints.join(","), unique("e"), TTL.as_millis());
    let tokens = contend_while(&url, "contended", 3, Duration::from_secs(6), async {
        tokio::time::sleep(Duration::from_secs(2)).await; // contention under way
        let leader = leader_index(&members).await;
        members.remove(leader).kill();
    })
    .await;
    let after = connect(&url).await;
    let guard =
        after.acquire_timeout("contended", Duration::from_secs(10)).await.expect("acquiring works after the election");
    assert!(guard.fencing_token() > *tokens.last().unwrap());
}

/// Which member leads, from `etcdctl endpoint status`.
async fn leader_index(members: &[Server]) -> usize {
    let endpoints: Vec<String> = members.iter().map(|m| format!("127.0.0.1:{}", m.port)).collect();
    let out = Command::new("etcdctl")
        .args([&format!("--endpoints={}", endpoints.join(",")), "endpoint", "status", "-w", "json"])
        .output()
        .await
        .unwrap();
    let statuses: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("etcdctl endpoint status JSON");
    statuses.iter().position(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"]).expect("one member leads")
}

/// With authentication enabled, a wrong password is a clear authentication error (without the
/// password in it); the right one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_give_a_clear_authentication_error() {
    let server = Server::etcd();
    run(etcdctl(&server, &["user", "add", "root:root-secret"])).await;
    run(etcdctl(&server, &["auth", "enable"])).await;
    let err = lockkit::connect(&format!("etcd://root:hunter2-wrong@127.0.0.1:{}", server.port)).await.unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "the password leaked: {err:?}");
    let locks = connect(&format!("etcd://root:root-secret@127.0.0.1:{}", server.port)).await;
    assert!(locks.try_acquire("authenticated").await.unwrap().is_some());
}

/// An endpoint nobody listens on gives a clear connection error within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_a_clear_error_within_the_timeout() {
    let port = servers::free_port();
    let started = Instant::now();
    let err = lockkit::connect(&format!("etcd://127.0.0.1:{port}?timeout=1s")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(matches!(err, Error::Connection { .. }), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// `etcds://` talks TLS: trusted through `?ca=`, refused without it; a wrong `ca` path is a
/// clear URL error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_uses_tls_and_checks_the_server_certificate() {
    let certs = tempfile::tempdir().unwrap();
    servers::make_certificates(certs.path());
    let file = |name: &str| certs.path().join(name).display().to_string();
    let server = Server::etcd_tls(&file("server.crt"), &file("server.key"));
    let ca = file("ca.crt");

    let locks = connect(&format!("etcds://127.0.0.1:{}?ca={ca}", server.port)).await;
    let guard = locks.acquire("over-tls").await.unwrap();
    assert!(locks.status("over-tls").await.unwrap().held);
    guard.release().await.unwrap();

    let err = lockkit::connect(&format!("etcds://127.0.0.1:{}?timeout=2s", server.port)).await.unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "an untrusted server certificate: {err}");

    let err = lockkit::connect(&format!("etcds://127.0.0.1:{}?ca=/nonexistent/ca.crt", server.port)).await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }) && err.to_string().contains("cannot read the `ca` file"), "{err}");
}

// Faults (issue #14), made by a proxy between one handle and etcd (delay, freeze, cut, refuse)
// and by compaction. Bounds: TTL + request timeout + SLACK.

/// Room for scheduling on a loaded machine in the bounds below.
const SLACK: Duration = Duration::from_secs(2);

/// A handle's URL through `port` (the server's or a proxy's), with the test TTL and `query`.
fn url_via(port: u16, namespace: &str, query: &str) -> String {
    format!("etcd://127.0.0.1:{port}/{namespace}?ttl={}ms&{query}", TTL.as_millis())
}

/// The key of `guard` (lock `name` in `namespace`).
fn key_of(namespace: &str, name: &str, guard: &lockkit::LockGuard) -> String {
    format!("{namespace}/{name}/{}", guard.lease().id())
}

/// A release nothing answers (the connection is frozen, as with a paused server) is tried until
/// the request timeout, then the lease it hung on is given up and the error says so: the grant
/// ends within TTL + timeout, and the handle takes locks again on a fresh lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_cannot_be_confirmed_gives_its_lease_up() {
    let server = Server::etcd();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = unique("e");
    let timeout = Duration::from_millis(500);
    let locks = connect(&url_via(proxy.port(), &namespace, "timeout=500ms")).await;
    let other = connect(&url(&server, &namespace)).await;
    let guard = locks.acquire("x").await.unwrap();
    let first_lease = guard.lease().id().to_owned();

    proxy.hold(Direction::Both);
    let release = tokio::time::timeout(timeout + SLACK, guard.release()).await.expect("the release ends");
    let text = release.expect_err("nothing confirmed the release").to_string();
    assert!(text.contains("given up") && !text.contains("the lease TTL will end the grant"), "{text}");
    proxy.release();

    let taken = other.acquire_timeout("x", TTL + timeout + SLACK).await.expect("the grant ended with its lease");
    assert!(taken.is_held());
    let again = locks.acquire_timeout("y", Duration::from_secs(5)).await.expect("the handle is still usable");
    assert!(again.is_held() && again.lease().id() != first_lease, "a fresh lease: {}", again.lease().id());
}

/// A release whose first attempts fail (the server is unreachable a moment) and which is
/// confirmed later keeps the guard's watch for the next grant once: that grant's watch is not
/// cancelled when the handle's idle watches overflow, so a deletion of its key still fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_retried_after_failed_attempts_keeps_its_watch_once() {
    let server = Server::etcd();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = unique("e");
    let locks = connect(&url_via(proxy.port(), &namespace, "timeout=5s")).await;
    let guard = locks.acquire("again").await.unwrap();
    let released = guard.loss_signal();

    proxy.refuse(true);
    proxy.cut();
    let release = tokio::spawn(guard.release());
    tokio::time::timeout(SLACK, released.lost()).await.expect("a release fires the guard first");
    tokio::time::sleep(Duration::from_millis(200)).await; // attempts fail meanwhile
    proxy.refuse(false);
    release.await.unwrap().expect("confirmed once the server is reachable");

    let guard = locks.acquire_timeout("again", Duration::from_secs(5)).await.unwrap();
    for i in 0..=64 {
        locks.acquire(&format!("other-{i}")).await.unwrap().release().await.unwrap();
    }
    assert_eq!(run(etcdctl(&server, &["del", &key_of(&namespace, "again", &guard)])).await.trim(), "1");
    let reason = tokio::time::timeout(TTL, guard.lost()).await.expect("the guard's watch still fires");
    assert!(reason.contains("deleted"), "{reason}");
}

/// A waiter dropped while the server is unreachable: its key's removal fails at first and is
/// tried again (or its lease given up), so the key never becomes a holder nobody releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_waiters_failed_cleanup_never_leaves_its_key_holding_the_lock() {
    let server = Server::etcd();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = unique("e");
    let holder = connect(&url(&server, &namespace)).await;
    let waiter = connect(&url_via(proxy.port(), &namespace, "timeout=500ms")).await;
    let other = connect(&url(&server, &namespace)).await;
    let held = holder.acquire("x").await.unwrap();
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire("x").await }
    });
    lockkit_testkit::support::in_line(&*other, "x", 1).await;

    proxy.refuse(true);
    proxy.cut();
    waiting.abort(); // the waiter gives up: its key's removal fails while etcd is unreachable
    assert!(waiting.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.refuse(false);
    held.release().await.unwrap();

    let bound = TTL + Duration::from_millis(500) + SLACK;
    let guard = other.acquire_timeout("x", bound).await.expect("the dropped waiter's key went");
    assert!(guard.is_held());
    drop(waiter);
}

/// After a compaction past the revision a guard's watch started from, a reconnection of the
/// watch stream (its connection cut) does not count as a loss; the watch still fires on deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_outlives_a_watch_stream_reconnecting_after_compaction() {
    use lockkit::etcd::etcd_client::Client;
    let server = Server::etcd();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = unique("e");
    let locks = connect(&url_via(proxy.port(), &namespace, "timeout=5s")).await;
    let guard = locks.acquire("kept").await.unwrap();

    let mut client = Client::connect([format!("127.0.0.1:{}", server.port)], None).await.unwrap();
    for i in 0..20 {
        client.put(format!("{namespace}/filler"), i.to_string(), None).await.unwrap();
    }
    let revision = client.get("nothing", None).await.unwrap().header().unwrap().revision();
    client.compact(revision, None).await.unwrap();
    proxy.cut();

    let quiet = tokio::time::timeout(TTL, guard.lost()).await;
    assert!(quiet.is_err(), "the guard was fired: {quiet:?}");
    assert!(guard.is_held());
    assert_eq!(run(etcdctl(&server, &["del", &key_of(&namespace, "kept", &guard)])).await.trim(), "1");
    let reason = tokio::time::timeout(TTL, guard.lost()).await.expect("the resumed watch fires");
    assert!(reason.contains("deleted"), "{reason}");
}

/// A watch stream reopened while acquires make new watches stays one stream: the server counts
/// one watch stream for the handle, not one per opener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_reopened_while_locks_are_taken_stays_one_stream() {
    let server = Server::etcd();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = unique("e");
    let locks = connect(&url_via(proxy.port(), &namespace, "timeout=5s")).await;
    let _held = locks.acquire("held").await.unwrap();

    proxy.refuse(true);
    proxy.cut();
    // Unreachable long enough for the reopening to pause between rounds of attempts (for up
    // to 2 s), then acquires make new watches at once.
    tokio::time::sleep(Duration::from_millis(8600)).await;
    proxy.refuse(false);
    let mut guards = Vec::new();
    for i in 0..4 {
        guards.push(locks.acquire_timeout(&format!("new-{i}"), Duration::from_secs(5)).await.unwrap());
    }
    // A second opener would come within the reopening's pause.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(metric(&server, "etcd_debugging_mvcc_watch_stream_total").await, "1", "watch streams on the server");
}

/// Waits until the server counts `count` watches.
async fn watchers(server: &Server, count: usize) {
    let started = Instant::now();
    while metric(server, "etcd_debugging_mvcc_watcher_total").await != count.to_string() {
        assert!(started.elapsed() < Duration::from_secs(10), "never {count} watches");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A metric of the etcd server, from its `/metrics` page.
async fn metric(server: &Server, name: &str) -> String {
    servers::etcd_metric(server.port, name).unwrap_or_else(|| panic!("no metric {name}"))
}

/// `force_release` deletes the holder it read, compared on its create revision: a key of the
/// same name made after the read (the old holder queued again) is left alone, and the holder
/// of the moment is removed instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_removes_the_holder_it_read_not_a_key_made_after() {
    let server = Server::etcd();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = unique("e");
    let (first, second) = (connect(&url(&server, &namespace)).await, connect(&url(&server, &namespace)).await);
    let admin = connect(&url_via(proxy.port(), &namespace, "timeout=10s")).await;
    let old = first.acquire("x").await.unwrap();
    let waiting = tokio::spawn({
        let second = second.clone();
        async move { second.acquire("x").await }
    });
    lockkit_testkit::support::in_line(&*first, "x", 1).await;

    // The admin's read reaches etcd in 1 s, its delete 2 s after that (its answer comes back
    // late too); between the two, the holder hands over and queues again with the same key.
    let delay = Duration::from_secs(1);
    proxy.latency(delay);
    let evict = tokio::spawn({
        let admin = admin.clone();
        async move { admin.force_release("x").await }
    });
    tokio::time::sleep(delay + delay / 4).await;
    old.release().await.unwrap();
    let holder = tokio::time::timeout(SLACK, waiting).await.expect("the waiter's turn").unwrap().unwrap();
    let queued = tokio::spawn({
        let first = first.clone();
        async move { first.acquire_timeout("x", Duration::from_secs(15)).await }
    });
    lockkit_testkit::support::in_line(&*first, "x", 1).await;

    assert!(evict.await.unwrap().unwrap(), "there was a holder to remove");
    let reason = tokio::time::timeout(TTL, holder.lost()).await.expect("the holder of the moment was removed");
    assert!(reason.contains("deleted"), "{reason}");
    let regranted = queued.await.unwrap().expect("the queued key was left alone");
    assert!(regranted.is_held());
}

/// A `refresh()` dropped while its keep-alive is in flight leaves no reply behind that a later
/// refresh would take for its own: with the connection frozen, no refresh sent after the freeze
/// is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_refresh_leaves_no_reply_for_the_next_to_take_as_its_own() {
    let server = Server::etcd();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = unique("e");
    // A long TTL and refresh interval: the background refresh stays out of the way.
    let ttl = Duration::from_secs(10);
    let url = format!("etcd://127.0.0.1:{}/{namespace}?ttl=10s&refresh=4500ms&timeout=5s", proxy.port());
    let locks = connect(&url).await;
    let guard = locks.acquire("x").await.unwrap();
    let lease = guard.lease();

    // 150 ms each way: a round trip takes 300 ms.
    let delay = Duration::from_millis(300);
    proxy.latency(delay / 2);
    // Opening the keep-alive stream takes one delayed round trip, the keep-alive another: the
    // refresh is dropped while waiting for the second reply, which comes later.
    let cancelled = tokio::time::timeout(delay * 3 / 2, lease.refresh()).await;
    assert!(cancelled.is_err(), "the refresh was meant to be cut short: {cancelled:?}");
    tokio::time::sleep(delay).await; // its reply arrives meanwhile
    proxy.hold(Direction::Both);
    let frozen_at = Instant::now();
    let refreshed = tokio::time::timeout(Duration::from_secs(1), lease.refresh()).await;
    assert!(!matches!(refreshed, Ok(Ok(()))), "a refresh was confirmed through a frozen connection");
    let bound = frozen_at + ttl - lockkit_core::safety_margin(ttl);
    assert!(lease.valid_until() < bound, "the deadline moved past what the server confirmed");
    proxy.release();
}

/// A waiter whose lease is given up while it waits (another lock's release on that lease could
/// not be confirmed) waits on with a fresh lease instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_lease_is_given_up_waits_on_with_a_fresh_lease() {
    let server = Server::etcd();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = unique("e");
    let holder = connect(&url(&server, &namespace)).await;
    let waiter = connect(&url_via(proxy.port(), &namespace, "timeout=500ms")).await;
    let held = holder.acquire("b").await.unwrap();
    let other = waiter.acquire("a").await.unwrap();
    let first_lease = other.lease().id().to_owned();
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire_timeout("b", Duration::from_secs(20)).await }
    });
    // Waiting: the holder's watch, the waiter's guard's, and the waiter's on its key and its
    // predecessor's.
    watchers(&server, 4).await;

    proxy.hold(Direction::Both);
    let release = other.release().await;
    assert!(release.unwrap_err().to_string().contains("given up"));
    proxy.release();
    held.release().await.unwrap();

    let guard = waiting.await.unwrap().expect("the waiter waited on");
    assert!(guard.is_held() && guard.lease().id() != first_lease);
}

/// An acquire dropped while its put is unanswered: the put may still be applied, so the lease
/// it was made with is given up (its guards are told why), and whatever the put makes ends
/// with that lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_dropped_with_its_put_unanswered_gives_its_lease_up() {
    let server = Server::etcd();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = unique("e");
    let locks = connect(&url_via(proxy.port(), &namespace, "timeout=500ms")).await;
    let other = connect(&url(&server, &namespace)).await;
    let guard = locks.acquire("a").await.unwrap();

    proxy.hold(Direction::Both);
    let dropped = locks.acquire_timeout("b", Duration::from_millis(100)).await;
    assert!(matches!(dropped, Err(Error::Timeout { .. })), "{dropped:?}");
    let reason = tokio::time::timeout(SLACK, guard.lost()).await.expect("the lease is given up");
    assert!(reason.contains("may still be applied"), "{reason}");
    proxy.release(); // the held put reaches etcd now

    let bound = TTL + Duration::from_millis(500) + SLACK;
    let taken = other.acquire_timeout("b", bound).await.expect("the late put ended with its lease");
    assert!(taken.is_held());
}

/// attack5: a lease revoked behind the handle's back before the keep-alive noticed (a long
/// TTL: the next refresh is far away) is noticed by the next acquire, which succeeds on a fresh
/// lease; the guard on the old lease fires; nothing is left under the lock prefixes but the new
/// grants' keys. Covers try_acquire, acquire and an acquire that has to queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack5_an_acquire_on_a_revoked_lease_succeeds_on_a_fresh_one_and_leaves_no_orphan() {
    let server = Server::etcd();
    let namespace = unique("e");
    let long = format!("etcd://127.0.0.1:{}/{namespace}?ttl=30s", server.port);
    let locks = connect(&long).await;
    let other = connect(&long).await;
    let held_elsewhere = other.acquire("queued").await.unwrap();

    let old = locks.acquire("a").await.unwrap();
    let old_lease = old.lease().id().to_owned();
    run(etcdctl(&server, &["lease", "revoke", &old_lease])).await;

    let b = tokio::time::timeout(Duration::from_secs(10), locks.try_acquire("b")).await.expect("bounded").unwrap();
    let b = b.expect("try_acquire on a revoked lease succeeds on a fresh one");
    assert_ne!(b.lease().id(), old_lease, "granted on the revoked lease");
    assert!(b.is_held());
    let reason = tokio::time::timeout(Duration::from_secs(5), old.lost()).await.expect("the old guard fires");
    assert!(!reason.is_empty());
    let c = tokio::time::timeout(Duration::from_secs(10), locks.acquire("c")).await.expect("bounded").unwrap();
    assert_eq!(c.lease().id(), b.lease().id(), "one fresh lease for the handle");

    // A queued acquire, started after another revoke: it waits, then is served on a fresh lease.
    run(etcdctl(&server, &["lease", "revoke", b.lease().id()])).await;
    let waiting = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.acquire_timeout("queued", Duration::from_secs(15)).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    held_elsewhere.release().await.unwrap();
    let queued = tokio::time::timeout(Duration::from_secs(15), waiting).await.expect("bounded").unwrap().unwrap();
    assert!(queued.is_held());
    assert_ne!(queued.lease().id(), b.lease().id());

    // No key of a revoked lease, and exactly one key per held lock.
    for (name, guard) in [("b", &b), ("c", &c), ("queued", &queued)] {
        let keys = run(etcdctl(&server, &["get", "--prefix", "--keys-only", &format!("{namespace}/{name}/")])).await;
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        if guard.is_held() {
            assert_eq!(keys, [format!("{namespace}/{name}/{}", guard.lease().id())], "{name}");
        } else {
            assert!(keys.is_empty(), "{name}: a revoked lease's key: {keys:?}");
        }
    }
    let a_keys = run(etcdctl(&server, &["get", "--prefix", "--keys-only", &format!("{namespace}/a/")])).await;
    assert!(a_keys.trim().is_empty(), "the revoked lease's key is gone: {a_keys}");
}
