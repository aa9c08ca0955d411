//! The servers' own request counters, read before and after a measured window.
//!
//! - Redis: `INFO commandstats`, every command's calls but INFO's own (this counter's
//!   connection is opened once, up front, so its handshake is not counted). Redis counts the
//!   commands a script runs as well as the EVALSHA that runs it, so these are commands
//!   executed, not requests; EVALSHA and SCRIPT LOAD are always shown (the driver starts each
//!   pipelined round trip with one SCRIPT LOAD, so SCRIPT LOADs count its pipelines).
//! - etcd: `/metrics` on the client port, `grpc_server_msg_received_total` over every method
//!   (one per unary call, one per streamed message); `LeaseKeepAlive` always shown.
//! - ZooKeeper: `mntr`'s `zk_packets_received` (four-letter words are not packets).
//! - The Consul API double counts only `PUT ?acquire=` requests, and shows its live sessions.

use std::collections::BTreeMap;
use std::time::Duration;

/// Where a target's server requests are counted.
pub(crate) enum Counter {
    /// memory, file: no server.
    None,
    #[cfg(feature = "redis")]
    Redis(redis::aio::MultiplexedConnection),
    /// The etcd client port (its `/metrics` endpoint) and an HTTP client.
    #[cfg(feature = "etcd")]
    Etcd(u16, reqwest::Client),
    /// The ZooKeeper client port.
    #[cfg(feature = "zookeeper")]
    Zookeeper(u16),
    #[cfg(feature = "consul")]
    Consul(crate::double::Double),
}

/// A server's counts at one moment.
#[derive(Default)]
pub(crate) struct Counts {
    /// What is counted, e.g. "commands".
    what: &'static str,
    /// Every request the server counted; `None` where it counts none that we can read.
    requests: Option<u64>,
    /// Kinds of request among them (commands, gRPC methods): how many so far.
    parts: BTreeMap<String, u64>,
    /// The parts always shown; the others only among the 2 that grew most.
    pinned: &'static [&'static str],
    /// A gauge, shown as read after the window (Consul: live sessions).
    note: Option<String>,
}

impl Counter {
    #[cfg(feature = "redis")]
    pub(crate) async fn redis(url: &str) -> Counter {
        let client = redis::Client::open(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let connection = client.get_multiplexed_async_connection().await.expect("a connection for INFO");
        Counter::Redis(connection)
    }

    #[cfg(feature = "etcd")]
    pub(crate) fn etcd(port: u16) -> Counter {
        // reqwest is built without a default TLS provider (the drivers pick ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Counter::Etcd(port, reqwest::Client::new())
    }

    /// The counts now.
    pub(crate) async fn sample(&self) -> Counts {
        match self {
            Counter::None => Counts::default(),
            #[cfg(feature = "redis")]
            Counter::Redis(connection) => {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut connection.clone())
                    .await
                    .expect("INFO commandstats");
                // cmdstat_evalsha:calls=10001,usec=…
                let parts: BTreeMap<String, u64> = info
                    .lines()
                    .filter_map(|line| {
                        let (command, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                        let calls = stats.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
                        Some((command.to_uppercase().replace('|', " "), calls))
                    })
                    .filter(|(command, _)| command != "INFO")
                    .collect();
                Counts {
                    what: "commands (the scripts' own included)",
                    requests: Some(parts.values().sum()),
                    parts,
                    pinned: &["EVALSHA", "SCRIPT LOAD"],
                    note: None,
                }
            }
            #[cfg(feature = "etcd")]
            Counter::Etcd(port, http) => {
                let url = format!("http://127.0.0.1:{port}/metrics");
                let metrics = async { http.get(&url).send().await?.text().await };
                let metrics = metrics.await.unwrap_or_else(|e| panic!("{url}: {e}"));
                let mut parts = BTreeMap::new();
                // grpc_server_msg_received_total{grpc_method="Txn",grpc_service="…",grpc_type="unary"} 1234
                for line in metrics.lines().filter_map(|l| l.strip_prefix("grpc_server_msg_received_total{")) {
                    let method = line.split("grpc_method=\"").nth(1).and_then(|m| m.split('"').next());
                    let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
                    if let (Some(method), Some(value)) = (method, value) {
                        *parts.entry(method.to_owned()).or_default() += value as u64;
                    }
                }
                Counts {
                    what: "gRPC messages",
                    requests: Some(parts.values().sum()),
                    parts,
                    pinned: &["LeaseKeepAlive"],
                    note: None,
                }
            }
            #[cfg(feature = "zookeeper")]
            Counter::Zookeeper(port) => {
                let port = *port;
                let mntr =
                    tokio::task::spawn_blocking(move || lockkit_testkit::servers::four_letter_word(port, "mntr"))
                        .await
                        .expect("mntr")
                        .expect("ZooKeeper answers mntr");
                let packets = mntr
                    .lines()
                    .find_map(|l| l.strip_prefix("zk_packets_received"))
                    .and_then(|n| n.trim().parse().ok())
                    .expect("zk_packets_received in mntr");
                Counts { what: "packets", requests: Some(packets), ..Counts::default() }
            }
            #[cfg(feature = "consul")]
            Counter::Consul(double) => {
                let (acquires, sessions) = double.counts();
                Counts {
                    parts: BTreeMap::from([("PUT ?acquire".to_owned(), acquires)]),
                    pinned: &["PUT ?acquire"],
                    note: Some(format!("live sessions: {sessions}")),
                    ..Counts::default()
                }
            }
        }
    }
}

/// The requests between two samples, per `per` (e.g. per tick: `per` is the ticks elapsed),
/// as a table cell: "1.00 gRPC messages per tick (LeaseKeepAlive 1.00)"; "–" where nothing
/// counts them.
pub(crate) fn describe(before: &Counts, after: &Counts, per: f64, unit: &str) -> String {
    let delta = |a: u64, b: u64| a.saturating_sub(b) as f64 / per;
    let mut cell = match before.requests.zip(after.requests) {
        Some((b, a)) => format!("{} {} {unit}", amount(delta(a, b)), after.what),
        None if after.parts.is_empty() && after.note.is_none() => return "–".to_owned(),
        None => "–".to_owned(),
    };
    let mut grown: Vec<(&str, f64)> = after
        .parts
        .iter()
        .map(|(what, a)| (what.as_str(), delta(*a, before.parts.get(what).copied().unwrap_or(0))))
        .collect();
    grown.sort_by(|x, y| y.1.total_cmp(&x.1));
    let pinned = after.pinned.iter().map(|what| (*what, grown.iter().find(|g| g.0 == *what).map_or(0.0, |g| g.1)));
    let others = grown.iter().filter(|(what, d)| *d > 0.0 && !after.pinned.contains(what)).take(2).copied();
    let mut details: Vec<String> = pinned.chain(others).map(|(what, d)| format!("{what} {}", amount(d))).collect();
    details.extend(after.note.clone());
    if !details.is_empty() {
        cell.push_str(&format!(" ({})", details.join(", ")));
    }
    cell
}

/// How many ticks of `refresh` fit in `window`.
pub(crate) fn ticks(window: Duration, refresh: Duration) -> f64 {
    window.as_secs_f64() / refresh.as_secs_f64()
}

fn amount(x: f64) -> String {
    if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") }
}
