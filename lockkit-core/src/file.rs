//! `file:///dir[?namespace=…]` — locks between processes on one host, on OS advisory file locks
//! (`flock` on Unix, `LockFileEx` on Windows).
//!
//! - Lock `NAME` is the file `DIR/[namespace/]<escaped NAME>.lock`, held with an exclusive
//!   advisory lock for as long as the guard lives. A process that dies, however it dies, drops
//!   its locks at once: the OS closes its files.
//! - Fencing tokens come from `<escaped NAME>.fence` beside it, read and bumped (written to a
//!   temporary file, synced, renamed over, the directory synced) while the lock is held and
//!   `<escaped NAME>.fencelock` is locked too (`force_release` can break the lock, not that), so
//!   they survive process crashes, restarts and power loss, and never repeat.
//! - The lock file holds the current token and the holder metadata, for `status`.
//! - Lock files stay in the directory after release (removing them would race with the next
//!   holder); they are a few bytes each.
//! - `force_release` removes the lock file: the next contender creates a new one, and the
//!   evicted holder notices at its next check (every refresh interval) that its file is gone
//!   and fires its loss signal.
//! - Waiters in the same handle are woken at once by a release; waiters in other processes
//!   retry with jittered backoff from 2 ms up to 50 ms, since the OS gives no cancellable
//!   wait for an advisory lock.
//! - There is no expiry: a live process keeps its locks until it releases them or exits. The
//!   TTL only sets how often holders check their files.
//! - Semaphores and read-write locks lock other files of the name (`<escaped NAME>@permit-<i>.lock`
//!   slots, `@rw.lock`, a writer's `@turnstile.lock`, readers' `@reader-<i>.lock` slots; see
//!   `kinds`), with the same fencing counter, so tokens increase across every kind of hold.
//!   What a name is (a lock, a semaphore of N permits, a read-write lock) is recorded in
//!   `<escaped NAME>@kind` by its first contender; another use is refused.
//! - Safe in a directory shared with other local users (see the README's file:// section): the directory is checked
//!   at connect like sshd checks a home, files are opened relative to it without following
//!   symbolic links and checked before they are written, and created with `mode=` (`0600`).

mod dir;
mod kinds;

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::driver::{Grant, GrantRequest, LockBackend, random_u64};
use crate::lease::{KeepAlive, LeaseBackend, LeasePool};
use crate::signal::lock;
use crate::{
    Capabilities, DistributedLock, Error, FencingToken, GrantKind, Holding, Lease, LockGuard, LockName, LockStatus,
    LockUrl, LossSignal, Namespace, Result, Settings,
};
use dir::LockDir;

const BACKEND: &str = "file";

/// Connects to a lock directory, creating it (and the namespace below it) if needed, and
/// refusing it when other users could tamper with it (see the README's file:// section). Options: the common ones
/// and `mode` (permissions of the files and directories lockkit creates, octal, `0600`).
pub fn connect(url: &LockUrl) -> Result<Arc<dyn DistributedLock>> {
    url.check_options(&["mode"])?;
    if url.hosts().iter().any(|h| h.host != "localhost") || url.username().is_some() || url.password().is_some() {
        return Err(url.invalid("a file URL names a local directory: `file:///absolute/path`"));
    }
    let base = Path::new(url.path());
    if !base.is_absolute() {
        return Err(url.invalid("a file URL needs an absolute directory path: `file:///var/lock/myapp`"));
    }
    let mode = dir::parse_mode(url)?;
    let mut settings = Settings::from_url(url)?;
    settings.namespace = Namespace::new(url.option("namespace").unwrap_or(""));
    let dir = Arc::new(LockDir::open(url, base, settings.namespace.segments(), mode)?);
    let pool = LeasePool::new(BACKEND, settings.timeout);
    Ok(Arc::new(FileLocks { settings, dir, holdings: Arc::new(Holdings::default()), pool }))
}

struct FileLocks {
    settings: Settings,
    dir: Arc<LockDir>,
    holdings: Arc<Holdings>,
    pool: LeasePool,
}

