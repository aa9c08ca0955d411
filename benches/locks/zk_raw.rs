use lockkit::zookeeper::zookeeper_client::{Acls, Client, CreateMode, LockOptions, LockPrefix};

use super::*;

pub(crate) async fn baseline(url: &str, port: u16, iterations: usize) -> Vec<Row> {
    let client = Client::connect(&format!("127.0.0.1:{port}")).await.unwrap();
    let directory = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client.create("/raw-bench", &[], &directory).await.unwrap();
    let node = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    client.create("/peer-bench", &[], &directory).await.unwrap();
    // The peer's release by drop deletes in the background: on a session of its own, so that
    // the delete does not queue ahead of the other columns' requests.
    let by_drop = Client::connect(&format!("127.0.0.1:{port}")).await.unwrap();
    let locks = connect(url).await;
    let [raw, trip, awaited, dropped, ours] = interleave(iterations, async || {
        let t = Instant::now();
        let (_, sequence) = client.create("/raw-bench/n-", b"holder", &node).await.unwrap();
        client.list_children("/raw-bench").await.unwrap();
        client.delete(&format!("/raw-bench/n-{sequence}"), None).await.unwrap();
        let raw = t.elapsed();
        let t = Instant::now();
        client.check_stat("/raw-bench").await.unwrap();
        let trip = t.elapsed();
        let t = Instant::now();
        let lock = curator_lock(&client).await;
        let path = lock.lock_path().to_owned();
        // Its drop would delete the node in the background: the delete awaited instead (this
        // leaks the guard's copy of the path, a few bytes).
        std::mem::forget(lock);
        client.delete(&path, None).await.unwrap();
        let awaited = t.elapsed();
        let t = Instant::now();
        let lock = curator_lock(&by_drop).await;
        let path = lock.lock_path().to_owned();
        drop(lock);
        let dropped = t.elapsed();
        // Untimed: the background delete is done before the next step starts, so that it does
        // not queue ahead of that step's writes.
        while by_drop.check_stat(&path).await.unwrap().is_some() {}
        let t = Instant::now();
        locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
        [raw, trip, awaited, dropped, t.elapsed()]
    })
    .await;
    let peers = vec![
        Peer {
            short: "curator recipe (delete awaited)",
            case: "zookeeper-client 0.11 lock, LockPrefix::new_curator: lock + delete awaited".to_owned(),
            samples: awaited,
            target: Some(1.10),
        },
        Peer {
            short: "curator recipe (release by drop)",
            case: "zookeeper-client 0.11 lock, LockPrefix::new_curator: lock + drop (delete in the background, own session)".to_owned(),
            samples: dropped,
            target: None,
        },
    ];
    let raw_case = "create ephemeral-sequential + list + delete";
    let mut rows = baseline_rows("zookeeper", raw_case, "one round trip (exists)", [raw, trip, ours], peers);
    let write = async || client.set_data("/raw-bench", b"x", None).await.map(drop).unwrap();
    rows.insert(2, round_trips("zookeeper raw", "one write round trip (setData)", iterations, write).await);
    rows
}

/// The peer a user would pick instead: `zookeeper-client`'s lock recipe, Curator's node names.
async fn curator_lock(client: &Client) -> lockkit::zookeeper::zookeeper_client::LockClient<'_> {
    let prefix = LockPrefix::new_curator("/peer-bench", "lock-").unwrap();
    client.lock(prefix, b"", LockOptions::new(Acls::anyone_all())).await.unwrap()
}

/// The p50s of the holder's release (a versioned delete of a node created just before) and
/// of the waiter's read (a list of the lock's directory), on a session of their own.
pub(crate) async fn trips(port: u16, sampling: Sampling) -> Trips {
    let client = Client::connect(&format!("127.0.0.1:{port}")).await.unwrap();
    let node = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    let write = || {
        let (client, node) = (client.clone(), node.clone());
        async move {
            let (stat, _) = client.create("/raw-bench/probe", b"x", &node).await.unwrap();
            let t = Instant::now();
            client.delete("/raw-bench/probe", Some(stat.version)).await.unwrap();
            t.elapsed()
        }
    };
    let directory = format!("/{}", sampling.lock().unwrap_or("raw-bench"));
    let read = || {
        let (client, directory) = (client.clone(), directory.clone());
        async move {
            // Before the first acquire the lock's directory may not exist yet: still a read.
            let _ = client.list_children(&directory).await;
        }
    };
    paired_trips(&sampling, write, read).await
}
