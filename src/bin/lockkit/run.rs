//! `lockkit run`: a command under a lock, stopped with its whole process group if the lock is lost.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use lockkit::{DistributedLock, LockGuard, LockOptions, LockUrl, Wait};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{duration, exit, fail, report};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Lock URL, e.g. file:///var/lock/myapp or etcd://10.0.0.1:2379/cron
    url: String,
    /// Lock name
    name: String,
    /// How long the grant outlives lockkit if it dies without releasing (default: the URL's
    /// `ttl`, else 15s)
    #[arg(long, value_parser = duration)]
    ttl: Option<Duration>,
    /// Wait at most this long for the lock, then exit 75
    #[arg(long, value_parser = duration, conflicts_with = "no_wait")]
    timeout: Option<Duration>,
    /// Try once: if the lock is held elsewhere, exit 75 at once
    #[arg(long)]
    no_wait: bool,
    /// Holder metadata stored with the grant, shown by `lockkit status` (default: host and pid)
    #[arg(long)]
    holder: Option<String>,
    /// Time between SIGTERM and SIGKILL when the command must be stopped
    #[arg(long, value_parser = duration, default_value = "10s")]
    grace: Duration,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub async fn run(args: RunArgs, verbose: bool) -> u8 {
    let url = match LockUrl::parse(&args.url) {
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
    let code = run_locked(locks.as_ref(), &url, &args, &mut signals, verbose).await;
    // Before exiting: nothing of this process (a waiter's queue entry, a lease) may linger.
    if let Ok(Err(e)) = tokio::time::timeout(locks.settings().timeout, locks.close()).await {
        eprintln!("lockkit: warning: {e}");
    }
    code
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
    let mut child = match Command::new(&args.command[0])
        .args(&args.command[1..])
        .process_group(0)
        .env("LOCKKIT_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("LOCKKIT_LOCK_NAME", &args.name)
        .env("LOCKKIT_URL", url.without_credentials())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            let _ = guard.release().await;
            return fail(&format!("cannot run `{}`: {e}", args.command[0]), code);
        }
    };
    let group = child.id().map(|pid| pid as i32);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            reason = guard.lost() => {
                eprintln!(
                    "lockkit: lost lock `{}`: {reason}; stopping `{}` (SIGTERM, then SIGKILL after {:?})",
                    args.name, args.command[0], args.grace
                );
                stop_group(&mut child, group, args.grace).await;
                let _ = guard.release().await;
                return exit::LOCK_LOST;
            }
            number = signals.recv() => signal_group(group, number),
        }
    };
    if let Err(e) = guard.release().await {
        eprintln!("lockkit: warning: {e}");
    }
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(number)) => 128 + number as u8,
            (None, None) => exit::BACKEND,
        },
        Err(e) => fail(&format!("lost track of `{}`: {e}", args.command[0]), exit::BACKEND),
    }
}

/// Acquires as the arguments say; on failure, prints why and returns the exit status.
async fn acquire(locks: &dyn DistributedLock, args: &RunArgs, verbose: bool) -> Result<LockGuard, u8> {
    let mut options = LockOptions::new().holder(args.holder.clone().unwrap_or_else(lockkit::default_holder));
    if let Some(ttl) = args.ttl {
        options = options.ttl(ttl);
    }
    let started = Instant::now();
    let first = options.clone().wait(Wait::NoWait);
    match locks.acquire_with(&args.name, &first).await {
        Ok(Some(guard)) => return Ok(guard),
        Ok(None) if args.no_wait => {
            return Err(fail(&format!("lock `{}` is held elsewhere (--no-wait)", args.name), exit::NOT_ACQUIRED));
        }
        Ok(None) => {}
        Err(e) => return Err(report(&e)),
    }
    if verbose {
        eprintln!("lockkit: lock `{}` is held elsewhere; waiting", args.name);
    }
    let wait = match args.timeout {
        Some(timeout) => Wait::Timeout(timeout.saturating_sub(started.elapsed())),
        None => Wait::Forever,
    };
    match locks.acquire_with(&args.name, &options.wait(wait)).await {
        Ok(Some(guard)) => Ok(guard),
        Ok(None) => Err(fail(&format!("lock `{}` was not granted", args.name), exit::NOT_ACQUIRED)),
        Err(e) => Err(report(&e)),
    }
}

/// SIGTERM to the group; SIGKILL once `grace` has passed and anything of it is left.
async fn stop_group(child: &mut Child, group: Option<i32>, grace: Duration) {
    signal_group(group, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    let _ = tokio::time::timeout_at(deadline, child.wait()).await;
    // Grandchildren may outlive the command; there is no event for a group becoming empty.
    while group_alive(group) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal_group(group, libc::SIGKILL);
    let _ = child.wait().await;
}

fn signal_group(group: Option<i32>, number: i32) {
    if let Some(group) = group {
        // SAFETY: killpg has no memory-safety preconditions; a gone group gives ESRCH.
        unsafe { libc::killpg(group, number) };
    }
}

fn group_alive(group: Option<i32>) -> bool {
    // SAFETY: as above; signal 0 only checks for existence.
    group.is_some_and(|g| unsafe { libc::killpg(g, 0) } == 0)
}

/// SIGINT, SIGTERM and SIGHUP, as one stream of signal numbers.
struct Signals {
    streams: [(i32, Signal); 3],
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            streams: [
                (libc::SIGINT, signal(SignalKind::interrupt())?),
                (libc::SIGTERM, signal(SignalKind::terminate())?),
                (libc::SIGHUP, signal(SignalKind::hangup())?),
            ],
        })
    }

    async fn recv(&mut self) -> i32 {
        let [(int, a), (term, b), (hup, c)] = &mut self.streams;
        tokio::select! {
            _ = a.recv() => *int,
            _ = b.recv() => *term,
            _ = c.recv() => *hup,
        }
    }
}
