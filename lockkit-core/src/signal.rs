//! Loss signals: how a guard learns that its lock may no longer be held.
//!
//! A lease has a local deadline and a cancellation token; each grant on it has a child token,
//! so losing the lease fires every grant at once while a grant removed on its own (its key
//! deleted behind the holder's back) fires only that grant.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::{FencingToken, LockName};

/// How much earlier than the server a holder gives up: 5 % of the TTL plus 2 ms, for clock rate
/// drift between client and server and for scheduling delays.
pub fn safety_margin(ttl: Duration) -> Duration {
    ttl / 20 + Duration::from_millis(2)
}

/// How long after a confirmation sent at some moment a lease still counts as valid: its `ttl`,
/// capped by `max_validity`, minus the [`safety_margin`] of that.
fn local_validity(ttl: Duration, max_validity: Option<Duration>) -> Duration {
    let validity = max_validity.map_or(ttl, |cap| cap.min(ttl));
    validity.saturating_sub(safety_margin(validity))
}

/// The shared state of one lease: its deadline and whether it is lost.
#[derive(Debug)]
pub(crate) struct LeaseState {
    pub(crate) backend: &'static str,
    pub(crate) id: String,
    pub(crate) ttl: Duration,
    /// The longest the lease counts as valid after a confirmation, whatever TTL the server
    /// answers (`None`: the TTL answered); see [`Settings::max_validity`](crate::Settings::max_validity).
    max_validity: Option<Duration>,
    valid_until: Mutex<Instant>,
    lost: CancellationToken,
    reason: OnceLock<String>,
    grants: Mutex<Vec<Weak<GrantShared>>>,
    /// The grants with a TTL of their own that no confirmed refresh covered yet (few: they
    /// leave at the first refresh that covers them).
    pending: Mutex<Vec<Weak<GrantShared>>>,
    /// Woken when a grant with a TTL of its own joins and is due before the refresh loop's
    /// planned wake, so the loop covers it in time.
    pub(crate) joined: tokio::sync::Notify,
    /// When the refresh loop wakes next, and its interval (`None` while it refreshes): a grant
    /// due later than that needs no wake-up, so granting costs the loop nothing.
    planned: Mutex<Option<(Instant, Duration)>>,
}

impl LeaseState {
    /// A lease whose last confirmation was sent at `confirmed_at`, valid for its `ttl` — or for
    /// `max_validity` where that is shorter — after each confirmation.
    pub(crate) fn new(
        backend: &'static str,
        id: String,
        ttl: Duration,
        max_validity: Option<Duration>,
        confirmed_at: Instant,
    ) -> Arc<Self> {
        Arc::new(LeaseState {
            backend,
            id,
            ttl,
            max_validity,
            valid_until: Mutex::new(confirmed_at + local_validity(ttl, max_validity)),
            lost: CancellationToken::new(),
            reason: OnceLock::new(),
            grants: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            joined: tokio::sync::Notify::new(),
            planned: Mutex::new(None),
        })
    }

    pub(crate) fn valid_until(&self) -> Instant {
        *lock(&self.valid_until)
    }

    /// The server confirmed a refresh that was sent at `sent`, for `ttl`: `false` (and nothing
    /// changes) when the lease is lost already — its deadline passed first. Loss is final.
    pub(crate) fn confirm(&self, sent: Instant, ttl: Duration) -> bool {
        let mut until = lock(&self.valid_until);
        if self.lost.is_cancelled() || Instant::now() >= *until {
            drop(until);
            self.is_lost();
            return false;
        }
        *until = (*until).max(sent + local_validity(ttl, self.max_validity));
        drop(until);
        // Grants that joined before this refresh was sent were refreshed by it: from now on the
        // lease's deadline is theirs.
        lock(&self.pending).retain(|grant| {
            let Some(grant) = grant.upgrade() else { return false };
            let mut own = lock(&grant.own_ttl);
            if own.is_some_and(|own| own.joined.is_some_and(|joined| joined <= sent) && Instant::now() < own.until) {
                *own = None;
            }
            own.is_some()
        });
        true
    }

    /// Marks `grant` (not pending yet) as waiting for a refresh that covers it.
    fn pend(&self, grant: &Arc<GrantShared>) {
        push_pruned(&mut lock(&self.pending), grant);
    }

    fn live_grants(&self) -> Vec<Arc<GrantShared>> {
        lock(&self.grants).iter().filter_map(Weak::upgrade).collect()
    }

