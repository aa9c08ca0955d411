//! The whole system under faults: contender processes (this test binary, run again as the
//! `child::contender` helper) take one lock in turns and write to a fenced register, while the
//! harness pauses them (SIGSTOP past the TTL, then SIGCONT) and holds or cuts their connections
//! through fault proxies. Afterwards: no stale write was accepted, no token was granted twice,
//! and the lock is free again within T + R of the last fault.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::faults::connect_patiently;
use crate::Target;
use crate::proxy::{Direction, ProxySet};
use crate::target::Connector;

const T: Duration = Duration::from_secs(2);
const R: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_secs(1);
/// How long the harness injects faults.
const FAULTS_FOR: Duration = Duration::from_secs(20);
const CONTENDERS: usize = 3;
const LOCK: &str = "fenced";

/// What the fenced register saw.
#[derive(Debug, Default)]
struct Ledger {
    /// The highest token seen, in a grant announced or a write accepted: the fence.
    highest: u64,
    /// The latest holder to announce its grant (with a token above every earlier one).
    current: Option<(u64, String)>,
    /// Every grant announced: token, contender.
    grants: Vec<(u64, String)>,
    /// Grants announced with a token below the fence (their holder was paused before announcing).
    late_grants: u64,
    accepted: u64,
    stale_rejected: u64,
    /// Writes accepted from anyone but the latest holder to announce its grant.
    stale_accepted: Vec<String>,
}

/// A fenced register on a loopback port, like a storage service that checks fencing tokens:
/// it rejects a write whose token is below the highest it has seen, and records everything.
/// One text line per request: `GRANT <token> <who>` (a new holder announces its token before
/// its first write, which raises the fence) and `WRITE <token> <who>`; the answer is `OK` or
/// `STALE`.
struct Register {
    addr: SocketAddr,
    ledger: Arc<Mutex<Ledger>>,
}

impl Register {
    async fn start() -> Register {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let shared = ledger.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let ledger = shared.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let answer = ledger.lock().unwrap().apply(&line);
                        if write.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Register { addr, ledger }
    }
}

impl Ledger {
    fn apply(&mut self, line: &str) -> &'static str {
        let mut words = line.split_whitespace();
        let (verb, token, who) = (words.next(), words.next().and_then(|t| t.parse::<u64>().ok()), words.next());
        let (Some(verb), Some(token), Some(who)) = (verb, token, who) else { return "ERROR\n" };
        match verb {
            "GRANT" => {
                self.grants.push((token, who.to_owned()));
                // A grant announced late (its holder was paused before announcing it) is already
                // superseded: its writes will be rejected.
                if token >= self.highest {
                    self.highest = token;
                    self.current = Some((token, who.to_owned()));
                } else {
                    self.late_grants += 1;
                }
                "OK\n"
            }
            "WRITE" if token < self.highest => {
                self.stale_rejected += 1;
                "STALE\n"
            }
            "WRITE" => {
                self.highest = token;
                self.accepted += 1;
                if self.current.as_ref() != Some(&(token, who.to_owned())) {
                    self.stale_accepted.push(format!("{who} wrote with token {token} while {:?} held", self.current));
                }
                "OK\n"
            }
            _ => "ERROR\n",
        }
    }
}

/// A contender process and what the harness controls of it.
struct Contender {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    proxies: Option<ProxySet>,
}

