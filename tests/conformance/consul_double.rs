//! A **double** of Consul's HTTP API — not Consul. It implements exactly the endpoints the
//! Consul driver uses, with Consul's documented semantics, because a Consul server cannot be
//! installed on the machines CI runs on:
//!
//! - sessions (`/v1/session/create|renew|destroy|info`): TTL between `session_ttl_min` (Consul's
//!   agent option, default 10 s) and 24 h, invalidated when no renew came for TTL × 2 (Consul's
//!   grace), `Behavior` release or delete, `LockDelay` (default 15 s, at most 60 s);
//! - KV (`/v1/kv/<key>`): `acquire`, `release`, `cas`, `flags`, `recurse`; `CreateIndex`,
//!   `ModifyIndex`, `LockIndex` and `Session` kept like Consul keeps them (one Raft index for
//!   every write); an invalidated session's keys are released (or deleted) and get a lock-delay
//!   during which `acquire` fails, while `?release` imposes none;
//! - blocking queries (`?index=&wait=`, answered with `X-Consul-Index`; wait at most 10 min);
//! - ACLs: with a token configured, a request without it gets 403 `ACL not found`;
//! - faults for tests: 500s, or a body that is not JSON.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine;
use serde_json::{Value, json};

/// What to answer every request with while set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 500 with Consul's "No cluster leader".
    ServerError,
    /// 200 with a body that is not JSON.
    Garbage,
}

/// How the double is configured (like a Consul agent's configuration).
#[derive(Clone, Debug)]
pub struct Config {
    pub session_ttl_min: Duration,
    pub acl_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config { session_ttl_min: Duration::from_secs(10), acl_token: None }
    }
}

/// A running double on a loopback port, served by a thread of its own.
pub struct ConsulDouble {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    store: Mutex<Store>,
    /// The latest Raft index: blocking queries wait on it.
    index: tokio::sync::watch::Sender<u64>,
    fault: Mutex<Option<Fault>>,
    /// How many `?acquire=` requests came.
    acquires: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Store {
    index: u64,
    sessions: HashMap<String, Session>,
    kv: BTreeMap<String, Entry>,
    /// Keys in their lock-delay, until when.
    lock_delays: HashMap<String, Instant>,
    /// The index of the last write to the KV table: what `X-Consul-Index` says for KV reads.
    kv_index: u64,
    /// When each deleted key was deleted (Consul's tombstones).
    tombstones: HashMap<String, u64>,
}

struct Session {
    name: String,
    ttl: Duration,
    behavior: String,
    lock_delay: Duration,
    create_index: u64,
    expires: Instant,
}

#[derive(Clone)]
struct Entry {
    create_index: u64,
    modify_index: u64,
    lock_index: u64,
    flags: u64,
    value: Vec<u8>,
    session: Option<String>,
}

impl ConsulDouble {
    pub fn start(config: Config) -> ConsulDouble {
        let shared = Arc::new(Shared {
            config,
            store: Mutex::new(Store { index: 1, ..Store::default() }),
            index: tokio::sync::watch::channel(1).0,
            fault: Mutex::new(None),
            acquires: Default::default(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/status/leader", get(async || "\"127.0.0.1:8300\""))
            .route("/v1/session/create", put(create_session))
            .route("/v1/session/renew/{id}", put(renew_session))
            .route("/v1/session/destroy/{id}", put(destroy_session))
            .route("/v1/session/info/{id}", get(session_info))
            .route("/v1/kv/{*key}", get(get_key).put(put_key).delete(delete_key))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), gate))
            .with_state(shared.clone());
        let reaper = shared.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                tokio::spawn(reap_sessions(reaper));
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        ConsulDouble { addr, shared }
    }

    /// Answers every request with `fault` (or normally again with `None`).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Destroys a session, as `consul` would on `PUT /v1/session/destroy` from anyone.
    pub fn destroy_session(&self, id: &str) {
        self.shared.invalidate(id);
    }

    /// How many `PUT ?acquire=` requests came so far.
    pub fn acquires(&self) -> u64 {
        self.shared.acquires.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The ids of the live sessions.
    pub fn sessions(&self) -> Vec<String> {
        self.shared.store.lock().unwrap().sessions.keys().cloned().collect()
    }
}

impl Shared {
    /// One write: the next Raft index.
    fn write(&self, store: &mut Store) -> u64 {
        store.index += 1;
        self.index.send_replace(store.index);
        store.index
    }