#[async_trait]
impl LockBackend for FileLocks {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { fair: false, server_expiry: false, push_wakeups: false, observe: false, ..Capabilities::ALL }
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        let (ttl, holdings) = (request.ttl, self.holdings.clone());
        let lease = self
            .pool
            .get(request.ttl, request.refresh_interval, || async move {
                let id = format!("file-{}-{}", std::process::id(), holdings.next_id());
                Ok((Arc::new(FileLease { holdings, id: id.clone(), ttl }) as Arc<dyn LeaseBackend>, id))
            })
            .await?;
        let fence_name = format!("{}.fence", request.name.file_stem());
        let dir = &self.dir;
        kinds::check_kind(dir, &request.name, request.kind)?;
        let mut backoff = Duration::from_millis(2);
        let mut tries_left = 2;
        let mut tries = kinds::Tries::default();
        let (taken, token) = loop {
            let released = RELEASED.notified();
            let lock_error =
                |e| io_error(&format!("cannot lock the files of `{}` in {}", request.name, dir.path("").display()), e);
            if let Some(taken) =
                kinds::try_take(dir, &request.name, request.kind, request.wait, &mut tries).map_err(lock_error)?
            {
                let fence_error =
                    |e| io_error(&format!("cannot update the fencing counter {}", dir.path(&fence_name).display()), e);
                let token = bump_fence(dir, &fence_name).map_err(fence_error)?;
                write_holder(&taken.file, token, &request.holder)
                    .map_err(|e| io_error(&format!("cannot write {}", dir.path(&taken.name).display()), e))?;
                break (taken, token);
            }
            if !request.wait {
                if tries_left == 0 {
                    return Ok(None);
                }
                // A `status` of a file left by a holder that died locks it for a moment.
                tries_left -= 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let jittered = backoff.mul_f64(0.5 + (random_u64() % 1000) as f64 / 1000.0);
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep(jittered) => {}
                reason = lease.lost() => {
                    // The handle was closed (or its lease lost) while this waited.
                    let reason = format!("while waiting, its lease was lost: {reason}");
                    return Err(Error::LockLost { backend: BACKEND, name: request.name.to_string(), reason });
                }
            }
            backoff = (backoff * 2).min(Duration::from_millis(50));
        };
        let signal = lease.grant_signal();
        let id = self.holdings.next_id();
        let held = Held {
            file: Arc::new(taken.file),
            shared: taken.shared,
            dir: self.dir.clone(),
            name: taken.name,
            lease: lease.id().to_owned(),
            signal: signal.clone(),
        };
        lock(&self.holdings.held).insert(id, held);
        // A lease revoked meanwhile (the handle closed while this took the lock) holds nothing:
        // its revoke fires the lease before it unlocks the lease's files, so a file locked here
        // after that sweep would stay locked for as long as the guard lives.
        if lease.is_lost() {
            if let Some(held) = lock(&self.holdings.held).remove(&id) {
                held.empty_and_unlock();
            }
            let reason = format!("while acquiring, its lease was lost: {}", lease.lost().await);
            return Err(Error::LockLost { backend: BACKEND, name: request.name.to_string(), reason });
        }
        let grant = FileGrant { id, holdings: self.holdings.clone(), name: request.name.to_string() };
        Ok(Some(request.granted(BACKEND, FencingToken::new(token), lease, signal, grant)))
    }

    async fn inspect(&self, name: &LockName) -> Result<LockStatus> {
        let permits = kinds::recorded_permits(&self.dir, name).map_err(|e| self.unreadable(name, e))?;
        let mut holders = Vec::new();
        for (file, kind) in kinds::status_files(&self.dir, name, permits) {
            let read = read_holder(&self.dir, &file).map_err(|e| self.unreadable(name, e))?;
            if let Some((token, holder)) = read {
                holders.push(Holding::new(kind, holder, token));
            }
        }
        Ok(LockStatus::holders(holders, None).permits(permits))
    }

    /// Revokes the handle's leases: every grant on them is released and fires its guard.
    async fn shutdown(&self) -> Result<()> {
        self.pool.close().await
    }

    /// Removes every held file of the name (the lock, the write, the readers', the permits'):
    /// the next contenders create new ones; the evicted holders notice at their next check.
    async fn evict(&self, name: &LockName) -> Result<bool> {
        let permits = kinds::recorded_permits(&self.dir, name).map_err(|e| self.unreadable(name, e))?;
        let mut evicted = Vec::new();
        for (file, kind) in kinds::status_files(&self.dir, name, permits) {
            if read_holder(&self.dir, &file).map_err(|e| self.unreadable(name, e))?.is_some() {
                evicted.push((file, kind));
            }
        }
        // Readers hold the read-write lock file shared without writing it: it goes with them,
        // or a writer would wait for readers that may never run again.
        if evicted.iter().any(|(_, kind)| *kind == GrantKind::Read) {
            evicted.push((format!("{}@rw.lock", name.file_stem()), GrantKind::Write));
        }
        let mut removed = false;
        for (file, _) in evicted {
            match self.dir.remove(&file) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&format!("cannot remove {}", self.dir.path(&file).display()), e)),
            }
        }
        Ok(removed)
    }
}

