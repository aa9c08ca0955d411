//! The oldest Redis server the scripts run on, checked at connect.

use lockkit_core::Error;

use crate::BACKEND;

/// Redis 5.0: the scripts use `ZPOPMIN` (new in 5.0), and they read the clock (`TIME`) before
/// writing, which replicas receive correctly only with effects replication — the default for
/// scripts from 5.0 on (before, such a script is refused or replicated as a script that would
/// read another clock on the replica).
pub(crate) const MINIMUM: (u32, u32, u32) = (5, 0, 0);

/// Checks the `redis_version` field of `INFO server` from the server at `address`. A reply
/// without one that parses (a proxy, a server that hides it) passes: the scripts then say for
/// themselves what they miss.
pub(crate) fn check(info: &str, address: &str) -> Result<(), Error> {
    let Some((field, found)) = version(info) else { return Ok(()) };
    if found >= MINIMUM {
        return Ok(());
    }
    let (major, minor, _) = MINIMUM;
    Err(Error::backend(
        BACKEND,
        format!(
            "redis at {address} is version {field}, and lockkit needs {major}.{minor} or later (its scripts use \
             ZPOPMIN and read the server clock before writing, which replicates safely only from {major}.{minor}); \
             upgrade the server"
        ),
    ))
}

/// The `redis_version` field, as written and as numbers.
pub(crate) fn version(info: &str) -> Option<(&str, (u32, u32, u32))> {
    let field = info.lines().find_map(|line| line.trim_end().strip_prefix("redis_version:"))?;
    let mut parts = field.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some((field, (major, minor, patch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(version: &str) -> String {
        format!("# Server\r\nredis_version:{version}\r\nredis_git_sha1:00000000\r\nredis_mode:standalone\r\n")
    }

    #[test]
    fn servers_from_5_0_on_pass() {
        for version in ["5.0.0", "5.0.14", "6.2.7", "7.0.15", "7.2.4", "10.0.0", "255.255.255", "8.0"] {
            assert!(check(&info(version), "127.0.0.1:6379").is_ok(), "{version}");
        }
    }

    #[test]
    fn older_servers_are_refused_naming_both_versions() {
        for version in ["4.0.14", "3.2.12", "4.9.104", "2.8.24"] {
            let err = check(&info(version), "127.0.0.1:6379").unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&format!("version {version}")) && text.contains("needs 5.0 or later"), "{text}");
            assert!(text.contains("127.0.0.1:6379") && text.contains("upgrade"), "{text}");
            assert!(!err.is_temporary());
        }
    }

    #[test]
    fn a_version_that_cannot_be_read_is_not_held_against_the_server() {
        for reply in ["# Server\r\nredis_mode:standalone\r\n", "", "redis_version:unknown\r\n", "redis_version:\r\n"] {
            assert!(check(reply, "127.0.0.1:6379").is_ok(), "{reply:?}");
        }
    }
}
