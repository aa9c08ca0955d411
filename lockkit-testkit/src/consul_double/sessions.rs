//! `/v1/session/create|renew|destroy|info`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::state::{Json, Session, Shared, bad_request};

/// A Consul duration: `"15s"`, `"1500ms"`, `"1m"`, or nanoseconds as a number.
pub(crate) fn duration(value: &Value) -> Option<Duration> {
    match value {
        Value::Number(n) => n.as_u64().map(Duration::from_nanos),
        Value::String(s) => {
            let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
            let (number, unit) = s.split_at(split);
            let number: f64 = number.parse().ok()?;
            let seconds = match unit {
                "ns" => number / 1e9,
                "us" | "µs" => number / 1e6,
                "ms" => number / 1e3,
                "s" => number,
                "m" => number * 60.0,
                "h" => number * 3600.0,
                _ => return None,
            };
            Some(Duration::from_secs_f64(seconds))
        }
        _ => None,
    }
}

fn go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn session_json(id: &str, s: &Session) -> Value {
    json!({
        "ID": id, "Name": s.name, "TTL": go_duration(s.ttl), "Behavior": s.behavior,
        "LockDelay": s.lock_delay.as_nanos() as u64, "NodeChecks": [], "CreateIndex": s.create_index,
        "ModifyIndex": s.create_index,
    })
}

pub(crate) async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let spec: Value = if body.is_empty() { json!({}) } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    if !spec.is_object() {
        return bad_request("Request decode failed: not a JSON object");
    }
    let ttl = match spec.get("TTL").filter(|v| v.as_str() != Some("")) {
        None => return bad_request("the double only implements TTL sessions: give a TTL"),
        Some(v) => match duration(v) {
            Some(ttl) if ttl >= shared.config.session_ttl_min && ttl <= Duration::from_secs(86400) => ttl,
            _ => {
                return bad_request(format!(
                    "Invalid Session TTL '{v}', must be between [{}=24h0m0s]",
                    go_duration(shared.config.session_ttl_min)
                ));
            }
        },
    };
    let lock_delay = match spec.get("LockDelay") {
        None => Duration::from_secs(15),
        Some(v) => match duration(v) {
            Some(d) => d.min(Duration::from_secs(60)),
            None => return bad_request(format!("Request decode failed: invalid LockDelay {v}")),
        },
    };
    let behavior = spec.get("Behavior").and_then(Value::as_str).unwrap_or("release").to_owned();
    if behavior != "release" && behavior != "delete" {
        return bad_request(format!("Invalid Behavior setting '{behavior}'"));
    }
    if spec.get("NodeChecks").and_then(Value::as_array).is_none_or(|checks| !checks.is_empty()) {
        return bad_request("the double has no node checks: send \"NodeChecks\": [] for a pure TTL session");
    }
    let id = uuid();
    let mut store = shared.store.lock().unwrap();
    let create_index = shared.write(&mut store);
    let name = spec.get("Name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let session = Session { name, ttl, behavior, lock_delay, create_index, expires: Instant::now() + ttl * 2 };
    store.sessions.insert(id.clone(), session);
    Json(json!({ "ID": id })).into_response()
}

pub(crate) async fn renew(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut store = shared.store.lock().unwrap();
    match store.sessions.get_mut(&id) {
        Some(session) => {
            session.expires = Instant::now() + session.ttl * 2;
            Json(json!([session_json(&id, session)])).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("Session id '{id}' not found")).into_response(),
    }
}

pub(crate) async fn destroy(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    shared.invalidate(&id);
    Json(json!(true)).into_response()
}

pub(crate) async fn info(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let store = shared.store.lock().unwrap();
    let sessions: Vec<Value> = store.sessions.get(&id).map(|s| session_json(&id, s)).into_iter().collect();
    Json(Value::Array(sessions)).into_response()
}

/// A random UUID-shaped id, as Consul's session ids are.
fn uuid() -> String {
    let hex = format!("{:016x}{:016x}", lockkit_core::driver::random_u64(), lockkit_core::driver::random_u64());
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}
