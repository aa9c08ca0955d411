//! Elections on Consul: observers across a restore, a proclaim after the session ended, and the
//! double's transactions as Consul answers them. (Found by review; each failed before its fix.)

use lockkit::Error;
use lockkit_testkit::support::connect;

use super::{BOUND, double, http};

fn url(double: &lockkit_testkit::consul_double::ConsulDouble) -> String {
    format!("consul://{}?ttl=1000ms&blocking_wait=1s", double.addr)
}

/// Consul restored from a snapshot (its index goes back): a leader elected after it has a term
/// below those shown before, and the observer shows it all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_follows_an_election_across_a_restore() {
    let double = double();
    let (locks, observer) = (connect(&url(&double)).await, connect(&url(&double)).await);
    for i in 0..20 {
        locks.campaign("rew", &format!("warm{i}")).await.unwrap().resign().await.unwrap();
    }
    let a = locks.campaign("rew", "a").await.unwrap();
    let mut changes = observer.observe("rew").await.unwrap();
    assert_eq!(changes.next().await.unwrap().map(|l| l.value), Some("a".into()));
    double.rewind_index(60);
    a.resign().await.unwrap();
    let b = locks.campaign("rew", "b").await.unwrap();
    let shown = tokio::time::timeout(BOUND, async {
        loop {
            if let Some(leader) = changes.next().await.unwrap()
                && leader.value == "b"
            {
                return leader;
            }
        }
    })
    .await
    .expect("the observer shows the leader elected after the restore");
    assert_eq!(shown.term, b.term());
}

/// A proclaim by a leader whose session was destroyed behind its back writes nothing and takes
/// nothing: nobody leads after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proclaim_after_the_session_ended_takes_nothing() {
    let double = double();
    let locks = connect(&url(&double)).await;
    let leadership = locks.campaign("ended", "a").await.unwrap();
    double.destroy_session(leadership.lease().id());
    let proclaimed = leadership.proclaim("zombie").await;
    assert!(matches!(proclaimed, Err(Error::NotHeld { .. } | Error::LockLost { .. })), "{proclaimed:?}");
    assert_eq!(locks.leader("ended").await.unwrap(), None);
    let (_, entry) = http(&double, "GET", "/v1/kv/ended/.lock", "").await;
    assert!(entry[0]["Session"].is_null(), "{entry}");
}

/// The double's `/v1/txn` answers as Consul's `txnDispatch`: every failed operation is
/// reported (409), a `lock` by a session that does not exist among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doubles_transactions_report_every_failed_operation() {
    let double = double();
    let ops = r#"[{"KV": {"Verb": "lock", "Key": "k", "Value": "eA==", "Session": "00000000-0000-0000-0000-000000000000"}},
                  {"KV": {"Verb": "check-index", "Key": "missing", "Index": 5}}]"#;
    let (status, body) = http(&double, "PUT", "/v1/txn", ops).await;
    assert_eq!(status, 409, "{body}");
    let errors = body["Errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 2, "{body}");
    assert!(errors[0]["What"].as_str().unwrap_or_default().contains("invalid session"), "{body}");
    assert_eq!(errors[1]["OpIndex"], 1, "{body}");
    let ok = r#"[{"KV": {"Verb": "check-session", "Key": "k", "Session": "x"}}, {"KV": {"Verb": "get", "Key": "k"}}]"#;
    let (status, body) = http(&double, "PUT", "/v1/txn", ok).await;
    assert_eq!(status, 400, "a verb the double does not implement is refused by name: {body}");
}
