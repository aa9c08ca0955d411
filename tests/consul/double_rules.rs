//! The double's own rules, as Consul's documentation and source have them.

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

/// A blocking query that sees no change answers at its wait plus up to wait / 16 (Consul's
/// jitter), with the same index; with `latest_blocking_answers`, at exactly wait + wait / 16.
#[tokio::test]
async fn a_blocking_query_without_change_answers_within_consuls_jitter_with_the_same_index() {
    let double = double();
    http(&double, "PUT", "/v1/kv/quiet", "x").await;
    let (_, _, index) = http_indexed(&double, "GET", "/v1/kv/quiet", "").await;
    let index = index.unwrap();
    let blocking = format!("/v1/kv/quiet?index={index}&wait=320ms");
    for latest in [false, true] {
        double.latest_blocking_answers(latest);
        http(&double, "PUT", "/v1/kv/other", "y").await; // another key: no wake-up
        let started = Instant::now();
        let (status, _, answered) = http_indexed(&double, "GET", &blocking, "").await;
        let took = started.elapsed();
        assert_eq!((status, answered), (200, Some(index)));
        let earliest = if latest { Duration::from_millis(340) } else { Duration::from_millis(320) };
        assert!(took >= earliest && took < Duration::from_secs(2), "latest {latest}: {took:?}");
    }
    assert_eq!(double.blocking_queries_timed_out(), 2);
}

/// `X-Consul-Index` of a read is Consul's: one key's own `ModifyIndex` (not the latest index),
/// or for a missing key the KV table's index, which a deletion anywhere raises too. A write
/// that changes nothing keeps the key's index.
#[tokio::test]
async fn kv_reads_answer_the_keys_own_index() {
    let double = double();
    http(&double, "PUT", "/v1/kv/a", "1").await;
    http(&double, "PUT", "/v1/kv/b", "2").await;
    let (_, a, a_index) = http_indexed(&double, "GET", "/v1/kv/a", "").await;
    assert_eq!(a_index, a[0]["ModifyIndex"].as_u64());
    let (_, b, b_index) = http_indexed(&double, "GET", "/v1/kv/b", "").await;
    assert_eq!(b_index, b[0]["ModifyIndex"].as_u64());
    assert!(b_index > a_index);
    let (status, _, missing) = http_indexed(&double, "GET", "/v1/kv/none", "").await;
    assert_eq!((status, missing), (404, b_index), "a missing key answers the table's index");
    http(&double, "DELETE", "/v1/kv/b", "").await;
    let (_, _, after_delete) = http_indexed(&double, "GET", "/v1/kv/none", "").await;
    assert!(after_delete > b_index, "the tombstone's index");
    assert_eq!(http(&double, "PUT", "/v1/kv/a", "1").await.1, Value::Bool(true));
    assert_eq!(http_indexed(&double, "GET", "/v1/kv/a", "").await.2, a_index, "nothing changed");
}

