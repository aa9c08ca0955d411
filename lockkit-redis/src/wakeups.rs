//! Wake-ups on release: one pub/sub connection per instance and backend handle (on a cluster,
//! sharded pub/sub on the cluster connection), shared by all its waiters. A waiter watches its
//! lock's channel; a release publishes on it the owner token of the one waiter it wakes (fair
//! mode: the first in line), and only that waiter wakes.
//!
//! No lock is held across a network call: the handle's state is a plain mutex, and each
//! channel has a gate of its own, so a SUBSCRIBE that hangs on one stopped server delays only
//! the waiters of that channel, and only by the per-server call timeout.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult};
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{Mutex as Gate, Notify};
use tokio_util::sync::CancellationToken;

/// How long a channel stays subscribed after its last local waiter left.
const LINGER: Duration = Duration::from_secs(1);

/// Where the messages of one instance come from.
pub(crate) enum Feed {
    /// One server: a pub/sub connection of its own (SUBSCRIBE), reconnected here.
    Server(Box<redis::Client>),
    /// A cluster: sharded pub/sub (SSUBSCRIBE) on the cluster connection, which subscribes
    /// again after reconnects and slot moves by itself; its pushes arrive on the receiver.
    Cluster(ClusterConnection, UnboundedReceiver<PushInfo>),
}

/// Where subscriptions of one instance are sent.
#[derive(Clone)]
enum Sink {
    Server(PubSubSink),
    Cluster(ClusterConnection),
}

impl Sink {
    async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Sink::Server(sink) => sink.subscribe(channel).await,
            Sink::Cluster(connection) => connection.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Sink::Server(sink) => sink.unsubscribe(channel).await,
            Sink::Cluster(connection) => connection.sunsubscribe(channel).await,
        }
    }
}

pub(crate) struct Wakeups {
    /// Held only for bookkeeping, never across an await.
    state: std::sync::Mutex<State>,
    stop: CancellationToken,
    runtime: Handle,
    /// Bound on each (un)subscribe on one instance: the per-server call timeout.
    timeout: Duration,
}

struct State {
    sinks: Vec<Option<Sink>>,
    channels: HashMap<String, Channel>,
}

/// The local waiters of one channel: (owner, its wake-up).
struct Channel {
    watchers: Vec<(String, Arc<Notify>)>,
    /// Whether the channel is subscribed. Subscribes and unsubscribes of the channel happen
    /// only while holding it, so an unsubscribe can never undo a newer subscribe.
    gate: Arc<Gate<bool>>,
}

impl Channel {
    /// Wakes the waiter `owner` names, if it is one of these, and every observer.
    fn wake(&self, owner: &str) {
        if let Some((_, notify)) = self.watchers.iter().find(|(o, _)| o == owner) {
            notify.notify_one();
        }
        for (_, notify) in self.watchers.iter().filter(|(o, _)| is_observer(o)) {
            notify.notify_one();
        }
    }
}

/// A watcher name that is woken by every message of its channel: an election's observer
/// (lockkit's owner values start with hex digits, never with this).
pub(crate) fn observer_name() -> String {
    format!("*{:x}", lockkit_core::driver::random_u64())
}

fn is_observer(name: &str) -> bool {
    name.starts_with('*')
}

impl State {
    /// Lets every waiter try again (releases may have been missed while disconnected).
    fn wake_all(&self) {
        self.channels.values().flat_map(|c| &c.watchers).for_each(|(_, notify)| notify.notify_one());
    }

    /// Whether the channel has no watchers and its entry is still the one `gate` belongs to.
    fn idle(&self, channel: &str, gate: &Arc<Gate<bool>>) -> bool {
        self.channels.get(channel).is_some_and(|c| c.watchers.is_empty() && Arc::ptr_eq(&c.gate, gate))
    }
}

