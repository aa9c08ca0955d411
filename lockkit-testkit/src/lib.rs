//! # lockkit-testkit
//!
//! What lockkit's tests share, as a library: the conformance suite every backend must pass
//! ([`suite`], run by [`conformance!`]), the backends under test ([`Target`]), the servers the
//! tests start ([`servers`]), a TCP fault proxy ([`proxy`]), other clients of the backends ([`peer`]) and a double of Consul's HTTP API
//! ([`consul_double`]). A driver — lockkit's own or a third-party one — runs the whole suite
//! with one line in an integration test:
//!
//! ```text
//! use lockkit_testkit::{Target, conformance};
//!
//! fn my_target() -> Target {
//!     Target::custom("mine", "mine://127.0.0.1:7000", |url| {
//!         let url = url.to_owned();
//!         Box::pin(async move { my_driver::connect(&url).await })
//!     })
//! }
//!
//! conformance!(mine, my_target, capabilities: [server_fencing, server_expiry, crash_release, cross_process]);
//! ```
#![deny(missing_docs, missing_debug_implementations)]

mod macros;

pub mod consul_double;
pub mod peer;
pub mod proxy;
pub mod servers;
pub mod suite;
pub mod support;
pub mod target;

pub use target::{BoxFuture, Connector, Target};

// What the expansion of `conformance!` names.
#[doc(hidden)]
pub use {lockkit, tokio};
