use lockkit::etcd::etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchFilterType, WatchOptions,
};

use super::*;

pub async fn baseline(url: &str, port: u16, iterations: usize) -> Vec<Row> {
    let mut client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let locks = connect(url).await;
    let key = format!("raw-bench/{lease:x}");
    let first = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
    let [raw, trip, ours] = interleave(iterations, async || {
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([
            TxnOp::put(key.clone(), "", Some(PutOptions::new().with_lease(lease))),
            TxnOp::get("raw-bench/", Some(first.clone())),
        ]);
        let t = Instant::now();
        client.txn(txn).await.unwrap();
        client.delete(key.clone(), None).await.unwrap();
        let raw = t.elapsed();
        let t = Instant::now();
        client.get("raw-bench/none", None).await.unwrap();
        let trip = t.elapsed();
        let t = Instant::now();
        locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
        [raw, trip, t.elapsed()]
    })
    .await;
    let mut rows =
        baseline_rows("etcd", "txn put-if-absent (existing lease) + delete", "one round trip (GET)", raw, trip, ours);
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
pub struct Contender {
    client: Client,
    lease: i64,
    prefix: String,
    key: String,
    mine: i64,
}

impl Contender {
    pub async fn new(port: u16, name: &str) -> Self {
        let mut client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
        let lease = client.lease_grant(60, None).await.unwrap().id();
        let prefix = format!("{name}/");
        let key = format!("{prefix}{lease:x}");
        let deletions = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
        let (watcher, mut events) = client.watch(key.clone(), Some(deletions)).await.unwrap().split();
        tokio::spawn(async move {
            let _watcher = watcher;
            while let Ok(Some(_)) = events.message().await {}
        });
        Contender { key, client, lease, prefix, mine: 0 }
    }

    /// My key and the contender before it, with the revision read at.
    async fn around_me(&mut self) -> (i64, Vec<Vec<u8>>) {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_max_create_revision(self.mine)
            .with_serializable()
            .with_limit(2);
        let read = self.client.get(self.prefix.clone(), Some(options)).await.unwrap();
        assert_eq!(read.kvs().first().map(|kv| kv.create_revision()), Some(self.mine), "my key is gone");
        (read.header().unwrap().revision(), read.kvs().iter().map(|kv| kv.key().to_vec()).collect())
    }
}

impl super::Contender for Contender {
    async fn acquire(&mut self) -> bool {
        let head = GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let put = TxnOp::put(self.key.clone(), "", Some(PutOptions::new().with_lease(self.lease)));
        let absent = Compare::create_revision(self.key.clone(), CompareOp::Equal, 0);
        let txn = Txn::new().when([absent]).and_then([put, TxnOp::get(self.prefix.clone(), Some(head))]);
        let response = self.client.txn(txn).await.unwrap();
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
        let mine = Compare::create_revision(self.key.clone(), CompareOp::Equal, self.mine);
        let txn = Txn::new().when([mine]).and_then([TxnOp::delete(self.key.clone(), None)]);
        assert!(self.client.txn(txn).await.unwrap().succeeded());
    }
}

/// The p50s of the holder's release (a compare-create-revision delete of a key put just
/// before, which a watch waits for, as a waiter's does) and of the waiter's read (a
/// serializable range, newest first, two keys), on a connection of their own.
pub async fn trips(port: u16, sampling: Sampling) -> Trips {
    let mut client = Client::connect([format!("127.0.0.1:{port}")], None).await.unwrap();
    let deletions = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
    let (_watcher, mut events) = client.watch("raw-bench/probe", Some(deletions)).await.unwrap().split();
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = events.message().await {} });
    let around = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_serializable()
        .with_limit(2);
    let write = || {
        let mut client = client.clone();
        async move {
            let put = client.put("raw-bench/probe", "x", None).await.unwrap();
            let revision = put.header().unwrap().revision();
            let t = Instant::now();
            let only_mine = Compare::create_revision("raw-bench/probe", CompareOp::Equal, revision);
            let release = Txn::new().when([only_mine]).and_then([TxnOp::delete("raw-bench/probe", None)]);
            assert!(client.txn(release).await.unwrap().succeeded());
            t.elapsed()
        }
    };
    let prefix = sampling.lock().map_or("raw-bench/".to_owned(), |lock| format!("{lock}/"));
    let read = || {
        let (mut client, around, prefix) = (client.clone(), around.clone(), prefix.clone());
        async move { client.get(prefix, Some(around)).await.map(drop).unwrap() }
    };
    let trips = paired_trips(&sampling, write, read).await;
    drain.abort();
    trips
}
