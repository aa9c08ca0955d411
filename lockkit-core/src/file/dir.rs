//! The lock directory of a `file://` handle, made safe to share with other local users.
//!
//! - At connect, the directory is opened once, walking from `/` one component at a time, and
//!   every directory on the way is checked the way sshd's `StrictModes` checks a home
//!   ([`check_dir`]): owned by this user or root, and not writable by group or others unless
//!   its sticky bit is set. Missing directories are created (mode from `mode=`, `0700` by
//!   default) under directories that already passed.
//! - Every file is then opened relative to that directory handle (`openat`) with `O_NOFOLLOW`,
//!   so neither a symbolic link planted in the directory nor one swapped into the path later
//!   can redirect a write, and checked on the opened descriptor (`fstat`) before anything is
//!   written to it ([`LockDir::check_file`]): a regular file, with one link, owned by this user.
//! - Files lockkit creates get exactly the `mode=` permissions (`0600` by default), whatever
//!   the umask.
//!
//! On other platforms the directory is used by path, without these checks.

use std::path::PathBuf;

use crate::{LockUrl, Result};

/// Permissions of the lock files lockkit creates when the URL has no `mode=`.
pub(super) const DEFAULT_MODE: u32 = 0o600;

/// Reads the `mode=` option: octal permission bits (`0600`, `600` or `0o600`) that give the
/// owner read and write, and no execute, setuid, setgid or sticky bits, and no write for others
/// (the directories created for it would be writable by others without the sticky bit).
pub(super) fn parse_mode(url: &LockUrl) -> Result<u32> {
    let Some(text) = url.option("mode") else {
        return Ok(DEFAULT_MODE);
    };
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let digits = if digits.len() == 4 { digits.strip_prefix('0').unwrap_or("?") } else { digits };
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if digits.len() == 3 && mode & !0o664 == 0 && mode & 0o600 == 0o600 => Ok(mode),
        _ => Err(url.invalid(format!(
            "option `mode`: `{text}` is not a lock file mode; write octal permissions that let the \
             owner read and write, without execute or special bits: 0600 (this user only, the \
             default), 0640 (the group may read them, e.g. for `lockkit status`), 0660 (the group \
             may lock too), 0644 (everyone may read)"
        ))),
    }
}

/// The mode of a directory lockkit creates for files of `mode`: each class that may read the
/// files may also search the directory (`0600` → `0700`, `0640` → `0750`, `0660` → `0770`).
pub(super) fn dir_mode(mode: u32) -> u32 {
    mode | ((mode & 0o444) >> 2)
}

/// The lock directory, opened once at connect. Files are named by their name in it.
pub(super) struct LockDir {
    path: PathBuf,
    #[cfg_attr(not(unix), allow(dead_code))]
    mode: u32,
    #[cfg(unix)]
    handle: std::fs::File,
    /// Owners of files (and namespace directories) lockkit accepts.
    #[cfg(unix)]
    trust: Trust,
}

/// Who may own what lockkit writes to.
#[cfg(unix)]
#[derive(Clone, Copy)]
struct Trust {
    /// The effective uid of this process.
    euid: u32,
    /// When `mode=` lets the group write, the group of the lock directory: its members share
    /// the locks, and their files and namespace directories are accepted too.
    group: Option<u32>,
}

#[cfg(unix)]
impl Trust {
    fn owns(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        meta.uid() == self.euid || self.group == Some(meta.gid())
    }
}

impl LockDir {
    /// The path of `name` in the directory, for messages.
    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

#[cfg(unix)]
mod unix {
    use std::ffi::CString;
    use std::fs::{File, Metadata, Permissions};
    use std::io::{self, ErrorKind};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Component, Path, PathBuf};

    use super::{LockDir, Trust, dir_mode};
    use crate::{LockUrl, Result};

    /// What a directory on the way is to the lock directory, for its check and messages.
    #[derive(Clone, Copy, PartialEq)]
    enum Role {
        /// Above the URL's directory.
        Ancestor,
        /// The URL's directory.
        Base,
        /// A namespace directory below it.
        Namespace,
    }

