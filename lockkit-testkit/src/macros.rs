//! The `conformance!` macro.

/// Runs the conformance suite on one backend, as a module of tests named `$backend`:
///
/// ```text
/// conformance!(memory, Target::memory, capabilities: [fair, server_fencing, server_expiry, crash_release, shared_lease, push_wakeups, holder_metadata, observe]);
/// conformance!(etcd, Target::etcd, capabilities: all, network);
/// ```
///
/// The second argument makes the [`Target`](crate::Target) (called once per test, in the
/// test's runtime): a function such as `Target::etcd`, or a closure. The line lists the
/// backend's [`Capabilities`](lockkit::Capabilities) (field names, or `all`), and `network` when
/// the target has a fault proxy ([`Target::proxied`](crate::Target::proxied)). Every property
/// that holds for any backend runs; those that need a capability run only where the line lists
/// it, so that a backend without it does not pass them vacuously:
///
/// | listed | properties |
/// |---|---|
/// | `fair` | `a_fair_backend_grants_in_arrival_order` |
/// | `cross_process` | `fencing_tokens_increase_across_connections_and_processes`, `fenced_writes_survive_pauses_and_partitions`, `fenced_leaders_survive_pauses_and_partitions` (and the helper processes they start, `$backend::child::*`) |
/// | `crash_release` | `a_vanished_holder_frees_the_lock_within_the_ttl` |
/// | `shared_lease` | `revoking_a_lease_fires_every_guard_on_it` |
/// | `holder_metadata` | `status_shows_the_holders_metadata`, and the elections that need no more (a leader's value is its holder metadata): `the_leader_shows_its_value_and_term`, `a_lock_and_an_election_of_one_name_are_one`, `one_leader_at_a_time_with_increasing_terms`, `a_resign_or_a_drop_hands_over`, `a_cancelled_campaign_leaves_no_candidate` |
/// | `observe` | `a_deposed_leader_cannot_proclaim`, `concurrent_proclaims_leave_the_last_write`, `observers_see_every_change_in_order`, `observed_terms_only_increase` |
/// | `semaphores` | `never_more_than_n_permits_are_held`, `a_released_permit_wakes_one_waiter_with_a_later_token`, `a_vanished_permit_holder_returns_its_permit_within_the_ttl`, `a_cancelled_permit_wait_leaves_nothing_behind` |
/// | `rw_locks` | `readers_share_and_a_writer_excludes_everyone`, `a_waiting_writer_is_not_starved_by_later_readers`, `a_cancelled_read_or_write_wait_leaves_nothing_behind` |
/// | `semaphores` and `network` | `a_permit_release_that_timed_out_still_frees_the_permit`, `a_dropped_permit_release_still_frees_the_permit`, `a_permit_waiter_that_timed_out_in_a_held_connection_leaves_no_entry` |
/// | `network` | the fault properties ([`suite`](crate::suite)`::faults`) |
///
/// The line cannot lie: the test `declares_the_capabilities_it_is_tested_for` checks that it
/// lists exactly the backend's `capabilities()`, and `network` exactly when there is a proxy.
/// Each test fails if it takes longer than 2 minutes.
#[macro_export]
macro_rules! conformance {
    (@tests $target:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::support::test_runtime().block_on(async {
                    let target = ($target)().for_suite(module_path!());
                    // A hang is a failure, not a stuck CI run.
                    let bound = ::std::time::Duration::from_secs(120);
                    $crate::tokio::time::timeout(bound, $crate::suite::$test(&target))
                        .await
                        .expect("the test ended within 2 minutes");
                });
            }
        )*
    };
    (@capability fair $target:expr, $net:tt) => {
        $crate::conformance!(@tests $target; a_fair_backend_grants_in_arrival_order);
    };
    (@capability cross_process $target:expr, $net:tt) => {
        $crate::conformance!(@tests $target;
            fencing_tokens_increase_across_connections_and_processes,
            fenced_writes_survive_pauses_and_partitions,
            fenced_leaders_survive_pauses_and_partitions,
        );

        /// The helper processes of the cross-process properties: this test binary, run again.
        mod child {
            #[allow(unused_imports)]
            use super::*;

            /// Not a test: the helper process `support::holder_process` starts.
            #[test]
            #[ignore = "helper process for the cross-process tests"]
            fn holder() {
                $crate::support::run_holder_child(($target)().connector());
            }

            /// Not a test: the contender process of the system test (`suite::system`).
            #[test]
            #[ignore = "helper process for the system test"]
            fn contender() {
                $crate::suite::run_contender_child(($target)().connector());
            }
        }
    };
    (@capability crash_release $target:expr, $net:tt) => {
        $crate::conformance!(@tests $target; a_vanished_holder_frees_the_lock_within_the_ttl);
    };
    (@capability shared_lease $target:expr, $net:tt) => {
        $crate::conformance!(@tests $target; revoking_a_lease_fires_every_guard_on_it);
    };
    (@capability holder_metadata $target:expr, $net:tt) => {
        $crate::conformance!(@tests $target;
            status_shows_the_holders_metadata,
            the_leader_shows_its_value_and_term,
            a_lock_and_an_election_of_one_name_are_one,
            one_leader_at_a_time_with_increasing_terms,
            a_resign_or_a_drop_hands_over,
            a_cancelled_campaign_leaves_no_candidate,
        );
    };
    (@capability observe $target:expr, $net:tt) => {
        $crate::conformance!(@tests $target;
            a_deposed_leader_cannot_proclaim,
            concurrent_proclaims_leave_the_last_write,
            observers_see_every_change_in_order,
            observed_terms_only_increase,
        );
    };
    (@capability semaphores $target:expr, $net:tt) => {
        $crate::conformance!(@tests $target;
            never_more_than_n_permits_are_held,
            a_released_permit_wakes_one_waiter_with_a_later_token,
            a_vanished_permit_holder_returns_its_permit_within_the_ttl,
            a_cancelled_permit_wait_leaves_nothing_behind,
        );
        $crate::conformance!(@permit_faults $net $target);
    };
    // Semaphores through the fault proxy: where there is one.
    (@permit_faults network $target:expr) => {
        $crate::conformance!(@tests $target;
            a_permit_release_that_timed_out_still_frees_the_permit,
            a_dropped_permit_release_still_frees_the_permit,
            a_permit_waiter_that_timed_out_in_a_held_connection_leaves_no_entry,
        );
    };
    (@permit_faults none $target:expr) => {};
    (@capability rw_locks $target:expr, $net:tt) => {
        $crate::conformance!(@tests $target;
            readers_share_and_a_writer_excludes_everyone,
            a_waiting_writer_is_not_starved_by_later_readers,
            a_cancelled_read_or_write_wait_leaves_nothing_behind,
        );
    };
    // No property needs these alone (`declares_the_capabilities_it_is_tested_for` checks them).
    (@capability server_fencing $target:expr, $net:tt) => {};
    (@capability server_expiry $target:expr, $net:tt) => {};
    (@capability push_wakeups $target:expr, $net:tt) => {};
    (@network none $target:expr) => {};
    (@network network $target:expr) => {
        $crate::conformance!(@tests $target;
            a_release_that_timed_out_still_frees_the_lock,
            a_dropped_release_still_frees_the_lock,
            a_waiter_that_timed_out_in_a_held_connection_leaves_no_entry,
            an_acquire_applied_after_its_timeout_leaves_no_orphan_grant,
            a_brief_disconnection_loses_no_lock,
            a_partition_longer_than_the_ttl_fires_the_loss_first,
        );
    };
    ($backend:ident, $target:expr, capabilities: all $(, $network:ident)? $(,)?) => {
        $crate::conformance!($backend, $target,
            capabilities: [
                fair,
                server_fencing,
                server_expiry,
                crash_release,
                cross_process,
                shared_lease,
                push_wakeups,
                holder_metadata,
                observe,
                semaphores,
                rw_locks
            ]
            $(, $network)?
        );
    };
    ($backend:ident, $target:expr, capabilities: [$($capability:ident),* $(,)?], network $(,)?) => {
        $crate::conformance!(@module $backend, $target, [$($capability),*], network);
    };
    ($backend:ident, $target:expr, capabilities: [$($capability:ident),* $(,)?] $(,)?) => {
        $crate::conformance!(@module $backend, $target, [$($capability),*], none);
    };
    // `$net`: `network` (the target has a fault proxy) or `none`.
    (@module $backend:ident, $target:expr, [$($capability:ident),*], $net:tt) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            $crate::conformance!(@tests $target;
                mutual_exclusion_holds_under_contention,
                try_acquire_is_none_while_held_and_succeeds_after_release,
                acquire_timeout_fails_close_to_the_requested_time,
                fencing_tokens_increase_across_connections,
                a_refreshed_lock_is_held_for_three_ttls,
                a_grant_removed_behind_the_holders_back_fires_the_loss_signal,
                closing_a_handle_releases_its_locks_and_fires_its_guards,
                a_closed_handle_ends_its_waits_and_takes_no_more_locks,
                a_closed_handles_waiter_does_not_hold_up_the_line,
                an_acquire_racing_close_leaves_the_name_free,
                dropping_a_guard_lets_a_waiter_in_promptly,
                a_dropped_acquire_leaves_nothing_behind,
                a_stale_release_leaves_the_new_holder_alone,
                names_are_escaped_and_validated,
                namespaces_never_interfere,
                one_connection_keeps_a_thousand_locks_alive,
                status_shows_the_holder_and_token,
                the_same_name_twice_through_one_handle_waits_for_the_first_guard,
                waiters_in_line_are_all_granted,
            );
            $($crate::conformance!(@capability $capability $target, $net);)*
            $crate::conformance!(@network $net $target);

            #[test]
            fn declares_the_capabilities_it_is_tested_for() {
                $crate::support::test_runtime().block_on(async {
                    let target = ($target)().for_suite(module_path!());
                    #[allow(unused_mut)]
                    let mut declared = <$crate::lockkit::Capabilities as ::std::default::Default>::default();
                    $(declared.$capability = true;)*
                    let network = stringify!($net) == "network";
                    $crate::suite::declares_the_capabilities_it_is_tested_for(&target, declared, network).await;
                });
            }
        }
    };
}
