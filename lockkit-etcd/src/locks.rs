//! The backend handle and the lock protocol of Go's `concurrency.Mutex`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use lockkit_core::driver::{
    Attempt, Cleanup, DriverError, ErrorKind, Grant, GrantRequest, KeptLease, LeaderFeed, LeaseBackend, LeasePool,
    LocalTurns, LockBackend, Turn, on_a_live_lease,
};
use lockkit_core::{Capabilities, Error, FencingToken, Lease, LockGuard, LockName, LockStatus, Result, Settings};

use crate::BACKEND;
use crate::election::{EtcdFeed, proclaim};
use crate::error::{EtcdError, error};
use crate::lease::EtcdLease;
use crate::watches::{OnDelete, Watches, Woken};

pub(crate) struct EtcdLocks {
    pub endpoints: String,
    pub settings: Settings,
    /// Shared by the handle's grants (an `etcd_client::Client` is 3.7 KB): each request
    /// clones it.
    pub client: Arc<Client>,
    pub pool: LeasePool,
    pub watches: Arc<Watches>,
    /// One holder key per lease and lock: acquires of the same key in this process queue here.
    pub local: LocalTurns,
}

/// Where a lock lives: `prefix/` holds one key per contender, `prefix/<lease id in hex>`.
pub(crate) struct Keys {
    pub(crate) prefix: String,
    pub(crate) mine: String,
}

impl Keys {
    /// Whether `key` is a contender of this lock (and not a key of a namespace nested below it).
    pub(crate) fn contender(&self, kv: &KeyValue) -> bool {
        kv.key_str().ok().and_then(|k| k.strip_prefix(&self.prefix)).is_some_and(|rest| !rest.contains('/'))
    }
}

/// A key put in line: its create revision (0: it existed already), whether it is first, and
/// when it is not, what the put saw around it (when that was enough to wait on); or etcd's
/// answer, typed.
type Enqueued = Result<(i64, bool, Option<Around>), EtcdError>;

/// My key and the contender right before it, as read at `revision`.
pub(crate) struct Around {
    revision: i64,
    /// Mine, then my predecessor's if there is one.
    contenders: Vec<KeyValue>,
}

impl Around {
    /// `newest`: the newest keys of the lock created at or before mine, newest first (mine
    /// first).
    fn of(keys: &Keys, revision: i64, newest: Vec<KeyValue>) -> Self {
        Around { revision, contenders: newest.into_iter().filter(|kv| keys.contender(kv)).take(2).collect() }
    }
}

