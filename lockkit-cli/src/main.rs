//! `lockkit`: run a command under a distributed lock, or inspect a lock, on any backend lockkit
//! supports, from the same URL the library takes.

mod elect;
mod group;
mod run;
mod status;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lockkit::Error;

/// Exit statuses of `lockkit` itself; otherwise `lockkit run` exits with its command's status.
mod exit {
    /// `lockkit status`: the lock is free.
    pub(crate) const FREE: u8 = 1;
    /// Bad arguments, URL or option.
    pub(crate) const USAGE: u8 = 64;
    /// The backend could not be reached, or refused the credentials.
    pub(crate) const UNAVAILABLE: u8 = 69;
    /// The backend answered with an error.
    pub(crate) const BACKEND: u8 = 70;
    /// `--no-wait` or `--timeout`: the lock is held elsewhere.
    pub(crate) const NOT_ACQUIRED: u8 = 75;
    /// The lock was lost while the command ran; the command was stopped. Only ever after a
    /// command started: a loss before (an acquire failing with it) is [`BACKEND`].
    pub(crate) const LOCK_LOST: u8 = 76;
}

const AFTER_HELP: &str = "\
Exit status:
  lockkit run exits with the command's status (128 + N when it died of signal N), or:
    75  not acquired (--no-wait, or --timeout passed)
    76  the lock was lost while the command ran; its process group was stopped
    64  usage or configuration error (bad URL, unknown option, driver not compiled in)
    69  backend unreachable or authentication failed
    70  backend error (also a lease lost before the command started)
  lockkit elect exits the same way (76: leadership lost under --once), 75 meaning not elected.
  lockkit status exits 0 when the lock is held, 1 when it is free; lockkit leader 0 when
  someone leads, 1 when nobody does.

Examples:
  # Run the nightly job on one host of the fleet only; the others skip it.
  lockkit run etcd://10.0.0.1:2379/cron nightly-report --no-wait -- /usr/local/bin/report
  # Never run two deploys at once; wait up to 10 minutes for the previous one.
  lockkit run file:///var/lock/deploy deploy --timeout 10m -- ./deploy.sh
  # Who holds it?
  lockkit status file:///var/lock/deploy deploy --json
  # One scheduler of the fleet at a time; the others take over if it dies.
  lockkit elect etcd://10.0.0.1:2379/services scheduler --value \"$(hostname):8080\" -- ./scheduler
  lockkit leader etcd://10.0.0.1:2379/services scheduler --watch";

/// Run a command under a distributed lock, or inspect a lock.
///
/// URL chooses the backend: memory://, file:///dir, etcd://host:2379, zk://host:2181,
/// consul://host:8500, redis://host:6379, redis-cluster://h1,h2, redlock://h1,h2,h3 (network
/// backends need their cargo feature). Durations are written 500ms, 10s, 2m, 1h.
#[derive(Parser, Debug)]
#[command(name = "lockkit", version, after_help = AFTER_HELP)]
struct Cli {
    /// Log what lockkit does (acquire, refresh, release, loss) to stderr.
    #[arg(long, short, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Acquire NAME, run COMMAND while holding it, release when it exits.
    ///
    /// COMMAND runs in its own process group with LOCKKIT_FENCING_TOKEN, LOCKKIT_LOCK_NAME and
    /// LOCKKIT_URL (without credentials) in its environment. The lock is kept alive while it
    /// runs. If the lock is lost, the whole group gets SIGTERM, then SIGKILL after --grace.
    /// When COMMAND exits, what is left in its group gets the same, before the lock is released.
    /// If lockkit itself dies (even by SIGKILL), the group is killed at once. SIGINT, SIGTERM and
    /// SIGHUP sent to lockkit are forwarded to the group; while still waiting for the lock, they
    /// make lockkit stop waiting and exit. Under a terminal, COMMAND's group is the terminal's
    /// foreground group while it runs, so it can read the terminal and gets Ctrl-C itself.
    #[command(after_help = AFTER_HELP)]
    Run(run::RunArgs),

    /// Show whether NAME is held, by whom, its fencing token and TTL left.
    Status(status::StatusArgs),

    /// Campaign in the election NAME; while leading, run COMMAND; when leadership is lost,
    /// stop it and campaign again (unless --once).
    ///
    /// COMMAND runs as under `lockkit run` (its own process group, the same signal, loss and
    /// exit rules), with LOCKKIT_TERM (the leader's term, a fencing token) besides the lock
    /// variables. When COMMAND exits by itself, lockkit resigns and exits with its status.
    #[command(after_help = AFTER_HELP)]
    Elect(elect::ElectArgs),

    /// Show the leader of the election NAME (its value and term), or follow it with --watch.
    Leader(elect::LeaderArgs),
}

fn main() -> ExitCode {
    // Not a subcommand users see: `lockkit run` starting its watchdog (see `group`).
    if std::env::args_os().nth(1).is_some_and(|arg| arg == group::WATCHDOG_ARG) {
        return ExitCode::from(group::watchdog_main());
    }
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let code = if e.use_stderr() { exit::USAGE } else { 0 };
        let _ = e.print();
        std::process::exit(code.into());
    });
    if cli.verbose {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(tracing_subscriber::EnvFilter::new("lockkit=debug,lockkit_core=debug"))
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return ExitCode::from(fail(&format!("cannot start the async runtime: {e}"), exit::BACKEND)),
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args, cli.verbose).await,
            Command::Status(args) => status::status(args).await,
            Command::Elect(args) => elect::elect(args, cli.verbose).await,
            Command::Leader(args) => elect::leader(args).await,
        }
    });
    // Do not wait for background tasks (a refresh in flight) once the answer is known.
    runtime.shutdown_timeout(Duration::from_millis(500));
    ExitCode::from(code)
}

/// Prints one line to stderr and returns the exit status.
fn fail(message: &str, code: u8) -> u8 {
    eprintln!("lockkit: {message}");
    code
}

/// The exit status for a library error.
fn error_code(error: &Error) -> u8 {
    match error {
        Error::InvalidUrl { .. }
        | Error::UnknownScheme { .. }
        | Error::FeatureDisabled { .. }
        | Error::InvalidName { .. }
        | Error::InvalidOptions { .. } => exit::USAGE,
        Error::Connection { .. } | Error::Authentication { .. } => exit::UNAVAILABLE,
        Error::Timeout { .. } => exit::NOT_ACQUIRED,
        // Never `LOCK_LOST`: that status means a command was stopped, and `run` returns it
        // itself. A library call failing with a loss (an acquire whose lease was lost before it
        // was granted) ran no command: a backend error.
        Error::LockLost { .. } => exit::BACKEND,
        _ => exit::BACKEND,
    }
}

/// Prints a library error and returns its exit status.
fn report(error: &Error) -> u8 {
    fail(&error.to_string(), error_code(error))
}

/// `clap` value parser for durations.
fn duration(text: &str) -> Result<Duration, String> {
    lockkit::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acquire_that_fails_with_loss_is_a_backend_error_not_76() {
        let lost = Error::LockLost {
            backend: "file",
            name: "job".into(),
            reason: "while waiting, its lease was lost: the handle was closed".into(),
        };
        assert_eq!(error_code(&lost), exit::BACKEND);
    }
}
