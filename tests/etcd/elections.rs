//! Elections beside `etcdctl elect` (Go's `concurrency.Election`): one election, both ways.

use std::process::Stdio;
use std::time::Duration;

use lockkit_testkit::proxy::Proxy;
use lockkit_testkit::servers::Server;
use lockkit_testkit::support::{connect, unique};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::{etcdctl, url};

/// An `etcdctl elect` process and the lines it prints.
struct Elect {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Elect {
    fn start(server: &Server, args: &[&str]) -> Elect {
        let mut child = etcdctl(server, &[&["elect"], args].concat()).stdout(Stdio::piped()).spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Elect { child, lines }
    }

    /// The next key and value it prints (`-w simple`: the key's line, then the value's).
    async fn next(&mut self) -> (String, String) {
        (self.line().await, self.line().await)
    }

    async fn line(&mut self) -> String {
        let next = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line()).await;
        next.expect("etcdctl printed within 10 s").unwrap().expect("etcdctl is still running")
    }

    /// SIGINT: `etcdctl elect` resigns and exits.
    async fn interrupt(mut self) {
        unsafe { libc::kill(self.child.id().unwrap() as i32, libc::SIGINT) };
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "etcdctl elect exited with {status}");
    }
}

/// `etcdctl elect` leads: lockkit sees its proposal as the leader's value and waits; when
/// etcdctl resigns, lockkit leads. Then `etcdctl elect -l` shows lockkit's value and its
/// proclaim, and a waiting `etcdctl elect` leads once lockkit resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_lockkit_campaign_in_one_election() {
    let server = Server::etcd();
    let namespace = unique("el");
    let locks = connect(&url(&server, &namespace)).await;
    let name = format!("{namespace}/board");

    let mut theirs = Elect::start(&server, &[&name, "from-etcdctl"]);
    let (key, value) = theirs.next().await;
    assert!(key.starts_with(&format!("{name}/")), "the Election key layout: {key}");
    assert_eq!(value, "from-etcdctl");
    let leader = locks.leader("board").await.unwrap().expect("lockkit sees etcdctl's leader");
    assert_eq!(leader.value, "from-etcdctl");
    assert!(locks.try_campaign("board", "from-lockkit").await.unwrap().is_none(), "two leaders");
    let campaign = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.campaign("board", "from-lockkit").await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!campaign.is_finished(), "lockkit led while etcdctl did");
    theirs.interrupt().await;
    let ours = tokio::time::timeout(Duration::from_secs(10), campaign).await.expect("lockkit leads").unwrap();
    assert!(ours.term() > leader.term, "a later term");

    let mut observer = Elect::start(&server, &["-l", &name]);
    let (key, value) = observer.next().await;
    assert!(key.starts_with(&format!("{name}/")));
    assert_eq!(value, "from-lockkit", "etcdctl elect -l shows lockkit's leader");
    ours.proclaim("proclaimed-by-lockkit").await.unwrap();
    assert_eq!(observer.next().await.1, "proclaimed-by-lockkit", "and its proclaim");

    let mut next = Elect::start(&server, &[&name, "etcdctl-again"]);
    let printed = tokio::time::timeout(Duration::from_millis(500), next.lines.next_line()).await;
    assert!(printed.is_err(), "etcdctl led while lockkit did: {printed:?}");
    ours.resign().await.unwrap();
    assert_eq!(next.next().await.1, "etcdctl-again", "etcdctl leads after lockkit resigned");
    assert_eq!(observer.next().await.1, "etcdctl-again", "and its observer saw it");
    next.interrupt().await;
    observer.interrupt().await;
}

/// lockkit's observer follows an election `etcdctl elect` candidates take part in: their
/// proposals, in increasing terms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockkit_observer_follows_etcdctl_candidates() {
    let server = Server::etcd();
    let namespace = unique("eo");
    let locks = connect(&url(&server, &namespace)).await;
    let name = format!("{namespace}/board");
    let mut changes = locks.observe("board").await.unwrap();
    assert_eq!(changes.next().await.unwrap(), None);
    let mut first = Elect::start(&server, &[&name, "first"]);
    first.next().await;
    let seen = tokio::time::timeout(Duration::from_secs(10), changes.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(seen.value, "first");
    let mut second = Elect::start(&server, &[&name, "second"]);
    first.interrupt().await;
    second.next().await;
    let mut next = tokio::time::timeout(Duration::from_secs(10), changes.next()).await.unwrap().unwrap();
    if next.is_none() {
        next = tokio::time::timeout(Duration::from_secs(10), changes.next()).await.unwrap().unwrap();
    }
    let next = next.expect("the second candidate leads");
    assert_eq!(next.value, "second");
    assert!(next.term > seen.term);
    second.interrupt().await;
}

/// An observer whose `next()` is dropped while it reads the next leader (after the deletion of
/// the last one) neither misses that nobody leads nor any later leader. (Found by review: the
/// deletion was consumed, the read dropped, and the observer kept the deposed leader for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_cancelled_while_it_reads_misses_no_change() {
    let server = Server::etcd();
    let namespace = unique("oc");
    let direct = connect(&url(&server, &namespace)).await;
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let observed = connect(&format!("etcd://127.0.0.1:{}/{namespace}?ttl=2s", proxy.port())).await;
    let leadership = direct.campaign("board", "a").await.unwrap();
    let mut changes = observed.observe("board").await.unwrap();
    assert_eq!(changes.next().await.unwrap().unwrap().value, "a");
    proxy.latency(Duration::from_millis(300));
    leadership.resign().await.unwrap();
    // The deletion arrives after ~300 ms; the read it starts is answered ~600 ms later.
    let cancelled = tokio::time::timeout(Duration::from_millis(450), changes.next()).await;
    assert!(cancelled.is_err(), "the read was still under way: {cancelled:?}");
    proxy.latency(Duration::ZERO);
    let after = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
    assert!(matches!(after, Ok(Ok(None))), "nobody leads: {after:?}");
    let b = connect(&url(&server, &namespace)).await.campaign("board", "b").await.unwrap();
    let later = tokio::time::timeout(Duration::from_secs(5), changes.next()).await.unwrap().unwrap();
    assert_eq!(later.map(|l| (l.value, l.term)), Some(("b".to_owned(), b.term())));
}

/// A value that is not UTF-8 (another etcd client wrote it) reads the same through `leader()`
/// and `observe()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_observe_read_a_foreign_value_alike() {
    use lockkit::etcd::etcd_client::{Client, PutOptions};
    let server = Server::etcd();
    let namespace = unique("nu");
    let locks = connect(&url(&server, &namespace)).await;
    let mut client = Client::connect([format!("127.0.0.1:{}", server.port)], None).await.unwrap();
    let lease = client.lease_grant(30, None).await.unwrap().id();
    let key = format!("{namespace}/board/{lease:x}");
    client.put(key, vec![b'x', 0xff, b'y'], Some(PutOptions::new().with_lease(lease))).await.unwrap();
    let leader = locks.leader("board").await.unwrap().expect("someone leads");
    assert_eq!(leader.value, "x\u{FFFD}y");
    let seen = locks.observe("board").await.unwrap().next().await.unwrap();
    assert_eq!(seen, Some(leader));
}