impl FileLocks {
    fn unreadable(&self, name: &LockName, e: io::Error) -> Error {
        io_error(&format!("cannot read the files of `{name}` in {}", self.dir.path("").display()), e)
    }
}

/// The token and metadata a held file shows (`None`: free, or left by a holder that died).
fn read_holder(dir: &LockDir, file: &str) -> io::Result<Option<(Option<FencingToken>, Option<String>)>> {
    let mut opened = match dir.open_for_reading(file, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    let mut text = String::new();
    opened.read_to_string(&mut text)?;
    // A release empties the file before it unlocks it: an empty file is free, and is not
    // locked here even for a moment (a shared lock would make a concurrent try fail).
    if text.trim().is_empty() {
        return Ok(None);
    }
    match opened.try_lock_shared() {
        Ok(()) => Ok(None), // left by a holder that died
        Err(TryLockError::WouldBlock) => Ok(Some(parse_holder(&text))),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Reads, increments and durably writes the fencing counter; only called under the lock. The
/// lock file alone does not guard it — `force_release` removes that file, and the next holder
/// may bump while the evicted one still is — so the bump also holds `<stem>.fencelock`, a file
/// that is never removed or replaced (and whose name no lock's `.lock` or `.fence` file can
/// have). The directory is synced after the rename, so a power loss
/// cannot bring an older counter back.
fn bump_fence(dir: &LockDir, name: &str) -> io::Result<u64> {
    let stem = name.strip_suffix(".fence").unwrap_or(name);
    let guard = dir.open_for_update(&format!("{stem}.fencelock"))?;
    guard.lock()?;
    let bumped = bump_fence_locked(dir, name);
    let _ = guard.unlock();
    bumped
}

fn bump_fence_locked(dir: &LockDir, name: &str) -> io::Result<u64> {
    let read = |mut file: File| {
        let mut text = String::new();
        file.read_to_string(&mut text).map(|_| text)
    };
    let last = match dir.open_for_reading(name, true).and_then(read) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "it holds {:?}, not a number; restore it, or remove it if nothing relies on earlier tokens",
                    text.trim()
                ),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let next = last + 1;
    let tmp = format!("{name}.{}-{:x}", std::process::id(), random_u64());
    let written = dir.create_new(&tmp).and_then(|mut file| {
        file.write_all(next.to_string().as_bytes())?;
        file.sync_data()
    });
    written.and_then(|()| dir.rename_and_sync(&tmp, name)).inspect_err(|_| {
        let _ = dir.remove(&tmp);
    })?;
    Ok(next)
}

fn write_holder(mut file: &File, token: u64, holder: &str) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "token {token}\nholder {}\n", holder.replace('\n', " "))
}

fn parse_holder(text: &str) -> (Option<FencingToken>, Option<String>) {
    let mut token = None;
    let mut holder = None;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("token ") {
            token = t.parse().ok().map(FencingToken::new);
        } else if let Some(h) = line.strip_prefix("holder ") {
            holder = Some(h.to_owned());
        }
    }
    (token, holder)
}

fn io_error(what: &str, e: io::Error) -> Error {
    let hint = match e.kind() {
        io::ErrorKind::PermissionDenied => "; use a directory this process can write",
        io::ErrorKind::InvalidData => "",
        _ => "; check the directory and the disk",
    };
    Error::backend_caused(BACKEND, format!("{what}: {e}{hint}"), e)
}

/// The lock files this handle holds, checked at every refresh: a file that was removed or
/// replaced behind the holder's back fires that grant's loss signal.
#[derive(Default)]
struct Holdings {
    held: Mutex<HashMap<u64, Held>>,
    ids: AtomicU64,
}

struct Held {
    /// The file with the grant's token and metadata, locked exclusively.
    file: Arc<File>,
    /// A read's read-write lock file, locked shared.
    shared: Option<File>,
    dir: Arc<LockDir>,
    /// The lock file's name in `dir`.
    name: String,
    lease: String,
    signal: LossSignal,
}

