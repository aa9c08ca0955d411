//! An etcd lease, kept alive by the core's refresh loop through one keep-alive stream.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use lockkit_core::{KeepAlive, LeaseBackend, Result};
use tokio::sync::Mutex;

use crate::error;

pub struct EtcdLease {
    pub client: Client,
    pub id: i64,
    pub endpoints: String,
    /// The keep-alive stream, opened on first use and again after it breaks.
    stream: Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
}

impl EtcdLease {
    /// Grants a lease of `ttl` (rounded up to whole seconds, as etcd counts).
    pub async fn grant(client: &Client, ttl: Duration, endpoints: &str, timeout: Duration) -> Result<Self> {
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
                Err(e) if e.to_string().contains("lease not found") => {
                    return Ok(KeepAlive::Gone(format!("etcd lease {:x} is gone (expired or revoked)", self.id)));
                }
                Err(e) => return Err(error(&self.endpoints, e)),
            }
        }
        let (keeper, responses) = stream.as_mut().expect("opened above");
        let answer = match keeper.keep_alive().await {
            Ok(()) => responses.message().await,
            Err(e) => Err(e),
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
            Err(e) if e.to_string().contains("lease not found") => Ok(()),
            Err(e) => Err(error(&self.endpoints, e)),
        }
    }
}
