//! The backend handle: grants, waiting on pub/sub, the shared lease and release.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::driver::{
    Cleanup, Grant, GrantRequest, KeepAlive, LeaderFeed, LeaseBackend, LeasePool, LockBackend, attempt, random_u64,
};
use lockkit_core::{
    Capabilities, Error, FencingToken, Lease, LockGuard, LockName, LockStatus, LossSignal, Result, Settings,
};

use crate::election::RedisFeed;
use crate::quorum::{Attempt, Quorum};
use crate::scripts::{self, LockKeys};

pub(crate) struct RedisLocks {
    pub(crate) settings: Settings,
    pub(crate) quorum: Arc<Quorum>,
    pub(crate) pool: LeasePool,
    pub(crate) holdings: Arc<Holdings>,
}

#[async_trait]
impl LockBackend for RedisLocks {
    fn backend(&self) -> &'static str {
        self.quorum.backend
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { fair: self.quorum.fair, semaphores: false, rw_locks: false, ..Capabilities::ALL }
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        let (quorum, holdings, ttl) = (self.quorum.clone(), self.holdings.clone(), request.ttl);
        let lease = self
            .pool
            .get(request.ttl, request.refresh_interval, || async move {
                let id = format!("{}-{:x}", quorum.backend, random_u64());
                let lease = RedisLease { quorum, holdings, id: id.as_str().into(), ttl };
                Ok((Arc::new(lease) as Arc<dyn LeaseBackend>, id))
            })
            .await?;
        // Shared by the grant, its entry in the holdings and its cleanup: one copy per held lock.
        let keys = Arc::new(LockKeys::of(&self.settings.namespace, &request.name));
        let owner: Arc<str> = scripts::owner_value(&request.holder).into();
        // Only for missed messages: a release publishes, and a vanished holder's expiry is known.
        let fallback = (request.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        // Dropped armed (the acquire failed or was cancelled), it deletes any grant the acquire
        // may have made and takes it out of the waiters, until the servers confirm.
        let undo = {
            let (quorum, keys, owner) = (self.quorum.clone(), keys.clone(), owner.clone());
            let what = format!("the acquire of lock {:?}", request.name.as_str());
            Cleanup::new(
                &lease,
                what,
                attempt(move || {
                    let (quorum, keys, owner) = (quorum.clone(), keys.clone(), owner.clone());
                    async move { quorum.release(&keys, &owner, true).await.map(drop) }
                }),
            )
        };
        let mut watch = None;
        let arrival = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let (token, sent) = loop {
            // Register as a waiter (fair mode: take a place in line) only once subscribed, so its
            // wake-up is not missed.
            let join = watch.is_some().then_some(arrival.as_millis() as u64);
            let sent = std::time::Instant::now();
            match self.quorum.acquire(&keys, &owner, request.ttl, join).await? {
                Attempt::Granted(token) => break (token, sent),
                Attempt::Busy(_) if !request.wait => {
                    undo.disarm();
                    return Ok(None);
                }
                Attempt::Busy(expires_in) => {
                    let Some(watch) = &watch else {
                        // Subscribe, then try again: a release between the two is not missed.
                        watch = Some(self.quorum.wakeups.watch(&keys.channel, &owner).await);
                        continue;
                    };
                    let jittered = fallback.mul_f64(0.5 + (random_u64() % 500) as f64 / 1000.0);
                    let timer = expires_in.map_or(jittered, |e| e.min(jittered));
                    tokio::select! {
                        _ = watch.notify.notified() => {}
                        _ = tokio::time::sleep(timer) => {}
                        // Closed, or lost while waiting: the core queues the acquire again
                        // on a fresh lease, unless the handle was closed.
                        _ = lease.lost() => {
                            // The lost lease makes the cleanup below moot, but a place in line
                            // is not on the lease: left there, a fair one would keep the head
                            // of the line (and the lock from everyone) until it expires.
                            let withdraw = self.quorum.release(&keys, &owner, true);
                            if !matches!(tokio::time::timeout(self.settings.timeout, withdraw).await, Ok(Ok(_))) {
                                tracing::debug!(backend = self.quorum.backend, lock = %request.name,
                                    "leaving the line was not confirmed; the place expires within the TTL");
                            }
                            let reason = "its lease was lost while it waited".to_owned();
                            return Err(Error::LockLost { backend: self.quorum.backend, name: request.name.to_string(), reason });
                        }
                    }
                }
            }
        };
        undo.disarm();
        // The key's TTL started when the script ran, after `sent`: a slow reply must not let
        // the guard count on the lease's refreshes that did not include it.
        let signal = lease.grant_signal_sent(sent);
        let id = self.holdings.add(Held {
            keys: keys.clone(),
            owner: owner.clone(),
            lease: lease.id().into(),
            signal: signal.clone(),
        });
        // A lease revoked meanwhile (the handle closed while this acquire was under way) holds
        // nothing: its revoke loses the lease before it sweeps the holdings, so a grant recorded
        // after that sweep is released here instead of living on until its TTL.
        if lease.is_lost() {
            if self.holdings.with(|held| held.remove(&id)).is_some() {
                let release = self.quorum.release(&keys, &owner, true);
                if !matches!(tokio::time::timeout(self.settings.timeout, release).await, Ok(Ok(_))) {
                    tracing::debug!(backend = self.quorum.backend, lock = %request.name,
                        "releasing a grant made on a lost lease was not confirmed; it ends at its TTL");
                }
            }
            let reason = format!("while acquiring, its lease was lost: {}", lease.lost().await);
            return Err(Error::LockLost { backend: self.quorum.backend, name: request.name.to_string(), reason });
        }
        let grant = RedisGrant {
            quorum: self.quorum.clone(),
            holdings: self.holdings.clone(),
            id,
            keys,
            owner,
            name: request.name.to_string(),
            token,
        };
        Ok(Some(request.granted(self.quorum.backend, token, lease, signal, grant)))
    }

