//! What only the Consul driver does — session destroyed, lock-delay, garbage and 500s, ACL
//! tokens, `consul lock`'s key layout and flags — against the Consul HTTP API **double**
//! (`conformance/consul_double.rs`), and the double's own rules.
#![cfg(feature = "consul")]

#[path = "conformance/support.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockkit::{DistributedLock, Error};
use serde_json::Value;
use support::connect;
use support::servers::consul_double::{Config, ConsulDouble, Fault};

const TTL: Duration = Duration::from_secs(1);

fn double() -> ConsulDouble {
    ConsulDouble::start(Config { session_ttl_min: Duration::from_millis(500), acl_token: None })
}

fn url(double: &ConsulDouble, query: &str) -> String {
    format!("consul://{}?ttl={}ms{query}", double.addr, TTL.as_millis())
}

/// A plain HTTP call to the double: status and JSON body (`Null` when empty or not JSON).
async fn http(double: &ConsulDouble, method: &str, path: &str, body: &str) -> (u16, Value) {
    // reqwest is built without a default TLS provider (the driver picks ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client.request(method, format!("http://{}{path}", double.addr)).body(body.to_owned()).send().await;
    let response = response.expect("the double answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn session(double: &ConsulDouble, spec: &str) -> String {
    let (status, body) = http(double, "PUT", "/v1/session/create", spec).await;
    assert_eq!(status, 200, "{body}");
    body["ID"].as_str().unwrap().to_owned()
}

async fn entry(double: &ConsulDouble, key: &str) -> Value {
    let (status, body) = http(double, "GET", &format!("/v1/kv/{key}"), "").await;
    assert_eq!(status, 200, "{key}");
    body[0].clone()
}

/// Destroying the holder's session behind its back fires the loss signal, and the next
/// acquire through the handle creates a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_destroyed_behind_the_holders_back_fires_the_loss_signal() {
    let double = double();
    let locks = connect(&url(&double, "&lock_delay=0s")).await;
    let guard = locks.acquire("destroyed").await.unwrap();
    let old = guard.lease().id().to_owned();
    double.destroy_session(&old);
    let reason = tokio::time::timeout(TTL, guard.lost()).await.expect("loss within the TTL");
    assert!(!guard.is_held(), "{reason}");
    let lost_token = guard.fencing_token();
    drop(guard);
    let again = locks.acquire_timeout("destroyed", Duration::from_secs(5)).await.unwrap();
    assert_ne!(again.lease().id(), old);
    assert!(again.fencing_token() > lost_token);
}

/// After a holder's session is invalidated, its key is free but in its lock-delay: a waiter
/// gets it once the delay is over, pausing between tries rather than spinning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_gets_the_lock_after_the_lock_delay_without_spinning() {
    let double = double();
    let delay = Duration::from_secs(1);
    let holder = connect(&url(&double, "&lock_delay=1s")).await;
    let waiter = connect(&url(&double, "&lock_delay=1s")).await;
    let guard = holder.acquire("delayed").await.unwrap();
    let acquires_before = double.acquires();
    let started = Instant::now();
    double.destroy_session(guard.lease().id());
    let taken = waiter.acquire_timeout("delayed", Duration::from_secs(5)).await.expect("granted after the delay");
    let waited = started.elapsed();
    assert!(waited >= delay - Duration::from_millis(50), "granted inside the lock-delay, after {waited:?}");
    let tries = double.acquires() - acquires_before;
    assert!(tries <= 12, "{tries} acquire requests in a {delay:?} lock-delay: spinning");
    assert!(taken.fencing_token() > guard.fencing_token());
}

/// A server answering 500s, or something that is not JSON, gives clear errors and no panic;
/// once it answers properly again, locking works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_garbage_give_clear_errors() {
    let double = double();
    let locks = connect(&url(&double, "")).await;
    double.set_fault(Some(Fault::ServerError));
    let err = locks.try_acquire("faulty").await.unwrap_err().to_string();
    assert!(err.contains("500") && err.contains("No cluster leader"), "{err}");
    double.set_fault(Some(Fault::Garbage));
    let err = locks.try_acquire("faulty").await.unwrap_err().to_string();
    assert!(err.contains("answered") && err.contains("Bad Gateway"), "{err}");
    let err = lockkit::connect(&url(&double, "")).await.unwrap_err().to_string();
    assert!(err.contains("answered a session with something else"), "{err}");
    double.set_fault(None);
    assert!(locks.try_acquire("faulty").await.unwrap().is_some());
}

