//! What only the Redis driver does: Redlock quorums with servers down, server restarts,
//! deletion by another client, authentication, and interop with redis-py's `Lock`.
#![cfg(feature = "redis")]

mod elections;
mod interop;
mod refresh;
mod tokens;

mod subscriptions;

use std::time::{Duration, Instant};

use lockkit::Error;
use lockkit_testkit::servers::{self, Server};
use lockkit_testkit::support::{connect, in_line, unique};

const TTL: Duration = Duration::from_secs(2);

fn redlock_url(servers: &[Server], namespace: &str) -> String {
    let hosts: Vec<String> = servers.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
    format!("redlock://{}?ttl={}ms&namespace={namespace}", hosts.join(","), TTL.as_millis())
}

/// With 2 of 5 servers down, Redlock still grants, and tokens keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_grants_with_two_of_five_servers_down() {
    let mut servers: Vec<Server> = (0..5).map(|_| Server::redis()).collect();
    let locks = connect(&redlock_url(&servers, &unique("r"))).await;
    let before = locks.acquire("quorum").await.unwrap();
    let first = before.fencing_token();
    before.release().await.unwrap();
    servers.pop().unwrap().kill();
    servers.pop().unwrap().kill();
    let after = locks.acquire_timeout("quorum", Duration::from_secs(5)).await.expect("a majority is still up");
    assert!(after.fencing_token() > first);
    assert!(locks.try_acquire("quorum").await.unwrap().is_none(), "still exclusive");
}

/// With 3 of 5 servers down, an acquire fails with a clear connection error, within its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_fails_clearly_with_three_of_five_servers_down() {
    let mut servers: Vec<Server> = (0..5).map(|_| Server::redis()).collect();
    let locks = connect(&redlock_url(&servers, &unique("r"))).await;
    for _ in 0..3 {
        servers.pop().unwrap().kill();
    }
    let started = Instant::now();
    let err = locks.acquire_timeout("quorum", Duration::from_secs(5)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, Error::Connection { .. }), "{err}");
    assert!(err.to_string().contains("only 2 of 5 servers answered, and Redlock needs 3"), "{err}");
}

/// A grant deleted with DEL by another client fires the loss signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_deleted_by_another_client_fires_the_loss_signal() {
    let server = Server::redis();
    let namespace = unique("r");
    let locks =
        connect(&format!("redis://127.0.0.1:{}?ttl={}ms&namespace={namespace}", server.port, TTL.as_millis())).await;
    let guard = locks.acquire("deleted").await.unwrap();
    let output = tokio::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "DEL", &format!("{namespace}/deleted")])
        .output()
        .await
        .expect("redis-cli runs (scripts/install-deps installs redis-tools)");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1", "the key was there");
    let reason = tokio::time::timeout(TTL, guard.lost()).await.expect("loss within the TTL");
    assert!(reason.contains("deleted"), "{reason}");
}

/// A wrong password, or an ACL user with a wrong password, is an authentication error that
/// does not show the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_give_a_clear_authentication_error() {
    let port = servers::free_port();
    let _server = Server::redis_with(
        port,
        &["--requirepass", "right-secret", "--user", "alice", "on", ">alice-secret", "~*", "&*", "+@all"],
    );
    for url in [
        format!("redis://:hunter2-wrong@127.0.0.1:{port}"),
        format!("redis://alice:hunter2-wrong@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let err = lockkit::connect(&url).await.unwrap_err();
        assert!(matches!(err, Error::Authentication { .. }), "{url}: {err}");
        let text = format!("{err} {err:?}");
        assert!(text.contains("authentication failed"), "{text}");
        assert!(!text.contains("hunter2"), "the password leaked: {text}");
    }
    for url in
        [format!("redis://:right-secret@127.0.0.1:{port}"), format!("redis://alice:alice-secret@127.0.0.1:{port}")]
    {
        let locks = connect(&url).await;
        // Released before the next URL tries the same name (a dropped guard releases later).
        let guard = locks.try_acquire("authenticated").await.unwrap();
        assert!(guard.is_some(), "{url}");
        guard.unwrap().release().await.unwrap();
        let shown = format!("{locks} {locks:?}");
        assert!(shown.starts_with("redis backend redis://") && !shown.contains("secret"), "{shown}");
    }
}

