//! Which files a grant of each kind locks, and how. Every file of a name starts with its stem;
//! the ones below add `@`, which no stem contains, so they cannot be another name's files.
//! - a lock (or an election): `<stem>.lock`, exclusively;
//! - a semaphore's permit: the first free of the slot files `<stem>@permit-<i>.lock`
//!   (`i < permits`), exclusively;
//! - a read-write lock's write: `<stem>@rw.lock`, exclusively, taken while holding
//!   `<stem>@turnstile.lock`, which a waiting writer keeps so that later readers wait behind it
//!   (writers are not starved);
//! - a read: `<stem>@rw.lock` shared (passing the turnstile shared, for a moment), and, for
//!   `status`, the first free reader slot `<stem>@reader-<i>.lock` exclusively, holding the
//!   reader's token and metadata.
//!
//! What a name is — `lock` (an election too), `semaphore <permits>` or `rw` — is recorded in
//! `<stem>@kind` by its first contender (written whole: a temporary file moved into place only
//! if none is there), and a contender asking for another is refused: a name is one primitive.
//! Remove `<stem>@kind`, with nothing held, to use the name otherwise.
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

/// Takes the files of a grant of `kind` on `name` if they are free now. A writer that will
/// `wait` keeps the turnstile between its tries; one that only tries never takes it (a failed
/// try must not hold readers up).
pub(super) fn try_take(
    dir: &LockDir,
    name: &LockName,
    kind: GrantKind,
    wait: bool,
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
        GrantKind::Write if !wait => exclusive(format!("{stem}@rw.lock")),
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

/// What `kind` records in `<stem>@kind`.
fn tag(kind: GrantKind) -> String {
    match kind {
        GrantKind::Permit { permits } => format!("semaphore {permits}"),
        GrantKind::Read | GrantKind::Write => "rw".into(),
        _ => "lock".into(),
    }
}

/// Checks that `name` is used as `kind`'s primitive, recording it if it is the first use.
pub(super) fn check_kind(dir: &LockDir, name: &LockName, kind: GrantKind) -> Result<()> {
    let file = format!("{}@kind", name.file_stem());
    let wanted = tag(kind);
    let recorded = match recorded(dir, name) {
        Ok(Some(recorded)) => recorded,
        Ok(None) => match record(dir, &file, &wanted) {
            Ok(()) => return Ok(()),
            // Recorded meanwhile by another contender: compare with theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match recorded(dir, name) {
                Ok(recorded) => recorded.unwrap_or_default(),
                Err(e) => return Err(super::io_error(&format!("cannot read {}", dir.path(&file).display()), e)),
            },
            Err(e) => return Err(super::io_error(&format!("cannot record {}", dir.path(&file).display()), e)),
        },
        Err(e) => return Err(super::io_error(&format!("cannot read {}", dir.path(&file).display()), e)),
    };
    if recorded == wanted {
        return Ok(());
    }
    let is = |tag: &str| match tag.strip_prefix("semaphore ") {
        Some(permits) => format!("a semaphore of {permits} permits"),
        None if tag == "rw" => "a read-write lock".into(),
        None => "a lock (or election)".into(),
    };
    Err(Error::InvalidOptions {
        reason: format!(
            "`{name}` is recorded as {} (in {}), not {}: give every contender of a name the same kind (and a \
             semaphore the same number of permits), or use another name",
            is(&recorded),
            dir.path(&file).display(),
            is(&wanted)
        ),
    })
}

/// Writes `tag` into `file` whole, unless `file` exists (`AlreadyExists`).
fn record(dir: &LockDir, file: &str, tag: &str) -> io::Result<()> {
    let tmp = format!("{file}.{}-{:x}", std::process::id(), crate::driver::random_u64());
    let written = dir.create_new(&tmp).and_then(|mut created| {
        created.write_all(tag.as_bytes())?;
        created.sync_data()
    });
    let moved = written.and_then(|()| dir.rename_new_and_sync(&tmp, file));
    if moved.is_err() {
        let _ = dir.remove(&tmp);
    }
    moved
}

/// What `name` is recorded as (`None`: not recorded yet).
fn recorded(dir: &LockDir, name: &LockName) -> io::Result<Option<String>> {
    let file = format!("{}@kind", name.file_stem());
    let mut text = String::new();
    match dir.open_for_reading(&file, true) {
        Ok(mut opened) => opened.read_to_string(&mut text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let tag = text.trim();
    let known =
        tag == "lock" || tag == "rw" || tag.strip_prefix("semaphore ").is_some_and(|n| n.parse::<u32>().is_ok());
    if !known {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it holds {tag:?}, not `lock`, `rw` or `semaphore <permits>`; remove it if nothing holds the name"),
        ));
    }
    Ok(Some(tag.to_owned()))
}

/// The number of permits recorded for `name` (`None`: not a semaphore).
pub(super) fn recorded_permits(dir: &LockDir, name: &LockName) -> io::Result<Option<u32>> {
    let recorded = recorded(dir, name)?;
    Ok(recorded.as_deref().and_then(|tag| tag.strip_prefix("semaphore ")).and_then(|n| n.parse().ok()))
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
