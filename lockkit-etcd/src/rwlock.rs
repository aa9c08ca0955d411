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
use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::{KeyValue, SortOrder};
use lockkit_core::driver::{Cleanup, GrantRequest, KeptLease, random_u64};
use lockkit_core::{Error, FencingToken, GrantKind, Holding, Lease, LockGuard, LockName, LockStatus};

use crate::BACKEND;
use crate::error::EtcdError;
use crate::locks::{EtcdLocks, Keys, first, holder_of, lease_id};
use crate::watches::{OnDelete, Woken};

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
        let keys = Keys { mine: format!("{prefix}{}-{:016x}", lease.id(), random_u64()), prefix };
        let made_at = Arc::new(AtomicI64::new(0));
        let what = format!("the key {} of read-write lock {:?}", keys.mine, request.name.as_str());
        let mut cleanup = Cleanup::new(lease, what, self.removal(&keys.mine, made_at.clone()));
        let (revision, ..) = self.enqueue(&keys, lease_id(lease)?, &request.holder, &mut cleanup).await?;
        made_at.store(revision, Ordering::SeqCst);
        if !self.wait_for_rw(&base, &keys.mine, revision, writing, request.wait, lease.as_ref()).await? {
            return match cleanup.now().await {
                Ok(()) | Err(Error::LockLost { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        let signal = lease.grant_signal();
        let watch = self.watches.reuse_or_watch(&keys.mine, revision, OnDelete::Lose(signal.clone())).await;
        let turn = cleanup.disarm();
        Ok(Some(self.guard(request, lease, keys.mine, revision, (watch, signal), turn)?))
    }

    /// Whether my key (`mine_key`, made at `mine`) holds: no write (for a read) or no key at all
    /// (for a write) made before it is left. With `wait`, waits until it holds, watching the
    /// newest of those.
    async fn wait_for_rw(
        &self,
        base: &str,
        mine_key: &str,
        mine: i64,
        writing: bool,
        wait: bool,
        lease: &dyn Lease,
    ) -> Result<bool, EtcdError> {
        let lost = |reason: &str| Error::LockLost {
            backend: BACKEND,
            name: base.trim_end_matches('/').to_owned(),
            reason: format!("while waiting, {reason}"),
        };
        loop {
            let (revision, all) = self.range(base, first(SortOrder::Ascend)).await?;
            let keys = rw_keys(base, &all);
            let mine_at =
                keys.iter().position(|(kv, _)| kv.key() == mine_key.as_bytes() && kv.create_revision() == mine);
            let Some(at) = mine_at else {
                return Err(lost("its key disappeared (lease expired or revoked, or the key deleted)").into());
            };
            let Some((blocker, _)) = keys[..at].iter().rev().find(|(_, write)| writing || *write) else {
                return Ok(true);
            };
            if !wait {
                return Ok(false);
            }
            if lease.is_lost() {
                return Err(lost("its lease was lost").into());
            }
            // The blocker's deletion lets me move up; my own key's means I lost my place.
            let woken = Arc::new(Woken::default());
            let (key, made) = (blocker.key_str().unwrap_or_default(), blocker.create_revision());
            let watch = self.watches.watch(key, made, revision + 1, OnDelete::Wake(woken.clone())).await;
            let own = self.watches.watch(mine_key, mine, revision + 1, OnDelete::Wake(woken.clone())).await;
            let _unwatch = self.unwatch_later(vec![watch.id, own.id]);
            tokio::select! {
                _ = woken.notify.notified() => {}
                _ = lease.lost() => return Err(lost("its lease was lost").into()),
            }
        }
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
