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
mod signal;
mod token;
mod turns;
mod url;

pub use error::{Error, Result, Source};
pub use guard::{Grant, GuardParts, LockGuard};
pub use lease::{KeepAlive, KeptLease, Lease, LeaseBackend, LeasePool};
pub use lock::DistributedLock;
pub use name::{LockName, MAX_NAME_LEN, Namespace};
pub use options::{Capabilities, GrantRequest, LockOptions, LockStatus, Settings, Wait, default_holder};
pub use signal::{LossSignal, safety_margin};
pub use token::FencingToken;
pub use turns::{LocalTurns, Turn};
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

impl std::str::FromStr for LockUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        LockUrl::parse(text)
    }
}
