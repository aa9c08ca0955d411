use lockkit::zookeeper::zookeeper_client::{Acls, Client, CreateMode};

use super::*;

pub(crate) async fn baseline(url: &str, port: u16, iterations: usize) -> Vec<Row> {
    let client = Client::connect(&format!("127.0.0.1:{port}")).await.unwrap();
    let directory = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client.create("/raw-bench", &[], &directory).await.unwrap();
    let node = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let locks = connect(url).await;
    let [raw, trip, ours] = interleave(iterations, async || {
        let t = Instant::now();
        let (_, sequence) = client.create("/raw-bench/n-", b"holder", &node).await.unwrap();
        client.list_children("/raw-bench").await.unwrap();
        client.delete(&format!("/raw-bench/n-{sequence}"), None).await.unwrap();
        let raw = t.elapsed();
        let t = Instant::now();
        client.check_stat("/raw-bench").await.unwrap();
        let trip = t.elapsed();
        let t = Instant::now();
        locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
        [raw, trip, t.elapsed()]
    })
    .await;
    let mut rows = baseline_rows(
        "zookeeper",
        "create ephemeral-sequential + list + delete",
        "one round trip (exists)",
        raw,
        trip,
        ours,
    );
    let write = async || client.set_data("/raw-bench", b"x", None).await.map(drop).unwrap();
    rows.insert(2, round_trips("zookeeper raw", "one write round trip (setData)", iterations, write).await);
    rows
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
