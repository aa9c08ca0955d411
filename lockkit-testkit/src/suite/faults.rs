//! Fault properties: what every network backend must do when the network between a client and
//! its server holds, drops or refuses traffic. A fault proxy ([`crate::support::proxy`]) sits
//! between one handle (the *proxied* handle) and the server; the other handles in a property
//! connect directly. The `conformance!` macro runs them for the backends whose line declares
//! `network` (`memory://`, `file://` and Redis Cluster have no fault proxy).
//!
//! Each property prints one line to stderr for the fault matrix (run with `--nocapture`):
//! `FAULT-MATRIX backend=… target=… fault=… outcome=ok|<failure> reacquire_ms=…`, where
//! `reacquire_ms` is the time from giving the lock up (or from the fault, for a partition)
//! until another handle acquired it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockkit::{DistributedLock, Error, LockGuard};

use crate::Target;
use crate::proxy::{Direction, ProxySet};
use crate::target::Connector;

/// The TTL of every handle in these properties.
const T: Duration = Duration::from_secs(2);
/// The request timeout (`timeout=`) of every handle in these properties.
const R: Duration = Duration::from_secs(1);
/// Slack on the bounds, for scheduling and round trips on a loaded machine.
const SLACK: Duration = Duration::from_secs(1);
/// How long a handle may take to acquire a free lock once its network works again.
const USABLE: Duration = Duration::from_secs(5);
/// Bound on a call whose requests get no answer: it must fail within a few request timeouts
/// (a driver may retry a request once, then undo what it may have done).
const UNANSWERED: Duration = Duration::from_secs(5);

/// Why a property failed: a short name for the matrix, and the message.
struct Failure {
    outcome: &'static str,
    message: String,
}

type Outcome = Result<Option<Duration>, Failure>;

fn fail<T>(outcome: &'static str, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure { outcome, message: message.into() })
}

/// The handles of one fault property.
struct Handles {
    /// The handle whose traffic goes through the proxies.
    proxied: Arc<dyn DistributedLock>,
    proxies: ProxySet,
    /// Two direct handles.
    direct: Arc<dyn DistributedLock>,
    other: Arc<dyn DistributedLock>,
    backend: &'static str,
    target: String,
    /// `key=value` details appended to the matrix line.
    notes: std::sync::Mutex<Vec<String>>,
    /// `Some(n)`: the property takes permits of semaphores of `n` permits instead of locks.
    permits: Option<u32>,
}

impl Handles {
    /// Panics for a target without a fault proxy (its `conformance!` line declares no `network`).
    async fn new(t: &Target, fault: &str) -> Handles {
        Handles::taking(t, fault, None).await
    }

    /// [`new`](Self::new), taking permits of semaphores of `permits` permits when given.
    async fn taking(t: &Target, fault: &str, permits: Option<u32>) -> Handles {
        // `LOCKKIT_TEST_LOG=lockkit=debug,zookeeper_client=debug` shows what the drivers did.
        if let Ok(filter) = std::env::var("LOCKKIT_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        let Some((url, proxies)) = t.proxied(T, R).await else {
            panic!("{} has no fault proxy for the fault {fault}: its conformance! line declares no network", t.label())
        };
        // Direct handles first: a server that just started is ready once they connected, so the
        // proxied handle's session does not begin with a slow open.
        let connector = t.connector();
        let direct = connect_patiently(connector, &t.url_with(T, R)).await;
        let other = connect_patiently(connector, &t.url_with(T, R)).await;
        let proxied = connect_patiently(connector, &url).await;
        Handles {
            backend: proxied.backend(),
            proxied,
            proxies,
            direct,
            other,
            target: t.label(),
            notes: Default::default(),
            permits,
        }
    }

    /// `name`'s lock, or a permit of the semaphore `name`, through `locks`, within `wait`.
    async fn hold(&self, locks: &dyn DistributedLock, name: &str, wait: Duration) -> lockkit::Result<LockGuard> {
        match self.permits {
            Some(permits) => locks.semaphore(name, permits).acquire_timeout(wait).await,
            None => locks.acquire_timeout(name, wait).await,
        }
    }

