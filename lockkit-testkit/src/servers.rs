//! Real servers for the tests, installed by `scripts/install-deps` from Debian packages and
//! started here on free loopback ports with temporary directories.
//!
//! Each server runs under a small shell guard that kills it when this test process's end of a
//! pipe closes, so no server outlives the tests, however the test process ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A server process and its temporary directory; stopped when dropped.
#[derive(Debug)]
pub struct Server {
    /// The loopback port clients connect to.
    pub port: u16,
    guard: Child,
    /// While this end of the pipe is open, the guard keeps the server running.
    lifeline: Option<ChildStdin>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `program args…` (with `{port}`, `{peer}` and `{dir}` replaced) and waits until
    /// `ready`.
    fn start(port: u16, program: &str, args: &[&str], ready: impl Fn(u16) -> bool) -> Server {
        let server = Server::spawn(port, free_port(), program, args);
        server.wait_until(program, ready);
        server
    }

    /// Starts the server without waiting for it.
    fn spawn(port: u16, peer: u16, program: &str, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{port}", &port.to_string())
                    .replace("{peer}", &peer.to_string())
                    .replace("{dir}", &dir.path().display().to_string())
            })
            .collect();
        let mut guard = Command::new("sh")
            .arg("-c")
            // A server that exited by itself (a port taken meanwhile, a crash) is reported with
            // its log when the guard ends, so a test failing against it says why.
            .arg(
                r#""$@" >"$LOCKKIT_SERVER_LOG" 2>&1 & server=$!; read _ignored
kill -9 $server 2>/dev/null || { echo "lockkit test server $1 (port $LOCKKIT_SERVER_PORT) had exited by itself; the end of its log:"; tail -n 20 "$LOCKKIT_SERVER_LOG"; } >&2"#,
            )
            .arg("server-guard")
            .arg(program)
            .args(&args)
            .env("LOCKKIT_SERVER_LOG", dir.path().join("server.log"))
            .env("LOCKKIT_SERVER_PORT", port.to_string())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}; run scripts/install-deps"));
        let lifeline = guard.stdin.take();
        Server { port, guard, lifeline, _dir: dir }
    }

    fn wait_until(&self, program: &str, ready: impl Fn(u16) -> bool) {
        let started = Instant::now();
        while !ready(self.port) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{program} did not start on port {}; is it installed (scripts/install-deps)?",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal to a server that wrote its pid to `pid` in its directory (ZooKeeper).
    pub fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self._dir.path().join("pid")).expect("the server wrote its pid");
        let status = Command::new("kill").args([&format!("-{signal}"), pid.trim()]).status().expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Stops the server at once (SIGKILL), like a crash.
    pub fn kill(self) {
        drop(self);
    }

    /// A Redis server on a free port, no persistence.
    pub fn redis() -> Server {
        Server::redis_with(free_port(), &[])
    }

    /// A Redis server on `port` with extra arguments (e.g. `--requirepass`), no persistence.
    pub fn redis_with(port: u16, extra: &[&str]) -> Server {
        let args = [REDIS_ARGS, extra].concat();
        let ready = |port| {
            extra.is_empty() && redis_ready(port)
                || !extra.is_empty() && TcpStream::connect(("127.0.0.1", port)).is_ok()
        };
        Server::start(port, "redis-server", &args, ready)
    }

    /// A Redis server whose wall clock (`TIME`, so its fencing counter's clock) runs `ahead` of
    /// this machine's, as a server with a wrong clock does: a small `LD_PRELOAD` shim, built
    /// here with `cc`, shifts `gettimeofday` and `CLOCK_REALTIME`. Expiries stay right (every
    /// reading is shifted alike).
    pub fn redis_clock_ahead(ahead: Duration) -> Server {
        const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
static long offset(void) { const char *s = getenv("CLOCK_AHEAD_SECS"); return s ? atol(s) : 0; }
int gettimeofday(struct timeval *tv, void *tz) {
  static int (*real)(struct timeval *, void *);
  if (!real) real = dlsym(RTLD_NEXT, "gettimeofday");
  int r = real(tv, tz);
  if (r == 0 && tv) tv->tv_sec += offset();
  return r;
}
int clock_gettime(clockid_t c, struct timespec *ts) {
  static int (*real)(clockid_t, struct timespec *);
  if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
  int r = real(c, ts);
  if (r == 0 && ts && (c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE)) ts->tv_sec += offset();
  return r;
}
"#;
        let dir = std::env::temp_dir().join(format!("lockkit-clock-ahead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the clock shim");
        let (source, shim) = (dir.join("ahead.c"), dir.join("ahead.so"));
        std::fs::write(&source, SHIM).expect("the shim's source is written");
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&shim)
            .arg(&source)
            .arg("-ldl")
            .status()
            .expect("a C compiler (cc) builds the clock shim");
        assert!(built.success(), "building the clock shim failed");
        let offset = format!("CLOCK_AHEAD_SECS={}", ahead.as_secs());
        let preload = format!("LD_PRELOAD={}", shim.display());
        let args = [&[offset.as_str(), preload.as_str(), "redis-server"], REDIS_ARGS].concat();
        Server::start(free_port(), "env", &args, redis_ready)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.guard.wait();
    }
}

