//! Guaranteed retirement: how a grant or a waiter entry that its owner gave up is made to go
//! from the server, whatever the network does (Curator's `guaranteed()` delete is the model).
//!
//! **The rule.** A retirement (a release, a waiter's cleanup, the undoing of an acquire that was
//! dropped or failed) is tried, and tried again with backoff, for up to the handle's request
//! timeout from the moment the owner gave the entry up. If the server has not confirmed it by
//! then, and the lease would keep the entry alive ([`LeaseBackend::keeps_orphans`]), the handle
//! **gives the lease up**: every other guard on it fires its loss signal (the reason names the
//! lock whose release failed), the lease is never refreshed again and is revoked in the
//! background, and later acquires get a fresh lease. The last refresh of the lease was sent at
//! most one request timeout after the entry was given up, so the server ends the entry within
//! **TTL + request timeout** of that moment. A retirement whose lease is lost meanwhile is moot
//! where the server ends the entry with the lease; where it does not (a Redis waiter's place in
//! line), the entry is still removed.
//!
//! An acquire request whose outcome is unknown (no answer in time, a cut connection) may still
//! be applied later, after any cleanup sent behind it: the entry it may create is one that
//! cannot be confirmed gone, so such a request gives the lease up the same way.
//!
//! [`LeaseBackend::keeps_orphans`]: crate::driver::LeaseBackend::keeps_orphans

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::{DropGuard, Finished, Turn};
use crate::lease::KeptLease;
use crate::{Error, Lease, Result};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One attempt at removing an entry: `Ok` once the server confirmed it is gone (or was never
/// there), [`Error::NotHeld`] when it belongs to someone else now, any other error when the
/// attempt could not tell (it is tried again). Repeatable.
pub type Attempt = Box<dyn FnMut() -> BoxFuture<Result<()>> + Send>;

/// Makes an [`Attempt`] of a closure returning a future.
pub fn attempt<F, Fut>(mut f: F) -> Attempt
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    Box::new(move || Box::pin(f()))
}