    /// Prints the matrix line, then fails the test if the property does not hold.
    fn report(&self, fault: &str, outcome: Outcome) {
        let (name, reacquired, message) = match &outcome {
            Ok(reacquired) => ("ok", *reacquired, None),
            Err(failure) => (failure.outcome, None, Some(&failure.message)),
        };
        let ms = reacquired.map_or("-".to_owned(), |d| d.as_millis().to_string());
        let notes: String = self.notes.lock().unwrap().iter().map(|n| format!(" {n}")).collect();
        eprintln!(
            "FAULT-MATRIX backend={} target={} fault={fault} outcome={name} reacquire_ms={ms}{notes}",
            self.backend, self.target
        );
        if let Some(message) = message {
            panic!("{} ({}), fault {fault}: {message}", self.backend, self.target);
        }
    }

    /// Adds `key=value` to the matrix line.
    fn note(&self, key: &str, value: impl std::fmt::Display) {
        self.notes.lock().unwrap().push(format!("{key}={value}"));
    }

    /// A guard of the proxied handle, while its network works.
    async fn take(&self, name: &str) -> Result<LockGuard, Failure> {
        match self.hold(&*self.proxied, name, USABLE).await {
            Ok(guard) => Ok(guard),
            Err(e) => fail("setup", format!("the proxied handle did not acquire `{name}` before the fault: {e}")),
        }
    }

    /// Another handle (`by`) acquires `name` before `deadline`: how long after `since` it did.
    async fn reacquire(
        &self,
        by: &dyn DistributedLock,
        name: &str,
        since: Instant,
        deadline: Instant,
    ) -> Result<Duration, Failure> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.hold(by, name, wait).await {
            Ok(guard) => {
                let after = since.elapsed();
                let _ = guard.release().await;
                Ok(after)
            }
            Err(e) => fail(
                "not-reacquired",
                format!("another handle could not acquire `{name}` {:?} after it was given up: {e}", since.elapsed()),
            ),
        }
    }

    /// The proxied handle, its network back, acquires a fresh lock, and the guard is held.
    async fn still_usable(&self, name: &str) -> Result<(), Failure> {
        let usable = self.usable(name).await;
        self.note("usable", if usable.is_ok() { "yes" } else { "no" });
        usable
    }

    async fn usable(&self, name: &str) -> Result<(), Failure> {
        match self.hold(&*self.proxied, name, USABLE).await {
            Ok(guard) if guard.is_held() => {
                let _ = guard.release().await;
                Ok(())
            }
            Ok(guard) => fail(
                "handle-unusable",
                format!("the fresh guard of `{name}` is not held: {:?}", guard.loss_signal().reason()),
            ),
            Err(e) => fail("handle-unusable", format!("the handle could not acquire a fresh lock `{name}`: {e}")),
        }
    }
}

