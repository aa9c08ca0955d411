//! Leader election on the lock machinery: a candidate campaigns by acquiring the election's
//! lock with its value as the grant's holder metadata, so the leader is the holder, its term is
//! the grant's fencing token, and leadership is lost, refreshed and handed over exactly as a
//! lock is. See [`DistributedLock::campaign`](crate::DistributedLock::campaign).

use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use tracing::Instrument;

use crate::signal::lock;
use crate::{Error, FencingToken, Lease, LockGuard, LossSignal, Result};

/// The leader of an election as everyone sees it: the value it campaigned with (or last
/// proclaimed), and its term — the fencing token of its grant, strictly increasing from one
/// leader to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// What the leader announced (an address, an id).
    pub value: String,
    /// The leader's term: send it with every write a leader makes, so that a deposed leader's
    /// late writes can be refused.
    pub term: FencingToken,
}

/// Leadership of an election, held until it is resigned, dropped or lost. Dropping it resigns
/// in the background; [`resign`](Self::resign) resigns and reports errors.
///
/// Like a [`LockGuard`] (which it wraps), it knows its local deadline and says when it is lost:
/// [`is_leader`](Self::is_leader), [`lost`](Self::lost), and
/// [`run_while_leader`](Self::run_while_leader), which cancels its work the moment leadership
/// is lost.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> lockkit_core::Result<()> {
/// use lockkit_core::DistributedLock;
/// let elections = lockkit_core::memory::connect(&"memory://leadership-doc".parse()?)?;
/// let leadership = elections.campaign("scheduler", "node-a:8080").await?;
/// let leader = elections.leader("scheduler").await?.expect("a leader");
/// assert_eq!((leader.value.as_str(), leader.term), ("node-a:8080", leadership.term()));
/// leadership.proclaim("node-a:9090").await?;
/// leadership.run_while_leader(async { /* schedule jobs, sending the term along */ }).await?;
/// leadership.resign().await?;
/// assert_eq!(elections.leader("scheduler").await?, None);
/// # Ok(()) }
/// ```
#[must_use = "if unused the leadership is resigned at once"]
#[clippy::has_significant_drop]
pub struct Leadership {
    guard: LockGuard,
    /// The value and term observers see now.
    shown: Mutex<(String, FencingToken)>,
    /// Held across a proclaim's write: one at a time, so that what `shown` keeps is the last
    /// write (and its term, on Consul).
    proclaiming: tokio::sync::Mutex<()>,
}

impl Leadership {
    pub(crate) fn new(guard: LockGuard, value: String) -> Self {
        let term = guard.fencing_token();
        Leadership { guard, shown: Mutex::new((value, term)), proclaiming: tokio::sync::Mutex::new(()) }
    }

    /// The election's name.
    pub fn election(&self) -> &str {
        self.guard.name()
    }

    /// The term: the fencing token of this leadership, above every earlier leader's. It stays
    /// the same for the whole leadership, except on Consul, whose tokens are the index of the
    /// key's last write: there a [`proclaim`](Self::proclaim) moves it forward (send the new
    /// one with later writes).
    pub fn term(&self) -> FencingToken {
        lock(&self.shown).1
    }

    /// The value observers see now: the campaign's, or the last one proclaimed.
    pub fn value(&self) -> String {
        lock(&self.shown).0.clone()
    }

    /// Whether this is still the leader: not lost, and before the local deadline.
    pub fn is_leader(&self) -> bool {
        self.guard.is_held()
    }

    /// A loss signal to hand to other tasks.
    pub fn loss_signal(&self) -> LossSignal {
        self.guard.loss_signal()
    }

    /// The lease the leadership hangs on.
    pub fn lease(&self) -> &dyn Lease {
        self.guard.lease()
    }

    /// Completes once leadership may be lost, with the reason.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn lost(&self) -> String {
        self.guard.lost().await
    }

    /// Runs `work` while this is the leader; if leadership is lost first, `work` is dropped at
    /// once and the result is [`Error::LockLost`].
    ///
    /// # Cancel safety
    /// As cancel safe as `work`.
    pub async fn run_while_leader<F: Future>(&self, work: F) -> Result<F::Output> {
        self.guard.run_while_held(work).await
    }

    /// Changes the value observers see, only while this is still the leader: the backend
    /// compares the term (the grant) before it writes, so a deposed leader's proclaim is
    /// refused and changes nothing.
    ///
    /// # Errors
    /// [`Error::LockLost`] when leadership was lost; [`Error::NotHeld`] when the backend says
    /// another term leads now; a connection error when it could not tell (the value may then be
    /// either).
    ///
    /// Proclaims of one leadership run one at a time, in the order they were called.
    pub async fn proclaim(&self, value: &str) -> Result<()> {
        let span = tracing::info_span!("lockkit.proclaim", backend = self.guard.backend(), election = %self.election(),
            term = self.term().get());
        async {
            let _one_at_a_time = self.proclaiming.lock().await;
            if !self.is_leader() {
                let reason = self.guard.loss_signal().reason().unwrap_or_else(|| "its deadline passed".into());
                return Err(Error::LockLost { backend: self.guard.backend(), name: self.election().into(), reason });
            }
            let term = self.guard.proclaim(value).await?;
            let mut shown = lock(&self.shown);
            *shown = (value.to_owned(), term.max(shown.1));
            tracing::debug!("proclaimed");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Steps down and waits for the backend to confirm; the next candidate then leads.
    ///
    /// # Errors
    /// As [`LockGuard::release`].
    ///
    /// # Cancel safety
    /// Cancel safe: leadership is resigned either way.
    pub async fn resign(self) -> Result<()> {
        self.guard.release().await
    }
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("election", &self.election())
            .field("term", &self.term())
            .field("leader", &self.is_leader())
            .finish()
    }
}

