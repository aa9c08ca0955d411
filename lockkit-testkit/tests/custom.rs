//! The suite run on a driver that `lockkit::connect` does not know, as a third-party crate
//! would: `memory://` behind a connector of its own.

use std::sync::Arc;

use lockkit::{DistributedLock, LockUrl};
use lockkit_testkit::{BoxFuture, Target, conformance};

/// A "third-party" driver: the built-in memory driver, reached without `lockkit::connect`.
fn connect(url: &str) -> BoxFuture<'static, lockkit::Result<Arc<dyn DistributedLock>>> {
    let url = LockUrl::parse(url);
    Box::pin(async move { lockkit::memory::connect(&url?) })
}

fn custom() -> Target {
    Target::custom("custom", "memory://custom-driver", connect)
}

conformance!(
    custom_memory,
    custom,
    capabilities: [fair, server_fencing, server_expiry, crash_release, shared_lease, push_wakeups, holder_metadata]
);
