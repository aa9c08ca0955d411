//! The backend handle and the lock protocol of Go's `concurrency.Mutex`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use lockkit_core::{
    Capabilities, DistributedLock, Error, FencingToken, Finished, Grant, GrantRequest, Lease, LeaseBackend, LeasePool,
    LocalTurns, LockGuard, LockName, LockStatus, Result, Settings, Turn,
};
use std::sync::atomic::Ordering;

use crate::lease::EtcdLease;
use crate::watches::{OnDelete, Watches, Woken};
use crate::{BACKEND, error};

pub struct EtcdLocks {
    pub endpoints: String,
    pub settings: Settings,
    pub client: Client,
    pub pool: LeasePool,
    pub watches: Arc<Watches>,
    /// One holder key per lease and lock: acquires of the same key in this process queue here.
    pub local: LocalTurns,
}

/// Where a lock lives: `prefix/` holds one key per contender, `prefix/<lease id in hex>`.
struct Keys {
    prefix: String,
    mine: String,
}

impl Keys {
    /// Whether `key` is a contender of this lock (and not a key of a namespace nested below it).
    fn contender(&self, kv: &KeyValue) -> bool {
        kv.key_str().ok().and_then(|k| k.strip_prefix(&self.prefix)).is_some_and(|rest| !rest.contains('/'))
    }
}

fn first(prefix_order: SortOrder) -> GetOptions {
    GetOptions::new().with_prefix().with_sort(SortTarget::Create, prefix_order)
}

fn responses(txn: &TxnResponse) -> Vec<Vec<KeyValue>> {
    txn.op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().to_vec(),
            _ => Vec::new(),
        })
        .collect()
}

impl EtcdLocks {
    /// A unary call, bounded by the request timeout, tried again on connection trouble.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        crate::retry(self.settings.timeout, &self.endpoints, call).await
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<Vec<KeyValue>> {
        Ok(self.range(key, options).await?.1)
    }

    /// A get, with the revision it was read at.
    async fn range(&self, key: &str, options: GetOptions) -> Result<(i64, Vec<KeyValue>)> {
        let response = self
            .call(|| {
                let (mut client, key, options) = (self.client.clone(), key.to_owned(), options.clone());
                async move { client.get(key, Some(options)).await }
            })
            .await?;
        Ok((response.header().map(|h| h.revision()).unwrap_or_default(), response.kvs().to_vec()))
    }

    async fn delete(&self, key: &[u8]) -> Result<i64> {
        let response = self
            .call(|| {
                let (mut client, key) = (self.client.clone(), key.to_vec());
                async move { client.delete(key, None).await }
            })
            .await?;
        Ok(response.deleted())
    }

    /// The first contender in `order` among `candidates` (the limit-1 answer), looking at every
    /// contender only when that answer is a nested key.
    async fn first_contender(
        &self,
        keys: &Keys,
        candidates: Vec<KeyValue>,
        options: GetOptions,
    ) -> Result<Option<KeyValue>> {
        match candidates.into_iter().next() {
            None => Ok(None),
            Some(kv) if keys.contender(&kv) => Ok(Some(kv)),
            Some(_) => {
                let all = self.get(&keys.prefix, options).await?;
                Ok(all.into_iter().find(|kv| keys.contender(kv)))
            }
        }
    }

    /// Puts a new key of mine; returns its create revision and whether it is first. A key of
    /// mine left over from an earlier grant (whose release failed) is deleted first, so every
    /// grant gets a new revision, hence a new token.
    async fn enqueue(&self, keys: &Keys, lease: i64, holder: &str, cleanup: &mut Cleanup) -> Result<(i64, bool)> {
        let (revision, first) = self.try_enqueue(keys, lease, holder, cleanup).await?;
        if revision > 0 {
            return Ok((revision, first));
        }
        self.delete(keys.mine.as_bytes()).await?;
        match self.try_enqueue(keys, lease, holder, cleanup).await? {
            (0, _) => Err(Error::backend(
                BACKEND,
                format!("key {} keeps coming back; is another process using this lease?", keys.mine),
            )),
            enqueued => Ok(enqueued),
        }
    }

