//! Counting semaphores, after Apache Curator's `InterProcessSemaphoreV2` (etcd has no semaphore
//! recipe of its own). Under the semaphore's key `NAME`:
//! - `NAME/@leases/<lease hex>-<random>`: one key per permit or waiter, on the handle's lease,
//!   valued with the holder metadata. The first `permits` of them by create revision hold; a
//!   permit's create revision is its fencing token (strictly increasing across all permits).
//! - `NAME/@locks/<lease hex>-<random>`: the semaphore's internal mutex (the lock protocol: FIFO, each
//!   waiter watching only its predecessor). A waiter takes it before it puts its permit key
//!   and gives it back once it holds: so only one waiter at a time watches the holders (no
//!   herd), and the others queue behind it. A try takes no mutex: its key holds if fewer than
//!   `permits` keys are before it, and is deleted otherwise.
//! - `NAME/@permits`: the number of permits, put (without a lease) by the first contender;
//!   another number is refused.
//!
//! (`@`, which no escaped name or namespace segment contains, keeps these keys apart from the
//! locks of a namespace nested below the semaphore's name.)

use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};
use lockkit_core::driver::{GrantRequest, KeptLease, random_u64};
use lockkit_core::{Error, FencingToken, GrantKind, Holding, Lease, LockGuard, LockName, LockStatus};

use crate::error::EtcdError;
use crate::locks::{EtcdLocks, Keys, holder_of};
use crate::own_key::{OwnKey, Place};

/// Where the keys of the semaphore whose key is `base` live, relative to `base/`. `@` never
/// appears in an escaped name or namespace segment, so no lock of a nested namespace (a lock
/// `leases` in the namespace `ns/NAME`) can have these keys.
const LEASES: &str = "@leases/";
const LOCKS: &str = "@locks/";
const PERMITS: &str = "@permits";

impl EtcdLocks {
    /// A permit of the semaphore `request.name` with `permits` permits, on `lease`.
    pub(crate) async fn grant_permit(
        &self,
        lease: &Arc<KeptLease>,
        request: &GrantRequest,
        permits: u32,
    ) -> Result<Option<LockGuard>, EtcdError> {
        let base = self.settings.namespace.key(&request.name);
        self.check_permits(&base, &request.name, permits).await?;
        // Waiters queue on the mutex, held until this one holds a permit (or gives up).
        let mutex = match request.wait {
            false => None,
            true => {
                // A key of its own per acquire (not per lease): two waiters of one handle are
                // two in line, as `status` counts them.
                let prefix = format!("{base}/{LOCKS}");
                let keys = Keys { mine: format!("{prefix}{}-{:016x}", lease.id(), random_u64()), prefix };
                let Some(mutex) = self.grant_keys(lease, request, keys).await? else { return Ok(None) };
                Some(mutex)
            }
        };
        let prefix = format!("{base}/{LEASES}");
        let own = OwnKey { prefix: prefix.clone(), read: &prefix, what: "permit" };
        let keys = Keys { mine: String::new(), prefix: prefix.clone() };
        let guard = self
            .grant_own_key(lease, request, own, |all, mine| {
                // The first `permits` keys hold; a waiter waits for any key before its own.
                let contenders: Vec<&KeyValue> = all.iter().filter(|kv| keys.contender(kv)).collect();
                match contenders.iter().position(|kv| kv.create_revision() == mine) {
                    Some(at) if at >= permits as usize => Place::Behind(contenders[..at].to_vec()),
                    _ => Place::Holds,
                }
            })
            .await?;
        let Some(guard) = guard else { return Ok(None) };
        if let Some(mutex) = mutex {
            // A release that fails is retried by the core; the permit is held either way.
            let _ = mutex.release().await;
        }
        Ok(Some(guard))
    }

    /// Records the semaphore's number of permits if it is the first to use it, or checks it.
    async fn check_permits(&self, base: &str, name: &LockName, permits: u32) -> Result<(), EtcdError> {
        let key = format!("{base}/{PERMITS}");
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), permits.to_string(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = self
            .call(|| {
                let (mut client, txn) = (Client::clone(&self.client), txn.clone());
                async move { client.txn(txn).await }
            })
            .await?;
        if response.succeeded() {
            return Ok(());
        }
        let recorded = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        });
        match recorded {
            Some(recorded) if recorded.trim().parse::<u32>().ok() == Some(permits) => Ok(()),
            recorded => Err(Error::InvalidOptions {
                reason: format!(
                    "semaphore `{name}` has {:?} permits (recorded in etcd at {key}), not {permits}: give every \
                     contender the same number, or delete {key} while nothing holds the semaphore",
                    recorded.unwrap_or_default()
                ),
            }
            .into()),
        }
    }

    /// A semaphore's status from every key under its name (`all`, first created first), when
    /// the name is a semaphore's (its number of permits recorded).
    pub(crate) fn semaphore_status(&self, name: &LockName, all: &[KeyValue]) -> Option<LockStatus> {
        let base = format!("{}/", self.settings.namespace.key(name));
        let under = |kv: &KeyValue, dir: &str| {
            kv.key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&base)?.strip_prefix(dir))
                .is_some_and(|rest| !rest.contains('/'))
        };
        let record = all.iter().find(|kv| kv.key_str().ok().and_then(|k| k.strip_prefix(&base)) == Some(PERMITS))?;
        // A record that is not a number (written by hand): every permit key is listed, so that
        // `status` shows them and `force_release` removes them.
        let permits: Option<u32> = String::from_utf8_lossy(record.value()).trim().parse().ok();
        let leases: Vec<&KeyValue> = all.iter().filter(|kv| under(kv, LEASES)).collect();
        let holding = permits.map_or(leases.len(), |permits| permits as usize);
        let holders = leases.iter().take(holding).map(|kv| {
            let token = FencingToken::new(kv.create_revision() as u64);
            Holding::new(GrantKind::Permit { permits: permits.unwrap_or(0) }, holder_of(kv), Some(token))
        });
        let queued = all.iter().filter(|kv| under(kv, LOCKS)).count();
        let waiting = queued.max(leases.len().saturating_sub(holding));
        Some(LockStatus::holders(holders.collect(), None).permits(permits).waiting(waiting))
    }

    /// The keys of the semaphore's current holders, to evict (`None`: not a semaphore).
    pub(crate) fn semaphore_holders(&self, name: &LockName, all: &[KeyValue]) -> Option<Vec<(Vec<u8>, i64)>> {
        let status = self.semaphore_status(name, all)?;
        let tokens: Vec<i64> = status.holders.iter().filter_map(|h| h.token).map(|t| t.get() as i64).collect();
        let keys = all.iter().filter(|kv| tokens.contains(&kv.create_revision()));
        Some(keys.map(|kv| (kv.key().to_vec(), kv.create_revision())).collect())
    }
}