impl Server {
    /// A single-node etcd cluster.
    pub fn etcd() -> Server {
        Server::etcd_cluster(1).pop().expect("one member")
    }

    /// An etcd cluster of `size` members on loopback, ready when it has a leader.
    pub fn etcd_cluster(size: usize) -> Vec<Server> {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let cluster: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
        let cluster = format!("--initial-cluster={}", cluster.join(","));
        let token = format!("--initial-cluster-token=lockkit-{}", free_port());
        let members: Vec<Server> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, peer))| {
                let name = format!("--name=m{i}");
                let args = [
                    name.as_str(),
                    "--data-dir={dir}/data",
                    "--listen-client-urls=http://127.0.0.1:{port}",
                    "--advertise-client-urls=http://127.0.0.1:{port}",
                    "--listen-peer-urls=http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    cluster.as_str(),
                    token.as_str(),
                    "--log-level=error",
                ];
                Server::spawn(*port, *peer, "etcd", &args)
            })
            .collect();
        for member in &members {
            member.wait_until("etcd", |port| {
                http_get(port, "/health").is_some_and(|body| body.contains(r#""health":"true""#))
            });
        }
        members
    }
}

impl Server {
    /// A standalone ZooKeeper (tickTime 100 ms, so sessions can be as short as 200 ms).
    pub fn zookeeper() -> Server {
        Server::zookeeper_ensemble(1).pop().expect("one server")
    }

    /// A ZooKeeper ensemble of `size` servers on loopback, each ready when it answers `ruok`
    /// (a standalone server for size 1). Heap capped at 256 MiB each.
    pub fn zookeeper_ensemble(size: usize) -> Vec<Server> {
        let ports: Vec<(u16, u16, u16)> = (0..size).map(|_| (free_port(), free_port(), free_port())).collect();
        let peers: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, quorum, election))| format!("server.{}=127.0.0.1:{quorum}:{election}\\n", i + 1))
            .collect();
        let servers: Vec<Server> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, quorum, _))| {
                let peers = if size > 1 { peers.as_str() } else { "" };
                let config = [
                    "tickTime=100",
                    "initLimit=50",
                    "syncLimit=20",
                    "dataDir={dir}",
                    "clientPort={port}",
                    "clientPortAddress=127.0.0.1",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=*",
                    "maxSessionTimeout=60000",
                    // Benchmarks connect 64 handles from one address (the default allows 60).
                    "maxClientCnxns=0",
                ]
                .join("\\n");
                let script = format!(
                    "printf '{config}\\n{peers}' > {{dir}}/zoo.cfg && echo {} > {{dir}}/myid && echo $$ > {{dir}}/pid && exec java -Xmx256m \
                     -cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar \
                     org.apache.zookeeper.server.quorum.QuorumPeerMain {{dir}}/zoo.cfg",
                    i + 1
                );
                Server::spawn(*port, *quorum, "sh", &["-c", &script])
            })
            .collect();
        for server in &servers {
            server.wait_until("zookeeper (java)", |port| four_letter_word(port, "ruok").as_deref() == Some("imok"));
        }
        servers
    }
}

/// A ZooKeeper four-letter-word command's answer (`ruok`, `srvr`, …).
pub fn four_letter_word(port: u16, word: &str) -> Option<String> {
    ask(port, word.as_bytes())
}

