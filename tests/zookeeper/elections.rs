//! Elections on ZooKeeper beside the other clients' recipes: Curator's `LeaderSelector` (Java,
//! from Debian's jars) with the default recipe, its `LeaderLatch` with `recipe=curator-latch`,
//! kazoo's `Election` with `recipe=kazoo` — one election, each side seeing the other's leader
//! and value; and a foreign value read alike.

use std::sync::Arc;
use std::time::Duration;

use lockkit::{DistributedLock, Leadership};

use lockkit::zookeeper::zookeeper_client::Client;
use lockkit_testkit::peer::Peer;
use lockkit_testkit::servers::Server;
use lockkit_testkit::support::{connect, unique};
use tokio::task::JoinHandle;

use super::{kazoo, url};

/// How long a peer may take to see a change.
const SEEN_WITHIN: Duration = Duration::from_secs(10);

/// A lockkit candidate campaigning (for at most [`SEEN_WITHIN`]) in a task of its own.
fn campaign_in_background(
    locks: &Arc<dyn DistributedLock>,
    election: &'static str,
    value: &'static str,
) -> JoinHandle<lockkit::Result<Leadership>> {
    let locks = locks.clone();
    tokio::spawn(async move { locks.campaign_timeout(election, value, SEEN_WITHIN).await })
}

/// With `recipe=curator-latch` a lockkit candidate's node is a `LeaderLatch` node
/// (`_c_<uuid>-latch-<seq>`, the value as its data); a Java `LeaderLatch` on the same path waits behind a lockkit leader and names it
/// as the leader; it leads once lockkit resigns (lockkit's `leader()` and observers show it,
/// with a later term); a waiting lockkit candidate leads once the Java latch closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_leader_latch_and_lockkit_share_one_election() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "&recipe=curator-latch")).await;
    let path = format!("/{root}/scheduler");
    let first = locks.campaign("scheduler", "lockkit-a").await.unwrap();
    let raw = Client::connector().connect(&format!("127.0.0.1:{}", server.port)).await.unwrap();
    let nodes = raw.list_children(&path).await.unwrap();
    let [node] = nodes.as_slice() else { panic!("one candidate node: {nodes:?}") };
    let (uuid, sequence) = node.strip_prefix("_c_").and_then(|n| n.split_once("-latch-")).expect(node);
    assert!(uuid.len() == 36 && sequence.len() == 10, "LeaderLatch's protected name: {node}");
    assert_eq!(raw.get_data(&format!("{path}/{node}")).await.unwrap().0, b"lockkit-a", "the value as its data");

    let mut curator = Peer::curator(server.port);
    assert_eq!(curator.ask(&format!("start {path} java-b")).await, "started");
    while curator.ask("participants").await != "lockkit-a,java-b" {
        tokio::task::yield_now().await; // until the latch's node is in line
    }
    assert_eq!(curator.ask("leader").await, "leader lockkit-a", "Java sees lockkit's leader");
    assert_eq!(curator.ask("has").await, "false", "two leaders at once");
    let mut changes = locks.observe("scheduler").await.unwrap();
    assert_eq!(changes.next().await.unwrap().map(|l| l.value), Some("lockkit-a".to_owned()));

    let first_term = first.term();
    first.resign().await.unwrap();
    assert_eq!(curator.ask(&format!("await {}", SEEN_WITHIN.as_millis())).await, "true", "Java leads after the resign");
    let java = locks.leader("scheduler").await.unwrap().expect("Java's latch leads");
    assert_eq!(java.value, "java-b");
    assert!(java.term > first_term, "a later term: {java:?} after {first_term:?}");
    let seen = tokio::time::timeout(SEEN_WITHIN, changes.next()).await.expect("the observer sees Java lead");
    assert_eq!(seen.unwrap(), Some(java.clone()));
    assert!(locks.try_campaign("scheduler", "lockkit-c").await.unwrap().is_none(), "two leaders at once");

    let waiting = campaign_in_background(&locks, "scheduler", "lockkit-c");
    while curator.ask("participants").await != "java-b,lockkit-c" {
        tokio::task::yield_now().await; // until lockkit's candidate is in line
    }
    assert_eq!(curator.ask("close").await, "closed");
    let last = waiting.await.unwrap().expect("lockkit leads once the latch closes");
    assert!(last.term() > java.term, "terms increase across both clients");
    let seen = tokio::time::timeout(SEEN_WITHIN, changes.next()).await.expect("the observer sees lockkit lead");
    assert_eq!(seen.unwrap().map(|l| l.value), Some("lockkit-c".to_owned()));
}

