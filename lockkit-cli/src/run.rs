//! `lockkit run`: a command under a lock, stopped with its whole process group if the lock is lost.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use lockkit::{DistributedLock, FencingToken, Leadership, LockGuard, LockOptions, LockUrl, Wait};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{duration, exit, fail, group, report};

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// Lock URL, e.g. file:///var/lock/myapp or etcd://10.0.0.1:2379/cron
    url: String,
    /// Lock name
    name: String,
    /// Holder metadata stored with the grant, shown by `lockkit status` (default: host and pid)
    #[arg(long)]
    holder: Option<String>,
    /// Run under one of N permits of the semaphore NAME instead (every contender must give
    /// the same N)
    #[arg(long, value_name = "N", conflicts_with_all = ["read", "write"])]
    permits: Option<u32>,
    /// Run under a shared hold of the read-write lock NAME: with other readers, never with a writer
    #[arg(long, conflicts_with = "write")]
    read: bool,
    /// Run under the exclusive hold of the read-write lock NAME: no reader, no other writer
    #[arg(long)]
    write: bool,
    #[command(flatten)]
    held: HoldArgs,
}

impl RunArgs {
    /// What is taken, for messages: `lock `x``, `a permit of semaphore `x``, …
    fn what(&self) -> String {
        let name = &self.name;
        match (self.permits, self.read, self.write) {
            (Some(permits), ..) => format!("a permit of semaphore `{name}` ({permits} permits)"),
            (_, true, _) => format!("a read of read-write lock `{name}`"),
            (_, _, true) => format!("the write of read-write lock `{name}`"),
            _ => format!("lock `{name}`"),
        }
    }
}

/// How a lock (or leadership) is taken and kept for a command: shared by `run` and `elect`.
#[derive(clap::Args, Debug)]
pub(crate) struct HoldArgs {
    /// How long the grant outlives lockkit if it dies without giving it back (default: the
    /// URL's `ttl`, else 15s)
    #[arg(long, value_parser = duration)]
    pub(crate) ttl: Option<Duration>,
    /// Wait at most this long, then exit 75
    #[arg(long, value_parser = duration, conflicts_with = "no_wait")]
    pub(crate) timeout: Option<Duration>,
    /// Try once: if it is held elsewhere, exit 75 at once
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// Time between SIGTERM and SIGKILL when the command must be stopped
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub(crate) grace: Duration,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

impl HoldArgs {
    /// The lock options these ask for.
    pub(crate) fn options(&self) -> LockOptions {
        match self.ttl {
            Some(ttl) => LockOptions::new().ttl(ttl),
            None => LockOptions::new(),
        }
    }
}

pub(crate) async fn run(args: RunArgs, verbose: bool) -> u8 {
    with_handle(&args.url, async |locks, url, signals| run_locked(locks, url, &args, signals, verbose).await).await
}

/// Parses `url`, listens for signals, connects (a signal meanwhile ends it: 128 + N), runs
/// `body` with the handle, and closes the handle before returning `body`'s status: nothing of
/// this process (a waiter's queue entry, a lease) may linger.
pub(crate) async fn with_handle(
    url: &str,
    body: impl AsyncFnOnce(&dyn DistributedLock, &LockUrl, &mut Signals) -> u8,
) -> u8 {
    let url = match LockUrl::parse(url) {
        Ok(url) => url,
        Err(e) => return report(&e),
    };
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => return fail(&format!("cannot listen for signals: {e}"), exit::BACKEND),
    };
    let locks = tokio::select! {
        connected = lockkit::connect_url(&url) => match connected {
            Ok(locks) => locks,
            Err(e) => return report(&e),
        },
        number = signals.recv() => return 128 + number as u8,
    };
    let code = body(locks.as_ref(), &url, &mut signals).await;
    if let Ok(Err(e)) = tokio::time::timeout(locks.settings().timeout, locks.close()).await {
        eprintln!("lockkit: warning: {e}");
    }
    code
}

