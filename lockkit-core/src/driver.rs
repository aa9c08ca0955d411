//! For driver authors: the hooks a backend implements and the plumbing every built-in driver
//! shares. Applications never need this module; they use
//! [`DistributedLock`](crate::DistributedLock), which every [`LockBackend`] gets for free.
//!
//! A driver is a type implementing [`LockBackend`]: four hooks ([`grant`](LockBackend::grant),
//! [`inspect`](LockBackend::inspect), [`evict`](LockBackend::evict),
//! [`shutdown`](LockBackend::shutdown)) plus what it is. What the hooks build on:
//!
//! | item | what it is |
//! |---|---|
//! | [`GrantRequest`] | one validated acquire, every default resolved; [`GrantRequest::granted`] turns a grant into a guard |
//! | [`LeasePool`] | one [`KeptLease`] per handle and TTL, made on first use, shared by every grant on it |
//! | [`KeptLease`] | a lease kept alive in the background through a [`LeaseBackend`], with its local deadline and the loss signals of its grants |
//! | [`Grant`] | how one grant is released: one repeatable attempt; the core retries it |
//! | [`Cleanup`] | the one guaranteed-retirement path for what a failed or cancelled request may have left |
//! | [`DropGuard`] | runs a closure on drop unless disarmed: the one "armed" type everything above builds on |
//! | [`Unabandoned`] | a request that runs to its end even when its caller is dropped |
//! | [`LocalTurns`] | one waiter per name and handle on the server (the others queue locally) |
//! | [`on_a_live_lease`] | runs an acquire on a pooled lease, and once more on a fresh one when the server says the first is gone |
//! | [`DriverError`] | how a driver's own error type says what an answer means ([`ErrorKind`]) |
//! | [`retry_transient`] | a unary request retried through transient errors, within the request timeout |
//!
//! Elections, semaphores and read-write locks use the same hooks: a campaign, a permit, a read
//! and a write are grants ([`GrantRequest::kind`] says which), on the same leases, tokens,
//! guards and loss signals; [`LockBackend::observe_leader`] follows an election.

use std::sync::Arc;

use async_trait::async_trait;

pub use crate::drop_guard::DropGuard;
pub use crate::election::LeaderFeed;
pub use crate::guard::Grant;
pub use crate::lease::{KeepAlive, KeptLease, LeaseBackend, LeasePool};
pub use crate::options::GrantRequest;
pub use crate::retire::{Attempt, Cleanup, attempt};
pub use crate::turns::{LocalTurns, Turn};
pub use crate::unabandoned::{Finished, Unabandoned, unabandoned, unabandoned_request, unabandoned_request_by};
pub use crate::url::{Host, Secret, TLS_OPTIONS, TlsFiles};
use crate::{Capabilities, Error, Lease, LockGuard, LockName, LockStatus, Result, Settings};

/// The hooks of a lock backend. Implement this, and the type is a
/// [`DistributedLock`](crate::DistributedLock) (blanket implementation): callers go through the
/// core, which validates names and options, resolves defaults, bounds waits and traces.
///
/// # Contract
/// Every implementation MUST:
/// - grant a name to at most one holder at a time, as long as holders keep their leases alive;
/// - give every grant of a name a [`FencingToken`](crate::FencingToken) strictly greater than
///   those of all earlier grants of that name, across clients and processes;
/// - fire a guard's loss signal when its lease is lost or its grant is removed behind its
///   back, and never let a guard report [`is_held`](LockGuard::is_held) past its local deadline;
/// - keep a grant alive for as long as its guard lives (auto-refresh) and release it when the
///   guard is released or dropped;
/// - leave nothing behind when a waiting [`grant`](Self::grant) future is dropped (no waiter
///   entry, no grant nobody owns);
/// - **leave no ghost grants**: from the moment its owner gives a grant or a waiter entry up
///   (release returned, release errored, release future dropped, guard dropped, acquire
///   cancelled, timed out or errored), the entry is gone from the server within **TTL + request
///   timeout** (a backend whose server may end a lease late says so: Consul, 2 × TTL + request
///   timeout), whatever the network and the server did meanwhile, while the handle lives on and
///   keeps its other locks where it can. Drivers get this by releasing through
///   [`Grant::release`](Grant::release) (one repeatable attempt) and cleaning up through
///   [`Cleanup`](Cleanup); the core retries, and gives the lease up when a removal cannot
///   be confirmed within the request timeout (the exact rule is on [`Cleanup`](Cleanup));
/// - never release or extend a grant that is not its own (compare before delete/extend);
/// - map names into its keyspace injectively, inside the handle's namespace.
///
/// It SHOULD wake waiters through the backend (watch, pub/sub, blocking query) rather than by
/// polling, and declare what it guarantees in [`capabilities`](Self::capabilities).
#[async_trait]
pub trait LockBackend: Send + Sync {
    /// The backend's name, e.g. `"etcd"`.
    fn backend(&self) -> &'static str;

    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// The handle's defaults (TTL, refresh interval, request timeout, namespace).
    fn settings(&self) -> &Settings;