pub(crate) fn first(prefix_order: SortOrder) -> GetOptions {
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
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        Ok(crate::retry(self.settings.timeout, &self.endpoints, call).await?)
    }

    pub(crate) async fn get(&self, key: &str, options: GetOptions) -> Result<Vec<KeyValue>> {
        Ok(self.range(key, options).await?.1)
    }

    /// A get, with the revision it was read at.
    pub(crate) async fn range(&self, key: &str, options: GetOptions) -> Result<(i64, Vec<KeyValue>)> {
        let response = self
            .call(|| {
                let (mut client, key, options) = (Client::clone(&self.client), key.to_owned(), options.clone());
                async move { client.get(key, Some(options)).await }
            })
            .await?;
        Ok((response.header().map(|h| h.revision()).unwrap_or_default(), response.kvs().to_vec()))
    }

    async fn delete(&self, key: &[u8]) -> Result<i64> {
        let response = self
            .call(|| {
                let (mut client, key) = (Client::clone(&self.client), key.to_vec());
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
    /// grant gets a new revision, hence a new token. (This process's turn on the key keeps
    /// every other acquire of it out, so deleting it by name is safe.)
    pub(crate) async fn enqueue(&self, keys: &Keys, lease: i64, holder: &str, cleanup: &mut Cleanup) -> Enqueued {
        let enqueued = self.try_enqueue(keys, lease, holder, cleanup).await?;
        if enqueued.0 > 0 {
            return Ok(enqueued);
        }
        self.delete(keys.mine.as_bytes()).await?;
        match self.try_enqueue(keys, lease, holder, cleanup).await? {
            (0, ..) => Err(Error::backend(
                BACKEND,
                format!("key {} keeps coming back; is another process using this lease?", keys.mine),
            )
            .into()),
            enqueued => Ok(enqueued),
        }
    }

    /// One put-if-absent, which also reads the first contender and the newest two (mine, just
    /// made, and my predecessor); revision 0 when my key already existed.
    ///
    /// If the acquire is dropped meanwhile, the put still completes, and `cleanup` deletes the
    /// key only after it (etcd does not order two requests in flight at once, so a delete sent
    /// alongside could land first and orphan the key); a put left unanswered may still be
    /// applied, so `cleanup` then gives the lease up instead. etcd's answer comes typed (a lease
    /// gone is [`ErrorKind::LeaseGone`](lockkit_core::driver::ErrorKind::LeaseGone)).
    async fn try_enqueue(&self, keys: &Keys, lease: i64, holder: &str, cleanup: &mut Cleanup) -> Enqueued {
        let head = first(SortOrder::Ascend).with_limit(1);
        let newest_two = first(SortOrder::Descend).with_limit(2);
        let txn = Txn::new().when([Compare::create_revision(keys.mine.clone(), CompareOp::Equal, 0)]).and_then([
            TxnOp::put(keys.mine.clone(), holder, Some(PutOptions::new().with_lease(lease))),
            TxnOp::get(keys.prefix.clone(), Some(head)),
            TxnOp::get(keys.prefix.clone(), Some(newest_two)),
        ]);
        let (client, timeout, endpoints) = (Client::clone(&self.client), self.settings.timeout, self.endpoints.clone());
        // Answered unless the outcome is unknown (connection trouble, no answer in time).
        let answered =
            |put: &Result<TxnResponse, EtcdError>| !matches!(put, Err(e) if e.kind() == ErrorKind::Temporary);
        let (put, finished) = lockkit_core::driver::unabandoned_request_by(
            async move {
                crate::retry(timeout, &endpoints, || {
                    let (mut client, txn) = (client.clone(), txn.clone());
                    async move { client.txn(txn).await }
                })
                .await
            },
            answered,
        );
        cleanup.after(finished);
        let response = put.await?;
        if !response.succeeded() {
            return Ok((0, false, None));
        }
        let Some(revision) = response.header().map(|h| h.revision()) else {
            return Err(Error::backend(BACKEND, "etcd answered the acquire transaction without a revision").into());
        };
        let mut gets = responses(&response).into_iter().skip(1);
        let head = self.first_contender(keys, gets.next().unwrap_or_default(), first(SortOrder::Ascend)).await?;
        let first = head.is_some_and(|kv| kv.create_revision() == revision);
        // Mine is the newest key: the newest two are mine and my predecessor, unless one of
        // them is a nested namespace's key (then `wait_turn` reads them).
        let around = gets.next().and_then(|newest| {
            let mine = newest.first().is_some_and(|kv| kv.create_revision() == revision);
            (mine && newest.iter().all(|kv| keys.contender(kv))).then(|| Around::of(keys, revision, newest))
        });
        Ok((revision, first, around))
    }

    /// My key and the contender right before it (newest first), as of a revision at least
    /// `floor`: read from the member's own store (serializable: no Raft round, so no wait for
    /// the writes in flight), or linearizably when that member has not reached `floor` yet.
    /// Enough, because deletions never come undone and no new key can come before mine: a
    /// read at or after my key's creation that shows my key shows every contender before it.
    async fn around_me(&self, keys: &Keys, mine: i64, floor: i64) -> Result<Around> {
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
        Ok(Around::of(keys, revision, kvs))
    }

    /// Waits until every contender before me is gone. Watches only the predecessor, and my
    /// own key, whose watch it returns (to become the guard's). `known`: what the put saw.
    async fn wait_turn(&self, keys: &Keys, mine: i64, lease: &dyn Lease, mut known: Option<Around>) -> Result<Unwatch> {
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
        loop {
            let Around { revision, contenders } = match known.take() {
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
                if !same(&read.contenders, &contenders) {
                    known = Some(read);
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = mine_gone.notify.notified() => floor = mine_gone.revision.load(Ordering::Relaxed),
                // Woken, one read decides: the own key's deletion may reach us after the
                // predecessor's (a watch from an older revision is served by etcd's catch-up
                // loop), so only a read shows that the own key is still there.
                _ = woken.notify.notified() => floor = woken.revision.load(Ordering::Relaxed),
                _ = lease.lost() => return Err(lost("its lease was lost")),
            }
        }
    }

    /// The handle's lease for the request's TTL, granted on first use.
    async fn lease(&self, request: &GrantRequest) -> Result<Arc<KeptLease>> {
        let (client, endpoints, ttl, timeout) =
            (Client::clone(&self.client), self.endpoints.clone(), request.ttl, self.settings.timeout);
        self.pool
            .get(request.ttl, request.refresh_interval, || async move {
                let lease = EtcdLease::grant(&client, ttl, &endpoints, timeout).await?;
                let id = format!("{:x}", lease.id);
                Ok((Arc::new(lease) as Arc<dyn LeaseBackend>, id))
            })
            .await
    }

    /// Grants `request` with a key on `lease`. Until the key is the guard's, a cleanup removes
    /// it if the acquire fails or is dropped (see [`Cleanup`] for what happens when that
    /// removal cannot be confirmed).
    async fn grant_on(&self, lease: &Arc<KeptLease>, request: &GrantRequest) -> Result<Option<LockGuard>, EtcdError> {
        match request.kind {
            lockkit_core::GrantKind::Permit { permits } => return self.grant_permit(lease, request, permits).await,
            lockkit_core::GrantKind::Read | lockkit_core::GrantKind::Write => {
                return self.grant_rw(lease, request).await;
            }
            _ => {}
        }
        let prefix = format!("{}/", self.settings.namespace.key(&request.name));
        self.grant_keys(lease, request, Keys { mine: format!("{prefix}{}", lease.id()), prefix }).await
    }

    /// [`grant_on`](Self::grant_on) with the lock's keys given: a lock's, or a semaphore's
    /// internal mutex.
    pub(crate) async fn grant_keys(
        &self,
        lease: &Arc<KeptLease>,
        request: &GrantRequest,
        keys: Keys,
    ) -> Result<Option<LockGuard>, EtcdError> {
        let lease_id = lease_id(lease)?;
        let Some(turn) = self.local.take(&keys.mine, request.wait).await else { return Ok(None) };
        let made_at = Arc::new(AtomicI64::new(0));
        let what = format!("the key {} of lock {:?}", keys.mine, request.name.as_str());
        let mut cleanup = Cleanup::new(lease, what, self.removal(&keys.mine, made_at.clone()));
        cleanup.keep_turn(turn);
        let (revision, first, around) = self.enqueue(&keys, lease_id, &request.holder, &mut cleanup).await?;
        made_at.store(revision, Ordering::SeqCst);
        let own_watch = match (first, request.wait) {
            (true, _) => None,
            (false, false) => {
                return match cleanup.now().await {
                    Ok(()) | Err(Error::LockLost { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                };
            }
            (false, true) => Some(self.wait_turn(&keys, revision, lease.as_ref(), around).await?),
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
                }
                .into());
            }
        };
        let turn = cleanup.disarm();
        Ok(Some(self.guard(request, lease, keys.mine, revision, (watch, signal), turn)?))
    }

    /// The guard of `request`'s grant: the key `key`, made at `revision` on `lease`, watched by
    /// `watch` (which fires `signal` at its deletion).
    pub(crate) fn guard(
        &self,
        request: &GrantRequest,
        lease: &Arc<KeptLease>,
        key: String,
        revision: i64,
        (watch, signal): (i64, lockkit_core::LossSignal),
        turn: Option<Turn>,
    ) -> Result<LockGuard, EtcdError> {
        let reusable = key.rsplit('/').next() == Some(lease.id());
        let grant = EtcdGrant {
            client: self.client.clone(),
            watches: self.watches.clone(),
            watch,
            idled: AtomicBool::new(false),
            reusable,
            key,
            revision,
            lease: lease_id(lease)?,
            name: request.name.to_string(),
            endpoints: self.endpoints.clone(),
            timeout: self.settings.timeout,
            _turn: turn,
        };
        Ok(request.granted(BACKEND, FencingToken::new(revision as u64), lease.clone(), signal, grant))
    }

    /// One attempt at removing my `key`: compared on its create revision once that is known
    /// (`made_at`, 0 until then; this process's turn on the key keeps every other acquire of it
    /// out meanwhile), so a key made anew is left alone. A key gone already counts as removed.
    pub(crate) fn removal(&self, key: &str, made_at: Arc<AtomicI64>) -> Attempt {
        let (client, key, endpoints, timeout) =
            (Client::clone(&self.client), key.to_owned(), self.endpoints.clone(), self.settings.timeout);
        lockkit_core::driver::attempt(move || {
            let (mut client, key, endpoints) = (client.clone(), key.clone(), endpoints.clone());
            let txn = match made_at.load(Ordering::SeqCst) {
                0 => Txn::new(),
                revision => Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, revision)]),
            };
            let txn = txn.and_then([TxnOp::delete(key.clone(), None)]);
            async move {
                match tokio::time::timeout(timeout, client.txn(txn)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(error(&endpoints, e)),
                    Err(_) => Err(no_answer(&endpoints, "removal", timeout)),
                }
            }
        })
    }

    pub(crate) fn unwatch_later(&self, ids: Vec<i64>) -> Unwatch {
        Unwatch(self.watches.clone(), ids)
    }
}