/// Tries once (`NoWait`), then, unless `no_wait`, waits (at most `timeout` in all) — so that
/// `-v` can say that it waits. `what` names the lock or election in messages.
pub(crate) async fn try_then_wait<T>(
    what: &str,
    no_wait: bool,
    timeout: Option<Duration>,
    verbose: bool,
    attempt: impl AsyncFn(Wait) -> lockkit::Result<Option<T>>,
) -> Result<T, u8> {
    let started = Instant::now();
    match attempt(Wait::NoWait).await {
        Ok(Some(granted)) => return Ok(granted),
        Ok(None) if no_wait => return Err(fail(&format!("{what} is held elsewhere (--no-wait)"), exit::NOT_ACQUIRED)),
        Ok(None) => {}
        Err(e) => return Err(report(&e)),
    }
    if verbose {
        eprintln!("lockkit: {what} is held elsewhere; waiting");
    }
    let wait = match timeout {
        Some(timeout) => Wait::Timeout(timeout.saturating_sub(started.elapsed())),
        None => Wait::Forever,
    };
    match attempt(wait).await {
        Ok(Some(granted)) => Ok(granted),
        Ok(None) => Err(fail(&format!("{what} was not granted"), exit::NOT_ACQUIRED)),
        Err(e) => Err(report(&e)),
    }
}

/// Acquires, runs the command, releases; the exit status.
async fn run_locked(
    locks: &dyn DistributedLock,
    url: &LockUrl,
    args: &RunArgs,
    signals: &mut Signals,
    verbose: bool,
) -> u8 {
    let guard = tokio::select! {
        acquired = acquire(locks, args, verbose) => match acquired {
            Ok(guard) => guard,
            Err(code) => return code,
        },
        // Dropping the acquire is cancel safe: nothing is left behind.
        number = signals.recv() => return 128 + number as u8,
    };
    let env = lock_env(&guard, &args.name, url);
    let what = format!("lock `{}`", args.name);
    supervise(guard, &what, &args.held.command, &env, args.held.grace, signals).await.code
}

/// The environment a command under a lock gets.
pub(crate) fn lock_env(guard: &impl Held, name: &str, url: &LockUrl) -> Vec<(&'static str, String)> {
    vec![
        ("LOCKKIT_FENCING_TOKEN", guard.token().to_string()),
        ("LOCKKIT_LOCK_NAME", name.to_owned()),
        ("LOCKKIT_URL", url.without_credentials()),
    ]
}

/// What a command runs under: a held lock, or a leadership.
pub(crate) trait Held: Send + Sync {
    fn token(&self) -> FencingToken;
    fn is_held(&self) -> bool;
    fn lost(&self) -> impl Future<Output = String> + Send;
    /// Releases, or resigns.
    fn give_back(self) -> impl Future<Output = lockkit::Result<()>> + Send;
}

impl Held for LockGuard {
    fn token(&self) -> FencingToken {
        self.fencing_token()
    }
    fn is_held(&self) -> bool {
        LockGuard::is_held(self)
    }
    fn lost(&self) -> impl Future<Output = String> + Send {
        LockGuard::lost(self)
    }
    fn give_back(self) -> impl Future<Output = lockkit::Result<()>> + Send {
        self.release()
    }
}

impl Held for Leadership {
    fn token(&self) -> FencingToken {
        self.term()
    }
    fn is_held(&self) -> bool {
        self.is_leader()
    }
    fn lost(&self) -> impl Future<Output = String> + Send {
        Leadership::lost(self)
    }
    fn give_back(self) -> impl Future<Output = lockkit::Result<()>> + Send {
        self.resign()
    }
}

/// How a supervised command ended: the exit status, and whether it was stopped because what it
/// ran under was lost.
pub(crate) struct Outcome {
    pub(crate) code: u8,
    pub(crate) lost: bool,
}

