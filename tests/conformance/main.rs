//! The conformance suite, run on every backend. Each backend is one `conformance!` line; a
//! backend's own tests live beside its driver.

mod proxy_selftest;
mod suite;
#[allow(dead_code)] // shared with the other test binaries, which use more of it
mod support;

conformance!(memory, crate::support::Target::memory);
conformance!(file, crate::support::Target::file);
#[cfg(feature = "etcd")]
conformance!(etcd, crate::support::Target::etcd);
#[cfg(feature = "zookeeper")]
conformance!(zookeeper, crate::support::Target::zookeeper);
#[cfg(feature = "consul")]
conformance!(consul, crate::support::Target::consul);
#[cfg(feature = "redis")]
conformance!(redis, crate::support::Target::redis);
#[cfg(feature = "redis")]
conformance!(redis_fair, crate::support::Target::redis_fair);
#[cfg(feature = "redis")]
conformance!(redlock, crate::support::Target::redlock);
#[cfg(feature = "redis")]
conformance!(redis_cluster, crate::support::Target::redis_cluster);
#[cfg(feature = "redis")]
conformance!(redis_cluster_fair, crate::support::Target::redis_cluster_fair);

mod child {
    /// Not a test: the helper process `support::holder_process` starts.
    #[test]
    #[ignore = "helper process for the cross-process tests"]
    fn holder() {
        crate::support::run_holder_child();
    }

    /// Not a test: the contender process of the system test (`suite::system`).
    #[test]
    #[ignore = "helper process for the system test"]
    fn contender() {
        crate::suite::run_contender_child();
    }
}
