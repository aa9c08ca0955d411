//! The faster paths of issue #18 under faults: the lease's amortized grant lists and planned
//! refresh wake (core; Redis keys with TTLs of their own), ZooKeeper's pipelined create+list
//! and deferred own-node watch, and etcd's waiters (whose wake-up is decided by one read: a
//! handoff without it granted waiters whose key had gone, found by these tests). Real servers,
//! short TTLs.
#![cfg(all(feature = "etcd", feature = "zookeeper", feature = "redis"))]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockkit::DistributedLock;
use lockkit::etcd::etcd_client::{self, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use lockkit::zookeeper::zookeeper_client as zk;
use lockkit_testkit::proxy::Proxy;
use lockkit_testkit::servers::{self, Server};
use lockkit_testkit::support::{connect, in_line, unique};

const TTL: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn zk_url(port: u16, root: &str) -> String {
    format!("zk://127.0.0.1:{port}/{root}?ttl={}ms", TTL.as_millis())
}

fn etcd_url(port: u16, namespace: &str) -> String {
    format!("etcd://127.0.0.1:{port}/{namespace}?ttl={}ms", TTL.as_millis())
}

async fn zk_raw(port: u16) -> zk::Client {
    zk::Client::connector().connect(&format!("127.0.0.1:{port}")).await.expect("a raw ZooKeeper session")
}

async fn etcd_raw(server: &Server) -> etcd_client::Client {
    etcd_client::Client::connect([format!("127.0.0.1:{}", server.port)], None).await.expect("a raw etcd client")
}

/// The sessions watching `path`, by the server's `wchp`.
fn zk_watchers(port: u16, path: &str) -> Vec<String> {
    let listing = servers::four_letter_word(port, "wchp").unwrap_or_default();
    let mut lines = listing.lines().skip_while(|line| *line != path).skip(1);
    lines.by_ref().take_while(|line| line.starts_with(char::is_whitespace)).map(|l| l.trim().to_owned()).collect()
}

/// Every watched path below `directory` (by `wchp`).
fn zk_watched_below(port: u16, directory: &str) -> Vec<String> {
    let listing = servers::four_letter_word(port, "wchp").unwrap_or_default();
    let below = format!("{directory}/");
    listing.lines().filter(|l| l.starts_with(&below)).map(str::to_owned).collect()
}

/// The children of `directory`, sorted by their sequence (first in line first).
async fn zk_children(raw: &zk::Client, directory: &str) -> Vec<String> {
    let mut children = match raw.list_children(directory).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(e) => panic!("listing {directory}: {e}"),
    };
    children.sort_by_key(|c| c[c.len() - 10..].to_owned());
    children
}

/// Polls `ready` every 10 ms for at most `bound`; whether it became true.
async fn eventually(bound: Duration, mut ready: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if ready().await {
            return true;
        }
        if started.elapsed() > bound {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A metric of the etcd server, from its `/metrics` page.
async fn etcd_metric(server: &Server, name: &str) -> String {
    servers::etcd_metric(server.port, name).unwrap_or_else(|| panic!("no metric {name}"))
}

async fn etcd_watchers(server: &Server) -> (u64, u64) {
    let total = etcd_metric(server, "etcd_debugging_mvcc_watcher_total").await.parse().unwrap();
    let slow = etcd_metric(server, "etcd_debugging_mvcc_slow_watcher_total").await.parse().unwrap();
    (total, slow)
}

/// The contender keys of `prefix` (`ns/NAME/`), first in line first: (key, create revision).
async fn etcd_contenders(raw: &mut etcd_client::Client, prefix: &str) -> Vec<(String, i64)> {
    let options = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend);
    let response = raw.get(prefix, Some(options)).await.unwrap();
    response
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.create_revision()))
        .filter(|(k, _)| !k[prefix.len()..].contains('/'))
        .collect()
}

fn etcdctl(server: &Server, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("etcdctl");
    command.arg(format!("--endpoints=127.0.0.1:{}", server.port)).args(args).env("ETCDCTL_API", "3").kill_on_drop(true);
    command
}