/// The server version is read with `INFO server` at connect; an ACL user not allowed `INFO`
/// still connects (the check is skipped) and locks as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_not_allowed_info_still_connects() {
    let port = servers::free_port();
    let _server = Server::redis_with(port, &["--user", "bob", "on", ">bob-secret", "~*", "&*", "+@all", "-info"]);
    let locks = connect(&format!("redis://bob:bob-secret@127.0.0.1:{port}")).await;
    let guard = locks.try_acquire("no-info").await.unwrap().expect("granted");
    guard.release().await.unwrap();
}

/// An ACL user limited to its application's namespace (`~app/*`, `&app/*`, a common way to
/// keep two applications on one server apart) can lock in that namespace: every helper key and
/// the channel start with the lock key, `app/NAME:{app/NAME}:…`. (With helpers `{app/NAME}:…`
/// the scripts were refused with NOPERM.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_its_namespace_can_lock_there() {
    let port = servers::free_port();
    let _server = Server::redis_with(port, &["--user", "app", "on", ">app-secret", "~app/*", "&app/*", "+@all"]);
    let locks = connect(&format!("redis://app:app-secret@127.0.0.1:{port}?namespace=app&ttl=2s")).await;
    let guard = locks.try_acquire("jobs:nightly").await.unwrap().expect("granted");
    assert!(locks.status("jobs:nightly").await.unwrap().held);
    guard.release().await.unwrap();
}

/// `rediss://` talks TLS: trusted through `?ca=`, refused (clearly) without it, and a wrong
/// `ca` path is a clear URL error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_uses_tls_and_checks_the_server_certificate() {
    let certs = tempfile::tempdir().unwrap();
    servers::make_certificates(certs.path());
    let port = servers::free_port();
    let ca = certs.path().join("ca.crt").display().to_string();
    let tls = servers::redis_tls_args(certs.path());
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let _server = Server::redis_with(port, &tls);

    let locks = connect(&format!("rediss://127.0.0.1:{port}?ca={ca}")).await;
    let guard = locks.acquire("over-tls").await.unwrap();
    assert!(locks.status("over-tls").await.unwrap().held);
    guard.release().await.unwrap();

    let err = lockkit::connect(&format!("rediss://127.0.0.1:{port}?timeout=2s")).await.unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "an untrusted server certificate: {err}");
    assert!(err.to_string().to_lowercase().contains("certificate") || err.to_string().contains("Issuer"), "{err}");

    let err = lockkit::connect(&format!("rediss://127.0.0.1:{port}?ca=/nonexistent/ca.crt")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }) && err.to_string().contains("cannot read the `ca` file"), "{err}");
}

/// With `fair=true`, a try right after a release does not barge ahead of a waiter in line,
/// even one too slow to take its turn yet (the order of the line itself is a conformance test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_mode_tries_do_not_barge() {
    let server = Server::redis();
    let namespace = unique("r");
    let url = format!("redis://127.0.0.1:{}?fair=true&ttl={}ms&namespace={namespace}", server.port, TTL.as_millis());
    let holder = connect(&url).await;
    let guard = holder.acquire("line").await.unwrap();
    // A waiter that joined the line (its place good for a long while) but never comes to take
    // its turn: as a paused process would.
    let far_future = "32503680000000";
    redis_number(&server, &["ZADD", &format!("{namespace}/line:{{{namespace}/line}}:waiters"), far_future, "slow"])
        .await;
    redis_number(&server, &["RPUSH", &format!("{namespace}/line:{{{namespace}/line}}:queue"), "slow"]).await;
    in_line(holder.as_ref(), "line", 1).await;
    guard.release().await.unwrap();
    assert!(holder.try_acquire("line").await.unwrap().is_none(), "a try jumped the line");
}

