//! `lockkit elect`: a command run while this candidate leads an election; `lockkit leader`:
//! who leads.

use std::time::{Duration, Instant};

use lockkit::{DistributedLock, Leader, Leadership, LockOptions, LockUrl, Wait};

use crate::run::{Signals, lock_env, supervise};
use crate::{duration, exit, fail, report};

#[derive(clap::Args, Debug)]
pub(crate) struct ElectArgs {
    /// Lock URL, e.g. etcd://10.0.0.1:2379/services
    url: String,
    /// Election name
    name: String,
    /// What observers see while this candidate leads, e.g. its address (default: host and pid)
    #[arg(long)]
    value: Option<String>,
    /// How long leadership outlives lockkit if it dies without resigning (default: the URL's
    /// `ttl`, else 15s)
    #[arg(long, value_parser = duration)]
    ttl: Option<Duration>,
    /// Wait at most this long to lead, then exit 75
    #[arg(long, value_parser = duration, conflicts_with = "no_wait")]
    timeout: Option<Duration>,
    /// Campaign once: if another candidate leads, exit 75 at once
    #[arg(long)]
    no_wait: bool,
    /// When leadership is lost, exit 76 instead of campaigning again
    #[arg(long)]
    once: bool,
    /// Time between SIGTERM and SIGKILL when the command must be stopped
    #[arg(long, value_parser = duration, default_value = "10s")]
    grace: Duration,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub(crate) async fn elect(args: ElectArgs, verbose: bool) -> u8 {
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
    let code = lead(locks.as_ref(), &url, &args, &mut signals, verbose).await;
    // Before exiting: nothing of this process (a candidate's key, a lease) may linger.
    if let Ok(Err(e)) = tokio::time::timeout(locks.settings().timeout, locks.close()).await {
        eprintln!("lockkit: warning: {e}");
    }
    code
}

/// Campaigns, runs the command while leading, and campaigns again after a loss (unless
/// `--once`); the exit status.
async fn lead(
    locks: &dyn DistributedLock,
    url: &LockUrl,
    args: &ElectArgs,
    signals: &mut Signals,
    verbose: bool,
) -> u8 {
    let what = format!("leadership of `{}`", args.name);
    loop {
        let leadership = tokio::select! {
            won = campaign(locks, args, verbose) => match won {
                Ok(leadership) => leadership,
                Err(code) => return code,
            },
            // Dropping a campaign is cancel safe: no candidate is left behind.
            number = signals.recv() => return 128 + number as u8,
        };
        if verbose {
            eprintln!("lockkit: leading `{}` in term {}", args.name, leadership.term());
        }
        let mut env = lock_env(&leadership, &args.name, url);
        env.push(("LOCKKIT_TERM", leadership.term().to_string()));
        let outcome = supervise(leadership, &what, &args.command, &env, args.grace, signals).await;
        if !outcome.lost || args.once {
            return outcome.code;
        }
        eprintln!("lockkit: campaigning for `{}` again", args.name);
    }
}

/// Campaigns as the arguments say; on failure, prints why and returns the exit status.
async fn campaign(locks: &dyn DistributedLock, args: &ElectArgs, verbose: bool) -> Result<Leadership, u8> {
    let value = args.value.clone().unwrap_or_else(lockkit::default_holder);
    let mut options = LockOptions::new();
    if let Some(ttl) = args.ttl {
        options = options.ttl(ttl);
    }
    let started = Instant::now();
    match locks.campaign_with(&args.name, &value, &options.clone().wait(Wait::NoWait)).await {
        Ok(Some(leadership)) => return Ok(leadership),
        Ok(None) if args.no_wait => {
            let message = format!("election `{}` has another leader (--no-wait)", args.name);
            return Err(fail(&message, exit::NOT_ACQUIRED));
        }
        Ok(None) => {}
        Err(e) => return Err(report(&e)),
    }
    if verbose {
        eprintln!("lockkit: election `{}` has another leader; waiting", args.name);
    }
    let wait = match args.timeout {
        Some(timeout) => Wait::Timeout(timeout.saturating_sub(started.elapsed())),
        None => Wait::Forever,
    };
    match locks.campaign_with(&args.name, &value, &options.wait(wait)).await {
        Ok(Some(leadership)) => Ok(leadership),
        Ok(None) => Err(fail(&format!("election `{}` was not won", args.name), exit::NOT_ACQUIRED)),
        Err(e) => Err(report(&e)),
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct LeaderArgs {
    /// Lock URL
    url: String,
    /// Election name
    name: String,
    /// Follow the election: print the leader now, then a line at every change, until
    /// interrupted
    #[arg(long)]
    watch: bool,
    /// Print JSON objects: {"name", "leader": {"value", "term"} or null}
    #[arg(long)]
    json: bool,
}

pub(crate) async fn leader(args: LeaderArgs) -> u8 {
    let locks = match lockkit::connect(&args.url).await {
        Ok(locks) => locks,
        Err(e) => return report(&e),
    };
    if !args.watch {
        return match locks.leader(&args.name).await {
            Ok(leader) => {
                println!("{}", show(&args.name, leader.as_ref(), args.json));
                if leader.is_some() { 0 } else { exit::FREE }
            }
            Err(e) => report(&e),
        };
    }
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => return fail(&format!("cannot listen for signals: {e}"), exit::BACKEND),
    };
    let mut changes = match locks.observe(&args.name).await {
        Ok(changes) => changes,
        Err(e) => return report(&e),
    };
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Ok(leader) => println!("{}", show(&args.name, leader.as_ref(), args.json)),
                Err(e) => return report(&e),
            },
            _ = signals.recv() => return 0,
        }
    }
}

fn show(name: &str, leader: Option<&Leader>, json: bool) -> String {
    match (leader, json) {
        (Some(leader), false) => format!("election `{name}`: led by {}, term {}", leader.value, leader.term),
        (None, false) => format!("election `{name}`: no leader"),
        (leader, true) => serde_json::json!({
            "name": name,
            "leader": leader.map(|l| serde_json::json!({"value": l.value, "term": l.term.get()})),
        })
        .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_shown_as_text_and_json() {
        let leader = Leader { value: "10.0.0.7:8080".into(), term: lockkit::FencingToken::new(42) };
        assert_eq!(show("db", Some(&leader), false), "election `db`: led by 10.0.0.7:8080, term 42");
        assert_eq!(show("db", None, false), "election `db`: no leader");
        let json: serde_json::Value = serde_json::from_str(&show("db", Some(&leader), true)).unwrap();
        assert_eq!(
            (json["leader"]["value"].as_str(), json["leader"]["term"].as_u64()),
            (Some("10.0.0.7:8080"), Some(42))
        );
        assert!(serde_json::from_str::<serde_json::Value>(&show("db", None, true)).unwrap()["leader"].is_null());
    }
}
