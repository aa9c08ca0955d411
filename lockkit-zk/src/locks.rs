//! The backend handle and the lock recipe: ephemeral sequential nodes, predecessor watches.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::{
    Capabilities, DistributedLock, Error, FencingToken, Grant, GrantRequest, KeptLease, Lease, LeaseBackend, LeasePool,
    LockGuard, LockName, LockStatus, LossSignal, Namespace, Result, Settings,
};
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, EventType, Stat, WatchedEvent};

use crate::recipe::{Contender, Recipe};
use crate::session::{Connector, ZkSession};
use crate::{BACKEND, error};

const NODE: CreateOptions<'static> = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
const DIRECTORY: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());
const LOCK_DIRECTORY: CreateOptions<'static> = CreateMode::Container.with_acls(Acls::anyone_all());

/// How long to wait before trying a request again after a connection loss.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

pub struct ZkLocks {
    pub connector: Connector,
    /// The chroot: every lock directory is below it.
    pub root: Namespace,
    pub recipe: Recipe,
    pub pool: LeasePool,
    pub endpoints: String,
    pub settings: Settings,
}

/// One contender's node.
struct Node {
    path: String,
    name: String,
    stat: Stat,
}

impl ZkLocks {
    /// The session (and its lease) for this TTL, opened when there is none or it was lost.
    pub async fn session(&self, ttl: Duration, refresh: Duration) -> Result<(Arc<KeptLease>, Arc<ZkSession>)> {
        let lease = self
            .pool
            .get(ttl, refresh, || async {
                let (session, id) = self.connector.open(ttl).await?;
                Ok((session as Arc<dyn LeaseBackend>, id))
            })
            .await?;
        let session = lease.backend::<ZkSession>().expect("the pool holds ZooKeeper sessions");
        session.monitor(&lease);
        Ok((lease, session))
    }

    /// The client of the handle's default session, for status and force-release.
    async fn default_client(&self) -> Result<Client> {
        let ttl = self.settings.ttl;
        self.session(ttl, self.settings.refresh_interval.unwrap_or(ttl / 3)).await?.1.client()
    }

    /// The directory of a lock: `/chroot/namespace/NAME`.
    fn directory(&self, name: &LockName) -> Result<String> {
        let mut path = String::new();
        for segment in self.root.segments() {
            path.push('/');
            path.push_str(segment);
        }
        path.push('/');
        path.push_str(&self.settings.namespace.key(name));
        if path == "/zookeeper" || path.starts_with("/zookeeper/") {
            return Err(Error::invalid_name(
                name.as_str(),
                "/zookeeper is ZooKeeper's own; put the lock in a chroot (zk://host/locks) or a namespace",
            ));
        }
        Ok(path)
    }

    /// Runs a request, trying again after connection losses until the request timeout.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, zookeeper_client::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, zookeeper_client::Error>>,
    {
        let lost = |e: &zookeeper_client::Error| *e == zookeeper_client::Error::ConnectionLoss;
        let outcome = lockkit_core::retry_transient(self.settings.timeout, RECONNECT_PAUSE, lost, call).await;
        outcome.map_err(|e| e.unwrap_or(zookeeper_client::Error::ConnectionLoss))
    }

    fn error(&self, e: zookeeper_client::Error) -> Error {
        error(&self.endpoints, e)
    }

