//! What the `redis` client's errors mean: each is classified once, here, into a [`Failure`]
//! (the codes and texts of Redis's error replies are read nowhere else), which says what it
//! means to the driver ([`DriverError::kind`]) and becomes the error users see.

use lockkit_core::Error;
use lockkit_core::driver::{DriverError, ErrorKind};
use redis::RedisError;

/// What went wrong with a request to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The credentials were refused (`WRONGPASS`, `NOAUTH`).
    Authentication,
    /// The user's ACL does not cover what lockkit touches (`NOPERM`).
    NoPermission,
    /// A fencing counter holds garbage or runs far ahead of the clock (`BADFENCE`, from the
    /// scripts): nothing was granted.
    BadFence,
    /// No answer: the connection was refused, broke or timed out.
    Unreachable,
    /// A `redis-cluster://` seed is a server without cluster support.
    NotACluster,
    /// A script found a key of another type (`WRONGTYPE`; before Redis 7, a script error whose
    /// text names it): someone replaced the key.
    WrongType,
    /// Any other error reply; `temporary` when the server is busy with a script, loading its
    /// data or without its master, or a cluster is failing over or moving a slot.
    Answered {
        /// Whether trying again may help.
        temporary: bool,
    },
}

/// A failed request to one instance (a server, or a cluster through its seeds).
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    /// `redis`, `redlock` or `redis-cluster`.
    backend: &'static str,
    /// `host:port` (the seeds, for a cluster), never with credentials.
    address: String,
    pub(crate) cause: Cause,
    error: RedisError,
}

impl Failure {
    /// Classifies an error of the `redis` client from the instance at `address`.
    pub(crate) fn classify(backend: &'static str, address: &str, error: RedisError) -> Self {
        let code = error.code();
        let cluster = backend == crate::CLUSTER;
        // Seeds that are not cluster nodes are told by the text of the cluster client's error,
        // whatever its kind.
        let cause = if cluster && error.to_string().contains("cluster support disabled") {
            Cause::NotACluster
        } else if error.kind() == redis::ErrorKind::AuthenticationFailed || matches!(code, Some("WRONGPASS" | "NOAUTH"))
        {
            Cause::Authentication
        } else if code == Some("NOPERM") {
            Cause::NoPermission
        } else if code == Some("BADFENCE") {
            Cause::BadFence
        } else if error.is_io_error()
            || error.is_connection_refusal()
            || error.is_timeout()
            || error.is_connection_dropped()
        {
            Cause::Unreachable
        } else if code == Some("WRONGTYPE") || error.to_string().contains("WRONGTYPE") {
            Cause::WrongType
        } else {
            // A server busy with a long script, loading its data or without its master, and a
            // cluster in the middle of a failover or a slot move, answer these for a while.
            let temporary = matches!(code, Some("BUSY" | "TRYAGAIN" | "LOADING" | "MASTERDOWN"))
                || cluster && matches!(code, Some("MOVED" | "ASK" | "CLUSTERDOWN"));
            Cause::Answered { temporary }
        };
        Failure { backend, address: address.to_owned(), cause, error }
    }
}

impl From<Failure> for Error {
    fn from(Failure { backend, address, cause, error: e }: Failure) -> Self {
        match cause {
            Cause::Authentication => Error::Authentication { backend, endpoint: address, message: e.to_string() },
            // The credentials are right; the user's ACL does not cover what lockkit touches.
            Cause::NoPermission => Error::backend(
                backend,
                format!(
                    "redis at {address} refused: {e}; the user's ACL must allow the lock keys and the keys \
                     starting with them (`~NAMESPACE/*`), their channels (`&NAMESPACE/*`) and the commands \
                     lockkit sends (scripting, pub/sub, and the string, key, list and sorted-set commands \
                     its scripts run)"
                ),
            ),
            Cause::BadFence => {
                let detail = e.detail().unwrap_or("its fencing counter holds garbage");
                Error::backend(backend, format!("redis at {address} refused the grant: {detail}"))
            }
            Cause::Unreachable => {
                Error::connection(backend, address, format!("{e}; is the server up?"), Some(Box::new(e)))
            }
            Cause::NotACluster | Cause::WrongType | Cause::Answered { .. } => {
                let hint = match e.code() {
                    Some("MOVED" | "ASK" | "CLUSTERDOWN") if backend != crate::CLUSTER => {
                        "; the server is a Redis Cluster node: connect with redis-cluster://host:port,…"
                    }
                    _ => "",
                };
                Error::Backend {
                    backend,
                    message: format!("redis at {address} answered: {e}{hint}"),
                    temporary: matches!(cause, Cause::Answered { temporary: true }),
                    source: Some(Box::new(e)),
                }
            }
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Error::from(self.clone()).fmt(f)
    }
}

impl DriverError for Failure {
    fn kind(&self) -> ErrorKind {
        match self.cause {
            Cause::Unreachable | Cause::Answered { temporary: true } => ErrorKind::Temporary,
            _ => ErrorKind::Permanent,
        }
    }
}

/// The error users see for an error of the `redis` client from the instance at `address`.
pub(crate) fn error(backend: &'static str, address: &str, e: RedisError) -> Error {
    Failure::classify(backend, address, e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error reply: its code, then its detail.
    fn reply(text: &str) -> RedisError {
        let (code, detail) = text.split_once(' ').unwrap_or((text, ""));
        redis::make_extension_error(code.to_owned(), Some(detail.to_owned()))
    }

    #[test]
    fn error_replies_are_classified_once() {
        let io = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        let cases = [
            (io, "redis", Cause::Unreachable, ErrorKind::Temporary),
            (reply("WRONGPASS invalid username-password pair"), "redis", Cause::Authentication, ErrorKind::Permanent),
            (reply("NOPERM no permissions to access the 'x' key"), "redis", Cause::NoPermission, ErrorKind::Permanent),
            (reply("BADFENCE the fencing counter x holds"), "redlock", Cause::BadFence, ErrorKind::Permanent),
            (reply("WRONGTYPE Operation against a key"), "redis", Cause::WrongType, ErrorKind::Permanent),
            (reply("LOADING Redis is loading"), "redis", Cause::Answered { temporary: true }, ErrorKind::Temporary),
            (reply("MOVED 3999 127.0.0.1:7001"), "redis", Cause::Answered { temporary: false }, ErrorKind::Permanent),
            (
                reply("MOVED 3999 127.0.0.1:7001"),
                "redis-cluster",
                Cause::Answered { temporary: true },
                ErrorKind::Temporary,
            ),
            (reply("ERR unknown command"), "redis", Cause::Answered { temporary: false }, ErrorKind::Permanent),
        ];
        for (e, backend, cause, kind) in cases {
            let failure = Failure::classify(backend, "127.0.0.1:6379", e);
            let shown = failure.to_string();
            assert_eq!((failure.cause, failure.kind()), (cause, kind), "{shown}");
            let e = Error::from(failure);
            assert_eq!(e.to_string(), shown);
            assert_eq!(e.is_temporary(), kind == ErrorKind::Temporary, "{shown}");
        }
        let moved = error("redis", "h:6379", reply("MOVED 3999 127.0.0.1:7001")).to_string();
        assert!(moved.contains("connect with redis-cluster://"), "{moved}");
    }
}
