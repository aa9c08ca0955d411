//! The command's process group: how `lockkit run` starts it, hands it the terminal, clears what
//! it leaves behind, and makes sure it cannot outlive lockkit.
//!
//! Two mechanisms kill the group if lockkit dies by any signal (SIGKILL, the OOM killer) and so
//! can no longer keep the lock alive:
//! - the command itself gets `PR_SET_PDEATHSIG(SIGKILL)` (Linux) before it is executed. The
//!   kernel sends it when the *thread* that spawned the child ends: `lockkit run` spawns from
//!   the main thread (inside `block_on`), which lives as long as the process;
//! - a watchdog — lockkit re-executed as `lockkit __watchdog`, in its own process group, with
//!   signals from terminals and shells ignored — reads a pipe whose write end only lockkit holds.
//!   lockkit writes the group's id into it, and `done` once the group is gone. When the pipe
//!   closes without `done` (lockkit died, or panicked), the watchdog sends SIGKILL to the
//!   whole group. The watchdog learns the group's id only once the command exists: should
//!   lockkit die in the microseconds between, only the command itself is killed (by the first
//!   mechanism), not a child it forked in that instant.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;

/// The hidden first argument that makes `lockkit` act as the watchdog.
pub(crate) const WATCHDOG_ARG: &str = "__watchdog";

/// What lockkit writes to the watchdog once the group is gone: nothing is left to kill.
const DONE: &str = "done\n";

/// Prepares `command` to run in a new process group that dies with lockkit and, when
/// `terminal` is set, is the foreground group of the terminal on stdin.
pub(crate) fn configure(command: &mut tokio::process::Command, terminal: bool) {
    let parent = std::process::id();
    command.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // calls (prctl, getppid, sigprocmask, tcsetpgrp, getpid); it does not allocate.
    unsafe {
        command.pre_exec(move || {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // lockkit may have died before the prctl: then nothing would ever send it.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            let _ = parent;
            if terminal {
                // Taken here, before exec, so the command never reads the terminal from the
                // background (and is stopped by SIGTTIN). Failing leaves it in the background.
                with_sigttou_blocked(|| libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid()));
            }
            Ok(())
        });
    }
}

/// Whether the command should get the terminal: stdin is a terminal whose foreground group is
/// lockkit's own (a `lockkit run … &` in the background leaves the terminal alone).
pub(crate) fn owns_terminal() -> bool {
    // SAFETY: plain queries on a file descriptor; no memory is passed.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 && libc::tcgetpgrp(libc::STDIN_FILENO) == libc::getpgrp() }
}

/// Makes lockkit's group the terminal's foreground group again, after the command's group had it.
pub(crate) fn take_terminal_back() {
    // SAFETY: as above; SIGTTOU is blocked so that a background caller is not stopped.
    let result = unsafe { with_sigttou_blocked(|| libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpgrp())) };
    if result != 0 {
        eprintln!("lockkit: warning: cannot take the terminal back: {}", std::io::Error::last_os_error());
    }
}

/// The stop signal that stopped process `pid` (a child of lockkit), if it stopped since the last
/// call; each stop is reported once.
pub(crate) fn stopped_by(pid: i32) -> Option<i32> {
    // SAFETY: waitid fills the zeroed siginfo; WNOHANG never blocks, and without WEXITED it
    // reports stops only, so it never reaps the child tokio waits for.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let found = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WSTOPPED | libc::WNOHANG);
        (found == 0 && info.si_pid() == pid && info.si_code == libc::CLD_STOPPED).then(|| info.si_status())
    }
}

/// The command's group was stopped from the terminal (Ctrl-Z, or reading it from the
/// background): lockkit takes the terminal back and stops itself with the same signal, so its
/// shell sees the job stopped; returns once lockkit is continued (`fg`, `bg`). While stopped,
/// lockkit refreshes nothing: the caller must check the lock before [`resume`].
pub(crate) fn suspend_like(number: i32) {
    take_terminal_back();
    // SAFETY: kill has no memory-safety preconditions. It returns once lockkit is continued
    // (at once if lockkit's group is orphaned: the kernel then discards SIGTSTP).
    unsafe { libc::kill(libc::getpid(), number) };
}

/// After [`suspend_like`]: hands the terminal to the group again if lockkit was continued in the
/// foreground, and continues the group.
pub(crate) fn resume(group: i32) {
    if owns_terminal() {
        // SAFETY: as in `take_terminal_back`.
        unsafe { with_sigttou_blocked(|| libc::tcsetpgrp(libc::STDIN_FILENO, group)) };
    }
    signal(group, libc::SIGCONT);
}

/// Runs `call` with SIGTTOU blocked on this thread (so `tcsetpgrp` from a background group
/// succeeds instead of stopping the process), restoring the mask after.
///
/// # Safety
/// Async-signal-safe: usable between fork and exec.
unsafe fn with_sigttou_blocked(call: impl FnOnce() -> libc::c_int) -> libc::c_int {
    // SAFETY: the sets are initialised by sigemptyset before use.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
        let result = call();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        result
    }
}

