//! What Consul's HTTP answers mean: every failed request is mapped once into [`ConsulError`],
//! which says what it means to the driver ([`DriverError::kind`]) and becomes the error users
//! see.

use std::sync::Arc;
use std::time::Duration;

use lockkit_core::Error;
use lockkit_core::driver::{DriverError, ErrorKind};
use reqwest::StatusCode;

use crate::BACKEND;

/// A request to Consul that failed, or an error of the driver's own on the way.
#[derive(Debug)]
pub(crate) enum ConsulError {
    /// No answer: the agent could not be reached, the connection broke, or the answer did not
    /// come in time. Consul may still apply the request.
    Unreachable { endpoint: String, message: String, source: Option<Arc<reqwest::Error>> },
    /// 401 or 403: the ACL token is wrong or lacks a permission.
    Denied { endpoint: String, body: String },
    /// 429 or 503 for the whole request timeout: Consul's rate limiter refused, nothing was
    /// applied.
    RateLimited { endpoint: String, status: StatusCode, waited: Duration, body: String },
    /// Any other error status, with Consul's answer (shortened).
    Status { endpoint: String, status: StatusCode, body: String },
    /// An error of lockkit's own: an answer it cannot read, a conflict, a loss.
    Lockkit(Error),
}

/// The cause of an error for a request Consul's rate limiter refused (429, 503): nothing was
/// applied, although trying again later may work.
#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused by Consul's rate limiter; nothing was applied")
    }
}

impl std::error::Error for Refused {}

impl ConsulError {
    /// Whether the request was answered: it failed with an answer that applied nothing or
    /// applied it for sure — not "no answer" (which Consul may still apply later).
    pub(crate) fn answered(&self) -> bool {
        match self {
            ConsulError::Unreachable { .. } => false,
            ConsulError::Status { status, .. } => !status.is_server_error(),
            ConsulError::Lockkit(e) => !e.is_temporary(),
            ConsulError::Denied { .. } | ConsulError::RateLimited { .. } => true,
        }
    }

    /// Whether the request was made on a session Consul no longer has. Consul says so only in
    /// the text of a 500 ("invalid session").
    fn session_gone(&self) -> bool {
        matches!(self, ConsulError::Status { status, body, .. }
            if *status == StatusCode::INTERNAL_SERVER_ERROR && body.contains("invalid session"))
    }

    /// The error users see; `Err` with lockkit's own.
    fn shown(&self) -> std::result::Result<Error, &Error> {
        Ok(match self {
            ConsulError::Unreachable { endpoint, message, source } => {
                Error::connection(BACKEND, endpoint, message, source.clone().map(|s| Box::new(s) as _))
            }
            ConsulError::Denied { endpoint, body } => Error::Authentication {
                backend: BACKEND,
                endpoint: endpoint.clone(),
                message: format!(
                    "permission denied ({body}); check the ACL token (`token` option or CONSUL_HTTP_TOKEN)"
                ),
            },
            ConsulError::RateLimited { endpoint, status, waited, body } => Error::Backend {
                backend: BACKEND,
                message: format!(
                    "Consul at {endpoint} kept refusing requests for {waited:?} ({status}: {body}); it is overloaded \
                     or rate limited"
                ),
                temporary: true,
                source: Some(Box::new(Refused)),
            },
            ConsulError::Status { endpoint, status, body } => Error::Backend {
                backend: BACKEND,
                message: format!("Consul at {endpoint} answered {status}: {body}"),
                temporary: status.is_server_error(),
                source: None,
            },
            ConsulError::Lockkit(e) => return Err(e),
        })
    }
}

impl From<Error> for ConsulError {
    fn from(e: Error) -> Self {
        ConsulError::Lockkit(e)
    }
}

impl From<ConsulError> for Error {
    fn from(e: ConsulError) -> Self {
        match e {
            ConsulError::Lockkit(e) => e,
            e => e.shown().unwrap_or_else(|_| unreachable!("lockkit's own errors are returned as they are")),
        }
    }
}

impl std::fmt::Display for ConsulError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.shown() {
            Ok(e) => e.fmt(f),
            Err(e) => e.fmt(f),
        }
    }
}

impl DriverError for ConsulError {
    fn kind(&self) -> ErrorKind {
        match self {
            _ if self.session_gone() => ErrorKind::LeaseGone,
            ConsulError::Unreachable { .. } | ConsulError::RateLimited { .. } => ErrorKind::Temporary,
            ConsulError::Status { status, .. } if status.is_server_error() => ErrorKind::Temporary,
            // A loss the driver noticed itself is its lease's (and seen there): not a reason to retry.
            ConsulError::Lockkit(e) if e.is_temporary() => ErrorKind::Temporary,
            _ => ErrorKind::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, body: &str) -> ConsulError {
        let status = StatusCode::from_u16(code).unwrap();
        ConsulError::Status { endpoint: "127.0.0.1:8500".into(), status, body: body.into() }
    }

    #[test]
    fn answers_are_classified_once() {
        let cases = [
            (status(500, "invalid session \"4b1c\""), ErrorKind::LeaseGone, true, false),
            (status(500, "No cluster leader"), ErrorKind::Temporary, true, false),
            (status(400, "Bad request: invalid session"), ErrorKind::Permanent, false, true),
            (
                ConsulError::Denied { endpoint: "h:8500".into(), body: "ACL not found".into() },
                ErrorKind::Permanent,
                false,
                true,
            ),
            (
                ConsulError::RateLimited {
                    endpoint: "h:8500".into(),
                    status: StatusCode::TOO_MANY_REQUESTS,
                    waited: Duration::from_secs(5),
                    body: String::new(),
                },
                ErrorKind::Temporary,
                true,
                true,
            ),
            (
                ConsulError::Unreachable { endpoint: "h:8500".into(), message: "refused".into(), source: None },
                ErrorKind::Temporary,
                true,
                false,
            ),
            (ConsulError::Lockkit(Error::backend(BACKEND, "garbage")), ErrorKind::Permanent, false, true),
        ];
        for (e, kind, temporary, answered) in cases {
            let shown = e.to_string();
            assert_eq!((e.kind(), e.answered()), (kind, answered), "{shown}");
            let e = Error::from(e);
            assert_eq!((e.to_string(), e.is_temporary()), (shown.clone(), temporary), "{shown}");
        }
    }

    #[test]
    fn a_refusal_of_the_rate_limiter_says_nothing_was_applied() {
        let e = Error::from(ConsulError::RateLimited {
            endpoint: "h:8500".into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            waited: Duration::from_secs(1),
            body: "slow down".into(),
        });
        assert!(matches!(e, Error::Backend { temporary: true, .. }) && e.to_string().contains("rate limited"));
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("refused by Consul's rate limiter; nothing was applied"));
    }
}