/// A metric of the etcd server on `port`, from its `/metrics` page (`None`: no such metric, or no
/// answer). `name` is the whole name before the value, labels included.
pub fn etcd_metric(port: u16, name: &str) -> Option<String> {
    let page = ask(port, b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    page.lines().find_map(|line| Some(line.strip_prefix(name)?.strip_prefix(' ')?.to_owned()))
}

/// Every test Redis server's arguments: loopback, the port and directory of its `Server`, no
/// persistence.
const REDIS_ARGS: &[&str] =
    &["--bind", "127.0.0.1", "--port", "{port}", "--save", "", "--appendonly", "no", "--dir", "{dir}"];

/// The ZooKeeper server the whole test binary shares: `LOCKKIT_TEST_ZK_URL`, or one started here.
pub fn shared_zk_url() -> String {
    static SERVER: OnceLock<String> = OnceLock::new();
    shared(&SERVER, "LOCKKIT_TEST_ZK_URL", || {
        format!("zk://127.0.0.1:{}", Box::leak(Box::new(Server::zookeeper())).port)
    })
}

/// The URL in `cell`: the environment variable `env` if set (a server of the user's), else the
/// URL `start` gives (a server started once for the whole test binary, which lives as long).
pub fn shared(cell: &'static OnceLock<String>, env: &str, start: impl FnOnce() -> String) -> String {
    cell.get_or_init(|| std::env::var(env).unwrap_or_else(|_| start())).clone()
}

/// What a server on loopback `port` answers to `request` until it closes the connection
/// (a ZooKeeper four-letter word, an HTTP/1.0 GET); `None` when it cannot be asked.
fn ask(port: u16, request: &[u8]) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(request).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// The arguments that make a Redis server speak TLS only (on `{port}`), with the certificates
/// [`make_certificates`] wrote to `certs`; clients need not present one.
pub fn redis_tls_args(certs: &std::path::Path) -> Vec<String> {
    let file = |name: &str| certs.join(name).display().to_string();
    let mut args: Vec<String> =
        ["--port", "0", "--tls-port", "{port}", "--tls-auth-clients", "no"].map(String::from).into();
    for (option, name) in
        [("--tls-cert-file", "server.crt"), ("--tls-key-file", "server.key"), ("--tls-ca-cert-file", "ca.crt")]
    {
        args.extend([option.to_owned(), file(name)]);
    }
    args
}

/// A throwaway CA and a server certificate for 127.0.0.1 (with openssl), in `dir`.
pub fn make_certificates(dir: &std::path::Path) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 1 -subj "/CN=lockkit test CA"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
printf "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" > ext.cnf
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile ext.cnf"#;
    let out = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
}

impl Server {
    /// A single-node etcd that serves clients over TLS only, with this certificate.
    pub fn etcd_tls(cert: &str, key: &str) -> Server {
        let (cert, key) = (format!("--cert-file={cert}"), format!("--key-file={key}"));
        let args = [
            "--name=tls",
            "--data-dir={dir}/data",
            "--listen-client-urls=https://127.0.0.1:{port}",
            "--advertise-client-urls=https://127.0.0.1:{port}",
            "--listen-peer-urls=http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            "--initial-cluster=tls=http://127.0.0.1:{peer}",
            cert.as_str(),
            key.as_str(),
            "--log-level=error",
        ];
        Server::start(free_port(), "etcd", &args, |port| TcpStream::connect(("127.0.0.1", port)).is_ok())
    }
}