    /// One put-if-absent; revision 0 when my key already existed.
    ///
    /// If the acquire is dropped meanwhile, the put still completes, and `cleanup` deletes the
    /// key only after it (etcd does not order two requests in flight at once, so a delete sent
    /// alongside could land first and orphan the key).
    async fn try_enqueue(&self, keys: &Keys, lease: i64, holder: &str, cleanup: &mut Cleanup) -> Result<(i64, bool)> {
        let head = first(SortOrder::Ascend).with_limit(1);
        let txn = Txn::new().when([Compare::create_revision(keys.mine.clone(), CompareOp::Equal, 0)]).and_then([
            TxnOp::put(keys.mine.clone(), holder, Some(PutOptions::new().with_lease(lease))),
            TxnOp::get(keys.prefix.clone(), Some(head)),
        ]);
        let (client, timeout, endpoints) = (self.client.clone(), self.settings.timeout, self.endpoints.clone());
        let (put, finished) = lockkit_core::unabandoned(async move {
            crate::retry(timeout, &endpoints, || {
                let (mut client, txn) = (client.clone(), txn.clone());
                async move { client.txn(txn).await }
            })
            .await
        });
        cleanup.in_flight = Some(finished);
        let response = put.await?;
        if !response.succeeded() {
            return Ok((0, false));
        }
        let Some(revision) = response.header().map(|h| h.revision()) else {
            return Err(Error::backend(BACKEND, "etcd answered the acquire transaction without a revision"));
        };
        let mut gets = responses(&response).into_iter().skip(1);
        let head = self.first_contender(keys, gets.next().unwrap_or_default(), first(SortOrder::Ascend)).await?;
        Ok((revision, head.is_some_and(|kv| kv.create_revision() == revision)))
    }

    /// My key and the contender right before it (newest first), as of a revision at least
    /// `floor`: read from the member's own store (serializable: no Raft round, so no wait for
    /// the writes in flight), or linearizably when that member has not reached `floor` yet.
    /// Enough, because deletions never come undone and no new key can come before mine: a
    /// read at or after my key's creation that shows my key shows every contender before it.
    async fn around_me(&self, keys: &Keys, mine: i64, floor: i64) -> Result<(i64, Vec<KeyValue>)> {
        let newest_first = first(SortOrder::Descend).with_max_create_revision(mine);
        let mut read = self.range(&keys.prefix, newest_first.clone().with_serializable().with_limit(2)).await?;
        if read.0 < floor {
            read = self.range(&keys.prefix, newest_first.clone().with_limit(2)).await?;
        }
        if !read.1.iter().all(|kv| keys.contender(kv)) {
            // A key of a namespace nested below the lock's: look at every key instead.
            read = self.range(&keys.prefix, newest_first).await?;
        }
        let (revision, kvs) = read;
        Ok((revision, kvs.into_iter().filter(|kv| keys.contender(kv)).take(2).collect()))
    }