/// Runs `command` (with `env`) in its own process group while `held` lasts, stops the group if
/// it is lost (`what` names it in the message), and gives `held` back once nothing of the group
/// is left.
pub(crate) async fn supervise(
    held: impl Held,
    what: &str,
    command_line: &[String],
    env: &[(&'static str, String)],
    grace: Duration,
    signals: &mut Signals,
) -> Outcome {
    let program = &command_line[0];
    let terminal = group::owns_terminal();
    group::become_subreaper();
    // Started before the command, so that the command never runs without it.
    let mut watchdog = match group::Watchdog::start() {
        Ok(watchdog) => watchdog,
        Err(e) => {
            let _ = held.give_back().await;
            let message = format!("cannot start the watchdog that stops the command if lockkit dies: {e}");
            return Outcome { code: fail(&message, exit::BACKEND), lost: false };
        }
    };
    let mut command = Command::new(program);
    command.args(&command_line[1..]).envs(env.iter().map(|(k, v)| (*k, v)));
    group::configure(&mut command, terminal);
    let spawned = command.spawn().and_then(|child| match child.id() {
        Some(pid) => Ok((child, pid as i32)),
        None => Err(std::io::Error::other("it exited before lockkit saw its process id")),
    });
    let (mut child, group) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            if terminal {
                // The child may have taken the terminal before its exec failed.
                group::take_terminal_back();
            }
            watchdog.disarm();
            let _ = held.give_back().await;
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            return Outcome { code: fail(&format!("cannot run `{program}`: {e}"), code), lost: false };
        }
    };
    let ended = match watchdog.arm(group) {
        Ok(()) => loop {
            tokio::select! {
                status = child.wait() => break Ended::Exited(status),
                reason = held.lost() => {
                    eprintln!(
                        "lockkit: lost {what}: {reason}; stopping `{program}` (SIGTERM, then SIGKILL after {grace:?})"
                    );
                    break Ended::Lost;
                }
                received = signals.next() => match received {
                    Some(number) => group::signal(group, number),
                    // A child changed state. The watchdog died (the OOM killer?): the command
                    // would outlive a lockkit that dies next, so it is stopped now.
                    None if watchdog.is_gone() => {
                        eprintln!("lockkit: the watchdog died; stopping `{program}` rather than run it unguarded");
                        break Ended::Unguarded;
                    }
                    // The command stopped from the terminal (Ctrl-Z)?
                    None if terminal => {
                        if let Some(number @ (libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)) = group::stopped_by(group) {
                            group::suspend_like(number);
                            // If the lock expired meanwhile, the group stays stopped; the loss
                            // branch stops it for good.
                            if held.is_held() {
                                group::resume(group);
                            }
                        }
                    }
                    None => {}
                },
            }
        },
        Err(e) => {
            eprintln!("lockkit: the watchdog is gone ({e}); stopping `{program}`");
            Ended::Unguarded
        }
    };
    if terminal {
        group::take_terminal_back();
    }
    if matches!(ended, Ended::Exited(_)) && group::alive(group) {
        eprintln!(
            "lockkit: `{program}` left processes in its group; stopping them (SIGTERM, then SIGKILL after {grace:?})"
        );
    }
    clear_group(&mut child, group, grace).await;
    clear_adopted(watchdog.pid(), grace).await;
    // Only now is nothing of the group left that could run without the lock.
    watchdog.disarm();
    let released = held.give_back().await;
    let code = match ended {
        Ended::Exited(Ok(status)) => {
            if let Err(e) = released {
                eprintln!("lockkit: warning: {e}");
            }
            match (status.code(), status.signal()) {
                (Some(code), _) => code as u8,
                (None, Some(number)) => 128 + number as u8,
                (None, None) => exit::BACKEND,
            }
        }
        Ended::Exited(Err(e)) => fail(&format!("lost track of `{program}`: {e}"), exit::BACKEND),
        Ended::Lost => return Outcome { code: exit::LOCK_LOST, lost: true },
        Ended::Unguarded => exit::BACKEND,
    };
    Outcome { code, lost: false }
}

/// Why the command stopped running.
enum Ended {
    /// It exited (or lockkit could not wait for it).
    Exited(std::io::Result<std::process::ExitStatus>),
    /// The lock was lost: lockkit stopped it.
    Lost,
    /// The watchdog could not be told its group, or died: lockkit stopped the command rather
    /// than run it unguarded.
    Unguarded,
}

