use super::*;

pub(crate) async fn baseline(url: &str, addr: std::net::SocketAddr, iterations: usize) -> Vec<Row> {
    // reqwest is built without a default TLS provider (the driver picks ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let spec = r#"{"TTL": "60s", "Behavior": "release", "NodeChecks": []}"#;
    let created = http.put(format!("{base}/v1/session/create")).body(spec).send().await.unwrap();
    let created: serde_json::Value = serde_json::from_slice(&created.bytes().await.unwrap()).unwrap();
    let session = created["ID"].as_str().unwrap().to_owned();
    let key = format!("{base}/v1/kv/raw-bench/.lock");
    let flags = lockkit::consul::FLAGS;
    let locks = connect(url).await;
    let [raw, trip, ours] = interleave(iterations, async || {
        let t = Instant::now();
        http.get(&key).send().await.unwrap().bytes().await.unwrap();
        let acquire = format!("{key}?acquire={session}&flags={flags}");
        http.put(acquire).body("holder").send().await.unwrap().bytes().await.unwrap();
        http.get(&key).send().await.unwrap().bytes().await.unwrap();
        let release = format!("{key}?release={session}&flags={flags}");
        http.put(release).send().await.unwrap().bytes().await.unwrap();
        let raw = t.elapsed();
        let t = Instant::now();
        http.get(&key).send().await.unwrap().bytes().await.unwrap();
        let trip = t.elapsed();
        let t = Instant::now();
        locks.acquire("lockkit-bench").await.unwrap().release().await.unwrap();
        [raw, trip, t.elapsed()]
    })
    .await;
    let case = "GET + PUT ?acquire + GET + PUT ?release";
    baseline_rows("consul (double)", case, "one round trip (GET)", [raw, trip, ours], Vec::new())
}
