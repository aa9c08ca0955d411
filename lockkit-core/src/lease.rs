//! Leases: the liveness grants hang on, and the one refresh loop every backend shares.
//!
//! A driver implements [`LeaseBackend`] (the round trips: keep alive, revoke). The core wraps it
//! in a [`KeptLease`], which refreshes it in the background, keeps the local deadline, retries
//! transient failures and declares the lease lost. A [`LeasePool`] gives each backend handle one
//! lease per TTL, so N locks cost one refresh stream.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::signal::{LeaseState, LossSignal};
use crate::{Error, Result, Settings};

/// The liveness a grant hangs on: an etcd lease, a ZooKeeper or Consul session, or the set of
/// keys one handle keeps alive on Redis, memory or file.
///
/// Get one from [`LockGuard::lease`](crate::LockGuard::lease).
#[async_trait]
pub trait Lease: Send + Sync + fmt::Debug {
    /// The lease's id, for display (e.g. an etcd lease id in hex).
    fn id(&self) -> &str;

    /// The TTL granted.
    fn ttl(&self) -> Duration;

    /// The local deadline: when the last successful refresh was *sent*, plus the local validity,
    /// minus a safety margin ([`safety_margin`](crate::safety_margin)) of it. The local validity
    /// is the TTL, or less where the backend caps it (Consul's lock-delay; see
    /// [`Settings::max_validity`](crate::Settings::max_validity)). Past it the lease counts as lost.
    fn valid_until(&self) -> Instant;

    /// Whether the lease is lost (or past its deadline).
    fn is_lost(&self) -> bool;

    /// Refreshes now, besides the background refresh.
    ///
    /// # Errors
    /// [`Error::LockLost`] when the backend says the lease is gone (the lease is then lost);
    /// other errors when the refresh failed but the lease may still be alive.
    async fn refresh(&self) -> Result<()>;

    /// Ends the lease: every grant on it is released by the backend and every guard on it
    /// fires its loss signal.
    async fn revoke(&self) -> Result<()>;

    /// Completes once the lease is lost, with the reason.
    async fn lost(&self) -> String;
}

/// What a keep-alive round trip found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Alive, for this TTL from when the request was sent.
    Alive(Duration),
    /// The backend says the lease is gone; the reason says how.
    Gone(String),
}

/// The backend round trips of one lease, implemented by drivers.
#[async_trait]
pub trait LeaseBackend: std::any::Any + Send + Sync {
    /// Extends the lease. `Err` means "could not tell" (retried until the deadline);
    /// [`KeepAlive::Gone`] means the lease is lost for good.
    async fn keep_alive(&self) -> Result<KeepAlive>;

    /// Ends the lease on the backend. Also called, in the background, once a lease is lost (its
    /// deadline passed, the backend said it is gone, or the handle gave it up): it must then
    /// stop keeping anything alive — a ZooKeeper client stops its pings, a session is closed.
    async fn revoke(&self) -> Result<()>;

    /// Whether an entry on this lease whose removal was never confirmed lives on for as long as
    /// the lease is kept alive (an etcd key, a ZooKeeper node, a Consul key: `true`, the
    /// default), or ends at its TTL anyway because keeping the lease alive refreshes only the
    /// grants still held (Redis, memory, file: `false`). With `true`, a retirement that cannot
    /// be confirmed in time makes the handle give the whole lease up (see [`Cleanup`](crate::driver::Cleanup)).
    fn keeps_orphans(&self) -> bool {
        true
    }
}

/// A lease kept alive in the background: every refresh interval it calls
/// [`LeaseBackend::keep_alive`]; a transient failure is retried with backoff until the local
/// deadline; [`KeepAlive::Gone`] or a passed deadline loses the lease and fires every grant on it.
///
/// Once lost — or given up by the handle, see [`give_up`](Self::give_up) — the lease is never
/// refreshed again and [`LeaseBackend::revoke`] is called in the background, so the server ends
/// whatever still hangs on it. Dropping a lease revokes it.
pub struct KeptLease {
    pub(crate) shared: Arc<Shared>,
    stop: CancellationToken,
    runtime: Option<Handle>,
}

