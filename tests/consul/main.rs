//! What only the Consul driver does — session destroyed or its node deregistered, lock-delay,
//! garbage, 500s and rate limiting, writes Consul applies late, blocking queries answered late
//! or with indexes going backwards, ACL tokens, `consul lock`'s key layout and flags — against
//! the Consul HTTP API **double** (`lockkit_testkit::consul_double`), and the double's own rules.
#![cfg(feature = "consul")]

mod faults;

mod lock_delay;

mod attack;

mod elections;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockkit::{DistributedLock, Error};
use lockkit_testkit::consul_double::{Config, ConsulDouble, Fault, Write};
use lockkit_testkit::support::connect;
use serde_json::Value;

const TTL: Duration = Duration::from_secs(1);

fn double() -> ConsulDouble {
    ConsulDouble::start(Config { session_ttl_min: Duration::from_millis(500), acl_token: None })
}

fn url(double: &ConsulDouble, query: &str) -> String {
    format!("consul://{}?ttl={}ms{query}", double.addr, TTL.as_millis())
}

/// A bound on every wait for an event in these tests.
const BOUND: Duration = Duration::from_secs(10);

/// A plain HTTP call to the double: status and JSON body (`Null` when empty or not JSON).
async fn http(double: &ConsulDouble, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, body, _) = http_indexed(double, method, path, body).await;
    (status, body)
}

/// An HTTP client for the double.
fn client() -> reqwest::Client {
    // reqwest is built without a default TLS provider (the driver picks ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// [`http`], with the `X-Consul-Index` of the answer.
async fn http_indexed(double: &ConsulDouble, method: &str, path: &str, body: &str) -> (u16, Value, Option<u64>) {
    let client = client();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client.request(method, format!("http://{}{path}", double.addr)).body(body.to_owned()).send().await;
    let response = response.expect("the double answers");
    let status = response.status().as_u16();
    let index = response.headers().get("X-Consul-Index").map(|v| v.to_str().unwrap().parse().unwrap());
    let bytes = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), index)
}

/// `future`, which must complete within [`BOUND`].
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(BOUND, future).await.unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
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
    let locks = connect(&url(&double, "&lock_delay=1s")).await;
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
/// it); the right token from the URL works.
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
    // The token from `CONSUL_HTTP_TOKEN`: `lockkit-cli`'s `consul_acl_token_from_the_environment`.
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
    bounded("the waiter's blocking query", double.blocking_queries_on("jobs/other/.lock", 1)).await;
    let release = format!("/v1/kv/jobs/other/.lock?release={theirs}&flags={}", lockkit::consul::FLAGS);
    assert_eq!(http(&double, "PUT", &release, "").await.1, Value::Bool(true));
    let taken = waiter.await.unwrap().expect("woken by the release");
    assert!(taken.is_held());

    assert_eq!(http(&double, "PUT", "/v1/kv/jobs/config/.lock?flags=7", "x").await.1, Value::Bool(true));
    let err = locks.try_acquire("config").await.unwrap_err().to_string();
    assert!(err.contains("flags 0x7") && err.contains("pick another lock name"), "{err}");
}

/// The double's own rules, as Consul documents them.
mod double_rules;
