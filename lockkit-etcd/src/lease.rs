//! An etcd lease, kept alive by the core's refresh loop through one keep-alive stream.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use lockkit_core::Result;
use lockkit_core::driver::{KeepAlive, LeaseBackend};
use tokio::sync::Mutex;

use crate::error::{Class, error};

/// The keep-alive stream: a keeper that sends pings, and their replies in order.
type KeepAliveStream = (LeaseKeeper, LeaseKeepAliveStream);

pub(crate) struct EtcdLease {
    pub client: Client,
    pub id: i64,
    pub endpoints: String,
    /// The keep-alive stream, opened on first use and again after it breaks or after a round
    /// trip on it was cut short.
    stream: Mutex<Option<KeepAliveStream>>,
}

impl EtcdLease {
    /// Grants a lease of `ttl` (rounded up to whole seconds, as etcd counts).
    pub(crate) async fn grant(client: &Client, ttl: Duration, endpoints: &str, timeout: Duration) -> Result<Self> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let granted = crate::retry(timeout, endpoints, || {
            let mut client = client.clone();
            async move { client.lease_grant(seconds, None).await }
        })
        .await?;
        Ok(EtcdLease {
            client: client.clone(),
            id: granted.id(),
            endpoints: endpoints.to_owned(),
            stream: Mutex::new(None),
        })
    }
}

#[async_trait]
impl LeaseBackend for EtcdLease {
    async fn keep_alive(&self) -> Result<KeepAlive> {
        let mut stream = self.stream.lock().await;
        if stream.is_none() {
            match self.client.clone().lease_keep_alive(self.id).await {
                Ok(opened) => *stream = Some(opened),
                Err(e) if Class::of(&e) == Class::LeaseNotFound => {
                    return Ok(KeepAlive::Gone(format!("etcd lease {:x} is gone (expired or revoked)", self.id)));
                }
                Err(e) => return Err(error(&self.endpoints, e)),
            }
        }
        let answer = {
            let mut round_trip = RoundTrip { stream: &mut stream, finished: false };
            let (keeper, responses) = round_trip.stream.as_mut().expect("opened above");
            let answer = match keeper.keep_alive().await {
                Ok(()) => responses.message().await,
                Err(e) => Err(e),
            };
            round_trip.finished = true;
            answer
        };
        match answer {
            Ok(Some(response)) if response.ttl() > 0 => {
                Ok(KeepAlive::Alive(Duration::from_secs(response.ttl() as u64)))
            }
            Ok(Some(_)) => Ok(KeepAlive::Gone(format!("etcd lease {:x} is gone (expired or revoked)", self.id))),
            Ok(None) => {
                *stream = None;
                Err(lockkit_core::Error::connection(
                    crate::BACKEND,
                    &self.endpoints,
                    "the lease keep-alive stream closed",
                    None,
                ))
            }
            Err(e) => {
                *stream = None;
                Err(error(&self.endpoints, e))
            }
        }
    }

    async fn revoke(&self) -> Result<()> {
        match self.client.clone().lease_revoke(self.id).await {
            Ok(_) => Ok(()),
            Err(e) if Class::of(&e) == Class::LeaseNotFound => Ok(()),
            Err(e) => Err(error(&self.endpoints, e)),
        }
    }
}

/// A keep-alive round trip in progress. Cut short (its caller dropped the refresh), it drops the
/// stream: the reply still on its way would otherwise be read by the next round trip as its own,
/// crediting the lease from that round trip's later send time.
struct RoundTrip<'a> {
    stream: &'a mut Option<KeepAliveStream>,
    finished: bool,
}

impl Drop for RoundTrip<'_> {
    fn drop(&mut self) {
        if !self.finished {
            *self.stream = None;
        }
    }
}
