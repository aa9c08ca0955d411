//! The in-process "server" of `memory://`: a slot per name that is held or waited for, and the
//! fencing counter alone of every other name granted so far.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::driver::DropGuard;
use crate::signal::lock;
use crate::{GrantKind, LossSignal};

/// One store: what every handle connected to the same store name shares.
pub(super) struct Store {
    slots: Mutex<Slots>,
    ids: AtomicU64,
}

/// Every store of the process, kept for its whole life: a store's fencing counters must never
/// restart, even when no handle is connected for a while.
static STORES: LazyLock<Mutex<HashMap<String, Arc<Store>>>> = LazyLock::new(Default::default);

/// The names of a store. A name nobody holds or waits for keeps only its counter, so the memory
/// a store takes grows with the names in use, plus eight bytes and the name for every name
/// used before.
#[derive(Default)]
struct Slots {
    /// The names held or waited for.
    live: HashMap<String, Slot>,
    /// The last token of every other name granted so far.
    fences: HashMap<String, u64>,
    /// The names someone observes as an election, and the wake-up of their observers.
    observed: HashMap<String, Weak<Notify>>,
}

/// Who leads a name, as observers see it: the holder's token and metadata.
pub(super) type Leading = Option<(u64, String)>;

impl Slots {
    /// The live slot of `key`, made live again (with its counter) if it was idle.
    fn open(&mut self, key: &str) -> &mut Slot {
        let fences = &mut self.fences;
        self.live
            .entry(key.to_owned())
            .or_insert_with(|| Slot { fence: fences.remove(key).unwrap_or(0), ..Slot::default() })
    }

    /// Keeps only the counter of `key` once nobody holds or waits for it.
    fn settle(&mut self, key: &str) {
        if self.live.get(key).is_some_and(Slot::idle)
            && let Some(slot) = self.live.remove(key)
        {
            self.fences.insert(key.to_owned(), slot.fence);
        }
    }

    /// Who leads `key` now, when someone observes it (`None`: nobody observes it).
    fn observed_leader(&self, key: &str) -> Option<Leading> {
        self.observed.contains_key(key).then(|| self.live.get(key).and_then(Slot::leading))
    }

    /// Wakes the observers of `key` if its leader is no longer `before`; forgets the name once
    /// its observers are gone.
    fn wake_observers(&mut self, key: &str, before: Option<Leading>) {
        let Some(before) = before else { return };
        if self.live.get(key).and_then(Slot::leading) == before {
            return;
        }
        match self.observed.get(key).and_then(Weak::upgrade) {
            Some(notify) => notify.notify_waiters(),
            None => drop(self.observed.remove(key)),
        }
    }

    /// [`settle`](Self::settle) for every name.
    fn settle_all(&mut self) {
        let fences = &mut self.fences;
        self.live.retain(|key, slot| {
            if slot.idle() {
                fences.insert(key.clone(), slot.fence);
            }
            !slot.idle()
        });
    }
}