    /// Plans the refresh loop's next wake: at `next`, at the deadline, or when a grant with a
    /// TTL of its own that joined after `attempted` (the last refresh attempt) is due, whichever
    /// comes first. Grants that join later wake the loop only when they are due before that.
    pub(crate) fn plan_refresh(&self, interval: Duration, attempted: Instant, next: Instant) -> Instant {
        let mut planned = lock(&self.planned);
        let due = self.refresh_due(interval, attempted);
        let wake = next.min(self.valid_until()).min(due.unwrap_or(next));
        *planned = Some((wake, interval));
        wake
    }

    /// The refresh loop is refreshing: a grant that joins now wakes it to plan again.
    pub(crate) fn unplan(&self) {
        *lock(&self.planned) = None;
    }

    /// When the next refresh is due for the grants with a TTL of their own that joined after
    /// `attempted` (the last refresh attempt): `interval` after their request was sent.
    fn refresh_due(&self, interval: Duration, attempted: Instant) -> Option<Instant> {
        lock(&self.pending)
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|grant| *lock(&grant.own_ttl))
            .filter(|own| own.joined.is_some_and(|joined| joined > attempted))
            .map(|own| own.sent + interval)
            .min()
    }

    /// Whether the lease is lost. Passing the deadline loses it for good (a confirmation that
    /// comes later is ignored), so a guard that once read "lost" never reads "held" again.
    pub(crate) fn is_lost(&self) -> bool {
        if self.lost.is_cancelled() {
            return true;
        }
        if Instant::now() < self.valid_until() {
            return false;
        }
        self.lose(self.deadline_reason());
        true
    }

    fn deadline_reason(&self) -> String {
        format!("no refresh of lease {} was confirmed before its deadline", self.id)
    }

    /// Ends the lease without a loss (it was dropped or revoked by its owner): grants on it
    /// fire, quietly.
    pub(crate) fn end(&self, reason: String) {
        if self.reason.set(reason).is_ok() {
            self.lost.cancel();
        }
    }

    /// Declares the lease lost (once); every grant on it fires.
    pub(crate) fn lose(&self, reason: String) {
        if self.reason.set(reason.clone()).is_err() {
            return;
        }
        let grants = self.live_grants();
        tracing::warn!(backend = self.backend, lease = %self.id, locks = grants.len(), %reason, "lease lost");
        for grant in grants {
            grant.log_loss(self.backend, &reason);
        }
        self.lost.cancel();
    }

    /// Why the lease was lost (a passed deadline when nobody said otherwise).
    pub(crate) fn reason_text(&self) -> String {
        match self.reason.get() {
            Some(reason) => reason.clone(),
            None => self.deadline_reason(),
        }
    }

    pub(crate) async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// A loss signal for a new grant on this lease; `sent`: see [`OwnTtl`].
    pub(crate) fn grant_signal(self: &Arc<Self>, sent: Option<Instant>) -> LossSignal {
        let own_ttl =
            sent.map(|sent| OwnTtl { sent, until: sent + local_validity(self.ttl, self.max_validity), joined: None });
        let shared = Arc::new(GrantShared {
            own: self.lost.child_token(),
            reason: OnceLock::new(),
            label: OnceLock::new(),
            own_ttl: Mutex::new(own_ttl),
        });
        push_pruned(&mut lock(&self.grants), &shared);
        if own_ttl.is_some() {
            self.pend(&shared);
        }
        LossSignal { shared, lease: self.clone() }
    }
}

#[derive(Debug)]
struct GrantShared {
    own: CancellationToken,
    reason: OnceLock<String>,
    /// Lock name and token, once the grant is complete, for log lines.
    label: OnceLock<(LockName, FencingToken)>,
    /// The grant's own TTL, until a refresh covers it (`None`: the lease's deadline is its own).
    own_ttl: Mutex<Option<OwnTtl>>,
}

/// A grant with a TTL of its own on the server (a Redis key set with `PX`) may have started
/// that TTL any time after its request was `sent`, and a slow reply can arrive after a refresh
/// of the lease that did not include it was confirmed. Until a refresh sent after it `joined`
/// the lease (its guard was made) is confirmed, it counts as held only `until` the local
/// validity after `sent`, not for the lease's deadline.
#[derive(Clone, Copy, Debug)]
struct OwnTtl {
    sent: Instant,
    until: Instant,
    joined: Option<Instant>,
}

