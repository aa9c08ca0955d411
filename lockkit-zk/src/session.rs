//! A ZooKeeper session: the lease every lock of a handle rides on.
//!
//! The core's refresh loop confirms the session with one `sync` every TTL / 3 — a round trip to
//! the leader, which checks the session: a follower that lost the leader would go on answering
//! reads for up to syncLimit × tickTime while the leader counts the session down. The local
//! deadline (last confirmed round trip + session timeout) is what makes a disconnected session's
//! guards *suspect*: `is_held()` turns false when it passes, and a reconnection before then
//! confirms the session again. A terminal state (`Expired`, `Closed`, `AuthFailed`) fires every
//! guard at once, through the session monitor.
//!
//! A `zookeeper_client::Client` keeps its session alive (it pings by itself) for as long as any
//! clone of it exists. So the [`ZkSession`] is the only long-lived owner of its client: the rest
//! of the driver keeps an `Arc<ZkSession>` and takes a clone per request
//! ([`ZkSession::client`]). Once the session is revoked — the handle gave it up, or it was lost
//! — the client is gone, the session closes, and nothing of the handle keeps its nodes alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::driver::{KeepAlive, KeptLease, LeaseBackend};
use lockkit_core::{Error, Result};
use zookeeper_client::{Client, SessionState};

use crate::BACKEND;
use crate::error::error;

/// One ZooKeeper session, the lease of a handle's locks (per TTL).
pub(crate) struct ZkSession {
    /// The only long-lived clone of the client; taken when the session is revoked, which closes
    /// the session once the requests in flight are done.
    client: Mutex<Option<Client>>,
    pub endpoints: String,
    pub timeout: Duration,
    /// Whether `monitor` has started.
    monitored: AtomicBool,
}

/// How a handle reaches ZooKeeper: the connect string and credentials, for new sessions.
#[derive(Clone)]
pub(crate) struct Connector {
    pub endpoints: String,
    pub digest: Option<(String, lockkit_core::driver::Secret)>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

impl Connector {
    /// Opens a session whose timeout is `ttl`, within the request timeout.
    pub(crate) async fn open(&self, ttl: Duration) -> Result<(Arc<ZkSession>, String)> {
        let mut connector =
            Client::connector().with_session_timeout(ttl).with_connection_timeout(self.timeout.min(ttl));
        if let Some((user, password)) = &self.digest {
            connector = connector.with_auth("digest", format!("{user}:{}", password.expose()).as_bytes());
        }
        let client = match tokio::time::timeout(self.timeout, connector.connect(&self.endpoints)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(error(&self.endpoints, e)),
            Err(_) => {
                return Err(Error::connection(
                    BACKEND,
                    &self.endpoints,
                    format!(
                        "no session within {:?}; is ZooKeeper running there, and the `timeout` option long enough?",
                        self.timeout
                    ),
                    None,
                ));
            }
        };
        let negotiated = client.session_timeout();
        if negotiated < ttl {
            return Err(Error::backend(
                BACKEND,
                format!(
                    "ZooKeeper at {} gave a session timeout of {negotiated:?}, below the TTL {ttl:?} asked for (its \
                     maxSessionTimeout); use a TTL of at most {negotiated:?}",
                    self.endpoints
                ),
            ));
        }
        let id = format!("{:x}", client.session_id().0);
        let session = ZkSession {
            client: Mutex::new(Some(client)),
            endpoints: self.endpoints.clone(),
            timeout: self.timeout,
            monitored: AtomicBool::new(false),
        };
        Ok((Arc::new(session), id))
    }
}

impl ZkSession {
    /// The session's client for one request (drop it with the request: a clone kept keeps the
    /// session alive), or `ClientClosed` once the session was revoked.
    pub(crate) fn client(&self) -> Result<Client, zookeeper_client::Error> {
        let client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        client.clone().ok_or(zookeeper_client::Error::ClientClosed)
    }

    /// Watches the session state for `lease` (once): a terminal state loses it (and every
    /// guard on it); a disconnection is logged (the guards' deadline keeps running meanwhile).
    pub(crate) fn monitor(&self, lease: &Arc<KeptLease>) {
        if self.monitored.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(client) = self.client() else { return };
        let mut states = client.state_watcher();
        drop(client);
        let lease: Weak<KeptLease> = Arc::downgrade(lease);
        tokio::spawn(async move {
            loop {
                let state = states.changed().await;
                let Some(lease) = lease.upgrade() else { return };
                let id = lockkit_core::Lease::id(lease.as_ref()).to_owned();
                match state {
                    SessionState::Disconnected => {
                        tracing::warn!(backend = BACKEND, session = %id, "ZooKeeper session disconnected; its locks are suspect until it reconnects or its timeout passes")
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        tracing::info!(backend = BACKEND, session = %id, "ZooKeeper session reconnected")
                    }
                    SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                        lease.lose(format!("ZooKeeper session {id} ended: {state}"));
                        return;
                    }
                }
            }
        });
    }
}

#[async_trait]
impl LeaseBackend for ZkSession {
    /// A `sync`: the server the session is connected to forwards it to the leader, which checks
    /// the session, so the answer is the leader's view, not a partitioned follower's.
    async fn keep_alive(&self) -> Result<KeepAlive> {
        let client = self.client().map_err(|e| error(&self.endpoints, e))?;
        match client.sync("/").await {
            Ok(()) => Ok(KeepAlive::Alive(client.session_timeout())),
            Err(
                e @ (zookeeper_client::Error::SessionExpired
                | zookeeper_client::Error::ClientClosed
                | zookeeper_client::Error::AuthFailed),
            ) => Ok(KeepAlive::Gone(format!("ZooKeeper session ended: {e}"))),
            Err(e) => Err(error(&self.endpoints, e)),
        }
    }

    /// Takes the client out (every later request of the driver on this session fails), deletes
    /// the session's nodes so that their locks are free at once, and drops the client, which
    /// closes the session — or, when the server cannot be reached, stops its pings, so that the
    /// server expires it.
    async fn revoke(&self) -> Result<()> {
        let taken = self.client.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(client) = taken else { return Ok(()) };
        let result = async {
            for path in client.list_ephemerals("/").await? {
                match client.delete(&path, None).await {
                    Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(self.timeout, result).await;
        drop(client);
        match outcome {
            Ok(Ok(())) | Ok(Err(zookeeper_client::Error::SessionExpired)) => Ok(()),
            Ok(Err(e)) => Err(error(&self.endpoints, e)),
            Err(_) => Err(Error::connection(BACKEND, &self.endpoints, "no answer while closing the session", None)),
        }
    }
}