/// What the refresh loop shares with its lease.
pub(crate) struct Shared {
    pub(crate) state: Arc<LeaseState>,
    pub(crate) backend: Arc<dyn LeaseBackend>,
    /// The handle's request timeout: how long a retirement may stay unconfirmed.
    pub(crate) timeout: Duration,
    /// The outcome of the one revoke (by the owner, a drop, or the loss of the lease, whoever
    /// comes first; the others wait for it): `None` when it succeeded, else why not.
    revoked: tokio::sync::OnceCell<Option<String>>,
}

impl Shared {
    /// Revokes the lease on the backend, once, bounded by the request timeout; a second caller
    /// waits for the first one's outcome.
    async fn revoke_once(&self) -> Result<()> {
        let failure = self
            .revoked
            .get_or_init(|| async {
                match tokio::time::timeout(self.timeout, self.backend.revoke()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("no answer within {:?}", self.timeout)),
                }
            })
            .await;
        match failure {
            None => Ok(()),
            Some(why) => Err(Error::connection(
                self.state.backend,
                format!("lease {}", self.state.id),
                format!("revoking it failed ({why}); the server ends it at its TTL"),
                None,
            )),
        }
    }
}

impl KeptLease {
    /// Starts keeping a lease the backend just granted. `granted_at` is when the grant request
    /// was sent; `id` is for display; `timeout` is the handle's request timeout.
    pub fn start(
        backend_name: &'static str,
        id: String,
        backend: Arc<dyn LeaseBackend>,
        timing: (Duration, Duration, Duration),
        granted_at: Instant,
    ) -> Arc<Self> {
        Self::start_capped(backend_name, id, backend, timing, None, granted_at)
    }

    /// [`start`](Self::start), for a lease that counts as valid for at most `max_validity` after
    /// each confirmed refresh, whatever its TTL (see [`Settings::max_validity`]).
    pub fn start_capped(
        backend_name: &'static str,
        id: String,
        backend: Arc<dyn LeaseBackend>,
        (ttl, refresh_interval, timeout): (Duration, Duration, Duration),
        max_validity: Option<Duration>,
        granted_at: Instant,
    ) -> Arc<Self> {
        let state = LeaseState::new(backend_name, id, ttl, max_validity, granted_at);
        let shared = Arc::new(Shared { state, backend, timeout, revoked: tokio::sync::OnceCell::new() });
        let stop = CancellationToken::new();
        let runtime = Handle::try_current().ok();
        if let Some(rt) = &runtime {
            rt.spawn(refresh_loop(shared.clone(), refresh_interval, granted_at, stop.clone()));
        }
        Arc::new(KeptLease { shared, stop, runtime })
    }

    /// The driver's lease backend, as the type it is (`None` for another type): how a driver
    /// gets its own session object back from a pooled lease.
    pub fn backend<T: LeaseBackend>(&self) -> Option<Arc<T>> {
        let any: Arc<dyn std::any::Any + Send + Sync> = self.shared.backend.clone();
        any.downcast().ok()
    }

    /// A loss signal for a new grant on this lease: it fires when the lease is lost, and can be
    /// fired alone by the driver ([`LossSignal::lose`]).
    pub fn grant_signal(&self) -> LossSignal {
        self.shared.state.grant_signal(None)
    }

    /// [`grant_signal`](Self::grant_signal), for a grant with a TTL of its own on the server
    /// (a key set with an expiry, refreshed with the lease's other grants) whose granting
    /// request was `sent` then. Until a refresh sent after its guard was made is confirmed, it
    /// counts as held for at most the local validity after `sent` — its key may expire then,
    /// whatever refreshes of the lease's other grants said meanwhile — and that refresh is
    /// sent one refresh interval after `sent` (at once, when that moment is past).
    pub fn grant_signal_sent(&self, sent: Instant) -> LossSignal {
        self.shared.state.grant_signal(Some(sent))
    }