    /// Grants `request.name`, trying once (`request.wait == false`, `None` when held
    /// elsewhere) or waiting until granted.
    ///
    /// # Cancel safety
    /// MUST be cancel safe: the core bounds waits by dropping this future.
    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>>;

    /// Who holds `name` now.
    async fn inspect(&self, name: &LockName) -> Result<LockStatus>;

    /// Removes the current grant of `name`, whoever holds it (an administrator's tool; the
    /// holder's guard fires its loss signal). `true` when there was a grant.
    async fn evict(&self, name: &LockName) -> Result<bool>;

    /// Ends the handle's leases or sessions now, so that nothing it held or queued outlives it
    /// (what [`close`](crate::DistributedLock::close) runs). Drivers whose grants hang on a
    /// [`LeasePool`] — every built-in backend — call [`LeasePool::close`]: revoking a lease
    /// releases every grant on it and fires every guard on it. There is no default: doing
    /// nothing would break the contract of `close`.
    async fn shutdown(&self) -> Result<()>;

    /// Watches who leads the election `name` (the holder of its lock and the value it holds):
    /// a feed of the leader as the backend shows it, pushed by the backend (a watch, a blocking
    /// query, a notification), never polled. The default answers that this driver has no
    /// observation (as file://, which has nothing to push).
    async fn observe_leader(&self, name: &LockName) -> Result<Box<dyn LeaderFeed>> {
        Err(unsupported(self.backend(), &format!("observing election `{name}`")))
    }
}

/// The error of an election operation a driver does not offer (`capabilities().observe` is
/// false).
pub(crate) fn unsupported(backend: &'static str, what: &str) -> crate::Error {
    crate::Error::backend(
        backend,
        format!(
            "{what} is not supported by the {backend} driver (its capabilities().observe is false); campaign, \
             leader and resign are"
        ),
    )
}

/// The error of a semaphore or read-write lock on a driver that has none yet
/// (`capabilities().<capability>` is false).
pub(crate) fn unsupported_kind(backend: &'static str, what: &str, capability: &str) -> crate::Error {
    crate::Error::backend(
        backend,
        format!("{what} are not supported by the {backend} driver yet (its capabilities().{capability} is false)"),
    )
}

/// What a server's answer means to the core, as a driver classifies its client's errors (once,
/// in its own error type, not by matching message text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The lease or session the request was made on is gone (expired, revoked, ended): a new
    /// one may succeed.
    LeaseGone,
    /// Could not tell: a lost connection, a timeout, a server that is not ready. Worth trying
    /// again.
    Temporary,
    /// A definite answer that trying again will not change.
    Permanent,
}

/// A driver's error type: what each error means ([`kind`](Self::kind)) and the
/// [`Error`] users see.
pub trait DriverError: Into<Error> + std::fmt::Display {
    /// What the error means for the request that got it.
    fn kind(&self) -> ErrorKind;
}

