//! The driver's one error type. Every etcd client error is classified here, once
//! ([`Class::of`]), and turned into the error users see here ([`From<EtcdError> for Error`]).

use std::fmt;
use std::time::Duration;

use lockkit_core::Error;
use lockkit_core::driver::{DriverError, ErrorKind};

use crate::BACKEND;

/// What a client error means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// etcd refused the credentials (or the user's rights).
    Refused,
    /// Connection trouble: the request may not have reached etcd, or its answer got lost.
    /// Another try (maybe on another member) may get past it.
    Unreachable,
    /// The lease the request named is gone (expired or revoked).
    LeaseNotFound,
    /// Any other answer.
    Other,
}

impl Class {
    /// The one place where etcd's answers are classified (some only by their text).
    pub(crate) fn of(e: &etcd_client::Error) -> Class {
        use etcd_client::Error as E;
        match e {
            E::TransportError(_) | E::IoError(_) => Class::Unreachable,
            E::GRpcStatus(status) => {
                let (code, text) = (status.code() as i32, e.to_string());
                let refused = ["authentication failed", "invalid auth token", "permission denied"];
                if code == grpc::UNAUTHENTICATED || refused.iter().any(|r| text.contains(r)) {
                    Class::Refused
                } else if transport_status(code, std::error::Error::source(status).is_some()) {
                    Class::Unreachable
                } else if code == grpc::NOT_FOUND {
                    // etcd's "requested lease not found", the only NOT_FOUND of the requests
                    // this driver makes.
                    Class::LeaseNotFound
                } else {
                    Class::Other
                }
            }
            // The client's own error when a keep-alive stream opens on a lease that is gone.
            E::LeaseKeepAliveError(message) if message == "lease not found" => Class::LeaseNotFound,
            _ => Class::Other,
        }
    }
}

/// Whether a gRPC status (its `code`, and whether it has a `source`) says the request may not
/// have reached etcd or its answer got lost: etcd's own "unavailable" and "deadline exceeded",
/// or a status the client made of a transport failure (a broken connection: it carries that
/// failure as its source; statuses etcd sends carry none).
fn transport_status(code: i32, has_source: bool) -> bool {
    [grpc::UNAVAILABLE, grpc::DEADLINE_EXCEEDED].contains(&code) || code == grpc::UNKNOWN && has_source
}

/// The gRPC status codes the classification needs (their numbers are fixed by the gRPC spec).
mod grpc {
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const UNAVAILABLE: i32 = 14;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

/// An error of the driver: etcd's answer (classified), no answer at all, or an error lockkit
/// made (a loss, an unexpected answer).
#[derive(Debug)]
pub(crate) enum EtcdError {
    /// The client's error for a request to `endpoints`.
    Client { endpoints: String, class: Class, error: etcd_client::Error },
    /// No answer within `timeout`, trying again through connection trouble.
    NoAnswer { endpoints: String, timeout: Duration },
    /// An error lockkit made.
    Lockkit(Error),
}

impl EtcdError {
    /// Classifies a client error of a request to `endpoints`.
    pub(crate) fn new(endpoints: &str, error: etcd_client::Error) -> Self {
        EtcdError::Client { endpoints: endpoints.to_owned(), class: Class::of(&error), error }
    }
}

/// A client error of a request to `endpoints`, as users see it.
pub(crate) fn error(endpoints: &str, e: etcd_client::Error) -> Error {
    EtcdError::new(endpoints, e).into()
}

impl From<Error> for EtcdError {
    fn from(e: Error) -> Self {
        EtcdError::Lockkit(e)
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Client { endpoints, error, .. } => write!(f, "etcd at {endpoints} answered: {error}"),
            EtcdError::NoAnswer { endpoints, timeout } => {
                write!(f, "etcd at {endpoints}: no answer within {timeout:?}")
            }
            EtcdError::Lockkit(e) => e.fmt(f),
        }
    }
}

impl DriverError for EtcdError {
    /// Only etcd's "lease not found" says the lease is gone. An error lockkit made is never
    /// [`ErrorKind::LeaseGone`]: a waiter's key deleted behind its back is no reason to give up
    /// the lease of every other grant of the handle.
    fn kind(&self) -> ErrorKind {
        match self {
            EtcdError::Client { class: Class::LeaseNotFound, .. } => ErrorKind::LeaseGone,
            EtcdError::Client { class: Class::Unreachable, .. } | EtcdError::NoAnswer { .. } => ErrorKind::Temporary,
            EtcdError::Client { .. } => ErrorKind::Permanent,
            EtcdError::Lockkit(e) if e.is_temporary() => ErrorKind::Temporary,
            EtcdError::Lockkit(_) => ErrorKind::Permanent,
        }
    }
}

impl From<EtcdError> for Error {
    /// Authentication, connection trouble, or what the server answered.
    fn from(e: EtcdError) -> Self {
        let (endpoints, class, error) = match e {
            EtcdError::Client { endpoints, class, error } => (endpoints, class, error),
            EtcdError::NoAnswer { endpoints, timeout } => {
                let hint = "is etcd running there, and the `timeout` option long enough?";
                return Error::connection(BACKEND, endpoints, format!("no answer within {timeout:?}; {hint}"), None);
            }
            EtcdError::Lockkit(e) => return e,
        };
        let said = match &error {
            etcd_client::Error::GRpcStatus(status) => status.message().to_owned(),
            other => other.to_string(),
        };
        match class {
            Class::Refused => Error::Authentication { backend: BACKEND, endpoint: endpoints, message: said },
            Class::Unreachable => {
                Error::connection(BACKEND, &endpoints, format!("{said}; is etcd running there?"), Some(Box::new(error)))
            }
            Class::LeaseNotFound | Class::Other => {
                Error::backend_caused(BACKEND, format!("etcd at {endpoints} answered: {error}"), error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What some client errors mean to the core and to users (gRPC statuses need `tonic`; the
    /// facade's tests meet them from a real etcd).
    #[test]
    fn errors_say_what_they_mean() {
        let client = |error| EtcdError::new("h:2379", error);
        let gone = client(etcd_client::Error::LeaseKeepAliveError("lease not found".into()));
        assert_eq!(gone.kind(), ErrorKind::LeaseGone);
        assert!(matches!(Error::from(gone), Error::Backend { temporary: false, .. }));

        let cut = client(etcd_client::Error::IoError(std::io::ErrorKind::ConnectionReset.into()));
        assert_eq!(cut.kind(), ErrorKind::Temporary);
        let cut = Error::from(cut).to_string();
        assert!(cut.starts_with("etcd: cannot reach h:2379:") && cut.ends_with("is etcd running there?"), "{cut}");

        let silent = EtcdError::NoAnswer { endpoints: "h:2379".into(), timeout: Duration::from_secs(1) };
        assert_eq!(silent.kind(), ErrorKind::Temporary);
        assert!(Error::from(silent).to_string().contains("no answer within 1s; is etcd running there"));

        let other = client(etcd_client::Error::WatchError("cancelled".into()));
        assert_eq!(other.kind(), ErrorKind::Permanent);
        assert!(Error::from(other).to_string().contains("etcd at h:2379 answered: "));

        let lost = Error::LockLost { backend: BACKEND, name: "x".into(), reason: "its key disappeared".into() };
        assert_eq!(EtcdError::Lockkit(lost).kind(), ErrorKind::Permanent, "a waiter's loss never ends the lease");
    }
}
