//! Which files a grant of each kind locks, and how. Every file of a name starts with its stem;
//! the ones below add `@`, which no stem contains, so they cannot be another name's files.
//! - a lock (or an election): `<stem>.lock`, exclusively;
//! - a semaphore's permit: the first free of the slot files `<stem>@permit-<i>.lock`
//!   (`i < permits`), exclusively; the number of permits is kept in `<stem>@permits`, written
//!   by the first contender, and another number is refused;
//! - a read-write lock's write: `<stem>@rw.lock`, exclusively, taken while holding
//!   `<stem>@turnstile.lock`, which a waiting writer keeps so that later readers wait behind it
//!   (writers are not starved);
//! - a read: `<stem>@rw.lock` shared (passing the turnstile shared, for a moment), and, for
//!   `status`, the first free reader slot `<stem>@reader-<i>.lock` exclusively, holding the
//!   reader's token and metadata.
//!
//! The file that holds the grant's token and metadata is the one `status` reads; slots are
//! used from 0 up, and stay (a few bytes each), so `status` finds them by counting up.

use std::fs::{File, TryLockError};
use std::io::{self, Read, Write};

use super::dir::LockDir;
use crate::{Error, GrantKind, LockName, Result};

/// The files a grant holds: `file` locked exclusively, with the token and metadata written
/// into it; for a read, also `shared`, the read-write lock file locked shared.
pub(super) struct Taken {
    pub(super) file: File,
    /// `file`'s name in the directory.
    pub(super) name: String,
    pub(super) shared: Option<File>,
}

/// What one acquire keeps between its tries: a waiting writer's turnstile, so that readers
/// arriving after it wait.
#[derive(Default)]
pub(super) struct Tries {
    turnstile: Option<File>,
}

/// Takes the files of a grant of `kind` on `name` if they are free now.
pub(super) fn try_take(
    dir: &LockDir,
    name: &LockName,
    kind: GrantKind,
    tries: &mut Tries,
) -> io::Result<Option<Taken>> {
    let stem = name.file_stem();
    let exclusive =
        |file: String| Ok(try_lock(dir, &file, false)?.map(|f| Taken { file: f, name: file, shared: None }));
    match kind {
        GrantKind::Permit { permits } => {
            for slot in 0..permits {
                if let Some(taken) = exclusive(format!("{stem}@permit-{slot}.lock"))? {
                    return Ok(Some(taken));
                }
            }
            Ok(None)
        }
        GrantKind::Read => {
            // Readers pass the turnstile; a writer waiting or entering holds it.
            let Some(_gate) = try_lock(dir, &format!("{stem}@turnstile.lock"), true)? else { return Ok(None) };
            let Some(shared) = try_lock(dir, &format!("{stem}@rw.lock"), true)? else { return Ok(None) };
            let mut slot = 0;
            loop {
                if let Some(taken) = exclusive(format!("{stem}@reader-{slot}.lock"))? {
                    return Ok(Some(Taken { shared: Some(shared), ..taken }));
                }
                slot += 1;
            }
        }
        GrantKind::Write => {
            if tries.turnstile.is_none() {
                let Some(gate) = try_lock(dir, &format!("{stem}@turnstile.lock"), false)? else { return Ok(None) };
                tries.turnstile = Some(gate);
            }
            let taken = exclusive(format!("{stem}@rw.lock"))?;
            if taken.is_some() {
                tries.turnstile = None; // in: the readers behind it wait on the lock itself
            }
            Ok(taken)
        }
        _ => exclusive(format!("{stem}.lock")),
    }
}

/// Opens and locks `name` (shared or exclusively), making sure the locked file is still the
/// one of that name (`force_release` may have removed it between open and lock). `None` when
/// held elsewhere.
pub(super) fn try_lock(dir: &LockDir, name: &str, shared: bool) -> io::Result<Option<File>> {
    loop {
        let file = dir.open_for_update(name)?;
        let locked = if shared { file.try_lock_shared() } else { file.try_lock() };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
        match dir.holds(name, &file) {
            Ok(true) => return Ok(Some(file)),
            Ok(false) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Checks that `name`'s semaphore has `permits` permits, recording the number if it is the
/// first to use the name as a semaphore.
pub(super) fn check_permits(dir: &LockDir, name: &LockName, permits: u32) -> Result<()> {
    let file = format!("{}@permits", name.file_stem());
    let recorded = match dir.create_new(&file) {
        Ok(mut created) => {
            let written = created.write_all(permits.to_string().as_bytes()).and_then(|()| created.sync_data());
            return written.map_err(|e| super::io_error(&format!("cannot write {}", dir.path(&file).display()), e));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => recorded_permits(dir, name),
        Err(e) => return Err(super::io_error(&format!("cannot create {}", dir.path(&file).display()), e)),
    };
    match recorded {
        // Empty: its creator is writing it; the number is checked by the next acquire.
        Ok(None) => Ok(()),
        Ok(Some(recorded)) if recorded == permits => Ok(()),
        Ok(Some(recorded)) => Err(Error::InvalidOptions {
            reason: format!(
                "semaphore `{name}` has {recorded} permits (recorded in {}), not {permits}: give every contender \
                 the same number, or use another name",
                dir.path(&file).display()
            ),
        }),
        Err(e) => Err(super::io_error(&format!("cannot read {}", dir.path(&file).display()), e)),
    }
}

/// The number of permits recorded for `name` (`None`: not a semaphore, or being recorded).
pub(super) fn recorded_permits(dir: &LockDir, name: &LockName) -> io::Result<Option<u32>> {
    let file = format!("{}@permits", name.file_stem());
    let mut text = String::new();
    match dir.open_for_reading(&file, true) {
        Ok(mut opened) => opened.read_to_string(&mut text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let permits = text.trim().parse().map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, format!("it holds {:?}, not a number of permits", text.trim()))
    })?;
    Ok(Some(permits))
}

/// The files whose holders `status` lists for `name`, in the order it lists them: the lock,
/// the write, the readers' slots and the permits' slots (the slots that exist: they are used
/// from 0 up).
pub(super) fn status_files(dir: &LockDir, name: &LockName, permits: Option<u32>) -> Vec<(String, GrantKind)> {
    let stem = name.file_stem();
    let mut files = vec![(format!("{stem}.lock"), GrantKind::Lock), (format!("{stem}@rw.lock"), GrantKind::Write)];
    let exists = |file: &String| dir.open_for_reading(file, false).is_ok();
    let readers = (0..).map(|slot| format!("{stem}@reader-{slot}.lock")).take_while(exists);
    files.extend(readers.map(|file| (file, GrantKind::Read)));
    if let Some(permits) = permits {
        let slots = (0..permits).map(|slot| format!("{stem}@permit-{slot}.lock")).take_while(exists);
        files.extend(slots.map(|file| (file, GrantKind::Permit { permits })));
    }
    files
}