/// A background writer that keeps etcd's revision moving (so a watch that starts at a past
/// revision is "unsynced" on the server, served by its 100 ms catch-up loop).
fn etcd_noise(raw: &etcd_client::Client, key: String) -> tokio::task::JoinHandle<()> {
    let mut raw = raw.clone();
    tokio::spawn(async move {
        loop {
            let _ = raw.put(key.as_str(), "noise", None).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Core: grants with a TTL of their own (Redis keys) joining a lease at any moment
// ---------------------------------------------------------------------------------------------

/// Locks granted through a slow connection (the grant's reply comes after refreshes were
/// sent), at staggered moments relative to the refresh ticks, while other grants come and go
/// (the amortized pruning): as long as a guard says held, its key is on the server with a TTL
/// left; and none is lost (the refreshes cover every grant in time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slow_grants_keep_their_keys_while_held() {
    let server = Server::redis();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let ttl = Duration::from_millis(1000);
    let locks = connect(&format!("redis://127.0.0.1:{}?ttl={}ms", proxy.port(), ttl.as_millis())).await;
    let raw = redis::Client::open(format!("redis://127.0.0.1:{}", server.port)).unwrap();
    let prefix = unique("k");
    let mut violations = Vec::new();
    for latency in [Duration::from_millis(0), Duration::from_millis(60), Duration::from_millis(120)] {
        proxy.latency(latency);
        // Grants that come and go on the same lease, all along.
        let churn = {
            let (locks, prefix) = (locks.clone(), prefix.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let guard = locks.acquire(&format!("{prefix}-churn-{}", i % 7)).await.unwrap();
                    if i % 2 == 0 {
                        guard.release().await.unwrap();
                    } else {
                        drop(guard);
                    }
                }
            })
        };
        let mut holders = Vec::new();
        for i in 0..10u64 {
            let (locks, raw) = (locks.clone(), raw.clone());
            let name = format!("{prefix}-{}-{i}", latency.as_millis());
            holders.push(tokio::spawn(async move {
                // Staggered across more than a refresh interval (ttl·0.95/3 ≈ 316 ms).
                tokio::time::sleep(Duration::from_millis(i * 41)).await;
                let guard = locks.acquire(&name).await.unwrap();
                let mut con = raw.get_multiplexed_async_connection().await.unwrap();
                let (started, mut problems) = (Instant::now(), Vec::new());
                while started.elapsed() < 4 * ttl {
                    let pttl: i64 = redis::cmd("PTTL").arg(&name).query_async(&mut con).await.unwrap();
                    let held = guard.is_held();
                    if pttl <= 0 && held {
                        problems
                            .push(format!("{name}: held after {:?} while its key's PTTL is {pttl}", started.elapsed()));
                    }
                    if !held {
                        problems.push(format!(
                            "{name}: lost after {:?}: {:?}",
                            started.elapsed(),
                            guard.loss_signal().reason()
                        ));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                let _ = guard.release().await;
                problems
            }));
        }
        for holder in holders {
            violations.extend(holder.await.unwrap());
        }
        churn.abort();
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

// ---------------------------------------------------------------------------------------------
// 2. ZooKeeper: deferred own-node watch, pipelined create+list, waiters
// ---------------------------------------------------------------------------------------------

/// The holder's node deleted by another client right after `acquire` returns (no sleep): the
/// loss fires within the TTL, and no watch stays on the server for the deleted node's path —
/// on a direct connection, and through a slow one (the guard's watcher's exists-with-watch
/// then reaches the server after the delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_holder_node_deleted_right_after_the_grant_is_noticed_and_leaves_no_watch() {
    let server = Server::zookeeper();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let raw = zk_raw(server.port).await;
    let root = unique("z");
    // The check can see a leak: an exists-watch on a missing path stays listed by `wchp`.
    let probe = zk_raw(server.port).await;
    let missing = format!("/{root}-missing");
    let (stat, _watch) = probe.check_and_watch_stat(&missing).await.unwrap();
    assert!(stat.is_none());
    let listed = eventually(Duration::from_secs(1), async || !zk_watchers(server.port, &missing).is_empty()).await;
    assert!(listed, "wchp does not list an exists-watch on a missing path");
    let mut problems = Vec::new();
    for (via, latency) in [("direct", None), ("proxy 0 ms", Some(0)), ("proxy 40 ms", Some(40))] {
        let port = match latency {
            None => server.port,
            Some(ms) => {
                proxy.latency(Duration::from_millis(ms));
                proxy.port()
            }
        };
        let locks = connect(&zk_url(port, &root)).await;
        for round in 0..3 {
            let name = format!("gone{}{round}", via.replace(' ', ""));
            let directory = format!("/{root}/{name}");
            let guard = locks.acquire(&name).await.unwrap();
            let children = zk_children(&raw, &directory).await;
            assert_eq!(children.len(), 1, "{via}: {children:?}");
            let node = format!("{directory}/{}", children[0]);
            raw.delete(&node, None).await.unwrap();
            match tokio::time::timeout(TTL, guard.lost()).await {
                Ok(reason) => assert!(reason.contains("deleted"), "{via}: {reason}"),
                Err(_) => problems
                    .push(format!("{via} round {round}: the deleted holder node's loss did not fire within {TTL:?}")),
            }
            let clean = eventually(Duration::from_secs(1), async || zk_watchers(server.port, &node).is_empty()).await;
            if !clean {
                problems.push(format!(
                    "{via} round {round}: a watch is left on the deleted node {node}: sessions {:?}",
                    zk_watchers(server.port, &node)
                ));
            }
            drop(guard);
        }
        locks.close().await.unwrap();
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Many rapid acquire/release/drop cycles, uncontended and contended, direct and through a slow
/// connection: afterwards no watch is left under the locks' directories (`wchp`) and no node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_rapid_cycles_leave_no_watch_and_no_node() {
    let server = Server::zookeeper();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    proxy.latency(Duration::from_millis(3));
    let root = unique("z");
    let direct = connect(&zk_url(server.port, &root)).await;
    let slow = connect(&zk_url(proxy.port(), &root)).await;
    let raw = zk_raw(server.port).await;
    for i in 0..40 {
        direct.acquire("solo").await.unwrap().release().await.unwrap();
        drop(direct.acquire("solo").await.unwrap());
        slow.acquire("slowsolo").await.unwrap().release().await.unwrap();
        if i % 4 == 0 {
            drop(slow.acquire("slowsolo").await.unwrap());
        }
    }
    // Contended: two handles alternate on one name.
    let tasks: Vec<_> = [direct.clone(), slow.clone()]
        .into_iter()
        .map(|locks| {
            tokio::spawn(async move {
                for i in 0..25 {
                    let guard = locks.acquire_timeout("shared", Duration::from_secs(10)).await.unwrap();
                    if i % 3 == 0 {
                        drop(guard);
                    } else {
                        guard.release().await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for name in ["solo", "slowsolo", "shared"] {
        let directory = format!("/{root}/{name}");
        let empty = eventually(Duration::from_secs(3), async || zk_children(&raw, &directory).await.is_empty()).await;
        assert!(empty, "nodes left in {directory}: {:?}", zk_children(&raw, &directory).await);
        let clean =
            eventually(Duration::from_secs(2), async || zk_watched_below(server.port, &directory).is_empty()).await;
        assert!(clean, "watches left below {directory}: {:?}", zk_watched_below(server.port, &directory));
    }
}

/// Acquires cancelled at random points (a few ms) while another handle holds the lock leave no
/// node behind; waiters in line are granted in FIFO order, a cancelled waiter in the middle is
/// skipped, and no two hold at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_cancelled_acquires_leave_no_node_and_waiters_keep_fifo_order() {
    let server = Server::zookeeper();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    proxy.latency(Duration::from_millis(2));
    let root = unique("z");
    let directory = format!("/{root}/line");
    let raw = zk_raw(server.port).await;
    let holder = connect(&zk_url(server.port, &root)).await;
    let held = holder.acquire("line").await.unwrap();
    // Cancelled at random points of their acquire: before the create, in flight, while waiting.
    let canceller = connect(&zk_url(proxy.port(), &root)).await;
    for i in 0..40u64 {
        let bound = Duration::from_micros((i * 7919) % 15_000);
        let r = tokio::time::timeout(bound, canceller.acquire("line")).await;
        assert!(r.is_err(), "granted while held elsewhere: {r:?}");
    }
    let only_holder = eventually(Duration::from_secs(5), async || zk_children(&raw, &directory).await.len() == 1).await;
    assert!(only_holder, "nodes left by cancelled acquires: {:?}", zk_children(&raw, &directory).await);

    // Waiters A, B, C in line; B cancelled; release → A, then C.
    let handles: Vec<Arc<dyn DistributedLock>> = vec![
        connect(&zk_url(server.port, &root)).await,
        connect(&zk_url(proxy.port(), &root)).await,
        connect(&zk_url(server.port, &root)).await,
    ];
    let (granted_tx, mut granted) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for (i, locks) in handles.iter().enumerate() {
        let (locks, tx) = (locks.clone(), granted_tx.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locks.acquire("line").await.unwrap();
            tx.send((i, guard)).unwrap();
        }));
        in_line(&*holder, "line", i + 1).await;
    }
    waiters[1].abort();
    let two_left = eventually(Duration::from_secs(5), async || zk_children(&raw, &directory).await.len() == 3).await;
    assert!(two_left, "the cancelled waiter's node stays: {:?}", zk_children(&raw, &directory).await);
    assert!(granted.try_recv().is_err(), "a waiter was granted while the holder holds");
    held.release().await.unwrap();
    let (first, guard) = tokio::time::timeout(TTL, granted.recv()).await.expect("the next waiter is granted").unwrap();
    assert_eq!(first, 0, "FIFO: the first waiter is granted first");
    let early = tokio::time::timeout(Duration::from_millis(300), granted.recv()).await;
    assert!(early.is_err(), "a second holder while the first holds: {:?}", early.map(|g| g.map(|g| g.0)));
    assert!(guard.is_held());
    guard.release().await.unwrap();
    let (next, guard) = tokio::time::timeout(TTL, granted.recv()).await.expect("the last waiter is granted").unwrap();
    assert_eq!(next, 2);
    guard.release().await.unwrap();
    let empty = eventually(Duration::from_secs(5), async || zk_children(&raw, &directory).await.is_empty()).await;
    assert!(empty, "nodes left: {:?}", zk_children(&raw, &directory).await);
    let clean = eventually(Duration::from_secs(2), async || zk_watched_below(server.port, &directory).is_empty()).await;
    assert!(clean, "watches left below {directory}: {:?}", zk_watched_below(server.port, &directory));
}

/// The lock's directory deleted between acquires (as ZooKeeper does with an empty container),
/// and the whole chroot path too: the next acquire recreates them and is granted; a first
/// acquire of a new name (NoNode on the create) works through a slow connection too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_directory_deleted_between_acquires_is_made_again() {
    let server = Server::zookeeper();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    proxy.latency(Duration::from_millis(10));
    let raw = zk_raw(server.port).await;
    for port in [server.port, proxy.port()] {
        let root = unique("z");
        let locks = connect(&zk_url(port, &root)).await;
        for round in 0..3 {
            let guard = locks.acquire("dir").await.unwrap();
            assert!(guard.is_held());
            guard.release().await.unwrap();
            raw.delete(&format!("/{root}/dir"), None).await.unwrap();
            if round == 1 {
                raw.delete(&format!("/{root}"), None).await.unwrap();
            }
        }
        let guard = locks.acquire(&unique("fresh")).await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), guard.lost()).await;
        assert!(quiet.is_err(), "a fresh grant was lost: {quiet:?}");
        guard.release().await.unwrap();
    }
}

/// A waiter whose own node another client deletes while it waits is not granted while the
/// holder holds (it watches its own node, though its first listing came without that watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_waiter_whose_node_is_deleted_is_not_granted_while_held() {
    let server = Server::zookeeper();
    let root = unique("z");
    let directory = format!("/{root}/w");
    let raw = zk_raw(server.port).await;
    let holder = connect(&zk_url(server.port, &root)).await;
    let waiter = connect(&zk_url(server.port, &root)).await;
    let held = holder.acquire("w").await.unwrap();
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.acquire_timeout("w", Duration::from_secs(10)).await }
    });
    in_line(&*holder, "w", 1).await;
    let children = zk_children(&raw, &directory).await;
    raw.delete(&format!("{directory}/{}", children[1]), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // a negative: nothing to await
    assert!(!waiting.is_finished() || waiting.await.unwrap().is_err(), "granted while the holder holds");
    assert!(held.is_held());
}

// ---------------------------------------------------------------------------------------------
// 3. etcd: the handoff without a read
// ---------------------------------------------------------------------------------------------

/// A waiter's own key deleted in the same moment as its predecessor (one transaction), while its
/// own key's watch is served by etcd's catch-up loop (it starts at the key's creation, and the
/// revision moved on since — here a background writer moves it): the waiter must not be granted
/// on its deleted key (its token would be that key's revision) — a holder whose key is gone
/// excludes nobody. Several rounds; the rounds where the server counted an unsynced watcher
/// right before the delete are the ones that exercise it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_waiter_whose_key_goes_with_its_predecessor_is_not_granted_on_it() {
    waiters_whose_key_went(KeyGone::WithPredecessor).await;
}

/// The same with the waiter's lease revoked (as `etcdctl lease revoke` does), then the holder's
/// release: the waiter is not granted on the key its revoked lease took with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_waiter_whose_lease_is_revoked_is_not_granted_on_its_old_key() {
    waiters_whose_key_went(KeyGone::LeaseRevoked).await;
}