/// Eight waiters in eight handles (eight pub/sub connections) are granted one after another,
/// each release waking one waiter, not every handle: the scripts the server runs stay one
/// grant and one release per waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_one_waiter_not_every_handle() {
    const WAITERS: usize = 8;
    let server = Server::redis();
    let namespace = unique("r");
    // A long TTL puts the fallback retries (TTL / 4, at most 1 s, jittered) well apart.
    let url = format!("redis://127.0.0.1:{}?ttl=60s&namespace={namespace}", server.port);
    let holder = connect(&url).await;
    let guard = holder.acquire("herd").await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..WAITERS {
        let locks = connect(&url).await;
        waiters.push(tokio::spawn(async move { locks.acquire("herd").await.unwrap().release().await.unwrap() }));
    }
    let started = Instant::now();
    while redis_number(&server, &["ZCARD", &format!("{namespace}/herd:{{{namespace}/herd}}:wakeup")]).await != WAITERS {
        assert!(started.elapsed() < Duration::from_secs(10), "the waiters never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let scripts_before = scripts_run(&server).await;
    guard.release().await.unwrap();
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let scripts = scripts_run(&server).await - scripts_before;
    // One release by the holder, then a grant and a release per waiter: 17. Waking every
    // handle would add a failed attempt per remaining handle per release (28 more); allow a
    // fallback retry per waiter.
    assert!(scripts <= 1 + 2 * WAITERS + WAITERS, "{scripts} scripts for {WAITERS} handoffs: a herd");
    assert_eq!(
        redis_number(&server, &["EXISTS", &format!("{namespace}/herd:{{{namespace}/herd}}:wakeup")]).await,
        0,
        "waiters left"
    );
}

/// Scripts the server has run so far (EVALSHA calls).
async fn scripts_run(server: &Server) -> usize {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "INFO", "commandstats"])
        .output()
        .await
        .unwrap();
    let stats = String::from_utf8_lossy(&out.stdout).into_owned();
    let calls = stats.lines().find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="));
    calls.and_then(|c| c.split(',').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A Redis command whose reply is a number.
async fn redis_number(server: &Server, command: &[&str]) -> usize {
    redis_reply(server, command).await.parse().unwrap_or(0)
}

/// A Redis command's reply as `redis-cli` prints it, trimmed.
async fn redis_reply(server: &Server, command: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string()])
        .args(command)
        .output()
        .await
        .expect("redis-cli runs (scripts/install-deps installs redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One Redlock server of three is busy (a long script of another client: it answers BUSY to
/// everything), as a minority may be; a majority answers, so connect must succeed and a lock
/// be granted. Before the version check, only wrong credentials stopped connect; now any
/// non-temporary error does, and a BUSY (or LOADING, for a server restarting) reply is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_connects_with_one_server_busy() {
    let busy_port = servers::free_port();
    let servers =
        vec![Server::redis(), Server::redis(), Server::redis_with(busy_port, &["--busy-reply-threshold", "10"])];
    let mut script = tokio::process::Command::new("redis-cli")
        .args(["-p", &busy_port.to_string(), "EVAL", "while true do end", "0"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !redis_reply(&servers[2], &["PING"]).await.contains("BUSY") {
        assert!(started.elapsed() < Duration::from_secs(5), "the server never got busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = lockkit::connect(&redlock_url(&servers, &unique("r"))).await;
    redis_reply(&servers[2], &["SCRIPT", "KILL"]).await;
    let _ = script.wait().await;
    let locks = result.expect("two of three servers answered");
    let guard = locks.try_acquire("busy").await.unwrap().expect("granted");
    guard.release().await.unwrap();
}

/// Another client flushing the script cache (`SCRIPT FLUSH`, as some deploy tools do) while
/// lockkit works: every call loads its script again when told NOSCRIPT, but a flush landing
/// between that load and the retried call made a try fail with "NoScript: No matching script"
/// (about 1 try in 1,000 under a flush loop). No try may fail, and held locks stay held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tries_and_releases_survive_script_flushes() {
    let server = Server::redis();
    let locks = connect(&format!("redis://127.0.0.1:{}?ttl=1s&namespace={}", server.port, unique("r"))).await;
    let held = locks.acquire("held").await.unwrap();
    let port = server.port.to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("redis-cli").args(["-p", &port, "SCRIPT", "FLUSH"]).output();
            }
        })
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        match locks.try_acquire("flushed").await {
            Ok(Some(guard)) => {
                if let Err(e) = guard.release().await {
                    failures.push(format!("release: {e}"));
                }
            }
            Ok(None) => failures.push("a free lock was busy".to_owned()),
            Err(e) => failures.push(format!("try: {e}")),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flusher.join().unwrap();
    assert!(failures.is_empty(), "{} failures, the first: {}", failures.len(), failures[0]);
    assert!(held.is_held(), "the held lock was lost");
    held.release().await.unwrap();
}

/// A grant whose reply is slow (held 900 ms by a proxy, TTL 1 s) must not be held past its
/// key's expiry. The key expires 1 s after the script ran, but the handle's lease, kept alive
/// *without any server round trip* while it had no grant yet (`keep_alive` with no grants
/// answers Alive), was extended at 333 and 666 ms; the new grant joins that lease, so its guard
/// says held until ~1.6 s. Cut off from the server from then on, the guard still reads held
/// while another client holds the lock (a ghost grant). The same happens, by the acquire's
/// latency, when a refresh of the lease's other grants is confirmed while the acquire is in
/// flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_grant_is_not_held_past_its_key_expiry() {
    use lockkit_testkit::proxy::{Direction, Proxy};
    let server = Server::redis();
    let proxy = Proxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap()).await;
    let slow = connect(&format!("redis://127.0.0.1:{}?ttl=1s&timeout=5s", proxy.port())).await;
    let other = connect(&format!("redis://127.0.0.1:{}?ttl=1s", server.port)).await;
    // The acquire script is loaded, so the held request is the one EVALSHA that grants.
    slow.try_acquire("warm").await.unwrap().expect("granted").release().await.unwrap();
    proxy.hold(Direction::ToClient);
    let started = Instant::now();
    let acquire = tokio::spawn(async move { slow.try_acquire("ghost").await.map(|guard| (guard, slow)) });
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(redis_number(&server, &["PTTL", "ghost"]).await > 0, "the grant was made at once");
    proxy.release();
    let (guard, _slow) = acquire.await.unwrap().unwrap();
    let guard = guard.expect("granted");
    proxy.hold(Direction::Both);
    let theirs = loop {
        if let Some(theirs) = other.try_acquire("ghost").await.unwrap() {
            break theirs;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "the key never expired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        !guard.is_held(),
        "two holders after {:?}: ours (token {}) still reads held, theirs has {}",
        started.elapsed(),
        guard.fencing_token(),
        theirs.fencing_token()
    );
}