/// The first pause between attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Retires an entry on `lease` given up at `given_up`: tries `attempt` until the server confirms,
/// the retirement is moot (the lease is lost), or the request timeout since `given_up` has
/// passed — then gives the lease up when it would keep the entry alive. `what` names the entry
/// in messages (`lock "x"`). The answer: `Ok`, [`Error::NotHeld`], [`Error::LockLost`] (moot), or
/// the error that kept it from being confirmed.
pub(crate) async fn retire(lease: Arc<KeptLease>, what: String, given_up: Instant, mut attempt: Attempt) -> Result<()> {
    let backend = lease.shared.state.backend;
    let deadline = given_up + lease.request_timeout();
    let mut pause = FIRST_PAUSE;
    let mut unanswered = false;
    let mut last_error = None;
    // Where the server ends the entry with the lease, a lost lease makes the retirement moot;
    // elsewhere (a Redis waiter's place in line) the entry outlives the lease, so it is still
    // removed, and a lost grant is still reported as lost.
    let dies_with_lease = lease.shared.backend.keeps_orphans();
    let lost = |what: String| {
        let reason = lease.shared.state.reason_text();
        Err(Error::LockLost { backend, name: what, reason: format!("its lease was lost ({reason})") })
    };
    loop {
        if dies_with_lease && lease.is_lost() {
            return lost(what);
        }
        let tried = tokio::select! {
            biased;
            _ = lease.shared.state.lost(), if dies_with_lease => continue,
            tried = tokio::time::timeout_at(deadline.into(), attempt()) => tried,
        };
        match tried {
            Ok(Ok(()) | Err(Error::NotHeld { .. })) if lease.is_lost() => return lost(what),
            Ok(Ok(())) => return Ok(()),
            // An earlier attempt may have removed it without its answer reaching us.
            Ok(Err(Error::NotHeld { .. })) if unanswered => return Ok(()),
            Ok(Err(e @ Error::NotHeld { .. })) => return Err(e),
            Ok(Err(e)) => {
                unanswered = true;
                tracing::debug!(backend, entry = %what, error = %e, retry_in = ?pause, "retirement failed; retrying");
                last_error = Some(e);
            }
            Err(_) => break,
        }
        tokio::select! {
            _ = lease.shared.state.lost(), if dies_with_lease => {}
            _ = tokio::time::sleep_until(deadline.min(Instant::now() + pause).into()) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
        if Instant::now() >= deadline {
            break;
        }
    }
    let cause = match &last_error {
        Some(e) => e.to_string(),
        None => "no answer".to_owned(),
    };
    Err(unconfirmed(&lease, &what, &cause))
}

/// A retirement that could not be confirmed in time: gives the lease up if it would keep the
/// entry alive, logs, and says what happens now.
fn unconfirmed(lease: &KeptLease, what: &str, cause: &str) -> Error {
    let (backend, id, timeout) = (lease.shared.state.backend, &lease.shared.state.id, lease.request_timeout());
    let ttl = lease.shared.state.ttl;
    let message = if lease.shared.backend.keeps_orphans() {
        lease.give_up(format!(
            "the removal of {what} could not be confirmed within {timeout:?} ({cause}); lease {id} was given up so \
             that the server ends it"
        ));
        format!(
            "the removal of {what} could not be confirmed within {timeout:?} ({cause}); lease {id} it hung on was \
             given up, so the server ends it within the TTL ({ttl:?})"
        )
    } else {
        format!(
            "the removal of {what} could not be confirmed within {timeout:?} ({cause}); it is no longer refreshed, \
             so the server ends it within the TTL ({ttl:?})"
        )
    };
    tracing::warn!(backend, entry = %what, reason = %cause, "{message}");
    Error::connection(backend, id.clone(), message, None)
}

/// Removes what an acquire put on the server unless the acquire hands it out: a waiter's key or
/// node, a grant it made but could not return, a request that may still be applied. Armed when
/// made; [`disarm`](Self::disarm) once the entry became a guard's. Dropped armed (the acquire
/// failed, timed out or was cancelled), it retires the entry in the background: retried for up
/// to one request timeout, and if still unconfirmed where the lease would keep the entry alive,
/// the lease is given up. [`now`](Self::now) does the same and waits for it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> lockkit_core::Result<()> {
/// # use std::sync::Arc; use std::time::{Duration, Instant};
/// # use lockkit_core::driver::{KeepAlive, KeptLease, LeaseBackend};
/// # struct Nothing;
/// # #[async_trait::async_trait] impl LeaseBackend for Nothing {
/// #     async fn keep_alive(&self) -> lockkit_core::Result<KeepAlive> { Ok(KeepAlive::Alive(Duration::from_secs(5))) }
/// #     async fn revoke(&self) -> lockkit_core::Result<()> { Ok(()) }
/// # }
/// # let timing = (Duration::from_secs(5), Duration::from_secs(1), Duration::from_secs(1));
/// # let lease = KeptLease::start("doc", "1".into(), Arc::new(Nothing), timing, Instant::now());
/// use lockkit_core::driver::{Cleanup, attempt};
/// let cleanup = Cleanup::new(&lease, "lock \"x\"", attempt(|| async { /* delete my key */ Ok(()) }));
/// // … the acquire is cancelled or fails: `cleanup` is dropped armed and retires the key.
/// drop(cleanup);
/// # Ok(()) }
/// ```
pub struct Cleanup {
    armed: DropGuard<Pending, fn(Pending)>,
}

/// What an armed [`Cleanup`] retires, and how.
struct Pending {
    lease: Arc<KeptLease>,
    what: String,
    attempt: Attempt,
    /// A request in flight that may create the entry: the cleanup runs after it.
    after: Option<Finished>,
    /// This process's turn on the key, kept until the entry is gone.
    turn: Option<Turn>,
}

impl Cleanup {
    /// An armed cleanup of an entry on `lease`, named `what` in messages.
    pub fn new(lease: &Arc<KeptLease>, what: impl Into<String>, attempt: Attempt) -> Self {
        let pending = Pending { lease: lease.clone(), what: what.into(), attempt, after: None, turn: None };
        Cleanup { armed: DropGuard::new(pending, Pending::in_background) }
    }

    /// Runs the cleanup only after this request has finished (two requests in flight at once
    /// are not ordered by every backend); a request that ended unanswered may be applied later,
    /// so it gives the lease up, as an unconfirmed cleanup does.
    pub fn after(&mut self, request: Finished) {
        self.armed.get_mut().after = Some(request);
    }

    /// Keeps this process's turn on the key until the entry is gone (a later acquire through the
    /// same handle must not lose its new entry to this cleanup).
    pub fn keep_turn(&mut self, turn: Turn) {
        self.armed.get_mut().turn = Some(turn);
    }

    /// The entry became a guard's: nothing to clean up. Gives back the turn.
    pub fn disarm(self) -> Option<Turn> {
        self.armed.disarm().turn
    }

    /// Cleans up now and waits until it is done (or moot, or the lease was given up).
    ///
    /// # Cancel safety
    /// Cancel safe: dropped, it finishes in the background.
    pub async fn now(self) -> Result<()> {
        crate::driver::unabandoned(self.armed.disarm().work()).0.await
    }
}

impl Pending {
    /// Dropped armed: the cleanup runs in the background. (Without a runtime nothing can run
    /// it: the lease, refreshed on that runtime, ends too.)
    fn in_background(self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.work());
        }
    }

    fn work(self) -> impl Future<Output = Result<()>> + Send + 'static {
        let Pending { lease, what, attempt, after, turn } = self;
        let given_up = Instant::now();
        async move {
            let answered = match after {
                Some(request) => request.wait().await,
                None => true,
            };
            let result = if answered || !lease.shared.backend.keeps_orphans() {
                retire(lease, what, given_up, attempt).await
            } else {
                let cause = "the request that would create it ended without an answer, and may still be applied";
                Err(unconfirmed(&lease, &what, cause))
            };
            drop(turn);
            result
        }
    }
}