impl Store {
    /// The store of that name, shared by every handle in the process.
    pub(super) fn named(name: &str) -> Arc<Store> {
        let mut stores = lock(&STORES);
        let store = stores
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Store { slots: Mutex::new(Slots::default()), ids: AtomicU64::new(1) }));
        store.clone()
    }

    pub(super) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` on the slot of `key` once its holder is expired, if anyone holds or waits for
    /// it; then keeps only its counter if nobody does any more.
    pub(super) fn with_live<T>(&self, key: &str, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
        let mut slots = lock(&self.slots);
        let before = slots.observed_leader(key);
        let slot = slots.live.get_mut(key)?;
        slot.expire();
        let out = f(slot);
        slots.wake_observers(key, before);
        slots.settle(key);
        Some(out)
    }

    /// Runs `f` on every live slot once its holder is expired, then settles them all.
    pub(super) fn for_each_live(&self, mut f: impl FnMut(&mut Slot)) {
        let mut slots = lock(&self.slots);
        let observed: Vec<(String, Option<Leading>)> =
            slots.observed.keys().map(|key| (key.clone(), slots.observed_leader(key))).collect();
        for slot in slots.live.values_mut() {
            slot.expire();
            f(slot);
        }
        for (key, before) in observed {
            slots.wake_observers(&key, before);
        }
        slots.settle_all();
    }

    /// The wake-up of `key`'s observers: notified whenever its leader changes (but not when
    /// its TTL runs out unseen: an observer also waits for the [`leader`](Self::leader)'s
    /// expiry).
    pub(super) fn observe(&self, key: &str) -> Arc<Notify> {
        let mut slots = lock(&self.slots);
        slots.observed.retain(|_, notify| notify.strong_count() > 0);
        if let Some(notify) = slots.observed.get(key).and_then(Weak::upgrade) {
            return notify;
        }
        let notify = Arc::new(Notify::new());
        slots.observed.insert(key.to_owned(), Arc::downgrade(&notify));
        notify
    }

    /// Who leads `key` now, and until when unless refreshed.
    pub(super) fn leader(&self, key: &str) -> (Leading, Option<Instant>) {
        self.with_live(key, |slot| (slot.leading(), slot.holders.first().map(|h| h.expires_at))).unwrap_or_default()
    }

    /// How many names are held or waited for (the others keep only their counters).
    #[cfg(test)]
    pub(super) fn live_slots(&self) -> usize {
        lock(&self.slots).live.len()
    }

    /// Grants `key` to `waiter` now, or (if `wait`) queues it and waits for its turn: the
    /// token, `None` when held and not waiting, or why it was refused.
    pub(super) async fn acquire(&self, key: &str, waiter: &Arc<Waiter>, wait: bool) -> Result<Option<u64>, Refused> {
        {
            let mut slots = lock(&self.slots);
            // A lease revoked meanwhile (the handle closed while this acquire was under way)
            // holds nothing: its revoke fires the signal before it clears the store, so a
            // grant made here after that clear would outlive it.
            if let Some(reason) = waiter.signal.reason() {
                return Err(Refused::Lost(reason));
            }
            let before = slots.observed_leader(key);
            let slot = slots.open(key);
            slot.expire();
            if let Some(used_as) = slot.conflict(waiter.kind) {
                slots.settle(key);
                return Err(Refused::UsedAs(used_as));
            }
            let granted = (slot.waiters.is_empty() && slot.admits(waiter.kind)).then(|| slot.hand_to(waiter));
            if granted.is_none() && wait {
                slot.waiters.push_back(waiter.clone());
            }
            slots.wake_observers(key, before);
            if granted.is_some() || !wait {
                slots.settle(key);
                return Ok(granted);
            }
        }
        // A waiter that gives up (its future dropped, its lease lost) leaves the queue — or, if
        // it was granted meanwhile, gives the grant back.
        let queued = DropGuard::new((), |()| self.leave_queue(key, waiter.grant));
        loop {
            let notified = waiter.notify.notified();
            if let Some(reason) = waiter.signal.reason() {
                // Lost while in line (the handle was closed, a pause past the deadline): the
                // queue entry goes with `queued`.
                return Err(Refused::Lost(reason));
            }
            let expiry = {
                let mut slots = lock(&self.slots);
                let before = slots.observed_leader(key);
                let slot = slots.open(key);
                slot.expire();
                let granted = slot.holders.iter().find(|h| h.grant == waiter.grant).map(|h| h.token);
                let first = slot.waiters.front().is_some_and(|w| w.grant == waiter.grant);
                let expiry = if first { slot.holders.iter().map(|h| h.expires_at).min() } else { None };
                slots.wake_observers(key, before);
                if let Some(token) = granted {
                    queued.disarm();
                    return Ok(Some(token));
                }
                // Only the first waiter watches the holders' expiry; the rest are woken in turn.
                expiry
            };
            match expiry {
                Some(at) => tokio::select! {
                    _ = notified => {}
                    _ = waiter.signal.lost() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                },
                None => tokio::select! {
                    _ = notified => {}
                    _ = waiter.signal.lost() => {}
                },
            }
        }
    }
}

/// Why an acquire got no grant.
pub(super) enum Refused {
    /// Its lease was lost (why).
    Lost(String),
    /// The name is used as another kind of primitive (what it is used as).
    UsedAs(String),
}

/// A contender: what it needs to become a holder when its turn comes.
pub(super) struct Waiter {
    pub(super) grant: u64,
    pub(super) lease: String,
    pub(super) ttl: Duration,
    pub(super) holder: String,
    pub(super) kind: GrantKind,
    pub(super) signal: LossSignal,
    pub(super) notify: Notify,
}

pub(super) struct Holder {
    pub(super) grant: u64,
    pub(super) lease: String,
    pub(super) token: u64,
    pub(super) expires_at: Instant,
    pub(super) holder: String,
    pub(super) kind: GrantKind,
    signal: LossSignal,
}

/// A name held or waited for: its holders (one for a lock or a write; a semaphore's permits;
/// readers), oldest first, and its line.
#[derive(Default)]
pub(super) struct Slot {
    fence: u64,
    pub(super) holders: Vec<Holder>,
    pub(super) waiters: VecDeque<Arc<Waiter>>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// Who leads: a lock's (an election's) holder, its token and metadata.
    fn leading(&self) -> Leading {
        let holder = self.holders.first().filter(|h| matches!(h.kind, GrantKind::Lock | GrantKind::Candidate));
        holder.map(|h| (h.token, h.holder.clone()))
    }

    /// What the name is used as, when its holders or waiters use it as another primitive than
    /// `kind` (another kind, or a semaphore of another number of permits). Every holder and
    /// waiter of a name uses it as one primitive (this check admits no other), so the first
    /// one tells.
    fn conflict(&self, kind: GrantKind) -> Option<String> {
        let first = self.holders.first().map(|h| h.kind).or_else(|| self.waiters.front().map(|w| w.kind));
        first.filter(|other| !other.same_primitive(kind)).map(GrantKind::primitive)
    }

    /// Whether a hold of `kind` may join the holders now.
    fn admits(&self, kind: GrantKind) -> bool {
        match kind {
            GrantKind::Permit { permits } => self.holders.len() < permits as usize,
            _ => self.holders.iter().all(|h| kind.shares_with(h.kind)),
        }
    }

    /// Makes `waiter` a holder with a new fencing token.
    fn hand_to(&mut self, waiter: &Waiter) -> u64 {
        self.fence += 1;
        self.holders.push(Holder {
            grant: waiter.grant,
            lease: waiter.lease.clone(),
            token: self.fence,
            expires_at: Instant::now() + waiter.ttl,
            holder: waiter.holder.clone(),
            kind: waiter.kind,
            signal: waiter.signal.clone(),
        });
        waiter.notify.notify_one();
        self.fence
    }

    /// Drops the holders whose TTL ran out.
    fn expire(&mut self) {
        let now = Instant::now();
        self.remove_holders_where(|h| now >= h.expires_at, "its TTL ran out on the server before a refresh arrived");
    }

    /// Removes the holders `which` picks (firing their loss signals) and lets waiters in:
    /// how many it removed.
    pub(super) fn remove_holders_where(&mut self, which: impl Fn(&Holder) -> bool, reason: &str) -> usize {
        let before = self.holders.len();
        self.holders.retain(|h| {
            let remove = which(h);
            if remove {
                h.signal.lose(reason);
            }
            !remove
        });
        let removed = before - self.holders.len();
        if removed > 0 {
            self.promote();
        }
        removed
    }

    /// Removes the holder of the grant `grant` (quietly: its owner gave it up).
    pub(super) fn give_back(&mut self, grant: u64) -> bool {
        let Some(at) = self.holders.iter().position(|h| h.grant == grant) else { return false };
        self.holders.remove(at);
        self.promote();
        true
    }

    /// Lets in the waiters at the front of the line while there is room for them, in order:
    /// a waiting writer (or lock) keeps the readers behind it waiting.
    fn promote(&mut self) {
        while let Some(next) = self.waiters.front() {
            if !self.admits(next.kind) {
                // The first waiter watches the holders' expiry: wake it to look again.
                next.notify.notify_one();
                return;
            }
            let next = self.waiters.pop_front().expect("a front");
            self.hand_to(&next);
        }
    }
}

impl Store {
    /// Takes a waiter that gave up out of the queue or, if the lock was handed to it meanwhile,
    /// hands the lock on.
    fn leave_queue(&self, key: &str, grant: u64) {
        self.with_live(key, |slot| {
            if slot.give_back(grant) {
                return;
            }
            let was_first = slot.waiters.front().is_some_and(|w| w.grant == grant);
            slot.waiters.retain(|w| w.grant != grant);
            if was_first {
                slot.promote(); // the next in line may fit beside the holders where it did not
            }
        });
    }
}