/// With `recipe=kazoo`, a kazoo `Election` and lockkit candidates are one election: kazoo
/// lists lockkit's value among its contenders and waits behind a lockkit leader; it leads once
/// lockkit resigns (lockkit's `leader()` shows its identifier); a waiting lockkit candidate leads
/// once kazoo's leader function returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_elections_and_lockkit_share_one_election() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "&recipe=kazoo")).await;
    let first = locks.campaign("scheduler", "lockkit-a").await.unwrap();
    let mut kazoo = kazoo(&server);
    assert_eq!(kazoo.ask(&format!("campaign /{root}/scheduler kazoo-b")).await, "campaigning");
    while kazoo.ask("contenders").await != r#"["lockkit-a", "kazoo-b"]"# {
        tokio::task::yield_now().await; // until kazoo's node is in line
    }
    assert_eq!(kazoo.ask("leading 0").await, "False", "two leaders at once");

    let first_term = first.term();
    first.resign().await.unwrap();
    assert_eq!(kazoo.ask(&format!("leading {}", SEEN_WITHIN.as_secs())).await, "True", "kazoo leads after the resign");
    let leader = locks.leader("scheduler").await.unwrap().expect("kazoo leads");
    assert_eq!(leader.value, "kazoo-b");
    assert!(leader.term > first_term);
    let waiting = campaign_in_background(&locks, "scheduler", "lockkit-c");
    while kazoo.ask("contenders").await != r#"["kazoo-b", "lockkit-c"]"# {
        tokio::task::yield_now().await;
    }
    assert_eq!(kazoo.ask("resign").await, "resigned");
    let last = waiting.await.unwrap().expect("lockkit leads once kazoo resigns");
    assert!(last.term() > leader.term);
}

/// A leader's value that is not UTF-8 (another client's `setData` on its node) reads the same
/// through `leader()` and `observe()`. (Found by review: `leader()` showed "", the observer
/// U+FFFD.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_observe_read_a_foreign_value_alike() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "")).await;
    let leadership = locks.campaign("utf", "a").await.unwrap();
    let raw = Client::connector().connect(&format!("127.0.0.1:{}", server.port)).await.unwrap();
    let directory = format!("/{root}/utf");
    let children = raw.list_children(&directory).await.unwrap();
    raw.set_data(&format!("{directory}/{}", children[0]), b"x\xffy", None).await.unwrap();
    let leader = locks.leader("utf").await.unwrap().expect("a leader");
    assert_eq!((leader.value.as_str(), leader.term), ("x\u{FFFD}y", leadership.term()));
    let seen = locks.observe("utf").await.unwrap().next().await.unwrap();
    assert_eq!(seen, Some(leader));
}

/// By default candidates hold `InterProcessMutex` nodes, as Curator's `LeaderSelector` does: a Java `LeaderSelector` waits behind a lockkit leader and leads once
/// it resigns; a lockkit candidate waits behind the Java leader and leads once it relinquishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_leader_selector_and_lockkit_share_one_election() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "")).await;
    let first = locks.campaign("scheduler", "lockkit-a").await.unwrap();
    let mut curator = Peer::curator(server.port);
    assert_eq!(curator.ask(&format!("select /{root}/scheduler java-b")).await, "started");
    while curator.ask("participants").await != "lockkit-a,java-b" {
        tokio::task::yield_now().await; // until the selector's node is in line
    }
    assert_eq!(curator.ask("leader").await, "leader lockkit-a", "Java sees lockkit's leader");
    assert_eq!(curator.ask("selected 0").await, "false", "two leaders at once");
    let first_term = first.term();
    first.resign().await.unwrap();
    assert_eq!(curator.ask(&format!("selected {}", SEEN_WITHIN.as_millis())).await, "true");
    let java = locks.leader("scheduler").await.unwrap().expect("Java's selector leads");
    assert!(java.value == "java-b" && java.term > first_term, "{java:?}");

    let waiting = campaign_in_background(&locks, "scheduler", "lockkit-c");
    while curator.ask("participants").await != "java-b,lockkit-c" {
        tokio::task::yield_now().await;
    }
    assert_eq!(curator.ask("relinquish").await, "relinquished");
    let last = waiting.await.unwrap().expect("lockkit leads once Java relinquishes");
    assert!(last.term() > java.term);
}

/// Handles with the default recipe and with `recipe=curator-latch` are candidates of one
/// election (lockkit orders `lock-` and `latch-` nodes in one line), both ways; and a lock
/// keeps a `LeaderLatch`-named candidate out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_of_both_curator_recipes_are_one_election() {
    let server = Server::zookeeper();
    let root = unique("z");
    let selector = connect(&url(&server, &format!("/{root}"), "")).await;
    let latch = connect(&url(&server, &format!("/{root}"), "&recipe=curator-latch")).await;
    for (first, second) in [(&selector, &latch), (&latch, &selector)] {
        let leadership = first.campaign("mixed", "first").await.unwrap();
        assert!(second.try_campaign("mixed", "second").await.unwrap().is_none(), "two leaders at once");
        let waiting = campaign_in_background(second, "mixed", "second");
        while first.status("mixed").await.unwrap().waiting == Some(0) {
            tokio::task::yield_now().await; // until the second candidate is in line
        }
        leadership.resign().await.unwrap();
        let next = waiting.await.unwrap().expect("the other recipe's candidate leads next");
        assert_eq!(second.leader("mixed").await.unwrap().map(|l| l.value), Some("second".to_owned()));
        next.resign().await.unwrap();
    }
    let guard = selector.acquire("mixed").await.unwrap();
    assert!(latch.try_campaign("mixed", "candidate").await.unwrap().is_none(), "a candidate led past a lock");
    guard.release().await.unwrap();
    let leadership = latch.campaign("mixed", "candidate").await.unwrap();
    assert!(selector.try_acquire("mixed").await.unwrap().is_none(), "a lock taken past a leader");
    leadership.resign().await.unwrap();
}
