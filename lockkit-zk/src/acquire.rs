//! One acquire on one session: its node (created in Curator's protected mode), its place in
//! line, and the cleanup that deletes its node unless it becomes a guard's.

use std::pin::Pin;
use std::sync::Arc;

use lockkit_core::driver::{Cleanup, GrantRequest, KeptLease, attempt};
use lockkit_core::{Error, FencingToken, GrantKind, Lease, LockGuard, LockName};
use zookeeper_client::{EventType, OneshotWatcher, Stat, WatchedEvent};

use crate::BACKEND;
use crate::error::{ZkError, connection_broke, error};
use crate::locks::{RECONNECT_PAUSE, Released, ZkGrant, ZkLocks, watch_node};
use crate::session::ZkSession;

/// The acquire's errors keep what the client said ([`ZkError`]): a session gone is tried
/// again on a new one.
type Result<T, E = ZkError> = std::result::Result<T, E>;

/// A one-shot watch as a future: the event, or `None` when the session closed with the watch
/// still set (zookeeper-client 0.11 panics inside `changed()` then, as the watch's sender is
/// dropped; that panic is caught here, so it never reaches a caller's task).
pub(crate) type OwnWatch = Pin<Box<dyn Future<Output = Option<WatchedEvent>> + Send>>;

/// The watch of `watcher`, as an [`OwnWatch`].
pub(crate) fn watch_of(watcher: OneshotWatcher) -> OwnWatch {
    let mut changed = Box::pin(watcher.changed());
    Box::pin(std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| changed.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(event)) => std::task::Poll::Ready(Some(event)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(None),
        }
    }))
}

/// Whether a node exists, and a watch on it.
type Watched = (Option<Stat>, OneshotWatcher);

/// One contender's node.
struct Node {
    path: String,
    name: String,
    stat: Stat,
}

/// Where an acquire's wait for its turn ended.
enum Turn {
    /// First in line: granted. The own node's watch when it is set already; else the guard's
    /// watcher sets it, off the acquire's path.
    First(Option<OwnWatch>),
    /// Behind another contender, and not waiting.
    Behind,
}

/// What a cleanup deletes: the acquire's node by name, or — while a create may have been
/// applied without its answer reaching us — every node with its protected prefix.
#[derive(Clone)]
enum Target {
    Name(String),
    Prefix(String),
}

/// One acquire of a lock on one session. Its protected prefix is new for every acquire *and*
/// every session it tries (as with Curator), so no node of an earlier, lost session can pass
/// for its own.
pub(crate) struct Acquire<'a> {
    locks: &'a ZkLocks,
    session: Arc<ZkSession>,
    lease: Arc<KeptLease>,
    name: &'a LockName,
    directory: &'a str,
    prefix: String,
}

impl<'a> Acquire<'a> {
    pub(crate) fn new(
        locks: &'a ZkLocks,
        session: Arc<ZkSession>,
        lease: Arc<KeptLease>,
        request: &'a GrantRequest,
        directory: &'a str,
    ) -> Self {
        let id = u128::from(lockkit_core::driver::random_u64()) << 64 | u128::from(lockkit_core::driver::random_u64());
        let prefix = locks.recipe.node_prefix(id, request.kind == GrantKind::Candidate);
        let name = &request.name;
        Acquire { locks, session, lease, name, directory, prefix }
    }

    /// Creates the node, waits for its turn (or not, when trying) and hands out the guard. The
    /// node is deleted, through the core's [`Cleanup`], whenever this ends without a guard —
    /// an error, a try that found the lock held, or the future dropped.
    pub(crate) async fn run(self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        let mut cleanup = self.cleanup(Target::Prefix(self.prefix.clone()));
        let mut unanswered = false;
        let (mut node, listed) = match self.create(&request.holder, &mut unanswered).await {
            Ok(created) => created,
            Err(e) => {
                if !unanswered {
                    cleanup.disarm(); // every create answered, with an error: nothing to delete
                }
                return Err(e);
            }
        };
        if !unanswered {
            // Every create answered: its node is the only one, deleted by name.
            std::mem::replace(&mut cleanup, self.cleanup(Target::Name(node.name.clone()))).disarm();
        }
        let Turn::First(watch) = self.wait_turn(&mut node, &mut cleanup, request.wait, listed).await? else {
            // Held elsewhere: that is the answer, whatever the cleanup meets (the core retries
            // it, or gives the session up so that the server ends the node).
            let _ = cleanup.now().await;
            return Ok(None);
        };
        cleanup.disarm();
        let signal = self.lease.grant_signal();
        let released = Arc::new(Released::default());
        let watched = watch_node(self.session.clone(), node.path.clone(), watch, signal.clone(), released.clone());
        let grant = ZkGrant {
            session: self.session,
            path: node.path,
            name: self.name.to_string(),
            watch: tokio::spawn(watched),
            released,
        };
        let token = FencingToken::new(node.stat.czxid as u64);
        Ok(Some(request.granted(BACKEND, token, self.lease, signal, grant)))
    }