/// How a round takes a waiter's key away.
#[derive(Clone, Copy, Debug)]
enum KeyGone {
    /// Its key and its predecessor's (the holder's) deleted in one transaction.
    WithPredecessor,
    /// Its lease revoked, then the holder released.
    LeaseRevoked,
}

/// Ten rounds: a holder, a fresh waiter behind it, the waiter's key taken away as `gone` says;
/// the waiter must never be granted on that key.
async fn waiters_whose_key_went(gone: KeyGone) {
    let server = Server::etcd();
    let namespace = unique("e");
    let mut raw = etcd_raw(&server).await;
    let holder = connect(&etcd_url(server.port, &namespace)).await;
    let noise = etcd_noise(&raw, format!("{namespace}-noise"));
    let (mut armed, mut violations) = (0, Vec::new());
    for round in 0..10 {
        let name = format!("r{round}");
        let prefix = format!("{namespace}/{name}/");
        let held = holder.acquire(&name).await.unwrap();
        let synced = eventually(Duration::from_secs(2), async || etcd_watchers(&server).await.1 == 0).await;
        assert!(synced, "etcd's catch-up loop never synced the watches");
        let (base, _) = etcd_watchers(&server).await;
        // A fresh handle: its own key's watch is new.
        let waiter = connect(&etcd_url(server.port, &namespace)).await;
        let waiting = tokio::spawn({
            let (waiter, name) = (waiter.clone(), name.clone());
            async move { waiter.acquire_timeout(&name, 3 * TTL).await }
        });
        // Its own key's watch and its predecessor's are on the server.
        let started = Instant::now();
        let slow = loop {
            let (total, slow) = etcd_watchers(&server).await;
            if total >= base + 2 {
                break slow;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "the waiter's watches never came");
        };
        let contenders = etcd_contenders(&mut raw, &prefix).await;
        assert_eq!(contenders.len(), 2, "{contenders:?}");
        let (mine, mine_revision) = contenders[1].clone();
        match gone {
            KeyGone::WithPredecessor => {
                let deletes = [TxnOp::delete(contenders[0].0.as_str(), None), TxnOp::delete(mine.as_str(), None)];
                raw.txn(Txn::new().and_then(deletes)).await.unwrap();
            }
            KeyGone::LeaseRevoked => {
                let lease = i64::from_str_radix(mine.rsplit('/').next().unwrap(), 16).unwrap();
                raw.lease_revoke(lease).await.unwrap();
            }
        }
        armed += usize::from(slow > 0);
        let held = match gone {
            KeyGone::WithPredecessor => Some(held),
            KeyGone::LeaseRevoked => {
                held.release().await.unwrap();
                None
            }
        };
        match waiting.await.unwrap() {
            Ok(guard) => {
                if guard.fencing_token().get() == mine_revision as u64 {
                    violations.push(format!(
                        "round {round} (unsynced watchers: {slow}): granted with token {mine_revision}, the revision of its \
                         key {mine}, gone before the grant ({gone:?}); held at once: {}",
                        guard.is_held()
                    ));
                }
                let _ = guard.release().await;
            }
            Err(e) => eprintln!("round {round}: the waiter's acquire ended with {e}"),
        }
        drop(held);
        waiter.close().await.unwrap();
    }
    noise.abort();
    eprintln!("armed rounds (own-key watch unsynced when its key went): {armed}/10");
    assert!(violations.is_empty(), "{violations:#?}");
}