/// An [`Error`] as a driver's error: [temporary](Error::is_temporary) ones are
/// [`ErrorKind::Temporary`], the rest [`ErrorKind::Permanent`]. Never
/// [`ErrorKind::LeaseGone`]: a [`Error::LockLost`] may be about one grant or waiter (its key
/// deleted), and losing the whole lease for it would fire every other guard on it; only the
/// driver's own classification of a server's answer can say that a lease is gone.
impl DriverError for Error {
    fn kind(&self) -> ErrorKind {
        if self.is_temporary() { ErrorKind::Temporary } else { ErrorKind::Permanent }
    }
}

/// Whether an attempt of [`on_a_live_lease`] is the last one: a driver that keeps something
/// for the next attempt (a claim to clean up) cleans up on the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastTry(pub bool);

/// Runs `attempt` on the lease `lease` gives (a [`LeasePool::get`], with whatever the driver
/// keeps beside it, e.g. a session's client), and when it fails because that lease is gone — it
/// was lost, or the error is [`ErrorKind::LeaseGone`] — loses the lease (so that the pool makes
/// a new one and every guard on it fires) and tries once more on a fresh lease. A lease given
/// up behind the handle's back is noticed here at the latest.
///
/// `what` names the lease in the loss reason, e.g. `"etcd lease"`: the reason reads
/// "etcd lease 694d… is gone: " and the error.
///
/// (The closures return futures rather than being `async` closures: a driver's `grant` must
/// stay `Send`, which `AsyncFnMut` bounds cannot promise.)
pub async fn on_a_live_lease<S, T, E, LeaseFuture, AttemptFuture>(
    what: &str,
    mut lease: impl FnMut() -> LeaseFuture,
    mut attempt: impl FnMut(Arc<KeptLease>, S, LastTry) -> AttemptFuture,
) -> Result<T>
where
    LeaseFuture: Future<Output = Result<(Arc<KeptLease>, S)>>,
    AttemptFuture: Future<Output = std::result::Result<T, E>>,
    E: DriverError,
{
    let mut retried = false;
    loop {
        let (kept, extra) = lease().await?;
        match attempt(kept.clone(), extra, LastTry(retried)).await {
            Err(e) if !retried && (kept.is_lost() || e.kind() == ErrorKind::LeaseGone) => {
                kept.lose(format!("{what} {} is gone: {e}", kept.id()));
                retried = true;
            }
            outcome => return outcome.map_err(Into::into),
        }
    }
}

