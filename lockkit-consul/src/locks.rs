//! The backend handle and the lock protocol of `consul lock` / Go's `api.Lock`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::driver::{
    GrantRequest, KeptLease, LastTry, LeaderFeed, LeaseBackend, LeasePool, LocalTurns, LockBackend, on_a_live_lease,
};
use lockkit_core::{Capabilities, Error, FencingToken, Lease, LockGuard, LockName, LockStatus, Result, Settings};

use crate::api::{self, Api, Blocking, Entry};
use crate::error::ConsulError;
use crate::grant::{Claim, ConsulFeed, ConsulGrant, watch_key};
use crate::session::ConsulSession;
use crate::{BACKEND, FLAGS};

/// The pause after an acquire refused with nobody holding (a lock-delay); it doubles up to
/// [`MAX_REFUSED_PAUSE`] — whatever this handle's own `lock_delay`, since the delay in force is
/// the previous holder's, which Consul does not tell (Go's `api.Lock` waits 5 s each time).
const FIRST_REFUSED_PAUSE: Duration = Duration::from_millis(50);
const MAX_REFUSED_PAUSE: Duration = Duration::from_secs(1);

pub(crate) struct ConsulLocks {
    pub(crate) api: Api,
    pub(crate) settings: Settings,
    pub(crate) lock_delay: Duration,
    /// How long one blocking query waits (Consul adds up to 1/16 of jitter itself).
    pub(crate) wait: Duration,
    pub(crate) pool: LeasePool,
    /// One holder per session and key: acquires of the same key in this process queue here.
    pub(crate) local: LocalTurns,
}

impl ConsulLocks {
    /// The key of lock `NAME`: `[ns/]NAME/.lock`, as `consul lock NAME` writes it.
    fn key(&self, name: &LockName) -> String {
        format!("{}/.lock", self.settings.namespace.key(name))
    }

    /// The session (and its lease) for this TTL, created when there is none or it was lost.
    pub(crate) async fn session(
        &self,
        ttl: Duration,
        refresh: Duration,
    ) -> Result<(Arc<KeptLease>, Arc<ConsulSession>)> {
        let lease = self
            .pool
            .get(ttl, refresh, || async {
                let id = self.api.create_session("lockkit", ttl, self.lock_delay).await?;
                let session = ConsulSession {
                    api: self.api.clone(),
                    id: id.clone(),
                    held: Default::default(),
                    acquiring: Default::default(),
                };
                Ok((Arc::new(session) as Arc<dyn LeaseBackend>, id))
            })
            .await?;
        let session = lease.backend::<ConsulSession>().expect("the pool holds Consul sessions");
        Ok((lease, session))
    }

