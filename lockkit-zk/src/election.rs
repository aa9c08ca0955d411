//! Following an election: the leader is the first contender of the lock's directory, as the
//! recipe orders them. An observer reads it and sets one watch: on the leader's node (its data
//! is the leader's value: a proclaim changes it, a deletion ends the term), or, when nobody
//! leads, on the directory's children (or on the directory itself, until it exists). The watch
//! fires once; the next read sets the next. An observer has a session of its own, closed when
//! it is dropped (so no watch of it outlives it), and opened again if it expires.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::driver::LeaderFeed;
use lockkit_core::{FencingToken, Leader, Result};
use zookeeper_client::{OneshotWatcher, WatchedEvent};

use crate::error::{connection_broke, error};
use crate::locks::RECONNECT_PAUSE;
use crate::recipe::Recipe;
use crate::session::{Connector, ZkSession};

pub(crate) struct ZkFeed {
    pub(crate) connector: Connector,
    pub(crate) ttl: Duration,
    pub(crate) directory: String,
    pub(crate) recipe: Recipe,
    session: Option<Arc<ZkSession>>,
    /// The watch set by the last read, kept across cancelled calls.
    watch: Option<Pin<Box<dyn Future<Output = WatchedEvent> + Send>>>,
}

impl ZkFeed {
    pub(crate) fn new(connector: Connector, ttl: Duration, directory: String, recipe: Recipe) -> Self {
        ZkFeed { connector, ttl, directory, recipe, session: None, watch: None }
    }

    fn watching(&mut self, watcher: OneshotWatcher) {
        self.watch = Some(Box::pin(watcher.changed()));
    }

    /// Reads the leader and sets the watch that tells of its next change.
    async fn read(&mut self) -> Result<Option<Leader>> {
        let session = match &self.session {
            Some(session) => session.clone(),
            None => self.session.insert(self.connector.open(self.ttl).await?.0).clone(),
        };
        let endpoints = session.endpoints.clone();
        let started = tokio::time::Instant::now();
        loop {
            let outcome = self.read_once(&session).await;
            match outcome {
                Ok(Some(leader)) => return Ok(leader),
                Ok(None) => continue, // the leader went meanwhile: read again
                Err(e) if connection_broke(&e) && started.elapsed() < self.connector.timeout => {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(e) => {
                    // An expired or closed session is opened anew by the next call.
                    self.session = None;
                    return Err(error(&endpoints, e));
                }
            }
        }
    }

    /// One attempt: the leader (`Some`), or `None` when its node went between the listing and
    /// its read.
    async fn read_once(&mut self, session: &ZkSession) -> Result<Option<Option<Leader>>, zookeeper_client::Error> {
        let client = session.client()?;
        let children = match client.list_and_watch_children(&self.directory).await {
            Ok((children, watcher)) => {
                let contenders = self.recipe.contenders(children);
                let Some(first) = contenders.first() else {
                    self.watching(watcher);
                    return Ok(Some(None));
                };
                first.name.clone()
            }
            Err(zookeeper_client::Error::NoNode) => {
                // No directory yet: watch for it, and read again once it is there.
                let (stat, watcher) = client.check_and_watch_stat(&self.directory).await?;
                self.watching(watcher);
                return if stat.is_some() { Ok(None) } else { Ok(Some(None)) };
            }
            Err(e) => return Err(e),
        };
        // The children watch set by the listing fires at the next join or leave; it is dropped
        // for the leader's own (one watch per observer). ZooKeeper keeps it until it fires once.
        match client.get_and_watch_data(&format!("{}/{children}", self.directory)).await {
            Ok((data, stat, watcher)) => {
                self.watching(watcher);
                let value = crate::locks::holder_of(&data).unwrap_or_default();
                Ok(Some(Some(Leader { value, term: FencingToken::new(stat.czxid as u64) })))
            }
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl LeaderFeed for ZkFeed {
    async fn next(&mut self) -> Result<Option<Leader>> {
        if let Some(watch) = &mut self.watch {
            watch.await;
            self.watch = None;
        }
        self.read().await
    }
}
