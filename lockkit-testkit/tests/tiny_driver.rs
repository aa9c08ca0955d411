//! A third-party driver, written only against `lockkit_core::driver` — a `Mutex<HashMap>`
//! "server" with a fake lease — run through the whole conformance suite by one `conformance!`
//! line, as another crate would: no `#[path]`, nothing from lockkit's own drivers.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lockkit_core::driver::{Grant, GrantRequest, KeepAlive, LeaseBackend, LeasePool, LockBackend, random_u64};
use lockkit_core::{
    Capabilities, DistributedLock, Error, FencingToken, Lease, LockGuard, LockName, LockStatus, LockUrl, LossSignal,
    Result, Settings,
};
use lockkit_testkit::{BoxFuture, Target, conformance};
use tokio::sync::Notify;

const BACKEND: &str = "tiny";

/// The "server": one per host name of the URL, shared by every handle in the process.
#[derive(Default)]
struct Server {
    state: Mutex<State>,
    released: Notify,
}

#[derive(Default)]
struct State {
    holders: HashMap<String, Holder>,
    tokens: HashMap<String, u64>,
    /// Lease id → when it ends.
    leases: HashMap<String, Instant>,
}

struct Holder {
    owner: u64,
    token: u64,
    lease: String,
    metadata: String,
    signal: LossSignal,
}

impl State {
    fn live(&self, lease: &str) -> bool {
        self.leases.get(lease).is_some_and(|ends| *ends > Instant::now())
    }

    /// The holder of `key`, once holders whose lease ended are gone.
    fn holder(&mut self, key: &str) -> Option<&Holder> {
        if self.holders.get(key).is_some_and(|h| !self.live(&h.lease)) {
            self.holders.remove(key);
        }
        self.holders.get(key)
    }
}

fn server(name: &str) -> Arc<Server> {
    static SERVERS: LazyLock<Mutex<HashMap<String, Arc<Server>>>> = LazyLock::new(Default::default);
    SERVERS.lock().unwrap().entry(name.to_owned()).or_default().clone()
}

conformance!(
    tiny,
    tiny_target,
    capabilities: [server_fencing, server_expiry, crash_release, shared_lease, push_wakeups, holder_metadata]
);

fn tiny_target() -> Target {
    Target::custom("tiny", "tiny://conformance", |url| {
        let locks = connect(url);
        Box::pin(async move { locks }) as BoxFuture<'static, _>
    })
}

/// `tiny://server[/namespace]?ttl=…`, parsed as a `memory://` URL (the core knows no `tiny`).
fn connect(url: &str) -> Result<Arc<dyn DistributedLock>> {
    let url: LockUrl = url.replacen("tiny://", "memory://", 1).parse()?;
    let settings = Settings::from_url(&url)?;
    let host = url.hosts().first().map(|h| h.host.clone()).unwrap_or_default();
    let pool = LeasePool::for_settings(BACKEND, &settings);
    Ok(Arc::new(Tiny { settings, server: server(&host), pool }))
}

struct Tiny {
    settings: Settings,
    server: Arc<Server>,
    pool: LeasePool,
}

