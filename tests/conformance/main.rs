//! The conformance suite, run on every backend. Each backend is one `conformance!` line; a
//! backend's own tests live beside its driver.

mod suite;
mod support;

conformance!(memory, crate::support::Target::memory);
conformance!(file, crate::support::Target::file);

mod child {
    /// Not a test: the helper process `support::holder_process` starts.
    #[test]
    #[ignore = "helper process for the cross-process tests"]
    fn holder() {
        crate::support::run_holder_child();
    }
}