/// A held write is applied at the end of its hold, although its client gave up long before.
#[tokio::test]
async fn a_held_write_is_applied_after_its_client_gave_up() {
    let double = double();
    let a = session(&double, r#"{"TTL": "10s", "NodeChecks": []}"#).await;
    let hold = Duration::from_secs(1);
    double.hold(Write::Acquire, hold, 1);
    let _ = client(); // installs the TLS provider
    let client = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().unwrap();
    let sent = client.put(format!("http://{}/v1/kv/held?acquire={a}", double.addr)).send().await;
    assert!(sent.is_err(), "answered within the hold: {sent:?}");
    assert_eq!(http(&double, "GET", "/v1/kv/held", "").await.0, 404, "applied before its hold ended");
    bounded("the held write", double.held_writes_applied()).await;
    assert_eq!(entry(&double, "held").await["Session"].as_str(), Some(a.as_str()));
    // Only as many writes as asked are held.
    assert_eq!(http(&double, "PUT", &format!("/v1/kv/held?release={a}"), "").await.1, Value::Bool(true));
    let started = Instant::now();
    assert_eq!(http(&double, "PUT", &format!("/v1/kv/held?acquire={a}"), "").await.1, Value::Bool(true));
    assert!(started.elapsed() < hold, "held again: {:?}", started.elapsed());
}

/// After a rewind, blocking queries answer at once and later writes get lower indexes.
#[tokio::test]
async fn a_rewound_index_answers_blocking_queries_at_once_and_goes_lower() {
    let double = double();
    for value in ["1", "2", "3"] {
        http(&double, "PUT", "/v1/kv/r", value).await;
    }
    let (_, _, index) = http_indexed(&double, "GET", "/v1/kv/r", "").await;
    let index = index.unwrap();
    let blocked = {
        let path = format!("/v1/kv/r?index={index}&wait=5s");
        let addr = double.addr;
        tokio::spawn(async move {
            let started = Instant::now();
            let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
            (started.elapsed(), response.status().as_u16())
        })
    };
    bounded("the blocking query", double.blocking_queries_on("r", 1)).await;
    double.rewind_index(1000);
    let (took, status) = blocked.await.unwrap();
    assert!(status == 200 && took < Duration::from_secs(1), "{status} after {took:?}");
    http(&double, "PUT", "/v1/kv/r", "4").await;
    let (_, _, after) = http_indexed(&double, "GET", "/v1/kv/r", "").await;
    assert!(after.unwrap() < index, "{after:?} after {index}");
}

/// `fail_next` answers that many requests with the fault, then the double answers normally.
#[tokio::test]
async fn failing_the_next_requests_fails_that_many() {
    let double = double();
    double.fail_next(Fault::TooManyRequests, 2);
    assert_eq!(http(&double, "GET", "/v1/kv/x", "").await.0, 429);
    assert_eq!(http(&double, "GET", "/v1/kv/x", "").await.0, 429);
    assert_eq!(http(&double, "GET", "/v1/kv/x", "").await.0, 404);
    double.fail_next(Fault::Unavailable, 1);
    assert_eq!(http(&double, "GET", "/v1/kv/x", "").await.0, 503);
    assert_eq!(http(&double, "GET", "/v1/kv/x", "").await.0, 404);
}

/// Deregistering the node invalidates every session before its TTL, each releasing its keys
/// with its lock-delay.
#[tokio::test]
async fn deregistering_the_node_invalidates_every_session_with_its_lock_delay() {
    let double = double();
    let a = session(&double, r#"{"TTL": "10s", "LockDelay": "10s", "NodeChecks": []}"#).await;
    let b = session(&double, r#"{"TTL": "10s", "LockDelay": "0s", "NodeChecks": []}"#).await;
    assert_eq!(http(&double, "PUT", &format!("/v1/kv/ka?acquire={a}"), "").await.1, Value::Bool(true));
    assert_eq!(http(&double, "PUT", &format!("/v1/kv/kb?acquire={b}"), "").await.1, Value::Bool(true));
    double.deregister_node();
    assert!(double.sessions().is_empty());
    assert!(entry(&double, "ka").await["Session"].is_null());
    assert_eq!(http(&double, "PUT", &format!("/v1/session/renew/{a}"), "").await.0, 404);
    let fresh = session(&double, r#"{"TTL": "10s", "NodeChecks": []}"#).await;
    assert_eq!(http(&double, "PUT", &format!("/v1/kv/ka?acquire={fresh}"), "").await.1, Value::Bool(false));
    assert_eq!(http(&double, "PUT", &format!("/v1/kv/kb?acquire={fresh}"), "").await.1, Value::Bool(true));
}

#[tokio::test]
async fn acls_and_faults() {
    let double = ConsulDouble::start(Config { session_ttl_min: Duration::from_secs(10), acl_token: Some("t".into()) });
    assert_eq!(http(&double, "GET", "/v1/kv/x", "").await.0, 403);
    assert_eq!(http(&double, "GET", "/v1/kv/x?token=t", "").await.0, 404);
    double.set_fault(Some(Fault::ServerError));
    assert_eq!(http(&double, "GET", "/v1/kv/x?token=t", "").await.0, 500);
    double.set_fault(None);
    assert_eq!(http(&double, "GET", "/v1/kv/x?token=t", "").await.0, 404);
}
