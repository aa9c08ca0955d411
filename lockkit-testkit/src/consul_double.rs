//! A **double** of Consul's HTTP API — not Consul. It implements exactly the endpoints the
//! Consul driver uses, with Consul's semantics (checked against Consul's source: `agent/
//! kvs_endpoint.go`, `agent/consul/kvs_endpoint.go`, `agent/consul/state/kvs.go`, the blocking
//! query loop), because a Consul server cannot be installed on the machines CI runs on. Where it
//! must choose, it is as strict as Consul may be, never more lenient:
//!
//! - sessions (`/v1/session/create|renew|destroy|info`): TTL between `session_ttl_min` (Consul's
//!   agent option, default 10 s) and 24 h, invalidated when no renew came for TTL × 2 (Consul's
//!   grace), `Behavior` release or delete, `LockDelay` (default 15 s, at most 60 s);
//! - KV (`/v1/kv/<key>`): `acquire`, `release`, `cas`, `flags`, `recurse`; `CreateIndex`,
//!   `ModifyIndex`, `LockIndex` and `Session` kept like Consul keeps them (one Raft index for
//!   every write; a write that changes nothing keeps the entry's index); an invalidated
//!   session's keys are released (or deleted) and get a lock-delay during which `acquire` fails,
//!   while `?release` imposes none;
//! - `X-Consul-Index` of a KV read is Consul's: for one key, the key's `ModifyIndex`, or for a
//!   missing key the index of the KV table (the last KV write or deletion anywhere);
//! - blocking queries (`?index=&wait=`, wait at most 10 min, default 5 min) answer once that
//!   index passes the one given, or at the wait's end plus a random part of wait / 16 (Consul's
//!   jitter); a query on a missing key wakes on any KV write, as Consul's may;
//! - transactions (`/v1/txn`) of the KV verbs `check-session`, `check-index` and `lock`, all or
//!   none, answered 200 with each operation's entry or 409 with what failed (other verbs: 400);
//! - ACLs: with a token configured, a request without it gets 403 `ACL not found`.
//!
//! Switches for tests, each modelling something real Consul does:
//! [`set_fault`](ConsulDouble::set_fault) / [`fail_next`](ConsulDouble::fail_next) (500s,
//! garbage, 429/503 from Consul's rate limiter), [`hold`](ConsulDouble::hold) (writes applied
//! late, after their client gave up), [`latest_blocking_answers`](ConsulDouble::latest_blocking_answers),
//! [`rewind_index`](ConsulDouble::rewind_index) (indexes going backwards),
//! [`destroy_session`](ConsulDouble::destroy_session) and
//! [`deregister_node`](ConsulDouble::deregister_node) (sessions invalidated before their TTL).

mod kv;
mod sessions;
mod state;
mod txn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, put};

use state::Shared;

/// What to answer requests with instead of handling them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 500 with Consul's "No cluster leader".
    ServerError,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 429: Consul's rate limiter refused the request before handling it ("try a different
    /// server"); nothing was applied.
    TooManyRequests,
    /// 503: Consul's rate limiter refused the request before handling it ("try again later");
    /// nothing was applied.
    Unavailable,
}

/// A kind of KV write that [`ConsulDouble::hold`] can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Write {
    /// `PUT /v1/kv/<key>?acquire=`.
    Acquire,
    /// `PUT /v1/kv/<key>?release=`.
    Release,
}

/// How the double is configured (like a Consul agent's configuration).
#[derive(Clone, Debug)]
pub struct Config {
    /// The shortest session TTL accepted (Consul's `session_ttl_min`).
    pub session_ttl_min: Duration,
    /// The ACL token every request must carry, if any.
    pub acl_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config { session_ttl_min: Duration::from_secs(10), acl_token: None }
    }
}