/// With ACLs on, a wrong token is a clear permission error at connect (without the token in
/// it); the right token works, from the URL or from `CONSUL_HTTP_TOKEN` (the CLI's child env).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_tokens_are_sent_and_a_wrong_one_is_a_clear_error() {
    let token = "s3cret-acl-token";
    let double =
        ConsulDouble::start(Config { session_ttl_min: Duration::from_millis(500), acl_token: Some(token.into()) });
    let err = lockkit::connect(&url(&double, "&token=wrong-token")).await.unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("ACL token") && !shown.contains("wrong-token"), "{shown}");
    let locks = connect(&url(&double, &format!("&token={token}"))).await;
    assert!(!format!("{locks} {locks:?}").contains(token));
    let _guard = locks.acquire("guarded").await.unwrap();

    let status = |env_token: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_lockkit"))
            .args(["status", &url(&double, ""), "guarded"])
            .env("CONSUL_HTTP_TOKEN", env_token)
            .output()
    };
    let right = status(token).await.unwrap();
    assert_eq!(right.status.code(), Some(0), "held: {}", String::from_utf8_lossy(&right.stderr));
    let wrong = status("not-it").await.unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("permission denied") && !stderr.contains("not-it"), "{stderr}");
}

/// The key is `consul lock`'s: `NAME/.lock` with `api.Lock`'s flags, the session as holder, the
/// holder metadata as value. A holder using that layout with its own session (as `consul lock`
/// does) keeps lockkit waiting, and its release wakes lockkit; a key with other flags is a
/// clear conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_consul_locks_layout_and_flags() {
    let double = double();
    let locks: Arc<dyn DistributedLock> = connect(&url(&double, "&namespace=jobs")).await;
    let options = lockkit::LockOptions::new().holder("lockkit test");
    let guard = locks.acquire_with("nightly", &options).await.unwrap().unwrap();
    let held = entry(&double, "jobs/nightly/.lock").await;
    assert_eq!(held["Flags"].as_u64(), Some(lockkit::consul::FLAGS));
    assert_eq!(held["Session"].as_str(), Some(guard.lease().id()));
    assert_eq!(held["ModifyIndex"].as_u64(), Some(guard.fencing_token().get()));
    assert_eq!(held["Value"].as_str(), Some("bG9ja2tpdCB0ZXN0"), "base64 of the holder metadata");
    guard.release().await.unwrap();

    // Another client, the way `consul lock jobs/other` takes its lock.
    let theirs = session(&double, r#"{"TTL": "15s", "Behavior": "release", "NodeChecks": []}"#).await;
    let acquire = format!("/v1/kv/jobs/other/.lock?acquire={theirs}&flags={}", lockkit::consul::FLAGS);
    assert_eq!(http(&double, "PUT", &acquire, "").await.1, Value::Bool(true));
    assert!(locks.try_acquire("other").await.unwrap().is_none(), "lockkit got a lock `consul lock` holds");
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move { locks.acquire_timeout("other", Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // the waiter's blocking query is in place
    let release = format!("/v1/kv/jobs/other/.lock?release={theirs}&flags={}", lockkit::consul::FLAGS);
    assert_eq!(http(&double, "PUT", &release, "").await.1, Value::Bool(true));
    let taken = waiter.await.unwrap().expect("woken by the release");
    assert!(taken.is_held());

    assert_eq!(http(&double, "PUT", "/v1/kv/jobs/config/.lock?flags=7", "x").await.1, Value::Bool(true));
    let err = locks.try_acquire("config").await.unwrap_err().to_string();
    assert!(err.contains("flags 0x7") && err.contains("pick another lock name"), "{err}");
}

/// The double's own rules, as Consul documents them.
mod double_rules {
    use super::*;

    #[tokio::test]
    async fn session_ttls_are_bounded_and_unknown_sessions_are_404() {
        let double = ConsulDouble::start(Config::default());
        let (status, _) = http(&double, "PUT", "/v1/session/create", r#"{"TTL": "5s", "NodeChecks": []}"#).await;
        assert_eq!(status, 400, "below session_ttl_min (10s)");
        let id = session(&double, r#"{"TTL": "10s", "NodeChecks": []}"#).await;
        let (status, body) = http(&double, "PUT", &format!("/v1/session/renew/{id}"), "").await;
        assert_eq!((status, body[0]["TTL"].as_str()), (200, Some("10s")));
        let (status, _) = http(&double, "PUT", "/v1/session/renew/00000000-0000-0000-0000-000000000000", "").await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn acquire_release_and_the_indexes() {
        let double = double();
        let a = session(&double, r#"{"TTL": "10s", "NodeChecks": []}"#).await;
        let b = session(&double, r#"{"TTL": "10s", "NodeChecks": []}"#).await;
        assert_eq!(http(&double, "PUT", &format!("/v1/kv/k?acquire={a}"), "1").await.1, Value::Bool(true));
        let first = entry(&double, "k").await;
        assert_eq!(first["LockIndex"].as_u64(), Some(1));
        assert_eq!(http(&double, "PUT", &format!("/v1/kv/k?acquire={b}"), "").await.1, Value::Bool(false));
        assert_eq!(http(&double, "PUT", &format!("/v1/kv/k?release={b}"), "").await.1, Value::Bool(false));
        assert_eq!(http(&double, "PUT", &format!("/v1/kv/k?release={a}"), "").await.1, Value::Bool(true));
        let released = entry(&double, "k").await;
        assert!(released["Session"].is_null());
        assert_eq!(released["LockIndex"].as_u64(), Some(1), "a release keeps the lock index");
        assert!(released["ModifyIndex"].as_u64() > first["ModifyIndex"].as_u64());
        // A release imposes no lock-delay.
        assert_eq!(http(&double, "PUT", &format!("/v1/kv/k?acquire={b}"), "").await.1, Value::Bool(true));
        assert_eq!(entry(&double, "k").await["LockIndex"].as_u64(), Some(2));
        let (status, _) = http(&double, "PUT", "/v1/kv/k?acquire=nope", "").await;
        assert_eq!(status, 500, "an unknown session is an error");
        let modify = entry(&double, "k").await["ModifyIndex"].as_u64().unwrap();
        assert_eq!(http(&double, "PUT", "/v1/kv/k?cas=1", "").await.1, Value::Bool(false));
        assert_eq!(http(&double, "PUT", &format!("/v1/kv/k?cas={modify}"), "").await.1, Value::Bool(true));
    }

    #[tokio::test]
    async fn an_expired_session_releases_or_deletes_its_keys_with_a_lock_delay() {
        let double = double();
        let spec =
            |behavior| format!(r#"{{"TTL": "500ms", "LockDelay": "1s", "Behavior": "{behavior}", "NodeChecks": []}}"#);
        let started = Instant::now();
        let released = session(&double, &spec("release")).await;
        let deleted = session(&double, &spec("delete")).await;
        http(&double, "PUT", &format!("/v1/kv/r?acquire={released}"), "").await;
        http(&double, "PUT", &format!("/v1/kv/d?acquire={deleted}"), "").await;
        let (_, before) = http(&double, "GET", "/v1/kv/r", "").await;
        let index = before[0]["ModifyIndex"].as_u64().unwrap();
        // A blocking query on `r` returns when the session expires (TTL × 2 without renew).
        let (status, after) = http(&double, "GET", &format!("/v1/kv/r?index={index}&wait=5s"), "").await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= Duration::from_millis(900), "expired at TTL × 2: {:?}", started.elapsed());
        assert!(after[0]["Session"].is_null(), "released: {after}");
        let (_, d) = http(&double, "GET", "/v1/kv/d", "").await;
        let d_index = d[0]["ModifyIndex"].as_u64().unwrap_or(0);
        let (status, _) = http(&double, "GET", &format!("/v1/kv/d?index={d_index}&wait=5s"), "").await;
        assert_eq!(status, 404, "deleted with its session");
        let fresh = session(&double, r#"{"TTL": "10s", "NodeChecks": []}"#).await;
        assert_eq!(
            http(&double, "PUT", &format!("/v1/kv/r?acquire={fresh}"), "").await.1,
            Value::Bool(false),
            "lock-delay"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await; // the point of the test: the delay passes
        assert_eq!(http(&double, "PUT", &format!("/v1/kv/r?acquire={fresh}"), "").await.1, Value::Bool(true));
    }

    #[tokio::test]
    async fn a_blocking_query_without_change_returns_at_its_wait_with_the_same_index() {
        let double = double();
        http(&double, "PUT", "/v1/kv/quiet", "x").await;
        let (_, body) = http(&double, "GET", "/v1/kv/quiet", "").await;
        let index = body[0]["ModifyIndex"].as_u64().unwrap();
        let started = Instant::now();
        http(&double, "PUT", "/v1/kv/other", "y").await; // another key: no wake-up
        let (status, _) = http(&double, "GET", &format!("/v1/kv/quiet?index={index}&wait=300ms"), "").await;
        assert_eq!(status, 200);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn acls_and_faults() {
        let double =
            ConsulDouble::start(Config { session_ttl_min: Duration::from_secs(10), acl_token: Some("t".into()) });
        assert_eq!(http(&double, "GET", "/v1/kv/x", "").await.0, 403);
        assert_eq!(http(&double, "GET", "/v1/kv/x?token=t", "").await.0, 404);
        double.set_fault(Some(Fault::ServerError));
        assert_eq!(http(&double, "GET", "/v1/kv/x?token=t", "").await.0, 500);
    }
}