impl Held {
    /// Empties the file (so `status` sees it free without locking it), then unlocks it.
    fn empty_and_unlock(&self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
        if let Some(shared) = &self.shared {
            let _ = shared.unlock();
        }
    }

    fn intact(&self) -> bool {
        self.dir.holds(&self.name, &self.file).unwrap_or(false)
    }
}

impl Holdings {
    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Fires the signal of every grant of `lease` whose file is no longer at its path.
    fn check(&self, lease: &str) {
        lock(&self.held).retain(|_, held| {
            let keep = held.lease != lease || held.intact();
            if !keep {
                held.signal.lose(format!(
                    "its lock file {} was removed or replaced (force_release?)",
                    held.dir.path(&held.name).display()
                ));
            }
            keep
        });
    }

    /// Unlocks every grant of `lease`, firing their signals.
    fn revoke(&self, lease: &str) {
        lock(&self.held).retain(|_, held| {
            if held.lease == lease {
                held.empty_and_unlock();
                held.signal.lose("its lease was revoked");
            }
            held.lease != lease
        });
        RELEASED.notify_waiters();
    }
}

/// Wakes this process's waiters when one of its guards releases.
static RELEASED: Notify = Notify::const_new();

struct FileLease {
    holdings: Arc<Holdings>,
    id: String,
    ttl: Duration,
}

#[async_trait]
impl LeaseBackend for FileLease {
    async fn keep_alive(&self) -> Result<KeepAlive> {
        self.holdings.check(&self.id);
        Ok(KeepAlive::Alive(self.ttl))
    }

    async fn revoke(&self) -> Result<()> {
        self.holdings.revoke(&self.id);
        Ok(())
    }
}

/// A held lock file. Unlocks on release, and also when dropped without release (a guard
/// dropped after its runtime shut down).
struct FileGrant {
    id: u64,
    holdings: Arc<Holdings>,
    name: String,
}

impl FileGrant {
    fn finish(&self) -> Result<()> {
        let Some(held) = lock(&self.holdings.held).remove(&self.id) else {
            return Err(Error::not_held(BACKEND, &self.name, "its lock file was removed or its lease revoked"));
        };
        let intact = held.intact();
        let _ = held.file.set_len(0); // so that `status` sees it free without locking it
        let unlocked = held.file.unlock();
        if let Some(shared) = &held.shared {
            let _ = shared.unlock();
        }
        drop(held);
        RELEASED.notify_waiters();
        if !intact {
            return Err(Error::not_held(
                BACKEND,
                &self.name,
                "its lock file was removed or replaced; the new file was left alone",
            ));
        }
        unlocked.map_err(|e| io_error("cannot unlock the lock file", e))
    }
}

#[async_trait]
impl Grant for FileGrant {
    async fn release(&self) -> Result<()> {
        self.finish()
    }
}

impl Drop for FileGrant {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_corrupt_fence_file_is_a_clear_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let url = LockUrl::parse("file:///").unwrap();
        let locks = LockDir::open(&url, dir.path(), &[], dir::DEFAULT_MODE).unwrap();
        let path = dir.path().join("x.fence");
        assert_eq!(bump_fence(&locks, "x.fence").unwrap(), 1);
        assert_eq!(bump_fence(&locks, "x.fence").unwrap(), 2);
        fs::write(&path, "garbage").unwrap();
        let err = bump_fence(&locks, "x.fence").unwrap_err().to_string();
        assert!(err.contains("not a number"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "garbage");
    }