    /// Declares the lease lost (drivers call it when the backend tells them, e.g. a session
    /// expired); every grant on it fires, and the lease is revoked in the background.
    pub fn lose(&self, reason: impl Into<String>) {
        self.shared.state.lose(reason.into())
    }

    /// Gives the lease up although the backend may still keep it: every grant on it fires its
    /// loss signal first, with `reason`, then the lease stops being refreshed and is revoked in
    /// the background, so the server ends everything on it within its TTL. Later acquires get a
    /// new lease from the pool.
    pub fn give_up(&self, reason: impl Into<String>) {
        self.lose(reason)
    }

    /// The handle's request timeout, which bounds how long a retirement may stay unconfirmed.
    pub fn request_timeout(&self) -> Duration {
        self.shared.timeout
    }
}

#[async_trait]
impl Lease for KeptLease {
    fn id(&self) -> &str {
        &self.shared.state.id
    }

    fn ttl(&self) -> Duration {
        self.shared.state.ttl
    }

    fn valid_until(&self) -> Instant {
        self.shared.state.valid_until()
    }

    fn is_lost(&self) -> bool {
        self.shared.state.is_lost()
    }

    async fn refresh(&self) -> Result<()> {
        let state = &self.shared.state;
        match refresh_once(state, self.shared.backend.as_ref()).await {
            Ok(_) => Ok(()),
            Err(Refresh::Gone(reason)) => {
                Err(Error::LockLost { backend: state.backend, name: format!("lease {}", state.id), reason })
            }
            Err(Refresh::Failed(e)) => Err(e),
        }
    }

    /// Every guard on the lease fires first (a revoked lease holds nothing), then the backend
    /// is told.
    async fn revoke(&self) -> Result<()> {
        let state = &self.shared.state;
        state.lose(format!("lease {} was revoked", state.id));
        self.shared.revoke_once().await
    }

    async fn lost(&self) -> String {
        self.shared.state.lost().await;
        self.shared.state.reason_text()
    }
}

impl fmt::Debug for KeptLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = &self.shared.state;
        f.debug_struct("KeptLease")
            .field("backend", &state.backend)
            .field("id", &state.id)
            .field("ttl", &state.ttl)
            .field("lost", &state.is_lost())
            .finish()
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.stop.cancel();
        let state = &self.shared.state;
        if state.is_lost() && self.shared.revoked.initialized() {
            return;
        }
        state.end(format!("lease {} was dropped", state.id));
        if let Some(rt) = &self.runtime {
            let shared = self.shared.clone();
            rt.spawn(async move {
                if let Err(e) = shared.revoke_once().await {
                    tracing::debug!(backend = shared.state.backend, lease = %shared.state.id, error = %e, "revoking a dropped lease failed; the TTL will end it");
                }
            });
        }
    }
}

enum Refresh {
    Gone(String),
    Failed(Error),
}

/// One keep-alive round trip, bounded by the lease's deadline; `Ok` gives when it was sent (what
/// the new deadline counts from).
async fn refresh_once(state: &LeaseState, backend: &dyn LeaseBackend) -> std::result::Result<Instant, Refresh> {
    let sent = Instant::now();
    let deadline = state.valid_until();
    let outcome = tokio::time::timeout_at(deadline.into(), backend.keep_alive()).await;
    match outcome {
        Ok(Ok(KeepAlive::Alive(ttl))) if state.confirm(sent, ttl) => {
            tracing::debug!(backend = state.backend, lease = %state.id, ttl = ?ttl, "lease refreshed");
            Ok(sent)
        }
        // Confirmed only after the deadline had passed: the lease was lost by then, for good.
        Ok(Ok(KeepAlive::Alive(_))) => Err(Refresh::Gone(state.reason_text())),
        Ok(Ok(KeepAlive::Gone(reason))) => {
            state.lose(reason.clone());
            Err(Refresh::Gone(reason))
        }
        Ok(Err(e)) if Instant::now() < state.valid_until() => Err(Refresh::Failed(e)),
        Ok(Err(e)) => {
            let reason = format!("refreshing lease {} failed until its deadline passed: {e}", state.id);
            state.lose(reason.clone());
            Err(Refresh::Gone(reason))
        }
        Err(_) => {
            let reason = format!("no refresh of lease {} was confirmed before its deadline", state.id);
            state.lose(reason.clone());
            Err(Refresh::Gone(reason))
        }
    }
}

