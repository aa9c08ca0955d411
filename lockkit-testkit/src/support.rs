//! What the suite and the backends' own tests need besides the API: connections, a holder in
//! another process, a critical section that detects double grants.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use lockkit::{DistributedLock, FencingToken};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::target::{Connector, Target};

/// The TTL the suite uses: short, so expiry tests are fast.
pub const TTL: Duration = Duration::from_secs(1);

/// Connects to `url` with [`lockkit::connect`], panicking on failure.
pub async fn connect(url: &str) -> Arc<dyn DistributedLock> {
    lockkit::connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Connects to `url` with `connector`, panicking on failure.
pub async fn connect_with(connector: Connector, url: &str) -> Arc<dyn DistributedLock> {
    connector(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Waits until `status` counts `waiters` in line for `name` (the server's view of arrival).
pub async fn in_line(locks: &dyn DistributedLock, name: &str, waiters: usize) {
    let started = std::time::Instant::now();
    loop {
        let waiting = locks.status(name).await.unwrap().waiting;
        if waiting == Some(waiters) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{waiters} never in line for {name}: {waiting:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `prefix` and a random suffix: a name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:x}", lockkit_core::driver::random_u64())
}

/// A lock holder in another process: this test binary, run again as the `child::holder` helper
/// that the target's `conformance!` line made.
#[derive(Debug)]
pub struct HolderProcess {
    /// The process.
    pub child: Child,
    /// The token of its grant.
    pub token: FencingToken,
}

/// What the helper process does once it holds the lock.
#[derive(Clone, Copy, Debug)]
pub enum AfterAcquire {
    /// Release and exit.
    Release,
    /// Hold until killed.
    Hold,
}

/// Starts a process that acquires `name` in the target's namespace and reports its token.
pub async fn holder_process(t: &Target, name: &str, after: AfterAcquire) -> HolderProcess {
    holder_process_of(t, name, after, None).await
}

/// [`holder_process`], acquiring one of `permits` permits of the semaphore `name` when given.
pub async fn holder_process_of(t: &Target, name: &str, after: AfterAcquire, permits: Option<u32>) -> HolderProcess {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", &t.helper("holder"), "--ignored", "--nocapture", "--test-threads=1", "-q"])
        .env("LOCKKIT_CHILD_URL", t.url())
        .env("LOCKKIT_CHILD_NAME", name)
        .env("LOCKKIT_CHILD_HOLD", matches!(after, AfterAcquire::Hold).to_string())
        .env("LOCKKIT_CHILD_PERMITS", permits.map(|p| p.to_string()).unwrap_or_default())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the holder process");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let read_token = async {
        while let Some(line) = lines.next_line().await.expect("read the holder's output") {
            if let Some(token) = line.strip_prefix("LOCKKIT-TOKEN ") {
                return FencingToken::new(token.trim().parse().expect("a token"));
            }
        }
        panic!("the holder process exited without acquiring");
    };
    let token = tokio::time::timeout(Duration::from_secs(30), read_token).await.expect("the holder process acquired");
    // Keep reading, so that the child never writes into a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    HolderProcess { child, token }
}

/// The token of a grant of `name` (one of `permits` permits when given) taken in a thread whose
/// runtime is then dropped with the guard forgotten: never released, no longer refreshed — a
/// holder that vanished without a word, within this process.
pub fn vanished_in_a_thread(t: &Target, name: &str, permits: Option<u32>) -> FencingToken {
    let (url, connector, name) = (t.url(), t.connector(), name.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let token = runtime.block_on(async {
            let locks = connect_with(connector, &url).await;
            let guard = match permits {
                Some(permits) => locks.semaphore(&name, permits).acquire().await,
                None => locks.acquire(&name).await,
            };
            let guard = guard.expect("the vanishing holder acquires");
            let token = guard.fencing_token();
            std::mem::forget(guard);
            token
        });
        drop(runtime);
        token
    })
    .join()
    .expect("the vanishing holder's thread")
}

/// The body of the `child::holder` helper: acquire (connecting with `connector`), print the
/// token, then release or hold. Does nothing unless [`holder_process`] started it.
pub fn run_holder_child(connector: Connector) {
    let (Ok(url), Ok(name)) = (std::env::var("LOCKKIT_CHILD_URL"), std::env::var("LOCKKIT_CHILD_NAME")) else {
        return;
    };
    let hold = std::env::var("LOCKKIT_CHILD_HOLD").as_deref() == Ok("true");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let locks = connect_with(connector, &url).await;
        let permits = std::env::var("LOCKKIT_CHILD_PERMITS").ok().and_then(|p| p.parse().ok());
        let guard = match permits {
            Some(permits) => locks.semaphore(&name, permits).acquire().await,
            None => locks.acquire(&name).await,
        };
        let guard = guard.expect("the child acquires");
        println!("LOCKKIT-TOKEN {}", guard.fencing_token());
        if hold {
            std::future::pending::<()>().await;
        }
        guard.release().await.expect("the child releases");
    });
}

/// Detects two holders inside a critical section at once, and lost updates.
#[derive(Debug, Default)]
pub struct CriticalSection {
    inside: std::sync::atomic::AtomicBool,
    count: std::sync::atomic::AtomicU64,
    tokens: std::sync::Mutex<Vec<FencingToken>>,
}

impl CriticalSection {
    /// Enters, does a deliberately non-atomic increment across an await, and leaves.
    pub async fn enter(&self, token: FencingToken) {
        use std::sync::atomic::Ordering::SeqCst;
        assert!(!self.inside.swap(true, SeqCst), "two holders inside the critical section at once");
        let seen = self.count.load(SeqCst);
        tokio::task::yield_now().await;
        self.count.store(seen + 1, SeqCst);
        self.tokens.lock().unwrap().push(token);
        self.inside.store(false, SeqCst);
    }

    /// How many times it was entered.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The tokens it was entered with, in order.
    pub fn tokens(&self) -> Vec<FencingToken> {
        self.tokens.lock().unwrap().clone()
    }
}

/// `contenders` connections to `url` take `name` in a loop for `run`, each grant entering one
/// shared critical section, while `disturb` runs (a server killed, …). Asserts that nobody was
/// granted twice at once (a panic in the section), that some sections ran and that tokens grew
/// in grant order; returns the tokens.
pub async fn contend_while(
    url: &str,
    name: &str,
    contenders: usize,
    run: Duration,
    disturb: impl Future<Output = ()>,
) -> Vec<FencingToken> {
    let section = Arc::new(CriticalSection::default());
    let deadline = std::time::Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..contenders {
        let (locks, section, name) = (connect(url).await, section.clone(), name.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut entered = 0;
            while std::time::Instant::now() < deadline {
                let Ok(guard) = locks.acquire_timeout(&name, Duration::from_secs(5)).await else { continue };
                if guard.run_while_held(section.enter(guard.fencing_token())).await.is_ok() {
                    entered += 1;
                }
                let _ = guard.release().await;
            }
            entered
        }));
    }
    disturb.await;
    let mut entered = 0;
    for task in tasks {
        entered += task.await.expect("no double grant (a panic in the critical section)");
    }
    assert!(entered > 0);
    let tokens = section.tokens();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens in grant order: {tokens:?}");
    tokens
}

/// The runtime every test of the `conformance!` macro runs on (as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` would make it).
#[doc(hidden)]
pub fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}
