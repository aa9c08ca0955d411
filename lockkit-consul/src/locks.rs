//! The backend handle and the lock protocol of `consul lock` / Go's `api.Lock`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::{
    Capabilities, DistributedLock, Error, FencingToken, Finished, Grant, GrantRequest, KeptLease, Lease, LeaseBackend,
    LeasePool, LocalTurns, LockGuard, LockName, LockStatus, LossSignal, Result, Settings, Turn,
};

use crate::api::{Api, Blocking, Entry};
use crate::session::ConsulSession;
use crate::{BACKEND, FLAGS};

/// How long one blocking query may wait (Consul adds up to 1/16 of jitter itself).
const BLOCKING_WAIT: Duration = Duration::from_secs(60);

pub struct ConsulLocks {
    pub api: Api,
    pub settings: Settings,
    pub lock_delay: Duration,
    pub pool: LeasePool,
    /// One holder per session and key: acquires of the same key in this process queue here.
    pub local: LocalTurns,
}

impl ConsulLocks {
    /// The key of lock `NAME`: `[ns/]NAME/.lock`, as `consul lock NAME` writes it.
    fn key(&self, name: &LockName) -> String {
        format!("{}/.lock", self.settings.namespace.key(name))
    }

    /// The session (and its lease) for this TTL, created when there is none or it was lost.
    pub async fn session(&self, ttl: Duration, refresh: Duration) -> Result<(Arc<KeptLease>, Arc<ConsulSession>)> {
        let lease = self
            .pool
            .get(ttl, refresh, || async {
                let id = self.api.create_session("lockkit", ttl, self.lock_delay).await?;
                let session = ConsulSession { api: self.api.clone(), id: id.clone(), held: Default::default() };
                Ok((Arc::new(session) as Arc<dyn LeaseBackend>, id))
            })
            .await?;
        let session = lease.backend::<ConsulSession>().expect("the pool holds Consul sessions");
        Ok((lease, session))
    }

    /// Acquires `key` for `session`, waiting (when `wait`) with blocking queries: the new
    /// `ModifyIndex` (the token) and the index to watch from.
    async fn acquire_key(
        &self,
        key: &str,
        session: &ConsulSession,
        lease: &KeptLease,
        request: &GrantRequest,
        cleanup: &mut Cleanup,
    ) -> Result<Option<(u64, u64)>> {
        let mut pause = Duration::from_millis(50);
        // What a blocking query just showed, so that a woken waiter tries at once.
        let mut seen = None;
        loop {
            // Look first, as `api.Lock` does: a key with other flags is not a lock, and one held
            // by another session is waited for without trying.
            let (entry, index) = match seen.take() {
                Some(seen) => seen,
                None => self.api.get(key, None).await?,
            };
            if let Some(entry) = &entry
                && entry.flags != FLAGS
            {
                return Err(conflict(key, entry));
            }
            match entry.and_then(|e| e.session).filter(|holder| *holder != session.id) {
                Some(_) if !request.wait => return Ok(None),
                // Held: wait until its holder changes.
                Some(holder) => {
                    seen = Some(self.wait_change(key, &holder, index, lease).await?);
                    pause = Duration::from_millis(50);
                    continue;
                }
                None => {}
            }
            if self.try_key(key, session, request.holder.as_bytes(), cleanup).await? {
                let (entry, index) = self.api.get(key, None).await?;
                return match entry {
                    Some(e) if e.session.as_deref() == Some(session.id.as_str()) => Ok(Some((e.modify_index, index))),
                    _ => Err(Error::LockLost {
                        backend: BACKEND,
                        name: key.to_owned(),
                        reason: "the key changed hands right after it was acquired".into(),
                    }),
                };
            }
            if !request.wait {
                return Ok(None);
            }
            // Refused with nobody holding: the lock-delay after a holder's session ended (or
            // another contender came first). Retry after a pause that grows up to the
            // lock-delay (at most 1 s), not in a spin.
            let jitter = Duration::from_millis(lockkit_core::random_u64() % 25);
            tokio::select! {
                _ = tokio::time::sleep(pause + jitter) => {}
                _ = lease.lost() => return Err(session_lost(key)),
            }
            pause = (pause * 2).min(self.lock_delay.max(pause)).min(Duration::from_secs(1));
        }
    }

    /// One `PUT ?acquire=`. If the acquire is dropped meanwhile, the put still completes, and
    /// `cleanup` releases the key only after it.
    async fn try_key(&self, key: &str, session: &ConsulSession, value: &[u8], cleanup: &mut Cleanup) -> Result<bool> {
        let (api, key, id, value) = (self.api.clone(), key.to_owned(), session.id.clone(), value.to_vec());
        let (put, finished) = lockkit_core::unabandoned(async move { api.lock(&key, &id, false, &value, FLAGS).await });
        cleanup.in_flight = Some(finished);
        put.await
    }

    /// Blocks (with blocking queries) until `key` is no longer held by `holder`; what it saw then.
    async fn wait_change(
        &self,
        key: &str,
        holder: &str,
        mut index: u64,
        lease: &KeptLease,
    ) -> Result<(Option<Entry>, u64)> {
        loop {
            let wait = BLOCKING_WAIT + Duration::from_millis(lockkit_core::random_u64() % 1000);
            let (entry, next) = tokio::select! {
                read = self.api.get(key, Some(Blocking { index, wait })) => read?,
                _ = lease.lost() => return Err(session_lost(key)),
            };
            // An index that went backwards (a restored snapshot, another server) starts over.
            index = if next < index { 0 } else { next };
            if entry.as_ref().and_then(|e| e.session.as_deref()) != Some(holder) {
                return Ok((entry, index));
            }
        }
    }
}