    async fn shutdown(&self) -> Result<()> {
        self.pool.close().await
    }

    async fn inspect(&self, name: &LockName) -> Result<LockStatus> {
        self.quorum.status(&LockKeys::of(&self.settings.namespace, name)).await
    }

    async fn observe_leader(&self, name: &LockName) -> Result<Box<dyn LeaderFeed>> {
        let keys = LockKeys::of(&self.settings.namespace, name);
        Ok(Box::new(RedisFeed::new(self.quorum.clone(), keys)))
    }

    async fn evict(&self, name: &LockName) -> Result<bool> {
        self.quorum.evict(&LockKeys::of(&self.settings.namespace, name)).await
    }
}

/// The grants a handle holds, refreshed together by their lease.
#[derive(Default)]
pub(crate) struct Holdings {
    held: Mutex<HashMap<u64, Held>>,
    ids: AtomicU64,
}

struct Held {
    keys: Arc<LockKeys>,
    owner: Arc<str>,
    lease: Arc<str>,
    signal: LossSignal,
}

impl Holdings {
    fn add(&self, held: Held) -> u64 {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(id, held);
        id
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u64, Held>) -> T) -> T {
        f(&mut self.held.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The keys a handle holds with one TTL: each refresh extends all of them in one pipelined
/// round trip per instance.
struct RedisLease {
    quorum: Arc<Quorum>,
    holdings: Arc<Holdings>,
    id: Arc<str>,
    ttl: Duration,
}

#[async_trait]
impl LeaseBackend for RedisLease {
    async fn keep_alive(&self) -> Result<KeepAlive> {
        let (ids, grants): (Vec<u64>, Vec<(Arc<LockKeys>, Arc<str>)>) = self.holdings.with(|held| {
            // A lost grant is not kept alive: refreshing its key would keep the lock from
            // everyone while its guard reads lost. Its guard's release or drop deletes it.
            held.retain(|_, h| !(h.lease == self.id && h.signal.is_lost()));
            held.iter()
                .filter(|(_, h)| h.lease == self.id)
                .map(|(id, h)| (*id, (h.keys.clone(), h.owner.clone())))
                .unzip()
        });
        if grants.is_empty() {
            return Ok(KeepAlive::Alive(self.ttl));
        }
        let (verdicts, error) = self.quorum.refresh(&grants, self.ttl).await;
        // Nothing confirmed: the lease's refresh failed (retried until its deadline).
        let confirmed_none = !verdicts.contains(&Some(true)) && verdicts.contains(&None);
        self.holdings.with(|held| {
            for (id, verdict) in ids.iter().zip(&verdicts) {
                match verdict {
                    Some(false) => {
                        if let Some(h) = held.remove(id) {
                            h.signal.lose("its key was deleted or taken over on the server (expired, DEL, flush or restart)");
                        }
                    }
                    // Others were refreshed, this one not: it keeps its deadline, and is lost
                    // alone at it unless a later refresh covers it.
                    None if confirmed_none => {}
                    None => {
                        if let Some(h) = held.get(id) {
                            h.signal.not_refreshed();
                            if let Some(e) = &error {
                                tracing::warn!(backend = self.quorum.backend, lock = %h.keys.lock, error = %e, "refreshing one lock failed");
                            }
                        }
                    }
                    Some(true) => {}
                }
            }
        });
        match error {
            Some(e) if confirmed_none => Err(e),
            _ => Ok(KeepAlive::Alive(self.ttl)),
        }
    }

    /// A released (or given up) key is no longer refreshed: it ends at its own TTL.
    fn keeps_orphans(&self) -> bool {
        false
    }

    async fn revoke(&self) -> Result<()> {
        let revoked: Vec<Held> = self.holdings.with(|held| {
            let ids: Vec<u64> = held.iter().filter(|(_, h)| h.lease == self.id).map(|(id, _)| *id).collect();
            ids.iter().filter_map(|id| held.remove(id)).collect()
        });
        for held in revoked {
            held.signal.lose("its lease was revoked");
            self.quorum.release(&held.keys, &held.owner, false).await?;
        }
        Ok(())
    }
}

struct RedisGrant {
    quorum: Arc<Quorum>,
    holdings: Arc<Holdings>,
    id: u64,
    keys: Arc<LockKeys>,
    owner: Arc<str>,
    name: String,
    token: FencingToken,
}

#[async_trait]
impl Grant for RedisGrant {
    async fn release(&self) -> Result<()> {
        self.holdings.with(|held| held.remove(&self.id));
        match self.quorum.release(&self.keys, &self.owner, false).await? {
            0 => Err(Error::not_held(
                self.quorum.backend,
                &self.name,
                "its key had expired or been deleted; any newer grant was left alone",
            )),
            _ => Ok(()),
        }
    }

    /// Stores the value beside the lock's own (which refreshes and releases compare), with the
    /// grant's owner token, on a majority of the servers.
    async fn proclaim(&self, value: &str) -> Option<Result<FencingToken>> {
        Some(match self.quorum.proclaim(&self.keys, &self.owner, value).await {
            Ok(n) if n >= self.quorum.needed => Ok(self.token),
            Ok(_) => Err(Error::not_held(self.quorum.backend, &self.name, "its key had expired or been deleted")),
            Err(e) => Err(e),
        })
    }
}