    /// Creates my node (and the directories above it, when missing). A create whose reply was
    /// lost finds its node again by its unique prefix.
    async fn create(&self, client: &Client, directory: &str, prefix: &str, holder: &str) -> Result<Node> {
        let path = format!("{directory}/{prefix}");
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        loop {
            match client.create(&path, holder.as_bytes(), &NODE).await {
                Ok((stat, sequence)) => {
                    return Ok(Node { path: format!("{path}{sequence}"), name: format!("{prefix}{sequence}"), stat });
                }
                Err(zookeeper_client::Error::NoNode) => self.make_directory(client, directory).await?,
                Err(zookeeper_client::Error::ConnectionLoss) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    if let Some(node) = self.find(client, directory, prefix).await? {
                        return Ok(node);
                    }
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    /// My node, found by its prefix (after a create whose reply was lost).
    async fn find(&self, client: &Client, directory: &str, prefix: &str) -> Result<Option<Node>> {
        let children = match self.call(|| client.list_children(directory)).await {
            Err(zookeeper_client::Error::NoNode) => return Ok(None),
            other => other.map_err(|e| self.error(e))?,
        };
        let Some(name) = children.into_iter().find(|c| c.starts_with(prefix)) else { return Ok(None) };
        let path = format!("{directory}/{name}");
        let stat = self.call(|| client.check_stat(&path)).await.map_err(|e| self.error(e))?;
        Ok(stat.map(|stat| Node { path, name, stat }))
    }

    /// Creates a lock directory: its parents as plain nodes, itself as a container node, which
    /// ZooKeeper deletes once its last contender is gone.
    async fn make_directory(&self, client: &Client, directory: &str) -> Result<()> {
        let parent = &directory[..directory.rfind('/').unwrap_or(0)];
        if !parent.is_empty() {
            self.call(|| client.mkdir(parent, &DIRECTORY)).await.map_err(|e| self.error(e))?;
        }
        match self.call(|| client.create(directory, &[], &LOCK_DIRECTORY)).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The contenders of a lock, first in line first; none when its directory is missing.
    async fn contenders(&self, client: &Client, directory: &str) -> Result<Vec<Contender>> {
        match self.call(|| client.list_children(directory)).await {
            Ok(children) => Ok(self.recipe.contenders(children)),
            Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Waits until my node is first in line, watching only its predecessor (and my own node,
    /// whose watch the guard keeps). `None` when it is not first and `wait` is false.
    async fn wait_turn(
        &self,
        client: &Client,
        directory: &str,
        mine: &Node,
        lease: &KeptLease,
        wait: bool,
    ) -> Result<Option<OwnWatch>> {
        let gone = |what: &str| Error::LockLost {
            backend: BACKEND,
            name: directory.to_owned(),
            reason: format!("while waiting, {what}"),
        };
        let mut own_watch: Option<OwnWatch> = None;
        loop {
            // Both requests go out at once: one round trip.
            let children = client.list_children(directory);
            let own = own_watch.is_none().then(|| client.check_and_watch_stat(&mine.path));
            let (children, own) = tokio::join!(children, async {
                match own {
                    Some(own) => Some(own.await),
                    None => None,
                }
            });
            if let Some(own) = own {
                match own.map_err(|e| self.error(e))? {
                    (Some(_), watcher) => own_watch = Some(Box::pin(watcher.changed())),
                    (None, _) => return Err(gone("its node disappeared (session expired or node deleted)")),
                }
            }
            let contenders = match children {
                Ok(children) => self.recipe.contenders(children),
                Err(zookeeper_client::Error::ConnectionLoss) => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
                Err(e) => return Err(self.error(e)),
            };
            let Some(place) = contenders.iter().position(|c| c.name == mine.name) else {
                return Err(gone("its node disappeared (session expired or node deleted)"));
            };
            // A waiter paused past its session must not take the lock.
            if lease.is_lost() {
                return Err(gone("its ZooKeeper session was lost"));
            }
            if place == 0 {
                return Ok(own_watch);
            }
            if !wait {
                return Ok(None);
            }
            let predecessor = format!("{directory}/{}", contenders[place - 1].name);
            let (exists, predecessor_watch) =
                self.call(|| client.check_and_watch_stat(&predecessor)).await.map_err(|e| self.error(e))?;
            if exists.is_none() {
                continue;
            }
            let mut own = own_watch.take().expect("set above");
            tokio::select! {
                biased;
                event = &mut own => {
                    if event.event_type != EventType::NodeDataChanged {
                        return Err(gone("its node disappeared (session expired or node deleted)"));
                    }
                    // Its data changed: the next round watches it again.
                }
                _ = lease.lost() => return Err(gone("its ZooKeeper session was lost")),
                event = predecessor_watch.changed() => {
                    own_watch = Some(own);
                    // When only the predecessor was ahead, its deletion makes me first (later
                    // contenders queue behind me): no need to list the directory again. My own
                    // node is still there, or its deletion would have come first (ZooKeeper
                    // sends one session's events in order, and `biased` looks at mine first).
                    if place == 1 && event.event_type == EventType::NodeDeleted && !lease.is_lost() {
                        return Ok(own_watch);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl DistributedLock for ZkLocks {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        let directory = self.directory(&request.name)?;
        let prefix = self
            .recipe
            .node_prefix(u128::from(lockkit_core::random_u64()) << 64 | u128::from(lockkit_core::random_u64()));
        // A session that ended behind our back is noticed here at the latest: lose it, open a new one.
        let mut retried = false;
        let (lease, client, node, own_watch, mut cleanup) = loop {
            let (lease, session) = self.session(request.ttl, request.refresh_interval).await?;
            let client = session.client()?;
            let mut cleanup = Cleanup {
                client: client.clone(),
                directory: directory.clone(),
                prefix: prefix.clone(),
                name: None,
                armed: true,
            };
            let outcome = async {
                let node = self.create(&client, &directory, &prefix, &request.holder).await?;
                cleanup.name = Some(node.name.clone());
                let watch = self.wait_turn(&client, &directory, &node, &lease, request.wait).await?;
                Ok::<_, Error>((node, watch))
            }
            .await;
            match outcome {
                Ok((node, Some(watch))) => break (lease, client, node, watch, cleanup),
                Ok((_, None)) => {
                    cleanup.now().await;
                    return Ok(None);
                }
                // The session ended (its nodes went with it): once, try again on a new one.
                Err(e) if !retried && (lease.is_lost() || matches!(e, Error::Backend { temporary: true, .. })) => {
                    lease.lose(format!("ZooKeeper session {} ended: {e}", lease.id()));
                    cleanup.armed = false;
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        };
        cleanup.armed = false;
        let signal = lease.grant_signal();
        let watch = tokio::spawn(watch_node(client.clone(), node.path.clone(), own_watch, signal.clone()));
        let grant = ZkGrant {
            client,
            path: node.path,
            version: node.stat.version,
            name: request.name.to_string(),
            endpoints: self.endpoints.clone(),
            timeout: self.settings.timeout,
            watch,
        };
        Ok(Some(request.granted(BACKEND, FencingToken::new(node.stat.czxid as u64), lease, signal, grant)))
    }

    async fn shutdown(&self) -> Result<()> {
        self.pool.close().await
    }

    async fn inspect(&self, name: &LockName) -> Result<LockStatus> {
        let directory = self.directory(name)?;
        let client = self.default_client().await?;
        loop {
            let contenders = self.contenders(&client, &directory).await?;
            let Some(first) = contenders.first() else { return Ok(LockStatus::free().waiting(0)) };
            let path = format!("{directory}/{}", first.name);
            match client.get_data(&path).await {
                Ok((data, stat)) => {
                    let holder = String::from_utf8(data).ok().filter(|h| !h.is_empty());
                    let token = FencingToken::new(stat.czxid as u64);
                    return Ok(LockStatus::held(holder, Some(token), None).waiting(contenders.len() - 1));
                }
                Err(zookeeper_client::Error::NoNode) => continue, // released meanwhile: look again
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    async fn evict(&self, name: &LockName) -> Result<bool> {
        let directory = self.directory(name)?;
        let client = self.default_client().await?;
        loop {
            let Some(first) = self.contenders(&client, &directory).await?.into_iter().next() else { return Ok(false) };
            match client.delete(&format!("{directory}/{}", first.name), None).await {
                Ok(()) => return Ok(true),
                Err(zookeeper_client::Error::NoNode) => continue,
                Err(e) => return Err(self.error(e)),
            }
        }
    }
}

/// A one-shot watch on my own node, as a future (so it survives rounds of waiting).
type OwnWatch = Pin<Box<dyn Future<Output = WatchedEvent> + Send>>;

/// Fires the grant's loss signal when its node is deleted (or its session ends).
async fn watch_node(client: Client, path: String, mut watch: OwnWatch, signal: LossSignal) {
    loop {
        let event = watch.await;
        match event.event_type {
            EventType::NodeDeleted => return signal.lose(format!("its node {path} was deleted")),
            EventType::Session => return signal.lose(format!("its ZooKeeper session ended: {}", event.session_state)),
            // Its data changed: watch again.
            _ => match client.check_and_watch_stat(&path).await {
                Ok((Some(_), again)) => watch = Box::pin(again.changed()),
                Ok((None, _)) => return signal.lose(format!("its node {path} was deleted")),
                Err(e) => return signal.lose(format!("watching its node {path} failed: {e}")),
            },
        }
    }
}

/// Deletes the node of an acquire that failed or was dropped. ZooKeeper runs a session's
/// requests in order, so the lookup sees the node even when the create's reply is still due.
struct Cleanup {
    client: Client,
    directory: String,
    prefix: String,
    /// The node's name, once its create has answered.
    name: Option<String>,
    armed: bool,
}

impl Cleanup {
    async fn now(&mut self) {
        self.armed = false;
        delete_node(self.client.clone(), self.directory.clone(), self.prefix.clone(), self.name.take()).await
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(delete_node(
            self.client.clone(),
            std::mem::take(&mut self.directory),
            std::mem::take(&mut self.prefix),
            self.name.take(),
        ));
    }
}

/// Deletes the node `name`, or when its create has not answered, the node whose name starts
/// with `prefix`; tries again after connection losses for as long as the session may live
/// (after that, ZooKeeper removes the node itself).
async fn delete_node(client: Client, directory: String, prefix: String, name: Option<String>) {
    let attempts = async {
        loop {
            let outcome = async {
                let children = match &name {
                    Some(name) => vec![name.clone()],
                    None => client.list_children(&directory).await?,
                };
                for child in children.iter().filter(|c| c.starts_with(&prefix)) {
                    match client.delete(&format!("{directory}/{child}"), None).await {
                        Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            .await;
            match outcome {
                Err(zookeeper_client::Error::ConnectionLoss) => tokio::time::sleep(RECONNECT_PAUSE).await,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(client.session_timeout() * 2, attempts).await;
}

struct ZkGrant {
    client: Client,
    path: String,
    version: i32,
    name: String,
    endpoints: String,
    timeout: Duration,
    watch: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl Grant for ZkGrant {
    async fn release(&self) -> Result<()> {
        self.watch.abort();
        match tokio::time::timeout(self.timeout, self.client.delete(&self.path, Some(self.version))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(zookeeper_client::Error::NoNode)) => {
                Err(Error::not_held(BACKEND, &self.name, format!("its node {} was gone", self.path)))
            }
            Ok(Err(e)) => Err(error(&self.endpoints, e)),
            Err(_) => Err(Error::connection(
                BACKEND,
                &self.endpoints,
                "no answer to the release; the session timeout will end the grant",
                None,
            )),
        }
    }
}
