//! One watch stream per backend handle, carrying every watch the handle needs: waiters watch
//! their predecessor's key, guards their own key, each for the deletion of one incarnation of
//! the key (its create revision), from a known revision.
//!
//! **One stream, kept by one task.** The first watch starts a task that opens the stream, reads
//! it, and reopens it when it breaks (pausing between tries while etcd is unreachable). A watch
//! made while the stream is being (re)opened is only registered: the task sends it. So there is
//! never a second stream, whose watches nobody would cancel.
//!
//! **Resuming from a read.** A watch sent on an earlier stream resumes from a fresh read of its
//! key, not from its first revision, which a compaction may have passed (etcd would cancel it,
//! and a guard would take that for a loss): a key still there with the watched create revision
//! is watched again from the read's revision + 1; a key gone, or made anew, counts as deleted. A
//! watch etcd cancels for a compaction makes the task reopen the stream, so it resumes the same way.
//!
//! A released guard's watch is kept, idle, for the next grant of the same key through the
//! handle (a process takes the same locks again and again): that grant adopts it instead of
//! making a watch and cancelling it on every acquire and release. At most [`MAX_IDLE`] are kept.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{
    Client, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions, WatchRequestSender,
    WatchResponseStream,
};
use lockkit_core::LossSignal;
use tokio::sync::{Mutex, Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// What a deletion of the watched key does.
#[derive(Clone)]
pub(crate) enum OnDelete {
    /// Wakes a waiter.
    Wake(Arc<Woken>),
    /// Fires a guard's loss signal.
    Lose(LossSignal),
    /// Nothing: a released guard's watch, kept for the key's next grant.
    Idle,
}

/// How many idle watches a handle keeps.
pub(crate) const MAX_IDLE: usize = 64;

/// The first pause between tries to open the stream; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// How many keys one resuming read asks for (etcd allows 128 operations per transaction).
const READ_BATCH: usize = 64;

/// A waiter's wake-up: notified when a watched key is deleted (or its watch ends), with the
/// revision etcd had reached when it said so.
#[derive(Default)]
pub(crate) struct Woken {
    pub notify: Notify,
    pub revision: AtomicI64,
}

struct Target {
    key: Vec<u8>,
    /// The create revision of the key whose deletion is watched.
    created_at: i64,
    /// The first revision watched (0: from now, until etcd says which revision that was);
    /// deletions before it (an earlier grant's, for an adopted watch) are ignored.
    from: i64,
    on_delete: OnDelete,
    /// Told the revision etcd had reached when it created the watch.
    created: Option<oneshot::Sender<i64>>,
    /// Sent on a stream: resuming it on another takes a read of its key.
    sent: bool,
}

/// A watch being made.
pub(crate) struct Watch {
    pub id: i64,
    /// The revision etcd had reached when it created the watch, which covers every revision
    /// after it (no answer if the watch ended first).
    pub created: oneshot::Receiver<i64>,
}

/// The handle's watch stream.
enum Stream {
    /// None: the next watch starts the task that opens it.
    Closed,
    /// The task is opening it, and sends every registered watch once it is open.
    Opening,
    Open(WatchRequestSender),
}

pub(crate) struct Watches {
    client: Client,
    /// Bounds each read and each opening of the stream.
    timeout: Duration,
    state: Mutex<State>,
    ids: AtomicI64,
    /// Ends the stream task's pause between tries: a new watch is waiting for the stream.
    kick: Arc<Notify>,
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
}

struct State {
    stream: Stream,
    targets: HashMap<i64, Target>,
    /// Idle watches, oldest first.
    idle: VecDeque<i64>,
}

/// A deletions-only watch with a chosen id, from revision `from` (0: from now on).
fn options(id: i64, from: i64) -> WatchOptions {
    let options = WatchOptions::new().with_watch_id(id).with_filters([WatchFilterType::NoPut]);
    if from > 0 { options.with_start_revision(from) } else { options }
}

impl Watches {
    pub(crate) fn new(client: Client, timeout: Duration) -> Arc<Self> {
        Arc::new(Watches {
            client,
            timeout,
            state: Mutex::new(State { stream: Stream::Closed, targets: HashMap::new(), idle: VecDeque::new() }),
            ids: AtomicI64::new(1),
            kick: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Watches `key`, made at revision `created_at`, for its deletion at revision `from` or
    /// later (0: from now on). Cancelled on `unwatch`. When the stream is not open the watch is
    /// sent once it is.
    pub(crate) async fn watch(self: &Arc<Self>, key: &str, created_at: i64, from: i64, on_delete: OnDelete) -> Watch {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (told, created) = oneshot::channel();
        let key = key.as_bytes().to_vec();
        let mut target = Target { key, created_at, from, on_delete, created: Some(told), sent: false };
        let mut state = self.state.lock().await;
        match &mut state.stream {
            // A send fails only when the stream broke: its task reopens it with this watch.
            Stream::Open(sender) => {
                target.sent = sender.watch(target.key.clone(), Some(options(id, from))).await.is_ok()
            }
            Stream::Opening => self.kick.notify_one(),
            Stream::Closed => {
                state.stream = Stream::Opening;
                self.start();
            }
        }
        state.targets.insert(id, target);
        Watch { id, created }
    }

    /// Watches `key`, made at revision `created_at`, for its deletion from `created_at + 1` on
    /// for `on_delete`: with the idle watch of `key` if there is one, else with a new one.
    pub(crate) async fn reuse_or_watch(self: &Arc<Self>, key: &str, created_at: i64, on_delete: OnDelete) -> i64 {
        match self.adopt(key, created_at, on_delete.clone()).await {
            Some(id) => id,
            None => self.watch(key, created_at, created_at + 1, on_delete).await.id,
        }
    }

    /// Adopts the idle watch of `key`, if there is one that the open stream has carried since
    /// before `created_at + 1`, for `on_delete` from there on.
    async fn adopt(&self, key: &str, created_at: i64, on_delete: OnDelete) -> Option<i64> {
        let mut state = self.state.lock().await;
        let State { targets, idle, stream } = &mut *state;
        let at = idle.iter().position(|id| targets.get(id).is_some_and(|t| t.key == key.as_bytes()))?;
        let id = idle.remove(at)?;
        let target = targets.get_mut(&id)?;
        let from = created_at + 1;
        if !matches!(stream, Stream::Open(_)) || !target.sent || target.from == 0 || target.from > from {
            // Not known to cover `from` (the stream is being reopened): not this one.
            Self::cancel_in(&mut state, id).await;
            return None;
        }
        (target.created_at, target.from, target.on_delete) = (created_at, from, on_delete);
        Some(id)
    }

    /// Keeps a released guard's watch, idle, for the key's next grant (in the background when
    /// the state is busy).
    pub(crate) async fn idle(self: &Arc<Self>, id: i64) {
        match self.state.try_lock() {
            Ok(mut state) => Self::idle_in(&mut state, id).await,
            Err(_) => {
                let watches = self.clone();
                self.runtime.spawn(async move { Self::idle_in(&mut *watches.state.lock().await, id).await });
            }
        }
    }

    async fn idle_in(state: &mut State, id: i64) {
        let Some(target) = state.targets.get_mut(&id) else { return };
        target.on_delete = OnDelete::Idle;
        state.idle.push_back(id);
        if state.idle.len() > MAX_IDLE
            && let Some(oldest) = state.idle.pop_front()
        {
            Self::cancel_in(state, oldest).await;
        }
    }

    /// The idle watches, oldest first.
    #[cfg(test)]
    pub(crate) async fn idle_ids(&self) -> Vec<i64> {
        self.state.lock().await.idle.iter().copied().collect()
    }

    /// Gives a watch that has not fired yet a new target; `false` when it had fired already.
    pub(crate) async fn retarget(&self, id: i64, on_delete: OnDelete) -> bool {
        let mut state = self.state.lock().await;
        state.targets.get_mut(&id).map(|target| target.on_delete = on_delete).is_some()
    }

    /// Stops a watch (in the background: it may be called from `Drop`).
    pub(crate) fn unwatch(self: &Arc<Self>, id: i64) {
        let watches = self.clone();
        self.runtime.spawn(async move { Self::cancel_in(&mut *watches.state.lock().await, id).await });
    }

    async fn cancel_in(state: &mut State, id: i64) {
        if state.targets.remove(&id).is_some()
            && let Stream::Open(sender) = &mut state.stream
        {
            let _ = sender.cancel(id).await;
        }
    }

    /// Starts the task that keeps the stream open while there is anything to watch.
    fn start(self: &Arc<Self>) {
        let (watches, kick, stop) = (Arc::downgrade(self), self.kick.clone(), self.stop.clone());
        self.runtime.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = keep_open(watches, kick) => {}
            }
        });
    }

    /// Opens the stream with every watch registered, those sent on an earlier stream resumed
    /// from a read of their key. `None` when there is nothing to watch: the stream is closed.
    async fn open(&self) -> Result<Option<WatchResponseStream>, etcd_client::Error> {
        let earlier: Vec<(i64, Vec<u8>, i64)> = {
            let state = self.state.lock().await;
            state.targets.iter().filter(|(_, t)| t.sent).map(|(id, t)| (*id, t.key.clone(), t.created_at)).collect()
        };
        let keys: Vec<Vec<u8>> = earlier.iter().map(|(_, key, _)| key.clone()).collect();
        let found = self.bounded(self.read(&keys)).await?;
        let wanted: Vec<(i64, Vec<u8>, i64)> = {
            let mut state = self.state.lock().await;
            for ((id, _, created_at), (now_created_at, revision)) in earlier.into_iter().zip(found) {
                Self::resume_in(&mut state, id, created_at, now_created_at, revision);
            }
            if state.targets.is_empty() {
                state.stream = Stream::Closed;
                return Ok(None);
            }
            state.targets.iter().map(|(id, t)| (*id, t.key.clone(), t.from)).collect()
        };
        let ((first_id, first_key, first_from), rest) = wanted.split_first().expect("not empty");
        let mut client = self.client.clone();
        let opening = client.watch(first_key.clone(), Some(options(*first_id, *first_from)));
        let (mut sender, responses) = self.bounded(opening).await?.split();
        for (id, key, from) in rest {
            sender.watch(key.clone(), Some(options(*id, *from))).await?;
        }
        // Watches ended or made while it opened: cancel or send them.
        let mut state = self.state.lock().await;
        let sent: HashSet<i64> = wanted.iter().map(|(id, _, _)| *id).collect();
        for id in sent.iter().filter(|id| !state.targets.contains_key(id)) {
            sender.cancel(*id).await?;
        }
        for (id, target) in state.targets.iter_mut() {
            if !sent.contains(id) {
                sender.watch(target.key.clone(), Some(options(*id, target.from))).await?;
            }
            target.sent = true;
        }
        state.stream = Stream::Open(sender);
        Ok(Some(responses))
    }

    /// A watch sent on an earlier stream, resumed from a read at `revision` that found its key
    /// made at `now_created_at` (0: absent): from the read on if it is the same key, else ended.
    fn resume_in(state: &mut State, id: i64, created_at: i64, now_created_at: i64, revision: i64) {
        let Some(target) = state.targets.get_mut(&id) else { return };
        if target.created_at != created_at {
            return; // adopted for another grant meanwhile: it was made for that one
        }
        if now_created_at == created_at {
            target.from = revision + 1;
        } else {
            Self::end(state, id, true, revision, "");
        }
    }

    /// The create revision of each key (0: absent) and the revision it was read at.
    async fn read(&self, keys: &[Vec<u8>]) -> Result<Vec<(i64, i64)>, etcd_client::Error> {
        let mut found = Vec::with_capacity(keys.len());
        for batch in keys.chunks(READ_BATCH) {
            let gets: Vec<TxnOp> =
                batch.iter().map(|key| TxnOp::get(key.clone(), Some(GetOptions::new().with_keys_only()))).collect();
            let response = self.client.clone().txn(Txn::new().and_then(gets)).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            found.extend(response.op_responses().into_iter().map(|op| match op {
                TxnOpResponse::Get(get) => (get.kvs().first().map_or(0, |kv| kv.create_revision()), revision),
                _ => (0, revision),
            }));
        }
        Ok(found)
    }

    /// `request`, bounded by the request timeout.
    async fn bounded<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, etcd_client::Error> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result,
            Err(_) => Err(etcd_client::Error::WatchError(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// Ends a watch: its key was deleted (`deleted`), or etcd stopped watching it (`why`).
    fn end(state: &mut State, id: i64, deleted: bool, revision: i64, why: &str) {
        let Some(target) = state.targets.remove(&id) else { return };
        match target.on_delete {
            OnDelete::Idle => state.idle.retain(|i| *i != id),
            OnDelete::Wake(woken) => {
                woken.revision.fetch_max(revision, Ordering::Relaxed);
                woken.notify.notify_one();
            }
            OnDelete::Lose(signal) if deleted => {
                signal.lose("its key was deleted behind its back (lease revoked or expired, or the key removed)")
            }
            OnDelete::Lose(signal) => {
                signal.lose(format!("etcd stopped watching its key ({why}); it can no longer be sure to hold the lock"))
            }
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The stream's task: opens the stream, reads it, and opens it again when it breaks, until
/// there is nothing left to watch (or the handle is gone). Between failed tries it pauses, less
/// when `kick`ed.
async fn keep_open(watches: Weak<Watches>, kick: Arc<Notify>) {
    let mut pause = FIRST_PAUSE;
    loop {
        let Some(strong) = watches.upgrade() else { return };
        let opened = strong.open().await;
        drop(strong);
        match opened {
            Ok(Some(responses)) => {
                if dispatch(&watches, responses).await {
                    pause = FIRST_PAUSE;
                }
                continue;
            }
            Ok(None) => return,
            Err(e) => tracing::debug!(error = %e, retry_in = ?pause, "opening the etcd watch stream failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => pause = (pause * 2).min(MAX_PAUSE),
            _ = kick.notified() => {}
        }
    }
}

/// Reads the stream, ending watches on deletion, until it breaks (or etcd cancels a watch for a
/// compaction: every watch then resumes from a read, on a new stream). Whether etcd said anything.
async fn dispatch(watches: &Weak<Watches>, mut responses: WatchResponseStream) -> bool {
    let mut heard = false;
    loop {
        let message = responses.message().await;
        let Some(watches) = watches.upgrade() else { return heard };
        let mut state = watches.state.lock().await;
        let Ok(Some(response)) = message else {
            // The stream broke (server restart, leader change, network): the task reopens it.
            state.stream = Stream::Opening;
            return heard;
        };
        heard = true;
        let id = response.watch_id();
        let revision = response.header().map_or(0, |h| h.revision());
        if response.canceled() && response.compact_revision() > 0 && state.targets.contains_key(&id) {
            tracing::debug!(watch = id, compacted = response.compact_revision(), "resuming the etcd watches");
            state.stream = Stream::Opening;
            return heard;
        }
        if response.created()
            && let Some(target) = state.targets.get_mut(&id)
        {
            if target.from == 0 {
                // Reopened streams watch it from there on, not from a later "now".
                target.from = revision + 1;
            }
            if let Some(told) = target.created.take() {
                let _ = told.send(revision);
            }
        }
        let (from, idle) =
            state.targets.get(&id).map_or((0, false), |t| (t.from, matches!(t.on_delete, OnDelete::Idle)));
        let deleted = response
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete && e.kv().is_some_and(|kv| kv.mod_revision() >= from));
        // An idle watch ends only when etcd cancels it.
        if !response.canceled() && (idle || !deleted) {
            continue;
        }
        Watches::end(&mut state, id, deleted, revision, response.cancel_reason());
        if deleted && let Stream::Open(sender) = &mut state.stream {
            let _ = sender.cancel(id).await;
        }
    }
}