impl Wakeups {
    /// Starts listening on every instance (reconnecting in the background as needed, each
    /// connect bounded by `connect_timeout`); `timeout` bounds each subscribe on one instance.
    pub(crate) fn start(feeds: Vec<Feed>, connect_timeout: Duration, timeout: Duration) -> Arc<Self> {
        let runtime = Handle::current();
        let wakeups = Arc::new(Wakeups {
            state: std::sync::Mutex::new(State { sinks: vec![None; feeds.len()], channels: HashMap::new() }),
            stop: CancellationToken::new(),
            runtime: runtime.clone(),
            timeout,
        });
        for (index, feed) in feeds.into_iter().enumerate() {
            let (weak, stop) = (Arc::downgrade(&wakeups), wakeups.stop.clone());
            let listen = async move {
                match feed {
                    Feed::Server(client) => listen(weak, index, *client, connect_timeout).await,
                    Feed::Cluster(connection, pushes) => listen_cluster(weak, index, connection, pushes).await,
                }
            };
            runtime.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = listen => {}
                }
            });
        }
        wakeups
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connected sinks, now.
    fn sinks(&self) -> Vec<Sink> {
        self.state().sinks.iter().flatten().cloned().collect()
    }

    /// Subscribes (or unsubscribes) `channel` on every connected instance at once, each bounded
    /// by the call timeout; an instance that does not answer in time is left to the fallback
    /// timer (and to the resubscribe when its connection is replaced).
    async fn on_sinks(&self, channel: &str, subscribe: bool) {
        let calls = self.sinks().into_iter().map(|mut sink| async move {
            let call = async {
                match subscribe {
                    true => sink.subscribe(channel).await,
                    false => sink.unsubscribe(channel).await,
                }
            };
            let _ = tokio::time::timeout(self.timeout, call).await;
        });
        join_all(calls).await;
    }

    /// Watches a channel for `owner`: subscribed (and confirmed by every instance that answered
    /// within the call timeout) on return.
    pub(crate) async fn watch(self: &Arc<Self>, channel: &str, owner: &str) -> Watch {
        let notify = Arc::new(Notify::new());
        let gate = {
            let mut state = self.state();
            let entry = state
                .channels
                .entry(channel.to_owned())
                .or_insert_with(|| Channel { watchers: Vec::new(), gate: Arc::new(Gate::new(false)) });
            entry.watchers.push((owner.to_owned(), notify.clone()));
            entry.gate.clone()
        };
        let watch = Watch { wakeups: self.clone(), channel: channel.to_owned(), owner: owner.to_owned(), notify };
        // A channel that is still subscribed (lingering) needs no new SUBSCRIBE.
        let mut subscribed = gate.lock().await;
        if !*subscribed {
            self.on_sinks(channel, true).await;
            *subscribed = true;
        }
        watch
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A waiter's interest in one channel; unsubscribed when the last watcher of it is dropped.
pub(crate) struct Watch {
    wakeups: Arc<Wakeups>,
    channel: String,
    owner: String,
    pub(crate) notify: Arc<Notify>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let (wakeups, channel, owner) =
            (self.wakeups.clone(), std::mem::take(&mut self.channel), std::mem::take(&mut self.owner));
        self.wakeups.runtime.spawn(async move {
            let gate = {
                let mut state = wakeups.state();
                let Some(entry) = state.channels.get_mut(&channel) else { return };
                entry.watchers.retain(|(o, _)| *o != owner);
                if !entry.watchers.is_empty() {
                    return;
                }
                entry.gate.clone()
            };
            // Stay subscribed a little while: a contender usually waits again soon, and then
            // needs no SUBSCRIBE round trip. Unsubscribe if nobody came back.
            tokio::time::sleep(LINGER).await;
            let mut subscribed = gate.lock().await;
            if !wakeups.state().idle(&channel, &gate) {
                return;
            }
            // Also when not marked subscribed: a watch cancelled in the middle of its
            // SUBSCRIBE may have reached some servers.
            wakeups.on_sinks(&channel, false).await;
            *subscribed = false;
            // A waiter that came meanwhile waits at the gate, and subscribes again after us.
            let mut state = wakeups.state();
            if state.idle(&channel, &gate) {
                state.channels.remove(&channel);
            }
        });
    }
}

/// Keeps one server's pub/sub connection up and dispatches its messages.
async fn listen(wakeups: Weak<Wakeups>, index: usize, client: redis::Client, connect_timeout: Duration) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Ok(Ok(pubsub)) = tokio::time::timeout(connect_timeout, client.get_async_pubsub()).await {
            backoff = Duration::from_millis(50);
            let (mut sink, mut stream) = pubsub.split();
            {
                let Some(wakeups) = wakeups.upgrade() else { return };
                // In place first, so that a watch from now on subscribes here too.
                let channels: Vec<String> = {
                    let mut state = wakeups.state();
                    state.sinks[index] = Some(Sink::Server(sink.clone()));
                    state.channels.keys().cloned().collect()
                };
                if !channels.is_empty() {
                    let _ = tokio::time::timeout(wakeups.timeout, sink.subscribe(channels)).await;
                }
                wakeups.state().wake_all();
            }
            while let Some(message) = stream.next().await {
                let Some(wakeups) = wakeups.upgrade() else { return };
                if let Some(channel) = wakeups.state().channels.get(message.get_channel_name()) {
                    channel.wake(&message.get_payload::<String>().unwrap_or_default());
                }
            }
            let Some(wakeups) = wakeups.upgrade() else { return };
            wakeups.state().sinks[index] = None;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Dispatches a cluster's sharded messages. The cluster connection reconnects and
/// resubscribes by itself; a lost node connection lets every waiter try again.
async fn listen_cluster(
    wakeups: Weak<Wakeups>,
    index: usize,
    connection: ClusterConnection,
    mut pushes: UnboundedReceiver<PushInfo>,
) {
    match wakeups.upgrade() {
        Some(wakeups) => wakeups.state().sinks[index] = Some(Sink::Cluster(connection)),
        None => return,
    }
    while let Some(push) = pushes.recv().await {
        let Some(wakeups) = wakeups.upgrade() else { return };
        match (push.kind, push.data.as_slice()) {
            (PushKind::SMessage, [channel, payload, ..]) => {
                let channel: String = redis::from_redis_value_ref(channel).unwrap_or_default();
                if let Some(channel) = wakeups.state().channels.get(&channel) {
                    channel.wake(&redis::from_redis_value_ref::<String>(payload).unwrap_or_default());
                }
            }
            (PushKind::Disconnection, _) => wakeups.state().wake_all(),
            _ => {}
        }
    }
}
