//! The lock API: one trait every backend implements.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::Instrument;

use crate::options::default_holder;
use crate::{Capabilities, Error, GrantRequest, LockGuard, LockName, LockOptions, LockStatus, Result, Settings, Wait};

/// A backend handle that hands out locks by name — what [`connect`](https://docs.rs/lockkit)
/// returns for a URL. Cheap to share (`Arc<dyn DistributedLock>`); every lock taken through one
/// handle with the same TTL shares one lease.
///
/// Applications call the provided methods: [`acquire`](Self::acquire),
/// [`try_acquire`](Self::try_acquire), [`acquire_timeout`](Self::acquire_timeout),
/// [`acquire_with`](Self::acquire_with), [`status`](Self::status) and
/// [`force_release`](Self::force_release). Drivers implement the required methods
/// ([`grant`](Self::grant), [`inspect`](Self::inspect), [`evict`](Self::evict)); the core does
/// name validation, defaults, bounded waits and tracing once for all of them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> lockkit_core::Result<()> {
/// use std::time::Duration;
/// use lockkit_core::DistributedLock;
///
/// let locks = lockkit_core::memory::connect(&"memory://trait-doc".parse()?)?;
/// let guard = locks.acquire("invoices").await?;
/// assert!(locks.try_acquire("invoices").await?.is_none());
/// let err = locks.acquire_timeout("invoices", Duration::from_millis(50)).await.unwrap_err();
/// assert!(matches!(err, lockkit_core::Error::Timeout { .. }));
/// drop(guard);
/// # Ok(()) }
/// ```
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
///   [`Grant::release`](crate::Grant::release) (one repeatable attempt) and cleaning up through
///   [`Cleanup`](crate::Cleanup); the core retries, and gives the lease up when a removal cannot
///   be confirmed within the request timeout (the exact rule is on [`Cleanup`](crate::Cleanup));
/// - never release or extend a grant that is not its own (compare before delete/extend);
/// - map names into its keyspace injectively, inside the handle's namespace.
///
/// It SHOULD wake waiters through the backend (watch, pub/sub, blocking query) rather than by
/// polling, and declare what it guarantees in [`capabilities`](Self::capabilities).
#[async_trait]
pub trait DistributedLock: Send + Sync {
    /// The backend's name, e.g. `"etcd"`.
    fn backend(&self) -> &'static str;

    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// The handle's defaults (TTL, refresh interval, request timeout, namespace).
    fn settings(&self) -> &Settings;

    /// Driver hook: grant `request.name`, trying once (`request.wait == false`, `None` when
    /// held elsewhere) or waiting until granted.
    ///
    /// # Cancel safety
    /// MUST be cancel safe: the core bounds waits by dropping this future.
    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>>;

    /// Driver hook: who holds `name` now.
    async fn inspect(&self, name: &LockName) -> Result<LockStatus>;

    /// Driver hook: remove the current grant of `name`, whoever holds it (an administrator's
    /// tool; the holder's guard fires its loss signal). `true` when there was a grant.
    async fn evict(&self, name: &LockName) -> Result<bool>;

    /// Driver hook: ends the handle's leases or sessions now, so that nothing it held or
    /// queued outlives it (a program about to exit calls [`close`](Self::close)). Drivers whose
    /// grants hang on a [`LeasePool`](crate::LeasePool) — every built-in backend — call
    /// [`LeasePool::close`](crate::LeasePool::close): revoking a lease releases every grant on
    /// it and fires every guard on it. There is no default: doing nothing would break the
    /// contract of `close`.
    async fn shutdown(&self) -> Result<()>;

    /// Releases everything this handle holds or waits for, and waits for the backend to
    /// confirm. Guards of the handle fire their loss signals. Call it before a program exits:
    /// dropping a handle releases in the background, which an exiting runtime may not finish.
    async fn close(&self) -> Result<()> {
        tracing::debug!(backend = self.backend(), "closing the handle");
        self.shutdown().await
    }

    /// Waits until the lock is granted, with the handle's defaults.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future leaves no waiter and no grant behind.
    async fn acquire(&self, name: &str) -> Result<LockGuard> {
        let guard = self.acquire_with(name, &LockOptions::new()).await?;
        guard.ok_or_else(|| no_grant(self.backend(), name))
    }

