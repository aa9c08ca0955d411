//! The one error type of lockkit.

use std::time::Duration;

/// `Result` with lockkit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cause behind an error, when there is one.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong with a lock.
///
/// Every message names the backend and the lock where there is one and says what to do.
/// Credentials never appear in a message: URLs are shown redacted.
/// [`Error::is_temporary`] tells whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock URL could not be parsed or has an invalid option.
    #[error("invalid lock URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, with credentials redacted.
        url: String,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The URL's scheme is not one lockkit knows.
    #[error("unknown lock URL scheme `{scheme}`; use one of: {known}")]
    UnknownScheme {
        /// The scheme that was given.
        scheme: String,
        /// The schemes lockkit knows, comma-separated.
        known: String,
    },

    /// The scheme is known, but its driver was not compiled in.
    #[error(
        "lock URL scheme `{scheme}` needs the `{feature}` feature of lockkit, which this build \
         does not have; enable it in Cargo.toml: lockkit = {{ version = \"0.1\", features = [\"{feature}\"] }} \
         (command-line tool: cargo install lockkit --features {feature})"
    )]
    FeatureDisabled {
        /// The scheme that was given.
        scheme: String,
        /// The cargo feature that enables it.
        feature: &'static str,
    },

    /// The lock name is empty or too long.
    #[error("invalid lock name {name}: {reason}")]
    InvalidName {
        /// The name as given (shortened when very long).
        name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The options of an acquire do not fit together: a TTL, refresh interval or timeout out of
    /// range (the same checks as for the URL's `ttl`, `refresh` and `timeout`).
    #[error("invalid lock options: {reason}")]
    InvalidOptions {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The lock was not granted within the time the caller allowed.
    #[error(
        "{backend}: gave up after {waited:?} waiting for lock `{name}`, which is still held \
         elsewhere; wait longer or see who holds it with `lockkit status`"
    )]
    Timeout {
        /// The backend, e.g. `etcd`.
        backend: &'static str,
        /// The lock name.
        name: String,
        /// How long the caller waited.
        waited: Duration,
    },

    /// The lock was held but may no longer be: its lease ran out or was revoked, or its grant
    /// was removed behind the holder's back.
    #[error("{backend}: lock `{name}` was lost: {reason}")]
    LockLost {
        /// The backend.
        backend: &'static str,
        /// The lock name.
        name: String,
        /// Why the lock counts as lost.
        reason: String,
    },

    /// An operation needed the lock, but this holder does not hold it (any more).
    #[error("{backend}: lock `{name}` is not held by this guard: {reason}")]
    NotHeld {
        /// The backend.
        backend: &'static str,
        /// The lock name.
        name: String,
        /// What was found instead.
        reason: String,
    },

    /// The backend could not be reached, or the connection broke.
    #[error("{backend}: cannot reach {endpoint}: {message}")]
    Connection {
        /// The backend.
        backend: &'static str,
        /// The server(s) tried, without credentials.
        endpoint: String,
        /// What happened and what to check.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Source>,
    },

    /// The backend refused the credentials.
    #[error("{backend}: authentication failed at {endpoint}: {message}; check the user, password or token")]
    Authentication {
        /// The backend.
        backend: &'static str,
        /// The server(s), without credentials.
        endpoint: String,
        /// What the server said.
        message: String,
    },

    /// The backend answered with an error or with something lockkit cannot understand.
    #[error("{backend}: {message}")]
    Backend {
        /// The backend.
        backend: &'static str,
        /// What happened.
        message: String,
        /// Whether trying again may help.
        temporary: bool,
        /// The underlying error.
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// Whether trying the same operation again may succeed (connection trouble, a busy server).
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Connection { .. } | Error::Timeout { .. } => true,
            Error::Backend { temporary, .. } => *temporary,
            _ => false,
        }
    }

    /// An invalid-name error; the name is shortened when it is very long.
    pub fn invalid_name(name: &str, reason: impl Into<String>) -> Self {
        Error::InvalidName { name: shorten(name), reason: reason.into() }
    }

    /// A backend error that trying again will not fix.
    pub fn backend(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Backend { backend, message: message.into(), temporary: false, source: None }
    }

    /// A backend error that trying again will not fix, caused by `source` (a client's error).
    pub fn backend_caused(
        backend: &'static str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend { backend, message: message.into(), temporary: false, source: Some(Box::new(source)) }
    }

    /// A connection error.
    pub fn connection(
        backend: &'static str,
        endpoint: impl Into<String>,
        message: impl Into<String>,
        source: Option<Source>,
    ) -> Self {
        Error::Connection { backend, endpoint: endpoint.into(), message: message.into(), source }
    }

    /// The guard's grant is gone or belongs to someone else.
    pub fn not_held(backend: &'static str, name: &str, reason: impl Into<String>) -> Self {
        Error::NotHeld { backend, name: shorten(name), reason: reason.into() }
    }
}

/// Quotes a name for a message, shortened to keep messages readable.
fn shorten(name: &str) -> String {
    const MAX: usize = 80;
    if name.len() <= MAX {
        return format!("{name:?}");
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &name[..end], name.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_in_messages() {
        let e = Error::invalid_name(&"é".repeat(600), "too long");
        let text = e.to_string();
        assert!(text.len() < 200, "{text}");
        assert!(text.contains("1200 bytes"), "{text}");
    }

    #[test]
    fn feature_error_says_how_to_enable_it() {
        let e = Error::FeatureDisabled { scheme: "etcd".into(), feature: "etcd" };
        assert!(e.to_string().contains("features = [\"etcd\"]"), "{e}");
    }

    #[test]
    fn connection_errors_are_temporary_and_name_errors_are_not() {
        assert!(Error::connection("redis", "127.0.0.1:1", "refused", None).is_temporary());
        assert!(!Error::invalid_name("", "empty").is_temporary());
    }
}