/// Refreshes every `interval`, counted like the deadline from when the grant or the last
/// confirmed refresh was *sent*: a grant or a refresh that took long is followed by the next
/// refresh at once, not at a deadline that leaves it no time.
async fn refresh_loop(shared: Arc<Shared>, interval: Duration, granted_at: Instant, stop: CancellationToken) {
    let (state, backend) = (&shared.state, shared.backend.as_ref());
    let first_retry = (interval / 8).clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut retry = first_retry;
    let mut next = granted_at + interval;
    let mut attempted = granted_at;
    loop {
        let wake = state.plan_refresh(interval, attempted, next);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = state.lost() => break,
            // A grant with a TTL of its own joined that is due before `wake`.
            _ = state.joined.notified() => continue,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        state.unplan();
        attempted = Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            _ = state.lost() => break,
            result = refresh_once(state, backend) => result,
        };
        match result {
            Ok(sent) => {
                retry = first_retry;
                next = sent + interval;
            }
            Err(Refresh::Gone(_)) => break,
            Err(Refresh::Failed(e)) => {
                tracing::warn!(backend = state.backend, lease = %state.id, error = %e, retry_in = ?retry, "lease refresh failed; retrying");
                next = Instant::now() + retry;
                retry = (retry * 2).min(interval);
            }
        }
    }
    // Lost: nothing may keep it alive any more (a ZooKeeper client's own pings, a session).
    if let Err(e) = shared.revoke_once().await {
        tracing::debug!(backend = state.backend, lease = %state.id, error = %e, "revoking a lost lease failed; the TTL ends it");
    }
}

/// One lease per (TTL, refresh interval) for a backend handle, granted on first use and
/// granted anew after a loss, so every lock taken through the handle with the same TTL rides
/// on one lease.
pub struct LeasePool {
    backend: &'static str,
    timeout: Duration,
    max_validity: Option<Duration>,
    /// `None` once the pool is closed.
    leases: tokio::sync::Mutex<Option<Leases>>,
}

/// A pool's leases by (TTL, refresh interval).
type Leases = HashMap<(Duration, Duration), Arc<KeptLease>>;

impl LeasePool {
    /// An empty pool for a handle whose request timeout is `timeout`.
    pub fn new(backend: &'static str, timeout: Duration) -> Self {
        LeasePool { backend, timeout, max_validity: None, leases: tokio::sync::Mutex::new(Some(HashMap::new())) }
    }

    /// An empty pool for a handle with these settings: their request timeout, and their
    /// [`max_validity`](Settings::max_validity) for every lease.
    pub fn for_settings(backend: &'static str, settings: &Settings) -> Self {
        LeasePool { max_validity: settings.max_validity, ..Self::new(backend, settings.timeout) }
    }

    /// The live lease for `ttl` and `refresh_interval`, or a new one from `grant`, which
    /// returns the driver's lease and its display id.
    ///
    /// # Errors
    /// After [`close`](Self::close): the handle was closed, and takes no more locks (so a
    /// waiter whose lease the close revoked ends instead of queueing again).
    ///
    /// # Cancel safety
    /// Cancel safe: a lease granted by a cancelled call is dropped, which revokes it.
    pub async fn get<F, Fut>(&self, ttl: Duration, refresh_interval: Duration, grant: F) -> Result<Arc<KeptLease>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Arc<dyn LeaseBackend>, String)>> + Send,
    {
        let mut leases = self.leases.lock().await;
        let Some(leases) = leases.as_mut() else {
            return Err(Error::backend(
                self.backend,
                "this handle was closed and takes no more locks; connect again for a new handle",
            ));
        };
        if let Some(lease) = leases.get(&(ttl, refresh_interval))
            && !lease.is_lost()
        {
            return Ok(lease.clone());
        }
        let sent = Instant::now();
        let (backend, id) = grant().await?;
        let timing = (ttl, refresh_interval, self.timeout);
        let lease = KeptLease::start_capped(self.backend, id, backend, timing, self.max_validity, sent);
        leases.insert((ttl, refresh_interval), lease.clone());
        Ok(lease)
    }

    /// Revokes every lease of the pool now and waits for the backend to confirm: whatever was
    /// held or queued on them is gone when this returns. The pool hands out no lease after
    /// this, so the handle takes no more locks and its waits end.
    pub async fn close(&self) -> Result<()> {
        let leases: Vec<Arc<KeptLease>> =
            self.leases.lock().await.take().into_iter().flatten().map(|(_, lease)| lease).collect();
        let mut result = Ok(());
        for lease in leases {
            // A lost lease too: its revoke may still be under way, and is waited for.
            if let Err(e) = lease.revoke().await {
                result = Err(e);
            }
        }
        result
    }
}