    /// A semaphore's number of permits is recorded by its first contender and another number
    /// refused; `status` lists a semaphore's permits and a read-write lock's readers and writer.
    #[tokio::test]
    async fn semaphores_keep_their_permits_and_status_lists_every_holder() {
        let dir = tempfile::tempdir().unwrap();
        let url: LockUrl = format!("file://{}", dir.path().display()).parse().unwrap();
        let (a, b) = (connect(&url).unwrap(), connect(&url).unwrap());
        let permit = a.semaphore("s", 2).acquire().await.unwrap();
        let err = b.semaphore("s", 3).try_acquire().await.unwrap_err().to_string();
        assert!(err.contains("a semaphore of 2 permits") && err.contains("not a semaphore of 3"), "{err}");
        let err = b.try_acquire("s").await.unwrap_err().to_string();
        assert!(err.contains("not a lock"), "a lock on a semaphore's name: {err}");
        let err = b.rw_lock("s").try_write().await.unwrap_err().to_string();
        assert!(err.contains("not a read-write lock"), "{err}");
        let status = b.status("s").await.unwrap();
        assert_eq!((status.permits, status.holders.len(), status.token), (Some(2), 1, Some(permit.fencing_token())));
        let (r1, r2) = (a.rw_lock("rw").read().await.unwrap(), b.rw_lock("rw").read().await.unwrap());
        let status = b.status("rw").await.unwrap();
        let readers: Vec<_> = status.holders.iter().map(|h| (h.kind, h.token)).collect();
        assert_eq!(readers, [(GrantKind::Read, Some(r1.fencing_token())), (GrantKind::Read, Some(r2.fencing_token()))]);
        drop((r1, r2));
        let writer = a.rw_lock("rw").write().await.unwrap();
        let status = b.status("rw").await.unwrap();
        assert_eq!(status.holders.iter().map(|h| h.kind).collect::<Vec<_>>(), [GrantKind::Write]);
        assert_eq!(status.token, Some(writer.fencing_token()));
    }

    /// Review findings on file:// semaphores and read-write locks, each failing before its fix:
    /// `force_release` of readers lets a writer in at once (their shared hold of the read-write
    /// file went with them only at their next check, never for a hung reader); what a name is
    /// is recorded whole, so two first contenders with other numbers of permits cannot both
    /// be taken (49 of 300 were); a recorded file of garbage is a clear error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evicted_readers_free_the_writer_and_a_names_kind_is_recorded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let url: LockUrl = format!("file://{}?ttl=30s", dir.path().display()).parse().unwrap();
        let (a, b) = (connect(&url).unwrap(), connect(&url).unwrap());
        let _reader = a.rw_lock("doc").read().await.unwrap();
        assert!(b.force_release("doc").await.unwrap());
        assert!(b.rw_lock("doc").try_write().await.unwrap().is_some(), "the evicted reader kept the writer out");

        for round in 0..100 {
            let name = format!("race-{round}");
            let (x, y) = (a.clone(), b.clone());
            let (n1, n2) = (name.clone(), name.clone());
            let first = tokio::spawn(async move { x.semaphore(&n1, 2).try_acquire().await.map(drop) });
            let second = tokio::spawn(async move { y.semaphore(&n2, 3).try_acquire().await.map(drop) });
            let taken = [first.await.unwrap().is_ok(), second.await.unwrap().is_ok()];
            assert_eq!(taken.iter().filter(|t| **t).count(), 1, "{name}: both numbers of permits taken");
        }
        fs::write(dir.path().join("planted@kind"), "").unwrap();
        let err = a.try_acquire("planted").await.unwrap_err().to_string();
        assert!(err.contains("not `lock`, `rw` or `semaphore <permits>`"), "{err}");
    }

    /// A try-write that fails never makes a concurrent try-read fail (it used to take the
    /// writers' turnstile: 284 of 300 reads were refused).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_try_write_holds_no_reader_up() {
        let dir = tempfile::tempdir().unwrap();
        let url: LockUrl = format!("file://{}", dir.path().display()).parse().unwrap();
        let (a, b, c) = (connect(&url).unwrap(), connect(&url).unwrap(), connect(&url).unwrap());
        let _reader = a.rw_lock("doc").read().await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    assert!(b.rw_lock("doc").try_write().await.unwrap().is_none());
                }
            }
        });
        let mut refused = 0;
        for _ in 0..300 {
            match c.rw_lock("doc").try_read().await.unwrap() {
                Some(read) => read.release().await.unwrap(),
                None => refused += 1,
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.await.unwrap();
        assert_eq!(refused, 0, "reads refused beside a reader while writes were only tried");
    }

    #[test]
    fn holder_lines_round_trip() {
        assert_eq!(
            parse_holder("token 7\nholder web-1 pid 9\n"),
            (Some(FencingToken::new(7)), Some("web-1 pid 9".into()))
        );
        assert_eq!(parse_holder(""), (None, None));
    }

    #[test]
    fn relative_paths_and_hosts_are_rejected() {
        for (url, expected) in [("file://some/dir", "local directory"), ("file://", "absolute")] {
            let err = LockUrl::parse(url).and_then(|url| connect(&url).map(drop)).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }
}

#[cfg(test)]
mod race_tests {
    use super::*;

    /// `status` polled in a tight loop never makes a try on a free lock fail (it used to lock the
    /// file shared for a moment, and a concurrent try then read the lock as held).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_polling_never_makes_a_try_on_a_free_lock_fail() {
        let dir = tempfile::tempdir().unwrap();
        let url: LockUrl = format!("file://{}", dir.path().display()).parse().unwrap();
        let (locks, monitor) = (connect(&url).unwrap(), connect(&url).unwrap());
        locks.acquire("polled").await.unwrap().release().await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    runtime.block_on(monitor.status("polled")).unwrap();
                }
            }
        });
        let mut refused = 0;
        for _ in 0..2000 {
            match locks.try_acquire("polled").await.unwrap() {
                Some(guard) => guard.release().await.unwrap(),
                None => refused += 1,
            }
        }
        stop.store(true, Ordering::Relaxed);
        poller.join().unwrap();
        assert_eq!(refused, 0, "tries on a free lock refused while `status` was polled");
    }

    /// `force_release` racing holders' fence bumps: every grant still gets its own token (the
    /// fence used to be guarded by the lock file alone, which `force_release` removes, so two
    /// holders could read the same counter).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn force_release_racing_fence_bumps_never_repeats_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let url: LockUrl = format!("file://{}", dir.path().display()).parse().unwrap();
        let admin = connect(&url).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let evictor = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = admin.force_release("raced").await;
                    tokio::task::yield_now().await;
                }
            }
        });
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let locks = connect(&url).unwrap();
                tokio::spawn(async move {
                    let mut tokens = Vec::new();
                    for _ in 0..600 {
                        if let Some(guard) = locks.try_acquire("raced").await.unwrap() {
                            tokens.push(guard.fencing_token().get());
                            drop(guard);
                        }
                        tokio::task::yield_now().await;
                    }
                    tokens
                })
            })
            .collect();
        let mut tokens = Vec::new();
        for task in tasks {
            tokens.extend(task.await.unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        evictor.await.unwrap();
        let granted = tokens.len();
        tokens.sort_unstable();
        tokens.dedup();
        assert!(granted > 100, "too few grants to tell: {granted}");
        assert_eq!(tokens.len(), granted, "{} tokens were granted twice", granted - tokens.len());
    }
}

