//! The core of [lockkit](https://docs.rs/lockkit): the lock API every backend implements, the
//! guards, lease refresh and loss machinery they share, URL parsing, errors, and the two
//! built-in backends `memory://` and `file://`.
//!
//! Applications use the `lockkit` crate, which re-exports the user API and adds `connect(url)`:
//! [`DistributedLock`] (a backend handle), [`LockGuard`] (a held lock), [`FencingToken`],
//! [`LossSignal`], [`LockOptions`], [`LockStatus`], [`Error`]. Driver crates implement
//! [`driver::LockBackend`] and use the rest of the [`driver`] module; the core does the rest.
//!
//! # Vocabulary
//!
//! - **lease**: what the backend keeps alive for a client and ends when the client stops
//!   refreshing it — an etcd lease, a ZooKeeper or Consul session, a Redis key's TTL. Many grants
//!   can hang on one lease ([`Lease`] is its read-only view on a guard).
//! - **grant**: one lock held on a lease, with its [`FencingToken`]; a [`LockGuard`] owns it.
//! - **kept lease** ([`driver::KeptLease`]): a lease the core refreshes in the background, with a
//!   local deadline; [`driver::LeasePool`] keeps one per handle and TTL.
//! - **loss signal** ([`LossSignal`]): fires when a grant is lost; every guard has one.
//! - **lose** a lease: the client learns it is gone (or past its deadline) — every guard on it
//!   fires. **Give up** a lease: the client stops trusting it (a removal it could not confirm)
//!   and revokes it — its guards fire too. **Retire** a grant: release it for sure, retried by the
//!   core until confirmed or until its lease is given up ([`driver::Cleanup`]). **End**: the
//!   server side of the same (a session ended, a lease expired).
//! - **request** ([`driver::GrantRequest`]): one acquire as the core hands it to a driver.
#![deny(missing_docs, missing_debug_implementations)]

pub mod driver;
mod drop_guard;
mod election;
mod error;
pub mod file;
mod guard;
mod lease;
mod lock;
pub mod memory;
mod name;
mod options;
mod retire;
mod shared;
mod signal;
mod token;
mod turns;
mod unabandoned;
mod url;

pub use election::{Leader, LeaderChanges, Leadership};
pub use error::{Error, Result, Source};
pub use guard::LockGuard;
pub use lease::Lease;
pub use lock::DistributedLock;
pub use name::{LockName, MAX_NAME_LEN, Namespace};
pub use options::{Capabilities, GrantKind, Holding, LockOptions, LockStatus, Settings, Wait, default_holder};
pub use shared::{RwLock, Semaphore};
pub use signal::{LossSignal, safety_margin};
pub use token::FencingToken;
pub use url::{COMMON_OPTIONS, LockUrl, Scheme, parse_duration};

impl std::str::FromStr for LockUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        LockUrl::parse(text)
    }
}
