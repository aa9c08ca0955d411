//! Elections as Go's `concurrency.Election` holds them: a candidate's key is the lock's key,
//! `prefix/<lease id in hex>`, its value the candidate's value; the leader is the contender
//! with the lowest create revision, and its term that revision. A proclaim is the Election's
//! own: a put of the leader's key guarded by its create revision. So `etcdctl elect NAME` and
//! `etcdctl elect -l NAME` take part in, and show, a lockkit election, and the other way round.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, EventType, KeyValue, PutOptions, SortOrder, Txn, TxnOp, WatchOptions, WatchStream,
};
use lockkit_core::driver::LeaderFeed;
use lockkit_core::{Error, FencingToken, Leader, Result};

use crate::BACKEND;
use crate::error::error;
use crate::locks::{Keys, first};

/// Puts `value` on the leader's `key` (on its `lease`) only while the key is the one created at
/// `revision` — the term. `false`: the key is gone or was made anew, so this term is over.
pub(crate) async fn proclaim(
    client: &Client,
    key: &str,
    revision: i64,
    lease: i64,
    value: &str,
    timeout: Duration,
    endpoints: &str,
) -> Result<bool> {
    let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, revision)]).and_then([TxnOp::put(
        key,
        value,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    let response = tokio::time::timeout(timeout, client.clone().txn(txn))
        .await
        .map_err(|_| {
            Error::connection(BACKEND, endpoints, format!("no answer to the proclaim within {timeout:?}"), None)
        })?
        .map_err(|e| error(endpoints, e))?;
    Ok(response.succeeded())
}

/// One observer of one election: a read of the first contender, then a watch of the prefix
/// from the revision after that read, on a stream of its own. The leader's deletion makes it
/// read the next one; a put on the leader's key is a proclaim; a new key matters only when
/// nobody leads. A broken or cancelled stream (etcd restarted, a compaction) is opened again
/// from a fresh read, so no change is missed.
pub(crate) struct EtcdFeed {
    pub(crate) client: Arc<Client>,
    pub(crate) keys: Keys,
    pub(crate) endpoints: String,
    pub(crate) timeout: Duration,
    /// The leader's key as last read, and the revision the view is at.
    leader: Option<KeyValue>,
    revision: i64,
    stream: Option<WatchStream>,
}

impl EtcdFeed {
    pub(crate) fn new(client: Arc<Client>, keys: Keys, endpoints: String, timeout: Duration) -> Self {
        EtcdFeed { client, keys, endpoints, timeout, leader: None, revision: 0, stream: None }
    }

    /// The leader as last read (its value read as `leader()` reads it).
    fn view(&self) -> Option<Leader> {
        self.leader.as_ref().map(|kv| Leader {
            value: crate::locks::holder_of(kv).unwrap_or_default(),
            term: FencingToken::new(kv.create_revision() as u64),
        })
    }

    /// Reads the first contender, and the revision of the read.
    async fn read(&mut self) -> Result<()> {
        let (client, prefix, timeout) = (self.client.clone(), self.keys.prefix.clone(), self.timeout);
        let response = crate::retry(timeout, &self.endpoints, || {
            let (mut client, prefix) = (Client::clone(&client), prefix.clone());
            async move { client.get(prefix, Some(first(SortOrder::Ascend))).await }
        })
        .await?;
        self.revision = response.header().map(|h| h.revision()).unwrap_or_default();
        self.leader = response.kvs().iter().find(|kv| self.keys.contender(kv)).cloned();
        Ok(())
    }

    /// Reads the leader, and watches the election from the revision after the read.
    async fn open(&mut self) -> Result<()> {
        self.read().await?;
        let options = WatchOptions::new().with_prefix().with_start_revision(self.revision + 1);
        let mut client = Client::clone(&self.client);
        let watch = client.watch(self.keys.prefix.clone(), Some(options));
        let stream = tokio::time::timeout(self.timeout, watch)
            .await
            .map_err(|_| {
                Error::connection(
                    BACKEND,
                    &self.endpoints,
                    format!("no answer to the watch within {:?}", self.timeout),
                    None,
                )
            })?
            .map_err(|e| error(&self.endpoints, e))?;
        self.stream = Some(stream);
        Ok(())
    }

    /// Applies one event to the view; `true` when the leader has to be read again (it went).
    fn apply(&mut self, kv: &KeyValue, deleted: bool) -> bool {
        if !self.keys.contender(kv) || kv.mod_revision() <= self.revision {
            return false;
        }
        match &self.leader {
            Some(leader) if leader.key() == kv.key() => {
                if deleted {
                    return true;
                }
                // A put on the leader's key: a proclaim (the same create revision), or the key
                // made anew after a deletion this view missed — read again then.
                if kv.create_revision() != leader.create_revision() {
                    return true;
                }
                self.leader = Some(kv.clone());
                false
            }
            Some(_) => false,
            None if deleted => false,
            None => {
                self.leader = Some(kv.clone());
                false
            }
        }
    }
}

#[async_trait]
impl LeaderFeed for EtcdFeed {
    async fn next(&mut self) -> Result<Option<Leader>> {
        let Some(stream) = &mut self.stream else {
            self.open().await?;
            return Ok(self.view());
        };
        let response = match stream.message().await {
            Ok(Some(response)) if !response.canceled() => response,
            // Broken, ended, or cancelled (compacted): read and watch again.
            _ => {
                self.stream = None;
                self.open().await?;
                return Ok(self.view());
            }
        };
        let mut read_again = false;
        for event in response.events() {
            if let Some(kv) = event.kv() {
                read_again |= self.apply(kv, event.event_type() == EventType::Delete);
            }
        }
        if read_again {
            // The events are consumed: until a read succeeds, the view is unknown. Dropping the
            // stream first makes a read that fails, or a call cancelled during it, start over
            // from a fresh read and watch at the next call instead of keeping a deposed leader.
            self.stream = None;
            self.open().await?;
        }
        Ok(self.view())
    }
}