#[cfg(test)]
mod attack_tests {
    use std::fs::OpenOptions;

    use super::*;

    /// `close()` while a wait of the handle is about to win the lock (the other holder, here
    /// another open file description as another process would be, let go; the waiter's backoff
    /// sleep and the close's loss fire together): the acquire used to win about half the
    /// rounds, returning a guard that read lost while the closed handle kept the lock file
    /// locked — with no TTL on file://, until that guard was dropped.
    #[tokio::test(flavor = "current_thread")]
    async fn close_racing_a_wait_that_wins_leaves_the_lock_file_unlocked() {
        let mut won = Vec::new();
        for round in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            let url: LockUrl = format!("file://{}", dir.path().display()).parse().unwrap();
            let locks = connect(&url).unwrap();
            let path = dir.path().join("x.lock");
            let other = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
            other.lock().unwrap();
            let waiting = tokio::spawn({
                let locks = locks.clone();
                async move { locks.acquire("x").await }
            });
            tokio::time::sleep(Duration::from_millis(150)).await;
            other.unlock().unwrap();
            // Blocks the runtime past the waiter's backoff sleep, then closes without yielding.
            std::thread::sleep(Duration::from_millis(120));
            locks.close().await.unwrap();
            let outcome = waiting.await.unwrap();
            let probe = OpenOptions::new().read(true).write(true).open(&path).unwrap();
            if probe.try_lock().is_err() {
                won.push((round, outcome.map(|g| g.is_held()).map_err(|e| e.to_string())));
            }
        }
        assert!(won.is_empty(), "a closed handle kept the lock file locked: {won:?}");
    }
}