    impl LockDir {
        /// Opens (creating what is missing) `base/namespace…`, checking every directory from
        /// `/` down. Unsafe directories are an [`Error::InvalidUrl`](crate::Error::InvalidUrl)
        /// that says how to fix them.
        pub(in crate::file) fn open(url: &LockUrl, base: &Path, namespace: &[String], mode: u32) -> Result<LockDir> {
            let invalid = |reason: String| url.invalid(reason);
            let io = |path: &Path, e: io::Error| {
                invalid(format!(
                    "cannot create or open {}: {e}; use a directory this process can write, or create it first",
                    path.display()
                ))
            };
            if base.components().any(|c| c == Component::ParentDir) {
                return Err(invalid("the directory path must not contain `..`; write it without".into()));
            }
            // SAFETY: geteuid has no preconditions and cannot fail.
            let euid = unsafe { libc::geteuid() };
            let mut trust = Trust { euid, group: None };
            check_links(base, trust).map_err(invalid)?;
            // The longest part of the path that exists, with its symbolic links resolved (as
            // sshd does for a home: `/var/lock` → `/run/lock`); the rest is created below.
            let mut existing = base.to_path_buf();
            let mut missing = Vec::new();
            let resolved = loop {
                match std::fs::canonicalize(&existing) {
                    Ok(resolved) => break resolved,
                    Err(e) if e.kind() == ErrorKind::NotFound => match (existing.file_name(), existing.parent()) {
                        (Some(name), Some(parent)) => {
                            missing.push(name.to_owned());
                            existing = parent.to_path_buf();
                        }
                        _ => return Err(io(base, e)),
                    },
                    Err(e) => return Err(io(&existing, e)),
                }
            };
            let mut steps: Vec<(std::ffi::OsString, Role)> = resolved
                .components()
                .filter_map(|c| match c {
                    Component::Normal(name) => Some((name.to_owned(), Role::Ancestor)),
                    _ => None,
                })
                .chain(missing.into_iter().rev().map(|name| (name, Role::Ancestor)))
                .collect();
            match steps.last_mut() {
                Some(last) => last.1 = Role::Base,
                None => return Err(invalid("the lock directory cannot be `/`; name a directory for the locks".into())),
            }
            steps.extend(namespace.iter().map(|s| (s.into(), Role::Namespace)));

            let mut path = PathBuf::from("/");
            let mut dir = File::open("/").map_err(|e| io(&path, e))?;
            check_dir(&dir.metadata().map_err(|e| io(&path, e))?, &path, Role::Ancestor, trust, base)
                .map_err(invalid)?;
            for (name, role) in steps {
                path.push(&name);
                let name = CString::new(name.into_encoded_bytes()).map_err(|e| io(&path, io::Error::other(e)))?;
                let child = match open_dir(&dir, &name) {
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        // Directories above the lock directory are not shared with the group (the
                        // check of ancestors would refuse them group-writable).
                        let wanted = if role == Role::Ancestor { dir_mode(mode) & !0o022 } else { dir_mode(mode) };
                        // SAFETY: a valid descriptor and a NUL-terminated name.
                        let made = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), wanted as _) } == 0;
                        let failed = io::Error::last_os_error();
                        if !made && failed.kind() != ErrorKind::AlreadyExists {
                            return Err(io(&path, failed));
                        }
                        let child = open_dir(&dir, &name);
                        if let (true, Ok(child)) = (made, &child) {
                            // The umask must not narrow what `mode=` asked for.
                            child.set_permissions(Permissions::from_mode(wanted)).map_err(|e| io(&path, e))?;
                        }
                        child
                    }
                    other => other,
                }
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ELOOP | libc::ENOTDIR) => invalid(format!(
                        "{} is a symbolic link or not a directory; below the resolved path lockkit \
                         follows no links: remove it or name another directory",
                        path.display()
                    )),
                    _ => io(&path, e),
                })?;
                let meta = child.metadata().map_err(|e| io(&path, e))?;
                if role == Role::Base && mode & 0o020 != 0 {
                    trust.group = Some(meta.gid());
                }
                check_dir(&meta, &path, role, trust, base).map_err(invalid)?;
                dir = child;
            }
            Ok(LockDir { path, mode, handle: dir, trust })
        }

        /// Opens `name` for reading and writing, creating it with the handle's mode if it is
        /// missing, and checks it before anything is written to it.
        pub(in crate::file) fn open_for_update(&self, name: &str) -> io::Result<File> {
            loop {
                let file = match self.open_at(name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) {
                    Ok(file) => {
                        file.set_permissions(Permissions::from_mode(self.mode))?;
                        file
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => match self.open_at(name, libc::O_RDWR) {
                        Err(e) if e.kind() == ErrorKind::NotFound => continue, // removed meanwhile
                        other => other?,
                    },
                    Err(e) => return Err(e),
                };
                match self.check_file(name, &file, true) {
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    checked => return checked.map(|()| file),
                }
            }
        }

        /// Creates `name`, which must not exist, with the handle's mode.
        pub(in crate::file) fn create_new(&self, name: &str) -> io::Result<File> {
            let file = self.open_at(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)?;
            file.set_permissions(Permissions::from_mode(self.mode))?;
            Ok(file)
        }

        /// Opens an existing `name` for reading; `owned` also requires the owner check that
        /// writes get (for files whose contents may end up in a message).
        pub(in crate::file) fn open_for_reading(&self, name: &str, owned: bool) -> io::Result<File> {
            let file = self.open_at(name, libc::O_RDONLY)?;
            self.check_file(name, &file, owned)?;
            Ok(file)
        }

        /// Whether `name` is still the file `file` (not removed, not replaced).
        pub(in crate::file) fn holds(&self, name: &str, file: &File) -> io::Result<bool> {
            let name = c_name(name)?;
            let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: a valid descriptor, a NUL-terminated name and room for the result.
            let rc = unsafe {
                libc::fstatat(self.handle.as_raw_fd(), name.as_ptr(), stat.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW)
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fstatat succeeded, so it filled `stat`.
            let stat = unsafe { stat.assume_init() };
            let mine = file.metadata()?;
            #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
            Ok((stat.st_dev as u64, stat.st_ino as u64) == (mine.dev(), mine.ino()))
        }

        /// Removes `name` from the directory (never what a link points to).
        pub(in crate::file) fn remove(&self, name: &str) -> io::Result<()> {
            let name = c_name(name)?;
            // SAFETY: a valid descriptor and a NUL-terminated name.
            cvt(unsafe { libc::unlinkat(self.handle.as_raw_fd(), name.as_ptr(), 0) })
        }

        /// Renames `from` over `to`, both in the directory, and syncs the directory.
        pub(in crate::file) fn rename_and_sync(&self, from: &str, to: &str) -> io::Result<()> {
            let (from, to) = (c_name(from)?, c_name(to)?);
            let fd = self.handle.as_raw_fd();
            // SAFETY: a valid descriptor and NUL-terminated names.
            cvt(unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) })?;
            self.handle.sync_all()
        }

        /// Moves `from` to `to`, both in the directory, only if `to` does not exist
        /// (`AlreadyExists` otherwise), and syncs the directory: a file appears whole or not at all.
        pub(in crate::file) fn rename_new_and_sync(&self, from: &str, to: &str) -> io::Result<()> {
            let (from, to) = (c_name(from)?, c_name(to)?);
            let fd = self.handle.as_raw_fd();
            #[cfg(target_os = "linux")]
            // SAFETY: a valid descriptor and NUL-terminated names.
            cvt(unsafe { libc::renameat2(fd, from.as_ptr(), fd, to.as_ptr(), libc::RENAME_NOREPLACE) })?;
            #[cfg(not(target_os = "linux"))]
            {
                // SAFETY: a valid descriptor and NUL-terminated names.
                cvt(unsafe { libc::linkat(fd, from.as_ptr(), fd, to.as_ptr(), 0) })?;
                // SAFETY: as above.
                cvt(unsafe { libc::unlinkat(fd, from.as_ptr(), 0) })?;
            }
            self.handle.sync_all()
        }

        fn open_at(&self, name: &str, flags: libc::c_int) -> io::Result<File> {
            let c = c_name(name)?;
            // O_NONBLOCK: a FIFO planted under the name must not hang the open.
            let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
            // SAFETY: a valid descriptor and a NUL-terminated name; the result is checked.
            let fd = unsafe { libc::openat(self.handle.as_raw_fd(), c.as_ptr(), flags, self.mode as libc::c_uint) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::ELOOP) => self.refuse(name, "a symbolic link".into()),
                    _ => e,
                });
            }
            // SAFETY: `fd` was just opened and is owned by nobody else.
            Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        }

        /// A regular file with one link (no hard link to a file elsewhere), and with `owned`,
        /// owned by this user (or, when `mode=` shares with the group, by the group).
        /// `NotFound` when it was removed since it was opened (`force_release`).
        fn check_file(&self, name: &str, file: &File, owned: bool) -> io::Result<()> {
            let meta: Metadata = file.metadata()?;
            let problem = if meta.nlink() == 0 {
                return Err(io::Error::new(ErrorKind::NotFound, format!("{} was removed", self.path(name).display())));
            } else if !meta.file_type().is_file() {
                "not a regular file".to_owned()
            } else if meta.nlink() != 1 {
                format!("a file with {} links (a hard link to a file elsewhere?)", meta.nlink())
            } else if owned && !self.trust.owns(&meta) {
                format!("owned by uid {}, not by this user (uid {})", meta.uid(), self.trust.euid)
            } else {
                return Ok(());
            };
            Err(self.refuse(name, problem))
        }

        fn refuse(&self, name: &str, problem: String) -> io::Error {
            let path = self.path(name);
            io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "refusing to use {path}: it is {problem}; lockkit only writes regular files of its \
                     own in a lock directory, so that nothing planted there can redirect its writes. \
                     Remove it (`rm {path}`) if no lockkit of yours made it",
                    path = path.display()
                ),
            )
        }
    }

    /// sshd's `StrictModes` check of one directory on the way to the lock directory `base`.
    ///
    /// - Owner: this user or root (a namespace directory may also belong to the group that
    ///   `mode=` shares the locks with).
    /// - Writable by others: only with the sticky bit (`/tmp`, `/var/lock`), where others can
    ///   add files but not remove or rename ours.
    /// - Writable by the group: only with the sticky bit, or for the lock directory and its
    ///   namespace directories when `mode=` shares the locks with the group.
    fn check_dir(meta: &Metadata, path: &Path, role: Role, trust: Trust, base: &Path) -> Result<(), String> {
        let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
        let what = match role {
            Role::Ancestor => format!("{}, on the way to the lock directory {},", path.display(), base.display()),
            Role::Base => format!("the lock directory {}", path.display()),
            Role::Namespace => format!("the namespace directory {}", path.display()),
        };
        let group_shared = role != Role::Ancestor && trust.group.is_some();
        let owner_ok = uid == trust.euid || uid == 0 || (role == Role::Namespace && trust.group == Some(meta.gid()));
        if !owner_ok {
            return Err(format!(
                "{what} is owned by uid {uid}, not by this user (uid {euid}) or root, so that user could \
                 swap or empty it; fix: `chown {euid} {p}` if it is yours, or use a directory owned by \
                 you or root",
                euid = trust.euid,
                p = path.display()
            ));
        }
        let sticky = mode & 0o1000 != 0;
        if !sticky && mode & 0o002 != 0 {
            return Err(format!(
                "{what} is writable by others (mode {mode:04o}) without the sticky bit, so any local \
                 user could remove or replace what is in it; fix: `chmod o-w {p}` (or `chmod +t {p}` \
                 for a directory shared like /tmp)",
                p = path.display()
            ));
        }
        if !sticky && mode & 0o020 != 0 && !group_shared {
            let share =
                if role == Role::Ancestor { "" } else { ", or add `mode=0660` to share the locks with the group" };
            return Err(format!(
                "{what} is writable by its group (gid {gid}, mode {mode:04o}) without the sticky bit, \
                 so other members could remove or replace what is in it; fix: `chmod g-w {p}` (or \
                 `chmod +t {p}`){share}",
                gid = meta.gid(),
                p = path.display()
            ));
        }
        Ok(())
    }

    /// Symbolic links on the path as written are followed (as sshd does: `/var/lock` →
    /// `/run/lock`) only when they belong to this user or root and sit in a directory that passes
    /// [`check_dir`]: a link another user planted — in a sticky `/var/lock`, or in a directory of
    /// theirs — would choose where the locks are written.
    fn check_links(base: &Path, trust: Trust) -> Result<(), String> {
        let mut prefix = PathBuf::new();
        for component in base.components() {
            prefix.push(component);
            let Ok(meta) = std::fs::symlink_metadata(&prefix) else { break };
            if !meta.file_type().is_symlink() {
                continue;
            }
            let uid = meta.uid();
            if uid != trust.euid && uid != 0 {
                return Err(format!(
                    "{} is a symbolic link owned by uid {uid}, not by this user (uid {euid}) or root, so \
                     that user chooses where the locks are written; fix: remove it, or name the directory it \
                     should point to",
                    prefix.display(),
                    euid = trust.euid
                ));
            }
            let parent = prefix.parent().unwrap_or(Path::new("/"));
            let holder = std::fs::metadata(parent).map_err(|e| format!("cannot read {}: {e}", parent.display()))?;
            check_dir(&holder, parent, Role::Ancestor, trust, base)?;
        }
        Ok(())
    }

    fn open_dir(dir: &File, name: &std::ffi::CStr) -> io::Result<File> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid descriptor and a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn c_name(name: &str) -> io::Result<CString> {
        CString::new(name).map_err(|_| io::Error::new(ErrorKind::InvalidInput, "a file name with a NUL byte"))
    }

    fn cvt(rc: libc::c_int) -> io::Result<()> {
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

/// Elsewhere: the directory by path, created if missing, without the ownership checks.
#[cfg(not(unix))]
mod other {
    use std::fs::{self, File, OpenOptions};
    use std::io;
    use std::path::Path;

    use super::LockDir;
    use crate::{LockUrl, Result};

    impl LockDir {
        pub(in crate::file) fn open(url: &LockUrl, base: &Path, namespace: &[String], mode: u32) -> Result<LockDir> {
            let path = namespace.iter().fold(base.to_path_buf(), |d, s| d.join(s));
            fs::create_dir_all(&path)
                .map_err(|e| url.invalid(format!("cannot create the lock directory {}: {e}", path.display())))?;
            Ok(LockDir { path, mode })
        }

        pub(in crate::file) fn open_for_update(&self, name: &str) -> io::Result<File> {
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.path(name))
        }

        pub(in crate::file) fn create_new(&self, name: &str) -> io::Result<File> {
            OpenOptions::new().write(true).create_new(true).open(self.path(name))
        }

        pub(in crate::file) fn open_for_reading(&self, name: &str, _owned: bool) -> io::Result<File> {
            File::open(self.path(name))
        }

        pub(in crate::file) fn holds(&self, name: &str, file: &File) -> io::Result<bool> {
            let (now, mine) = (fs::metadata(self.path(name))?, file.metadata()?);
            Ok(now.created().ok() == mine.created().ok() && now.len() == mine.len())
        }

        pub(in crate::file) fn remove(&self, name: &str) -> io::Result<()> {
            fs::remove_file(self.path(name))
        }

        pub(in crate::file) fn rename_and_sync(&self, from: &str, to: &str) -> io::Result<()> {
            fs::rename(self.path(from), self.path(to))
        }

        pub(in crate::file) fn rename_new_and_sync(&self, from: &str, to: &str) -> io::Result<()> {
            fs::hard_link(self.path(from), self.path(to))?;
            fs::remove_file(self.path(from))
        }
    }
}
