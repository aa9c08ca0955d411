//! A Consul session: the lease every lock of a handle rides on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::Result;
use lockkit_core::driver::{KeepAlive, LeaseBackend};

use crate::api::Api;

/// How many keys a revoke releases at once.
const RELEASES_AT_ONCE: usize = 16;

pub(crate) struct ConsulSession {
    pub(crate) api: Api,
    pub(crate) id: String,
    /// The keys this session holds, released before the session is destroyed (destroying a
    /// session that holds keys would start their lock-delay).
    pub(crate) held: Mutex<HashSet<String>>,
    /// Held (read) by every `PUT ?acquire=` in flight until what it took is in `held`; a revoke
    /// takes it (write) before it looks at `held`, so no key an acquire takes meanwhile is left
    /// to the destroy (which would start its lock-delay).
    pub(crate) acquiring: Arc<tokio::sync::RwLock<()>>,
}

impl ConsulSession {
    pub(crate) fn hold(&self, key: &str, held: bool) {
        let mut keys = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held {
            keys.insert(key.to_owned());
        } else {
            keys.remove(key);
        }
    }
}

#[async_trait]
impl LeaseBackend for ConsulSession {
    /// Renews the session; Consul may answer a longer TTL than asked, which is kept.
    async fn keep_alive(&self) -> Result<KeepAlive> {
        match self.api.renew_session(&self.id).await? {
            Some(ttl) if ttl > Duration::ZERO => Ok(KeepAlive::Alive(ttl)),
            Some(_) => Err(lockkit_core::Error::backend(crate::BACKEND, "Consul renewed a session without its TTL")),
            None => Ok(KeepAlive::Gone(format!("Consul session {} is gone (expired or destroyed)", self.id))),
        }
    }

    /// Releases the session's keys side by side (so no lock-delay follows), then destroys it —
    /// also when a release failed (its key then gets the lock-delay). The core bounds the whole
    /// revoke by the request timeout; a session it cuts off is not renewed any more, so Consul
    /// ends it within twice its TTL.
    async fn revoke(&self) -> Result<()> {
        // The lease is lost already (the core loses it before revoking): wait for the acquires
        // in flight to record what they took.
        let _no_acquires = self.acquiring.write().await;
        let keys: Vec<String> = self.held.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        let mut releases = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(RELEASES_AT_ONCE));
        for key in keys {
            let (api, id, permits) = (self.api.clone(), self.id.clone(), permits.clone());
            releases.spawn(async move {
                let _permit = permits.acquire_owned().await;
                if let Err(e) = api.lock(&key, &id, true, &[], crate::FLAGS).await {
                    tracing::debug!(backend = crate::BACKEND, %key, error = %e, "releasing a key of a revoked session failed");
                }
            });
        }
        while releases.join_next().await.is_some() {}
        Ok(self.api.destroy_session(&self.id).await?)
    }
}