/// The id of a kept lease (its hex name).
pub(crate) fn lease_id(lease: &KeptLease) -> Result<i64, EtcdError> {
    Ok(i64::from_str_radix(lease.id(), 16).map_err(|_| Error::backend(BACKEND, "a lease id is not hex"))?)
}

/// Cancels watches when dropped.
pub(crate) struct Unwatch(Arc<Watches>, Vec<i64>);

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
impl LockBackend for EtcdLocks {
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
        // A lease revoked behind our back is noticed here at the latest: lost, and the acquire
        // made once more on a new one. (A waiter whose lease is lost while it waits is queued
        // again on a fresh lease by the core.)
        on_a_live_lease(
            "etcd lease",
            || async { Ok((self.lease(request).await?, ())) },
            |lease, (), _| async move { self.grant_on(&lease, request).await },
        )
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        self.pool.close().await
    }

    async fn observe_leader(&self, name: &LockName) -> Result<Box<dyn LeaderFeed>> {
        let keys = Keys { mine: String::new(), prefix: format!("{}/", self.settings.namespace.key(name)) };
        let (client, endpoints) = (self.client.clone(), self.endpoints.clone());
        Ok(Box::new(EtcdFeed::new(client, keys, endpoints, self.settings.timeout)))
    }

    async fn inspect(&self, name: &LockName) -> Result<LockStatus> {
        let prefix = format!("{}/", self.settings.namespace.key(name));
        let keys = Keys { mine: String::new(), prefix };
        // Every contender, first in line first: the holder, then the waiters.
        let all = self.get(&keys.prefix, first(SortOrder::Ascend)).await?;
        if let Some(status) = self.semaphore_status(name, &all).or_else(|| self.rw_status(name, &all)) {
            return Ok(status);
        }
        let mut contenders = all.into_iter().filter(|kv| keys.contender(kv));
        let Some(holder) = contenders.next() else { return Ok(LockStatus::free().waiting(0)) };
        let waiting = contenders.count();
        let ttl_left = match holder.lease() {
            0 => None,
            lease => self
                .call(|| {
                    let mut client = Client::clone(&self.client);
                    async move { client.lease_time_to_live(lease, None).await }
                })
                .await
                .ok()
                .filter(|t| t.ttl() >= 0)
                .map(|t| Duration::from_secs(t.ttl() as u64)),
        };
        let metadata = holder_of(&holder);
        let token = FencingToken::new(holder.create_revision() as u64);
        Ok(LockStatus::held(metadata, Some(token), ttl_left).waiting(waiting))
    }

    /// Deletes the holder it read only if its key still has the create revision read (a holder
    /// that went meanwhile may have left its name to a newer key of the same lease, a waiter);
    /// otherwise reads the holder again. The delete is tried once per read: repeated after a
    /// lost answer, its compare would fail and the next holder would go too.
    async fn evict(&self, name: &LockName) -> Result<bool> {
        let prefix = format!("{}/", self.settings.namespace.key(name));
        let keys = Keys { mine: String::new(), prefix };
        let options = first(SortOrder::Ascend);
        let all = self.get(&keys.prefix, options.clone()).await?;
        if let Some(holders) = self.semaphore_holders(name, &all).or_else(|| self.rw_holders(name, &all)) {
            // Every permit's or reader's (or the writer's) key, each compared on its create
            // revision (a newer one is left alone).
            let deletes = holders.iter().map(|(key, revision)| {
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, *revision)])
                    .and_then([TxnOp::delete(key.clone(), None)])
            });
            let mut evicted = false;
            for txn in deletes {
                let (timeout, mut client) = (self.settings.timeout, Client::clone(&self.client));
                match tokio::time::timeout(timeout, client.txn(txn)).await {
                    Ok(answer) => evicted |= answer.map_err(|e| error(&self.endpoints, e))?.succeeded(),
                    Err(_) => return Err(no_answer(&self.endpoints, "force release", timeout)),
                }
            }
            return Ok(evicted);
        }
        for _ in 0..EVICT_TRIES {
            let head = self.get(&keys.prefix, options.clone().with_limit(1)).await?;
            let Some(holder) = self.first_contender(&keys, head, options.clone()).await? else { return Ok(false) };
            let txn = Txn::new()
                .when([Compare::create_revision(holder.key(), CompareOp::Equal, holder.create_revision())])
                .and_then([TxnOp::delete(holder.key(), None)]);
            let (timeout, mut client) = (self.settings.timeout, Client::clone(&self.client));
            let response = match tokio::time::timeout(timeout, client.txn(txn)).await {
                Ok(answer) => answer.map_err(|e| error(&self.endpoints, e))?,
                Err(_) => return Err(no_answer(&self.endpoints, "force release", timeout)),
            };
            if response.succeeded() {
                return Ok(true);
            }
        }
        Err(Error::backend(
            BACKEND,
            format!("lock {:?}: its holder kept changing; force release gave up", name.as_str()),
        ))
    }
}