/// lockkit's end of the watchdog pipe. Dropped without [`Watchdog::disarm`] (lockkit dying,
/// or a panic), the watchdog kills the group.
pub(crate) struct Watchdog {
    child: Child,
    pipe: ChildStdin,
}

impl Watchdog {
    /// Starts the watchdog, before the command exists.
    pub(crate) fn start() -> std::io::Result<Watchdog> {
        // /proc/self/exe still works if the binary was replaced or deleted since lockkit started.
        let exe = match std::path::Path::new("/proc/self/exe") {
            path if path.exists() => path.to_path_buf(),
            _ => std::env::current_exe()?,
        };
        // The pipe's write end is close-on-exec: only lockkit holds it, not the command.
        let mut child = std::process::Command::new(exe)
            .arg0("lockkit")
            .arg(WATCHDOG_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take().ok_or_else(|| std::io::Error::other("no pipe to the watchdog"))?;
        Ok(Watchdog { child, pipe })
    }

    /// Tells the watchdog which group to kill if lockkit dies.
    pub(crate) fn arm(&mut self, group: i32) -> std::io::Result<()> {
        self.pipe.write_all(format!("{group}\n").as_bytes())
    }

    /// The watchdog's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the watchdog has exited (killed: nothing would stop the group if lockkit died).
    pub(crate) fn is_gone(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The group is gone: the watchdog exits without killing anything.
    pub(crate) fn disarm(mut self) {
        let told = self.pipe.write_all(DONE.as_bytes());
        drop(self.pipe);
        if told.is_ok() {
            // It exits as soon as it reads the end of the pipe; reap it.
            let _ = self.child.wait();
        }
    }
}

/// `lockkit __watchdog`: reads the group id and waits for the pipe on stdin to close; unless
/// lockkit wrote `done` first, kills the whole group.
pub(crate) fn watchdog_main() -> u8 {
    for number in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM, libc::SIGTSTP] {
        // SAFETY: setting a disposition to SIG_IGN has no preconditions.
        unsafe { libc::signal(number, libc::SIG_IGN) };
    }
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("lockkit: watchdog: cannot read from lockkit: {e}");
        return crate::exit::BACKEND;
    }
    let mut lines = text.lines();
    let group = lines.next().and_then(|line| line.parse::<i32>().ok());
    let done = lines.next() == Some(DONE.trim_end());
    match group {
        // Never 0 (our own group) or 1 (-1 would be every process); the leader is never init.
        Some(group) if group > 1 && !done => {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe { libc::killpg(group, libc::SIGKILL) };
        }
        _ => {}
    }
    0
}

/// Whether any process of the group is left. Zombies do not count: a leftover's parent (the
/// command) is gone, so it waits for init to reap it, and some inits never do.
pub(crate) fn alive(group: i32) -> bool {
    // SAFETY: signal 0 only checks for existence; a gone group gives ESRCH.
    if unsafe { libc::killpg(group, 0) } != 0 {
        return false;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return true; // no /proc: trust kill
    };
    processes.flatten().any(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // After the `(comm)` field: state, ppid, pgrp.
        let mut fields = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace();
        let (state, pgrp) = (fields.next(), fields.nth(1));
        state.is_some_and(|s| s != "Z") && pgrp == Some(group.to_string().as_str())
    })
}

/// Sends `number` to the whole group.
pub(crate) fn signal(group: i32, number: i32) {
    // SAFETY: killpg has no memory-safety preconditions; a gone group gives ESRCH.
    unsafe { libc::killpg(group, number) };
}

/// Makes lockkit the subreaper of its descendants (Linux): a process that leaves the command's
/// group (`setsid`) and is then orphaned becomes lockkit's child instead of init's, so it is
/// found and stopped when the command ends ([`adopted`]).
pub(crate) fn become_subreaper() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: prctl with integer arguments has no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
}

/// lockkit's living children other than `except` (the watchdog): once the command has exited
/// and its group is cleared, the descendants that left the group and were orphaned to lockkit.
/// Zombies among them are reaped.
pub(crate) fn adopted(except: u32) -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(processes) = std::fs::read_dir("/proc") else { return Vec::new() };
    processes
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let (state, ppid) = (fields.next()?, fields.next()?);
            if ppid != me || pid as u32 == except {
                return None;
            }
            if state == "Z" {
                // SAFETY: waitpid on a child of ours; a null status pointer is allowed.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                return None;
            }
            Some(pid)
        })
        .collect()
}

/// Waits until the group is empty or `deadline` passes; whether it is empty.
///
/// There is no event for a group becoming empty (its members need not be lockkit's children),
/// so this polls.
pub(crate) async fn wait_empty(group: i32, deadline: tokio::time::Instant) -> bool {
    while alive(group) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
