//! A TCP fault proxy: a test puts it between a lockkit client and a real server, then holds,
//! delays, cuts or refuses the traffic while the client works.
//!
//! Every control takes effect at once on the open connections and on those accepted later:
//!
//! - [`hold`](Proxy::hold) keeps reading a direction's bytes but forwards none of them (the
//!   request "never arrives", yet nothing is closed), until [`release`](Proxy::release)
//!   forwards them all, in order;
//! - [`cut`](Proxy::cut) closes every open connection, both sides, dropping whatever was held;
//! - [`refuse`](Proxy::refuse) closes new connections as soon as they are accepted (the server
//!   is unreachable);
//! - [`latency`](Proxy::latency) forwards every chunk that long after it was read;
//! - [`sent_so_far`](Proxy::sent_so_far) and [`sent_after`](Proxy::sent_after) tell what
//!   clients sent (held or not), so a test can wait until a request is out before it cuts.
//!
//! A [`ProxySet`] does the same to several proxies at once (the five servers of a Redlock).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Which bytes [`Proxy::hold`] keeps back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Both ways: a silent network partition.
    Both,
    /// From the client to the server: requests are not delivered.
    ToServer,
    /// From the server to the client: requests are applied, the answers are not delivered.
    ToClient,
}

/// What the forwarding tasks obey; changed by the controls, watched by every connection.
#[derive(Clone, Copy, Debug, Default)]
struct Rules {
    hold_to_server: bool,
    hold_to_client: bool,
    latency: Duration,
}

impl Rules {
    fn holds(&self, to_server: bool) -> bool {
        if to_server { self.hold_to_server } else { self.hold_to_client }
    }
}

