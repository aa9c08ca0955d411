//! Following an election on Redis: an observer watches the lock's channel, on which every
//! grant, release, eviction and proclaim of a lockkit client announces itself, and reads the
//! leader (the `STATUS` script) at each message, at each reconnection of the pub/sub
//! connection, and when the leader's TTL runs out — Redis tells of an expiry only with keyspace
//! notifications, which are off by default, so the observer reads again at the expiry it was
//! told (a leader that keeps refreshing costs it one read per TTL). A redis-py lock taken or
//! released on the same key does not announce itself: it is seen at the next read.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::driver::LeaderFeed;
use lockkit_core::{Leader, Result};

use crate::quorum::Quorum;
use crate::scripts::LockKeys;
use crate::wakeups::{Watch, observer_name};

pub(crate) struct RedisFeed {
    pub(crate) quorum: Arc<Quorum>,
    pub(crate) keys: LockKeys,
    watch: Option<Watch>,
    /// How long the leader last read holds unless refreshed.
    expires_in: Option<Duration>,
    /// The last settled view.
    shown: Option<Leader>,
}

impl RedisFeed {
    pub(crate) fn new(quorum: Arc<Quorum>, keys: LockKeys) -> Self {
        RedisFeed { quorum, keys, watch: None, expires_in: None, shown: None }
    }

    /// The leader now. On Redlock, a grant whose servers do not agree on its token yet (the
    /// acquire raises them all to the highest next, and announces it) is not shown until they
    /// do: the last settled view is answered again meanwhile.
    async fn read(&mut self) -> Result<Option<Leader>> {
        let (status, settled) = self.quorum.settled_status(&self.keys).await?;
        self.expires_in = status.ttl_left.filter(|_| status.held);
        if settled {
            self.shown = match (status.held, status.token) {
                (true, Some(term)) => Some(Leader { value: status.holder.unwrap_or_default(), term }),
                _ => None,
            };
        }
        Ok(self.shown.clone())
    }
}

#[async_trait]
impl LeaderFeed for RedisFeed {
    async fn next(&mut self) -> Result<Option<Leader>> {
        let Some(watch) = &self.watch else {
            // Subscribed before the first read, so that no change after it is missed.
            self.watch = Some(self.quorum.wakeups.watch(&self.keys.channel, &observer_name()).await);
            return self.read().await;
        };
        // Just past the expiry, so that the read finds the key gone.
        let expiry = self.expires_in.map(|left| left + Duration::from_millis(1));
        match expiry {
            Some(expiry) => tokio::select! {
                _ = watch.notify.notified() => {}
                _ = tokio::time::sleep(expiry) => {}
            },
            None => watch.notify.notified().await,
        }
        self.read().await
    }
}
