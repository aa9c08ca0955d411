//! Counting semaphores and read-write locks, on the lock machinery: a permit, a read and a
//! write are grants of a name like a lock's, with the same lease, refresh, fencing token, loss
//! signal, cancel safety and cleanup — only how many may hold at once differs
//! ([`GrantKind`]). Each hold is a [`LockGuard`].

use std::time::Duration;

use crate::lock::no_grant;
use crate::options::GrantKind;
use crate::{DistributedLock, LockGuard, LockOptions, LockStatus, Result, Wait};

impl<'h> dyn DistributedLock + 'h {
    /// The counting semaphore `name` with `permits` permits: at most `permits` holders at
    /// once. Every contender of one semaphore must give the same number: a backend that stores
    /// it refuses another with [`Error::InvalidOptions`](crate::Error::InvalidOptions).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> lockkit_core::Result<()> {
    /// let locks = lockkit_core::memory::connect(&"memory://semaphore-doc".parse()?)?;
    /// let exports = locks.semaphore("exports", 2);
    /// let (first, second) = (exports.acquire().await?, exports.acquire().await?);
    /// assert!(exports.try_acquire().await?.is_none(), "both permits are held");
    /// assert!(second.fencing_token() > first.fencing_token());
    /// first.release().await?;
    /// assert!(exports.try_acquire().await?.is_some());
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: &str, permits: u32) -> Semaphore<'_> {
        Semaphore { hold: Hold { locks: self, name: name.to_owned() }, kind: GrantKind::Permit { permits } }
    }

    /// The read-write lock `name`: many readers at once, or one writer. Writers are not
    /// starved: a waiting writer is served before the readers that come after it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> lockkit_core::Result<()> {
    /// let locks = lockkit_core::memory::connect(&"memory://rw-doc".parse()?)?;
    /// let config = locks.rw_lock("config");
    /// let (a, b) = (config.read().await?, config.read().await?);   // readers share
    /// assert!(config.try_write().await?.is_none());               // a writer waits for them
    /// drop((a, b));
    /// let writer = config.write().await?;
    /// assert!(config.try_read().await?.is_none());                // and excludes readers
    /// # drop(writer); Ok(()) }
    /// ```
    pub fn rw_lock(&self, name: &str) -> RwLock<'_> {
        RwLock { hold: Hold { locks: self, name: name.to_owned() } }
    }
}

/// A name on a handle, held as one kind.
struct Hold<'a> {
    locks: &'a (dyn DistributedLock + 'a),
    name: String,
}

impl std::fmt::Debug for Hold<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold").field("backend", &self.locks.backend()).field("name", &self.name).finish()
    }
}

impl Hold<'_> {
    async fn with(&self, kind: GrantKind, options: &LockOptions) -> Result<Option<LockGuard>> {
        let mut options = options.clone();
        options.kind = kind;
        self.locks.acquire_with(&self.name, &options).await
    }

    async fn waiting(&self, kind: GrantKind, wait: Wait) -> Result<LockGuard> {
        let guard = self.with(kind, &LockOptions::new().wait(wait)).await?;
        guard.ok_or_else(|| no_grant(self.locks.backend(), &self.name))
    }
}

/// A counting semaphore of a backend handle (`locks.semaphore(name, permits)`):
/// each permit is a [`LockGuard`] — its own fencing token (strictly increasing across all the
/// semaphore's permits), loss signal and refresh, released when dropped; a crashed holder's
/// permit returns at its TTL.
#[derive(Debug)]
pub struct Semaphore<'a> {
    hold: Hold<'a>,
    kind: GrantKind,
}

impl Semaphore<'_> {
    /// Waits for a permit.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future leaves no waiter and no permit behind.
    pub async fn acquire(&self) -> Result<LockGuard> {
        self.hold.waiting(self.kind, Wait::Forever).await
    }

    /// Tries once: `None` when every permit is held (or others wait for one).
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>> {
        self.hold.with(self.kind, &LockOptions::new().wait(Wait::NoWait)).await
    }

    /// Waits at most `timeout`, then fails with [`Error::Timeout`](crate::Error::Timeout).
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        self.hold.waiting(self.kind, Wait::Timeout(timeout)).await
    }

    /// Acquires a permit with explicit options (TTL, wait, holder metadata).
    pub async fn acquire_with(&self, options: &LockOptions) -> Result<Option<LockGuard>> {
        self.hold.with(self.kind, options).await
    }

    /// The semaphore's holders, waiters and (where the backend stores it) number of permits.
    pub async fn status(&self) -> Result<LockStatus> {
        self.hold.locks.status(&self.hold.name).await
    }
}

/// A read-write lock of a backend handle (`locks.rw_lock(name)`):
/// each read or write is a [`LockGuard`] with its own fencing token (strictly increasing across
/// reads and writes of the name), loss signal and refresh, released when dropped.
#[derive(Debug)]
pub struct RwLock<'a> {
    hold: Hold<'a>,
}

impl RwLock<'_> {
    /// Waits for a shared hold: granted while no writer holds or waits ahead of it.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn read(&self) -> Result<LockGuard> {
        self.hold.waiting(GrantKind::Read, Wait::Forever).await
    }

    /// Tries a shared hold once.
    pub async fn try_read(&self) -> Result<Option<LockGuard>> {
        self.hold.with(GrantKind::Read, &LockOptions::new().wait(Wait::NoWait)).await
    }

    /// Waits at most `timeout` for a shared hold.
    pub async fn read_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        self.hold.waiting(GrantKind::Read, Wait::Timeout(timeout)).await
    }

    /// A shared hold with explicit options.
    pub async fn read_with(&self, options: &LockOptions) -> Result<Option<LockGuard>> {
        self.hold.with(GrantKind::Read, options).await
    }

    /// Waits for the exclusive hold: granted once no reader or writer holds it.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn write(&self) -> Result<LockGuard> {
        self.hold.waiting(GrantKind::Write, Wait::Forever).await
    }

    /// Tries the exclusive hold once.
    pub async fn try_write(&self) -> Result<Option<LockGuard>> {
        self.hold.with(GrantKind::Write, &LockOptions::new().wait(Wait::NoWait)).await
    }

    /// Waits at most `timeout` for the exclusive hold.
    pub async fn write_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        self.hold.waiting(GrantKind::Write, Wait::Timeout(timeout)).await
    }

    /// The exclusive hold with explicit options.
    pub async fn write_with(&self, options: &LockOptions) -> Result<Option<LockGuard>> {
        self.hold.with(GrantKind::Write, options).await
    }

    /// The lock's holders (readers or the writer) and waiters.
    pub async fn status(&self) -> Result<LockStatus> {
        self.hold.locks.status(&self.hold.name).await
    }
}
