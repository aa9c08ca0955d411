//! What only the ZooKeeper driver does: kazoo and Curator node layouts, session expiry, a
//! deleted node, an ensemble losing its leader, chroots.
#![cfg(feature = "zookeeper")]

#[path = "conformance/support.rs"]
#[allow(dead_code)]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use lockkit::Error;
use support::servers::{self, Server};
use support::{connect, contend_while, unique};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

const TTL: Duration = Duration::from_secs(2);

fn url(server: &Server, path: &str, query: &str) -> String {
    format!("zk://127.0.0.1:{}{path}?ttl={}ms{query}", server.port, TTL.as_millis())
}

/// A kazoo peer in Python: one command per line in, one answer per line out.
struct Kazoo {
    _process: tokio::process::Child,
    to: ChildStdin,
    from: Lines<BufReader<ChildStdout>>,
}

impl Kazoo {
    fn start(server: &Server) -> Kazoo {
        let peer = r#"
import sys, json
from kazoo.client import KazooClient
zk = KazooClient(hosts="127.0.0.1:" + sys.argv[1])
zk.start()
locks = {}
for line in sys.stdin:
    cmd, path = line.split()
    if cmd == "try":
        locks[path] = zk.Lock(path, "kazoo peer")
        print(locks[path].acquire(blocking=False), flush=True)
    elif cmd == "release":
        locks.pop(path).release()
        print("released", flush=True)
    elif cmd == "children":
        print(json.dumps(sorted(zk.get_children(path))), flush=True)
    elif cmd == "delete":
        zk.delete(path)
        print("deleted", flush=True)
"#;
        let mut process = tokio::process::Command::new("python3")
            .args(["-c", peer, &server.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with kazoo (scripts/install-deps installs it)");
        let to = process.stdin.take().unwrap();
        let from = BufReader::new(process.stdout.take().unwrap()).lines();
        Kazoo { _process: process, to, from }
    }

    async fn ask(&mut self, command: &str, path: &str) -> String {
        self.to.write_all(format!("{command} {path}\n").as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), self.from.next_line()).await;
        answer.expect("kazoo answers within 10 s").unwrap().expect("an answer")
    }
}

/// With `recipe=kazoo`, a kazoo `Lock` and a lockkit lock on the same path exclude each
/// other, both ways, and a lockkit waiter is woken when kazoo releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_locks_and_lockkit_exclude_each_other() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "&recipe=kazoo")).await;
    let mut kazoo = Kazoo::start(&server);
    let path = format!("/{root}/shared");

    let guard = locks.acquire("shared").await.unwrap();
    assert_eq!(kazoo.ask("try", &path).await, "False", "kazoo got a lock lockkit holds");
    guard.release().await.unwrap();
    assert_eq!(kazoo.ask("try", &path).await, "True");
    assert!(locks.try_acquire("shared").await.unwrap().is_none(), "lockkit got a lock kazoo holds");
    let waiter = tokio::spawn(async move { locks.acquire_timeout("shared", Duration::from_secs(10)).await });
    while kazoo.ask("children", &path).await.matches("__lock__").count() < 2 {
        tokio::task::yield_now().await; // until lockkit's waiter node is there
    }
    assert_eq!(kazoo.ask("release", &path).await, "released");
    let guard = waiter.await.unwrap().expect("granted once kazoo released");
    assert!(guard.is_held());
}

/// By default the nodes are Curator's `InterProcessMutex` nodes: `_c_<uuid>-lock-<10 digits>`,
/// holding the holder metadata, under the chroot and namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_curators_layout_under_the_chroot() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "&namespace=jobs")).await;
    let _guard = locks.acquire("nightly").await.unwrap();
    let mut kazoo = Kazoo::start(&server);
    let children: Vec<String> =
        serde_json::from_str(&kazoo.ask("children", &format!("/{root}/jobs/nightly")).await).unwrap();
    assert_eq!(children.len(), 1, "{children:?}");
    let name = &children[0];
    let (uuid, sequence) = name.strip_prefix("_c_").and_then(|n| n.split_once("-lock-")).expect(name);
    assert_eq!(uuid.len(), 36, "{name}");
    assert_eq!(uuid.matches('-').count(), 4, "{name}");
    assert!(sequence.len() == 10 && sequence.bytes().all(|b| b.is_ascii_digit()), "{name}");
}

/// Deleting the holder's node from another client (kazoo) fires the loss signal at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_node_from_another_client_fires_the_loss_signal() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "")).await;
    let guard = locks.acquire("deleted").await.unwrap();
    let mut kazoo = Kazoo::start(&server);
    let directory = format!("/{root}/deleted");
    let children: Vec<String> = serde_json::from_str(&kazoo.ask("children", &directory).await).unwrap();
    assert_eq!(kazoo.ask("delete", &format!("{directory}/{}", children[0])).await, "deleted");
    let reason = tokio::time::timeout(TTL, guard.lost()).await.expect("loss well within the TTL");
    assert!(reason.contains("deleted"), "{reason}");
    assert!(!guard.is_held());
}

