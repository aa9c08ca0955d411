//! `lockkit elect`: a command run while this candidate leads an election; `lockkit leader`:
//! who leads.

use lockkit::{DistributedLock, Leader, Leadership, LockUrl};

use crate::run::{HoldArgs, Signals, lock_env, supervise, try_then_wait, with_handle};
use crate::{exit, fail, report};

#[derive(clap::Args, Debug)]
pub(crate) struct ElectArgs {
    /// Lock URL, e.g. etcd://10.0.0.1:2379/services
    url: String,
    /// Election name
    name: String,
    /// What observers see while this candidate leads, e.g. its address (default: host and pid)
    #[arg(long)]
    value: Option<String>,
    /// When leadership is lost, exit 76 instead of campaigning again
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    held: HoldArgs,
}

pub(crate) async fn elect(args: ElectArgs, verbose: bool) -> u8 {
    with_handle(&args.url, async |locks, url, signals| lead(locks, url, &args, signals, verbose).await).await
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
        let outcome = supervise(leadership, &what, &args.held.command, &env, args.held.grace, signals).await;
        if !outcome.lost || args.once {
            return outcome.code;
        }
        eprintln!("lockkit: campaigning for `{}` again", args.name);
    }
}

/// Campaigns as the arguments say; on failure, prints why and returns the exit status.
async fn campaign(locks: &dyn DistributedLock, args: &ElectArgs, verbose: bool) -> Result<Leadership, u8> {
    let value = args.value.clone().unwrap_or_else(lockkit::default_holder);
    let options = args.held.options();
    let what = format!("the leadership of `{}`", args.name);
    try_then_wait(&what, args.held.no_wait, args.held.timeout, verbose, async |wait| {
        locks.campaign_with(&args.name, &value, &options.clone().wait(wait)).await
    })
    .await
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
