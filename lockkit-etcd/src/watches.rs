//! One watch stream per backend handle, carrying every watch the handle needs: waiters watch
//! their predecessor's key, guards their own key, each from a known revision, for deletions.
//! The stream is reopened (and every watch registered again from its revision) when it breaks.
//!
//! A released guard's watch is kept, idle, for the next grant of the same key through the
//! handle (a process takes the same locks again and again): that grant adopts it instead of
//! making a watch and cancelling it on every acquire and release. At most [`MAX_IDLE`] are kept.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions, WatchRequestSender, WatchResponseStream};
use lockkit_core::LossSignal;
use tokio::sync::{Mutex, Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// What a deletion of the watched key does.
#[derive(Clone)]
pub enum OnDelete {
    /// Wakes a waiter.
    Wake(Arc<Woken>),
    /// Fires a guard's loss signal.
    Lose(LossSignal),
    /// Nothing: a released guard's watch, kept for the key's next grant.
    Idle,
}

/// How many idle watches a handle keeps.
pub const MAX_IDLE: usize = 64;

/// A waiter's wake-up: notified when a watched key is deleted (or its watch ends), with the
/// revision etcd had reached when it said so.
#[derive(Default)]
pub struct Woken {
    pub notify: Notify,
    pub revision: AtomicI64,
}

struct Target {
    key: Vec<u8>,
    /// The first revision watched (0: from now, until etcd says which revision that was);
    /// deletions before it (an earlier grant's, for an adopted watch) are ignored.
    from: i64,
    on_delete: OnDelete,
    /// Told the revision etcd had reached when it created the watch.
    created: Option<oneshot::Sender<i64>>,
}

/// A watch being made.
pub struct Watch {
    pub id: i64,
    /// The revision etcd had reached when it created the watch, which covers every revision
    /// after it (no answer if the watch ended first).
    pub created: oneshot::Receiver<i64>,
}

pub struct Watches {
    client: Client,
    state: Mutex<State>,
    ids: AtomicI64,
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct State {
    sender: Option<WatchRequestSender>,
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
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(Watches {
            client,
            state: Mutex::new(State::default()),
            ids: AtomicI64::new(1),
            stop: CancellationToken::new(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Watches `key` for its deletion at revision `from` or later (0: from now on). Cancelled on
    /// `unwatch`.
    pub async fn watch(
        self: &Arc<Self>,
        key: &str,
        from: i64,
        on_delete: OnDelete,
    ) -> Result<Watch, etcd_client::Error> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let (told, created) = oneshot::channel();
        let mut state = self.state.lock().await;
        state.targets.insert(id, Target { key: key.as_bytes().to_vec(), from, on_delete, created: Some(told) });
        let sent = match &mut state.sender {
            Some(sender) => sender.watch(key, Some(options(id, from))).await,
            None => self.open(&mut state).await,
        };
        if sent.is_err() {
            state.targets.remove(&id);
        }
        sent.map(|()| Watch { id, created })
    }

    /// Watches `key` for deletion from revision `from` (not 0) for `on_delete`: with the idle
    /// watch of `key` if there is one, else with a new one.
    pub async fn reuse_or_watch(
        self: &Arc<Self>,
        key: &str,
        from: i64,
        on_delete: OnDelete,
    ) -> Result<i64, etcd_client::Error> {
        match self.adopt(key, from, on_delete.clone()).await {
            Some(id) => Ok(id),
            None => Ok(self.watch(key, from, on_delete).await?.id),
        }
    }

    /// Adopts the idle watch of `key`, if there is one that covers revision `from` on, for
    /// `on_delete` from `from` on.
    async fn adopt(&self, key: &str, from: i64, on_delete: OnDelete) -> Option<i64> {
        let mut state = self.state.lock().await;
        let State { targets, idle, .. } = &mut *state;
        let at = idle.iter().position(|id| targets.get(id).is_some_and(|t| t.key == key.as_bytes()))?;
        let id = idle.remove(at)?;
        let target = targets.get_mut(&id)?;
        if target.from == 0 || target.from > from {
            // Not known to cover `from` (the stream was reopened meanwhile): not this one.
            Self::cancel_in(&mut state, id).await;
            return None;
        }
        target.from = from;
        target.on_delete = on_delete;
        Some(id)
    }

    /// Keeps a released guard's watch, idle, for the key's next grant (in the background when
    /// the stream is busy).
    pub async fn idle(self: &Arc<Self>, id: i64) {
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

    /// Gives a watch that has not fired yet a new target; `false` when it had fired already.
    pub async fn retarget(&self, id: i64, on_delete: OnDelete) -> bool {
        let mut state = self.state.lock().await;
        state.targets.get_mut(&id).map(|target| target.on_delete = on_delete).is_some()
    }

    /// Stops a watch (in the background: it may be called from `Drop`).
    pub fn unwatch(self: &Arc<Self>, id: i64) {
        let watches = self.clone();
        self.runtime.spawn(async move { Self::cancel_in(&mut *watches.state.lock().await, id).await });
    }

    async fn cancel_in(state: &mut State, id: i64) {
        if state.targets.remove(&id).is_some()
            && let Some(sender) = &mut state.sender
        {
            let _ = sender.cancel(id).await;
        }
    }

    /// Opens the stream with every registered watch, and starts reading it. (Boxed: it and
    /// `dispatch` start each other.)
    fn open<'a>(self: &'a Arc<Self>, state: &'a mut State) -> BoxFuture<'a, Result<(), etcd_client::Error>> {
        Box::pin(self.open_inner(state))
    }

    async fn open_inner(self: &Arc<Self>, state: &mut State) -> Result<(), etcd_client::Error> {
        let mut targets = state.targets.iter();
        let Some((&first_id, first)) = targets.next() else { return Ok(()) };
        // Opening may hit a dead member first: try a few times, as unary calls do.
        let mut attempt = 0;
        let stream = loop {
            match self.client.clone().watch(first.key.clone(), Some(options(first_id, first.from))).await {
                Err(e) if attempt < 20 && crate::is_transient(&e) => attempt += 1,
                other => break other?,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (mut sender, responses) = stream.split();
        for (&id, target) in targets {
            sender.watch(target.key.clone(), Some(options(id, target.from))).await?;
        }
        state.sender = Some(sender);
        let (watches, stop) = (Arc::downgrade(self), self.stop.clone());
        self.runtime.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = dispatch(watches, responses) => {}
            }
        });
        Ok(())
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Reads the stream, firing targets on deletion; reopens the stream when it breaks.
async fn dispatch(watches: Weak<Watches>, mut responses: WatchResponseStream) {
    loop {
        let message = responses.message().await;
        let Some(watches) = watches.upgrade() else { return };
        let mut state = watches.state.lock().await;
        match message {
            Ok(Some(response)) => {
                let id = response.watch_id();
                if response.created()
                    && let Some(target) = state.targets.get_mut(&id)
                {
                    let revision = response.header().map_or(0, |h| h.revision());
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
                if let Some(target) = state.targets.remove(&id) {
                    match target.on_delete {
                        OnDelete::Idle => state.idle.retain(|i| *i != id),
                        OnDelete::Wake(woken) => {
                            let revision = response.header().map_or(0, |h| h.revision());
                            woken.revision.fetch_max(revision, Ordering::Relaxed);
                            woken.notify.notify_one();
                        }
                        OnDelete::Lose(signal) if deleted => signal
                            .lose("its key was deleted behind its back (lease revoked or expired, or the key removed)"),
                        OnDelete::Lose(signal) => signal.lose(format!(
                            "etcd stopped watching its key ({}); it can no longer be sure to hold the lock",
                            response.cancel_reason()
                        )),
                    }
                }
                if deleted && let Some(sender) = &mut state.sender {
                    let _ = sender.cancel(id).await;
                }
            }
            _ => {
                // The stream broke (server restart, leader change, network): reopen it, with
                // every watch registered again from its revision, so no deletion is missed.
                state.sender = None;
                let mut backoff = Duration::from_millis(50);
                loop {
                    match watches.open(&mut state).await {
                        Ok(()) => return,
                        Err(e) => tracing::debug!(error = %e, "reopening the etcd watch stream failed"),
                    }
                    drop(state);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    state = watches.state.lock().await;
                }
            }
        }
    }
}