impl Contender {
    async fn start(
        t: &Target,
        url: &str,
        register: SocketAddr,
        who: &str,
        proxies: Option<ProxySet>,
        elect: bool,
    ) -> Contender {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", &t.helper("contender"), "--ignored", "--nocapture", "--test-threads=1", "-q"])
            .env("LOCKKIT_CHILD_ELECT", if elect { "1" } else { "0" })
            .env("LOCKKIT_CHILD_URL", url)
            .env("LOCKKIT_CHILD_NAME", LOCK)
            .env("LOCKKIT_CHILD_WHO", who)
            .env("LOCKKIT_CHILD_REGISTER", register.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a contender process");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (send, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let _ = send.send(line);
            }
        });
        Contender { child, stdin, lines, proxies }
    }

    /// Waits for the contender to print `word`.
    async fn said(&mut self, word: &str, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            while let Some(line) = self.lines.recv().await {
                if line.trim() == word {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on a child process this harness started and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }
}

/// Contenders in other processes take the lock in turns and write to a fenced register while
/// the harness pauses them past the TTL and holds, refuses or cuts their connections: the
/// register accepts no write from a superseded holder, no token is granted twice, and once the
/// faults stop, the lock is free for a direct handle within T + R.
pub async fn fenced_writes_survive_pauses_and_partitions(t: &Target) {
    fenced_run(t, false, FAULTS_FOR).await
}

/// The same with elections: the contenders campaign, lead, write with their term and resign,
/// while the harness pauses and partitions them; no deposed leader's write is accepted, no term
/// is led twice, and leadership recovers within T + R of the last fault.
pub async fn fenced_leaders_survive_pauses_and_partitions(t: &Target) {
    fenced_run(t, true, FAULTS_FOR / 2).await
}

async fn fenced_run(t: &Target, elect: bool, faults_for: Duration) {
    let probe = connect_patiently(t.connector(), &t.url_with(T, R)).await;
    assert!(probe.capabilities().cross_process, "the system test needs a backend other processes share");
    let register = Register::start().await;
    let mut contenders = Vec::new();
    for i in 0..CONTENDERS {
        let (url, proxies) = match t.proxied(T, R).await {
            Some((url, proxies)) => (url, Some(proxies)),
            None => (t.url_with(T, R), None),
        };
        contenders.push(Contender::start(t, &url, register.addr, &format!("c{i}"), proxies, elect).await);
    }
    for (i, c) in contenders.iter_mut().enumerate() {
        assert!(c.said("READY", Duration::from_secs(60)).await, "contender c{i} did not start");
    }

    let mut faults: HashMap<&'static str, u32> = HashMap::new();
    let networked = contenders[0].proxies.is_some();
    let started = Instant::now();
    while started.elapsed() < faults_for {
        let c = &contenders[(lockkit_core::driver::random_u64() % CONTENDERS as u64) as usize];
        let kind =
            if networked { lockkit_core::driver::random_u64() % 5 } else { lockkit_core::driver::random_u64() % 2 };
        match (kind, &c.proxies) {
            (0, _) => {
                *faults.entry("pause-past-ttl").or_default() += 1;
                c.signal(libc::SIGSTOP);
                tokio::time::sleep(T + Duration::from_millis(500)).await;
                c.signal(libc::SIGCONT);
            }
            (1, _) => {
                *faults.entry("short-pause").or_default() += 1;
                c.signal(libc::SIGSTOP);
                tokio::time::sleep(T / 4).await;
                c.signal(libc::SIGCONT);
            }
            (2, Some(p)) => {
                *faults.entry("partition-past-ttl").or_default() += 1;
                p.refuse(true);
                p.hold(Direction::Both);
                tokio::time::sleep(T + Duration::from_millis(500)).await;
                p.release();
                p.refuse(false);
            }
            (3, Some(p)) => {
                *faults.entry("stall-requests").or_default() += 1;
                p.hold(Direction::ToServer);
                tokio::time::sleep(R + Duration::from_millis(200)).await;
                p.cut();
                p.release();
            }
            (_, Some(p)) => {
                *faults.entry("cut").or_default() += 1;
                p.cut();
            }
            (_, None) => unreachable!("network faults only with proxies"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The faults stop: every process runs, every connection works.
    for c in &contenders {
        c.signal(libc::SIGCONT);
        if let Some(p) = &c.proxies {
            p.release();
            p.refuse(false);
        }
    }
    let calm_at = Instant::now();
    for c in &mut contenders {
        let _ = c.stdin.write_all(b"stop\n").await;
    }
    let mut idle = true;
    for c in &mut contenders {
        idle &= c.said("IDLE", T + R + SLACK).await;
    }
    let direct = connect_patiently(t.connector(), &t.url_with(T, R)).await;
    let wait = (calm_at + T + R + SLACK * 2).saturating_duration_since(Instant::now());
    let after = match elect {
        false => direct.acquire_timeout(LOCK, wait).await.map(Held::Lock),
        true => direct.campaign_timeout(LOCK, "direct", wait).await.map(Held::Leadership),
    };
    let reacquire = calm_at.elapsed();

    // Who still holds the lock, when it is not free (for the failure message).
    let blocker = match &after {
        Ok(_) => String::new(),
        Err(_) => format!("{:?}", direct.status(LOCK).await),
    };
    let ledger = register.ledger.lock().unwrap();
    let mut tokens: Vec<u64> = ledger.grants.iter().map(|(token, _)| *token).collect();
    tokens.sort_unstable();
    let granted = tokens.len();
    tokens.dedup();
    let faults_text: Vec<String> = faults.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    eprintln!(
        "SYSTEM backend={} target={} elections={elect} writes={} stale_rejected={} stale_accepted={} tokens={granted} unique_tokens={} late_grants={} faults={} reacquire_ms={}{}",
        probe.backend(),
        t.label(),
        ledger.accepted,
        ledger.stale_rejected,
        ledger.stale_accepted.len(),
        tokens.len(),
        ledger.late_grants,
        faults_text.join(","),
        reacquire.as_millis(),
        if after.is_ok() { "" } else { " reacquired=no" },
    );
    assert!(ledger.stale_accepted.is_empty(), "stale writes accepted: {:?}", ledger.stale_accepted);
    assert_eq!(tokens.len(), granted, "a token was granted twice: {:?}", ledger.grants);
    assert!(ledger.accepted > 0, "no write was accepted at all");
    let guard = after.unwrap_or_else(|e| {
        let last: Vec<_> = ledger.grants.iter().rev().take(3).collect();
        panic!(
            "the lock was not free within T + R (+ {:?}) of the last fault: {e}; every contender idle: {idle}; \
             status: {blocker}; last grants announced: {last:?}",
            SLACK * 2
        )
    });
    assert!(
        guard.token().get() > ledger.highest,
        "the direct grant's token {} is not above every earlier grant ({})",
        guard.token(),
        ledger.highest
    );
}

/// A contender's grant: a held lock or a leadership.
enum Held {
    Lock(lockkit::LockGuard),
    Leadership(lockkit::Leadership),
}

impl Held {
    fn token(&self) -> lockkit::FencingToken {
        match self {
            Held::Lock(guard) => guard.fencing_token(),
            Held::Leadership(leadership) => leadership.term(),
        }
    }

    fn is_held(&self) -> bool {
        match self {
            Held::Lock(guard) => guard.is_held(),
            Held::Leadership(leadership) => leadership.is_leader(),
        }
    }

    async fn give_back(self) -> lockkit::Result<()> {
        match self {
            Held::Lock(guard) => guard.release().await,
            Held::Leadership(leadership) => leadership.resign().await,
        }
    }
}

/// The body of the `child::contender` helper: take the lock in turns, announce each grant to
/// the register and write a few times while the guard says it is held; on `stop` (stdin), give
/// everything up, say `IDLE` and stay alive (its handle too) until killed. Connects with
/// `connector`; does nothing unless the system test started it.
pub fn run_contender_child(connector: Connector) {
    let var = |name| std::env::var(name).ok();
    let (Some(url), Some(name), Some(who), Some(register)) =
        (var("LOCKKIT_CHILD_URL"), var("LOCKKIT_CHILD_NAME"), var("LOCKKIT_CHILD_WHO"), var("LOCKKIT_CHILD_REGISTER"))
    else {
        return;
    };
    let elect = var("LOCKKIT_CHILD_ELECT").as_deref() == Some("1");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let locks = connect_patiently(connector, &url).await;
        let stream = TcpStream::connect(&register).await.expect("the register");
        let (read, mut write) = stream.into_split();
        let mut answers = BufReader::new(read).lines();
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                if line.map_or(true, |l| l.trim() == "stop") {
                    break;
                }
            }
            let _ = stop_tx.send(true);
        });
        println!("READY");
        while !*stop.borrow() {
            let bound = Duration::from_secs(3);
            let acquire = async {
                match elect {
                    false => locks.acquire_timeout(&name, bound).await.map(Held::Lock),
                    true => locks.campaign_timeout(&name, &who, bound).await.map(Held::Leadership),
                }
            };
            let acquired = tokio::select! {
                acquired = acquire => acquired,
                _ = stop.changed() => break,
            };
            let Ok(guard) = acquired else { continue };
            let token = guard.token().get();
            ask(&mut write, &mut answers, format!("GRANT {token} {who}\n")).await;
            for _ in 0..3 {
                if !guard.is_held() {
                    break;
                }
                // Work between the check and the write: a pause here makes the write stale, and
                // the fence must reject it.
                tokio::time::sleep(Duration::from_millis(30)).await;
                ask(&mut write, &mut answers, format!("WRITE {token} {who}\n")).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), guard.give_back()).await;
        }
        println!("IDLE");
        std::future::pending::<()>().await;
    });
}

/// Sends one request line to the register and reads its answer.
async fn ask(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    answers: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    line: String,
) -> String {
    write.write_all(line.as_bytes()).await.expect("the register");
    answers.next_line().await.expect("the register").expect("an answer")
}

#[test]
fn the_register_rejects_stale_tokens_and_flags_writes_of_superseded_holders() {
    let mut ledger = Ledger::default();
    let answers: Vec<&str> = [
        "GRANT 5 a",
        "WRITE 5 a",
        "GRANT 7 b",
        "WRITE 5 a",
        "WRITE 7 b",
        "GRANT 6 c",
        "WRITE 6 c",
        "GRANT 7 d",
        "WRITE 7 b",
    ]
    .iter()
    .map(|line| ledger.apply(line).trim())
    .collect();
    assert_eq!(answers, ["OK", "OK", "OK", "STALE", "OK", "OK", "STALE", "OK", "OK"]);
    assert_eq!((ledger.accepted, ledger.stale_rejected, ledger.late_grants), (3, 2, 1));
    // Token 7 granted twice: b's write is accepted by the fence but b no longer holds.
    assert_eq!(ledger.stale_accepted.len(), 1, "{:?}", ledger.stale_accepted);
}
