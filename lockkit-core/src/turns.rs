//! Turns on keys within one process, for backends where one handle's grants of a name would be
//! indistinguishable on the server (etcd: one key per lease; Consul: one holder per session).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Whose turn it is on each key, in this process. A second acquire of the same key through
/// the same handle waits here for the first guard (which keeps its turn until released) instead
/// of being granted the same server-side grant twice.
#[derive(Debug, Default)]
pub struct LocalTurns(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// A turn on a key, held until dropped.
pub type Turn = OwnedMutexGuard<()>;

impl LocalTurns {
    /// Takes the turn on `key`: waits for it when `wait`, else `None` while it is taken.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped wait takes no turn.
    pub async fn take(&self, key: &str, wait: bool) -> Option<Turn> {
        let mutex = {
            let mut turns = self.0.lock().unwrap_or_else(|e| e.into_inner());
            turns.retain(|_, m| Arc::strong_count(m) > 1);
            turns.entry(key.to_owned()).or_default().clone()
        };
        if wait { Some(mutex.lock_owned().await) } else { mutex.try_lock_owned().ok() }
    }
}
