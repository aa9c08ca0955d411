//! What only the ZooKeeper driver does: kazoo and Curator node layouts, session expiry, a
//! deleted node, an ensemble losing its leader, chroots, and the faults of issue #14 (a foreign
//! `setData`, a follower without quorum, a duplicate node, expired and given-up sessions, a
//! connection cut while waiting, node ACLs).
#![cfg(feature = "zookeeper")]

mod elections;

use std::time::{Duration, Instant};

use lockkit::Error;
use lockkit::zookeeper::zookeeper_client::{self as zk, Acls, Client, CreateMode, EventType};
use lockkit_testkit::peer::Peer;
use lockkit_testkit::proxy::{Direction, Proxy};
use lockkit_testkit::servers::{self, Server};
use lockkit_testkit::support::{connect, contend_while, unique};

const TTL: Duration = Duration::from_secs(2);

/// The ensembles of this binary take turns: three JVMs each are enough for two shared cores.
static ENSEMBLE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url(server: &Server, path: &str, query: &str) -> String {
    format!("zk://127.0.0.1:{}{path}?ttl={}ms{query}", server.port, TTL.as_millis())
}

/// A kazoo peer in Python: one command per line in, one answer per line out.
fn kazoo(server: &Server) -> Peer {
    let peer = r#"
import sys, json, threading
from kazoo.client import KazooClient
zk = KazooClient(hosts="127.0.0.1:" + sys.argv[1])
zk.start()
locks = {}
election, leading, resigned = None, threading.Event(), threading.Event()
def lead():
    leading.set()
    resigned.wait()
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "try":
        locks[arg] = zk.Lock(arg, "kazoo peer")
        print(locks[arg].acquire(blocking=False), flush=True)
    elif cmd == "release":
        locks.pop(arg).release()
        print("released", flush=True)
    elif cmd == "children":
        print(json.dumps(sorted(zk.get_children(arg))), flush=True)
    elif cmd == "delete":
        zk.delete(arg)
        print("deleted", flush=True)
    elif cmd == "campaign":  # PATH IDENTIFIER: kazoo's Election.run, in a thread
        path, identifier = arg.split(" ", 1)
        election = zk.Election(path, identifier)
        threading.Thread(target=election.run, args=(lead,), daemon=True).start()
        print("campaigning", flush=True)
    elif cmd == "leading":  # SECONDS: waits at most that long to lead
        print(leading.wait(float(arg)), flush=True)
    elif cmd == "contenders":
        print(json.dumps(election.contenders()), flush=True)
    elif cmd == "resign":
        resigned.set()
        print("resigned", flush=True)
"#;
    let mut python = tokio::process::Command::new("python3");
    python.args(["-c", peer, &server.port.to_string()]);
    Peer::spawn("kazoo (python3)", &mut python)
}

/// With `recipe=kazoo`, a kazoo `Lock` and a lockkit lock on the same path exclude each
/// other, both ways, and a lockkit waiter is woken when kazoo releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_locks_and_lockkit_exclude_each_other() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "&recipe=kazoo")).await;
    let mut kazoo = kazoo(&server);
    let path = format!("/{root}/shared");

    let guard = locks.acquire("shared").await.unwrap();
    assert_eq!(kazoo.ask(&format!("try {path}")).await, "False", "kazoo got a lock lockkit holds");
    guard.release().await.unwrap();
    assert_eq!(kazoo.ask(&format!("try {path}")).await, "True");
    assert!(locks.try_acquire("shared").await.unwrap().is_none(), "lockkit got a lock kazoo holds");
    let waiter = tokio::spawn(async move { locks.acquire_timeout("shared", Duration::from_secs(10)).await });
    while kazoo.ask(&format!("children {path}")).await.matches("__lock__").count() < 2 {
        tokio::task::yield_now().await; // until lockkit's waiter node is there
    }
    assert_eq!(kazoo.ask(&format!("release {path}")).await, "released");
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
    let mut kazoo = kazoo(&server);
    let children: Vec<String> =
        serde_json::from_str(&kazoo.ask(&format!("children /{root}/jobs/nightly")).await).unwrap();
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
    let mut kazoo = kazoo(&server);
    let directory = format!("/{root}/deleted");
    let children: Vec<String> = serde_json::from_str(&kazoo.ask(&format!("children {directory}")).await).unwrap();
    assert_eq!(kazoo.ask(&format!("delete {directory}/{}", children[0])).await, "deleted");
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
    let _turn = ENSEMBLE.lock().await;
    let mut servers = serving_ensemble().await;
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