/// H holds, W1 and W2 wait (W2's predecessor W1 is not first): W1 cancelled → W2 is not
/// granted while H holds; H released → W2 granted, with a larger token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_cancelled_middle_waiter_does_not_let_the_next_one_in() {
    let server = Server::etcd();
    let namespace = unique("e");
    let url = etcd_url(server.port, &namespace);
    let (h, w1, w2) = (connect(&url).await, connect(&url).await, connect(&url).await);
    let held = h.acquire("x").await.unwrap();
    let first = tokio::spawn(async move { w1.acquire("x").await });
    in_line(&*h, "x", 1).await;
    let second = tokio::spawn(async move { w2.acquire("x").await });
    in_line(&*h, "x", 2).await;
    first.abort();
    in_line(&*h, "x", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // a negative: nothing to await
    assert!(!second.is_finished(), "granted while the holder holds: {:?}", second.await);
    assert!(held.is_held());
    let token = held.fencing_token();
    held.release().await.unwrap();
    let guard = tokio::time::timeout(TTL, second).await.expect("granted").unwrap().unwrap();
    assert!(guard.fencing_token() > token);
    guard.release().await.unwrap();
}

/// A key of a nested namespace (`ns/x/sub/y`) between the holder and the waiter, or alone
/// before it: it neither blocks nor lets a waiter in early; tokens grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_nested_namespace_keys_neither_block_nor_let_in() {
    let server = Server::etcd();
    let namespace = unique("e");
    let url = etcd_url(server.port, &namespace);
    let mut raw = etcd_raw(&server).await;
    let (h, w, v) = (connect(&url).await, connect(&url).await, connect(&url).await);
    // Alone before: granted at once.
    raw.put(format!("{namespace}/alone/sub/y"), "nested", None).await.unwrap();
    let guard = tokio::time::timeout(TTL, w.acquire("alone")).await.expect("a nested key blocked").unwrap();
    guard.release().await.unwrap();
    // Between the holder and the waiter, then another waiter behind: one holder at a time.
    let held = h.acquire("x").await.unwrap();
    raw.put(format!("{namespace}/x/sub/y"), "nested", None).await.unwrap();
    let first = tokio::spawn(async move { w.acquire("x").await });
    in_line(&*h, "x", 1).await;
    raw.put(format!("{namespace}/x/sub/z"), "nested", None).await.unwrap();
    let second = tokio::spawn(async move { v.acquire("x").await });
    in_line(&*h, "x", 2).await;
    raw.delete(format!("{namespace}/x/sub/y"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // a negative: nothing to await
    assert!(!first.is_finished() && !second.is_finished(), "a waiter was let in by a nested key's deletion");
    let token = held.fencing_token();
    held.release().await.unwrap();
    let guard = tokio::time::timeout(TTL, first).await.expect("granted").unwrap().unwrap();
    assert!(guard.fencing_token() > token);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "two holders at once");
    let token = guard.fencing_token();
    guard.release().await.unwrap();
    let guard = tokio::time::timeout(TTL, second).await.expect("granted").unwrap().unwrap();
    assert!(guard.fencing_token() > token);
}

