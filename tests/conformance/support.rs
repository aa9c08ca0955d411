//! What the suite needs besides the API: backend targets and a holder in another process.

#[path = "servers.rs"]
pub mod servers;

#[path = "proxy.rs"]
pub mod proxy;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use lockkit::{DistributedLock, FencingToken};
use proxy::ProxySet;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The TTL the suite uses: short, so expiry tests are fast.
pub const TTL: Duration = Duration::from_secs(1);

/// One backend under test, with a namespace of its own for each test.
pub struct Target {
    /// The URL without query, e.g. `memory://conformance` or `file:///tmp/x`.
    base: String,
    /// A namespace unique to this test.
    namespace: String,
    /// Keeps a temporary directory alive for the test.
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    pub fn memory() -> Target {
        Target { base: "memory://conformance".into(), namespace: unique("t"), _dir: None }
    }

    pub fn etcd() -> Target {
        Target { base: servers::shared_etcd_url(), namespace: unique("t"), _dir: None }
    }

    pub fn zookeeper() -> Target {
        Target { base: servers::shared_zk_url(), namespace: unique("t"), _dir: None }
    }

    /// Consul (the double unless `LOCKKIT_TEST_CONSUL_ADDR` names a real one), with a lock-delay
    /// as long as each URL's TTL (see [`ttl_option`]).
    #[cfg(feature = "consul")]
    pub fn consul() -> Target {
        Target { base: servers::consul_double::shared_url(), namespace: unique("t"), _dir: None }
    }

    pub fn redis() -> Target {
        Target { base: servers::shared_redis_url(), namespace: unique("t"), _dir: None }
    }

    /// Redis with `fair=true`: waiters queue inside the scripts.
    pub fn redis_fair() -> Target {
        Target { base: format!("{}?fair=true", servers::shared_redis_url()), namespace: unique("t"), _dir: None }
    }

    /// A Redis Cluster of 3 masters and 3 replicas.
    pub fn redis_cluster() -> Target {
        Target { base: servers::shared_redis_cluster_url(), namespace: unique("t"), _dir: None }
    }

    /// The Redis Cluster with `fair=true`.
    pub fn redis_cluster_fair() -> Target {
        let base = format!("{}?fair=true", servers::shared_redis_cluster_url());
        Target { base, namespace: unique("t"), _dir: None }
    }

    pub fn redlock() -> Target {
        Target { base: servers::shared_redlock_url(), namespace: unique("t"), _dir: None }
    }

    pub fn file() -> Target {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Target { base: format!("file://{}", dir.path().display()), namespace: unique("t"), _dir: Some(dir) }
    }

    /// The URL of this test's namespace (plus `suffix`) with the suite's TTL.
    pub fn url_in(&self, suffix: &str, ttl: Duration) -> String {
        let ttl = ttl_option(&self.base, ttl);
        format!("{}{}{ttl}&namespace={}{suffix}", self.base, self.query_start(), self.namespace)
    }

    /// The URL of the backend's root namespace (shared by all tests: use unique names there).
    pub fn root_url(&self) -> String {
        format!("{}{}{}", self.base, self.query_start(), ttl_option(&self.base, TTL))
    }

    pub fn url(&self) -> String {
        self.url_in("", TTL)
    }

    /// `?`, or `&` when the base URL has a query already (a user's server URL).
    fn query_start(&self) -> char {
        if self.base.contains('?') { '&' } else { '?' }
    }

    /// The URL of this test's namespace with `ttl` and the request `timeout`.
    pub fn url_with(&self, ttl: Duration, timeout: Duration) -> String {
        compose(&self.base, &self.namespace, ttl, timeout)
    }

    /// Which target this is, for report lines: `etcd`, `redis_fair`, `redlock`, …
    pub fn label(&self) -> String {
        let scheme = self.base.split("://").next().unwrap_or_default();
        let fair = if self.base.contains("fair=true") { "_fair" } else { "" };
        format!("{}{fair}", if scheme == "zk" { "zookeeper" } else { scheme })
    }

