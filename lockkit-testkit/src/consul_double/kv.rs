//! `/v1/kv/<key>`: reads (blocking or not), writes (`acquire`, `release`, `cas`, plain) and
//! deletes, with Consul's indexes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::Write;
use super::sessions::duration;
use super::state::{Entry, Json, Shared, Store, Waiting, bad_request};

pub(super) fn entry_json(key: &str, e: &Entry) -> Value {
    let mut value = json!({
        "Key": key, "CreateIndex": e.create_index, "ModifyIndex": e.modify_index, "LockIndex": e.lock_index,
        "Flags": e.flags,
        "Value": if e.value.is_empty() { Value::Null } else { Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value)) },
    });
    if let Some(session) = &e.session {
        value["Session"] = Value::String(session.clone());
    }
    value
}

/// The `X-Consul-Index` of a read, as Consul computes it (`KVS.Get`, `KVS.List`): one key → its
/// `ModifyIndex`, or the KV table's index when it is missing; a prefix → the highest
/// `ModifyIndex` or tombstone under it, else the table's index; never below 1.
fn index_of(store: &Store, key: &str, recurse: bool) -> u64 {
    if !recurse {
        return store.kv.get(key).map_or(store.kv_index, |e| e.modify_index).max(1);
    }
    let modified = in_prefix(store, key).map(|(_, e)| e.modify_index).max().unwrap_or(0);
    let deleted = store.tombstones.iter().filter(|(k, _)| k.starts_with(key)).map(|(_, i)| *i).max().unwrap_or(0);
    match modified.max(deleted) {
        0 => store.kv_index.max(1),
        index => index,
    }
}

fn in_prefix<'a>(store: &'a Store, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> {
    store.kv.range(prefix.to_owned()..).take_while(move |(k, _)| k.starts_with(prefix))
}

/// The answer to a read: the entries and their index.
fn answer(store: &Store, key: &str, recurse: bool) -> Response {
    let entries: Vec<Value> = if recurse {
        in_prefix(store, key).map(|(k, e)| entry_json(k, e)).collect()
    } else {
        store.kv.get(key).map(|e| entry_json(key, e)).into_iter().collect()
    };
    let index = index_of(store, key, recurse);
    let status = if entries.is_empty() { StatusCode::NOT_FOUND } else { StatusCode::OK };
    let body = if entries.is_empty() { String::new() } else { Value::Array(entries).to_string() };
    (status, [("X-Consul-Index", index.to_string()), ("Content-Type", "application/json".into())], body).into_response()
}

/// `GET /v1/kv/<key>[?recurse][&index=N&wait=D]`. A blocking query answers once its index
/// passes the one given, at once when a restore abandons it, or at the wait's end plus up to
/// wait / 16 (Consul's jitter).
pub(crate) async fn get_key(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    Path(key): Path<String>,
) -> Response {
    let recurse = query.contains_key("recurse");
    let min_index: u64 = query.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = query
        .get("wait")
        .and_then(|w| duration(&Value::String(w.clone())))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600));
    let jitter = if shared.latest_answers.load(Ordering::SeqCst) {
        wait / 16
    } else {
        (wait / 16).mul_f64((lockkit_core::driver::random_u64() % 1000) as f64 / 1000.0)
    };
    let deadline = tokio::time::Instant::now() + wait + jitter;
    let mut restores = shared.restores.subscribe();
    let mut abandoned = false;
    // Counted from here: a change after this is seen by the read below or the subscription made
    // with it, under the same lock.
    let _waiting = (min_index != 0).then(|| Waiting::new(&shared, &key));
    loop {
        let mut changes = {
            let store = shared.store.lock().unwrap();
            let timed_out = tokio::time::Instant::now() >= deadline;
            if min_index == 0 || index_of(&store, &key, recurse) > min_index || timed_out || abandoned {
                if timed_out && min_index != 0 {
                    shared.wait_ends.send_modify(|ends| *ends += 1);
                }
                return answer(&store, &key, recurse);
            }
            shared.subscribe(&store, &key, recurse)
        };
        tokio::select! {
            _ = changes.changed() => {}
            _ = restores.changed() => abandoned = true,
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `PUT /v1/kv/<key>[?acquire=S | ?release=S | ?cas=N][&flags=F]`, body = value. A write
/// chosen by [`ConsulDouble::hold`](super::ConsulDouble::hold) is applied at the end of its
/// hold, whether or not its client still waits.
pub(crate) async fn put_key(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let write = if query.contains_key("acquire") {
        shared.acquires.fetch_add(1, Ordering::SeqCst);
        Some(Write::Acquire)
    } else if query.contains_key("release") {
        Some(Write::Release)
    } else {
        None
    };
    let Some(hold) = write.and_then(|w| shared.take_hold(w)) else { return apply_put(&shared, key, &query, &body) };
    shared.held.send_modify(|held| *held += 1);
    // A task of its own: the server drops this handler if the client goes away, not the task.
    let applied = tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        let response = apply_put(&shared, key, &query, &body);
        shared.held.send_modify(|held| *held -= 1);
        response
    });
    applied.await.unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response())
}