impl fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cleanup").field("what", &self.armed.get().what).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::driver::{Grant, KeepAlive, LeaseBackend};
    use crate::guard::GuardParts;
    use crate::{FencingToken, LockGuard, LockName, LossSignal};

    const TTL: Duration = Duration::from_secs(5);
    const TIMEOUT: Duration = Duration::from_millis(300);

    /// A lease that is always alive, and counts its revokes.
    struct Alive {
        revoked: AtomicUsize,
        keeps_orphans: bool,
    }

    #[async_trait]
    impl LeaseBackend for Alive {
        async fn keep_alive(&self) -> Result<KeepAlive> {
            Ok(KeepAlive::Alive(TTL))
        }
        async fn revoke(&self) -> Result<()> {
            self.revoked.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn keeps_orphans(&self) -> bool {
            self.keeps_orphans
        }
    }

    fn lease(keeps_orphans: bool) -> (Arc<KeptLease>, Arc<Alive>) {
        let backend = Arc::new(Alive { revoked: AtomicUsize::new(0), keeps_orphans });
        let lease = KeptLease::start("test", "l".into(), backend.clone(), (TTL, TTL / 3, TIMEOUT), Instant::now());
        (lease, backend)
    }

    /// A grant whose release answers from a script (then `Ok`), after an optional gate opens,
    /// recording whether its guard's signal had fired when it was sent.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<Vec<Result<()>>>,
        gate: tokio::sync::Notify,
        gated: AtomicBool,
        calls: AtomicUsize,
        signal: Mutex<Option<LossSignal>>,
        lost_when_sent: AtomicBool,
    }

    struct ScriptedGrant(Arc<Scripted>);

    #[async_trait]
    impl Grant for ScriptedGrant {
        async fn release(&self) -> Result<()> {
            let s = &self.0;
            if let Some(signal) = s.signal.lock().unwrap().as_ref() {
                s.lost_when_sent.store(signal.is_lost(), Ordering::SeqCst);
            }
            if s.gated.load(Ordering::SeqCst) {
                s.gate.notified().await;
            }
            s.calls.fetch_add(1, Ordering::SeqCst);
            let mut answers = s.answers.lock().unwrap();
            if answers.is_empty() { Ok(()) } else { answers.remove(0) }
        }
    }

    fn guard(lease: &Arc<KeptLease>, script: &Arc<Scripted>) -> LockGuard {
        let signal = lease.grant_signal();
        *script.signal.lock().unwrap() = Some(signal.clone());
        let parts = GuardParts::new(
            "test",
            LockName::new("x").unwrap(),
            FencingToken::new(1),
            lease.clone(),
            signal,
            Box::new(ScriptedGrant(script.clone())),
        );
        LockGuard::new(parts)
    }

    fn failing(times: usize) -> Arc<Scripted> {
        let failure = || Err(Error::connection("test", "nowhere", "refused", None));
        Arc::new(Scripted { answers: Mutex::new((0..times).map(|_| failure()).collect()), ..Default::default() })
    }

    #[tokio::test]
    async fn a_release_that_cannot_be_confirmed_in_time_gives_the_lease_up_and_fires_the_other_guards() {
        let (lease, backend) = lease(true);
        let script = failing(usize::MAX >> 48);
        let (released, other) = (guard(&lease, &script), guard(&lease, &Arc::new(Scripted::default())));
        let started = Instant::now();
        let err = released.release().await.unwrap_err();
        assert!(started.elapsed() >= TIMEOUT && started.elapsed() < TIMEOUT * 3, "{:?}", started.elapsed());
        assert!(err.to_string().contains("given up"), "{err}");
        assert!(script.calls.load(Ordering::SeqCst) > 2, "retried with backoff");
        let reason = tokio::time::timeout(TIMEOUT, other.lost()).await.expect("the other guard fires");
        assert!(reason.contains("lock \"x\"") && reason.contains("could not be confirmed"), "{reason}");
        assert!(lease.is_lost());
        tokio::time::timeout(TIMEOUT * 2, async {
            while backend.revoked.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the given-up lease is revoked");
    }

    #[tokio::test]
    async fn a_release_confirmed_after_failures_keeps_the_lease() {
        let (lease, _) = lease(true);
        let script = failing(2);
        let (released, other) = (guard(&lease, &script), guard(&lease, &Arc::new(Scripted::default())));
        released.release().await.unwrap();
        assert_eq!(script.calls.load(Ordering::SeqCst), 3);
        assert!(!lease.is_lost() && other.is_held());
    }

    #[tokio::test]
    async fn orphans_that_end_by_themselves_do_not_cost_the_lease() {
        let (lease, _) = lease(false);
        let (released, other) = (guard(&lease, &failing(1000)), guard(&lease, &Arc::new(Scripted::default())));
        assert!(released.release().await.is_err());
        assert!(!lease.is_lost() && other.is_held());
    }

    #[tokio::test]
    async fn the_signal_fires_before_the_release_is_sent_and_a_dropped_release_still_releases() {
        let (lease, _) = lease(true);
        let script = Arc::new(Scripted { gated: AtomicBool::new(true), ..Default::default() });
        let held = guard(&lease, &script);
        let signal = held.loss_signal();
        let mut release = Box::pin(held.release());
        assert!(std::future::poll_fn(|cx| std::task::Poll::Ready(release.as_mut().poll(cx))).await.is_pending());
        assert!(script.lost_when_sent.load(Ordering::SeqCst), "a released guard is not held when the release is sent");
        assert!(signal.is_lost());
        drop(release);
        script.gate.notify_one();
        tokio::time::timeout(TIMEOUT, async {
            while script.calls.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the dropped release finished in the background");
        assert!(!lease.is_lost());
    }

    #[tokio::test]
    async fn not_held_after_an_unanswered_attempt_counts_as_released() {
        let (lease, _) = lease(true);
        let script = failing(1);
        script.answers.lock().unwrap().push(Err(Error::not_held("test", "x", "gone")));
        guard(&lease, &script).release().await.expect("the first attempt may have removed it");
        let script = Arc::new(Scripted::default());
        script.answers.lock().unwrap().push(Err(Error::not_held("test", "x", "gone")));
        assert!(matches!(guard(&lease, &script).release().await, Err(Error::NotHeld { .. })));
    }

    #[tokio::test]
    async fn a_cleanup_after_an_unanswered_request_gives_the_lease_up() {
        let (lease, _) = lease(true);
        let signal = lease.grant_signal();
        let (request, finished) = crate::driver::unabandoned_request(async {
            Err::<(), _>(Error::connection("test", "nowhere", "no answer", None))
        });
        assert!(request.await.is_err());
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let mut cleanup = Cleanup::new(
            &lease,
            "lock \"y\"",
            attempt(move || {
                flag.store(true, Ordering::SeqCst);
                async { Ok(()) }
            }),
        );
        cleanup.after(finished);
        assert!(cleanup.now().await.is_err());
        assert!(!ran.load(Ordering::SeqCst), "a delete could be overtaken by the request: the lease goes instead");
        assert!(signal.lost().await.contains("may still be applied"));
    }

    #[tokio::test]
    async fn a_dropped_cleanup_runs_after_its_request_and_is_moot_once_the_lease_is_lost() {
        let (lease, _) = lease(true);
        let (gate, opened) = tokio::sync::oneshot::channel::<()>();
        let (request, finished) = crate::driver::unabandoned_request(async move {
            let _ = opened.await;
            Ok(())
        });
        let order = Arc::new(Mutex::new(Vec::new()));
        let log = order.clone();
        let mut cleanup = Cleanup::new(
            &lease,
            "lock \"z\"",
            attempt(move || {
                log.lock().unwrap().push("cleanup");
                async { Ok(()) }
            }),
        );
        cleanup.after(finished);
        drop((request, cleanup));
        tokio::task::yield_now().await;
        order.lock().unwrap().push("request answered");
        gate.send(()).unwrap();
        tokio::time::timeout(TIMEOUT, async {
            while order.lock().unwrap().len() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(*order.lock().unwrap(), ["request answered", "cleanup"]);

        lease.lose("gone");
        let never = Cleanup::new(&lease, "lock \"w\"", attempt(|| async { panic!("a moot cleanup is not sent") }));
        assert!(matches!(never.now().await, Err(Error::LockLost { .. })));
    }

    /// Where the entry outlives the lease (a Redis waiter's place in line), a lost lease does
    /// not make its cleanup moot: the entry is still removed.
    #[tokio::test]
    async fn a_cleanup_of_an_entry_that_outlives_its_lease_still_runs_after_the_loss() {
        let (lease, _) = lease(false);
        lease.lose("closed");
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let cleanup = Cleanup::new(
            &lease,
            "lock \"v\"",
            attempt(move || {
                flag.store(true, Ordering::SeqCst);
                async { Ok(()) }
            }),
        );
        assert!(matches!(cleanup.now().await, Err(Error::LockLost { .. })), "still reported as lost");
        assert!(ran.load(Ordering::SeqCst), "the entry was removed all the same");
    }

    /// A lease whose first keep-alive answers only when a gate opens.
    struct Gated {
        gate: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
        revoked: AtomicUsize,
    }

    #[async_trait]
    impl LeaseBackend for Gated {
        async fn keep_alive(&self) -> Result<KeepAlive> {
            let gate = self.gate.lock().unwrap().take();
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            Ok(KeepAlive::Alive(Duration::from_secs(1)))
        }
        async fn revoke(&self) -> Result<()> {
            self.revoked.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A refresh answered just before the deadline but processed just after it (a busy runtime,
    /// a paused process) does not revive the lease: a guard that read "lost" never reads "held"
    /// again, and a release in that window is moot because the lease really ends (revoked).
    #[tokio::test(flavor = "current_thread")]
    async fn a_deadline_that_passed_is_final_even_if_a_refresh_answer_comes_after_it() {
        let ttl = Duration::from_secs(1);
        let (open, gate) = tokio::sync::oneshot::channel();
        let backend = Arc::new(Gated { gate: Mutex::new(Some(gate)), revoked: AtomicUsize::new(0) });
        let lease = KeptLease::start("test", "l".into(), backend.clone(), (ttl, ttl * 3 / 10, TIMEOUT), Instant::now());
        let (a, b) = (guard(&lease, &Arc::new(Scripted::default())), guard(&lease, &Arc::new(Scripted::default())));
        let deadline = lease.valid_until();
        let opener = std::thread::spawn(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()) - Duration::from_millis(30));
            let _ = open.send(());
        });
        tokio::time::sleep_until((deadline - Duration::from_millis(100)).into()).await;
        // The runtime is blocked until 30 ms after the deadline; the answer came 30 ms before.
        std::thread::sleep(deadline + Duration::from_millis(30) - Instant::now());
        opener.join().unwrap();
        assert!(!b.is_held(), "past its deadline");
        assert!(matches!(a.release().await, Err(Error::LockLost { .. })));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!b.is_held(), "loss is final: a late confirmation does not make the guard held again");
        assert!(lease.is_lost());
        tokio::time::timeout(TIMEOUT, async {
            while backend.revoked.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the lost lease is revoked, so nothing keeps the moot grant alive");
    }
}