/// What `srvr` says of a server: its `Mode:` once it serves.
fn mode(server: &Server) -> String {
    servers::four_letter_word(server.port, "srvr").unwrap_or_default()
}

/// A 3-server ensemble once it has a leader and every server serves (each answers `ruok` well
/// before: a session opened then waits for the election, and its lease starts near its deadline).
async fn serving_ensemble() -> Vec<Server> {
    let servers = Server::zookeeper_ensemble(3);
    poll_until("the ensemble serves", Duration::from_secs(30), || servers.iter().all(|s| mode(s).contains("Mode: ")))
        .await;
    servers
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

/// A plain client of the test's own (its own session), with `digest` credentials if given.
async fn raw(port: u16, digest: Option<&str>) -> Client {
    let mut connector = Client::connector();
    if let Some(digest) = digest {
        connector = connector.with_auth("digest", digest.as_bytes());
    }
    connector.connect(&format!("127.0.0.1:{port}")).await.expect("a session of the test's own")
}

/// The contenders in `directory` (first in line first) once `ready` accepts them; woken by
/// watches, bounded by 10 s.
async fn children_until(client: &Client, directory: &str, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let wait = async {
        loop {
            let watcher = match client.list_and_watch_children(directory).await {
                Ok((mut children, watcher)) => {
                    children.sort_by_key(|c| c[c.len() - 10..].to_owned());
                    if ready(&children) {
                        return children;
                    }
                    seen = children;
                    watcher
                }
                Err(zk::Error::NoNode) if ready(&[]) => return Vec::new(),
                Err(zk::Error::NoNode) => match client.check_and_watch_stat(directory).await.unwrap() {
                    (Some(_), _) => continue,
                    (None, watcher) => watcher,
                },
                Err(e) => panic!("listing {directory}: {e}"),
            };
            watcher.changed().await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(children) => children,
        Err(_) => panic!("the contenders in {directory} never got as expected; the last seen: {seen:?}"),
    }
}

/// The sessions watching `path`, by the server's `wchp` (paths, each followed by its sessions).
fn watchers(server: &Server, path: &str) -> Vec<String> {
    let listing = servers::four_letter_word(server.port, "wchp").unwrap_or_default();
    let mut lines = listing.lines().skip_while(|line| *line != path).skip(1);
    lines.by_ref().take_while(|line| line.starts_with(char::is_whitespace)).map(|l| l.trim().to_owned()).collect()
}

/// Waits until `ready`, polling — for states of the servers that nothing announces (watches,
/// an election) — at most `bound`.
async fn poll_until(what: &str, bound: Duration, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A contender node's name without its 10-digit sequence: the acquire's protected id.
fn protected_prefix(node: &str) -> &str {
    &node[..node.len() - 10]
}

/// Issue #14: a foreign `setData` on the holder's node (which bumps its version) does not keep
/// the release from deleting it: the next contender gets the lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_set_data_on_the_holder_node_does_not_block_its_release() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "")).await;
    let guard = locks.acquire("touched").await.unwrap();
    let raw = raw(server.port, None).await;
    let directory = format!("/{root}/touched");
    let holder = children_until(&raw, &directory, |n| n.len() == 1).await.remove(0);
    raw.set_data(&format!("{directory}/{holder}"), b"someone else's", None).await.unwrap();
    guard.release().await.expect("released although the node's version changed");
    let other = connect(&url(&server, &format!("/{root}"), "")).await;
    assert!(other.try_acquire("touched").await.unwrap().is_some(), "the holder's node is gone");
}

/// Issue #14: a follower cut off from its quorum still answers reads for syncLimit × tickTime
/// (2 s here) while the leader counts the session down, so the keep-alive asks the leader
/// (`sync`): a guard on that follower is lost by its deadline, within one TTL of the quorum going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_needs_the_quorum_not_just_a_follower() {
    let _turn = ENSEMBLE.lock().await;
    let servers = serving_ensemble().await;
    let follower = servers.iter().position(|s| mode(s).contains("Mode: follower")).expect("a follower");
    let locks =
        connect(&format!("zk://127.0.0.1:{}/{}?ttl={}ms", servers[follower].port, unique("z"), TTL.as_millis())).await;
    let guard = locks.acquire("quorum").await.unwrap();
    guard.lease().refresh().await.expect("the keep-alive works on an ensemble");
    for (i, server) in servers.iter().enumerate() {
        if i != follower {
            server.signal("STOP");
        }
    }
    let quorum_gone = Instant::now();
    let reason = tokio::time::timeout(TTL, guard.lost()).await;
    let reason = reason.unwrap_or_else(|_| panic!("still held {:?} after the quorum went", quorum_gone.elapsed()));
    assert!(!guard.is_held(), "{reason}");
}

/// Issue #14: every node with an acquire's protected id is that acquire's own (a create whose
/// reply was lost may have been applied after all): a second one is deleted, not left in line,
/// where it would hold the lock for nobody once the acquire's own node is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_an_acquires_id_is_its_own_and_is_deleted() {
    let server = Server::zookeeper();
    let root = unique("z");
    let url = url(&server, &format!("/{root}"), "");
    let (holder, first, second) = (connect(&url).await, connect(&url).await, connect(&url).await);
    let raw = raw(server.port, None).await;
    let directory = format!("/{root}/twice");
    let held = holder.acquire("twice").await.unwrap();
    let ahead = tokio::spawn(async move { first.acquire("twice").await });
    children_until(&raw, &directory, |n| n.len() == 2).await;
    let waiter = tokio::spawn(async move { second.acquire_timeout("twice", Duration::from_secs(20)).await });
    let line = children_until(&raw, &directory, |n| n.len() == 3).await;
    let duplicate = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    raw.create(&format!("{directory}/{}", protected_prefix(&line[2])), b"", &duplicate).await.unwrap();
    ahead.abort(); // the waiter's predecessor goes: it looks at the line again
    let after = children_until(&raw, &directory, |n| n.len() == 2).await;
    assert_eq!(after, [line[0].clone(), line[2].clone()], "the duplicate was deleted");
    held.release().await.unwrap();
    let guard = waiter.await.unwrap().expect("the waiter gets the lock");
    guard.release().await.unwrap();
    assert!(holder.try_acquire("twice").await.unwrap().is_some(), "nothing is left in line");
}

