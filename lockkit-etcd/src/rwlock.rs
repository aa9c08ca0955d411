//! Read-write locks with the layout of Go's `recipes.RWMutex`
//! (`client/v3/experimental/recipes/rwmutex.go`): under the lock's key `NAME`, a reader puts
//! `NAME/read/<key>` and a writer `NAME/write/<key>`, on the handle's lease. (Go names its
//! keys by the time in nanoseconds, lockkit by its lease and a random number: the recipe orders
//! keys by revision, not by name.)
//! - A reader holds once no `write/` key made before its own is left; it watches the newest
//!   of them and looks again when it goes.
//! - A writer holds once no key made before its own is left; it watches the newest one.
//!
//! So a waiting writer keeps later readers out (writers are not starved), readers queued
//! behind a writer enter together when it goes, and every waiter watches one key. The token
//! is the key's create revision.

use std::sync::Arc;

use etcd_client::KeyValue;
use lockkit_core::driver::{GrantRequest, KeptLease};
use lockkit_core::{FencingToken, GrantKind, Holding, LockGuard, LockName, LockStatus};

use crate::error::EtcdError;
use crate::locks::{EtcdLocks, holder_of};
use crate::own_key::{OwnKey, Place};

const READ: &str = "read/";
const WRITE: &str = "write/";

/// The read and write keys among every key under a lock's `base` (`base/`), first made first:
/// each with whether it is a write.
fn rw_keys<'a>(base: &str, all: &'a [KeyValue]) -> Vec<(&'a KeyValue, bool)> {
    let under = |kv: &KeyValue, dir: &str| {
        kv.key_str().ok().and_then(|k| k.strip_prefix(base)?.strip_prefix(dir)).is_some_and(is_rw_key_name)
    };
    let mut keys: Vec<(&KeyValue, bool)> = all
        .iter()
        .filter_map(|kv| match (under(kv, READ), under(kv, WRITE)) {
            (true, _) => Some((kv, false)),
            (_, true) => Some((kv, true)),
            _ => None,
        })
        .collect();
    keys.sort_by_key(|(kv, _)| kv.create_revision());
    keys
}

/// Whether a name under `read/` or `write/` is a read-write lock's key: lockkit's
/// (`<lease hex>-<16 hex digits>`) or Go's recipe's (the time in nanoseconds: 19 or more decimal
/// digits). A lock of a namespace nested below the name (`read` in `ns/NAME`) has a key of the
/// lease's hex alone (at most 16 digits), which is neither.
fn is_rw_key_name(name: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let lockkit = name.split_once('-').is_some_and(|(lease, random)| hex(lease) && random.len() == 16 && hex(random));
    let go = name.len() >= 19 && name.bytes().all(|b| b.is_ascii_digit());
    lockkit || go
}

/// How many of `keys` hold: the first write alone, or the reads before the first write.
fn holding(keys: &[(&KeyValue, bool)]) -> usize {
    match keys.first() {
        Some((_, true)) => 1,
        _ => keys.iter().take_while(|(_, write)| !write).count(),
    }
}

impl EtcdLocks {
    /// A read or the write of the read-write lock `request.name`, on `lease`.
    pub(crate) async fn grant_rw(
        &self,
        lease: &Arc<KeptLease>,
        request: &GrantRequest,
    ) -> Result<Option<LockGuard>, EtcdError> {
        let base = format!("{}/", self.settings.namespace.key(&request.name));
        let writing = request.kind == GrantKind::Write;
        let prefix = format!("{base}{}", if writing { WRITE } else { READ });
        let own = OwnKey { prefix, read: &base, what: "read-write lock" };
        self.grant_own_key(lease, request, own, |all, mine| {
            // A read waits for the newest write before it, a write for the newest key before it.
            let keys = rw_keys(&base, all);
            let at = keys.iter().position(|(kv, _)| kv.create_revision() == mine).unwrap_or(keys.len());
            match keys[..at].iter().rev().find(|(_, write)| writing || *write) {
                Some((blocker, _)) => Place::Behind(vec![*blocker]),
                None => Place::Holds,
            }
        })
        .await
    }

    /// A read-write lock's status from every key under its name (`all`), when it has read or
    /// write keys.
    pub(crate) fn rw_status(&self, name: &LockName, all: &[KeyValue]) -> Option<LockStatus> {
        let base = format!("{}/", self.settings.namespace.key(name));
        let keys = rw_keys(&base, all);
        if keys.is_empty() {
            return None;
        }
        let held = holding(&keys);
        let holders = keys[..held].iter().map(|(kv, write)| {
            let kind = if *write { GrantKind::Write } else { GrantKind::Read };
            Holding::new(kind, holder_of(kv), Some(FencingToken::new(kv.create_revision() as u64)))
        });
        Some(LockStatus::holders(holders.collect(), None).waiting(keys.len() - held))
    }

    /// The keys of a read-write lock's holders, to evict (`None`: no read or write keys).
    pub(crate) fn rw_holders(&self, name: &LockName, all: &[KeyValue]) -> Option<Vec<(Vec<u8>, i64)>> {
        let base = format!("{}/", self.settings.namespace.key(name));
        let keys = rw_keys(&base, all);
        if keys.is_empty() {
            return None;
        }
        let held = holding(&keys);
        Some(keys[..held].iter().map(|(kv, _)| (kv.key().to_vec(), kv.create_revision())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::is_rw_key_name;

    #[test]
    fn rw_keys_are_lockkits_or_gos_and_never_a_nested_locks() {
        assert!(is_rw_key_name("694d8a1b2c3d4e5f-00000000deadbeef"), "lockkit's");
        assert!(is_rw_key_name("1700000000000000000"), "Go's nanoseconds");
        assert!(!is_rw_key_name("694d8a1b2c3d4e5f"), "a nested lock's lease key");
        assert!(!is_rw_key_name("1234567890123456"), "a lease key of decimal digits only");
        assert!(!is_rw_key_name("x-00000000deadbeef") && !is_rw_key_name(""));
    }
}
