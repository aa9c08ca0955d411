//! A backend under test: where it is (a URL), how to connect to it, and a namespace of its own
//! for each test.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lockkit::DistributedLock;

use crate::proxy::ProxySet;
use crate::servers;
use crate::support::{TTL, connect_with, unique};

/// A boxed, sendable future, as a [`Connector`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Connects to a lock URL: [`lockkit::connect`] for the built-in targets, a driver's own
/// `connect` for a third-party driver ([`Target::custom`]). It is called with the base URL
/// plus the suite's options (`ttl=…`, `namespace=…`, sometimes `timeout=…`) in its query —
/// in this process and in the helper processes the cross-process properties start.
pub type Connector = fn(&str) -> BoxFuture<'static, lockkit::Result<Arc<dyn DistributedLock>>>;

/// The connector of every built-in target.
fn lockkit_connect(url: &str) -> BoxFuture<'static, lockkit::Result<Arc<dyn DistributedLock>>> {
    let url = url.to_owned();
    Box::pin(async move { lockkit::connect(&url).await })
}

/// One backend under test, with a namespace of its own for each test.
pub struct Target {
    /// The URL without the suite's options, e.g. `memory://conformance` or `file:///tmp/x`;
    /// found on first use (a shared server starts then), so that a helper process, which only
    /// needs the connector, starts none.
    base: OnceLock<String>,
    /// Finds the base URL (starting a shared server, say), when not known at once.
    locate: fn() -> String,
    /// A namespace unique to this test.
    namespace: String,
    /// Keeps a temporary directory alive for the test.
    _dir: Option<tempfile::TempDir>,
    /// The label of a custom target (built-in ones are named after their URL's scheme).
    custom: Option<String>,
    connector: Connector,
    /// The test module the `conformance!` line made, where its helper processes are.
    module: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("label", &self.label()).field("namespace", &self.namespace).finish()
    }
}

impl Target {
    /// A target whose base URL `locate` finds on first use, connected by [`lockkit::connect`].
    fn located(locate: fn() -> String) -> Target {
        Target {
            base: OnceLock::new(),
            locate,
            namespace: unique("t"),
            _dir: None,
            custom: None,
            connector: lockkit_connect,
            module: None,
        }
    }

    /// A target at a base URL known at once.
    fn at(base: String) -> Target {
        let target = Target::located(|| unreachable!("the base URL is known"));
        target.base.set(base).expect("a new target");
        target
    }

    /// A driver that [`lockkit::connect`] does not know (a third-party one): `connector` connects
    /// to `base_url` (without query) plus the suite's options. `label` names it in report lines.
    /// It has no fault proxy ([`proxied`](Self::proxied) is `None`), so its `conformance!` line
    /// declares no `network`.
    pub fn custom(label: &str, base_url: &str, connector: Connector) -> Target {
        Target { custom: Some(label.to_owned()), connector, ..Target::at(base_url.to_owned()) }
    }

    /// The in-process `memory://` backend.
    pub fn memory() -> Target {
        Target::at("memory://conformance".into())
    }

    /// The etcd server the test binary shares ([`servers::shared_etcd_url`]).
    pub fn etcd() -> Target {
        Target::located(servers::shared_etcd_url)
    }

    /// The ZooKeeper server the test binary shares ([`servers::shared_zk_url`]).
    pub fn zookeeper() -> Target {
        Target::located(servers::shared_zk_url)
    }

    /// Consul (the double unless `LOCKKIT_TEST_CONSUL_ADDR` names a real one), with a lock-delay
    /// as long as each URL's TTL (each URL gets `lock_delay` = its `ttl`).
    pub fn consul() -> Target {
        Target::located(crate::consul_double::shared_url)
    }

    /// The Redis server the test binary shares ([`servers::shared_redis_url`]).
    pub fn redis() -> Target {
        Target::located(servers::shared_redis_url)
    }

    /// Redis with `fair=true`: waiters queue inside the scripts.
    pub fn redis_fair() -> Target {
        Target::located(|| format!("{}?fair=true", servers::shared_redis_url()))
    }

    /// A Redis Cluster of 3 masters and 3 replicas.
    pub fn redis_cluster() -> Target {
        Target::located(servers::shared_redis_cluster_url)
    }

    /// The Redis Cluster with `fair=true`.
    pub fn redis_cluster_fair() -> Target {
        Target::located(|| format!("{}?fair=true", servers::shared_redis_cluster_url()))
    }

