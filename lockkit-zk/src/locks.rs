//! The backend handle: sessions, lock directories, and the guards' grants.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::driver::{
    Grant, GrantRequest, KeptLease, LeaderFeed, LeaseBackend, LeasePool, LockBackend, on_a_live_lease,
};
use lockkit_core::{
    Capabilities, Error, FencingToken, LockGuard, LockName, LockStatus, LossSignal, Namespace, Result, Settings,
};
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, EventType};

use crate::BACKEND;
use crate::acquire::{Acquire, OwnWatch, watch_of};
use crate::election::ZkFeed;
use crate::error::{ZkError, connection_broke, error};
use crate::recipe::{Contender, Recipe};
use crate::session::{Connector, ZkSession};

/// How long to wait before trying a request again after a connection loss.
pub(crate) const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

pub(crate) struct ZkLocks {
    pub connector: Connector,
    /// The chroot: every lock directory is below it.
    pub root: Namespace,
    pub recipe: Recipe,
    /// The ACL of every node the handle creates (the `acl` option).
    pub acls: Acls<'static>,
    pub pool: LeasePool,
    pub endpoints: String,
    pub settings: Settings,
}

impl ZkLocks {
    /// The session (and its lease) for this TTL, opened when there is none or it was lost.
    pub(crate) async fn session(&self, ttl: Duration, refresh: Duration) -> Result<(Arc<KeptLease>, Arc<ZkSession>)> {
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
        let (_, session) = self.session(ttl, self.settings.refresh_interval.unwrap_or(ttl / 3)).await?;
        Ok(session.client().map_err(|e| self.error(e))?)
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

    /// How contenders' nodes are created: ephemeral sequential, with the handle's ACL.
    pub(crate) fn node_options(&self) -> CreateOptions<'static> {
        CreateMode::EphemeralSequential.with_acls(self.acls)
    }

    /// Runs a request, trying again after a broken connection until the request timeout.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T, zookeeper_client::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, zookeeper_client::Error>>,
    {
        let outcome =
            lockkit_core::driver::retry_transient(self.settings.timeout, RECONNECT_PAUSE, connection_broke, call).await;
        outcome.map_err(|e| e.unwrap_or(zookeeper_client::Error::ConnectionLoss))
    }

    /// A client error of this handle's requests.
    pub(crate) fn error(&self, error: zookeeper_client::Error) -> ZkError {
        ZkError::Client { endpoints: self.endpoints.clone(), error }
    }

    /// Creates a lock directory: its parents as plain nodes, itself as a container node, which
    /// ZooKeeper deletes once its last contender is gone.
    pub(crate) async fn make_directory(&self, client: &Client, directory: &str) -> Result<(), ZkError> {
        let parent = &directory[..directory.rfind('/').unwrap_or(0)];
        if !parent.is_empty() {
            let options = CreateMode::Persistent.with_acls(self.acls);
            self.call(|| client.mkdir(parent, &options)).await.map_err(|e| self.error(e))?;
        }
        let options = CreateMode::Container.with_acls(self.acls);
        match self.call(|| client.create(directory, &[], &options)).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The contenders of a lock, first in line first; none when its directory is missing.
    async fn contenders(&self, client: &Client, directory: &str) -> Result<Vec<Contender>> {
        match self.call(|| client.list_children(directory)).await {
            Ok(children) => Ok(self.recipe.contenders(children)),
            Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(self.error(e).into()),
        }
    }
}

#[async_trait]
impl LockBackend for ZkLocks {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // Semaphores and read-write locks: not yet (issue #20).
        Capabilities { semaphores: false, rw_locks: false, ..Capabilities::ALL }
    }

    fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn grant(&self, request: &GrantRequest) -> Result<Option<LockGuard>> {
        let directory = self.directory(&request.name)?;
        // A session that ended behind our back is noticed here at the latest: lost, and the
        // acquire made once more on a new one (with a new protected id: see `Acquire`).
        on_a_live_lease(
            "ZooKeeper session",
            || self.session(request.ttl, request.refresh_interval),
            |lease, session, _| {
                let directory = &directory;
                async move { Acquire::new(self, session, lease, request, directory).run(request).await }
            },
        )
        .await
    }

    async fn shutdown(&self) -> Result<()> {
        self.pool.close().await
    }

    async fn observe_leader(&self, name: &LockName) -> Result<Box<dyn LeaderFeed>> {
        let directory = self.directory(name)?;
        Ok(Box::new(ZkFeed::new(self.connector.clone(), self.settings.ttl, directory, self.recipe)))
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
                    let holder = holder_of(&data);
                    let token = FencingToken::new(stat.czxid as u64);
                    return Ok(LockStatus::held(holder, Some(token), None).waiting(contenders.len() - 1));
                }
                Err(zookeeper_client::Error::NoNode) => continue, // released meanwhile: look again
                Err(e) => return Err(self.error(e).into()),
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
                Err(e) => return Err(self.error(e).into()),
            }
        }
    }
}