    /// Tries once: `None` when the lock is held elsewhere.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn try_acquire(&self, name: &str) -> Result<Option<LockGuard>> {
        self.acquire_with(name, &LockOptions::new().wait(Wait::NoWait)).await
    }

    /// Waits at most `timeout`, then fails with [`Error::Timeout`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn acquire_timeout(&self, name: &str, timeout: Duration) -> Result<LockGuard> {
        let guard = self.acquire_with(name, &LockOptions::new().wait(Wait::Timeout(timeout))).await?;
        guard.ok_or_else(|| no_grant(self.backend(), name))
    }

    /// Acquires with explicit options. `None` only with [`Wait::NoWait`] when the lock is held.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::Timeout`], and the backend's connection errors.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn acquire_with(&self, name: &str, options: &LockOptions) -> Result<Option<LockGuard>> {
        let name = LockName::new(name)?;
        let settings = self.settings();
        let (ttl, refresh_interval) = settings
            .check_timing(options.ttl.unwrap_or(settings.ttl), options.refresh_interval.or(settings.refresh_interval))
            .map_err(|reason| Error::InvalidOptions { reason: format!("lock `{name}`: {reason}") })?;
        let holder = options.holder.clone().unwrap_or_else(default_holder);
        let request = GrantRequest::new(name.clone(), ttl, refresh_interval, holder, options.wait != Wait::NoWait);
        let span = tracing::info_span!("lockkit.acquire", backend = self.backend(), lock = %name, token = tracing::field::Empty);
        let started = Instant::now();
        // A waiter whose lease was lost while it waited (the handle gave the lease up, a pause
        // past the TTL) lost its place, not its wish: it queues again on a fresh lease.
        let grant = async {
            let mut requeued = 0;
            loop {
                match self.grant(&request).await {
                    Err(Error::LockLost { reason, .. }) if request.wait && requeued < MAX_REQUEUES => {
                        tracing::debug!(%reason, "the lease was lost while waiting; waiting again on a fresh lease");
                        requeued += 1;
                    }
                    other => return other,
                }
            }
        };
        let outcome = async {
            match options.wait {
                Wait::Timeout(timeout) => match tokio::time::timeout(timeout, grant).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout {
                        backend: self.backend(),
                        name: name.to_string(),
                        waited: started.elapsed(),
                    }),
                },
                Wait::Forever | Wait::NoWait => grant.await,
            }
        }
        .instrument(span.clone())
        .await;
        let _enter = span.enter();
        match &outcome {
            Ok(Some(guard)) => {
                span.record("token", guard.fencing_token().get());
                tracing::debug!(waited = ?started.elapsed(), "acquired");
            }
            Ok(None) => tracing::debug!("held elsewhere"),
            Err(e) => tracing::debug!(error = %e, waited = ?started.elapsed(), "not acquired"),
        }
        outcome
    }

    /// Who holds `name` now: holder metadata, fencing token and TTL left where the backend can
    /// tell.
    async fn status(&self, name: &str) -> Result<LockStatus> {
        self.inspect(&LockName::new(name)?).await
    }

    /// Removes the current grant of `name`, whoever holds it; the holder's guard fires its loss
    /// signal. For operators breaking a stuck lock. `true` when there was a grant.
    async fn force_release(&self, name: &str) -> Result<bool> {
        let name = LockName::new(name)?;
        tracing::warn!(backend = self.backend(), lock = %name, "force release");
        self.evict(&name).await
    }
}

/// How often a waiter whose lease was lost while it waited queues again before the loss is
/// reported.
const MAX_REQUEUES: usize = 3;

/// A waiting grant that ended without a guard: a driver bug, reported rather than panicked on.
fn no_grant(backend: &'static str, name: &str) -> Error {
    Error::backend(
        backend,
        format!("lock `{name}`: the driver ended a wait without a grant or an error (a bug; please report it)"),
    )
}

/// `etcd backend etcd://10.0.0.1:2379/jobs` (credentials redacted).
impl fmt::Display for dyn DistributedLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} backend {}", self.backend(), self.settings().url)
    }
}

impl fmt::Debug for dyn DistributedLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedLock").field("backend", &self.backend()).field("url", &self.settings().url).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// memory://, except that its first `losses` waits end with the waiter's lease lost.
    struct LosingWaits {
        inner: Arc<dyn DistributedLock>,
        losses: AtomicUsize,
    }

    #[async_trait]
    impl DistributedLock for LosingWaits {
        fn backend(&self) -> &'static str {
            "test"
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        fn settings(&self) -> &Settings {
            self.inner.settings()
        }
        async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
            if self.losses.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                let reason = "while waiting, its lease was lost".into();
                return Err(Error::LockLost { backend: "test", name: request.name.to_string(), reason });
            }
            self.inner.grant(request).await
        }
        async fn inspect(&self, name: &LockName) -> Result<LockStatus> {
            self.inner.inspect(name).await
        }
        async fn evict(&self, name: &LockName) -> Result<bool> {
            self.inner.evict(name).await
        }
        async fn shutdown(&self) -> Result<()> {
            self.inner.shutdown().await
        }
    }

    fn losing(losses: usize) -> LosingWaits {
        let inner = crate::memory::connect(&"memory://losing-waits".parse().unwrap()).unwrap();
        LosingWaits { inner, losses: AtomicUsize::new(losses) }
    }

    #[tokio::test]
    async fn a_waiter_whose_lease_was_lost_queues_again_but_a_try_reports_it() {
        assert!(losing(MAX_REQUEUES).acquire("requeued").await.is_ok(), "queued again on a fresh lease");
        let err = losing(MAX_REQUEUES + 1).acquire("given-up").await.unwrap_err();
        assert!(matches!(err, Error::LockLost { .. }), "a lasting loss is reported: {err}");
        assert!(matches!(losing(1).try_acquire("tried").await, Err(Error::LockLost { .. })));
    }
}