fn conflict(key: &str, entry: &Entry) -> Error {
    Error::backend(
        BACKEND,
        format!(
            "key {key} has flags {:#x}, not a lock's ({FLAGS:#x}): something else uses it; pick another lock name",
            entry.flags
        ),
    )
}

fn session_lost(key: &str) -> Error {
    Error::LockLost {
        backend: BACKEND,
        name: key.to_owned(),
        reason: "while waiting, its Consul session was lost".into(),
    }
}

#[async_trait]
impl DistributedLock for ConsulLocks {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { fair: false, ..Capabilities::ALL }
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        let key = self.key(&request.name);
        let Some(turn) = self.local.take(&key, request.wait).await else { return Ok(None) };
        let mut turn = Some(turn);
        // A session that ended behind our back is noticed here at the latest: lose it, make a new one.
        let mut retried = false;
        let (lease, session, token, index, mut cleanup) = loop {
            let (lease, session) = self.session(request.ttl, request.refresh_interval).await?;
            let mut cleanup = Cleanup {
                api: self.api.clone(),
                key: key.clone(),
                session: session.id.clone(),
                turn: turn.take(),
                in_flight: None,
            };
            match self.acquire_key(&key, &session, &lease, request, &mut cleanup).await {
                Ok(Some((token, index))) => break (lease, session, token, index, cleanup),
                Ok(None) => {
                    cleanup.disarm();
                    return Ok(None);
                }
                Err(e) if !retried && (lease.is_lost() || e.to_string().contains("invalid session")) => {
                    lease.lose(format!("Consul session {} is gone: {e}", session.id));
                    turn = cleanup.disarm();
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        };
        session.hold(&key, true);
        let signal = lease.grant_signal();
        let watch = tokio::spawn(watch_key(self.api.clone(), key.clone(), session.id.clone(), index, signal.clone()));
        let grant = ConsulGrant { session, key, name: request.name.to_string(), watch, _turn: cleanup.disarm() };
        Ok(Some(request.granted(BACKEND, FencingToken::new(token), lease, signal, grant)))
    }

    async fn shutdown(&self) -> Result<()> {
        self.pool.close().await
    }

    async fn inspect(&self, name: &LockName) -> Result<LockStatus> {
        match self.api.get(&self.key(name), None).await?.0 {
            Some(entry) if entry.session.is_some() => {
                Ok(LockStatus::held(entry.text(), Some(FencingToken::new(entry.modify_index)), None))
            }
            _ => Ok(LockStatus::free()),
        }
    }

    async fn evict(&self, name: &LockName) -> Result<bool> {
        let key = self.key(name);
        match self.api.get(&key, None).await?.0.and_then(|e| e.session) {
            Some(holder) => self.api.lock(&key, &holder, true, &[], FLAGS).await,
            None => Ok(false),
        }
    }
}

/// Fires the grant's loss signal when its key is deleted or no longer held by its session.
/// Errors reading it are retried: the session's renewals decide loss when Consul is away.
async fn watch_key(api: Api, key: String, session: String, mut index: u64, signal: LossSignal) {
    let mut pause = Duration::from_millis(100);
    loop {
        match api.get(&key, Some(Blocking { index, wait: BLOCKING_WAIT })).await {
            Ok((None, _)) => return signal.lose(format!("its key {key} was deleted")),
            Ok((Some(entry), _)) if entry.session.as_deref() != Some(session.as_str()) => {
                return signal.lose(format!("its key {key} was released or taken behind its back"));
            }
            Ok((Some(_), next)) => {
                index = if next < index { 0 } else { next };
                pause = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::debug!(backend = BACKEND, %key, error = %e, "watching a held key failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Releases the key of an acquire that failed or was dropped — after its acquire was answered
/// (two requests in flight at once are not ordered) — keeping this process's turn on the key
/// until then, so a later acquire through the same handle cannot lose its grant to it.
struct Cleanup {
    api: Api,
    key: String,
    session: String,
    turn: Option<Turn>,
    /// When the acquire has been answered.
    in_flight: Option<Finished>,
}

impl Cleanup {
    fn disarm(&mut self) -> Option<Turn> {
        self.in_flight = None;
        self.turn.take()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(in_flight) = self.in_flight.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (api, key, session, turn) = (self.api.clone(), self.key.clone(), self.session.clone(), self.turn.take());
        runtime.spawn(async move {
            in_flight.wait().await;
            let _ = api.lock(&key, &session, true, &[], FLAGS).await;
            drop(turn);
        });
    }
}

struct ConsulGrant {
    session: Arc<ConsulSession>,
    key: String,
    name: String,
    watch: tokio::task::JoinHandle<()>,
    _turn: Option<Turn>,
}

#[async_trait]
impl Grant for ConsulGrant {
    async fn release(&self) -> Result<()> {
        self.watch.abort();
        self.session.hold(&self.key, false);
        if self.session.api.lock(&self.key, &self.session.id, true, &[], FLAGS).await? {
            Ok(())
        } else {
            Err(Error::not_held(BACKEND, &self.name, "its key was no longer held by this session"))
        }
    }
}