impl GrantShared {
    fn log_loss(&self, backend: &'static str, reason: &str) {
        if let Some((name, token)) = self.label.get() {
            tracing::warn!(backend, lock = %name, token = token.get(), %reason, "lock lost");
        }
    }
}

/// Fires once a lock may no longer be held: its lease was lost or revoked, its local deadline
/// passed without a confirmed refresh, or its grant was removed behind the holder's back.
///
/// Cheap to clone; every clone sees the same loss. Get one from
/// [`LockGuard::loss_signal`](crate::LockGuard::loss_signal).
#[derive(Clone, Debug)]
pub struct LossSignal {
    shared: Arc<GrantShared>,
    lease: Arc<LeaseState>,
}

impl LossSignal {
    /// Whether the lock may no longer be held (lost, or past its local deadline).
    pub fn is_lost(&self) -> bool {
        self.shared.own.is_cancelled() || self.lease.is_lost() || self.own_ttl_ran_out()
    }

    /// The local deadline: after it the lock counts as lost unless a refresh is confirmed first.
    pub fn valid_until(&self) -> Instant {
        let lease = self.lease.valid_until();
        lock(&self.shared.own_ttl).map_or(lease, |own| own.until.min(lease))
    }

    /// Whether the grant's own TTL ran out before a refresh covered it (which loses it).
    fn own_ttl_ran_out(&self) -> bool {
        let ran_out = lock(&self.shared.own_ttl).is_some_and(|own| Instant::now() >= own.until);
        if ran_out {
            self.lose("no refresh covering this lock was confirmed before its deadline (its refreshes failed, or its grant came too slowly)");
        }
        ran_out
    }

    /// Why the lock was lost, once it was.
    pub fn reason(&self) -> Option<String> {
        match self.shared.reason.get() {
            Some(reason) => Some(reason.clone()),
            None => self.is_lost().then(|| self.lease.reason_text()),
        }
    }

    /// Completes once the lock is lost, with the reason.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches.
    pub async fn lost(&self) -> String {
        loop {
            let deadline = self.valid_until();
            tokio::select! {
                _ = self.shared.own.cancelled() => break,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if self.is_lost() {
                        break;
                    }
                }
            }
        }
        self.reason().unwrap_or_else(|| "lost".to_owned())
    }

    /// Declares this one grant lost (drivers call it when the grant is removed behind the
    /// holder's back). The first reason given wins.
    pub fn lose(&self, reason: impl Into<String>) {
        if self.lease.lost.is_cancelled() {
            // The lease went first: its reason is the grant's.
            return;
        }
        let reason = reason.into();
        if self.shared.reason.set(reason.clone()).is_ok() && !self.shared.own.is_cancelled() {
            self.shared.log_loss(self.lease.backend, &reason);
        }
        self.shared.own.cancel();
    }

    /// Drivers whose lease refreshes each grant separately (one key per lock) call it when a
    /// refresh of the lease did not confirm this grant while it confirmed others: the grant
    /// keeps the deadline it has now instead of the one that refresh brings the lease, until a
    /// later refresh covers it — so one lock whose refresh keeps failing (an ACL change, a
    /// shard down) is lost alone at its deadline, not with every lock on the lease.
    pub fn not_refreshed(&self) {
        let until = self.valid_until();
        let now = Instant::now();
        // A grant with a TTL of its own is pending until a refresh covers it, and only then.
        let pending = lock(&self.shared.own_ttl).replace(OwnTtl { sent: now, until, joined: Some(now) }).is_some();
        if !pending {
            self.lease.pend(&self.shared);
        }
    }

    /// Marks the grant as given back: clones of the signal see it as no longer held, without a
    /// "lock lost" log line.
    pub(crate) fn retire(&self) {
        let _ = self.shared.reason.set("released by its holder".to_owned());
        self.shared.own.cancel();
    }

    /// Names the grant once its guard is made: it has joined its lease, so a refresh sent
    /// from now on covers it.
    pub(crate) fn label(&self, name: &LockName, token: FencingToken) {
        let _ = self.shared.label.set((name.clone(), token));
        // The loop's plan first, then the grant: the order `plan_refresh` takes them in.
        let planned = lock(&self.lease.planned);
        let mut own = lock(&self.shared.own_ttl);
        if let Some(own) = own.as_mut() {
            own.joined = Some(Instant::now());
            if planned.is_none_or(|(wake, interval)| own.sent + interval < wake) {
                self.lease.joined.notify_one();
            }
        }
    }
}

