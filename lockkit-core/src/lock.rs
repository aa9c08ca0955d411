//! The lock API: one trait every backend implements.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::Instrument;

use crate::driver::{GrantRequest, LockBackend};
use crate::election::{Leader, LeaderChanges, Leadership};
use crate::{Capabilities, Error, GrantKind, LockGuard, LockName, LockOptions, LockStatus, Result, Settings, Wait};

/// A backend handle that hands out locks by name — what [`connect`](https://docs.rs/lockkit)
/// returns for a URL. Cheap to share (`Arc<dyn DistributedLock>`); every lock taken through one
/// handle with the same TTL shares one lease.
///
/// This is what applications use. It cannot be implemented outside the core: a driver
/// implements the hooks of [`LockBackend`](crate::driver::LockBackend) and gets this trait from a
/// blanket implementation, so name validation, option checks, defaults, bounded waits and
/// tracing happen once, in the core, for every backend (the shape of object_store's
/// `ObjectStore` + `ObjectStoreExt`).
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
#[async_trait]
pub trait DistributedLock: sealed::Sealed + Send + Sync {
    /// The backend's name, e.g. `"etcd"`.
    fn backend(&self) -> &'static str;

    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// The handle's defaults (TTL, refresh interval, request timeout, namespace).
    fn settings(&self) -> &Settings;

    /// Releases everything this handle holds or waits for, and waits for the backend to
    /// confirm. Guards of the handle fire their loss signals. Call it before a program exits:
    /// dropping a handle releases in the background, which an exiting runtime may not finish.
    async fn close(&self) -> Result<()>;

    /// Waits until the lock is granted, with the handle's defaults.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future leaves no waiter and no grant behind.
    async fn acquire(&self, name: &str) -> Result<LockGuard>;

    /// Tries once: `None` when the lock is held elsewhere.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn try_acquire(&self, name: &str) -> Result<Option<LockGuard>>;

    /// Waits at most `timeout`, then fails with [`Error::Timeout`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn acquire_timeout(&self, name: &str, timeout: Duration) -> Result<LockGuard>;

    /// Acquires with explicit options. `None` only with [`Wait::NoWait`] when the lock is held.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::InvalidOptions`], [`Error::Timeout`], and the backend's
    /// connection errors.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn acquire_with(&self, name: &str, options: &LockOptions) -> Result<Option<LockGuard>>;

    /// Who holds `name` now: holder metadata, fencing token and TTL left where the backend can
    /// tell.
    async fn status(&self, name: &str) -> Result<LockStatus>;

    /// Removes the current grant of `name`, whoever holds it; the holder's guard fires its loss
    /// signal. For operators breaking a stuck lock. `true` when there was a grant.
    async fn force_release(&self, name: &str) -> Result<bool>;

    /// Campaigns in the election `election` with `value` and waits until this candidate leads.
    /// An election is the lock of that name held with `value` as its holder metadata: the
    /// leader is its holder, the term its fencing token, and leadership is refreshed, lost and
    /// handed over as the lock is (so an election and a lock of the same name are one).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future leaves no candidate behind.
    async fn campaign(&self, election: &str, value: &str) -> Result<Leadership>;

    /// Campaigns once: `None` when another candidate leads.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn try_campaign(&self, election: &str, value: &str) -> Result<Option<Leadership>>;

    /// Campaigns for at most `timeout`, then fails with [`Error::Timeout`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn campaign_timeout(&self, election: &str, value: &str, timeout: Duration) -> Result<Leadership>;

    /// Campaigns with explicit options (their `holder` is `value`). `None` only with
    /// [`Wait::NoWait`] when another candidate leads.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn campaign_with(&self, election: &str, value: &str, options: &LockOptions) -> Result<Option<Leadership>>;

    /// The leader of `election` now, or `None` when nobody leads.
    async fn leader(&self, election: &str) -> Result<Option<Leader>>;

    /// Follows the leader of `election`: see [`LeaderChanges`]. One watch per observer, pushed
    /// by the backend.
    async fn observe(&self, election: &str) -> Result<LeaderChanges>;
}

mod sealed {
    /// Only the blanket implementation over [`LockBackend`](crate::driver::LockBackend) exists.
    pub trait Sealed {}
    impl<T: crate::driver::LockBackend + ?Sized> Sealed for T {}
}

