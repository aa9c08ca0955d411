use lockkit::etcd::etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LockOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchFilterType, WatchOptions,
};

use super::*;

/// The driver's acquire: put `key` with `lease` if absent, and read the first contender.
fn put_if_absent(key: &str, lease: i64, prefix: &str) -> Txn {
    let first = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
    Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, "", Some(PutOptions::new().with_lease(lease))), TxnOp::get(prefix, Some(first))])
}

/// The driver's release: delete `key` only if it still has create revision `revision`.
fn guarded_delete(key: &str, revision: i64) -> Txn {
    Txn::new().when([Compare::create_revision(key, CompareOp::Equal, revision)]).and_then([TxnOp::delete(key, None)])
}

/// The waiter's read: the two newest contenders, serializably.
fn newest_two() -> GetOptions {
    GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Descend).with_serializable().with_limit(2)
}

/// Watches `key` for deletions for as long as the task lives, reading and dropping the events
/// (as a guard's watch on its own key costs the server a notification per deletion).
async fn watch_deletions(client: &mut Client, key: &str) -> tokio::task::JoinHandle<()> {
    let deletions = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
    let (watcher, mut events) = client.watch(key, Some(deletions)).await.unwrap().split();
    tokio::spawn(async move {
        let _watcher = watcher;
        while let Ok(Some(_)) = events.message().await {}
    })
}

/// A lease of `ttl` seconds, kept alive every third of it for as long as the task lives (as a
/// user of the lock RPC keeps the lease of their locks).
async fn kept_alive_lease(client: &mut Client, ttl: i64) -> (i64, tokio::task::JoinHandle<()>) {
    let lease = client.lease_grant(ttl, None).await.unwrap().id();
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.unwrap();
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(ttl as u64) / 3).await;
            if keeper.keep_alive().await.is_err() || !matches!(responses.message().await, Ok(Some(_))) {
                return;
            }
        }
    });
    (lease, task)
}

/// The peer a user would pick instead: etcd's lock RPC (v3lock) with a kept-alive lease, lock
/// then unlock of its key.
async fn v3lock_cycle(client: &mut Client, name: &str, lease: i64) -> Duration {
    let t = Instant::now();
    let locked = client.lock(name, Some(LockOptions::new().with_lease(lease))).await.unwrap();
    client.unlock(locked.key()).await.unwrap();
    t.elapsed()
}

pub(crate) async fn baseline(url: &str, port: u16, iterations: usize) -> Vec<Row> {
    let mut client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let mut peer = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
    let (peer_lease, keep_alive) = kept_alive_lease(&mut peer, 15).await;
    let locks = connect(url).await;
    let key = format!("raw-bench/{lease:x}");
    let [raw, trip, v3lock, ours] = interleave(iterations, async || {
        let txn = put_if_absent(&key, lease, "raw-bench/");
        let t = Instant::now();
        client.txn(txn).await.unwrap();
        client.delete(key.clone(), None).await.unwrap();
        let raw = t.elapsed();
        let t = Instant::now();
        client.get("raw-bench/none", None).await.unwrap();
        let trip = t.elapsed();
        let v3lock = v3lock_cycle(&mut peer, "v3lock-bench", peer_lease).await;
        let t = Instant::now();
        locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
        [raw, trip, v3lock, t.elapsed()]
    })
    .await;
    keep_alive.abort();
    let v3lock = Peer {
        short: "v3lock",
        case: "etcd-client 0.21 lock RPC (one kept-alive lease): lock + unlock".to_owned(),
        samples: v3lock,
        target: Some(1.05),
    };
    let raw_case = "txn put-if-absent (existing lease) + delete";
    let mut rows = baseline_rows("etcd", raw_case, "one round trip (GET)", [raw, trip, ours], vec![v3lock]);
    let write = async || client.put("raw-bench-write", "x", None).await.map(drop).unwrap();
    rows.insert(2, round_trips("etcd raw", "one write round trip (put)", iterations, write).await);
    rows
}

/// The etcd driver's lock protocol made directly with `etcd-client`, one connection and
/// lease each: the same requests (put-if-absent reading the first contender; a waiter
/// reads its predecessor serializably, watches it from now, reads again if the watch
/// started past the read, and reads again on its deletion; a holder's key is watched for
/// deletion, by one watch kept for all its grants; release is a guarded delete), without
/// lockkit's guards, shared watch stream and loss machinery.
pub(crate) struct Contender {
    client: Client,
    lease: i64,
    prefix: String,
    key: String,
    mine: i64,
}