/// Pushes `grant` onto a list of weak references, first dropping the dead ones when the list is
/// full: the list stays within twice its live entries, at an amortized O(1) per push, however
/// many grants come and go between refreshes.
fn push_pruned(list: &mut Vec<Weak<GrantShared>>, grant: &Arc<GrantShared>) {
    if list.len() == list.capacity() {
        list.retain(|g| g.strong_count() > 0);
    }
    list.push(Arc::downgrade(grant));
}

/// Locks a std mutex, ignoring poisoning (the data stays consistent: every critical section
/// here is a plain assignment or a collection update that cannot panic halfway).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn losing_the_lease_fires_every_grant_but_a_grant_can_be_lost_alone() {
        let lease = LeaseState::new("test", "l1".into(), Duration::from_secs(10), None, Instant::now());
        let (a, b) = (lease.grant_signal(None), lease.grant_signal(None));
        a.lose("key deleted");
        assert!(a.is_lost() && !b.is_lost());
        assert_eq!(a.lost().await, "key deleted");
        lease.lose("lease revoked".into());
        assert_eq!(b.lost().await, "lease revoked");
        assert_eq!(a.reason().as_deref(), Some("key deleted"));
    }

    #[tokio::test]
    async fn the_deadline_alone_makes_a_grant_lost() {
        let lease = LeaseState::new("test", "l1".into(), Duration::from_millis(150), None, Instant::now());
        let signal = lease.grant_signal(None);
        assert!(!signal.is_lost());
        let reason = signal.lost().await;
        assert!(signal.is_lost() && reason.contains("deadline"), "{reason}");
    }

    #[tokio::test]
    async fn a_confirmed_refresh_moves_the_deadline_forward_only() {
        let start = Instant::now();
        let lease = LeaseState::new("test", "l1".into(), Duration::from_secs(1), None, start);
        let first = lease.valid_until();
        assert_eq!(first, start + Duration::from_secs(1) - safety_margin(Duration::from_secs(1)));
        lease.confirm(start + Duration::from_millis(300), Duration::from_secs(1));
        assert_eq!(lease.valid_until(), first + Duration::from_millis(300));
        lease.confirm(start, Duration::from_secs(1));
        assert_eq!(lease.valid_until(), first + Duration::from_millis(300));
    }

    /// A grant with a TTL of its own counts from its request's send time until a refresh sent
    /// after its guard was made is confirmed; one sent before (covering only the lease's other
    /// grants) does not extend it, and once its TTL ran out no confirmation brings it back.
    #[test]
    fn a_grant_with_its_own_ttl_counts_from_its_request_until_a_refresh_covers_it() {
        let ttl = Duration::from_secs(1);
        let start = Instant::now();
        let lease = LeaseState::new("test", "l1".into(), ttl, None, start);
        let sent = start - Duration::from_millis(600);
        let grant = lease.grant_signal(Some(sent));
        let own = sent + ttl - safety_margin(ttl);
        assert_eq!(grant.valid_until(), own);
        lease.confirm(start, ttl);
        assert_eq!(grant.valid_until(), own, "a refresh sent before the guard existed covered it");
        grant.label(&LockName::new("l").unwrap(), FencingToken::new(1));
        let after = Instant::now() + Duration::from_millis(1);
        assert!(lease.confirm(after, ttl));
        assert_eq!(grant.valid_until(), after + ttl - safety_margin(ttl), "the refresh that covered it");

        let late = lease.grant_signal(Some(Instant::now() - ttl));
        late.label(&LockName::new("m").unwrap(), FencingToken::new(2));
        assert!(late.is_lost(), "its own TTL ran out");
        lease.confirm(Instant::now() + Duration::from_millis(1), ttl);
        assert!(late.is_lost() && !grant.is_lost(), "a later confirmation brought it back");
    }

    /// A grant a refresh did not cover keeps its deadline while the lease's moves on; the next
    /// refresh that covers it gives it the lease's deadline again.
    #[test]
    fn a_grant_not_refreshed_keeps_its_deadline_until_a_refresh_covers_it() {
        let ttl = Duration::from_secs(1);
        let lease = LeaseState::new("test", "l1".into(), ttl, None, Instant::now());
        let (failing, fine) = (lease.grant_signal(None), lease.grant_signal(None));
        let before = failing.valid_until();
        std::thread::sleep(Duration::from_millis(5));
        // The refresh is sent, then the driver finds this grant not confirmed by it.
        let sent = Instant::now();
        failing.not_refreshed();
        assert!(lease.confirm(sent, ttl));
        assert_eq!(failing.valid_until(), before, "the lease's refresh moved a grant it did not cover");
        assert!(fine.valid_until() > before);
        let later = Instant::now() + Duration::from_millis(200);
        assert!(lease.confirm(later, ttl));
        assert_eq!(failing.valid_until(), fine.valid_until(), "a refresh that covered it");
    }

    /// A lease capped below its TTL counts as valid for the cap after each confirmation, also
    /// when the server answers a longer TTL than asked.
    #[test]
    fn a_capped_lease_is_valid_for_the_cap_after_each_confirmation() {
        let (start, ttl, cap) = (Instant::now(), Duration::from_secs(2), Duration::from_millis(500));
        let lease = LeaseState::new("test", "l1".into(), ttl, Some(cap), start);
        assert_eq!(lease.valid_until(), start + cap - safety_margin(cap));
        lease.confirm(start + Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(lease.valid_until(), start + Duration::from_millis(100) + cap - safety_margin(cap));
        let uncapped = LeaseState::new("test", "l2".into(), ttl, Some(Duration::from_secs(5)), start);
        assert_eq!(uncapped.valid_until(), start + ttl - safety_margin(ttl), "a cap above the TTL changes nothing");
    }

    /// Issue #18: grants that come and go between two refreshes (a busy uncontended loop) do
    /// not pile up in the lease's lists: each grant cost a scan of every grant since the last
    /// refresh, so a loop slowed down the longer it ran (quadratic), and 10,000 held locks
    /// took 10,000²/2 steps to take.
    #[test]
    fn grants_that_come_and_go_between_refreshes_do_not_pile_up() {
        let lease = LeaseState::new("test", "l1".into(), Duration::from_secs(10), None, Instant::now());
        let held: Vec<LossSignal> = (0..10).map(|_| lease.grant_signal(Some(Instant::now()))).collect();
        for _ in 0..10_000 {
            let grant = lease.grant_signal(Some(Instant::now()));
            grant.label(&LockName::new("busy").unwrap(), FencingToken::new(1));
        }
        let (grants, pending) = (lock(&lease.grants).len(), lock(&lease.pending).len());
        assert!(grants <= 2 * held.len() + 2 && pending <= 2 * held.len() + 2, "{grants} grants, {pending} pending");
    }

    /// A grant that joins wakes the refresh loop only when it is due before the loop's planned
    /// wake (its request was sent before the last refresh, which did not cover it); otherwise
    /// granting costs the loop nothing.
    #[test]
    fn a_joining_grant_wakes_the_refresh_loop_only_when_due_before_its_plan() {
        let (ttl, interval) = (Duration::from_secs(9), Duration::from_secs(3));
        let now = Instant::now();
        let lease = LeaseState::new("test", "l1".into(), ttl, None, now);
        let woken = |lease: &LeaseState| {
            let mut notified = std::pin::pin!(lease.joined.notified());
            let waker = std::task::Waker::noop();
            notified.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready()
        };
        let wake = lease.plan_refresh(interval, now, now + Duration::from_secs(2));
        assert_eq!(wake, now + Duration::from_secs(2));
        lease.grant_signal(Some(Instant::now())).label(&LockName::new("later").unwrap(), FencingToken::new(1));
        assert!(!woken(&lease), "a grant due after the planned wake woke the loop");
        let early = lease.grant_signal(Some(now - Duration::from_secs(2)));
        early.label(&LockName::new("earlier").unwrap(), FencingToken::new(2));
        assert!(woken(&lease), "a grant due before the planned wake did not wake the loop");
        assert_eq!(
            lease.plan_refresh(interval, now - Duration::from_secs(3), now + Duration::from_secs(2)),
            now + Duration::from_secs(1)
        );
        lease.unplan();
        lease.grant_signal(Some(Instant::now())).label(&LockName::new("refreshing").unwrap(), FencingToken::new(3));
        assert!(woken(&lease), "while it refreshes, a grant that joins has it plan again");
    }
}
