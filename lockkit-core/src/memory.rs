//! `memory://[store][/namespace]` — locks inside one process, with the full semantics of the
//! network backends: TTL expiry, fencing, loss signals, FIFO handoff.
//!
//! Every `connect` to the same store name (`memory://` is the default store) shares one
//! in-process "server", so two handles behave like two clients of one backend; a store lives as
//! long as the process, so its fencing tokens never restart. It is the
//! reference implementation of the [`DistributedLock`] contract and what application unit tests
//! should use.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> lockkit_core::Result<()> {
//! use lockkit_core::DistributedLock;
//! let a = lockkit_core::memory::connect(&"memory://docs".parse()?)?;
//! let b = lockkit_core::memory::connect(&"memory://docs".parse()?)?;
//! let held = a.acquire("x").await?;
//! assert!(b.try_acquire("x").await?.is_none());
//! # drop(held); Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::lease::{KeepAlive, LeaseBackend, LeasePool};
use crate::signal::lock;
use crate::{
    Capabilities, DistributedLock, Error, FencingToken, Grant, GrantRequest, Lease, LockGuard, LockName, LockStatus,
    LockUrl, LossSignal, Result, Settings,
};

const BACKEND: &str = "memory";

/// Connects to the in-process store named by the URL's host (`memory://` is the default store).
pub fn connect(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    url.check_options(&[])?;
    if url.hosts().len() > 1
        || url.username().is_some()
        || url.password().is_some()
        || url.hosts().iter().any(|h| h.port.is_some())
    {
        return Err(
            url.invalid("a memory URL is `memory://[store][/namespace]`: one store name, no port, no credentials")
        );
    }
    let store_name = url.hosts().first().map(|h| h.host.clone()).unwrap_or_default();
    let settings = Settings::from_url(url)?;
    let pool = LeasePool::new(BACKEND, settings.timeout);
    Ok(Arc::new(MemoryLocks { settings, store: Store::named(&store_name), pool }))
}

/// A handle on an in-process store.
struct MemoryLocks {
    settings: Settings,
    store: Arc<Store>,
    pool: LeasePool,
}

#[async_trait]
impl DistributedLock for MemoryLocks {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { cross_process: false, ..Capabilities::ALL }
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        let (store, ttl) = (self.store.clone(), request.ttl);
        let lease = self
            .pool
            .get(request.ttl, request.refresh_interval, || async move {
                let id = format!("memory-{}", store.next_id());
                Ok((Arc::new(MemoryLease { store, id: id.clone(), ttl }) as Arc<dyn LeaseBackend>, id))
            })
            .await?;
        let key = self.settings.namespace.key(&request.name);
        let waiter = Arc::new(Waiter {
            grant: self.store.next_id(),
            lease: lease.id().to_owned(),
            ttl: request.ttl,
            holder: request.holder.clone(),
            signal: lease.grant_signal(),
            notify: Notify::new(),
        });
        let Some(token) = self.store.acquire(&key, &waiter, request.wait).await else {
            return Ok(None);
        };
        let grant = MemoryGrant { store: self.store.clone(), key, grant: waiter.grant, name: request.name.to_string() };
        Ok(Some(request.granted(BACKEND, FencingToken::new(token), lease, waiter.signal.clone(), grant)))
    }

    async fn inspect(&self, name: &LockName) -> Result<LockStatus> {
        let key = self.settings.namespace.key(name);
        let mut slots = lock(&self.store.slots);
        let Some(slot) = slots.get_mut(&key) else { return Ok(LockStatus::free().waiting(0)) };
        slot.expire();
        let status = match &slot.holder {
            None => LockStatus::free(),
            Some(h) => LockStatus::held(
                Some(h.holder.clone()),
                Some(FencingToken::new(h.token)),
                Some(h.expires_at.saturating_duration_since(Instant::now())),
            ),
        };
        Ok(status.waiting(slot.waiters.len()))
    }

    async fn evict(&self, name: &LockName) -> Result<bool> {
        let key = self.settings.namespace.key(name);
        let mut slots = lock(&self.store.slots);
        let Some(slot) = slots.get_mut(&key) else { return Ok(false) };
        slot.expire();
        Ok(slot.remove_holder("the grant was removed by force_release").is_some())
    }
}

/// The in-process "server": one slot per key.
struct Store {
    slots: Mutex<HashMap<String, Slot>>,
    ids: AtomicU64,
}

/// Every store of the process, kept for its whole life: a store's fencing counters must never
/// restart, even when no handle is connected for a while.
static STORES: LazyLock<Mutex<HashMap<String, Arc<Store>>>> = LazyLock::new(Default::default);

impl Store {
    /// The store of that name, shared by every handle in the process.
    fn named(name: &str) -> Arc<Store> {
        let mut stores = lock(&STORES);
        let store = stores
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Store { slots: Mutex::new(HashMap::new()), ids: AtomicU64::new(1) }));
        store.clone()
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Grants `key` to `waiter` now, or (if `wait`) queues it and waits for the handoff.
    async fn acquire(self: &Arc<Self>, key: &str, waiter: &Arc<Waiter>, wait: bool) -> Option<u64> {
        {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(key.to_owned()).or_default();
            slot.expire();
            if slot.holder.is_none() && slot.waiters.is_empty() {
                return Some(slot.hand_to(waiter));
            }
            if !wait {
                return None;
            }
            slot.waiters.push_back(waiter.clone());
        }
        let mut queued = Queued { store: self, key, grant: waiter.grant, armed: true };
        loop {
            let notified = waiter.notify.notified();
            let expiry = {
                let mut slots = lock(&self.slots);
                let slot = slots.get_mut(key).expect("slots are never removed");
                slot.expire();
                match &slot.holder {
                    Some(h) if h.grant == waiter.grant => {
                        queued.armed = false;
                        return Some(h.token);
                    }
                    // Only the first waiter watches the holder's expiry; the rest are woken in turn.
                    Some(h) if slot.waiters.front().is_some_and(|w| w.grant == waiter.grant) => Some(h.expires_at),
                    _ => None,
                }
            };
            match expiry {
                Some(at) => tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                },
                None => notified.await,
            }
        }
    }
}