fn apply_put(shared: &Shared, key: String, query: &HashMap<String, String>, body: &[u8]) -> Response {
    let flags = match query.get("flags").map(|f| f.parse::<u64>()) {
        None => 0,
        Some(Ok(flags)) => flags,
        Some(Err(_)) => return bad_request("Invalid flags"),
    };
    let mut store = shared.store.lock().unwrap();
    let existing = store.kv.get(&key).cloned();
    let content = |session: Option<String>, lock_index: u64| Entry {
        create_index: 0,
        modify_index: 0,
        lock_index,
        flags,
        value: body.to_vec(),
        session,
    };
    if let Some(session) = query.get("acquire") {
        // Consul checks the lock-delay on the leader before the Raft apply, then the session.
        if store.lock_delays.get(&key).is_some_and(|until| *until > Instant::now()) {
            return Json(json!(false)).into_response();
        }
        if !store.sessions.contains_key(session) {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("invalid session \"{session}\"")).into_response();
        }
        let lock_index = match &existing {
            // Re-acquiring one's own lock updates the value; the lock index stays.
            Some(e) if e.session.as_deref() == Some(session) => e.lock_index,
            Some(e) if e.session.is_some() => return Json(json!(false)).into_response(),
            Some(e) => e.lock_index + 1,
            None => 1,
        };
        if existing.as_ref().is_none_or(|e| e.session.is_none()) {
            shared.granted.lock().unwrap().insert(key.clone(), Instant::now());
        }
        set(shared, &mut store, key, content(Some(session.clone()), lock_index));
        return Json(json!(true)).into_response();
    }
    if let Some(session) = query.get("release") {
        let Some(e) = existing.filter(|e| e.session.as_deref() == Some(session)) else {
            return Json(json!(false)).into_response();
        };
        set(shared, &mut store, key, content(None, e.lock_index));
        return Json(json!(true)).into_response();
    }
    if let Some(cas) = query.get("cas") {
        let Ok(cas) = cas.parse::<u64>() else { return bad_request("Invalid cas index") };
        if cas != existing.as_ref().map_or(0, |e| e.modify_index) {
            return Json(json!(false)).into_response();
        }
    }
    // A plain write keeps the holder.
    let (session, lock_index) = existing.map_or((None, 0), |e| (e.session, e.lock_index));
    set(shared, &mut store, key, content(session, lock_index));
    Json(json!(true)).into_response()
}

/// Stores `entry` under a new Raft index; an entry that would not change keeps its indexes,
/// as Consul's `kvsSetTxn` does.
pub(super) fn set(shared: &Shared, store: &mut Store, key: String, mut entry: Entry) {
    let index = shared.write(store);
    match store.kv.get(&key) {
        Some(e) if Entry { create_index: 0, modify_index: 0, ..e.clone() } == entry => return,
        Some(e) => entry.create_index = e.create_index,
        None => entry.create_index = index,
    }
    entry.modify_index = index;
    store.tombstones.remove(&key);
    shared.kv_changed(store, index, Some(&key));
    store.kv.insert(key, entry);
}

/// `DELETE /v1/kv/<key>[?recurse][&cas=N]`.
pub(crate) async fn delete_key(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    Path(key): Path<String>,
) -> Response {
    let mut store = shared.store.lock().unwrap();
    if let Some(cas) = query.get("cas").and_then(|c| c.parse::<u64>().ok())
        && store.kv.get(&key).map_or(0, |e| e.modify_index) != cas
    {
        return Json(json!(false)).into_response();
    }
    let doomed: Vec<String> = if query.contains_key("recurse") {
        store.kv.keys().filter(|k| k.starts_with(&key)).cloned().collect()
    } else {
        store.kv.contains_key(&key).then(|| key.clone()).into_iter().collect()
    };
    // Deleting nothing writes nothing.
    if !doomed.is_empty() {
        let index = shared.write(&mut store);
        for k in doomed {
            store.kv.remove(&k);
            shared.kv_changed(&mut store, index, Some(&k));
            store.tombstones.insert(k, index);
        }
    }
    Json(json!(true)).into_response()
}