/// A lock directory shared with other local users: nothing in it may redirect lockkit's writes,
/// and a directory others could tamper with is refused at connect.
#[cfg(all(test, unix))]
mod safety_tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::path::PathBuf;

    use super::*;

    fn url(dir: &Path, query: &str) -> LockUrl {
        format!("file://{}{query}", dir.display()).parse().unwrap()
    }

    /// A file outside the lock directory that an attacker would like lockkit to overwrite.
    fn precious() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        fs::write(&path, "precious contents").unwrap();
        (dir, path)
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn connect_refused(url: &LockUrl) -> String {
        match connect(url) {
            Ok(_) => panic!("connected to {url}"),
            Err(e) => e.to_string(),
        }
    }

    async fn refused(locks: &Arc<dyn DistributedLock>, name: &str) -> String {
        match locks.try_acquire(name).await {
            Ok(guard) => panic!("granted: {:?}", guard.map(|g| g.fencing_token())),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn a_symlinked_lock_file_is_refused_and_its_target_left_alone() {
        let (dir, (_keep, target)) = (tempfile::tempdir().unwrap(), precious());
        let link = dir.path().join("x.lock");
        symlink(&target, &link).unwrap();
        let locks = connect(&url(dir.path(), "")).unwrap();
        let err = refused(&locks, "x").await;
        assert!(err.contains(&link.display().to_string()) && err.contains("symbolic link"), "{err}");
        assert!(err.contains("Remove it"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious contents");
        let err = locks.status("x").await.unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[tokio::test]
    async fn a_hard_link_to_another_file_is_not_written() {
        let (dir, (_keep, target)) = (tempfile::tempdir().unwrap(), precious());
        fs::hard_link(&target, dir.path().join("x.lock")).unwrap();
        let locks = connect(&url(dir.path(), "")).unwrap();
        let err = refused(&locks, "x").await;
        assert!(err.contains("2 links"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious contents");
    }

    #[tokio::test]
    async fn a_symlinked_fencelock_file_is_refused_and_its_target_left_alone() {
        let (dir, (_keep, target)) = (tempfile::tempdir().unwrap(), precious());
        symlink(&target, dir.path().join("x.fencelock")).unwrap();
        let locks = connect(&url(dir.path(), "")).unwrap();
        let err = refused(&locks, "x").await;
        assert!(err.contains("x.fencelock") && err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious contents");
    }

    /// The counter used to be read through the link, and its contents shown in the error.
    #[tokio::test]
    async fn a_symlinked_counter_file_is_neither_read_nor_replaced() {
        let (dir, (_keep, target)) = (tempfile::tempdir().unwrap(), precious());
        let link = dir.path().join("x.fence");
        symlink(&target, &link).unwrap();
        let locks = connect(&url(dir.path(), "")).unwrap();
        let err = refused(&locks, "x").await;
        assert!(err.contains("x.fence") && err.contains("symbolic link"), "{err}");
        assert!(!err.contains("precious"), "the target's contents leaked: {err}");
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious contents");
    }

    /// Tests that need root (CI runs them as root) are skipped otherwise.
    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: needs root to chown");
        }
        root
    }

    #[test]
    fn a_lock_directory_owned_by_another_user_is_refused() {
        if !root() {
            return;
        }
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("locks");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let err = connect_refused(&url(&dir, ""));
        assert!(err.contains("owned by uid 65534") && err.contains("chown"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
    }

    #[test]
    fn an_ancestor_owned_by_another_user_is_refused() {
        if !root() {
            return;
        }
        let top = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(top.path(), Some(65534), None).unwrap();
        let err = connect_refused(&url(&top.path().join("locks"), ""));
        assert!(err.contains("owned by uid 65534") && err.contains(&top.path().display().to_string()), "{err}");
        assert!(!top.path().join("locks").exists(), "created a directory under an unsafe one");
    }

    #[test]
    fn a_world_writable_lock_directory_needs_the_sticky_bit() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("locks");
        fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o777);
        let err = connect_refused(&url(&dir, ""));
        assert!(err.contains("writable by others") && err.contains("chmod"), "{err}");
        chmod(&dir, 0o1777);
        connect(&url(&dir, "")).unwrap();
        chmod(&dir, 0o770);
        let err = connect_refused(&url(&dir, ""));
        assert!(err.contains("writable by its group"), "{err}");
        // Sharing with the group is asked for.
        connect(&url(&dir, "?mode=0660")).unwrap();
    }

    #[test]
    fn a_group_or_world_writable_ancestor_needs_the_sticky_bit() {
        let top = tempfile::tempdir().unwrap();
        chmod(top.path(), 0o777);
        let err = connect_refused(&url(&top.path().join("locks"), ""));
        assert!(err.contains(&top.path().display().to_string()) && err.contains("writable by others"), "{err}");
        chmod(top.path(), 0o1777);
        connect(&url(&top.path().join("locks"), "")).unwrap();
    }

    #[tokio::test]
    async fn files_and_directories_are_private_unless_mode_says_otherwise() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("private");
        let locks = connect(&url(&dir, "?namespace=ns")).unwrap();
        locks.acquire("x").await.unwrap().release().await.unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ns")), 0o700);
        for file in ["x.lock", "x.fence", "x.fencelock"] {
            assert_eq!(mode(&dir.join("ns").join(file)), 0o600, "{file}");
        }
        let dir = top.path().join("shared");
        let locks = connect(&url(&dir, "?mode=0640")).unwrap();
        locks.acquire("x").await.unwrap().release().await.unwrap();
        assert_eq!(mode(&dir), 0o750);
        for file in ["x.lock", "x.fence", "x.fencelock"] {
            assert_eq!(mode(&dir.join(file)), 0o640, "{file}");
        }
    }

    #[test]
    fn a_nonsense_mode_is_refused_with_the_valid_forms() {
        let dir = tempfile::tempdir().unwrap();
        for mode in ["abc", "0777", "0400", "99", "", "01600", "-600", "0o6400"] {
            let err = connect_refused(&url(dir.path(), &format!("?mode={mode}")));
            assert!(err.contains("`mode`") && err.contains("0600") && err.contains("0660"), "{mode}: {err}");
        }
        for mode in ["0600", "600", "0o640", "0660", "0644"] {
            connect(&url(dir.path(), &format!("?mode={mode}"))).unwrap();
        }
    }
}

/// Attacks on the file:// safety of #16 (attack4).
#[cfg(all(test, unix))]
mod attack4_tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::path::Path;

    use super::*;

    fn url(dir: &Path, query: &str) -> LockUrl {
        format!("file://{}{query}", dir.display()).parse().unwrap()
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// `/var/lock/cron` planted by another user as a symbolic link to a directory of root's:
    /// the check only looks at the resolved path, so the link (and the directory holding it)
    /// are never checked, and root writes its lock files wherever the other user points.
    #[tokio::test]
    async fn a_lock_directory_that_is_another_users_symlink_is_refused() {
        if !root() {
            return;
        }
        let (shared, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let link = shared.path().join("cron");
        symlink(target.path(), &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        let outcome = match connect(&url(&link, "")) {
            Ok(locks) => locks.try_acquire("x").await.map(|g| g.is_some()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        assert!(
            !target.path().join("x.lock").exists(),
            "root wrote {} through uid 65534's link: {outcome:?}",
            target.path().join("x.lock").display()
        );
    }

    /// A symbolic link in a directory owned by another user (`/home/alice/locks → /etc`): the
    /// same path without the link is refused (`an_ancestor_owned_by_another_user_is_refused`),
    /// with the link it is accepted, and alice decides where root's lock files go.
    #[test]
    fn a_symlink_under_an_ancestor_owned_by_another_user_is_refused() {
        if !root() {
            return;
        }
        let (home, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::os::unix::fs::chown(home.path(), Some(65534), None).unwrap();
        let link = home.path().join("locks");
        symlink(target.path(), &link).unwrap();
        assert!(connect(&url(&link, "")).is_err(), "connected through a link in uid 65534's directory");
    }

    /// `mode=0660` shares the locks with the group; a missing directory above the lock
    /// directory is created group-writable (`dir_mode`), and then refused by the check of
    /// ancestors as "writable by its group" — left behind.
    #[test]
    fn mode_0660_with_a_missing_parent_connects() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("new").join("locks");
        let result = connect(&url(&dir, "?mode=0660")).map(drop).map_err(|e| e.to_string());
        assert!(result.is_ok(), "{result:?}");
    }

    /// `mode=0666` (or any o+w mode) passes `parse_mode`, then the directory created for it is
    /// 0777 without the sticky bit, which connect's own check refuses, and it is left behind
    /// world-writable. Such a mode should be refused before anything is created.
    #[test]
    fn a_world_writable_mode_is_refused_before_anything_is_created() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("locks");
        for mode in ["0666", "0662", "0606"] {
            let err = match connect(&url(&dir, &format!("?mode={mode}"))) {
                Ok(_) => panic!("mode={mode} accepted"),
                Err(e) => e.to_string(),
            };
            let left = fs::symlink_metadata(&dir).map(|m| format!("{:04o}", m.mode() & 0o7777));
            assert!(err.contains("`mode`") && left.is_err(), "mode={mode}: {err}; left behind: {left:?}");
        }
    }
}