impl fmt::Debug for LeasePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasePool").field("backend", &self.backend).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A lease backend whose answers the test scripts.
    struct Scripted {
        answers: Mutex<Vec<Result<KeepAlive>>>,
        calls: AtomicUsize,
        revoked: AtomicUsize,
    }

    #[async_trait]
    impl LeaseBackend for Scripted {
        async fn keep_alive(&self) -> Result<KeepAlive> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut answers = self.answers.lock().unwrap();
            if answers.is_empty() { Ok(KeepAlive::Alive(Duration::from_millis(600))) } else { answers.remove(0) }
        }
        async fn revoke(&self) -> Result<()> {
            self.revoked.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn scripted(answers: Vec<Result<KeepAlive>>) -> Arc<Scripted> {
        Arc::new(Scripted { answers: Mutex::new(answers), calls: AtomicUsize::new(0), revoked: AtomicUsize::new(0) })
    }

    fn keep(backend: &Arc<Scripted>) -> Arc<KeptLease> {
        let ttl = Duration::from_millis(600);
        KeptLease::start("test", "t".into(), backend.clone(), (ttl, ttl / 3, ttl), Instant::now())
    }

    #[tokio::test]
    async fn refreshes_keep_a_lease_alive_past_its_ttl() {
        let backend = scripted(vec![]);
        let lease = keep(&backend);
        let signal = lease.grant_signal();
        tokio::select! {
            _ = signal.lost() => panic!("lost: {:?}", signal.reason()),
            _ = tokio::time::sleep(Duration::from_millis(1500)) => {}
        }
        assert!(backend.calls.load(Ordering::SeqCst) >= 4);
    }

    #[tokio::test]
    async fn a_lease_granted_slowly_is_refreshed_at_once_not_lost_at_its_deadline() {
        let backend = scripted(vec![]);
        let ttl = Duration::from_millis(600);
        // The grant took three quarters of the TTL (a slow connect): the deadline is near.
        let granted_at = Instant::now() - ttl * 3 / 4;
        let lease = KeptLease::start("test", "t".into(), backend.clone(), (ttl, ttl / 3, ttl), granted_at);
        let signal = lease.grant_signal();
        tokio::select! {
            _ = signal.lost() => panic!("lost: {:?}", signal.reason()),
            _ = tokio::time::sleep(ttl) => {}
        }
        assert!(backend.calls.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn transient_failures_are_retried() {
        let failure = || Err(Error::connection("test", "nowhere", "refused", None));
        let backend = scripted(vec![failure(), failure()]);
        let lease = keep(&backend);
        let signal = lease.grant_signal();
        tokio::select! {
            _ = signal.lost() => panic!("lost: {:?}", signal.reason()),
            _ = tokio::time::sleep(Duration::from_millis(1200)) => {}
        }
        assert!(backend.calls.load(Ordering::SeqCst) >= 4);
    }

    #[tokio::test]
    async fn a_gone_lease_fires_its_grants() {
        let backend = scripted(vec![Ok(KeepAlive::Gone("lease not found".into()))]);
        let lease = keep(&backend);
        assert_eq!(lease.grant_signal().lost().await, "lease not found");
        assert!(lease.is_lost());
    }

    #[tokio::test]
    async fn failing_until_the_deadline_loses_the_lease() {
        let failures = (0..100).map(|_| Err(Error::connection("test", "nowhere", "refused", None))).collect();
        let lease = keep(&scripted(failures));
        let reason = lease.grant_signal().lost().await;
        assert!(reason.contains("deadline"), "{reason}");
    }

    /// A lease backend whose first keep-alive is held until the test lets it answer.
    struct Gated {
        entered: tokio::sync::Notify,
        gate: tokio::sync::Semaphore,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl LeaseBackend for Gated {
        async fn keep_alive(&self) -> Result<KeepAlive> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                self.entered.notify_one();
                self.gate.acquire().await.unwrap().forget();
            }
            Ok(KeepAlive::Alive(Duration::from_millis(600)))
        }
        async fn revoke(&self) -> Result<()> {
            Ok(())
        }
    }

    /// A grant with a TTL of its own whose guard is made while a slow refresh is in flight: that
    /// refresh, sent before, does not cover it, and the loop (nudged by the join) sends another
    /// in time, so the grant is held past its own deadline and then for several TTLs.
    #[tokio::test]
    async fn a_grant_joining_during_a_slow_refresh_is_refreshed_in_time() {
        let backend = Arc::new(Gated {
            entered: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
            calls: 0.into(),
        });
        let ttl = Duration::from_millis(600);
        let lease = KeptLease::start("test", "t".into(), backend.clone(), (ttl, ttl / 3, ttl), Instant::now());
        backend.entered.notified().await;
        let signal = lease.grant_signal_sent(Instant::now());
        signal.label(&crate::LockName::new("joined").unwrap(), crate::FencingToken::new(1));
        let own = signal.valid_until();
        tokio::time::sleep(ttl / 4).await;
        backend.gate.add_permits(1);
        tokio::select! {
            reason = signal.lost() => panic!("lost after {} refreshes: {reason}", backend.calls.load(Ordering::SeqCst)),
            _ = tokio::time::sleep(ttl * 3) => {}
        }
        assert!(signal.valid_until() > own + ttl, "its deadline did not move: a later refresh never covered it");
    }

    /// A grant due for a refresh (its request was sent long ago) while every refresh fails at
    /// once: the loop backs off as usual — it does not spin on the grant's due time — and the
    /// lease is lost at its deadline.
    #[tokio::test]
    async fn a_due_grant_with_failing_refreshes_does_not_make_the_loop_spin() {
        let failures = (0..10_000).map(|_| Err(Error::connection("test", "nowhere", "refused", None))).collect();
        let backend = scripted(failures);
        let lease = keep(&backend);
        let signal = lease.grant_signal_sent(Instant::now() - Duration::from_millis(400));
        signal.label(&crate::LockName::new("due").unwrap(), crate::FencingToken::new(1));
        let reason = tokio::time::timeout(Duration::from_secs(2), lease.lost()).await.expect("lost at its deadline");
        let calls = backend.calls.load(Ordering::SeqCst);
        assert!(calls < 20, "{calls} refresh attempts before the lease was lost ({reason})");
        assert!(signal.is_lost());
    }

    #[tokio::test]
    async fn dropping_a_lease_revokes_it_and_a_pool_grants_anew_after_loss() {
        let backend = scripted(vec![]);
        let pool = LeasePool::new("test", Duration::from_secs(1));
        let ttl = Duration::from_secs(5);
        let grant = || async { Ok((backend.clone() as Arc<dyn LeaseBackend>, "a".to_owned())) };
        let first = pool.get(ttl, ttl / 3, grant).await.unwrap();
        let again = pool.get(ttl, ttl / 3, grant).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        first.revoke().await.unwrap();
        let fresh = pool.get(ttl, ttl / 3, grant).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &fresh));
        drop((first, again));
        assert_eq!(backend.revoked.load(Ordering::SeqCst), 1, "a revoked lease is not revoked again");
        drop(pool);
        drop(fresh);
        tokio::task::yield_now().await;
        assert_eq!(backend.revoked.load(Ordering::SeqCst), 2);
    }
}
