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
    /// One attempt to release the grant on the backend — only if it is still this grant: a
    /// grant that expired and went to someone else must be left alone and reported as
    /// [`Error::NotHeld`]. Any other error means "could not tell": the core calls it again, with
    /// backoff, until the backend confirms or the rule of [`Cleanup`](crate::driver::Cleanup) gives the
    /// lease up, so it must be safe to repeat.
    async fn release(&self) -> Result<()>;

    /// Replaces the value stored with the grant (its holder metadata) by `value`, only if the
    /// backend still holds this very grant (a compare on the grant, e.g. its token): an
    /// election's leader proclaiming. Answers the grant's token after the write — the same one,
    /// unless the backend's token is the index of the entry's last write (Consul), which the
    /// write moved forward. [`Error::NotHeld`] when the grant is no longer there. `None` (the
    /// default): the driver cannot (`capabilities().observe` is false).
    async fn proclaim(&self, value: &str) -> Option<Result<FencingToken>> {
        let _ = value;
        None
    }
}

/// What the core builds a [`LockGuard`] from.
pub(crate) struct GuardParts {
    /// The backend, e.g. `"etcd"`.
    pub(crate) backend: &'static str,
    /// The lock.
    pub(crate) name: LockName,
    /// The grant's fencing token.
    pub(crate) token: FencingToken,
    /// The lease the grant hangs on.
    pub(crate) lease: Arc<KeptLease>,
    /// The grant's loss signal, from [`KeptLease::grant_signal`].
    pub(crate) signal: LossSignal,
    /// How to release the grant.
    pub(crate) grant: Box<dyn Grant>,
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
    pub(crate) fn new(
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
    grant: Option<Arc<dyn Grant>>,
    runtime: Option<Handle>,
    acquired_at: Instant,
}

impl LockGuard {
    /// Builds a guard from a driver's parts, on the current Tokio runtime (drops release there).
    pub(crate) fn new(parts: GuardParts) -> Self {
        parts.signal.label(&parts.name, parts.token);
        LockGuard {
            backend: parts.backend,
            name: parts.name,
            token: parts.token,
            lease: parts.lease,
            signal: parts.signal,
            grant: Some(Arc::from(parts.grant)),
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

    /// Releases the lock and waits for the backend to confirm. The guard stops being held at
    /// once — its loss signal fires before the release is sent — and a release that fails is
    /// tried again in the background (see [`Cleanup`](crate::driver::Cleanup) for the exact rule): the
    /// grant is gone from the server within TTL + request timeout whatever happens.
    ///
    /// # Errors
    /// [`Error::NotHeld`] when the grant had already expired or been removed (a later holder's
    /// grant is never touched); [`Error::LockLost`] when its lease was lost; a connection error
    /// when the backend could not confirm within the request timeout (the lease it hung on is
    /// then given up, so the server ends the grant within the TTL).
    ///
    /// # Cancel safety
    /// Cancel safe: the guard is released either way. Dropping the future stops the waiting, not
    /// the release, which finishes in the background.
    pub async fn release(mut self) -> Result<()> {
        let span = self.span();
        let release = self.start_release().instrument(span.clone());
        let result = crate::driver::unabandoned(release).0.await;
        let _enter = span.enter();
        match &result {
            Ok(()) => tracing::debug!(held_for = ?self.acquired_at.elapsed(), "released"),
            Err(e) => tracing::warn!(error = %e, "release failed"),
        }
        result
    }

    fn span(&self) -> tracing::Span {
        tracing::debug_span!("lockkit.release", backend = self.backend, lock = %self.name, token = self.token.get())
    }

    /// Fires the signal (a released guard is not held) and returns the retirement of the grant.
    fn start_release(&mut self) -> impl Future<Output = Result<()>> + Send + 'static {
        let grant = self.grant.take();
        self.signal.retire();
        let (lease, what, given_up) = (self.lease.clone(), format!("lock {:?}", self.name.as_str()), Instant::now());
        async move {
            let Some(grant) = grant else { return Ok(()) };
            let attempt = crate::retire::attempt(move || {
                let grant = grant.clone();
                async move { grant.release().await }
            });
            crate::retire::retire(lease, what, given_up, attempt).await
        }
    }

    /// Replaces the value stored with the grant (an election's leader proclaiming); the token
    /// after it.
    pub(crate) async fn proclaim(&self, value: &str) -> Result<FencingToken> {
        match &self.grant {
            Some(grant) => grant
                .proclaim(value)
                .await
                .unwrap_or_else(|| Err(crate::driver::unsupported(self.backend, "proclaiming"))),
            None => Err(Error::not_held(self.backend, self.name.as_str(), "it was released")),
        }
    }

    fn lost_error(&self, reason: String) -> Error {
        Error::LockLost { backend: self.backend, name: self.name.to_string(), reason }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.grant.is_none() {
            return;
        }
        let span = self.span();
        let release = self.start_release();
        let Some(runtime) = &self.runtime else { return };
        // Spawning on a runtime that has shut down drops the task: the TTL is the backstop (the
        // lease was refreshed on that runtime too).
        runtime.spawn(
            async move {
                match release.await {
                    Ok(()) => tracing::debug!("released on drop"),
                    Err(e) => tracing::debug!(error = %e, "release on drop failed"),
                }
            }
            .instrument(span),
        );
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
