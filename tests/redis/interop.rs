//! Interop with redis-py's `Lock`: the same name is the same key, and each excludes the other.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::TTL;
use lockkit_testkit::servers::Server;
use lockkit_testkit::support::connect;
use lockkit_testkit::support::unique;

/// A redis-py process holding `redis.Redis(port).lock(key)`: answers each command line (`try`,
/// `release`) with one result line.
struct RedisPy {
    _process: Child,
    to_py: ChildStdin,
    from_py: Lines<BufReader<ChildStdout>>,
}

impl RedisPy {
    fn start(port: u16, key: &str) -> RedisPy {
        let peer = r#"
import sys, redis
r = redis.Redis(port=int(sys.argv[1]))
lock = r.lock(sys.argv[2], timeout=30)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "try":
        print(lock.acquire(blocking=False), flush=True)
    elif cmd == "release":
        lock.release()
        print("released", flush=True)
"#;
        let mut process = tokio::process::Command::new("python3")
            .args(["-c", peer, &port.to_string(), key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with redis-py (scripts/install-deps installs it)");
        let to_py = process.stdin.take().expect("a stdin pipe");
        let from_py = BufReader::new(process.stdout.take().expect("a stdout pipe")).lines();
        RedisPy { _process: process, to_py, from_py }
    }

    async fn ask(&mut self, command: &str) -> String {
        self.to_py.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(10), self.from_py.next_line()).await;
        line.expect("redis-py answers within 10 s").unwrap().expect("an answer")
    }
}

/// A redis-py `Lock` and a lockkit lock on the same key exclude each other, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_locks_and_lockkit_exclude_each_other() {
    let server = Server::redis();
    let namespace = unique("r");
    let locks =
        connect(&format!("redis://127.0.0.1:{}?ttl={}ms&namespace={namespace}", server.port, TTL.as_millis())).await;
    let mut python = RedisPy::start(server.port, &format!("{namespace}/shared"));

    let guard = locks.acquire("shared").await.unwrap();
    assert_eq!(python.ask("try").await, "False", "redis-py got a lock lockkit holds");
    guard.release().await.unwrap();
    assert_eq!(python.ask("try").await, "True");
    assert!(locks.try_acquire("shared").await.unwrap().is_none(), "lockkit got a lock redis-py holds");
    let waiter = tokio::spawn(async move {
        locks.acquire_timeout("shared", Duration::from_secs(10)).await.map(|g| g.fencing_token())
    });
    assert_eq!(python.ask("release").await, "released");
    waiter.await.unwrap().expect("granted once redis-py released");
}

/// A name as redis-py users write it, `jobs:nightly`, is the key `jobs:nightly` for lockkit
/// too: redis-py's `Lock(r, "jobs:nightly")` and lockkit's lock `jobs:nightly` exclude each
/// other, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_a_colon_is_the_same_key_for_redis_py_and_lockkit() {
    let server = Server::redis();
    let locks = connect(&format!("redis://127.0.0.1:{}?ttl={}ms", server.port, TTL.as_millis())).await;
    let mut python = RedisPy::start(server.port, "jobs:nightly");

    assert_eq!(python.ask("try").await, "True");
    assert!(locks.try_acquire("jobs:nightly").await.unwrap().is_none(), "lockkit got jobs:nightly redis-py holds");
    assert_eq!(python.ask("release").await, "released");

    let guard = locks.try_acquire("jobs:nightly").await.unwrap().expect("free once redis-py released");
    assert_eq!(python.ask("try").await, "False", "redis-py got jobs:nightly lockkit holds");
    guard.release().await.unwrap();
    assert_eq!(python.ask("try").await, "True", "free again once lockkit released");
}