    /// Redlock over five Redis servers the test binary shares ([`servers::shared_redlock_url`]).
    pub fn redlock() -> Target {
        Target::located(servers::shared_redlock_url)
    }

    /// `file://` in a temporary directory of its own.
    pub fn file() -> Target {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let base = format!("file://{}", dir.path().display());
        Target { _dir: Some(dir), ..Target::at(base) }
    }

    /// The base URL (without the suite's options), starting the shared server it names if
    /// none runs yet.
    pub fn base(&self) -> &str {
        self.base.get_or_init(self.locate)
    }

    /// How this target connects to a URL.
    pub fn connector(&self) -> Connector {
        self.connector
    }

    /// This target as the test module `module` (a `module_path!()` of a `conformance!` line's
    /// module) runs it: its helper processes are that module's. Finds the base URL now.
    #[doc(hidden)]
    pub fn for_suite(mut self, module: &str) -> Target {
        // Test names leave out the crate name that `module_path!()` starts with.
        let module = module.split_once("::").map_or("", |(_, m)| m);
        self.module = Some(module.to_owned());
        self.base();
        self
    }

    /// The test name of the helper process `helper` (`holder`, `contender`) of this target's
    /// `conformance!` line.
    pub(crate) fn helper(&self, helper: &str) -> String {
        match self.module.as_deref() {
            Some("") | None => format!("child::{helper}"),
            Some(module) => format!("{module}::child::{helper}"),
        }
    }

    /// The URL of this test's namespace (plus `suffix`) with the suite's TTL.
    pub fn url_in(&self, suffix: &str, ttl: Duration) -> String {
        let ttl = ttl_option(self.base(), ttl);
        format!("{}{}{ttl}&namespace={}{suffix}", self.base(), self.query_start(), self.namespace)
    }

    /// The URL of the backend's root namespace (shared by all tests: use unique names there).
    pub fn root_url(&self) -> String {
        format!("{}{}{}", self.base(), self.query_start(), ttl_option(self.base(), TTL))
    }

    /// The URL of this test's namespace with the suite's TTL.
    pub fn url(&self) -> String {
        self.url_in("", TTL)
    }

    /// `?`, or `&` when the base URL has a query already (a user's server URL).
    fn query_start(&self) -> char {
        if self.base().contains('?') { '&' } else { '?' }
    }

    /// The URL of this test's namespace with `ttl` and the request `timeout`.
    pub fn url_with(&self, ttl: Duration, timeout: Duration) -> String {
        compose(self.base(), &self.namespace, ttl, timeout)
    }

    /// Which target this is, for report lines: `etcd`, `redis_fair`, `redlock`, …
    pub fn label(&self) -> String {
        if let Some(label) = &self.custom {
            return label.clone();
        }
        let scheme = self.base().split("://").next().unwrap_or_default();
        let fair = if self.base().contains("fair=true") { "_fair" } else { "" };
        format!("{}{fair}", if scheme == "zk" { "zookeeper" } else { scheme })
    }

    /// For a network backend, a URL of this test's namespace (like [`url_with`](Self::url_with))
    /// that reaches the same server — every server, for Redlock — through a fault proxy of its
    /// own, and the proxies; `None` for `memory://` and `file://`, which have no network, for
    /// Redis Cluster and for a [`custom`](Self::custom) target.
    pub async fn proxied(&self, ttl: Duration, timeout: Duration) -> Option<(String, ProxySet)> {
        if self.custom.is_some() {
            return None;
        }
        let (scheme, rest) = self.base().split_once("://")?;
        let default_port = match scheme {
            "etcd" | "etcds" => 2379,
            "zk" | "zookeeper" => 2181,
            "consul" | "consuls" => 8500,
            "redis" | "rediss" | "redlock" | "redlocks" => 6379,
            // Not through a proxy: the cluster client learns every node's real address from
            // CLUSTER SLOTS and MOVED replies and connects there, past any proxy in front of
            // the seeds. Its `conformance!` lines declare no `network` (the system test still
            // pauses its contender processes).
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
        self.connect_to(&self.url()).await
    }

    /// A new connection to `url` (one of this target's URLs) through the target's connector.
    pub async fn connect_to(&self, url: &str) -> Arc<dyn DistributedLock> {
        connect_with(self.connector, url).await
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
