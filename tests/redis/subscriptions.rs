//! Redlock wake-up subscriptions with one server stopped (SIGSTOP): a SUBSCRIBE it never
//! answers costs a new waiter at most the per-server call timeout, and holds up no other waiter.

use std::time::{Duration, Instant};

use lockkit_testkit::servers::{Server, redis_cli};
use lockkit_testkit::support::{connect, in_line, unique};

/// The request timeout of the handles: long, so a wait for it is unmistakable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The process id of the Redis server on `port` (ask before stopping it).
fn pid(port: u16) -> String {
    let info = redis_cli(port, &["INFO", "server"]).expect("INFO answers");
    info.lines().find_map(|l| l.strip_prefix("process_id:")).expect("a process id").trim().to_owned()
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), pid]).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Redlock over five servers, one of them stopped: two new waiters of one handle, on two held
/// locks, each get their lock promptly once it is released — well under the request timeout
/// (before, each SUBSCRIBE waited the full request timeout for the stopped server while
/// holding the handle's wake-up state, so the second waiter waited for the first one's too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redlock_server_does_not_hold_up_new_waiters() {
    let servers: Vec<Server> = (0..5).map(|_| Server::redis()).collect();
    let hosts: Vec<String> = servers.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    let url = format!(
        "redlock://{}?ttl=2s&timeout={}ms&namespace={}",
        hosts.join(","),
        REQUEST_TIMEOUT.as_millis(),
        unique("s")
    );
    let (holder, waiters) = (connect(&url).await, connect(&url).await);
    let guards = [holder.acquire("one").await.unwrap(), holder.acquire("two").await.unwrap()];
    let stopped = pid(servers[4].port);
    signal(&stopped, "STOP");
    let started = Instant::now();
    let waiting: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|name| {
            let waiters = waiters.clone();
            tokio::spawn(async move {
                let guard = waiters.acquire(name).await.unwrap();
                let at = started.elapsed();
                guard.release().await.unwrap();
                at
            })
        })
        .collect();
    // Released as soon as both wait (the servers count them), so a waiter's time is how long
    // it took to start waiting, plus the handoff.
    in_line(holder.as_ref(), "one", 1).await;
    in_line(holder.as_ref(), "two", 1).await;
    let in_line_at = started.elapsed();
    for guard in guards {
        guard.release().await.unwrap();
    }
    let released_at = started.elapsed();
    let mut times = Vec::new();
    for waiter in waiting {
        times.push(tokio::time::timeout(REQUEST_TIMEOUT * 4, waiter).await.expect("granted").unwrap());
    }
    signal(&stopped, "CONT");
    eprintln!(
        "SUBSCRIPTIONS one server stopped: both waiting after {in_line_at:?}, released after {released_at:?}, \
         granted after {times:?}"
    );
    // Each call to the stopped server costs the call timeout (TTL / 10 = 200 ms): a few
    // attempts, a subscribe, the holder's status polls and releases come to about 2 s.
    assert!(in_line_at < REQUEST_TIMEOUT / 2, "the waiters took {in_line_at:?} to start waiting");
    for (name, at) in ["one", "two"].iter().zip(&times) {
        let after_release = at.saturating_sub(released_at);
        assert!(
            after_release < Duration::from_secs(1),
            "the waiter of {name} got it {after_release:?} after the release"
        );
    }
}