/// Redlock over links with 15 ms of latency each way, TTL 1 s, so each call is bounded by
/// 100 ms (TTL / 10): a lock call takes one round trip (30 ms) and fits. Connect must too, but
/// it sets up the connection (CLIENT SETINFO), then PINGs, then reads INFO, one round trip
/// after the other, all within that one per-call bound — the version check's extra round trip
/// pushed it past 100 ms, so connect failed ("no answer within 100ms") where locking works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_connects_over_links_that_locking_works_over() {
    use lockkit_testkit::proxy::ProxySet;
    let servers: Vec<Server> = (0..3).map(|_| Server::redis()).collect();
    let upstreams: Vec<std::net::SocketAddr> =
        servers.iter().map(|s| format!("127.0.0.1:{}", s.port).parse().unwrap()).collect();
    let proxies = ProxySet::start(&upstreams).await;
    proxies.latency(Duration::from_millis(15));
    let hosts: Vec<String> = proxies.addrs().iter().map(|a| a.to_string()).collect();
    let locks = connect(&format!("redlock://{}?ttl=1s&namespace={}", hosts.join(","), unique("r"))).await;
    // The first calls also load the scripts (NOSCRIPT, SCRIPT LOAD, EVALSHA): allow a retry.
    for attempt in 0.. {
        match locks.try_acquire("far").await {
            Ok(Some(guard)) => return guard.release().await.unwrap(),
            other => assert!(attempt < 3, "{:?}", other.map(|g| g.is_some())),
        }
    }
}
