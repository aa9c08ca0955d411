//! Elections on Redis and Redlock: what the review found.

use std::time::Duration;

use lockkit_testkit::proxy::{Direction, Proxy};
use lockkit_testkit::servers::Server;
use lockkit_testkit::support::{connect, unique};

fn redlock(ports: &[u16], namespace: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("redlock://{}?ttl=2000ms&namespace={namespace}", hosts.join(","))
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Redlock, one server's clock 7 h ahead (over the 6 h skew bound, under the 1-day BADFENCE
/// bound): it is left out of the vote, but its grant (key and far-off token) stays there. The
/// leader and its term are still shown. (Found by review: the observer never showed it, and
/// `leader()` showed the far-off token.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_left_out_of_the_vote_does_not_hide_the_leader() {
    let servers = [Server::redis_clock_ahead(Duration::from_secs(7 * 3600)), Server::redis(), Server::redis()];
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let ns = unique("e");
    let (locks, observer) = (connect(&redlock(&ports, &ns)).await, connect(&redlock(&ports, &ns)).await);
    let leadership = locks.campaign("skew", "a").await.unwrap();
    let term = leadership.term();
    let leader = locks.leader("skew").await.unwrap();
    eprintln!(
        "campaign term {term:?}; leader() = {leader:?}; skewed key = {:?}",
        cli(ports[0], &["GET", &format!("{ns}/skew")])
    );
    let mut changes = observer.observe("skew").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            if let Some(l) = changes.next().await.unwrap() {
                return l;
            }
        }
    })
    .await;
    assert_eq!(seen.ok().map(|l| (l.value, l.term)), Some(("a".to_owned(), term)), "observer never showed the leader");
    assert_eq!(leader.map(|l| l.term), Some(term), "leader() term");
}

/// Redlock: a proclaim a majority took while the first server missed it (that server still
/// holds the grant) is what `leader()` shows. (Found by review: it showed the first server's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proclaim_one_server_missed_is_shown() {
    let servers: Vec<Server> = (0..3).map(|_| Server::redis()).collect();
    let proxy = Proxy::start(format!("127.0.0.1:{}", servers[0].port).parse().unwrap()).await;
    let ports = [proxy.port(), servers[1].port, servers[2].port];
    let ns = unique("e");
    let locks = connect(&redlock(&ports, &ns)).await;
    let leadership = locks.campaign("p", "old").await.unwrap();
    proxy.hold(Direction::ToServer);
    leadership.proclaim("new").await.expect("a majority took it");
    proxy.cut();
    proxy.release();
    tokio::time::sleep(Duration::from_millis(1500)).await; // refreshes reconnect to server 0
    assert!(leadership.is_leader());
    let key = format!("{ns}/p");
    eprintln!(
        "s0 lock={:?} value={:?}",
        cli(servers[0].port, &["GET", &key]),
        cli(servers[0].port, &["GET", &format!("{key}:{{{key}}}:value")])
    );
    let shown = locks.leader("p").await.unwrap().map(|l| l.value);
    assert_eq!(shown.as_deref(), Some("new"), "leader() after a successful proclaim");
}

/// The proclaimed value (application data) is gone from Redis within the TTL after a resign.
/// (Found by review: it stayed forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proclaimed_value_ends_with_the_leadership() {
    let server = Server::redis();
    let ns = unique("e");
    let locks = connect(&format!("redis://127.0.0.1:{}?ttl=1000ms&namespace={ns}", server.port)).await;
    let leadership = locks.campaign("leak", "a").await.unwrap();
    leadership.proclaim("secret").await.unwrap();
    leadership.resign().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let key = format!("{ns}/leak:{{{ns}/leak}}:value");
    let ttl = cli(server.port, &["PTTL", &key]);
    assert_eq!(
        ttl,
        "-2",
        "value key {key} after resign + TTL: pttl {ttl}, holds {:?}",
        cli(server.port, &["GET", &key])
    );
}
