//! The conformance suite (`lockkit-testkit`), run on every backend. Each backend is one
//! `conformance!` line listing what it has; a backend's own tests live beside it.

use lockkit_testkit::{Target, conformance};

conformance!(
    memory,
    Target::memory,
    capabilities: [fair, server_fencing, server_expiry, crash_release, shared_lease, push_wakeups, holder_metadata, observe, semaphores, rw_locks]
);
conformance!(
    file,
    Target::file,
    capabilities: [server_fencing, crash_release, cross_process, shared_lease, holder_metadata, semaphores, rw_locks]
);
#[cfg(feature = "etcd")]
conformance!(etcd, Target::etcd, capabilities: all, network);
// Semaphores and read-write locks are not on these backends yet (issue #20): `all` but them.
#[cfg(feature = "zookeeper")]
conformance!(zookeeper, Target::zookeeper, capabilities: [fair, server_fencing, server_expiry, crash_release, cross_process, shared_lease, push_wakeups, holder_metadata, observe], network);
#[cfg(feature = "consul")]
conformance!(
    consul,
    Target::consul,
    capabilities: [server_fencing, server_expiry, crash_release, cross_process, shared_lease, push_wakeups, holder_metadata, observe],
    network
);
#[cfg(feature = "redis")]
conformance!(
    redis,
    Target::redis,
    capabilities: [server_fencing, server_expiry, crash_release, cross_process, shared_lease, push_wakeups, holder_metadata, observe],
    network
);
#[cfg(feature = "redis")]
conformance!(redis_fair, Target::redis_fair, capabilities: [fair, server_fencing, server_expiry, crash_release, cross_process, shared_lease, push_wakeups, holder_metadata, observe], network);
#[cfg(feature = "redis")]
conformance!(
    redlock,
    Target::redlock,
    capabilities: [server_fencing, server_expiry, crash_release, cross_process, shared_lease, push_wakeups, holder_metadata, observe],
    network
);
// No fault proxy: the cluster client finds every node's real address (see `Target::proxied`).
#[cfg(feature = "redis")]
conformance!(
    redis_cluster,
    Target::redis_cluster,
    capabilities: [server_fencing, server_expiry, crash_release, cross_process, shared_lease, push_wakeups, holder_metadata, observe]
);
#[cfg(feature = "redis")]
conformance!(redis_cluster_fair, Target::redis_cluster_fair, capabilities: [fair, server_fencing, server_expiry, crash_release, cross_process, shared_lease, push_wakeups, holder_metadata, observe]);