/// Issue #14: an acquire whose session expired while it waited tries again on a new session
/// with a new protected id (as Curator does), so that no node of the dead session can pass for
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_retried_on_a_new_session_uses_a_new_id() {
    let server = Server::zookeeper();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let root = unique("z");
    let holder = connect(&url(&server, &format!("/{root}"), "")).await;
    let held = holder.acquire("expiring").await.unwrap();
    let through = connect(&format!("zk://127.0.0.1:{}/{root}?ttl={}ms", proxy.port(), TTL.as_millis())).await;
    let waiter = tokio::spawn(async move { through.acquire_timeout("expiring", Duration::from_secs(20)).await });
    let raw = raw(server.port, None).await;
    let directory = format!("/{root}/expiring");
    let first = children_until(&raw, &directory, |n| n.len() == 2).await.remove(1);
    let (_, deleted) = raw.check_and_watch_stat(&format!("{directory}/{first}")).await.unwrap();
    proxy.hold(Direction::Both);
    let event = tokio::time::timeout(TTL * 3, deleted.changed()).await.expect("the server expires the session");
    assert_eq!(event.event_type, EventType::NodeDeleted);
    proxy.release();
    let line = children_until(&raw, &directory, |n| n.len() == 2).await;
    assert_ne!(protected_prefix(&line[1]), protected_prefix(&first), "a new session, a new id");
    held.release().await.unwrap();
    let guard = waiter.await.unwrap().expect("granted on the new session");
    assert!(guard.is_held());
}