/// A contender: what it needs to become the holder when the lock is handed to it.
struct Waiter {
    grant: u64,
    lease: String,
    ttl: Duration,
    holder: String,
    signal: LossSignal,
    notify: Notify,
}

struct Holder {
    grant: u64,
    lease: String,
    token: u64,
    expires_at: Instant,
    holder: String,
    signal: LossSignal,
}

#[derive(Default)]
struct Slot {
    fence: u64,
    holder: Option<Holder>,
    waiters: VecDeque<Arc<Waiter>>,
}

impl Slot {
    /// Makes `waiter` the holder with a new fencing token.
    fn hand_to(&mut self, waiter: &Waiter) -> u64 {
        self.fence += 1;
        self.holder = Some(Holder {
            grant: waiter.grant,
            lease: waiter.lease.clone(),
            token: self.fence,
            expires_at: Instant::now() + waiter.ttl,
            holder: waiter.holder.clone(),
            signal: waiter.signal.clone(),
        });
        waiter.notify.notify_one();
        self.fence
    }

    /// Drops the holder if its TTL ran out.
    fn expire(&mut self) {
        if self.holder.as_ref().is_some_and(|h| Instant::now() >= h.expires_at) {
            self.remove_holder("its TTL ran out on the server before a refresh arrived");
        }
    }

    /// Removes the holder (firing its loss signal) and hands the lock to the first waiter.
    fn remove_holder(&mut self, reason: &str) -> Option<Holder> {
        let holder = self.holder.take()?;
        holder.signal.lose(reason);
        self.promote();
        Some(holder)
    }

    fn promote(&mut self) {
        if self.holder.is_none()
            && let Some(next) = self.waiters.pop_front()
        {
            self.hand_to(&next);
        }
    }
}

/// Removes a waiter that gave up (its future was dropped): from the queue, or — if the lock
/// was handed to it meanwhile — by handing the lock on.
struct Queued<'a> {
    store: &'a Store,
    key: &'a str,
    grant: u64,
    armed: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut slots = lock(&self.store.slots);
        let Some(slot) = slots.get_mut(self.key) else { return };
        if slot.holder.as_ref().is_some_and(|h| h.grant == self.grant) {
            slot.holder = None;
            slot.promote();
            return;
        }
        let was_first = slot.waiters.front().is_some_and(|w| w.grant == self.grant);
        slot.waiters.retain(|w| w.grant != self.grant);
        if was_first && let Some(next) = slot.waiters.front() {
            next.notify.notify_one();
        }
    }
}

/// A handle's lease on the store: refreshing extends every grant taken on it.
struct MemoryLease {
    store: Arc<Store>,
    id: String,
    ttl: Duration,
}

#[async_trait]
impl LeaseBackend for MemoryLease {
    async fn keep_alive(&self) -> Result<KeepAlive> {
        let mut slots = lock(&self.store.slots);
        for slot in slots.values_mut() {
            slot.expire();
            if let Some(h) = slot.holder.as_mut().filter(|h| h.lease == self.id) {
                h.expires_at = Instant::now() + self.ttl;
            }
        }
        Ok(KeepAlive::Alive(self.ttl))
    }

    async fn revoke(&self) -> Result<()> {
        let mut slots = lock(&self.store.slots);
        for slot in slots.values_mut() {
            if slot.holder.as_ref().is_some_and(|h| h.lease == self.id) {
                slot.remove_holder("its lease was revoked");
            }
        }
        Ok(())
    }
}

struct MemoryGrant {
    store: Arc<Store>,
    key: String,
    grant: u64,
    name: String,
}

#[async_trait]
impl Grant for MemoryGrant {
    async fn release(&self) -> Result<()> {
        let mut slots = lock(&self.store.slots);
        let slot = slots.get_mut(&self.key).expect("slots are never removed");
        if slot.holder.as_ref().is_some_and(|h| h.grant == self.grant) {
            slot.holder = None;
            slot.promote();
            return Ok(());
        }
        Err(Error::not_held(
            BACKEND,
            &self.name,
            "its grant had expired or was removed; any newer grant was left alone",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens keep increasing when every handle of a store was dropped between two grants (the
    /// store used to go with its last handle, and its counters restarted at 1).
    #[tokio::test]
    async fn tokens_survive_every_handle_being_dropped() {
        let mut tokens = Vec::new();
        for _ in 0..3 {
            let locks = connect(&"memory://dropped-handles".parse().unwrap()).unwrap();
            let guard = locks.acquire("x").await.unwrap();
            tokens.push(guard.fencing_token().get());
            guard.release().await.unwrap();
            drop(locks);
            // Let the dropped lease's background revoke run and let go of the store.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    }
}
