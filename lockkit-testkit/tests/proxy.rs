//! The fault proxy's own tests, against a tiny echo server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use lockkit_testkit::proxy::{Direction, Proxy, ProxySet};

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(200);
/// Bound on anything that should happen.
const SOON: Duration = Duration::from_secs(5);

/// An echo server that also counts the bytes it received (so a test can tell "held on the way
/// in" from "held on the way back").
struct Echo {
    addr: SocketAddr,
    received: watch::Receiver<usize>,
}

async fn echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (count, received) = watch::channel(0);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buffer = [0; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                    count.send_modify(|c| *c += n);
                    if stream.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Echo { addr, received }
}

impl Echo {
    async fn received(&mut self, at_least: usize) {
        tokio::time::timeout(SOON, self.received.wait_for(|n| *n >= at_least))
            .await
            .expect("the echo server received the bytes")
            .unwrap();
    }
}

async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    tokio::time::timeout(SOON, stream.read_exact(&mut bytes)).await.expect("the bytes came").unwrap();
    bytes
}

/// Nothing arrives on `stream` for a while.
async fn quiet(stream: &mut TcpStream) {
    let mut byte = [0; 1];
    let read = tokio::time::timeout(QUIET, stream.read(&mut byte)).await;
    assert!(read.is_err(), "something arrived while held: {read:?}");
}

/// The stream is closed by the other side (EOF or reset), soon.
async fn closed(stream: &mut TcpStream) {
    let mut byte = [0; 1];
    let read = tokio::time::timeout(SOON, stream.read(&mut byte)).await.expect("the connection was closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn forwards_both_ways() {
    let server = echo().await;
    let proxy = Proxy::start(server.addr).await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    assert_eq!(read_exactly(&mut client, 5).await, b"hello");
}

#[tokio::test]
async fn a_hold_keeps_bytes_of_open_and_new_connections_until_released_in_order() {
    let server = echo().await;
    let proxy = Proxy::start(server.addr).await;
    let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
    before.write_all(b"0").await.unwrap();
    assert_eq!(read_exactly(&mut before, 1).await, b"0");
    proxy.hold(Direction::ToServer);
    let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
    for chunk in [b"a", b"b", b"c"] {
        before.write_all(chunk).await.unwrap();
        after.write_all(chunk).await.unwrap();
        tokio::task::yield_now().await;
    }
    quiet(&mut before).await;
    quiet(&mut after).await;
    assert_eq!(*server.received.borrow(), 1, "held bytes reached the server");
    proxy.release();
    assert_eq!(read_exactly(&mut before, 3).await, b"abc");
    assert_eq!(read_exactly(&mut after, 3).await, b"abc");
}

#[tokio::test]
async fn holding_the_answers_delivers_the_requests() {
    let mut server = echo().await;
    let proxy = Proxy::start(server.addr).await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.hold(Direction::ToClient);
    client.write_all(b"xyz").await.unwrap();
    server.received(3).await;
    quiet(&mut client).await;
    proxy.release();
    assert_eq!(read_exactly(&mut client, 3).await, b"xyz");
}

#[tokio::test]
async fn a_cut_closes_every_connection_and_drops_what_was_held() {
    let mut server = echo().await;
    let proxy = Proxy::start(server.addr).await;
    let (mut one, mut two) =
        (TcpStream::connect(proxy.addr()).await.unwrap(), TcpStream::connect(proxy.addr()).await.unwrap());
    one.write_all(b"1").await.unwrap();
    assert_eq!(read_exactly(&mut one, 1).await, b"1");
    proxy.hold(Direction::Both);
    two.write_all(b"lost").await.unwrap();
    quiet(&mut two).await;
    // Released right after the cut: what was held is dropped all the same.
    proxy.cut();
    proxy.release();
    closed(&mut one).await;
    closed(&mut two).await;
    // New connections work; the held bytes never reached the server.
    let mut three = TcpStream::connect(proxy.addr()).await.unwrap();
    three.write_all(b"3").await.unwrap();
    assert_eq!(read_exactly(&mut three, 1).await, b"3");
    server.received(2).await;
    assert_eq!(*server.received.borrow(), 2);
}

#[tokio::test]
async fn refusing_closes_new_connections_only() {
    let server = echo().await;
    let proxy = Proxy::start(server.addr).await;
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    open.write_all(b"up").await.unwrap();
    assert_eq!(read_exactly(&mut open, 2).await, b"up", "accepted before the refusal");
    proxy.refuse(true);
    match TcpStream::connect(proxy.addr()).await {
        Err(_) => {}
        Ok(mut refused) => {
            let _ = refused.write_all(b"?").await;
            closed(&mut refused).await;
        }
    }
    open.write_all(b"still").await.unwrap();
    assert_eq!(read_exactly(&mut open, 5).await, b"still");
    proxy.refuse(false);
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    again.write_all(b"ok").await.unwrap();
    assert_eq!(read_exactly(&mut again, 2).await, b"ok");
}

#[tokio::test]
async fn latency_delays_every_chunk_each_way() {
    let server = echo().await;
    let proxy = Proxy::start(server.addr).await;
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let delay = Duration::from_millis(150);
    proxy.latency(delay);
    let started = Instant::now();
    client.write_all(b"slow").await.unwrap();
    assert_eq!(read_exactly(&mut client, 4).await, b"slow");
    let took = started.elapsed();
    assert!(took >= delay * 2 && took < delay * 2 + Duration::from_secs(1), "{took:?}");
    proxy.latency(Duration::ZERO);
    let started = Instant::now();
    client.write_all(b"fast").await.unwrap();
    assert_eq!(read_exactly(&mut client, 4).await, b"fast");
    assert!(started.elapsed() < delay, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_set_controls_all_its_proxies() {
    let servers = [echo().await, echo().await];
    let set = ProxySet::start(&[servers[0].addr, servers[1].addr]).await;
    let mut clients = Vec::new();
    for addr in set.addrs() {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    set.hold(Direction::Both);
    for client in &mut clients {
        client.write_all(b"q").await.unwrap();
        quiet(client).await;
    }
    set.release();
    for client in &mut clients {
        assert_eq!(read_exactly(client, 1).await, b"q");
    }
    set.cut();
    for client in &mut clients {
        closed(client).await;
    }
}