    /// An armed cleanup of `target`, retried by the core until confirmed or moot.
    fn cleanup(&self, target: Target) -> Cleanup {
        let (session, directory) = (self.session.clone(), self.directory.to_owned());
        let what = format!("the node of an acquire of lock {:?}", self.name.as_str());
        let delete = attempt(move || {
            let (session, directory, target) = (session.clone(), directory.clone(), target.clone());
            async move { delete(&session, &directory, &target).await.map_err(|e| error(&session.endpoints, e)) }
        });
        Cleanup::new(&self.lease, what, delete)
    }

    /// Creates the node (and the directories above it, when missing), with the directory's
    /// listing when it came (sent right behind the create on the same session, so the server
    /// answers it after the create and it shows the new node: the place in line costs no round
    /// trip of its own). After a create that got no answer (a lost connection), the node is
    /// looked for by its prefix before creating again; `unanswered` tells whether that happened
    /// (a node may then exist unseen).
    async fn create(&self, holder: &str, unanswered: &mut bool) -> Result<(Node, Option<Vec<String>>)> {
        let path = format!("{}/{}", self.directory, self.prefix);
        let deadline = tokio::time::Instant::now() + self.locks.settings.timeout;
        loop {
            let client = self.session.client().map_err(|e| self.locks.error(e))?;
            if *unanswered && let Some(node) = self.find().await? {
                return Ok((node, None));
            }
            // Both requests go out at once, in call order.
            let created = client.create(&path, holder.as_bytes(), &self.locks.node_options());
            let (created, listed) = tokio::join!(created, client.list_children(self.directory));
            match created {
                Ok((stat, sequence)) => {
                    let name = format!("{}{sequence}", self.prefix);
                    return Ok((Node { path: format!("{path}{sequence}"), name, stat }, listed.ok()));
                }
                Err(zookeeper_client::Error::NoNode) => self.locks.make_directory(&client, self.directory).await?,
                Err(e) if connection_broke(&e) => {
                    *unanswered = true;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(self.locks.error(e));
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(e) => return Err(self.locks.error(e)),
            }
        }
    }

    /// The acquire's earliest node, looked for by its prefix after a `sync` of the directory: a
    /// server behind the leader could miss a create that was applied, and the acquire would
    /// queue a second node behind its first.
    async fn find(&self) -> Result<Option<Node>> {
        let client = self.session.client().map_err(|e| self.locks.error(e))?;
        let listed = self
            .locks
            .call(|| async {
                client.sync(self.directory).await?;
                client.list_children(self.directory).await
            })
            .await;
        let children = match listed {
            Err(zookeeper_client::Error::NoNode) => return Ok(None),
            other => other.map_err(|e| self.locks.error(e))?,
        };
        let Some(place) = self.locks.recipe.place(children, &self.prefix) else { return Ok(None) };
        let path = format!("{}/{}", self.directory, place.mine);
        let stat = self.locks.call(|| client.check_stat(&path)).await.map_err(|e| self.locks.error(e))?;
        Ok(stat.map(|stat| Node { path, name: place.mine, stat }))
    }

    /// Waits until the acquire's node is first in line, watching only the contender ahead of it
    /// (and, while it waits, its own node, whose watch the guard keeps). `listed`: the
    /// directory's children listed with the create, looked at first. Every node with its prefix
    /// is its own: the earliest becomes `node` (and what `cleanup` deletes), the others are
    /// deleted. A lost connection is retried once the session reconnects, for as long as the
    /// lease lives.
    async fn wait_turn(
        &self,
        node: &mut Node,
        cleanup: &mut Cleanup,
        wait: bool,
        mut listed: Option<Vec<String>>,
    ) -> Result<Turn> {
        let mut own: Option<OwnWatch> = None;
        loop {
            let watch_own = own.is_none();
            let (children, watched) = match listed.take() {
                Some(children) => (children, None),
                None => self.until_lost(|| self.look(&node.path, watch_own)).await?,
            };
            if let Some(watched) = watched {
                own = Some(self.own_watch(watched)?);
            }
            let Some(place) = self.locks.recipe.place(children, &self.prefix) else {
                return Err(self.gone("its node disappeared (session expired or node deleted)"));
            };
            if place.mine != node.name {
                // An earlier node of its own (a create applied although its answer was lost).
                own = None;
                let path = format!("{}/{}", self.directory, place.mine);
                let (stat, watcher) = self.until_lost(|| self.watch_stat(&path)).await?;
                let Some(stat) = stat else { continue }; // deleted meanwhile: look again
                *node = Node { path, name: place.mine, stat };
                own = Some(watch_of(watcher));
                std::mem::replace(cleanup, self.cleanup(Target::Name(node.name.clone()))).disarm();
            }
            for extra in place.extra {
                // Awaited, so that the next listing no longer shows it; a failure gives the session up.
                let _ = self.cleanup(Target::Name(extra)).now().await;
            }
            // A waiter paused past its session must not take the lock.
            if self.lease.is_lost() {
                return Err(self.gone("its ZooKeeper session was lost"));
            }
            let Some(ahead) = place.ahead else { return Ok(Turn::First(own)) };
            if !wait {
                return Ok(Turn::Behind);
            }
            let ahead = format!("{}/{ahead}", self.directory);
            let (exists, ahead_watch) = match own {
                Some(_) => self.until_lost(|| self.watch_stat(&ahead)).await?,
                // A waiter watches its own node too: both watches in one round trip.
                None => {
                    let (mine, ahead) = self.until_lost(|| self.watch_both(&node.path, &ahead)).await?;
                    own = Some(self.own_watch(mine)?);
                    ahead
                }
            };
            if exists.is_none() {
                continue;
            }
            let mut watching = own.take().expect("watched above");
            tokio::select! {
                biased;
                event = &mut watching => {
                    if !event.is_some_and(|e| e.event_type == EventType::NodeDataChanged) {
                        return Err(self.gone("its node disappeared (session expired or node deleted)"));
                    }
                    // Its data changed: the next round watches it again.
                }
                _ = self.lease.lost() => return Err(self.gone("its ZooKeeper session was lost")),
                event = watch_of(ahead_watch) => {
                    // When only the contender ahead was ahead, its deletion makes this node first
                    // (later contenders queue behind it): no need to list the directory again. The
                    // own node is still there, or its deletion would have come first (ZooKeeper
                    // sends one session's events in order, and `biased` looks at it first).
                    let deleted = event.is_some_and(|e| e.event_type == EventType::NodeDeleted);
                    if place.position == 1 && deleted && !self.lease.is_lost() {
                        return Ok(Turn::First(Some(watching)));
                    }
                    own = Some(watching);
                }
            }
        }
    }

    /// One round trip: the directory's children and, when asked, a new watch on the own node.
    async fn look(
        &self,
        own: &str,
        watch_own: bool,
    ) -> Result<(Vec<String>, Option<(Option<Stat>, OneshotWatcher)>), zookeeper_client::Error> {
        let client = self.session.client()?;
        // Both requests go out at once (the client sends them in call order).
        let children = client.list_children(self.directory);
        let watched = watch_own.then(|| client.check_and_watch_stat(own));
        let (children, watched) = tokio::join!(children, async {
            match watched {
                Some(watched) => Some(watched.await),
                None => None,
            }
        });
        let children = match children {
            Err(zookeeper_client::Error::NoNode) => Vec::new(), // the directory went with its nodes
            other => other?,
        };
        Ok((children, watched.transpose()?))
    }

    /// Whether the own node and the one ahead exist, with a watch on each: both requests go out
    /// at once.
    async fn watch_both(&self, own: &str, ahead: &str) -> Result<(Watched, Watched), zookeeper_client::Error> {
        let client = self.session.client()?;
        let (own, ahead) = tokio::join!(client.check_and_watch_stat(own), client.check_and_watch_stat(ahead));
        Ok((own?, ahead?))
    }

    /// Whether a node exists, with a watch on it.
    async fn watch_stat(&self, path: &str) -> Result<(Option<Stat>, OneshotWatcher), zookeeper_client::Error> {
        self.session.client()?.check_and_watch_stat(path).await
    }

    /// The own node's watch, once it is known to exist.
    fn own_watch(&self, (stat, watcher): (Option<Stat>, OneshotWatcher)) -> Result<OwnWatch> {
        match stat {
            Some(_) => Ok(watch_of(watcher)),
            None => Err(self.gone("its node disappeared (session expired or node deleted)")),
        }
    }

    /// Runs a request until it answers with anything but a lost connection, pausing between
    /// tries (a request sent while disconnected waits for the reconnection): bounded by the loss
    /// of the lease, checked before every try, and by the acquire's cancellation.
    async fn until_lost<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, zookeeper_client::Error>>,
    {
        loop {
            let answer = tokio::select! {
                biased;
                _ = self.lease.lost() => return Err(self.gone("its ZooKeeper session was lost")),
                answer = call() => answer,
            };
            match answer {
                Err(e) if connection_broke(&e) => tokio::select! {
                    _ = self.lease.lost() => {}
                    _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
                },
                other => return other.map_err(|e| self.locks.error(e)),
            }
        }
    }

    fn gone(&self, what: &str) -> ZkError {
        let reason = format!("while waiting, {what}");
        ZkError::Lockkit(Error::LockLost { backend: BACKEND, name: self.name.to_string(), reason })
    }
}

/// One attempt at deleting an acquire's nodes: by name, or every node with its prefix (after a
/// `sync`, so that a create applied on the leader is seen). A node already gone counts as deleted.
async fn delete(session: &ZkSession, directory: &str, target: &Target) -> Result<(), zookeeper_client::Error> {
    let client = session.client()?;
    let names = match target {
        Target::Name(name) => vec![name.clone()],
        Target::Prefix(prefix) => {
            client.sync(directory).await?;
            match client.list_children(directory).await {
                Ok(children) => children.into_iter().filter(|c| c.starts_with(prefix.as_str())).collect(),
                Err(zookeeper_client::Error::NoNode) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    for name in names {
        match client.delete(&format!("{directory}/{name}"), None).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