    /// Ends a session: its keys are released (or deleted) and get its lock-delay.
    fn invalidate(&self, id: &str) -> bool {
        let mut store = self.store.lock().unwrap();
        let Some(session) = store.sessions.remove(id) else { return false };
        let index = self.write(&mut store);
        let held: Vec<String> =
            store.kv.iter().filter(|(_, e)| e.session.as_deref() == Some(id)).map(|(k, _)| k.clone()).collect();
        for key in held {
            store.kv_index = index;
            if session.behavior == "delete" {
                store.kv.remove(&key);
                store.tombstones.insert(key.clone(), index);
            } else if let Some(entry) = store.kv.get_mut(&key) {
                entry.session = None;
                entry.modify_index = index;
            }
            if !session.lock_delay.is_zero() {
                store.lock_delays.insert(key, Instant::now() + session.lock_delay);
            }
        }
        true
    }
}

/// Invalidates sessions whose TTL (× 2, Consul's grace) passed without a renew.
async fn reap_sessions(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Instant::now();
        let expired: Vec<String> = {
            let store = shared.store.lock().unwrap();
            store.sessions.iter().filter(|(_, s)| s.expires <= now).map(|(id, _)| id.clone()).collect()
        };
        for id in expired {
            shared.invalidate(&id);
        }
    }
}

/// A Consul duration: `"15s"`, `"1500ms"`, `"1m"`, or nanoseconds as a number.
fn duration(value: &Value) -> Option<Duration> {
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

/// Answers instead of the endpoint while a fault is set, or when the ACL token is missing or
/// wrong (given as `X-Consul-Token` or `?token=`).
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match *shared.fault.lock().unwrap() {
        Some(Fault::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "rpc error making call: No cluster leader").into_response();
        }
        Some(Fault::Garbage) => return (StatusCode::OK, "<html>502 Bad Gateway</html>").into_response(),
        None => {}
    }
    if let Some(wanted) = &shared.config.acl_token {
        let header = request.headers().get("X-Consul-Token").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let query = request.uri().query().unwrap_or_default().split('&').find_map(|p| p.strip_prefix("token="));
        if header.as_deref().or(query) != Some(wanted.as_str()) {
            return (StatusCode::FORBIDDEN, "ACL not found").into_response();
        }
    }
    next.run(request).await
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, message.into()).into_response()
}

fn session_json(id: &str, s: &Session) -> Value {
    json!({
        "ID": id, "Name": s.name, "TTL": go_duration(s.ttl), "Behavior": s.behavior,
        "LockDelay": s.lock_delay.as_nanos() as u64, "NodeChecks": [], "CreateIndex": s.create_index,
        "ModifyIndex": s.create_index,
    })
}

async fn create_session(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
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

async fn renew_session(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut store = shared.store.lock().unwrap();
    match store.sessions.get_mut(&id) {
        Some(session) => {
            session.expires = Instant::now() + session.ttl * 2;
            Json(json!([session_json(&id, session)])).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("Session id '{id}' not found")).into_response(),
    }
}

async fn destroy_session(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    shared.invalidate(&id);
    Json(json!(true)).into_response()
}

async fn session_info(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let store = shared.store.lock().unwrap();
    let sessions: Vec<Value> = store.sessions.get(&id).map(|s| session_json(&id, s)).into_iter().collect();
    Json(Value::Array(sessions)).into_response()
}

struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        ([("Content-Type", "application/json")], self.0.to_string()).into_response()
    }
}