    /// Waits until every contender before me is gone. Watches only the predecessor, and my
    /// own key, whose watch it returns (to become the guard's).
    async fn wait_turn(&self, keys: &Keys, mine: i64, lease: &dyn Lease) -> Result<Unwatch> {
        let lost = |reason: &str| Error::LockLost {
            backend: BACKEND,
            name: keys.prefix.trim_end_matches('/').to_owned(),
            reason: format!("while waiting, {reason}"),
        };
        let mut mine_gone = Arc::new(Woken::default());
        // My key's watch, from its creation: an idle one of an earlier grant, or a new one.
        let on_delete = OnDelete::Wake(mine_gone.clone());
        let mut own = self.unwatch_later(vec![self.watches.reuse_or_watch(&keys.mine, mine, on_delete).await]);
        let mut floor = mine;
        let mut known = None;
        loop {
            let (revision, contenders) = match known.take() {
                Some(read) => read,
                None => self.around_me(keys, mine, floor).await?,
            };
            // A waiter paused past its lease must not take the lock: its own key must still
            // be there, with its revision, and its lease still valid.
            let still_mine =
                contenders.first().is_some_and(|kv| kv.key() == keys.mine.as_bytes() && kv.create_revision() == mine);
            if !still_mine || lease.is_lost() {
                return Err(lost("its key disappeared (lease expired or revoked, or the key deleted)"));
            }
            if mine_gone.revision.load(Ordering::Relaxed) > 0 {
                // The watch on my key ended without a deletion (etcd cancelled it): again.
                mine_gone = Arc::new(Woken::default());
                let on_delete = OnDelete::Wake(mine_gone.clone());
                own = self.unwatch_later(vec![self.watches.watch(&keys.mine, mine, revision + 1, on_delete).await.id]);
            }
            let Some(predecessor) = contenders.get(1) else { return Ok(own) };
            // A watch from now, whose events etcd sends at once (one from an older revision can
            // wait for etcd's 100 ms catch-up loop). It covers the revisions after the one etcd
            // reports at its creation; when that is past the read, one more read covers the gap.
            let woken = Arc::new(Woken::default());
            let (key, made) = (predecessor.key_str().unwrap_or_default(), predecessor.create_revision());
            let watch = self.watches.watch(key, made, 0, OnDelete::Wake(woken.clone())).await;
            let _unwatch = self.unwatch_later(vec![watch.id]);
            let created = tokio::select! {
                created = watch.created => created.unwrap_or_default(),
                _ = lease.lost() => return Err(lost("its lease was lost")),
            };
            if created > revision {
                let read = self.around_me(keys, mine, created).await?;
                let same = |a: &[KeyValue], b: &[KeyValue]| {
                    a.iter()
                        .map(|kv| (kv.key(), kv.create_revision()))
                        .eq(b.iter().map(|kv| (kv.key(), kv.create_revision())))
                };
                if !same(&read.1, &contenders) {
                    known = Some(read);
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = mine_gone.notify.notified() => floor = mine_gone.revision.load(Ordering::Relaxed),
                _ = woken.notify.notified() => floor = woken.revision.load(Ordering::Relaxed),
                _ = lease.lost() => return Err(lost("its lease was lost")),
            }
        }
    }

    fn unwatch_later(&self, ids: Vec<i64>) -> Unwatch {
        Unwatch(self.watches.clone(), ids)
    }
}

/// Cancels watches when dropped.
struct Unwatch(Arc<Watches>, Vec<i64>);

impl Unwatch {
    /// The (first) watch, kept.
    fn keep(mut self) -> i64 {
        std::mem::take(&mut self.1).first().copied().unwrap_or_default()
    }
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        for id in &self.1 {
            self.0.unwatch(*id);
        }
    }
}