/// Issue #14: a session the handle gave up really ends — nothing of the handle keeps it alive —
/// and takes its nodes with it, a waiter's included, even when the revoke that would have
/// deleted them got no answer (the network was down; the session is still valid when it is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_up_session_ends_with_its_nodes_even_when_its_revoke_got_no_answer() {
    let server = Server::zookeeper();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let root = unique("z");
    let holder = connect(&url(&server, &format!("/{root}"), "")).await;
    let held = holder.acquire("queued").await.unwrap();
    let url = format!("zk://127.0.0.1:{}/{root}?ttl={}ms&timeout=1s", proxy.port(), TTL.as_millis());
    let through = connect(&url).await;
    let kept = through.acquire("kept").await.unwrap();
    let waiter = tokio::spawn(async move { through.acquire_timeout("queued", Duration::from_secs(20)).await });
    let raw = raw(server.port, None).await;
    let queued = children_until(&raw, &format!("/{root}/queued"), |n| n.len() == 2).await.remove(1);
    let (_, deleted) = raw.check_and_watch_stat(&format!("/{root}/queued/{queued}")).await.unwrap();
    proxy.hold(Direction::Both);
    assert!(kept.lease().revoke().await.is_err(), "the revoke got no answer");
    proxy.release(); // within the session timeout: the server still counts the session alive
    let event = tokio::time::timeout(TTL * 2, deleted.changed()).await.expect("the session ended, with its nodes");
    assert_eq!(event.event_type, EventType::NodeDeleted);
    assert!(!kept.is_held());
    // The waiter tried again on a new session, which it could not open while the proxy held.
    let _ = waiter.await.unwrap();
    held.release().await.unwrap();
    children_until(&raw, &format!("/{root}/queued"), |n| n.is_empty()).await;
}

/// Issue #14: a connection lost while a waiter asks for its place (here: its own node's watch,
/// set again after a foreign `setData` on the node) is retried once the session reconnects, for
/// as long as the session lives: the waiter keeps its node and gets the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_waiting_is_retried_on_the_same_session() {
    let server = Server::zookeeper();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let root = unique("z");
    let holder = connect(&url(&server, &format!("/{root}"), "")).await;
    let held = holder.acquire("blip").await.unwrap();
    let through = connect(&format!("zk://127.0.0.1:{}/{root}?ttl={}ms", proxy.port(), TTL.as_millis())).await;
    let waiter = tokio::spawn(async move { through.acquire_timeout("blip", Duration::from_secs(20)).await });
    let raw = raw(server.port, None).await;
    let directory = format!("/{root}/blip");
    let line = children_until(&raw, &directory, |n| n.len() == 2).await;
    let (ahead, mine) = (format!("{directory}/{}", line[0]), line[1].clone());
    poll_until("the waiter watches its own node and the one ahead", Duration::from_secs(10), || {
        let waiter = watchers(&server, &format!("{directory}/{mine}"));
        waiter.first().is_some_and(|session| watchers(&server, &ahead).contains(session))
    })
    .await;
    let before = proxy.sent_so_far();
    proxy.hold(Direction::ToServer);
    raw.set_data(&format!("{directory}/{mine}"), b"poke", None).await.unwrap();
    proxy.sent_after(before, mine.as_bytes()).await; // the waiter asked about its node again: held
    proxy.cut();
    proxy.release();
    held.release().await.unwrap();
    let guard = waiter.await.unwrap().expect("the waiter survived the cut");
    assert!(guard.is_held());
    assert_eq!(children_until(&raw, &directory, |n| n.len() == 1).await, [mine], "with the node it had");
}