fn entry_json(key: &str, e: &Entry) -> Value {
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

/// `GET /v1/kv/<key>[?recurse][&index=N&wait=D]`.
async fn get_key(
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
    let deadline = tokio::time::Instant::now() + wait + wait / 16;
    let mut changes = shared.index.subscribe();
    loop {
        let (entries, changed, index) = {
            let store = shared.store.lock().unwrap();
            let in_scope = |k: &str| if recurse { k.starts_with(&key) } else { k == key };
            let entries: Vec<Value> = store
                .kv
                .range(key.clone()..)
                .take_while(|(k, _)| k.starts_with(&key))
                .filter(|(k, _)| in_scope(k))
                .map(|(k, e)| entry_json(k, e))
                .collect();
            // When what this query reads last changed (Consul wakes a query on that), and the
            // KV table's index (what Consul answers in the header).
            let modified = entries.iter().filter_map(|e| e["ModifyIndex"].as_u64()).max().unwrap_or(0);
            let deleted = store.tombstones.iter().filter(|(k, _)| in_scope(k)).map(|(_, i)| *i).max().unwrap_or(0);
            (entries, modified.max(deleted), store.kv_index.max(1))
        };
        // A blocking query answers once the index passed the one given, or at the wait's end.
        if min_index == 0 || changed > min_index || tokio::time::Instant::now() >= deadline {
            let status = if entries.is_empty() { StatusCode::NOT_FOUND } else { StatusCode::OK };
            let body = if entries.is_empty() { String::new() } else { Value::Array(entries).to_string() };
            return (
                status,
                [("X-Consul-Index", index.to_string()), ("Content-Type", "application/json".into())],
                body,
            )
                .into_response();
        }
        let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
    }
}

/// `PUT /v1/kv/<key>[?acquire=S | ?release=S | ?cas=N][&flags=F]`, body = value.
async fn put_key(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    let flags = match query.get("flags").map(|f| f.parse::<u64>()) {
        None => 0,
        Some(Ok(flags)) => flags,
        Some(Err(_)) => return bad_request("Invalid flags"),
    };
    let mut store = shared.store.lock().unwrap();
    let existing = store.kv.get(&key).cloned();
    if let Some(session) = query.get("acquire") {
        shared.acquires.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !store.sessions.contains_key(session) {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("invalid session \"{session}\"")).into_response();
        }
        if store.lock_delays.get(&key).is_some_and(|until| *until > Instant::now()) {
            return Json(json!(false)).into_response();
        }
        let index = match &existing {
            Some(e) if e.session.as_deref().is_some_and(|s| s != session) => return Json(json!(false)).into_response(),
            _ => shared.write(&mut store),
        };
        let entry = match existing {
            // Re-acquiring one's own lock updates the value; the lock index stays.
            Some(e) if e.session.as_deref() == Some(session) => {
                Entry { modify_index: index, flags, value: body.to_vec(), ..e }
            }
            Some(e) => Entry {
                modify_index: index,
                lock_index: e.lock_index + 1,
                flags,
                value: body.to_vec(),
                session: Some(session.clone()),
                ..e
            },
            None => Entry {
                create_index: index,
                modify_index: index,
                lock_index: 1,
                flags,
                value: body.to_vec(),
                session: Some(session.clone()),
            },
        };
        store.kv_index = index;
        store.tombstones.remove(&key);
        store.kv.insert(key, entry);
        return Json(json!(true)).into_response();
    }
    if let Some(session) = query.get("release") {
        let Some(e) = existing.filter(|e| e.session.as_deref() == Some(session)) else {
            return Json(json!(false)).into_response();
        };
        let index = shared.write(&mut store);
        store.kv_index = index;
        store.kv.insert(key, Entry { modify_index: index, session: None, flags, value: body.to_vec(), ..e });
        return Json(json!(true)).into_response();
    }
    if let Some(cas) = query.get("cas") {
        let Ok(cas) = cas.parse::<u64>() else { return bad_request("Invalid cas index") };
        let current = existing.as_ref().map_or(0, |e| e.modify_index);
        if cas != current {
            return Json(json!(false)).into_response();
        }
    }
    let index = shared.write(&mut store);
    let entry = match existing {
        Some(e) => Entry { modify_index: index, flags, value: body.to_vec(), ..e },
        None => Entry {
            create_index: index,
            modify_index: index,
            lock_index: 0,
            flags,
            value: body.to_vec(),
            session: None,
        },
    };
    store.kv_index = index;
    store.tombstones.remove(&key);
    store.kv.insert(key, entry);
    Json(json!(true)).into_response()
}

/// `DELETE /v1/kv/<key>[?recurse][&cas=N]`.
async fn delete_key(
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
    let index = shared.write(&mut store);
    let doomed: Vec<String> = if query.contains_key("recurse") {
        store.kv.keys().filter(|k| k.starts_with(&key)).cloned().collect()
    } else {
        store.kv.contains_key(&key).then(|| key.clone()).into_iter().collect()
    };
    for k in doomed {
        store.kv.remove(&k);
        store.tombstones.insert(k, index);
    }
    store.kv_index = index;
    Json(json!(true)).into_response()
}

/// A random UUID-shaped id, as Consul's session ids are.
fn uuid() -> String {
    let hex = format!("{:016x}{:016x}", lockkit_core::random_u64(), lockkit_core::random_u64());
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The Consul the whole test binary shares, as a URL: the real Consul at
/// `LOCKKIT_TEST_CONSUL_ADDR` (which must allow 1 s sessions: `session_ttl_min = "500ms"`), or
/// else a double started here with the same setting.
pub fn shared_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| match std::env::var("LOCKKIT_TEST_CONSUL_ADDR") {
        Ok(addr) => format!("consul://{addr}"),
        Err(_) => {
            let double = ConsulDouble::start(Config { session_ttl_min: Duration::from_millis(500), acl_token: None });
            format!("consul://{}", Box::leak(Box::new(double)).addr)
        }
    })
    .clone()
}