#[async_trait]
impl DistributedLock for EtcdLocks {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        // A lease revoked behind our back is noticed here at the latest: lose it, take a new one.
        let mut retried = false;
        let (lease, keys, revision, cleanup, own_watch) = loop {
            let (client, endpoints, ttl, timeout) =
                (self.client.clone(), self.endpoints.clone(), request.ttl, self.settings.timeout);
            let lease = self
                .pool
                .get(request.ttl, request.refresh_interval, || async move {
                    let lease = EtcdLease::grant(&client, ttl, &endpoints, timeout).await?;
                    let id = format!("{:x}", lease.id);
                    Ok((Arc::new(lease) as Arc<dyn LeaseBackend>, id))
                })
                .await?;
            let lease_id =
                i64::from_str_radix(lease.id(), 16).map_err(|_| Error::backend(BACKEND, "a lease id is not hex"))?;
            let prefix = format!("{}/", self.settings.namespace.key(&request.name));
            let keys = Keys { mine: format!("{prefix}{}", lease.id()), prefix };
            let Some(turn) = self.local.take(&keys.mine, request.wait).await else { return Ok(None) };
            let mut cleanup =
                Cleanup { client: self.client.clone(), key: keys.mine.clone(), turn: Some(turn), in_flight: None };
            match self.enqueue(&keys, lease_id, &request.holder, &mut cleanup).await {
                Ok((revision, true)) => break (lease, keys, revision, cleanup, None),
                Ok((_, false)) if !request.wait => {
                    cleanup.now().await;
                    return Ok(None);
                }
                Ok((revision, false)) => {
                    let own_watch = self.wait_turn(&keys, revision, lease.as_ref()).await?;
                    break (lease, keys, revision, cleanup, Some(own_watch));
                }
                Err(e) if !retried && e.to_string().contains("lease not found") => {
                    lease.lose(format!("etcd lease {} is gone (revoked or expired)", lease.id()));
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        };
        let signal = lease.grant_signal();
        // The guard watches its key from its creation on: a waiter's watch carries over.
        let watch = match own_watch.map(Unwatch::keep) {
            None => self.watches.reuse_or_watch(&keys.mine, revision, OnDelete::Lose(signal.clone())).await,
            Some(id) if self.watches.retarget(id, OnDelete::Lose(signal.clone())).await => id,
            Some(_) => {
                return Err(Error::LockLost {
                    backend: BACKEND,
                    name: request.name.to_string(),
                    reason: "its key disappeared as its turn came".into(),
                });
            }
        };
        let grant = EtcdGrant {
            client: self.client.clone(),
            watches: self.watches.clone(),
            watch,
            key: keys.mine,
            revision,
            name: request.name.to_string(),
            endpoints: self.endpoints.clone(),
            timeout: self.settings.timeout,
            _turn: cleanup.disarm(),
        };
        Ok(Some(request.granted(BACKEND, FencingToken::new(revision as u64), lease, signal, grant)))
    }

    async fn shutdown(&self) -> Result<()> {
        self.pool.close().await
    }

    async fn inspect(&self, name: &LockName) -> Result<LockStatus> {
        let prefix = format!("{}/", self.settings.namespace.key(name));
        let keys = Keys { mine: String::new(), prefix };
        // Every contender, first in line first: the holder, then the waiters.
        let all = self.get(&keys.prefix, first(SortOrder::Ascend)).await?;
        let mut contenders = all.into_iter().filter(|kv| keys.contender(kv));
        let Some(holder) = contenders.next() else { return Ok(LockStatus::free().waiting(0)) };
        let waiting = contenders.count();
        let ttl_left = match holder.lease() {
            0 => None,
            lease => self
                .call(|| {
                    let mut client = self.client.clone();
                    async move { client.lease_time_to_live(lease, None).await }
                })
                .await
                .ok()
                .filter(|t| t.ttl() >= 0)
                .map(|t| Duration::from_secs(t.ttl() as u64)),
        };
        let metadata = holder.value_str().ok().filter(|v| !v.is_empty()).map(str::to_owned);
        let token = FencingToken::new(holder.create_revision() as u64);
        Ok(LockStatus::held(metadata, Some(token), ttl_left).waiting(waiting))
    }

    async fn evict(&self, name: &LockName) -> Result<bool> {
        let prefix = format!("{}/", self.settings.namespace.key(name));
        let keys = Keys { mine: String::new(), prefix };
        let options = first(SortOrder::Ascend);
        let head = self.get(&keys.prefix, options.clone().with_limit(1)).await?;
        let Some(holder) = self.first_contender(&keys, head, options).await? else { return Ok(false) };
        Ok(self.delete(holder.key()).await? > 0)
    }
}

/// Deletes the waiter key of an acquire that failed or was dropped, keeping this process's
/// turn on the key until the delete is done (so a later acquire cannot lose its new key to it).
struct Cleanup {
    client: Client,
    key: String,
    turn: Option<Turn>,
    /// When the put of the key has been answered.
    in_flight: Option<Finished>,
}

impl Cleanup {
    async fn now(&mut self) {
        let _ = self.client.clone().delete(self.key.clone(), None).await;
        self.turn = None;
    }

    fn disarm(mut self) -> Option<Turn> {
        self.turn.take()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (mut client, key, in_flight) = (self.client.clone(), std::mem::take(&mut self.key), self.in_flight.take());
        runtime.spawn(async move {
            if let Some(put) = in_flight {
                put.wait().await;
            }
            let _ = client.delete(key, None).await;
            drop(turn);
        });
    }
}

struct EtcdGrant {
    client: Client,
    watches: Arc<Watches>,
    watch: i64,
    key: String,
    revision: i64,
    name: String,
    endpoints: String,
    timeout: Duration,
    _turn: Option<Turn>,
}

#[async_trait]
impl Grant for EtcdGrant {
    async fn release(&self) -> Result<()> {
        // The watch stays, idle, for the next grant of this key (the release's own deletion
        // is ignored: it comes before that grant's revision).
        self.watches.idle(self.watch).await;
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)])
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        let response = tokio::time::timeout(self.timeout, self.client.clone().txn(txn))
            .await
            .map_err(|_| {
                Error::connection(
                    BACKEND,
                    &self.endpoints,
                    "no answer to the release; the lease TTL will end the grant",
                    None,
                )
            })?
            .map_err(|e| error(&self.endpoints, e))?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(Error::not_held(BACKEND, &self.name, "its key was gone or re-created; any newer grant was left alone"))
        }
    }
}
