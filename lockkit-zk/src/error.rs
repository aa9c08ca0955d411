//! The driver's one error type. What a ZooKeeper client error means is decided here, once
//! ([`Class::of`]), and so is the error users see ([`From<ZkError> for Error`]).

use std::fmt;

use lockkit_core::Error;
use lockkit_core::driver::{DriverError, ErrorKind};
use zookeeper_client::Error as ZkClientError;

use crate::BACKEND;

/// What a client error means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The credentials, or the nodes' ACLs, refused the request.
    Refused,
    /// The request's connection broke, so that nobody can tell whether the server applied it:
    /// `ConnectionLoss`, or the I/O error or silence (`no response from connection`) that
    /// ended the connection, which the client hands its requests in flight as-is. The client
    /// reconnects by itself; the request may be tried again.
    Broke,
    /// No server could be reached (no session yet).
    Unreachable,
    /// The session the request was made on is gone: expired, moved, or closed.
    SessionGone,
    /// Any other answer.
    Other,
}

impl Class {
    /// The one place where the client's errors are classified.
    pub(crate) fn of(e: &ZkClientError) -> Class {
        use ZkClientError as E;
        match e {
            E::AuthFailed | E::NoAuth => Class::Refused,
            E::ConnectionLoss | E::Custom(_) => Class::Broke,
            E::NoHosts | E::Timeout => Class::Unreachable,
            E::SessionExpired | E::SessionMoved | E::ClientClosed => Class::SessionGone,
            _ => Class::Other,
        }
    }
}

/// Whether a request ended because its connection broke ([`Class::Broke`]).
pub(crate) fn connection_broke(e: &ZkClientError) -> bool {
    Class::of(e) == Class::Broke
}

/// An error of the driver: the client's, for a request to `endpoints`, or one lockkit made (a
/// loss, a refused name).
#[derive(Debug)]
pub(crate) enum ZkError {
    Client { endpoints: String, error: ZkClientError },
    Lockkit(Error),
}

/// A client error of a request to `endpoints`, as users see it.
pub(crate) fn error(endpoints: &str, error: ZkClientError) -> Error {
    ZkError::Client { endpoints: endpoints.to_owned(), error }.into()
}

impl fmt::Display for ZkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZkError::Client { endpoints, error } => write!(f, "ZooKeeper at {endpoints}: {error}"),
            ZkError::Lockkit(e) => e.fmt(f),
        }
    }
}

impl DriverError for ZkError {
    /// A session gone is [`ErrorKind::LeaseGone`] (a new session may succeed); an error lockkit
    /// made never is (a waiter's node deleted behind its back ends that acquire, not the
    /// session every other grant of the handle rides on).
    fn kind(&self) -> ErrorKind {
        match self {
            ZkError::Client { error, .. } => match Class::of(error) {
                Class::SessionGone => ErrorKind::LeaseGone,
                Class::Broke | Class::Unreachable => ErrorKind::Temporary,
                Class::Refused | Class::Other => ErrorKind::Permanent,
            },
            ZkError::Lockkit(e) if e.is_temporary() => ErrorKind::Temporary,
            ZkError::Lockkit(_) => ErrorKind::Permanent,
        }
    }
}

impl From<ZkError> for Error {
    /// Authentication, connection trouble, a session gone (temporary: a new one may do), or
    /// what the server answered.
    fn from(e: ZkError) -> Self {
        let (endpoints, e) = match e {
            ZkError::Client { endpoints, error } => (endpoints, error),
            ZkError::Lockkit(e) => return e,
        };
        match Class::of(&e) {
            Class::Refused => Error::Authentication {
                backend: BACKEND,
                endpoint: endpoints,
                message: format!("{e}; check the user and password (digest) and the nodes' ACLs"),
            },
            Class::Broke | Class::Unreachable => {
                Error::connection(BACKEND, &endpoints, format!("{e}; is ZooKeeper running there?"), Some(Box::new(e)))
            }
            Class::SessionGone => Error::Backend {
                backend: BACKEND,
                message: format!("ZooKeeper at {endpoints}: {e}"),
                temporary: true,
                source: Some(Box::new(e)),
            },
            Class::Other => Error::backend_caused(BACKEND, format!("ZooKeeper at {endpoints} answered: {e}"), e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each client error means to the core, and to users.
    #[test]
    fn client_errors_are_classified_once() {
        use ZkClientError as E;
        let rows = [
            (E::SessionExpired, ErrorKind::LeaseGone, "Backend temporary"),
            (E::ClientClosed, ErrorKind::LeaseGone, "Backend temporary"),
            (E::ConnectionLoss, ErrorKind::Temporary, "Connection"),
            (E::NoHosts, ErrorKind::Temporary, "Connection"),
            (E::AuthFailed, ErrorKind::Permanent, "Authentication"),
            (E::NoAuth, ErrorKind::Permanent, "Authentication"),
            (E::NodeExists, ErrorKind::Permanent, "Backend"),
        ];
        for (client_error, kind, shown) in rows {
            let e = ZkError::Client { endpoints: "h:2181".into(), error: client_error };
            assert_eq!(e.kind(), kind, "{e}");
            let e = Error::from(e);
            let variant = match &e {
                Error::Backend { temporary: true, .. } => "Backend temporary",
                Error::Backend { .. } => "Backend",
                Error::Connection { .. } => "Connection",
                Error::Authentication { .. } => "Authentication",
                _ => "other",
            };
            assert_eq!((variant, e.is_temporary()), (shown, kind != ErrorKind::Permanent), "{e}");
        }
        let lost = Error::LockLost { backend: BACKEND, name: "x".into(), reason: "its node was deleted".into() };
        assert_eq!(ZkError::Lockkit(lost).kind(), ErrorKind::Permanent, "a waiter's loss never ends the session");
    }
}
