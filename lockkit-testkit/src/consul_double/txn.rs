//! `PUT /v1/txn`: the KV verbs lockkit sends — `check-session`, `check-index` and `lock` —
//! applied all or none, as Consul's `Txn.Apply` does: 200 with each operation's entry (values
//! left out), or 409 with every operation that failed (Consul's `txnDispatch` runs them all and
//! collects the errors; a `lock` by a session that does not exist is one of them). Any other
//! verb is refused with a 400 naming it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::kv::{entry_json, set};
use super::state::{Entry, Json, Shared, bad_request};

/// One KV operation of a transaction.
struct Op {
    verb: String,
    key: String,
    session: Option<String>,
    index: Option<u64>,
    value: Vec<u8>,
    flags: u64,
}

fn parse(op: &Value) -> Result<Op, String> {
    let kv = op.get("KV").ok_or("only KV operations are supported by the double")?;
    let text = |field: &str| kv.get(field).and_then(Value::as_str).map(str::to_owned);
    let value = match text("Value") {
        Some(v) => base64::engine::general_purpose::STANDARD.decode(v).map_err(|e| format!("Value: {e}"))?,
        None => Vec::new(),
    };
    Ok(Op {
        verb: text("Verb").ok_or("an operation without a Verb")?,
        key: text("Key").ok_or("an operation without a Key")?,
        session: text("Session"),
        index: kv.get("Index").and_then(Value::as_u64),
        value,
        flags: kv.get("Flags").and_then(Value::as_u64).unwrap_or(0),
    })
}

pub(crate) async fn txn(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("Failed to parse body: a transaction is a JSON array of operations");
    };
    let ops = match ops.iter().map(parse).collect::<Result<Vec<Op>, String>>() {
        Ok(ops) => ops,
        Err(e) => return bad_request(e),
    };
    if let Some(op) = ops.iter().find(|op| !matches!(op.verb.as_str(), "check-session" | "check-index" | "lock")) {
        return bad_request(format!("the Consul double does not implement the KV verb {:?} in transactions", op.verb));
    }
    let mut store = shared.store.lock().unwrap();
    // Every check is made on the store as the operations before it left it; nothing is
    // written unless all pass.
    let mut scratch = store.kv.clone();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let existing = scratch.get(&op.key);
        let session = op.session.clone().unwrap_or_default();
        let failed = match op.verb.as_str() {
            "check-session" => match existing {
                None => Some(format!("failed to check session, key {:?} doesn't exist", op.key)),
                Some(e) if e.session.as_deref() != Some(session.as_str()) => Some(format!(
                    "failed session check for key {:?}, current session {:?} != {:?}",
                    op.key,
                    e.session.clone().unwrap_or_default(),
                    session
                )),
                Some(_) => None,
            },
            "check-index" => match existing {
                None => Some(format!("failed to check index, key {:?} doesn't exist", op.key)),
                Some(e) if Some(e.modify_index) != op.index => Some(format!(
                    "failed index check for key {:?}, current modify index {} != {}",
                    op.key,
                    e.modify_index,
                    op.index.unwrap_or(0)
                )),
                Some(_) => None,
            },
            _ if !store.sessions.contains_key(&session) => Some(format!("invalid session {session:?}")),
            _ if existing.is_none_or(|e| e.session.is_none())
                && store.lock_delays.get(&op.key).is_some_and(|until| *until > Instant::now()) =>
            {
                Some(format!("failed to lock key {:?} due to lock delay", op.key))
            }
            _ => match existing {
                Some(e) if e.session.is_some() && e.session.as_deref() != Some(session.as_str()) => {
                    Some(format!("failed to lock key {:?}, lock is already held", op.key))
                }
                _ => {
                    let lock_index = match existing {
                        Some(e) if e.session.is_some() => e.lock_index,
                        Some(e) => e.lock_index + 1,
                        None => 1,
                    };
                    let entry = Entry {
                        create_index: 0,
                        modify_index: 0,
                        lock_index,
                        flags: op.flags,
                        value: op.value.clone(),
                        session: Some(session),
                    };
                    scratch.insert(op.key.clone(), entry);
                    None
                }
            },
        };
        if let Some(what) = failed {
            errors.push(json!({"OpIndex": i, "What": what}));
        }
    }
    if !errors.is_empty() {
        return (StatusCode::CONFLICT, Json(json!({"Results": null, "Errors": errors}))).into_response();
    }
    let mut results = Vec::new();
    for op in &ops {
        if op.verb == "lock" {
            let entry = scratch.remove(&op.key).expect("a lock checked above");
            if store.kv.get(&op.key).is_none_or(|e| e.session.is_none()) {
                shared.granted.lock().unwrap().insert(op.key.clone(), Instant::now());
            }
            set(&shared, &mut store, op.key.clone(), entry);
        }
        let mut entry = store.kv.get(&op.key).map(|e| entry_json(&op.key, e)).unwrap_or(Value::Null);
        entry["Value"] = Value::Null;
        results.push(json!({"KV": entry}));
    }
    Json(json!({"Results": results, "Errors": null})).into_response()
}