/// Acquires as the arguments say; on failure, prints why and returns the exit status.
async fn acquire(locks: &dyn DistributedLock, args: &RunArgs, verbose: bool) -> Result<LockGuard, u8> {
    let options = args.held.options().holder(args.holder.clone().unwrap_or_else(lockkit::default_holder));
    try_then_wait(&args.what(), args.held.no_wait, args.held.timeout, verbose, async |wait| {
        let options = options.clone().wait(wait);
        match (args.permits, args.read, args.write) {
            (Some(permits), ..) => locks.semaphore(&args.name, permits).acquire_with(&options).await,
            (_, true, _) => locks.rw_lock(&args.name).read_with(&options).await,
            (_, _, true) => locks.rw_lock(&args.name).write_with(&options).await,
            _ => locks.acquire_with(&args.name, &options).await,
        }
    })
    .await
}

/// Stops the descendants that left the command's group (`setsid`) and were orphaned to lockkit,
/// the subreaper: SIGTERM, then SIGKILL once `grace` has passed. Their own children are
/// orphaned to lockkit in turn as they die, so this repeats until none is left (a few rounds).
async fn clear_adopted(watchdog: u32, grace: Duration) {
    for _ in 0..4 {
        let adopted = group::adopted(watchdog);
        if adopted.is_empty() {
            return;
        }
        eprintln!("lockkit: stopping {} process(es) that left the command's group: {adopted:?}", adopted.len());
        for &pid in &adopted {
            // SAFETY: kill has no memory-safety preconditions; these are lockkit's children.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
                libc::kill(pid, libc::SIGCONT);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !group::adopted(watchdog).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pid in group::adopted(watchdog) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops whatever is left of the group — the command too, if it still runs: SIGTERM, then
/// SIGKILL once `grace` has passed; returns once the group is gone (or, should something
/// survive SIGKILL, after a second more with a warning).
async fn clear_group(child: &mut Child, group: i32, grace: Duration) {
    if !group::alive(group) {
        let _ = child.wait().await; // a zombie leader is not alive; reap it
        return;
    }
    group::signal(group, libc::SIGTERM);
    // A stopped process acts on SIGTERM only once continued.
    group::signal(group, libc::SIGCONT);
    let deadline = tokio::time::Instant::now() + grace;
    let _ = tokio::time::timeout_at(deadline, child.wait()).await;
    if !group::wait_empty(group, deadline).await {
        group::signal(group, libc::SIGKILL);
    }
    let _ = child.wait().await;
    if !group::wait_empty(group, tokio::time::Instant::now() + Duration::from_secs(1)).await {
        eprintln!("lockkit: warning: processes of group {group} survived SIGKILL");
    }
}

/// SIGINT, SIGTERM and SIGHUP, as one stream of signal numbers; and SIGCHLD.
pub(crate) struct Signals {
    streams: [(i32, Signal); 3],
    child: Signal,
}

impl Signals {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Signals {
            streams: [
                (libc::SIGINT, signal(SignalKind::interrupt())?),
                (libc::SIGTERM, signal(SignalKind::terminate())?),
                (libc::SIGHUP, signal(SignalKind::hangup())?),
            ],
            child: signal(SignalKind::child())?,
        })
    }

    /// The next of SIGINT, SIGTERM and SIGHUP.
    pub(crate) async fn recv(&mut self) -> i32 {
        loop {
            if let Some(number) = self.next().await {
                return number;
            }
        }
    }

    /// The next of SIGINT, SIGTERM and SIGHUP; or `None` at a SIGCHLD (a child exited, stopped
    /// or continued).
    pub(crate) async fn next(&mut self) -> Option<i32> {
        let Signals { streams: [(int, a), (term, b), (hup, c)], child } = self;
        tokio::select! {
            _ = a.recv() => Some(*int),
            _ = b.recv() => Some(*term),
            _ = c.recv() => Some(*hup),
            _ = child.recv() => None,
        }
    }
}
