//! Wake-ups on release: one pub/sub connection per instance and backend handle, shared by all
//! its waiters. A waiter watches its lock's channel; a release publishes on it the owner token
//! of the one waiter it wakes (fair mode: the first in line), and only that waiter wakes.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use redis::aio::PubSubSink;
use tokio::runtime::Handle;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// How long a channel stays subscribed after its last local waiter left.
const LINGER: Duration = Duration::from_secs(1);

pub struct Wakeups {
    /// Subscriptions change only under this lock, so an unsubscribe can never undo a newer
    /// subscribe of the same channel.
    state: Mutex<State>,
    stop: CancellationToken,
    runtime: Handle,
    timeout: Duration,
}

struct State {
    sinks: Vec<Option<PubSubSink>>,
    channels: HashMap<String, Channel>,
}

/// The local waiters of one channel: (owner, its wake-up).
struct Channel {
    watchers: Vec<(String, Arc<Notify>)>,
    /// Not subscribed yet (a new entry).
    fresh: bool,
}

impl Channel {
    /// Wakes the waiter `owner` names, if it is one of these.
    fn wake(&self, owner: &str) {
        if let Some((_, notify)) = self.watchers.iter().find(|(o, _)| o == owner) {
            notify.notify_one();
        }
    }
}

impl Wakeups {
    /// Starts listening on every instance (reconnecting in the background as needed).
    pub fn start(clients: Vec<redis::Client>, timeout: Duration) -> Arc<Self> {
        let runtime = Handle::current();
        let wakeups = Arc::new(Wakeups {
            state: Mutex::new(State { sinks: vec![None; clients.len()], channels: HashMap::new() }),
            stop: CancellationToken::new(),
            runtime: runtime.clone(),
            timeout,
        });
        for (index, client) in clients.into_iter().enumerate() {
            let (weak, stop) = (Arc::downgrade(&wakeups), wakeups.stop.clone());
            runtime.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = listen(weak, index, client, timeout) => {}
                }
            });
        }
        wakeups
    }

    /// Watches a channel for `owner`: subscribed (and confirmed by every reachable instance) on
    /// return.
    pub async fn watch(self: &Arc<Self>, channel: &str, owner: &str) -> Watch {
        let mut state = self.state.lock().await;
        let entry =
            state.channels.entry(channel.to_owned()).or_insert_with(|| Channel { watchers: Vec::new(), fresh: true });
        let notify = Arc::new(Notify::new());
        // A channel without watchers may still be subscribed (lingering): no new SUBSCRIBE.
        let first = entry.watchers.is_empty() && entry.fresh;
        entry.fresh = false;
        entry.watchers.push((owner.to_owned(), notify.clone()));
        if first {
            let subscribes = state.sinks.iter().flatten().cloned().map(|mut sink| {
                let channel = channel.to_owned();
                async move { tokio::time::timeout(self.timeout, sink.subscribe(channel)).await }
            });
            join_all(subscribes).await;
        }
        Watch { wakeups: self.clone(), channel: channel.to_owned(), owner: owner.to_owned(), notify }
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A waiter's interest in one channel; unsubscribed when the last watcher of it is dropped.
pub struct Watch {
    wakeups: Arc<Wakeups>,
    channel: String,
    owner: String,
    pub notify: Arc<Notify>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let (wakeups, channel, owner) =
            (self.wakeups.clone(), std::mem::take(&mut self.channel), std::mem::take(&mut self.owner));
        self.wakeups.runtime.spawn(async move {
            let mut state = wakeups.state.lock().await;
            let Some(entry) = state.channels.get_mut(&channel) else { return };
            entry.watchers.retain(|(o, _)| *o != owner);
            if !entry.watchers.is_empty() {
                return;
            }
            // Stay subscribed a little while: a contender usually waits again soon, and then
            // needs no SUBSCRIBE round trip. Unsubscribe if nobody came back.
            drop(state);
            tokio::time::sleep(LINGER).await;
            let mut state = wakeups.state.lock().await;
            if !state.channels.get(&channel).is_some_and(|c| c.watchers.is_empty()) {
                return;
            }
            state.channels.remove(&channel);
            for mut sink in state.sinks.iter().flatten().cloned() {
                let _ = tokio::time::timeout(wakeups.timeout, sink.unsubscribe(&channel)).await;
            }
        });
    }
}

/// Keeps one instance's pub/sub connection up and dispatches its messages.
async fn listen(wakeups: Weak<Wakeups>, index: usize, client: redis::Client, timeout: Duration) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Ok(Ok(pubsub)) = tokio::time::timeout(timeout, client.get_async_pubsub()).await {
            backoff = Duration::from_millis(50);
            let (mut sink, mut stream) = pubsub.split();
            {
                let Some(wakeups) = wakeups.upgrade() else { return };
                let mut state = wakeups.state.lock().await;
                let channels: Vec<String> = state.channels.keys().cloned().collect();
                if !channels.is_empty() {
                    let _ = tokio::time::timeout(timeout, sink.subscribe(channels)).await;
                }
                state.sinks[index] = Some(sink);
                // Releases may have been missed while disconnected: let every waiter try again.
                state.channels.values().flat_map(|c| &c.watchers).for_each(|(_, notify)| notify.notify_one());
            }
            while let Some(message) = stream.next().await {
                let Some(wakeups) = wakeups.upgrade() else { return };
                if let Some(channel) = wakeups.state.lock().await.channels.get(message.get_channel_name()) {
                    channel.wake(&message.get_payload::<String>().unwrap_or_default());
                }
            }
            let Some(wakeups) = wakeups.upgrade() else { return };
            wakeups.state.lock().await.sinks[index] = None;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
