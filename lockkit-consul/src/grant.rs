//! A held key: its release, its watch, and the claim an acquire keeps on it until it becomes a
//! guard's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lockkit_core::driver::{Cleanup, Finished, Grant, KeptLease, LeaderFeed, Turn};
use lockkit_core::{Error, FencingToken, Leader, LossSignal, Result};

use crate::api::{Api, Blocking};
use crate::session::ConsulSession;
use crate::{BACKEND, FLAGS};

/// One `?release=` of `key` by `session`: `Ok` once Consul confirmed it, [`Error::NotHeld`] when
/// the session did not hold the key (any more), any other error when it could not tell.
/// Repeatable.
pub(crate) async fn release(api: &Api, key: &str, session: &str, name: &str) -> Result<()> {
    if api.lock(key, session, true, &[], FLAGS).await? {
        Ok(())
    } else {
        Err(Error::not_held(BACKEND, name, format!("its key {key} was no longer held by session {session}")))
    }
}

/// What an acquire keeps while it runs: this process's turn on the key and — from the moment a
/// `?acquire=` may have taken the key — a [`Cleanup`] that gives the key back unless it becomes
/// a guard's (or gives the session up, when that acquire went unanswered and may still be
/// applied). Dropped (the acquire failed, timed out or was cancelled), it cleans up in the
/// background; the turn is kept until then. Shared by the tries of one acquire (each on its
/// session), hence behind a lock that is never held across an await.
pub(crate) struct Claim(Mutex<Kept>);

struct Kept {
    turn: Option<Turn>,
    cleanup: Option<Cleanup>,
}

impl Claim {
    pub(crate) fn new(turn: Turn) -> Self {
        Claim(Mutex::new(Kept { turn: Some(turn), cleanup: None }))
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An `?acquire=` of `key` by `session` is on its way; `put` tells when it has finished.
    pub(crate) fn arm(&self, lease: &Arc<KeptLease>, api: &Api, key: &str, session: &str, name: &str, put: Finished) {
        let (api, key, session, name_text) = (api.clone(), key.to_owned(), session.to_owned(), name.to_owned());
        let attempt = lockkit_core::driver::attempt(move || {
            let (api, key, session, name) = (api.clone(), key.clone(), session.clone(), name_text.clone());
            async move { release(&api, &key, &session, &name).await }
        });
        let mut cleanup = Cleanup::new(lease, format!("lock {name:?}"), attempt);
        cleanup.after(put);
        self.disarm();
        let mut kept = self.kept();
        if let Some(turn) = kept.turn.take() {
            cleanup.keep_turn(turn);
        }
        kept.cleanup = Some(cleanup);
    }

    /// The `?acquire=` was answered without taking the key: nothing to clean up.
    pub(crate) fn disarm(&self) {
        let mut kept = self.kept();
        if let Some(cleanup) = kept.cleanup.take()
            && let Some(turn) = cleanup.disarm()
        {
            kept.turn = Some(turn);
        }
    }

    /// The key became a guard's: the turn, to keep with the guard.
    pub(crate) fn into_turn(self) -> Option<Turn> {
        self.disarm();
        self.kept().turn.take()
    }

    /// Cleans up now, if a `?acquire=` may have taken the key, and waits until the key is
    /// released or the session given up.
    pub(crate) async fn clean_up(&self) {
        let cleanup = self.kept().cleanup.take();
        if let Some(cleanup) = cleanup
            && let Err(e) = cleanup.now().await
        {
            tracing::debug!(backend = BACKEND, error = %e, "cleaning up after a failed acquire");
        }
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("armed", &self.kept().cleanup.is_some()).finish()
    }
}

/// A held key.
pub(crate) struct ConsulGrant {
    pub(crate) session: Arc<ConsulSession>,
    pub(crate) key: String,
    pub(crate) name: String,
    pub(crate) watch: tokio::task::JoinHandle<()>,
    pub(crate) _turn: Option<Turn>,
}

#[async_trait]
impl Grant for ConsulGrant {
    /// One `?release=`. The key stays on the session's list of held keys until Consul
    /// confirmed the release (or said the session no longer holds it), so that a session given
    /// up because the release could not be confirmed still releases it first (no lock-delay).
    async fn release(&self) -> Result<()> {
        self.watch.abort();
        let released = release(&self.session.api, &self.key, &self.session.id, &self.name).await;
        if matches!(released, Ok(()) | Err(Error::NotHeld { .. })) {
            self.session.hold(&self.key, false);
        }
        released
    }

    /// The leader's new value, written only while its session still holds the key. Consul's
    /// tokens are the index of the key's last write, so the term moves forward with it.
    async fn proclaim(&self, value: &str) -> Option<Result<FencingToken>> {
        let (api, key, session) = (&self.session.api, &self.key, &self.session.id);
        Some(match api.relock(key, session, value.as_bytes(), FLAGS).await {
            Ok(Some(index)) => Ok(FencingToken::new(index)),
            Ok(None) => {
                Err(Error::not_held(BACKEND, &self.name, format!("its key {key} is no longer held by its session")))
            }
            Err(e) => Err(e.into()),
        })
    }
}

/// An observer of one election: blocking queries on its key, each from the index the last
/// answer gave (an index that went backwards starts over).
pub(crate) struct ConsulFeed {
    pub(crate) api: Api,
    pub(crate) key: String,
    pub(crate) wait: Duration,
    pub(crate) index: u64,
    /// The index went backwards at the last read.
    pub(crate) restarted: bool,
}

#[async_trait]
impl LeaderFeed for ConsulFeed {
    async fn next(&mut self) -> Result<Option<Leader>> {
        let blocking = (self.index > 0).then_some(Blocking { index: self.index, wait: self.wait });
        let (entry, next) = self.api.get(&self.key, blocking).await?;
        self.restarted = next < self.index;
        self.index = if self.restarted { 0 } else { next };
        Ok(entry
            .filter(|e| e.session.is_some())
            .map(|e| Leader { value: e.text().unwrap_or_default(), term: FencingToken::new(e.modify_index) }))
    }

    fn restarted(&mut self) -> bool {
        std::mem::take(&mut self.restarted)
    }
}

impl Drop for ConsulGrant {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Fires the grant's loss signal when its key is deleted or no longer held by its session.
/// Errors reading it are retried: the session's renewals decide loss when Consul is away. An
/// index that goes backwards (servers restored from a snapshot) starts over.
pub(crate) async fn watch_key(
    api: Api,
    key: String,
    session: String,
    mut index: u64,
    wait: Duration,
    signal: LossSignal,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        match api.get(&key, Some(Blocking { index, wait })).await {
            Ok((None, _)) => return signal.lose(format!("its key {key} was deleted")),
            Ok((Some(entry), _)) if entry.session.as_deref() != Some(session.as_str()) => {
                return signal.lose(format!("its key {key} was released or taken behind its back"));
            }
            Ok((Some(_), next)) => {
                index = if next < index { 0 } else { next };
                pause = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::debug!(backend = BACKEND, %key, error = %e, "watching a held key failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}