/// Issue #14: with `acl=creator` every node the handle creates belongs to its `digest`
/// identity: a client without the credentials can neither delete the holder's node nor read the
/// lock. By default (`acl=open`) nodes stay open to anyone, as with Curator and kazoo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_creator_keeps_clients_without_the_credentials_off_the_nodes() {
    let server = Server::zookeeper();
    let base = |root: &str| format!("zk://locker:secret@127.0.0.1:{}/{root}?ttl={}ms", server.port, TTL.as_millis());
    let (private, public) = (unique("z"), unique("z"));
    let locks = connect(&format!("{}&acl=creator", base(&private))).await;
    let guard = locks.acquire("mine").await.unwrap();
    let owner = raw(server.port, Some("locker:secret")).await;
    let directory = format!("/{private}/mine");
    let node = format!("{directory}/{}", children_until(&owner, &directory, |n| n.len() == 1).await[0]);
    let stranger = raw(server.port, None).await;
    assert_eq!(stranger.delete(&node, None).await, Err(zk::Error::NoAuth));
    assert_eq!(stranger.set_data(&node, b"x", None).await.map(drop), Err(zk::Error::NoAuth));
    assert_eq!(stranger.list_children(&directory).await.map(drop), Err(zk::Error::NoAuth));
    assert!(guard.is_held());
    guard.release().await.expect("the owner releases");

    let open = connect(&base(&public)).await;
    let guard = open.acquire("anyones").await.unwrap();
    let directory = format!("/{public}/anyones");
    let node = format!("{directory}/{}", children_until(&stranger, &directory, |n| n.len() == 1).await[0]);
    stranger.delete(&node, None).await.expect("open nodes are anyone's");
    tokio::time::timeout(TTL, guard.lost()).await.expect("the deletion fires the loss signal");

    for (query, expected) in [("acl=creator", "user:password"), ("acl=world", "takes `creator` or `open`")] {
        let err = lockkit::connect(&format!("zk://127.0.0.1:{}?{query}", server.port)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }) && err.to_string().contains(expected), "{err}");
    }
}

/// Issue #18: an uncontended acquire no longer waits for its own node's watch — the guard's
/// watcher sets it just after the grant — yet a held node is watched, and a release, however
/// soon after the grant, leaves no watch behind on the server (a watch that reached it after
/// the delete would wait there until the session ends, for a node never created again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_node_is_watched_and_released_nodes_leave_no_watch() {
    let server = Server::zookeeper();
    let root = unique("z");
    let locks = connect(&url(&server, &format!("/{root}"), "")).await;
    // Watched lock nodes (paths below a lock's directory; the raw client here watches directories).
    let watched_nodes = || {
        let listing = servers::four_letter_word(server.port, "wchp").unwrap_or_default();
        let nodes = [format!("/{root}/watched/"), format!("/{root}/dropped/")];
        listing
            .lines()
            .filter(|l| nodes.iter().any(|n| l.starts_with(n.as_str())))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let guard = locks.acquire("watched").await.unwrap();
    let raw = raw(server.port, None).await;
    let directory = format!("/{root}/watched");
    let holder = children_until(&raw, &directory, |n| n.len() == 1).await.remove(0);
    let node = format!("{directory}/{holder}");
    poll_until("the held node is watched", TTL, || !watchers(&server, &node).is_empty()).await;
    guard.release().await.unwrap();
    for _ in 0..50 {
        locks.acquire("watched").await.unwrap().release().await.unwrap();
        drop(locks.acquire("dropped").await.unwrap());
    }
    let last = locks.acquire("watched").await.unwrap();
    last.release().await.unwrap();
    // The dropped guards release in the background: their nodes go, and their watches with them.
    children_until(&raw, &format!("/{root}/dropped"), |n| n.is_empty()).await;
    assert_eq!(watched_nodes(), Vec::<String>::new(), "watches left on released nodes");
}