/// A proxy on `127.0.0.1:<free port>` that forwards every connection to one upstream address.
/// Dropping it stops accepting and closes every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    rules: watch::Sender<Rules>,
    /// Bumped by every cut; each connection ends when it changes (or when the proxy is dropped).
    cuts: watch::Sender<u64>,
    refusing: Arc<AtomicBool>,
    /// Every byte clients sent, in order (held bytes included).
    sent: Arc<watch::Sender<Vec<u8>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `upstream`, on the current Tokio runtime.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (rules, _) = watch::channel(Rules::default());
        let (cuts, _) = watch::channel(0);
        let refusing = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(watch::channel(Vec::new()).0);
        let controls = Controls {
            rules: rules.subscribe(),
            cuts: cuts.subscribe(),
            refusing: refusing.clone(),
            sent: sent.clone(),
        };
        let acceptor = tokio::spawn(accept(listener, upstream, controls));
        Proxy { addr, upstream, rules, cuts, refusing, sent, acceptor }
    }

    /// How many bytes clients have sent so far.
    pub fn sent_so_far(&self) -> usize {
        self.sent.borrow().len()
    }

    /// Waits (10 s at most) until the bytes clients sent after the first `from` contain `needle`.
    pub async fn sent_after(&self, from: usize, needle: &[u8]) {
        let mut sent = self.sent.subscribe();
        let seen = sent.wait_for(|bytes| bytes[from..].windows(needle.len()).any(|w| w == needle));
        tokio::time::timeout(Duration::from_secs(10), seen).await.expect("sent in time").expect("the proxy lives");
    }

    /// Where clients connect: `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port of [`addr`](Self::addr).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server behind the proxy.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Reads but no longer forwards the bytes going `direction` (added to what is held already).
    pub fn hold(&self, direction: Direction) {
        self.rules.send_modify(|r| match direction {
            Direction::Both => (r.hold_to_server, r.hold_to_client) = (true, true),
            Direction::ToServer => r.hold_to_server = true,
            Direction::ToClient => r.hold_to_client = true,
        });
    }

    /// Forwards everything held, in order, and stops holding.
    pub fn release(&self) {
        self.rules.send_modify(|r| (r.hold_to_server, r.hold_to_client) = (false, false));
    }

    /// Closes every open connection at once, both sides, dropping whatever was held. Holding,
    /// refusing and latency stay as they are for the connections that come next.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// While `true`, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Forwards every chunk `delay` after it was read (`Duration::ZERO`: at once).
    pub fn latency(&self, delay: Duration) {
        self.rules.send_modify(|r| r.latency = delay);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

/// What every connection of a proxy obeys and reports to.
struct Controls {
    rules: watch::Receiver<Rules>,
    cuts: watch::Receiver<u64>,
    refusing: Arc<AtomicBool>,
    sent: Arc<watch::Sender<Vec<u8>>>,
}

async fn accept(listener: TcpListener, upstream: SocketAddr, controls: Controls) {
    let Controls { rules, cuts, refusing, sent } = controls;
    while let Ok((client, _)) = listener.accept().await {
        if refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let _ = client.set_nodelay(true);
        // This connection ends at the next cut, not at one that came before it.
        let mut cut = cuts.clone();
        cut.borrow_and_update();
        let (rules, cut_seen, sent) = (rules.clone(), cut.clone(), sent.clone());
        tokio::spawn(async move {
            let forward = async move {
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let _ = server.set_nodelay(true);
                let ((client_in, client_out), (server_in, server_out)) = (client.into_split(), server.into_split());
                tokio::join!(
                    pump(client_in, server_out, Some(sent), rules.clone(), cut_seen.clone()),
                    pump(server_in, client_out, None, rules, cut_seen)
                );
            };
            // A cut (or the proxy dropped) ends the forwarding: both sockets close here.
            tokio::select! {
                _ = cut.changed() => {}
                _ = forward => {}
            }
        });
    }
}

/// Forwards one direction of a connection: every chunk is read at once and kept, with the
/// time it was read, until the rules let it through. Nothing is written after a cut, even
/// before the connection's task has seen it (so `cut(); release();` forwards nothing held).
/// Toward the server, `sent` logs every chunk read.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    sent: Option<Arc<watch::Sender<Vec<u8>>>>,
    mut rules: watch::Receiver<Rules>,
    cut: watch::Receiver<u64>,
) {
    let to_server = sent.is_some();
    let (chunks, mut pending) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0; 16 * 1024];
        // EOF or an error: dropping `chunks` tells the writer, after what was read before.
        while let Ok(n @ 1..) = from.read(&mut buffer).await {
            if let Some(sent) = &sent {
                sent.send_modify(|log| log.extend_from_slice(&buffer[..n]));
            }
            if chunks.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((read_at, chunk)) = pending.recv().await {
            // Checked after the chunk is in hand, so a hold set before it was read keeps it.
            let Ok(now) = rules.wait_for(|r| !r.holds(to_server)).await.map(|r| *r) else { return };
            tokio::time::sleep_until(read_at + now.latency).await;
            if cut.has_changed().unwrap_or(true) || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Several proxies controlled as one: every control applies to each of them.
#[derive(Debug, Default)]
pub struct ProxySet {
    /// The proxies, one per upstream.
    pub proxies: Vec<Proxy>,
}

impl ProxySet {
    /// One proxy in front of each upstream address.
    pub async fn start(upstreams: &[SocketAddr]) -> ProxySet {
        let mut proxies = Vec::new();
        for upstream in upstreams {
            proxies.push(Proxy::start(*upstream).await);
        }
        ProxySet { proxies }
    }

    /// The proxies' addresses, in the order of the upstreams.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(Proxy::addr).collect()
    }

    /// Holds `direction` on every proxy ([`Proxy::hold`]).
    pub fn hold(&self, direction: Direction) {
        self.proxies.iter().for_each(|p| p.hold(direction));
    }

    /// Releases every proxy ([`Proxy::release`]).
    pub fn release(&self) {
        self.proxies.iter().for_each(Proxy::release);
    }

    /// Cuts every proxy's connections ([`Proxy::cut`]).
    pub fn cut(&self) {
        self.proxies.iter().for_each(Proxy::cut);
    }

    /// Makes every proxy refuse new connections, or accept them again ([`Proxy::refuse`]).
    pub fn refuse(&self, refuse: bool) {
        self.proxies.iter().for_each(|p| p.refuse(refuse));
    }

    /// Delays every proxy's traffic ([`Proxy::latency`]).
    pub fn latency(&self, delay: Duration) {
        self.proxies.iter().for_each(|p| p.latency(delay));
    }
}