impl Contender {
    pub(crate) async fn new(port: u16, name: &str) -> Self {
        let mut client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
        let lease = client.lease_grant(60, None).await.unwrap().id();
        let prefix = format!("{name}/");
        let key = format!("{prefix}{lease:x}");
        watch_deletions(&mut client, &key).await;
        Contender { key, client, lease, prefix, mine: 0 }
    }

    /// My key and the contender before it, with the revision read at.
    async fn around_me(&mut self) -> (i64, Vec<Vec<u8>>) {
        let options = newest_two().with_max_create_revision(self.mine);
        let read = self.client.get(self.prefix.clone(), Some(options)).await.unwrap();
        assert_eq!(read.kvs().first().map(|kv| kv.create_revision()), Some(self.mine), "my key is gone");
        (read.header().unwrap().revision(), read.kvs().iter().map(|kv| kv.key().to_vec()).collect())
    }
}

impl super::Contender for Contender {
    async fn acquire(&mut self) -> bool {
        let response = self.client.txn(put_if_absent(&self.key, self.lease, &self.prefix)).await.unwrap();
        self.mine = response.header().unwrap().revision();
        let first = match response.op_responses().get(1) {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.create_revision()),
            _ => None,
        };
        if first == Some(self.mine) {
            return true;
        }
        let mut known = None;
        loop {
            let (revision, keys) = match known.take() {
                Some(read) => read,
                None => self.around_me().await,
            };
            let Some(predecessor) = keys.get(1).cloned() else { return true };
            let deletions = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
            let (_watcher, mut events) = self.client.watch(predecessor.clone(), Some(deletions)).await.unwrap().split();
            let created = events.message().await.unwrap().unwrap().header().unwrap().revision();
            if created > revision {
                let read = self.around_me().await;
                if read.1 != keys {
                    known = Some(read);
                    continue;
                }
            }
            while let Some(response) = events.message().await.unwrap() {
                if response.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    break;
                }
            }
        }
    }

    async fn release(&mut self) {
        assert!(self.client.txn(guarded_delete(&self.key, self.mine)).await.unwrap().succeeded());
    }
}

/// The peer's contender: etcd's lock RPC (v3lock) on a connection and kept-alive lease of its
/// own; lock waits on the server, unlock deletes the key lock returned.
pub(crate) struct V3lock {
    client: Client,
    lease: i64,
    name: String,
    key: Option<Vec<u8>>,
    keep_alive: tokio::task::JoinHandle<()>,
}

impl V3lock {
    pub(crate) async fn new(port: u16, name: &str) -> Self {
        let mut client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
        let (lease, keep_alive) = kept_alive_lease(&mut client, 15).await;
        V3lock { client, lease, name: name.to_owned(), key: None, keep_alive }
    }
}

impl Drop for V3lock {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

impl super::Contender for V3lock {
    async fn acquire(&mut self) -> bool {
        let options = Some(LockOptions::new().with_lease(self.lease));
        let locked = tokio::time::timeout(Duration::from_secs(5), self.client.lock(self.name.clone(), options)).await;
        self.key = locked.ok().map(|locked| locked.unwrap().key().to_vec());
        self.key.is_some()
    }

    async fn release(&mut self) {
        self.client.unlock(self.key.take().expect("held")).await.unwrap();
    }
}

/// The p50s of the holder's release (a compare-create-revision delete of a key put just
/// before, which a watch waits for, as a waiter's does) and of the waiter's read (a
/// serializable range, newest first, two keys), on a connection of their own.
pub(crate) async fn trips(port: u16, sampling: Sampling) -> Trips {
    let mut client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
    let drain = watch_deletions(&mut client, "raw-bench/probe").await;
    let write = || {
        let mut client = client.clone();
        async move {
            let put = client.put("raw-bench/probe", "x", None).await.unwrap();
            let revision = put.header().unwrap().revision();
            let t = Instant::now();
            assert!(client.txn(guarded_delete("raw-bench/probe", revision)).await.unwrap().succeeded());
            t.elapsed()
        }
    };
    let prefix = sampling.lock().map_or("raw-bench/".to_owned(), |lock| format!("{lock}/"));
    let read = || {
        let (mut client, prefix) = (client.clone(), prefix.clone());
        async move { client.get(prefix, Some(newest_two())).await.map(drop).unwrap() }
    };
    let trips = paired_trips(&sampling, write, read).await;
    drain.abort();
    trips
}
