//! A grant held by a key of its own (`<prefix><lease hex>-<random>`, on the handle's lease),
//! granted by a rule over the keys around it: what semaphores and read-write locks share.
//! The key is put with the lock protocol's put-if-absent and [`Cleanup`] (deleted if the
//! acquire fails or is dropped); while it waits, the acquire watches the keys the rule says
//! stand before it, and its own key (gone: its place is lost, and the core queues it again).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::{KeyValue, SortOrder};
use lockkit_core::driver::{Cleanup, GrantRequest, KeptLease, random_u64};
use lockkit_core::{Error, Lease, LockGuard};

use crate::BACKEND;
use crate::error::EtcdError;
use crate::locks::{EtcdLocks, Keys, first, lease_id};
use crate::watches::{OnDelete, Woken};

/// Where a key stands, as a rule reads every key it looks at (first made first) and the key's
/// own create revision.
pub(crate) enum Place<'a> {
    /// It holds.
    Holds,
    /// It waits for one of these to go.
    Behind(Vec<&'a KeyValue>),
}

/// What one grant by its own key is.
pub(crate) struct OwnKey<'a> {
    /// Where its key goes (ends with `/`).
    pub prefix: String,
    /// What the rule reads (a prefix: the keys it looks at).
    pub read: &'a str,
    /// What it is, for messages: "permit", "read-write lock".
    pub what: &'a str,
}

impl EtcdLocks {
    /// Puts the key and waits (or not, when trying) until `place` says it holds: the guard,
    /// `None` when trying and it does not hold.
    pub(crate) async fn grant_own_key(
        &self,
        lease: &Arc<KeptLease>,
        request: &GrantRequest,
        own: OwnKey<'_>,
        place: impl for<'k> Fn(&'k [KeyValue], i64) -> Place<'k>,
    ) -> Result<Option<LockGuard>, EtcdError> {
        let keys = Keys { mine: format!("{}{}-{:016x}", own.prefix, lease.id(), random_u64()), prefix: own.prefix };
        let made_at = Arc::new(AtomicI64::new(0));
        let what = format!("the {} key {} of {:?}", own.what, keys.mine, request.name.as_str());
        let mut cleanup = Cleanup::new(lease, what, self.removal(&keys.mine, made_at.clone()));
        let (revision, ..) = self.enqueue(&keys, lease_id(lease)?, &request.holder, &mut cleanup).await?;
        made_at.store(revision, Ordering::SeqCst);
        let lost = |reason: &str| Error::LockLost {
            backend: BACKEND,
            name: request.name.to_string(),
            reason: format!("while waiting, {reason}"),
        };
        loop {
            let (read_at, all) = self.range(own.read, first(SortOrder::Ascend)).await?;
            if !all.iter().any(|kv| kv.key() == keys.mine.as_bytes() && kv.create_revision() == revision) {
                return Err(lost("its key disappeared (lease expired or revoked, or the key deleted)").into());
            }
            let Place::Behind(before) = place(&all, revision) else { break };
            if !request.wait {
                return match cleanup.now().await {
                    Ok(()) | Err(Error::LockLost { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                };
            }
            if lease.is_lost() {
                return Err(lost("its lease was lost").into());
            }
            // One of them going lets it move up; its own key going means its place is lost.
            let woken = Arc::new(Woken::default());
            let mut ids = Vec::with_capacity(before.len() + 1);
            let own_key = std::iter::once((keys.mine.as_str(), revision));
            let watched = before.iter().map(|kv| (kv.key_str().unwrap_or_default(), kv.create_revision()));
            for (key, made) in watched.chain(own_key) {
                ids.push(self.watches.watch(key, made, read_at + 1, OnDelete::Wake(woken.clone())).await.id);
            }
            let _unwatch = self.unwatch_later(ids);
            tokio::select! {
                _ = woken.notify.notified() => {}
                _ = lease.lost() => return Err(lost("its lease was lost").into()),
            }
        }
        let signal = lease.grant_signal();
        let watch = self.watches.reuse_or_watch(&keys.mine, revision, OnDelete::Lose(signal.clone())).await;
        let turn = cleanup.disarm();
        Ok(Some(self.guard(request, lease, keys.mine, revision, (watch, signal), turn)?))
    }
}