/// A running double on a loopback port, served by a thread of its own.
pub struct ConsulDouble {
    /// Where it listens: `127.0.0.1:<port>`.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConsulDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulDouble").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl ConsulDouble {
    /// Starts a double configured by `config` on a free loopback port.
    pub fn start(config: Config) -> ConsulDouble {
        let shared = Arc::new(Shared::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/status/leader", get(async || "\"127.0.0.1:8300\""))
            .route("/v1/session/create", put(sessions::create))
            .route("/v1/session/renew/{id}", put(sessions::renew))
            .route("/v1/session/destroy/{id}", put(sessions::destroy))
            .route("/v1/session/info/{id}", get(sessions::info))
            .route("/v1/kv/{*key}", get(kv::get_key).put(kv::put_key).delete(kv::delete_key))
            .route("/v1/txn", put(txn::txn))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), state::gate))
            .with_state(shared.clone());
        let reaper = shared.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                tokio::spawn(state::reap_sessions(reaper));
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        ConsulDouble { addr, shared }
    }

    /// Answers every request with `fault` (or normally again with `None`).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.shared.faults.lock().unwrap() = state::Faults { fault, left: None };
    }

    /// Answers the next `requests` requests with `fault`, then normally again.
    pub fn fail_next(&self, fault: Fault, requests: u32) {
        *self.shared.faults.lock().unwrap() = state::Faults { fault: Some(fault), left: Some(requests) };
    }

    /// Holds each of the next `writes` writes of this kind for `time` before applying it — and
    /// applies it then even if its client gave up meanwhile, as Consul does with an RPC it holds
    /// while it has no leader (up to `rpc_hold_timeout`, 7 s) or one stuck in a slow Raft
    /// apply. Writes sent later are not held, so they can overtake a held one.
    pub fn hold(&self, write: Write, time: Duration, writes: u32) {
        self.shared.holds.lock().unwrap().insert(write, (time, writes));
    }

    /// Waits until every held write has been applied.
    pub async fn held_writes_applied(&self) {
        let _ = self.shared.held.subscribe().wait_for(|held| *held == 0).await;
    }

    /// With `true`, a blocking query that sees no change answers at exactly wait + wait / 16 —
    /// the latest Consul may answer it — instead of at a random point up to then.
    pub fn latest_blocking_answers(&self, on: bool) {
        self.shared.latest_answers.store(on, Ordering::SeqCst);
    }

    /// Waits until at least `queries` blocking queries wait on `key` — each has read the key
    /// and will see any later change.
    pub async fn blocking_queries_on(&self, key: &str, queries: u32) {
        let mut waiting = self.shared.waiting.subscribe();
        let _ = waiting.wait_for(|waiting| waiting.get(key).copied().unwrap_or(0) >= queries).await;
    }

    /// How many blocking queries were answered at the end of their wait (no change seen).
    pub fn blocking_queries_timed_out(&self) -> u64 {
        *self.shared.wait_ends.borrow()
    }

    /// Waits until at least `queries` blocking queries were answered at the end of their wait.
    pub async fn until_blocking_queries_timed_out(&self, queries: u64) {
        let _ = self.shared.wait_ends.subscribe().wait_for(|ends| *ends >= queries).await;
    }

    /// Makes the Raft index go back by `by`, as when the servers were rebuilt from an older
    /// snapshot: later writes get indexes below those already answered (the KV data is kept,
    /// so only the indexes go backwards), and every blocking query answers at once, as Consul's
    /// do when a restore abandons the state store.
    pub fn rewind_index(&self, by: u64) {
        self.shared.rewind(by);
    }

    /// Invalidates a session now, as `PUT /v1/session/destroy` from anyone does: its keys are
    /// released (or deleted) and get its lock-delay.
    pub fn destroy_session(&self, id: &str) {
        self.shared.invalidate(id);
    }

    /// Deregisters the agent's node (`consul leave`, `PUT /v1/catalog/deregister`): every
    /// session of the node — all of this double's — is invalidated before its TTL, with its
    /// keys released and their lock-delays started. Their holders are not told.
    pub fn deregister_node(&self) {
        let ids = self.sessions();
        for id in ids {
            self.shared.invalidate(&id);
        }
    }

    /// Waits until the session `id` no longer exists.
    pub async fn session_ended(&self, id: &str) {
        let mut changes = self.shared.index.subscribe();
        while self.shared.store.lock().unwrap().sessions.contains_key(id) {
            let _ = changes.changed().await;
        }
    }

    /// How many `PUT ?acquire=` requests came so far.
    pub fn acquires(&self) -> u64 {
        self.shared.acquires.load(Ordering::SeqCst)
    }

    /// When `key` was last acquired by a session that did not hold it already: the moment the
    /// server granted it.
    pub fn granted_at(&self, key: &str) -> Option<std::time::Instant> {
        self.shared.granted.lock().unwrap().get(key).copied()
    }

    /// The ids of the live sessions.
    pub fn sessions(&self) -> Vec<String> {
        self.shared.store.lock().unwrap().sessions.keys().cloned().collect()
    }
}

/// The Consul the whole test binary shares, as a URL: the real Consul at
/// `LOCKKIT_TEST_CONSUL_ADDR` (which must allow 1 s sessions: `session_ttl_min = "500ms"`), or
/// else a double started here with the same setting.
pub fn shared_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let addr = crate::servers::shared(&URL, "LOCKKIT_TEST_CONSUL_ADDR", || {
        let double = ConsulDouble::start(Config { session_ttl_min: Duration::from_millis(500), acl_token: None });
        Box::leak(Box::new(double)).addr.to_string()
    });
    format!("consul://{addr}")
}