/// The holder metadata in a node's data: its text (bytes that are not UTF-8, which another
/// client may write, shown as U+FFFD), `None` when empty.
pub(crate) fn holder_of(data: &[u8]) -> Option<String> {
    Some(String::from_utf8_lossy(data).into_owned()).filter(|h| !h.is_empty())
}

/// A held lock's node. It holds the session, not a client: a session given up closes.
pub(crate) struct ZkGrant {
    pub session: Arc<ZkSession>,
    pub path: String,
    /// The lock's name, for messages.
    pub name: String,
    /// The task watching the node ([`watch_node`]).
    pub watch: tokio::task::JoinHandle<()>,
    pub released: Arc<Released>,
}

/// Whether a grant was given back: from then on no watch of its node is sent. A watch that
/// reached the server after the release's delete would stay there until the session ends,
/// waiting for a node that is never created again; so the release marks this before it sends
/// the delete, and the watcher sends its watches only while holding it unmarked — the server
/// sees every watch before the delete.
#[derive(Default)]
pub(crate) struct Released(std::sync::Mutex<bool>);

impl Released {
    /// `send()` (a request the client sends when called), unless the grant was given back.
    fn send<T>(&self, send: impl FnOnce() -> T) -> Option<T> {
        let released = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (!*released).then(send)
    }

    fn mark(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

#[async_trait]
impl Grant for ZkGrant {
    /// One delete of the node, without a version check (as Curator does): a foreign `setData`
    /// must not keep it, and its path, unique to the acquire, is what makes it the guard's.
    async fn release(&self) -> Result<()> {
        self.released.mark();
        self.watch.abort();
        let client = self.session.client().map_err(|e| error(&self.session.endpoints, e))?;
        match client.delete(&self.path, None).await {
            Ok(()) => Ok(()),
            Err(zookeeper_client::Error::NoNode) => {
                Err(Error::not_held(BACKEND, &self.name, format!("its node {} was gone", self.path)))
            }
            Err(e) => Err(error(&self.session.endpoints, e)),
        }
    }

    /// Writes the leader's value as its node's data; the node (so the term, its czxid) stays.
    async fn proclaim(&self, value: &str) -> Option<Result<FencingToken>> {
        let client = match self.session.client() {
            Ok(client) => client,
            Err(e) => return Some(Err(error(&self.session.endpoints, e))),
        };
        Some(match client.set_data(&self.path, value.as_bytes(), None).await {
            Ok(stat) => Ok(FencingToken::new(stat.czxid as u64)),
            Err(zookeeper_client::Error::NoNode) => {
                Err(Error::not_held(BACKEND, &self.name, format!("its node {} was gone", self.path)))
            }
            Err(e) => Err(error(&self.session.endpoints, e)),
        })
    }
}

impl Drop for ZkGrant {
    fn drop(&mut self) {
        self.released.mark();
        self.watch.abort();
    }
}

/// Fires the grant's loss signal when its node is deleted (or its session ends). `watch`: the
/// node's watch when the acquire set it (a waiter's); else it is set here, after the grant, so
/// an uncontended acquire does not wait for it: a node deleted before it is set is found gone
/// by it. A data change sets the watch again, through connection losses, until the grant is
/// lost or given back.
pub(crate) async fn watch_node(
    session: Arc<ZkSession>,
    path: String,
    mut watch: Option<OwnWatch>,
    signal: LossSignal,
    released: Arc<Released>,
) {
    let watching = async {
        loop {
            if let Some(set) = watch.take() {
                let Some(event) = set.await else { return Some("its ZooKeeper session was closed".to_owned()) };
                match event.event_type {
                    EventType::NodeDeleted => return Some(format!("its node {path} was deleted")),
                    EventType::Session => return Some(format!("its ZooKeeper session ended: {}", event.session_state)),
                    _ => {} // its data changed: watch again
                }
            }
            let answer = match session.client() {
                Ok(client) => match released.send(|| client.check_and_watch_stat(&path)) {
                    Some(sent) => sent.await,
                    None => return None, // given back
                },
                Err(e) => Err(e),
            };
            match answer {
                Ok((Some(_), set)) => watch = Some(watch_of(set)),
                Ok((None, _)) => return Some(format!("its node {path} was deleted")),
                Err(e) if connection_broke(&e) => tokio::time::sleep(RECONNECT_PAUSE).await,
                Err(e) => return Some(format!("watching its node {path} failed: {e}")),
            }
        }
    };
    tokio::select! {
        biased;
        _ = signal.lost() => {}
        reason = watching => if let Some(reason) = reason { signal.lose(reason) },
    }
}
