//! The core of [lockkit](https://docs.rs/lockkit): the lock API every backend implements, the
//! guards, lease refresh and loss machinery they share, URL parsing, errors, and the two
//! built-in backends `memory://` and `file://`.
//!
//! Applications use the `lockkit` crate, which re-exports all of this and adds
//! `connect(url)`. Driver crates implement [`DistributedLock`] (its three driver hooks),
//! [`LeaseBackend`] and [`Grant`], and let the core do the rest:
//!
//! - [`LeasePool`] / [`KeptLease`]: one lease per handle and TTL, refreshed in the background,
//!   with retries, a local deadline and loss propagation to every guard;
//! - [`LockGuard`]: RAII release on the acquiring runtime, loss signal, run-while-held;
//! - [`LockUrl`], [`Settings`], [`LockName`], [`Namespace`]: parsing, defaults, key escaping.
#![deny(missing_docs, missing_debug_implementations)]

mod error;
pub mod file;
mod guard;
mod lease;
mod lock;
pub mod memory;
mod name;
mod options;
mod retire;
mod signal;
mod token;
mod turns;
mod unabandoned;
mod url;

pub use error::{Error, Result, Source};
pub use guard::{Grant, GuardParts, LockGuard};
pub use lease::{KeepAlive, KeptLease, Lease, LeaseBackend, LeasePool};
pub use lock::DistributedLock;
pub use name::{LockName, MAX_NAME_LEN, Namespace};
pub use options::{Capabilities, GrantRequest, LockOptions, LockStatus, Settings, Wait, default_holder};
pub use retire::{Attempt, Cleanup, attempt};
pub use signal::{LossSignal, safety_margin};
pub use token::FencingToken;
pub use turns::{LocalTurns, Turn};
pub use unabandoned::{Finished, Unabandoned, unabandoned, unabandoned_request, unabandoned_request_by};
pub use url::{COMMON_OPTIONS, Host, LockUrl, Scheme, Secret, TLS_OPTIONS, TlsFiles, parse_duration};

/// A random number, different at every call (not for cryptography): for drivers' per-grant
/// owner tokens and for jitter.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// Runs a request until it answers with anything but a transient error (one `transient`
/// accepts: a dead member of a cluster, a lost connection), pausing `pause` between tries, all
/// within `timeout`. The error is the last one seen, or `None` when the time ran out before
/// any answer. For drivers' unary requests.
///
/// # Cancel safety
/// Dropping it drops the request in flight; use it for requests that are safe to repeat.
pub async fn retry_transient<T, E, F, Fut>(
    timeout: std::time::Duration,
    pause: std::time::Duration,
    transient: impl Fn(&E) -> bool,
    mut call: F,
) -> std::result::Result<T, Option<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let mut last_error = None;
    let attempts = async {
        loop {
            match call().await {
                Err(e) if transient(&e) => {
                    last_error = Some(e);
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    };
    match tokio::time::timeout(timeout, attempts).await {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(last_error),
    }
}

impl std::str::FromStr for LockUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        LockUrl::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn transient_errors_are_retried_until_an_answer_or_the_timeout() {
        let mut calls = 0;
        let answer = super::retry_transient(
            Duration::from_secs(1),
            Duration::ZERO,
            |e: &&str| *e == "busy",
            || {
                calls += 1;
                let reply = if calls < 3 { Err("busy") } else { Ok(calls) };
                async move { reply }
            },
        )
        .await;
        assert_eq!(answer, Ok(3));

        let final_error = super::retry_transient(
            Duration::from_secs(1),
            Duration::ZERO,
            |e: &&str| *e == "busy",
            || async { Err::<(), _>("refused") },
        )
        .await;
        assert_eq!(final_error, Err(Some("refused")), "a lasting error is returned at once");

        let timed_out = super::retry_transient(
            Duration::from_millis(50),
            Duration::from_millis(5),
            |_: &&str| true,
            || async { Err::<(), _>("busy") },
        )
        .await;
        assert_eq!(timed_out, Err(Some("busy")), "the last transient error when time runs out");
    }
}