/// A server that stops answering for longer than the session timeout: the guard turns
/// suspect and is lost by its deadline; the session is expired when the server is back, the
/// lock is free, and the handle opens a new session for the next acquire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_fires_the_loss_signal_and_a_new_one_is_opened() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "")).await;
    let guard = locks.acquire("expiring").await.unwrap();
    let old_session = guard.lease().id().to_owned();
    server.signal("STOP");
    let reason = tokio::time::timeout(TTL * 2, guard.lost()).await.expect("lost once the session timeout passed");
    assert!(!guard.is_held(), "{reason}");
    tokio::time::sleep(TTL).await; // the point of the test: the server stays away past the timeout
    server.signal("CONT");
    let other = connect(&url(&server, &format!("/{root}"), "")).await;
    let taken = other.acquire_timeout("expiring", TTL * 3).await.expect("the expired session's node is gone");
    assert!(taken.fencing_token() > guard.fencing_token());
    drop(taken);
    let again = locks.acquire_timeout("expiring", TTL * 3).await.expect("the handle opens a new session");
    assert_ne!(again.lease().id(), old_session);
    assert!(again.is_held());
}

/// A server that pauses briefly (well within the session timeout) costs no lock. (A 4 s
/// session: this binary's other tests start up to five JVMs on the same two cores.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_disconnection_keeps_the_lock() {
    let server = Server::zookeeper();
    let ttl = Duration::from_secs(4);
    let locks = connect(&format!("zk://127.0.0.1:{}/{}?ttl={}ms", server.port, unique("z"), ttl.as_millis())).await;
    let guard = locks.acquire("kept").await.unwrap();
    server.signal("STOP");
    tokio::time::sleep(Duration::from_millis(500)).await; // the point of the test: a short pause
    server.signal("CONT");
    tokio::time::sleep(ttl).await; // and a whole session timeout of refreshes after it
    assert!(guard.is_held(), "{:?}", guard.loss_signal().reason());
    guard.release().await.expect("still the holder");
}

/// A 3-server ensemble whose leader is killed while locks are held and contended: nobody gets a
/// double grant, sessions move to the other servers and keep their locks, acquiring works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_losing_its_leader_never_double_grants() {
    let mut servers = Server::zookeeper_ensemble(3);
    let hosts: Vec<String> = servers.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let ttl = Duration::from_secs(4);
    let url = format!("zk://{}/{}?ttl={}ms", hosts.join(","), unique("z"), ttl.as_millis());
    let keeper = connect(&url).await;
    let kept = keeper.acquire("kept").await.unwrap();
    let tokens = contend_while(&url, "contended", 3, Duration::from_secs(6), async {
        tokio::time::sleep(Duration::from_secs(2)).await; // contention under way
        let leader = servers
            .iter()
            .position(|s| servers::four_letter_word(s.port, "srvr").is_some_and(|a| a.contains("Mode: leader")))
            .expect("one server leads");
        servers.remove(leader).kill();
    })
    .await;
    assert!(kept.is_held(), "the session moved to another server: {:?}", kept.loss_signal().reason());
    kept.release().await.expect("still the holder after the election");
    let after = connect(&url).await;
    let guard = after.acquire_timeout("contended", Duration::from_secs(10)).await.expect("acquiring works again");
    assert!(guard.fencing_token() > *tokens.last().unwrap());
}

/// Two chroots are two separate trees: the same name in each is two locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroots_keep_locks_apart() {
    let server = Server::zookeeper();
    let root = unique("z");
    let a = connect(&url(&server, &format!("/{root}/a"), "")).await;
    let b = connect(&url(&server, &format!("/{root}/b"), "")).await;
    let _held = a.acquire("job").await.unwrap();
    assert!(b.try_acquire("job").await.unwrap().is_some(), "another chroot, another lock");
    let a_again = connect(&url(&server, &format!("/{root}/a"), "")).await;
    assert!(a_again.try_acquire("job").await.unwrap().is_none(), "the same chroot, the same lock");
}

/// A name that would land in `/zookeeper`, and a server nobody runs, are clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_paths_and_unreachable_servers_are_clear_errors() {
    let server = Server::zookeeper();
    let locks = connect(&format!("zk://127.0.0.1:{}", server.port)).await;
    let err = locks.acquire("zookeeper").await.unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }) && err.to_string().contains("chroot"), "{err}");

    let port = servers::free_port();
    let started = Instant::now();
    let err = lockkit::connect(&format!("zk://127.0.0.1:{port}?timeout=1s")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(matches!(err, Error::Connection { .. }), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}