/// Where a driver's observation of an election comes from: the leader each time the backend
/// shows a change (the core drops repeats and anything older than what it already showed).
#[async_trait]
pub trait LeaderFeed: Send + 'static {
    /// Waits for the backend's next view of the leader. It may repeat a view; after a
    /// reconnect it must read the current leader again rather than miss a change.
    ///
    /// # Errors
    /// When the backend could not be reached within the request timeout; the next call tries
    /// again.
    ///
    /// # Cancel safety
    /// MUST be cancel safe.
    async fn next(&mut self) -> Result<Option<Leader>>;

    /// Whether the backend's history restarted since the last call (its indexes went
    /// backwards: Consul restored from a snapshot), so that terms below those shown before are
    /// real: the observation then starts over instead of hiding every later leader.
    fn restarted(&mut self) -> bool {
        false
    }
}

/// The changes of an election's leader, from
/// [`DistributedLock::observe`](crate::DistributedLock::observe): the first
/// [`next`](Self::next) answers the leader now (or `None`), each later one the next change.
/// Every term is seen at most once (a proclaim in the same term shows again with its new
/// value), and in increasing order; a quick succession of leaders may be seen only as the last.
pub struct LeaderChanges {
    feed: Box<dyn LeaderFeed>,
    /// What the last `next` answered (`None` before the first).
    shown: Option<Option<Leader>>,
    /// The highest term shown so far.
    highest: FencingToken,
}

impl LeaderChanges {
    pub(crate) fn new(feed: Box<dyn LeaderFeed>) -> Self {
        LeaderChanges { feed, shown: None, highest: FencingToken::new(0) }
    }

    /// The next change of leader: `Some` with the new leader (or the same term with a new
    /// value), `None` when nobody leads.
    ///
    /// # Errors
    /// When the backend could not be reached; calling again resumes the observation.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn next(&mut self) -> Result<Option<Leader>> {
        loop {
            let seen = self.feed.next().await?;
            if self.feed.restarted() {
                tracing::warn!(?seen, "the backend's history restarted; terms start over");
                (self.shown, self.highest) = (None, FencingToken::new(0));
            }
            if !self.is_news(seen.as_ref()) {
                continue;
            }
            if let Some(leader) = &seen {
                self.highest = leader.term;
            }
            self.shown = Some(seen.clone());
            return Ok(seen);
        }
    }

    /// Whether `seen` is a change: no term below the highest shown (a stale read after a
    /// reconnect), the highest one again only with a new value, and no repeated "nobody".
    fn is_news(&self, seen: Option<&Leader>) -> bool {
        let shown = self.shown.as_ref();
        match seen {
            None => shown != Some(&None),
            Some(seen) if seen.term > self.highest => true,
            Some(seen) if seen.term == self.highest => {
                matches!(shown, Some(Some(shown)) if shown.term == seen.term && shown.value != seen.value)
            }
            Some(_) => false,
        }
    }
}

impl fmt::Debug for LeaderChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderChanges").field("shown", &self.shown).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(term: u64, value: &str) -> Option<Leader> {
        Some(Leader { value: value.into(), term: FencingToken::new(term) })
    }

    struct Scripted(Vec<Option<Leader>>);

    #[async_trait]
    impl LeaderFeed for Scripted {
        async fn next(&mut self) -> Result<Option<Leader>> {
            if self.0.is_empty() {
                return std::future::pending().await;
            }
            Ok(self.0.remove(0))
        }
    }

    /// Repeats, and terms older than one shown (a stale read after a reconnect), are dropped;
    /// a proclaim in the same term and the end of a term are shown.
    #[tokio::test]
    async fn observers_see_each_change_once_and_terms_only_increase() {
        let views = vec![
            None,
            None,
            leader(5, "a"),
            leader(5, "a"),
            leader(3, "stale"),
            leader(5, "a2"),
            None,
            leader(4, "older than shown"),
            leader(9, "b"),
        ];
        let mut changes = LeaderChanges::new(Box::new(Scripted(views)));
        let mut shown = Vec::new();
        for _ in 0..5 {
            shown.push(changes.next().await.unwrap());
        }
        assert_eq!(shown, vec![None, leader(5, "a"), leader(5, "a2"), None, leader(9, "b")]);
    }
}