/// The holder metadata a contender's key holds: its value as text (bytes that are not UTF-8,
/// which another client may write, shown as U+FFFD), `None` when empty.
pub(crate) fn holder_of(kv: &KeyValue) -> Option<String> {
    Some(String::from_utf8_lossy(kv.value()).into_owned()).filter(|v| !v.is_empty())
}

/// How many holders in a row `evict` reads before it gives up (each one gone before its delete).
const EVICT_TRIES: usize = 10;

/// A request of `what` that got no answer within `timeout`: its outcome is unknown.
fn no_answer(endpoints: &str, what: &str, timeout: Duration) -> Error {
    Error::connection(BACKEND, endpoints, format!("no answer to the {what} within {timeout:?}"), None)
}

struct EtcdGrant {
    client: Arc<Client>,
    watches: Arc<Watches>,
    watch: i64,
    /// Whether the watch was kept for the key's next grant, or ended (by the first release
    /// attempt).
    idled: AtomicBool,
    /// Whether a later grant may take the key (`<prefix>/<lease>`) and its watch over.
    reusable: bool,
    key: String,
    revision: i64,
    lease: i64,
    name: String,
    endpoints: String,
    timeout: Duration,
    _turn: Option<Turn>,
}

#[async_trait]
impl Grant for EtcdGrant {
    /// One attempt; the core repeats it until etcd confirms (see [`Grant::release`]).
    async fn release(&self) -> Result<()> {
        // The watch stays, idle, for the next grant of this key (the release's own deletion
        // is ignored: it comes before that grant's revision).
        if !self.idled.swap(true, Ordering::SeqCst) {
            match self.reusable {
                true => self.watches.idle(self.watch).await,
                // A key of one grant only (a permit's, a semaphore's mutex'): no later grant
                // can take its watch over.
                false => self.watches.unwatch(self.watch),
            }
        }
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)])
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        let response = tokio::time::timeout(self.timeout, Client::clone(&self.client).txn(txn))
            .await
            .map_err(|_| no_answer(&self.endpoints, "release", self.timeout))?
            .map_err(|e| error(&self.endpoints, e))?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(Error::not_held(BACKEND, &self.name, "its key was gone or re-created; any newer grant was left alone"))
        }
    }

    /// `concurrency.Election`'s proclaim: a put guarded by the term (the create revision).
    async fn proclaim(&self, value: &str) -> Option<Result<FencingToken>> {
        let (key, revision, lease) = (&self.key, self.revision, self.lease);
        Some(match proclaim(&self.client, key, revision, lease, value, self.timeout, &self.endpoints).await {
            Ok(true) => Ok(FencingToken::new(revision as u64)),
            Ok(false) => Err(Error::not_held(BACKEND, &self.name, "its key was gone or re-created: its term is over")),
            Err(e) => Err(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The core repeats a release until etcd confirms it: the guard's watch is kept idle once,
    /// not once per attempt (a second entry would later cancel the watch of the grant that
    /// adopted it).
    #[tokio::test]
    async fn a_release_tried_twice_keeps_its_watch_idle_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap().port();
        let client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
        let timeout = Duration::from_millis(200);
        let watches = Watches::new(client.clone(), timeout);
        let watch = watches.watch("lock/1", 1, 2, OnDelete::Wake(Default::default())).await.id;
        let grant = EtcdGrant {
            client: Arc::new(client),
            watches: watches.clone(),
            watch,
            idled: AtomicBool::new(false),
            reusable: true,
            key: "lock/1".into(),
            revision: 1,
            lease: 1,
            name: "lock".into(),
            endpoints: format!("127.0.0.1:{port}"),
            timeout,
            _turn: None,
        };
        assert!(grant.release().await.is_err(), "nobody listens there");
        assert!(grant.release().await.is_err());
        assert_eq!(watches.idle_ids().await, [watch]);
    }
}