/// A random number, different at every call (not for cryptography): for drivers' per-grant
/// owner tokens and for jitter.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// Runs a request until it answers with anything but a transient error (one `transient`
/// accepts: a dead member of a cluster, a lost connection), pausing `pause` between tries, all
/// within `timeout`. The error is the last one seen, or `None` when the time ran out before
/// any answer. For drivers' unary requests.
///
/// # Cancel safety
/// Dropping it drops the request in flight; use it for requests that are safe to repeat.
pub async fn retry_transient<T, E, F, Fut>(
    timeout: std::time::Duration,
    pause: std::time::Duration,
    transient: impl Fn(&E) -> bool,
    mut call: F,
) -> std::result::Result<T, Option<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let mut last_error = None;
    let attempts = async {
        loop {
            match call().await {
                Err(e) if transient(&e) => {
                    last_error = Some(e);
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    };
    match tokio::time::timeout(timeout, attempts).await {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(last_error),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    struct Nothing;

    #[async_trait]
    impl LeaseBackend for Nothing {
        async fn keep_alive(&self) -> Result<KeepAlive> {
            Ok(KeepAlive::Alive(Duration::from_secs(5)))
        }
        async fn revoke(&self) -> Result<()> {
            Ok(())
        }
    }

    fn lease(id: usize) -> Arc<KeptLease> {
        let timing = (Duration::from_secs(5), Duration::from_secs(1), Duration::from_secs(1));
        KeptLease::start("test", id.to_string(), Arc::new(Nothing), timing, Instant::now())
    }

    /// A driver's error: the lease is gone, or something else.
    #[derive(Debug)]
    enum TestError {
        Gone,
        Other(Error),
    }

    impl std::fmt::Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl From<TestError> for Error {
        fn from(e: TestError) -> Error {
            match e {
                TestError::Gone => {
                    Error::LockLost { backend: "test", name: "x".into(), reason: "no such lease".into() }
                }
                TestError::Other(e) => e,
            }
        }
    }

    impl DriverError for TestError {
        fn kind(&self) -> ErrorKind {
            match self {
                TestError::Gone => ErrorKind::LeaseGone,
                TestError::Other(e) => e.kind(),
            }
        }
    }

    fn gone() -> TestError {
        TestError::Gone
    }

    /// Runs `on_a_live_lease` with attempts answering `answers` in turn; what it returned, the
    /// leases it was given, and whether each was lost.
    async fn run(answers: Vec<std::result::Result<u8, TestError>>) -> (Result<u8>, Vec<bool>, Vec<bool>) {
        let (mut answers, mut made, mut last_tries) = (answers.into_iter(), Vec::new(), Vec::new());
        let outcome = on_a_live_lease(
            "test lease",
            || {
                made.push(lease(made.len()));
                std::future::ready(Ok((made.last().unwrap().clone(), ())))
            },
            |_, (), LastTry(last)| {
                last_tries.push(last);
                std::future::ready(answers.next().unwrap())
            },
        )
        .await;
        (outcome, made.iter().map(|l| l.is_lost()).collect(), last_tries)
    }

    #[tokio::test]
    async fn a_lease_gone_is_lost_and_the_attempt_made_once_more_on_a_fresh_one() {
        let (outcome, lost, last_tries) = run(vec![Err(gone()), Ok(7)]).await;
        assert_eq!((outcome.unwrap(), lost, last_tries), (7, vec![true, false], vec![false, true]));

        let (outcome, lost, _) = run(vec![Err(gone()), Err(gone())]).await;
        assert!(matches!(outcome, Err(Error::LockLost { .. })), "only once more: {outcome:?}");
        assert_eq!(lost, vec![true, false]);

        let refused = Error::backend("test", "permission denied");
        let (outcome, lost, _) = run(vec![Err(TestError::Other(refused))]).await;
        assert!(matches!(outcome, Err(Error::Backend { .. })) && lost == vec![false], "other errors at once");
        let waiter_lost = Error::LockLost { backend: "test", name: "x".into(), reason: "its key was deleted".into() };
        let (outcome, lost, _) = run(vec![Err(TestError::Other(waiter_lost))]).await;
        assert!(
            matches!(outcome, Err(Error::LockLost { .. })) && lost == vec![false],
            "one grant's loss is not the lease's"
        );
    }

    #[test]
    fn a_request_cannot_be_made_with_options_that_do_not_fit() {
        let settings = Settings::from_url(&"memory://".parse().unwrap()).unwrap();
        let zero = crate::LockOptions::new().refresh_interval(Duration::ZERO);
        assert!(matches!(GrantRequest::new(&settings, "x", &zero), Err(Error::InvalidOptions { .. })));
        assert!(matches!(GrantRequest::new(&settings, "", &crate::LockOptions::new()), Err(Error::InvalidName { .. })));
        let request = GrantRequest::new(&settings, "x", &crate::LockOptions::new()).unwrap();
        assert_eq!((request.ttl, request.refresh_interval, request.wait), (settings.ttl, settings.ttl / 3, true));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_an_answer_or_the_timeout() {
        let mut calls = 0;
        let answer = super::retry_transient(
            Duration::from_secs(1),
            Duration::ZERO,
            |e: &&str| *e == "busy",
            || {
                calls += 1;
                let reply = if calls < 3 { Err("busy") } else { Ok(calls) };
                async move { reply }
            },
        )
        .await;
        assert_eq!(answer, Ok(3));

        let final_error = super::retry_transient(
            Duration::from_secs(1),
            Duration::ZERO,
            |e: &&str| *e == "busy",
            || async { Err::<(), _>("refused") },
        )
        .await;
        assert_eq!(final_error, Err(Some("refused")), "a lasting error is returned at once");

        let timed_out = super::retry_transient(
            Duration::from_millis(50),
            Duration::from_millis(5),
            |_: &&str| true,
            || async { Err::<(), _>("busy") },
        )
        .await;
        assert_eq!(timed_out, Err(Some("busy")), "the last transient error when time runs out");
    }
}