    /// For a network backend, a URL of this test's namespace (like [`url_with`](Self::url_with))
    /// that reaches the same server — every server, for Redlock — through a fault proxy of its
    /// own, and the proxies; `None` for `memory://` and `file://`, which have no network.
    pub async fn proxied(&self, ttl: Duration, timeout: Duration) -> Option<(String, ProxySet)> {
        let (scheme, rest) = self.base.split_once("://")?;
        let default_port = match scheme {
            "etcd" | "etcds" => 2379,
            "zk" | "zookeeper" => 2181,
            "consul" | "consuls" => 8500,
            "redis" | "rediss" | "redlock" | "redlocks" => 6379,
            // Not through a proxy: the cluster client learns every node's real address from
            // CLUSTER SLOTS and MOVED replies and connects there, past any proxy in front of
            // the seeds. The fault properties skip the cluster (the system test still pauses
            // its contender processes).
            "redis-cluster" | "rediss-cluster" => return None,
            _ => return None,
        };
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
            None => (String::new(), authority),
        };
        let upstreams: Vec<std::net::SocketAddr> = hosts.split(',').map(|h| resolve(h, default_port)).collect();
        let proxies = ProxySet::start(&upstreams).await;
        let through: Vec<String> = proxies.addrs().iter().map(|a| a.to_string()).collect();
        let base = format!("{scheme}://{credentials}{}{tail}", through.join(","));
        Some((compose(&base, &self.namespace, ttl, timeout), proxies))
    }

    /// A new, independent connection.
    pub async fn connect(&self) -> Arc<dyn DistributedLock> {
        connect(&self.url()).await
    }
}

/// `base` with the options `ttl`, `timeout` and `namespace` added to its query.
fn compose(base: &str, namespace: &str, ttl: Duration, timeout: Duration) -> String {
    let start = if base.contains('?') { '&' } else { '?' };
    format!("{base}{start}{}&timeout={}ms&namespace={namespace}", ttl_option(base, ttl), timeout.as_millis())
}

/// `ttl=…`, and for Consul a lock-delay as long: a guard counts as held for min(TTL, lock-delay)
/// after a renew, so the suite's timings, made for the TTL, hold on Consul too — and a vanished
/// holder's lock is free within 2 × TTL (Consul's grace) plus the lock-delay.
fn ttl_option(base: &str, ttl: Duration) -> String {
    let ms = ttl.as_millis();
    if base.starts_with("consul") {
        format!("ttl={ms}ms&lock_delay={}ms", ms.min(60_000))
    } else {
        format!("ttl={ms}ms")
    }
}

/// `host[:port]` of a server URL as a socket address (the first it resolves to).
fn resolve(host: &str, default_port: u16) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let with_port =
        if host.contains(':') && !host.ends_with(']') { host.to_owned() } else { format!("{host}:{default_port}") };
    let mut addrs = with_port.to_socket_addrs().unwrap_or_else(|e| panic!("resolve {with_port}: {e}"));
    addrs.next().unwrap_or_else(|| panic!("{with_port} resolves to no address"))
}