/// `etcdctl lock` in the middle of the line (H lockkit, E etcdctl, W lockkit): when H goes, E
/// holds and W must wait (its predecessor was not first); when E lets go, W is granted. And an
/// `etcdctl lock` holder right before W: W is granted when it lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_etcdctl_lock_in_line_is_respected_by_the_fast_handoff() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let server = Server::etcd();
    let namespace = unique("e");
    let url = etcd_url(server.port, &namespace);
    let (h, w) = (connect(&url).await, connect(&url).await);
    let lock_name = format!("{namespace}/x");
    let held = h.acquire("x").await.unwrap();
    let mut etcdctl_lock =
        etcdctl(&server, &["lock", "--ttl=5", &lock_name]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(etcdctl_lock.stdout.take().unwrap()).lines();
    in_line(&*h, "x", 1).await;
    let waiting = tokio::spawn(async move { w.acquire("x").await });
    in_line(&*h, "x", 2).await;
    held.release().await.unwrap();
    let key = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(key.starts_with(&format!("{lock_name}/")), "{key}");
    tokio::time::sleep(Duration::from_millis(500)).await; // a negative: nothing to await
    assert!(!waiting.is_finished(), "lockkit granted while etcdctl holds: {:?}", waiting.await);
    unsafe { libc::kill(etcdctl_lock.id().unwrap() as i32, libc::SIGINT) };
    let guard = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("granted").unwrap().unwrap();
    assert!(guard.is_held());
    guard.release().await.unwrap();
}