/// Connects, trying again for a while: a server that just started (a ZooKeeper JVM warming up)
/// may not open a session within the short request timeout these properties use.
pub(super) async fn connect_patiently(connector: Connector, url: &str) -> Arc<dyn DistributedLock> {
    let started = Instant::now();
    loop {
        match connector(url).await {
            Ok(locks) => return locks,
            Err(e) if started.elapsed() > Duration::from_secs(30) => panic!("connect {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Polls `future` once, in place.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *future).poll(cx))).await
}

/// A release whose request never reaches the server fails after the request timeout; once the
/// connection is cut and the network works again, the lock is free for another handle within
/// T + R of the release call (the release is retried, or the grant expires), and the handle
/// is still usable.
pub async fn a_release_that_timed_out_still_frees_the_lock(t: &Target) {
    held_release(t, None).await
}

/// [`a_release_that_timed_out_still_frees_the_lock`] for a permit of a semaphore.
pub async fn a_permit_release_that_timed_out_still_frees_the_permit(t: &Target) {
    held_release(t, Some(1)).await
}

async fn held_release(t: &Target, permits: Option<u32>) {
    let fault = if permits.is_some() { "permit-release-held" } else { "release-held" };
    let h = Handles::taking(t, fault, permits).await;
    let outcome = async {
        let guard = h.take("held-release").await?;
        h.proxies.hold(Direction::ToServer);
        let released_at = Instant::now();
        let result = tokio::time::timeout(UNANSWERED, guard.release()).await;
        h.proxies.cut();
        h.proxies.release();
        let Ok(result) = result else {
            return fail("release-unbounded", format!("the release did not return within {UNANSWERED:?}"));
        };
        h.note("release_ms", released_at.elapsed().as_millis());
        h.note("release", if result.is_ok() { "ok" } else { "err" });
        let reacquired = h.reacquire(&*h.direct, "held-release", released_at, released_at + T + R + SLACK).await;
        let usable = h.still_usable("after-held-release").await;
        let reacquired = reacquired?;
        usable?;
        if result.is_ok() {
            return fail("release-false-ok", "the release reported success although the server never heard of it");
        }
        Ok(Some(reacquired))
    }
    .await;
    h.report(fault, outcome);
}

/// A release future polled once (its request sent into a held connection) and then dropped:
/// the lock is still given back — within T + R of the drop, once the network works again —
/// and the handle is still usable.
pub async fn a_dropped_release_still_frees_the_lock(t: &Target) {
    dropped_release(t, None).await
}

/// [`a_dropped_release_still_frees_the_lock`] for a permit of a semaphore.
pub async fn a_dropped_permit_release_still_frees_the_permit(t: &Target) {
    dropped_release(t, Some(1)).await
}

async fn dropped_release(t: &Target, permits: Option<u32>) {
    let fault = if permits.is_some() { "permit-release-dropped" } else { "release-dropped" };
    let h = Handles::taking(t, fault, permits).await;
    let outcome = async {
        let guard = h.take("dropped-release").await?;
        h.proxies.hold(Direction::ToServer);
        let mut release = Box::pin(guard.release());
        let polled = poll_once(&mut release).await;
        drop(release);
        let dropped_at = Instant::now();
        h.proxies.cut();
        h.proxies.release();
        if polled.is_ready() {
            eprintln!("note: {} ({}): the release finished on its first poll: {polled:?}", h.backend, h.target);
        }
        let reacquired = h.reacquire(&*h.direct, "dropped-release", dropped_at, dropped_at + T + R + SLACK).await;
        let usable = h.still_usable("after-dropped-release").await;
        let reacquired = reacquired?;
        usable?;
        Ok(Some(reacquired))
    }
    .await;
    h.report(fault, outcome);
}

/// A waiter of the proxied handle whose `acquire_timeout` expires while its connection is
/// held (its cleanup cannot reach the server), then cut: once the holder releases, another
/// handle acquires within T + R — no abandoned waiter entry is ahead of it — and the waiter's
/// handle is still usable.
pub async fn a_waiter_that_timed_out_in_a_held_connection_leaves_no_entry(t: &Target) {
    held_waiter(t, None).await
}

/// [`a_waiter_that_timed_out_in_a_held_connection_leaves_no_entry`] for a permit of a semaphore.
pub async fn a_permit_waiter_that_timed_out_in_a_held_connection_leaves_no_entry(t: &Target) {
    held_waiter(t, Some(1)).await
}

async fn held_waiter(t: &Target, permits: Option<u32>) {
    let fault = if permits.is_some() { "permit-waiter-timeout-held" } else { "waiter-timeout-held" };
    let h = Arc::new(Handles::taking(t, fault, permits).await);
    let outcome = async {
        let name = "held-waiter";
        let holder = match h.hold(&*h.direct, name, USABLE).await {
            Ok(guard) => guard,
            Err(e) => return fail("setup", format!("the holder did not acquire: {e}")),
        };
        // Short, so that the hold below stays far shorter than the TTL: the waiter's entry must be
        // removed by its handle, not by the server's expiry.
        let wait = Duration::from_millis(800);
        let waiting = h.clone();
        let waiter =
            tokio::spawn(async move { waiting.hold(&*waiting.proxied, name, wait).await.map(|g| g.fencing_token()) });
        if h.direct.status(name).await.is_ok_and(|s| s.waiting.is_some()) {
            crate::support::in_line(&*h.direct, name, 1).await;
        } else {
            // No line to watch on this backend: give the waiter time to register.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if waiter.is_finished() {
            return fail("setup", format!("the waiter ended before the hold: {:?}", waiter.await));
        }
        h.proxies.hold(Direction::Both);
        let ended = tokio::time::timeout(wait + SLACK, waiter).await;
        // Let the abandoned waiter send its cleanup into the held connection, then cut it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.proxies.cut();
        h.proxies.release();
        match ended {
            // A timeout, or an error of its own: either way the waiter gave up.
            Ok(Ok(Err(_))) => {}
            Ok(Ok(Ok(token))) => {
                return fail("double-grant", format!("the waiter was granted a held lock (token {token})"));
            }
            Ok(Err(e)) => panic!("the waiter task: {e}"),
            Err(_) => return fail("wait-unbounded", format!("acquire_timeout({wait:?}) did not return in time")),
        }
        let released_at = Instant::now();
        if let Err(e) = holder.release().await {
            return fail("setup", format!("the direct holder could not release: {e}"));
        }
        let reacquired = h.reacquire(&*h.other, name, released_at, released_at + T + R + SLACK).await;
        let usable = h.still_usable("after-held-waiter").await;
        let reacquired = reacquired?;
        usable?;
        Ok(Some(reacquired))
    }
    .await;
    h.report(fault, outcome);
}

/// An acquire whose request is held past the client's request timeout fails; when the hold
/// ends the server applies the request late, and the grant it makes is not left to anyone:
/// another handle acquires the lock within T + R.
pub async fn an_acquire_applied_after_its_timeout_leaves_no_orphan_grant(t: &Target) {
    let fault = "acquire-late";
    let h = Handles::new(t, fault).await;
    let outcome = async {
        let name = "late-acquire";
        // The proxied handle's session or lease exists before the fault (as in a running service).
        h.usable("before-late-acquire").await?;
        h.proxies.hold(Direction::ToServer);
        let tried_at = Instant::now();
        let tried = tokio::time::timeout(UNANSWERED, h.proxied.try_acquire(name)).await;
        let (applied_at, tried_for) = (Instant::now(), tried_at.elapsed());
        h.proxies.release();
        h.note("try_ms", tried_for.as_millis());
        match tried {
            Ok(Err(_)) => {}
            Ok(Ok(granted)) => {
                return fail(
                    "acquire-false-grant",
                    format!("the held acquire answered {granted:?} after {tried_for:?}"),
                );
            }
            Err(_) => return fail("acquire-unbounded", format!("try_acquire did not fail within {UNANSWERED:?}")),
        }
        let reacquired = h.reacquire(&*h.direct, name, applied_at, applied_at + T + R + SLACK).await;
        let usable = h.still_usable("after-late-acquire").await;
        let reacquired = reacquired?;
        usable?;
        Ok(Some(reacquired))
    }
    .await;
    h.report(fault, outcome);
}

/// Watches a guard's loss signal in a task: when it fired, and why.
fn watch_loss(guard: &LockGuard) -> tokio::task::JoinHandle<(Instant, String)> {
    let signal = guard.loss_signal();
    tokio::spawn(async move {
        let reason = signal.lost().await;
        (Instant::now(), reason)
    })
}

/// The connections under two held guards of one handle are cut and new ones refused for less
/// than T / 3, then the network works again within the TTL: both guards stay held and neither
/// loss signal fires, and direct handles cannot acquire either lock meanwhile.
pub async fn a_brief_disconnection_loses_no_lock(t: &Target) {
    let fault = "brief-cut";
    let h = Handles::new(t, fault).await;
    let outcome = async {
        let (a, b) = (h.take("kept-a").await?, h.take("kept-b").await?);
        let losses = [watch_loss(&a), watch_loss(&b)];
        h.proxies.refuse(true);
        h.proxies.cut();
        let cut_at = Instant::now();
        // Others try for two TTLs from the cut: long enough for any lost lease to show.
        let window = T * 2;
        let thieves = [
            tokio::spawn({
                let direct = h.direct.clone();
                async move { direct.acquire_timeout("kept-a", window).await.map(|g| g.fencing_token()) }
            }),
            tokio::spawn({
                let other = h.other.clone();
                async move { other.acquire_timeout("kept-b", window).await.map(|g| g.fencing_token()) }
            }),
        ];
        tokio::time::sleep(T / 4).await; // the outage
        h.proxies.refuse(false);
        let mut stolen = Vec::new();
        for (thief, name) in thieves.into_iter().zip(["kept-a", "kept-b"]) {
            match thief.await.expect("the thief task") {
                Err(Error::Timeout { .. }) => {}
                Ok(token) => stolen.push(format!("`{name}` granted to a direct handle (token {token})")),
                Err(e) => return fail("setup", format!("the direct acquire of `{name}` failed: {e}")),
            }
        }
        if !stolen.is_empty() {
            return fail("double-grant", format!("{} {:?} after the cut", stolen.join(", "), cut_at.elapsed()));
        }
        for (loss, guard) in losses.into_iter().zip([&a, &b]) {
            if loss.is_finished() {
                let (at, reason) = loss.await.expect("the loss watcher");
                return fail(
                    "false-loss",
                    format!(
                        "`{}` fired its loss {:?} after the cut, which ended after {:?}: {reason}",
                        guard.name(),
                        at - cut_at,
                        T / 4
                    ),
                );
            }
            loss.abort();
            if !guard.is_held() {
                return fail(
                    "false-loss",
                    format!(
                        "`{}` is not held after a {:?} outage: {:?}",
                        guard.name(),
                        T / 4,
                        guard.loss_signal().reason()
                    ),
                );
            }
        }
        Ok(None)
    }
    .await;
    h.report(fault, outcome);
}

/// The proxied handle cannot reach the server (traffic held both ways, new connections
/// refused) for longer than the TTL: every guard fires its loss signal before the server could
/// have let its lease expire — no later than T after the partition began, and before a direct
/// handle gets the lock — and once the network works again the handle acquires again.
pub async fn a_partition_longer_than_the_ttl_fires_the_loss_first(t: &Target) {
    let fault = "partition";
    let h = Handles::new(t, fault).await;
    let outcome = async {
        let names = ["parted-a", "parted-b"];
        let guards = [h.take(names[0]).await?, h.take(names[1]).await?];
        let losses = guards.each_ref().map(watch_loss);
        h.proxies.refuse(true);
        h.proxies.hold(Direction::Both);
        let parted_at = Instant::now();
        // The server frees the locks at the lease's expiry (Consul: up to 2 TTLs, then the
        // lock-delay): direct handles wait that long.
        let patience = T * 3 + SLACK;
        let takers = [(h.direct.clone(), names[0]), (h.other.clone(), names[1])].map(|(locks, name)| {
            tokio::spawn(async move {
                let guard = locks.acquire_timeout(name, patience).await;
                (Instant::now(), guard.map(|g| g.fencing_token()))
            })
        });
        let mut lost_at = Vec::new();
        for (loss, name) in losses.into_iter().zip(names) {
            match tokio::time::timeout_at((parted_at + T + SLACK).into(), loss).await {
                Ok(Ok((at, _reason))) => lost_at.push(at),
                Ok(Err(e)) => panic!("the loss watcher: {e}"),
                Err(_) => {
                    h.proxies.release();
                    h.proxies.refuse(false);
                    return fail("no-loss", format!("`{name}` did not fire its loss signal {:?} into the partition", T + SLACK));
                }
            }
        }
        h.note("loss_ms", lost_at.iter().map(|at| (*at - parted_at).as_millis()).max().unwrap_or_default());
        let mut taken_at = Vec::new();
        for taker in takers {
            taken_at.push(taker.await.expect("the taker task"));
        }
        h.proxies.release();
        h.proxies.refuse(false);
        for ((lost, (taken, token)), name) in lost_at.iter().zip(&taken_at).zip(names) {
            if let Ok(token) = token
                && taken <= lost
            {
                return fail(
                    "late-loss",
                    format!(
                        "`{name}` was granted to a direct handle (token {token}) {:?} into the partition, its loss fired only at {:?}",
                        *taken - parted_at,
                        *lost - parted_at
                    ),
                );
            }
            if *lost > parted_at + T {
                return fail(
                    "late-loss",
                    format!("`{name}` fired its loss {:?} into the partition, after the TTL {T:?}", *lost - parted_at),
                );
            }
        }
        let reacquired = taken_at.iter().filter(|(_, token)| token.is_ok()).map(|(at, _)| *at - parted_at).max();
        h.still_usable("after-partition").await?;
        for (name, (_, token)) in names.iter().zip(&taken_at) {
            if let Err(e) = token {
                return fail("not-reacquired", format!("a direct handle could not acquire `{name}` during the partition: {e}"));
            }
        }
        drop(guards);
        Ok(reacquired)
    }
    .await;
    h.report(fault, outcome);
}
