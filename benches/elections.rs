//! Election benchmark for every compiled backend: `cargo bench --bench elections`.
//!
//! Per backend, 2-second TTL, p50 / p90 of each:
//! - **failover after a resign**: the leader resigns while a second candidate (its own handle)
//!   waits; from the resign call to the waiting `campaign` returning;
//! - **failover after a crash**: the leader's connection goes through a fault proxy that then
//!   holds every byte both ways and refuses new connections (a host gone from the network);
//!   from that moment to the waiting candidate leading. Bounded by the backend's expiry: the
//!   TTL on etcd, ZooKeeper and Redis; Consul ends a session at twice its TTL and then keeps
//!   the key for the lock-delay (here as long as the TTL);
//! - **observers see a proclaim**: from the leader's `proclaim` call to an observer (its own
//!   handle) showing the new value;
//! - a `leader()` read, for scale.
//!
//! Beside lockkit's etcd rows, the same measured with etcd's own Election service (the Go
//! `concurrency.Election` recipe, run inside etcd; `etcd-client`'s campaign / resign / proclaim
//! / observe), each candidate with a connection and kept-alive lease of its own; beside the
//! ZooKeeper rows, Curator's `LeaderLatch` (Java, Debian's jars, through the test kit's Curator
//! peer): a latch closed while a second one, on a client of its own, waits — from `close()` to
//! the second's `await()` returning, timed inside the JVM after 5 warm-up rounds — and
//! `getLeader()` reads. `LeaderLatch` has no proclaim, and a crash is its session timeout.
//! `LOCKKIT_BENCH_ONLY=etcd,zookeeper` runs only those backends; `LOCKKIT_BENCH_ROUNDS` sets
//! the rounds of each measurement (default 40; crashes: a fifth of it, at least 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockkit::DistributedLock;
use lockkit_testkit::proxy::{Direction, Proxy};

const TTL: Duration = Duration::from_secs(2);

struct Row {
    backend: String,
    resign: Vec<Duration>,
    crash: Vec<Duration>,
    proclaim: Vec<Duration>,
    read: Vec<Duration>,
}

fn quantile(samples: &[Duration], q: f64) -> String {
    if samples.is_empty() {
        return "–".into();
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    let d = sorted[at];
    match d {
        d if d >= Duration::from_millis(100) => format!("{:.2} s", d.as_secs_f64()),
        d if d >= Duration::from_micros(10) => format!("{} µs", d.as_micros()),
        d => format!("{:.1} µs", d.as_secs_f64() * 1e6),
    }
}

fn cell(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "–".into();
    }
    format!("{} / {}", quantile(samples, 0.5), quantile(samples, 0.9))
}

