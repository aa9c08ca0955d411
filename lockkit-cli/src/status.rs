//! `lockkit status`: who holds a lock.

use std::time::Duration;

use lockkit::LockStatus;

use crate::{exit, report};

#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// Lock URL
    url: String,
    /// Lock name
    name: String,
    /// Print one JSON object: {"name", "held", "holder", "token", "ttl_left_ms", "waiting"}
    /// (null where the backend cannot tell)
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

fn json(name: &str, status: &LockStatus) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "held": status.held,
        "holder": status.holder,
        "token": status.token.map(|t| t.get()),
        "ttl_left_ms": status.ttl_left.as_ref().map(Duration::as_millis),
        "waiting": status.waiting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_shown_when_someone_waits() {
        let status = LockStatus::held(Some("nightly".into()), None, None).waiting(2);
        assert_eq!(text("job", &status), "lock `job`: held by nightly; 2 waiting");
        assert_eq!(json("job", &status)["waiting"], 2);
        assert_eq!(text("job", &LockStatus::free().waiting(0)), "lock `job`: free");
        assert!(json("job", &LockStatus::free())["waiting"].is_null(), "null where the backend cannot tell");
    }
}