#[async_trait]
impl LockBackend for Tiny {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fair: false,
            cross_process: false,
            observe: false,
            semaphores: false,
            rw_locks: false,
            ..Capabilities::ALL
        }
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        let server = self.server.clone();
        let ttl = request.ttl;
        let lease = self
            .pool
            .get(ttl, request.refresh_interval, || async move {
                let id = format!("tiny-{:x}", random_u64());
                server.state.lock().unwrap().leases.insert(id.clone(), Instant::now() + ttl);
                Ok((Arc::new(TinyLease { server, id: id.clone(), ttl }) as Arc<dyn LeaseBackend>, id))
            })
            .await?;
        let key = self.settings.namespace.key(&request.name);
        let (owner, signal) = (random_u64(), lease.grant_signal());
        loop {
            let released = self.server.released.notified();
            let next_expiry = {
                let mut state = self.server.state.lock().unwrap();
                if !state.live(lease.id()) {
                    let reason = "while waiting, its lease was lost".to_owned();
                    return Err(Error::LockLost { backend: BACKEND, name: request.name.to_string(), reason });
                }
                match state.holder(&key) {
                    None => {
                        let token = state.tokens.entry(key.clone()).or_default();
                        *token += 1;
                        let holder = Holder {
                            owner,
                            token: *token,
                            lease: lease.id().to_owned(),
                            metadata: request.holder.clone(),
                            signal: signal.clone(),
                        };
                        let token = FencingToken::new(holder.token);
                        state.holders.insert(key.clone(), holder);
                        let grant =
                            TinyGrant { server: self.server.clone(), key, owner, name: request.name.to_string() };
                        return Ok(Some(request.granted(BACKEND, token, lease, signal, grant)));
                    }
                    Some(_) if !request.wait => return Ok(None),
                    Some(holder) => {
                        let lease = holder.lease.clone();
                        state.leases[&lease]
                    }
                }
            };
            // Woken by a release, or at the holder's lease end. Nothing is queued on the
            // "server", so dropping this future leaves nothing behind.
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(next_expiry.into()) => {}
            }
        }
    }

    async fn inspect(&self, name: &LockName) -> Result<LockStatus> {
        let key = self.settings.namespace.key(name);
        let mut state = self.server.state.lock().unwrap();
        let Some(holder) = state.holder(&key) else { return Ok(LockStatus::free().waiting(0)) };
        let (metadata, token, lease) = (holder.metadata.clone(), holder.token, holder.lease.clone());
        let left = state.leases[&lease].saturating_duration_since(Instant::now());
        Ok(LockStatus::held(Some(metadata), Some(FencingToken::new(token)), Some(left)))
    }

    async fn evict(&self, name: &LockName) -> Result<bool> {
        let key = self.settings.namespace.key(name);
        let mut state = self.server.state.lock().unwrap();
        let evicted = state.holder(&key).is_some();
        if let Some(holder) = state.holders.remove(&key) {
            holder.signal.lose("the grant was removed by force_release");
        }
        self.server.released.notify_waiters();
        Ok(evicted)
    }

    async fn shutdown(&self) -> Result<()> {
        self.pool.close().await
    }
}

struct TinyLease {
    server: Arc<Server>,
    id: String,
    ttl: Duration,
}

#[async_trait]
impl LeaseBackend for TinyLease {
    async fn keep_alive(&self) -> Result<KeepAlive> {
        let mut state = self.server.state.lock().unwrap();
        let live = state.live(&self.id);
        match state.leases.get_mut(&self.id) {
            Some(ends) if live => *ends = Instant::now() + self.ttl,
            _ => return Ok(KeepAlive::Gone("the lease expired".into())),
        }
        Ok(KeepAlive::Alive(self.ttl))
    }

    async fn revoke(&self) -> Result<()> {
        let mut state = self.server.state.lock().unwrap();
        state.leases.remove(&self.id);
        state.holders.retain(|_, h| h.lease != self.id);
        self.server.released.notify_waiters();
        Ok(())
    }

    fn keeps_orphans(&self) -> bool {
        true
    }
}

struct TinyGrant {
    server: Arc<Server>,
    key: String,
    owner: u64,
    name: String,
}

#[async_trait]
impl Grant for TinyGrant {
    async fn release(&self) -> Result<()> {
        let mut state = self.server.state.lock().unwrap();
        if state.holders.get(&self.key).is_none_or(|h| h.owner != self.owner) {
            return Err(Error::NotHeld {
                backend: BACKEND,
                name: self.name.clone(),
                reason: "it expired or was removed".into(),
            });
        }
        state.holders.remove(&self.key);
        self.server.released.notify_waiters();
        Ok(())
    }
}
