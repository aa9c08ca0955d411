//! `lockkit status`: who holds a lock.

use std::time::Duration;

use lockkit::{GrantKind, LockStatus};

use crate::{exit, report};

#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// Lock URL
    url: String,
    /// Lock name
    name: String,
    /// Print one JSON object: {"name", "held", "holder", "token", "ttl_left_ms", "waiting",
    /// "permits", "holders": [{"kind", "holder", "token"}]} (null where the backend cannot tell)
    #[arg(long)]
    json: bool,
}

pub(crate) async fn status(args: StatusArgs) -> u8 {
    let status = match lockkit::connect(&args.url).await {
        Ok(locks) => locks.status(&args.name).await,
        Err(e) => Err(e),
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => return report(&e),
    };
    if args.json {
        println!("{}", json(&args.name, &status));
    } else {
        println!("{}", text(&args.name, &status));
    }
    if status.held { 0 } else { exit::FREE }
}

fn text(name: &str, status: &LockStatus) -> String {
    let waiting = match status.waiting {
        Some(n) if n > 0 => format!("; {n} waiting"),
        _ => String::new(),
    };
    if let Some(shared) = shared(name, status) {
        return shared + &waiting;
    }
    if !status.held {
        return format!("lock `{name}`: free{waiting}");
    }
    let mut line = format!("lock `{name}`: held");
    if let Some(holder) = &status.holder {
        line += &format!(" by {holder}");
    }
    if let Some(token) = status.token {
        line += &format!(", fencing token {token}");
    }
    if let Some(left) = status.ttl_left {
        line += &format!(", expires in {:.1}s unless refreshed", left.as_secs_f64());
    }
    line + &waiting
}

/// A semaphore's or read-write lock's line (`None`: a lock's), every holder listed.
fn shared(name: &str, status: &LockStatus) -> Option<String> {
    let kind = status.holders.first().map(|h| h.kind);
    let holders = || {
        let each = status.holders.iter().map(|h| {
            let holder = h.holder.as_deref().unwrap_or("?");
            h.token.map_or_else(|| holder.to_owned(), |token| format!("{holder} (token {token})"))
        });
        each.collect::<Vec<_>>().join(", ")
    };
    match (status.permits, kind) {
        (Some(permits), _) if status.holders.is_empty() => {
            Some(format!("semaphore `{name}`: 0 of {permits} permits held"))
        }
        (Some(permits), _) => {
            Some(format!("semaphore `{name}`: {} of {permits} permits held by {}", status.holders.len(), holders()))
        }
        (None, Some(GrantKind::Read)) => Some(format!("read-write lock `{name}`: read by {}", holders())),
        (None, Some(GrantKind::Write)) => Some(format!("read-write lock `{name}`: written by {}", holders())),
        _ => None,
    }
}

/// A hold's kind in JSON: "lock", "candidate", "permit", "read", "write".
fn kind(kind: GrantKind) -> &'static str {
    match kind {
        GrantKind::Candidate => "candidate",
        GrantKind::Permit { .. } => "permit",
        GrantKind::Read => "read",
        GrantKind::Write => "write",
        _ => "lock",
    }
}

fn json(name: &str, status: &LockStatus) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "held": status.held,
        "holder": status.holder,
        "token": status.token.map(|t| t.get()),
        "ttl_left_ms": status.ttl_left.as_ref().map(Duration::as_millis),
        "waiting": status.waiting,
        "permits": status.permits,
        "holders": status.holders.iter().map(|h| serde_json::json!({
            "kind": kind(h.kind),
            "holder": h.holder,
            "token": h.token.map(|t| t.get()),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use lockkit::{FencingToken, Holding};

    use super::*;

    #[test]
    fn the_line_is_shown_when_someone_waits() {
        let status = LockStatus::held(Some("nightly".into()), None, None).waiting(2);
        assert_eq!(text("job", &status), "lock `job`: held by nightly; 2 waiting");
        assert_eq!(json("job", &status)["waiting"], 2);
        assert_eq!(text("job", &LockStatus::free().waiting(0)), "lock `job`: free");
        assert!(json("job", &LockStatus::free())["waiting"].is_null(), "null where the backend cannot tell");
    }

    #[test]
    fn semaphores_and_read_write_locks_list_every_holder() {
        let permit = |holder: &str, token| {
            Holding::new(GrantKind::Permit { permits: 3 }, Some(holder.into()), Some(FencingToken::new(token)))
        };
        let status = LockStatus::holders(vec![permit("a", 4), permit("b", 7)], None).permits(Some(3)).waiting(1);
        assert_eq!(
            text("pool", &status),
            "semaphore `pool`: 2 of 3 permits held by a (token 4), b (token 7); 1 waiting"
        );
        assert_eq!(json("pool", &status)["holders"][1]["token"], 7);
        assert_eq!(json("pool", &status)["permits"], 3);
        let free = LockStatus::holders(Vec::new(), None).permits(Some(3));
        assert_eq!(text("pool", &free), "semaphore `pool`: 0 of 3 permits held");
        let reader = Holding::new(GrantKind::Read, Some("r".into()), None);
        let status = LockStatus::holders(vec![reader], None);
        assert_eq!(text("doc", &status), "read-write lock `doc`: read by r");
        assert_eq!(json("doc", &status)["holders"][0]["kind"], "read");
    }
}