async fn connect(url: &str) -> Arc<dyn DistributedLock> {
    lockkit::connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

fn with_ttl(url: &str, ttl: Duration) -> String {
    let start = if url.contains('?') { '&' } else { '?' };
    let consul = if url.starts_with("consul") { format!("&lock_delay={}ms", ttl.as_millis()) } else { String::new() };
    format!("{url}{start}ttl={}ms{consul}", ttl.as_millis())
}

/// Waits until `name` counts one waiter, where the backend counts them; else a short pause.
async fn queued(locks: &dyn DistributedLock, name: &str) {
    for _ in 0..500 {
        match locks.status(name).await.map(|s| s.waiting) {
            Ok(Some(n)) if n >= 1 => return,
            Ok(None) => break,
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn resigns(url: &str, rounds: usize) -> Vec<Duration> {
    let (a, b) = (connect(url).await, connect(url).await);
    let mut samples = Vec::new();
    for round in 0..rounds {
        let name = format!("resign-{round}");
        let leader = a.campaign(&name, "a").await.unwrap();
        let waiting = {
            let (b, name) = (b.clone(), name.clone());
            tokio::spawn(async move {
                let leadership = b.campaign(&name, "b").await.unwrap();
                (Instant::now(), leadership)
            })
        };
        queued(a.as_ref(), &name).await;
        let started = Instant::now();
        leader.resign().await.unwrap();
        let (led_at, leadership) = waiting.await.unwrap();
        samples.push(led_at - started);
        leadership.resign().await.unwrap();
    }
    samples
}

async fn crashes(url: &str, upstream: Option<std::net::SocketAddr>, rounds: usize) -> Vec<Duration> {
    let Some(upstream) = upstream else { return Vec::new() };
    let survivor = connect(&with_ttl(url, TTL)).await;
    let mut samples = Vec::new();
    for round in 0..rounds {
        let proxy = Proxy::start(upstream).await;
        let proxied = url.replacen(&upstream.to_string(), &proxy.addr().to_string(), 1);
        let doomed = connect(&with_ttl(&proxied, TTL)).await;
        let name = format!("crash-{round}");
        let leader = doomed.campaign(&name, "doomed").await.unwrap();
        let waiting = {
            let (b, name) = (survivor.clone(), name.clone());
            tokio::spawn(async move { (b.campaign(&name, "survivor").await.unwrap(), Instant::now()) })
        };
        queued(survivor.as_ref(), &name).await;
        proxy.refuse(true);
        proxy.hold(Direction::Both);
        let started = Instant::now();
        let (leadership, led_at) = waiting.await.unwrap();
        samples.push(led_at - started);
        leadership.resign().await.unwrap();
        std::mem::forget(leader); // its handle is gone from the network: nothing to resign
        std::mem::forget(doomed);
    }
    samples
}

async fn proclaims(url: &str, rounds: usize) -> Vec<Duration> {
    let (a, observer) = (connect(url).await, connect(url).await);
    if !a.capabilities().observe {
        return Vec::new();
    }
    let leadership = a.campaign("proclaimed", "v0").await.unwrap();
    let mut changes = observer.observe("proclaimed").await.unwrap();
    while changes.next().await.unwrap().is_none_or(|l| l.value != "v0") {}
    let mut samples = Vec::new();
    for round in 1..=rounds {
        let value = format!("v{round}");
        let started = Instant::now();
        leadership.proclaim(&value).await.unwrap();
        while changes.next().await.unwrap().is_none_or(|l| l.value != value) {}
        samples.push(started.elapsed());
    }
    leadership.resign().await.unwrap();
    samples
}

async fn reads(url: &str, rounds: usize) -> Vec<Duration> {
    let (a, b) = (connect(url).await, connect(url).await);
    let leadership = a.campaign("read", "v").await.unwrap();
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        b.leader("read").await.unwrap().expect("a leader");
        samples.push(started.elapsed());
    }
    leadership.resign().await.unwrap();
    samples
}

async fn measure(backend: &str, url: &str, upstream: Option<std::net::SocketAddr>, rounds: usize) -> Row {
    eprintln!("{backend}…");
    Row {
        backend: backend.to_owned(),
        resign: resigns(url, rounds).await,
        crash: crashes(url, upstream, (rounds / 5).max(3)).await,
        proclaim: proclaims(url, rounds).await,
        read: reads(url, rounds).await,
    }
}

/// Reads an Election service observation until it shows `wanted`.
#[cfg(feature = "etcd")]
async fn seen(stream: &mut lockkit::etcd::etcd_client::ObserveStream, wanted: &str) {
    loop {
        let answer = stream.message().await.unwrap().expect("the observation goes on");
        if answer.kv().is_some_and(|kv| kv.value() == wanted.as_bytes()) {
            return;
        }
    }
}

/// The same with etcd's Election service: each candidate its own client and kept-alive lease.
#[cfg(feature = "etcd")]
async fn etcd_election_service(port: u16, rounds: usize) -> Row {
    use lockkit::etcd::etcd_client::{Client, ProclaimOptions, ResignOptions};
    eprintln!("etcd Election service…");
    let endpoint = format!("127.0.0.1:{port}");
    let candidate = || async {
        let mut client = Client::connect([endpoint.clone()], None).await.unwrap();
        let lease = client.lease_grant(TTL.as_secs() as i64, None).await.unwrap().id();
        let (mut keeper, _) = client.lease_keep_alive(lease).await.unwrap();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TTL / 3).await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
            }
        });
        (client, lease)
    };
    let ((mut a, lease_a), (b, lease_b)) = (candidate().await, candidate().await);
    let mut resign = Vec::new();
    for round in 0..rounds {
        let name = format!("svc-resign-{round}");
        let won = a.campaign(name.as_str(), "a", lease_a).await.unwrap();
        let leader = won.leader().unwrap().clone();
        let waiting = {
            let (mut b, name) = (b.clone(), name.clone());
            tokio::spawn(async move {
                let won = b.campaign(name.as_str(), "b", lease_b).await.unwrap();
                (Instant::now(), won.leader().unwrap().clone(), b)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await; // no waiter count to wait for
        let started = Instant::now();
        a.resign(Some(ResignOptions::new().with_leader(leader))).await.unwrap();
        let (led_at, leader_b, mut b) = waiting.await.unwrap();
        resign.push(led_at - started);
        b.resign(Some(ResignOptions::new().with_leader(leader_b))).await.unwrap();
    }
    let won = a.campaign("svc-proclaimed", "v0", lease_a).await.unwrap();
    let leader = won.leader().unwrap().clone();
    let mut observer = b.clone();
    let mut stream = observer.observe("svc-proclaimed").await.unwrap();
    seen(&mut stream, "v0").await;
    let mut proclaim = Vec::new();
    for round in 1..=rounds {
        let value = format!("v{round}");
        let started = Instant::now();
        a.proclaim(value.as_str(), Some(ProclaimOptions::new().with_leader(leader.clone()))).await.unwrap();
        seen(&mut stream, &value).await;
        proclaim.push(started.elapsed());
    }
    let mut read = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        b.clone().leader("svc-proclaimed").await.unwrap();
        read.push(started.elapsed());
    }
    Row { backend: "etcd Election service (peer)".into(), resign, crash: Vec::new(), proclaim, read }
}

/// The same with Curator's `LeaderLatch`, timed by the Curator peer itself.
#[cfg(feature = "zookeeper")]
async fn curator_leader_latch(port: u16, rounds: usize) -> Row {
    eprintln!("Curator LeaderLatch…");
    let mut curator = lockkit_testkit::peer::Peer::curator(port);
    let answer = curator.ask(&format!("bench /curator-latch-bench {rounds}")).await;
    let samples = |label: &str| -> Vec<Duration> {
        let list = answer.split(';').find_map(|part| part.strip_prefix(label)).unwrap_or_else(|| panic!("{answer}"));
        list.split(',').map(|micros| Duration::from_micros(micros.parse().expect(&answer))).collect()
    };
    let (resign, read) = (samples("resign "), samples("read "));
    Row { backend: "Curator LeaderLatch (peer)".into(), resign, crash: Vec::new(), proclaim: Vec::new(), read }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("LOCKKIT_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let only = std::env::var("LOCKKIT_BENCH_ONLY").unwrap_or_default();
    let wanted = |backend: &str| only.is_empty() || only.split(',').any(|b| b == backend);
    let mut rows = Vec::new();
    if wanted("memory") {
        rows.push(measure("memory", "memory://elections", None, rounds).await);
    }
    #[cfg(feature = "etcd")]
    if wanted("etcd") {
        let server = lockkit_testkit::servers::Server::etcd();
        let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
        rows.push(measure("etcd", &format!("etcd://{upstream}"), Some(upstream), rounds).await);
        rows.push(etcd_election_service(server.port, rounds).await);
    }
    #[cfg(feature = "zookeeper")]
    if wanted("zookeeper") {
        let server = lockkit_testkit::servers::Server::zookeeper();
        let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
        rows.push(measure("zookeeper", &format!("zk://{upstream}"), Some(upstream), rounds).await);
        rows.push(curator_leader_latch(server.port, rounds).await);
    }
    #[cfg(feature = "consul")]
    if wanted("consul") {
        use lockkit_testkit::consul_double::{Config, ConsulDouble};
        // Consul's own minimum session TTL is 10 s; the double takes the bench's 2 s.
        let double = ConsulDouble::start(Config { session_ttl_min: Duration::from_millis(500), ..Config::default() });
        let url = format!("consul://{}", double.addr);
        rows.push(measure("consul (double)", &url, Some(double.addr), rounds).await);
    }
    #[cfg(feature = "redis")]
    if wanted("redis") {
        let server = lockkit_testkit::servers::Server::redis();
        let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
        rows.push(measure("redis", &format!("redis://{upstream}"), Some(upstream), rounds).await);
    }
    println!("\nTTL {} s; p50 / p90 of {rounds} rounds (crashes: {}).\n", TTL.as_secs(), (rounds / 5).max(3));
    println!(
        "| backend | failover after a resign | failover after a crash | observers see a proclaim | a `leader()` read |"
    );
    println!("|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.backend,
            cell(&row.resign),
            cell(&row.crash),
            cell(&row.proclaim),
            cell(&row.read)
        );
    }
}