/// A plain HTTP GET on loopback; the response, if any.
fn http_get(port: u16, path: &str) -> Option<String> {
    ask(port, format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
}

/// The etcd server the whole test binary shares: `LOCKKIT_TEST_ETCD_URL`, or one started here.
pub fn shared_etcd_url() -> String {
    static SERVER: OnceLock<String> = OnceLock::new();
    shared(&SERVER, "LOCKKIT_TEST_ETCD_URL", || {
        format!("etcd://127.0.0.1:{}", Box::leak(Box::new(Server::etcd())).port)
    })
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn redis_ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let mut reply = [0u8; 7];
    stream.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
        && stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// The Redis server the whole test binary shares: `LOCKKIT_TEST_REDIS_URL`, or one started here.
pub fn shared_redis_url() -> String {
    static SERVER: OnceLock<String> = OnceLock::new();
    shared(&SERVER, "LOCKKIT_TEST_REDIS_URL", || {
        format!("redis://127.0.0.1:{}", Box::leak(Box::new(Server::redis())).port)
    })
}

/// Five Redis servers the whole test binary shares, as a Redlock URL.
pub fn shared_redlock_url() -> String {
    static SERVERS: OnceLock<String> = OnceLock::new();
    SERVERS
        .get_or_init(|| {
            let hosts: Vec<String> =
                (0..5).map(|_| format!("127.0.0.1:{}", Box::leak(Box::new(Server::redis())).port)).collect();
            format!("redlock://{}", hosts.join(","))
        })
        .clone()
}

/// A Redis Cluster on loopback: 3 masters and 3 replicas (one each), no persistence.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes; `None` once stopped.
    pub nodes: Vec<Option<Server>>,
    /// What `redis-cli` needs to reach a node (TLS options), before the command.
    cli: Vec<String>,
    tls: bool,
}

/// Bound on a cluster's start (servers up, slots assigned, `cluster_state:ok` everywhere).
const CLUSTER_START: Duration = Duration::from_secs(30);

impl RedisCluster {
    /// Starts six nodes and joins them with `redis-cli --cluster create`; ready when every node
    /// reports `cluster_state:ok` and every replica is in sync with its master. The node
    /// timeout is 5 s, so that a loaded machine does not make the cluster fail over.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(&["--cluster-node-timeout", "5000"], Vec::new())
    }

    /// A cluster whose node timeout is 1 s: a master that stops is replaced in about 2 s.
    pub fn start_quick_failover() -> RedisCluster {
        RedisCluster::start_with(&["--cluster-node-timeout", "1000"], Vec::new())
    }

    /// A cluster that speaks TLS only — to clients, on its bus and for replication — with the
    /// certificates [`make_certificates`] wrote to `certs`; clients need not present one.
    pub fn start_tls(certs: &std::path::Path) -> RedisCluster {
        let ca = certs.join("ca.crt").display().to_string();
        let mut tls = redis_tls_args(certs);
        tls.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        RedisCluster::start_with(&tls, vec!["--tls".into(), "--cacert".into(), ca])
    }

    /// Starts the nodes with `extra` arguments; `cli`: what `redis-cli` needs to reach them.
    fn start_with(extra: &[&str], cli: Vec<String>) -> RedisCluster {
        let mut args = REDIS_ARGS.to_vec();
        args.extend_from_slice(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "{dir}/nodes.conf",
            "--cluster-node-timeout",
            "5000",
            // A replica takes over however long ago it last heard from its master.
            "--cluster-replica-validity-factor",
            "0",
            // Replicas sync at once, not after the default 5 s wait for more replicas.
            "--repl-diskless-sync-delay",
            "0",
        ]);
        args.extend_from_slice(extra);
        // The cluster bus gets a free port of its own (`{peer}`): the default, port + 10,000,
        // may be taken by another server or by a connection's ephemeral port.
        args.extend_from_slice(&["--cluster-port", "{peer}"]);
        let nodes: Vec<Server> =
            (0..6).map(|_| Server::spawn(free_port(), free_port(), "redis-server", &args)).collect();
        let cluster = RedisCluster { nodes: nodes.into_iter().map(Some).collect(), tls: !cli.is_empty(), cli };
        for node in cluster.nodes.iter().flatten() {
            node.wait_until("redis-server (cluster)", |port| cluster.cli(port, &["PING"]).as_deref() == Some("PONG\n"));
        }
        let addresses: Vec<String> = cluster.ports().map(|port| format!("127.0.0.1:{port}")).collect();
        let create = Command::new("redis-cli")
            .args(&cluster.cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs; is redis-tools installed (scripts/install-deps)?");
        assert!(
            create.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&create.stdout),
            String::from_utf8_lossy(&create.stderr)
        );
        cluster.wait_until_ok(CLUSTER_START);
        cluster
    }

    /// `redis-cli` on the node on `port`, with the cluster's TLS options.
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let cli: Vec<&str> = self.cli.iter().map(String::as_str).chain(args.iter().copied()).collect();
        redis_cli(port, &cli)
    }

    /// Waits until every running node reports `cluster_state:ok`, knows every other running
    /// node, and every replica's link to its master is up; panics with what is missing after
    /// `bound`.
    pub fn wait_until_ok(&self, bound: Duration) {
        let started = Instant::now();
        loop {
            let missing: Vec<String> = self
                .ports()
                .filter_map(|port| {
                    let info = self.cli(port, &["CLUSTER", "INFO"]).unwrap_or_default();
                    if !info.contains("cluster_state:ok") {
                        return Some(format!("{port}: not cluster_state:ok"));
                    }
                    // Gossip has told it of every running node (a test asking a master for its
                    // replica would otherwise find none).
                    let nodes = self.cli(port, &["CLUSTER", "NODES"]).unwrap_or_default();
                    let knows = |other: u16| {
                        nodes.lines().any(|line| {
                            line.split(' ').nth(1).is_some_and(|a| a.starts_with(&format!("127.0.0.1:{other}@")))
                                && !line.contains("handshake")
                        })
                    };
                    if let Some(unknown) = self.ports().find(|other| !knows(*other)) {
                        return Some(format!("{port}: does not know {unknown} yet"));
                    }
                    let replication = self.cli(port, &["INFO", "replication"]).unwrap_or_default();
                    let syncing = replication.contains("role:slave") && !replication.contains("master_link_status:up");
                    syncing.then(|| format!("{port}: replica not in sync"))
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(started.elapsed() < bound, "the Redis Cluster was not ready within {bound:?}: {missing:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ports of the running nodes.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().flatten().map(|n| n.port)
    }

    /// A `redis-cluster://` (`rediss-cluster://`) URL listing every running node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.ports().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("{}://{}", if self.tls { "rediss-cluster" } else { "redis-cluster" }, seeds.join(","))
    }

    /// The port of the master that serves `key`'s slot now, as the running nodes see it.
    pub fn master_of(&self, key: &str) -> u16 {
        RedisCluster::master_port(self.ports().next().expect("a running node"), key)
    }

    /// The port of the master that serves `key`'s slot now, as the node on port `any` (of a
    /// cluster without TLS) sees it.
    pub fn master_port(any: u16, key: &str) -> u16 {
        RedisCluster::serving(any, key).unwrap_or_else(|nodes| panic!("no master serves {key:?}: {nodes}"))
    }

    /// The port of the healthy master that serves `key`'s slot, as the node on port `any` (of a
    /// cluster without TLS) sees it; else what that node knows of the cluster (during a
    /// failover, say).
    pub fn serving(any: u16, key: &str) -> Result<u16, String> {
        let slot: u16 = redis_cli(any, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.trim().parse().ok())
            .expect("CLUSTER KEYSLOT answers");
        // Lines of `id address@bus flags master ping pong epoch link slot-range…`.
        let nodes = redis_cli(any, &["CLUSTER", "NODES"]).expect("CLUSTER NODES answers");
        let in_range = |range: &str| match range.split_once('-') {
            Some((from, to)) => (from.parse().unwrap_or(u16::MAX)..=to.parse().unwrap_or(0)).contains(&slot),
            None => range.parse() == Ok(slot),
        };
        nodes
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .filter(|fields| fields.len() > 8 && fields[2].contains("master") && !fields[2].contains("fail"))
            .find(|fields| fields[8..].iter().any(|range| in_range(range)))
            .and_then(|fields| fields[1].split('@').next()?.rsplit_once(':')?.1.parse().ok())
            .ok_or_else(|| nodes.clone())
    }

    /// The port of a replica of the master on `master`.
    pub fn replica_of(&self, master: u16) -> u16 {
        let nodes = self.cli(master, &["CLUSTER", "NODES"]).expect("CLUSTER NODES answers");
        let lines: Vec<Vec<&str>> = nodes.lines().map(|line| line.split(' ').collect()).collect();
        let port =
            |fields: &Vec<&str>| -> Option<u16> { fields[1].split('@').next()?.rsplit_once(':')?.1.parse().ok() };
        let id = lines.iter().find(|f| f.len() > 3 && port(f) == Some(master)).map(|f| f[0]).expect("the master");
        lines
            .iter()
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == id)
            .and_then(port)
            .unwrap_or_else(|| panic!("no replica of {master}: {nodes}"))
    }

    /// Stops the node on `port` at once (SIGKILL), like a crash.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.as_ref().is_some_and(|n| n.port == port));
        node.and_then(Option::take).expect("a running node on that port").kill();
    }
}

/// `redis-cli -p port args…`: its output, if it ran and succeeded.
pub fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The Redis Cluster the whole test binary shares, as a `redis-cluster://` URL:
/// `LOCKKIT_TEST_REDIS_CLUSTER_URL`, or one started here.
pub fn shared_redis_cluster_url() -> String {
    static CLUSTER: OnceLock<String> = OnceLock::new();
    shared(&CLUSTER, "LOCKKIT_TEST_REDIS_CLUSTER_URL", || Box::leak(Box::new(RedisCluster::start())).url())
}
