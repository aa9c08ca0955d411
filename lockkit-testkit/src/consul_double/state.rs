//! The double's state: the Raft index, sessions, KV entries, lock-delays, and the test
//! switches; the gate that answers faults and checks ACL tokens.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::{Config, Fault, Write};

pub(crate) struct Shared {
    pub config: Config,
    pub store: Mutex<Store>,
    /// The latest Raft index.
    pub index: watch::Sender<u64>,
    /// The KV table's index: blocking queries on a prefix or a missing key wait on it (a
    /// session write does not wake them, as it does not in Consul).
    pub kv_changes: watch::Sender<u64>,
    /// Per key, for blocking queries on that key: its changes (a deletion included).
    pub key_changes: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Bumped by a "restore": blocking queries in flight answer at once.
    pub restores: watch::Sender<u64>,
    pub faults: Mutex<Faults>,
    /// Writes to hold: for how long, and how many more.
    pub holds: Mutex<HashMap<Write, (Duration, u32)>>,
    /// How many writes are held now.
    pub held: watch::Sender<u32>,
    /// How many blocking queries wait on each key now.
    pub waiting: watch::Sender<HashMap<String, u32>>,
    /// Blocking queries without change answer at wait + wait / 16 exactly.
    pub latest_answers: AtomicBool,
    /// How many blocking queries were answered at the end of their wait.
    pub wait_ends: watch::Sender<u64>,
    /// How many `?acquire=` requests came.
    pub acquires: AtomicU64,
    /// When each key was last acquired by a session that did not hold it.
    pub granted: Mutex<HashMap<String, Instant>>,
}

/// The fault answered instead of handling requests, and for how many more (`None`: all).
#[derive(Default)]
pub(crate) struct Faults {
    pub fault: Option<Fault>,
    pub left: Option<u32>,
}

#[derive(Default)]
pub(crate) struct Store {
    pub index: u64,
    pub sessions: HashMap<String, Session>,
    pub kv: BTreeMap<String, Entry>,
    /// Keys in their lock-delay, until when.
    pub lock_delays: HashMap<String, Instant>,
    /// The index of the KV and tombstone tables (the last KV write or deletion): what
    /// `X-Consul-Index` says for a missing key.
    pub kv_index: u64,
    /// When each deleted key was deleted (Consul's tombstones).
    pub tombstones: HashMap<String, u64>,
}

pub(crate) struct Session {
    pub name: String,
    pub ttl: Duration,
    pub behavior: String,
    pub lock_delay: Duration,
    pub create_index: u64,
    pub expires: Instant,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub flags: u64,
    pub value: Vec<u8>,
    pub session: Option<String>,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Shared {
        Shared {
            config,
            store: Mutex::new(Store { index: 1, ..Store::default() }),
            index: watch::channel(1).0,
            kv_changes: watch::channel(0).0,
            key_changes: Mutex::default(),
            restores: watch::channel(0).0,
            faults: Mutex::default(),
            holds: Mutex::default(),
            held: watch::channel(0).0,
            waiting: watch::channel(HashMap::new()).0,
            latest_answers: AtomicBool::new(false),
            wait_ends: watch::channel(0).0,
            acquires: AtomicU64::new(0),
            granted: Mutex::default(),
        }
    }

    /// One write: the next Raft index.
    pub(crate) fn write(&self, store: &mut Store) -> u64 {
        store.index += 1;
        self.index.send_replace(store.index);
        store.index
    }

    /// A KV write at `index` changed the KV table, and `key` (when it is about one key).
    pub(crate) fn kv_changed(&self, store: &mut Store, index: u64, key: Option<&str>) {
        store.kv_index = index;
        self.kv_changes.send_replace(index);
        let mut keys = self.key_changes.lock().unwrap();
        keys.retain(|_, sender| sender.receiver_count() > 0);
        if let Some(sender) = key.and_then(|key| keys.get(key)) {
            sender.send_replace(index);
        }
    }

    /// What wakes a blocking query on `key`: its own changes while it exists (call with the
    /// store locked, so that no change comes between the look and the subscription), else any
    /// change of the KV table.
    pub(crate) fn subscribe(&self, store: &Store, key: &str, recurse: bool) -> watch::Receiver<u64> {
        if recurse || !store.kv.contains_key(key) {
            return self.kv_changes.subscribe();
        }
        let mut keys = self.key_changes.lock().unwrap();
        keys.entry(key.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Ends a session: its keys are released (or deleted) and get its lock-delay.
    pub(crate) fn invalidate(&self, id: &str) -> bool {
        let mut store = self.store.lock().unwrap();
        let Some(session) = store.sessions.remove(id) else { return false };
        let index = self.write(&mut store);
        let held: Vec<String> =
            store.kv.iter().filter(|(_, e)| e.session.as_deref() == Some(id)).map(|(k, _)| k.clone()).collect();
        for key in held {
            self.kv_changed(&mut store, index, Some(&key));
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

    /// The Raft index goes back by `by`; blocking queries in flight answer at once.
    pub(crate) fn rewind(&self, by: u64) {
        let mut store = self.store.lock().unwrap();
        store.index = store.index.saturating_sub(by).max(1);
        let kv_index = store.kv_index.min(store.index);
        self.kv_changed(&mut store, kv_index, None);
        self.index.send_replace(store.index);
        self.restores.send_modify(|restores| *restores += 1);
    }

    /// How long to hold a write of this kind, if it is to be held (counting it).
    pub(crate) fn take_hold(&self, write: Write) -> Option<Duration> {
        let mut holds = self.holds.lock().unwrap();
        let (time, left) = holds.get_mut(&write)?;
        if *left == 0 {
            return None;
        }
        *left -= 1;
        Some(*time)
    }

    /// The fault to answer this request with, if any (counting it).
    fn take_fault(&self) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        match faults.left {
            Some(0) => {
                *faults = Faults::default();
                None
            }
            Some(ref mut left) => {
                *left -= 1;
                faults.fault
            }
            None => faults.fault,
        }
    }
}

/// Counts a blocking query on a key while it lives (a client that goes away drops it).
pub(crate) struct Waiting<'a> {
    shared: &'a Shared,
    key: String,
}

impl<'a> Waiting<'a> {
    pub(crate) fn new(shared: &'a Shared, key: &str) -> Self {
        shared.waiting.send_modify(|waiting| *waiting.entry(key.to_owned()).or_default() += 1);
        Waiting { shared, key: key.to_owned() }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.waiting.send_modify(|waiting| {
            if let Some(n) = waiting.get_mut(&self.key) {
                *n -= 1;
            }
        });
    }
}

/// Invalidates sessions whose TTL (× 2, Consul's grace) passed without a renew.
pub(crate) async fn reap_sessions(shared: Arc<Shared>) {
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

/// Answers instead of the endpoint while a fault is set, or when the ACL token is missing or
/// wrong (given as `X-Consul-Token` or `?token=`).
pub(crate) async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match shared.take_fault() {
        Some(Fault::ServerError) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "rpc error making call: No cluster leader").into_response();
        }
        Some(Fault::Garbage) => return (StatusCode::OK, "<html>502 Bad Gateway</html>").into_response(),
        Some(Fault::TooManyRequests) => {
            return (StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded, try a different server").into_response();
        }
        Some(Fault::Unavailable) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "rate limit exceeded, try again later").into_response();
        }
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

pub(crate) fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, message.into()).into_response()
}

/// A JSON answer, with Consul's content type.
pub(crate) struct Json(pub serde_json::Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        ([("Content-Type", "application/json")], self.0.to_string()).into_response()
    }
}