#[async_trait]
impl<T: LockBackend + ?Sized> DistributedLock for T {
    fn backend(&self) -> &'static str {
        LockBackend::backend(self)
    }

    fn capabilities(&self) -> Capabilities {
        LockBackend::capabilities(self)
    }

    fn settings(&self) -> &Settings {
        LockBackend::settings(self)
    }

    async fn close(&self) -> Result<()> {
        tracing::debug!(backend = LockBackend::backend(self), "closing the handle");
        self.shutdown().await
    }

    async fn acquire(&self, name: &str) -> Result<LockGuard> {
        let guard = self.acquire_with(name, &LockOptions::new()).await?;
        guard.ok_or_else(|| no_grant(LockBackend::backend(self), name))
    }

    async fn try_acquire(&self, name: &str) -> Result<Option<LockGuard>> {
        self.acquire_with(name, &LockOptions::new().wait(Wait::NoWait)).await
    }

    async fn acquire_timeout(&self, name: &str, timeout: Duration) -> Result<LockGuard> {
        let guard = self.acquire_with(name, &LockOptions::new().wait(Wait::Timeout(timeout))).await?;
        guard.ok_or_else(|| no_grant(LockBackend::backend(self), name))
    }

    async fn acquire_with(&self, name: &str, options: &LockOptions) -> Result<Option<LockGuard>> {
        let backend = LockBackend::backend(self);
        let request = GrantRequest::new(LockBackend::settings(self), name, options)?;
        let capabilities = LockBackend::capabilities(self);
        match request.kind {
            GrantKind::Permit { .. } if !capabilities.semaphores => {
                return Err(crate::driver::unsupported_kind(backend, "semaphores", "semaphores"));
            }
            GrantKind::Read | GrantKind::Write if !capabilities.rw_locks => {
                return Err(crate::driver::unsupported_kind(backend, "read-write locks", "rw_locks"));
            }
            _ => {}
        }
        let name = request.name.clone();
        let kind = request.kind;
        let span = tracing::info_span!("lockkit.acquire", backend, lock = %name, ?kind, token = tracing::field::Empty);
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
                    Err(_) => Err(Error::Timeout { backend, name: name.to_string(), waited: started.elapsed() }),
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

    async fn status(&self, name: &str) -> Result<LockStatus> {
        self.inspect(&LockName::new(name)?).await
    }

    async fn force_release(&self, name: &str) -> Result<bool> {
        let name = LockName::new(name)?;
        tracing::warn!(backend = LockBackend::backend(self), lock = %name, "force release");
        self.evict(&name).await
    }

    async fn campaign(&self, election: &str, value: &str) -> Result<Leadership> {
        let leadership = self.campaign_with(election, value, &LockOptions::new()).await?;
        leadership.ok_or_else(|| no_grant(LockBackend::backend(self), election))
    }

    async fn try_campaign(&self, election: &str, value: &str) -> Result<Option<Leadership>> {
        self.campaign_with(election, value, &LockOptions::new().wait(Wait::NoWait)).await
    }

    async fn campaign_timeout(&self, election: &str, value: &str, timeout: Duration) -> Result<Leadership> {
        let leadership = self.campaign_with(election, value, &LockOptions::new().wait(Wait::Timeout(timeout))).await?;
        leadership.ok_or_else(|| no_grant(LockBackend::backend(self), election))
    }

    async fn campaign_with(&self, election: &str, value: &str, options: &LockOptions) -> Result<Option<Leadership>> {
        let span = tracing::info_span!("lockkit.campaign", backend = LockBackend::backend(self), election);
        let mut options = options.clone().holder(value);
        options.kind = GrantKind::Candidate;
        let guard = self.acquire_with(election, &options).instrument(span).await?;
        Ok(guard.map(|guard| Leadership::new(guard, value.to_owned())))
    }

    async fn leader(&self, election: &str) -> Result<Option<Leader>> {
        let status = self.status(election).await?;
        // A semaphore's or read-write lock's holders lead nothing (as `observe` sees it).
        if status.holders.first().is_some_and(|h| !matches!(h.kind, GrantKind::Lock | GrantKind::Candidate)) {
            return Ok(None);
        }
        Ok(match (status.held, status.token) {
            (true, Some(term)) => Some(Leader { value: status.holder.unwrap_or_default(), term }),
            _ => None,
        })
    }

    async fn observe(&self, election: &str) -> Result<LeaderChanges> {
        let name = LockName::new(election)?;
        Ok(LeaderChanges::new(self.observe_leader(&name).await?))
    }
}

/// How often a waiter whose lease was lost while it waited queues again before the loss is
/// reported.
const MAX_REQUEUES: usize = 3;

/// A waiting grant that ended without a guard: a driver bug, reported rather than panicked on.
pub(crate) fn no_grant(backend: &'static str, name: &str) -> Error {
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
        inner: Arc<crate::memory::MemoryLocks>,
        losses: AtomicUsize,
    }

    #[async_trait]
    impl LockBackend for LosingWaits {
        fn backend(&self) -> &'static str {
            "test"
        }
        fn capabilities(&self) -> Capabilities {
            LockBackend::capabilities(&*self.inner)
        }
        fn settings(&self) -> &Settings {
            LockBackend::settings(&*self.inner)
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
        let inner = crate::memory::open(&"memory://losing-waits".parse().unwrap()).unwrap();
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
