//! Lock guards: RAII ownership of a grant.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::runtime::Handle;
use tracing::Instrument;

use crate::lease::{KeptLease, Lease};
use crate::signal::LossSignal;
use crate::{Error, FencingToken, LockName, Result};

/// How a driver gives a grant back, implemented per driver.
#[async_trait]
pub trait Grant: Send + Sync + 'static {
    /// Releases the grant on the backend — only if it is still this grant: a grant that expired
    /// and went to someone else must be left alone and reported as [`Error::NotHeld`].
    async fn release(self: Box<Self>) -> Result<()>;
}

/// What a driver hands the core to build a [`LockGuard`].
#[non_exhaustive]
pub struct GuardParts {
    /// The backend, e.g. `"etcd"`.
    pub backend: &'static str,
    /// The lock.
    pub name: LockName,
    /// The grant's fencing token.
    pub token: FencingToken,
    /// The lease the grant hangs on.
    pub lease: Arc<KeptLease>,
    /// The grant's loss signal, from [`KeptLease::grant_signal`].
    pub signal: LossSignal,
    /// How to release the grant.
    pub grant: Box<dyn Grant>,
}

impl fmt::Debug for GuardParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardParts")
            .field("backend", &self.backend)
            .field("name", &self.name)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl GuardParts {
    /// Collects the parts of a guard.
    pub fn new(
        backend: &'static str,
        name: LockName,
        token: FencingToken,
        lease: Arc<KeptLease>,
        signal: LossSignal,
        grant: Box<dyn Grant>,
    ) -> Self {
        GuardParts { backend, name, token, lease, signal, grant }
    }
}

/// A held lock. Dropping it releases the lock in the background; [`release`](Self::release)
/// releases it and reports errors. While it lives, its lease is refreshed in the background.
///
/// A guard can stop being held before it is dropped — its lease ran out, or the grant was
/// removed behind its back. It says so: [`is_held`](Self::is_held) turns false,
/// [`lost`](Self::lost) completes, and [`run_while_held`](Self::run_while_held) cancels the work
/// it runs. Send the [`fencing_token`](Self::fencing_token) with every write to the protected
/// resource so that a holder that missed its loss cannot do harm.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> lockkit_core::Result<()> {
/// use lockkit_core::DistributedLock;
/// let locks = lockkit_core::memory::connect(&"memory://guard-doc".parse()?)?;
/// let guard = locks.acquire("reports").await?;
/// assert!(guard.is_held());
/// let answer = guard.run_while_held(async { 42 }).await?;
/// guard.release().await?;
/// # assert_eq!(answer, 42); Ok(()) }
/// ```
#[must_use = "if unused the lock is released at once"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    backend: &'static str,
    name: LockName,
    token: FencingToken,
    lease: Arc<KeptLease>,
    signal: LossSignal,
    grant: Option<Box<dyn Grant>>,
    runtime: Option<Handle>,
    acquired_at: Instant,
}

impl LockGuard {
    /// Builds a guard from a driver's parts, on the current Tokio runtime (drops release there).
    pub fn new(parts: GuardParts) -> Self {
        parts.signal.label(parts.name.as_str(), parts.token);
        LockGuard {
            backend: parts.backend,
            name: parts.name,
            token: parts.token,
            lease: parts.lease,
            signal: parts.signal,
            grant: Some(parts.grant),
            runtime: Handle::try_current().ok(),
            acquired_at: Instant::now(),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The backend, e.g. `"etcd"`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The fencing token of this grant.
    pub fn fencing_token(&self) -> FencingToken {
        self.token
    }

    /// Whether the lock is still held: not lost, and before the local deadline.
    pub fn is_held(&self) -> bool {
        !self.signal.is_lost()
    }

    /// The local deadline: after it the lock counts as lost unless a refresh is confirmed first.
    pub fn valid_until(&self) -> Instant {
        self.signal.valid_until()
    }

    /// How long ago the lock was granted.
    pub fn held_for(&self) -> Duration {
        self.acquired_at.elapsed()
    }

    /// The lease this grant hangs on (shared with other locks of the same handle and TTL).
    pub fn lease(&self) -> &dyn Lease {
        self.lease.as_ref()
    }

    /// A loss signal to hand to other tasks.
    pub fn loss_signal(&self) -> LossSignal {
        self.signal.clone()
    }

    /// Completes once the lock may no longer be held, with the reason.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn lost(&self) -> String {
        self.signal.lost().await
    }

    /// Runs `work` while the lock is held. If the lock is lost first, `work` is dropped at once
    /// (cancelled at its next `.await`) and the result is [`Error::LockLost`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> lockkit_core::Result<()> {
    /// # use lockkit_core::DistributedLock;
    /// # let locks = lockkit_core::memory::connect(&"memory://run-doc".parse()?)?;
    /// let guard = locks.acquire("migrations").await?;
    /// let applied = guard.run_while_held(async { /* apply migrations */ 3 }).await?;
    /// # assert_eq!(applied, 3); Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    /// As cancel safe as `work`.
    pub async fn run_while_held<F: Future>(&self, work: F) -> Result<F::Output> {
        tokio::select! {
            biased;
            reason = self.signal.lost() => Err(self.lost_error(reason)),
            output = work => Ok(output),
        }
    }

    /// Releases the lock and waits for the backend to confirm.
    ///
    /// # Errors
    /// [`Error::NotHeld`] when the grant had already expired or been removed (a later holder's
    /// grant is never touched); connection errors when the backend could not be told (the
    /// grant then ends at its TTL).
    pub async fn release(mut self) -> Result<()> {
        let grant = self.grant.take().expect("a guard's grant is only taken by release or drop");
        let span = tracing::debug_span!("lockkit.release", backend = self.backend, lock = %self.name, token = self.token.get());
        let result = grant.release().instrument(span.clone()).await;
        self.signal.retire();
        let _enter = span.enter();
        match &result {
            Ok(()) => tracing::debug!(held_for = ?self.acquired_at.elapsed(), "released"),
            Err(e) => tracing::warn!(error = %e, "release failed"),
        }
        result
    }

    fn lost_error(&self, reason: String) -> Error {
        Error::LockLost { backend: self.backend, name: self.name.to_string(), reason }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(grant) = self.grant.take() else { return };
        self.signal.retire();
        let Some(runtime) = &self.runtime else { return };
        let (backend, name, token) = (self.backend, self.name.clone(), self.token);
        // Spawning on a runtime that has shut down drops the task: the TTL is the backstop.
        runtime.spawn(async move {
            match grant.release().await {
                Ok(()) => tracing::debug!(backend, lock = %name, token = token.get(), "released on drop"),
                Err(e) => {
                    tracing::debug!(backend, lock = %name, token = token.get(), error = %e, "release on drop failed")
                }
            }
        });
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("backend", &self.backend)
            .field("name", &self.name)
            .field("token", &self.token)
            .field("held", &self.is_held())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dropping_a_guard_after_its_runtime_is_gone_neither_panics_nor_blocks() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let locks = crate::memory::connect(&"memory://dead-runtime".parse().unwrap()).unwrap();
        let guard = runtime.block_on(locks.acquire("x")).unwrap();
        drop(runtime);
        // Still within its deadline: the grant lives on the backend until the TTL ends it.
        assert!(guard.is_held());
        drop(guard);
        drop(locks);
    }
}