    /// Acquires `key` for `session`, waiting (when `request.wait`) with blocking queries: the
    /// new `ModifyIndex` (the token) and the index to watch from.
    async fn acquire_key(
        &self,
        key: &str,
        session: &Arc<ConsulSession>,
        lease: &Arc<KeptLease>,
        request: &GrantRequest,
        claim: &Claim,
    ) -> Result<Option<(u64, u64)>, ConsulError> {
        let mut pause = FIRST_REFUSED_PAUSE;
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
                return Err(conflict(key, entry).into());
            }
            match entry.and_then(|e| e.session).filter(|holder| *holder != session.id) {
                Some(_) if !request.wait => return Ok(None),
                // Held: wait until its holder changes.
                Some(holder) => {
                    seen = Some(self.wait_change(key, &holder, index, lease).await?);
                    pause = FIRST_REFUSED_PAUSE;
                    continue;
                }
                None => {}
            }
            if self.try_key(key, session, lease, request, claim).await? {
                let (entry, index) = self.api.get(key, None).await?;
                return match entry {
                    Some(e) if e.session.as_deref() == Some(session.id.as_str()) => Ok(Some((e.modify_index, index))),
                    _ => Err(Error::LockLost {
                        backend: BACKEND,
                        name: key.to_owned(),
                        reason: "the key changed hands right after it was acquired".into(),
                    }
                    .into()),
                };
            }
            if !request.wait {
                return Ok(None);
            }
            // Refused with nobody holding: the lock-delay after a holder's session ended (or
            // another contender came first). Retry after a pause that grows, not in a spin.
            let jitter = Duration::from_millis(lockkit_core::driver::random_u64() % 25);
            tokio::select! {
                _ = tokio::time::sleep(pause + jitter) => {}
                _ = lease.lost() => return Err(session_lost(key).into()),
            }
            pause = (pause * 2).min(MAX_REFUSED_PAUSE);
        }
    }

    /// One `PUT ?acquire=`. It runs to its end even if the acquire is dropped meanwhile, and
    /// `claim` cleans up after it unless it was answered without taking the key: it releases the
    /// key once the put was answered, and gives the session up if it went unanswered (Consul
    /// may still apply it, after any release sent behind it).
    async fn try_key(
        &self,
        key: &str,
        session: &Arc<ConsulSession>,
        lease: &Arc<KeptLease>,
        request: &GrantRequest,
        claim: &Claim,
    ) -> Result<bool, ConsulError> {
        let (api, owned_key, id, value) =
            (self.api.clone(), key.to_owned(), session.id.clone(), request.holder.clone());
        // Until the key is recorded as held, a revoke (a close) waits: it releases it then.
        let in_flight = session.acquiring.clone().read_owned().await;
        let holder = session.clone();
        let put = async move {
            let taken = api.lock(&owned_key, &id, false, value.as_bytes(), FLAGS).await;
            if matches!(taken, Ok(true)) {
                holder.hold(&owned_key, true);
            }
            drop(in_flight);
            taken
        };
        let (put, finished) = lockkit_core::driver::unabandoned_request_by(put, api::answered);
        claim.arm(lease, &self.api, key, &session.id, request.name.as_str(), finished);
        let taken = put.await;
        match &taken {
            Ok(true) => {}
            // Refused, or an answer that applied nothing (a bad request, no permission, the
            // rate limiter).
            Ok(false) => claim.disarm(),
            Err(e) if e.answered() => claim.disarm(),
            Err(_) => {}
        }
        taken
    }

    /// Blocks (with blocking queries) until `key` is no longer held by `holder`; what it saw then.
    async fn wait_change(
        &self,
        key: &str,
        holder: &str,
        mut index: u64,
        lease: &KeptLease,
    ) -> Result<(Option<Entry>, u64), ConsulError> {
        loop {
            // A little jitter of our own, so that the waiters of one release do not all come
            // back at the same moment when nothing changes.
            let spread = (self.wait / 60).as_millis() as u64 + 1;
            let wait = self.wait + Duration::from_millis(lockkit_core::driver::random_u64() % spread);
            let (entry, next) = tokio::select! {
                read = self.api.get(key, Some(Blocking { index, wait })) => read?,
                _ = lease.lost() => return Err(session_lost(key).into()),
            };
            // An index that went backwards (servers restored from a snapshot) starts over.
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
impl LockBackend for ConsulLocks {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { fair: false, semaphores: false, rw_locks: false, ..Capabilities::ALL }
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        let key = self.key(&request.name);
        let Some(turn) = self.local.take(&key, request.wait).await else { return Ok(None) };
        let claim = Claim::new(turn);
        // A session that ended behind our back is noticed here at the latest: lost, and the
        // acquire made once more on a new one.
        let acquired = on_a_live_lease(
            "Consul session",
            || self.session(request.ttl, request.refresh_interval),
            |lease, session, LastTry(retry)| {
                let (key, claim) = (&key, &claim);
                async move {
                    if retry {
                        // Whatever the first try took ends with its session, which is revoked.
                        claim.disarm();
                    }
                    let acquired = self.acquire_key(key, &session, &lease, request, claim).await?;
                    Ok::<_, ConsulError>(acquired.map(|(token, index)| (lease, session, token, index)))
                }
            },
        )
        .await;
        let (lease, session, token, index) = match acquired {
            Ok(Some(acquired)) => acquired,
            Ok(None) => return Ok(None),
            Err(e) => {
                // Released, or the session given up, before the error is returned.
                claim.clean_up().await;
                return Err(e);
            }
        };
        session.hold(&key, true);
        let signal = lease.grant_signal();
        let watch = tokio::spawn(watch_key(
            self.api.clone(),
            key.clone(),
            session.id.clone(),
            index,
            self.wait,
            signal.clone(),
        ));
        let grant = ConsulGrant { session, key, name: request.name.to_string(), watch, _turn: claim.into_turn() };
        Ok(Some(request.granted(BACKEND, FencingToken::new(token), lease, signal, grant)))
    }

    async fn shutdown(&self) -> Result<()> {
        self.pool.close().await
    }

    async fn observe_leader(&self, name: &LockName) -> Result<Box<dyn LeaderFeed>> {
        Ok(Box::new(ConsulFeed {
            api: self.api.clone(),
            key: self.key(name),
            wait: self.wait,
            index: 0,
            restarted: false,
        }))
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
            Some(holder) => Ok(self.api.lock(&key, &holder, true, &[], FLAGS).await?),
            None => Ok(false),
        }
    }
}