pub async fn connect(url: &str) -> Arc<dyn DistributedLock> {
    lockkit::connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Waits until `status` counts `waiters` in line for `name` (the server's view of arrival).
pub async fn in_line(locks: &dyn DistributedLock, name: &str, waiters: usize) {
    let started = std::time::Instant::now();
    loop {
        let waiting = locks.status(name).await.unwrap().waiting;
        if waiting == Some(waiters) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{waiters} never in line for {name}: {waiting:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:x}", lockkit_core::driver::random_u64())
}

/// A lock holder in another process: this test binary, run again as the `child::holder` helper.
pub struct HolderProcess {
    pub child: Child,
    pub token: FencingToken,
}

/// What the helper process does once it holds the lock.
#[derive(Clone, Copy)]
pub enum AfterAcquire {
    /// Release and exit.
    Release,
    /// Hold until killed.
    Hold,
}

/// Starts a process that acquires `name` at `url` and reports its token.
pub async fn holder_process(url: &str, name: &str, after: AfterAcquire) -> HolderProcess {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "child::holder", "--ignored", "--nocapture", "--test-threads=1", "-q"])
        .env("LOCKKIT_CHILD_URL", url)
        .env("LOCKKIT_CHILD_NAME", name)
        .env("LOCKKIT_CHILD_HOLD", matches!(after, AfterAcquire::Hold).to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the holder process");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let read_token = async {
        while let Some(line) = lines.next_line().await.expect("read the holder's output") {
            if let Some(token) = line.strip_prefix("LOCKKIT-TOKEN ") {
                return FencingToken::new(token.trim().parse().expect("a token"));
            }
        }
        panic!("the holder process exited without acquiring");
    };
    let token = tokio::time::timeout(Duration::from_secs(30), read_token).await.expect("the holder process acquired");
    // Keep reading, so that the child never writes into a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    HolderProcess { child, token }
}

/// The body of the `child::holder` helper: acquire, print the token, then release or hold.
pub fn run_holder_child() {
    let (Ok(url), Ok(name)) = (std::env::var("LOCKKIT_CHILD_URL"), std::env::var("LOCKKIT_CHILD_NAME")) else {
        return;
    };
    let hold = std::env::var("LOCKKIT_CHILD_HOLD").as_deref() == Ok("true");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let locks = connect(&url).await;
        let guard = locks.acquire(&name).await.expect("the child acquires");
        println!("LOCKKIT-TOKEN {}", guard.fencing_token());
        if hold {
            std::future::pending::<()>().await;
        }
        guard.release().await.expect("the child releases");
    });
}

/// Detects two holders inside a critical section at once, and lost updates.
#[derive(Default)]
pub struct CriticalSection {
    inside: std::sync::atomic::AtomicBool,
    count: std::sync::atomic::AtomicU64,
    tokens: std::sync::Mutex<Vec<FencingToken>>,
}

impl CriticalSection {
    /// Enters, does a deliberately non-atomic increment across an await, and leaves.
    pub async fn enter(&self, token: FencingToken) {
        use std::sync::atomic::Ordering::SeqCst;
        assert!(!self.inside.swap(true, SeqCst), "two holders inside the critical section at once");
        let seen = self.count.load(SeqCst);
        tokio::task::yield_now().await;
        self.count.store(seen + 1, SeqCst);
        self.tokens.lock().unwrap().push(token);
        self.inside.store(false, SeqCst);
    }

    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn tokens(&self) -> Vec<FencingToken> {
        self.tokens.lock().unwrap().clone()
    }
}

/// `contenders` connections to `url` take `name` in a loop for `run`, each grant entering one
/// shared critical section, while `disturb` runs (a server killed, …). Asserts that nobody was
/// granted twice at once (a panic in the section), that some sections ran and that tokens grew
/// in grant order; returns the tokens.
pub async fn contend_while(
    url: &str,
    name: &str,
    contenders: usize,
    run: Duration,
    disturb: impl Future<Output = ()>,
) -> Vec<FencingToken> {
    let section = Arc::new(CriticalSection::default());
    let deadline = std::time::Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..contenders {
        let (locks, section, name) = (connect(url).await, section.clone(), name.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut entered = 0;
            while std::time::Instant::now() < deadline {
                let Ok(guard) = locks.acquire_timeout(&name, Duration::from_secs(5)).await else { continue };
                if guard.run_while_held(section.enter(guard.fencing_token())).await.is_ok() {
                    entered += 1;
                }
                let _ = guard.release().await;
            }
            entered
        }));
    }
    disturb.await;
    let mut entered = 0;
    for task in tasks {
        entered += task.await.expect("no double grant (a panic in the critical section)");
    }
    assert!(entered > 0);
    let tokens = section.tokens();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens in grant order: {tokens:?}");
    tokens
}
