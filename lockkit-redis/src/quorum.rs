//! Locks on N independent Redis servers, granted by a majority (Redlock). A single server is
//! the quorum of one: `redis://` and `redlock://` share every line below.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lockkit_core::{Error, FencingToken, LockStatus, safety_margin};

use crate::error::{Cause, Failure};
use crate::fence::{self, AcquireReply, Acquired};
use crate::instance::Instance;
use crate::scripts::{self, LockKeys};
use crate::wakeups::Wakeups;

pub(crate) struct Quorum {
    pub(crate) instances: Vec<Instance>,
    /// How many must agree: N / 2 + 1.
    pub(crate) needed: usize,
    pub(crate) wakeups: Arc<Wakeups>,
    pub(crate) backend: &'static str,
    /// `fair=true`: waiters queue inside the scripts and are granted in arrival order.
    pub(crate) fair: bool,
    /// Wake-ups go by sharded pub/sub (`SPUBLISH`): on a cluster.
    pub(crate) sharded: bool,
}

/// How far a Redlock server's clock may be from the others' before it is left out of the vote:
/// well under the day ahead of its own clock at which a server refuses its counter (see
/// [`fence`](crate::fence)), so a token raised from a server within it is never refused.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(6 * 3600);

/// The outcome of one acquire attempt.
pub(crate) enum Attempt {
    Granted(FencingToken),
    /// Held elsewhere; the current grant expires in this long, where known.
    Busy(Option<Duration>),
}

/// The value most of `values` are, and how many are it (ties: the highest value, so that a
/// counter not raised yet does not win over the raised ones).
fn most_common<T: Ord + Copy>(values: impl Iterator<Item = T>) -> Option<(T, usize)> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for value in values {
        match counts.iter_mut().find(|(v, _)| *v == value) {
            Some((_, n)) => *n += 1,
            None => counts.push((value, 1)),
        }
    }
    counts.into_iter().max_by_key(|&(value, n)| (n, value))
}

/// Runs `call` on every instance at once (directly when there is only one).
async fn on_all<'a, T, F, Fut>(instances: &'a [Instance], call: F) -> Vec<T>
where
    F: Fn(&'a Instance) -> Fut,
    Fut: Future<Output = T>,
{
    match instances {
        [only] => vec![call(only).await],
        _ => join_all(instances.iter().map(call)).await,
    }
}

impl Quorum {
    /// One attempt on every instance at once. Grants when a majority granted within the
    /// validity time (TTL minus the time taken minus the safety margin); otherwise undoes the
    /// partial grants. Fails when fewer than a majority answered.
    /// `join`: when the lock is not granted, take a place among the waiters a release wakes
    /// (in fair mode, in line), ranked by this arrival time (ms since the epoch).
    pub(crate) async fn acquire(
        &self,
        keys: &LockKeys,
        owner: &str,
        ttl: Duration,
        join: Option<u64>,
    ) -> Result<Attempt, Error> {
        let started = Instant::now();
        let replies = on_all(&self.instances, |instance| async move {
            let call =
                || instance.run::<AcquireReply>(scripts::acquire(keys, owner, ttl, self.fair, join, self.sharded));
            // The script is idempotent for its owner, so a reply lost to a dropped connection
            // is recovered by asking again.
            let reply = match call().await {
                Err(e) if e.is_temporary() => call().await,
                other => other,
            };
            reply.and_then(|reply| fence::acquired(reply, &instance.address))
        })
        .await;
        let replies = self.leave_out_skewed_clocks(replies);
        let mut fences = Vec::new();
        let mut expires_in: Option<Duration> = None;
        let mut errors = Vec::new();
        for reply in replies {
            match reply {
                Ok(Acquired::Granted(token)) => fences.push(token),
                Ok(Acquired::Busy(pttl)) if pttl > 0 => {
                    let pttl = Duration::from_millis(pttl as u64);
                    expires_in = Some(expires_in.map_or(pttl, |e| e.min(pttl)));
                }
                Ok(Acquired::Busy(_)) => {}
                Err(e) => errors.push(e),
            }
        }
        let in_time = started.elapsed() + safety_margin(ttl) < ttl;
        let mut raise_errors = Vec::new();
        if fences.len() >= self.needed && in_time {
            let token = fences.iter().copied().max().unwrap_or_default();
            if self.instances.len() == 1 {
                return Ok(Attempt::Granted(FencingToken::new(token)));
            }
            raise_errors = self.raise_fences(keys, token).await;
            if self.instances.len() - raise_errors.len() >= self.needed {
                return Ok(Attempt::Granted(FencingToken::new(token)));
            }
        }
        if !fences.is_empty() || !errors.is_empty() {
            // Not withdrawn: a waiter that lost a split vote keeps its place among the waiters.
            let _ = self.release(keys, owner, false).await;
        }
        self.enough_answered(errors)?;
        // A majority granted but too few took the token. Refused (a counter at its limit): that
        // is the answer, not "held elsewhere". Unanswered: tried again, like a split vote.
        if raise_errors.iter().any(|e| !e.is_temporary()) {
            self.enough_answered(raise_errors)?;
        }
        Ok(Attempt::Busy(expires_in))
    }

    /// Redlock: a server whose clock is more than [`MAX_CLOCK_SKEW`] away from the middle one of
    /// those that answered is left out of the vote, as if it had not answered — its token,
    /// minted from that clock, would be raised onto every server and push their counters far
    /// ahead of their own clocks, where their scripts refuse them. (One server alone has no
    /// other clock to compare with.)
    fn leave_out_skewed_clocks(&self, replies: Vec<Result<(Acquired, u64), Error>>) -> Vec<Result<Acquired, Error>> {
        let mut clocks: Vec<u64> = replies.iter().filter_map(|r| r.as_ref().ok().map(|(_, clock)| *clock)).collect();
        clocks.sort_unstable();
        let middle = clocks.get(clocks.len() / 2).copied().filter(|_| self.instances.len() > 1);
        replies
            .into_iter()
            .zip(&self.instances)
            .map(|(reply, instance)| {
                let (acquired, clock) = reply?;
                match middle {
                    Some(middle) if clock.abs_diff(middle) > MAX_CLOCK_SKEW.as_micros() as u64 => {
                        let (hours, direction) = (
                            clock.abs_diff(middle) / 3_600_000_000,
                            if clock > middle { "ahead of" } else { "behind" },
                        );
                        let reason = format!(
                            "redis at {}: its clock is {hours} h {direction} the other servers', so it is left out of \
                             the vote until its clock is set right",
                            instance.address
                        );
                        tracing::warn!(backend = self.backend, %reason, "a Redlock server's clock is off");
                        Err(Error::backend(self.backend, reason))
                    }
                    _ => Ok(acquired),
                }
            })
            .collect()
    }

    /// Raises the fencing counter of every instance to `token`, so that any later majority
    /// overlaps one that has seen it. Returns the errors of those that did not confirm.
    async fn raise_fences(&self, keys: &LockKeys, token: u64) -> Vec<Error> {
        let replies =
            on_all(&self.instances, |instance| instance.run::<i64>(scripts::raise_fence(keys, token, self.sharded)))
                .await;
        replies.into_iter().filter_map(Result::err).collect()
    }

    /// Deletes this owner's grant on every instance; `Ok(n)`: n instances had it. `withdraw`:
    /// the acquire was given up, so also take the owner out of the waiters.
    pub(crate) async fn release(&self, keys: &LockKeys, owner: &str, withdraw: bool) -> Result<usize, Error> {
        let script =
            |instance| Instance::run::<i64>(instance, scripts::release(keys, owner, self.fair, withdraw, self.sharded));
        let replies = on_all(&self.instances, script).await;
        let released = replies.iter().filter(|r| matches!(r, Ok(1))).count();
        self.enough_answered(replies.into_iter().filter_map(Result::err).collect())?;
        Ok(released)
    }

    /// Extends these grants on every instance, one round trip per instance. For each grant:
    /// `Some(true)` held by a majority, `Some(false)` gone from more than a minority (lost),
    /// `None` undecided (too few answers).
    pub(crate) async fn refresh(
        &self,
        grants: &[(std::sync::Arc<LockKeys>, std::sync::Arc<str>)],
        ttl: Duration,
    ) -> (Vec<Option<bool>>, Option<Error>) {
        let invocations: Vec<_> = grants.iter().map(|(keys, owner)| scripts::refresh(keys, owner, ttl)).collect();
        let locks: Vec<&str> = grants.iter().map(|(keys, _)| keys.lock.as_str()).collect();
        let replies =
            on_all(&self.instances, |instance| instance.run_many(&scripts::REFRESH, &invocations, &locks)).await;
        let allowed_missing = self.instances.len() - self.needed;
        let mut first_error = None;
        // Each grant on each instance: held, gone, or undecided (no answer, an error reply).
        let mut answers: Vec<Vec<Option<bool>>> = Vec::with_capacity(replies.len());
        for (instance, reply) in self.instances.iter().zip(replies) {
            match reply {
                Ok(results) => answers.push(
                    (0..grants.len())
                        .map(|i| match results.get(i) {
                            Some(Ok(held)) => Some(*held == 1),
                            Some(Err(e)) => match Failure::classify(instance.backend, &instance.address, e.clone()) {
                                // The key holds another type: someone replaced it, so it is gone.
                                failure if failure.cause == Cause::WrongType => Some(false),
                                failure => {
                                    first_error.get_or_insert(failure.into());
                                    None
                                }
                            },
                            None => None,
                        })
                        .collect(),
                ),
                Err(e) => {
                    first_error.get_or_insert(e);
                    answers.push(vec![None; grants.len()]);
                }
            }
        }
        let verdicts = (0..grants.len())
            .map(|i| {
                let held = answers.iter().filter(|a| a[i] == Some(true)).count();
                let gone = answers.iter().filter(|a| a[i] == Some(false)).count();
                if held >= self.needed {
                    Some(true)
                } else if gone > allowed_missing {
                    Some(false)
                } else {
                    None
                }
            })
            .collect();
        (verdicts, first_error)
    }

    /// Stores `value` as the value this owner's grant proclaims, on every instance that holds
    /// it: how many did.
    pub(crate) async fn proclaim(&self, keys: &LockKeys, owner: &str, value: &str) -> Result<usize, Error> {
        let script = |instance| Instance::run::<i64>(instance, scripts::proclaim(keys, owner, value, self.sharded));
        let replies = on_all(&self.instances, script).await;
        let proclaimed = replies.iter().filter(|r| matches!(r, Ok(1))).count();
        self.enough_answered(replies.into_iter().filter_map(Result::err).collect())?;
        Ok(proclaimed)
    }

    /// Deletes whatever grant there is, on every instance; `true` if any had one.
    pub(crate) async fn evict(&self, keys: &LockKeys) -> Result<bool, Error> {
        let replies = on_all(&self.instances, |instance| instance.run::<i64>(scripts::evict(keys, self.sharded))).await;
        let evicted = replies.iter().any(|r| matches!(r, Ok(1)));
        self.enough_answered(replies.into_iter().filter_map(Result::err).collect())?;
        Ok(evicted)
    }

    /// The lock as a majority sees it.
    pub(crate) async fn status(&self, keys: &LockKeys) -> Result<LockStatus, Error> {
        Ok(self.settled_status(keys).await?.0)
    }

    /// [`status`](Self::status), and whether its token is settled: a Redlock grant's servers
    /// each mint a token and the acquire then raises them all to the highest, so until a
    /// majority of the holders agree on it, the highest one seen may not be the grant's.
    pub(crate) async fn settled_status(&self, keys: &LockKeys) -> Result<(LockStatus, bool), Error> {
        // The owner and counter as bytes: a counter holding garbage (even bytes that are not
        // UTF-8) shows no token (an acquire says why), another client's value no holder.
        type Reply = (Option<Vec<u8>>, Option<Vec<u8>>, i64, usize);
        let replies = on_all(&self.instances, |instance| instance.run::<Reply>(scripts::status(keys))).await;
        let mut errors = Vec::new();
        let mut held = Vec::new();
        let mut waiting = Vec::new();
        for reply in replies {
            match reply {
                Ok((owner, fence, pttl, waiters)) => {
                    waiting.push(waiters);
                    if let Some(owner) = owner {
                        let fence = fence.and_then(|f| std::str::from_utf8(&f).ok()?.parse::<u64>().ok());
                        held.push((String::from_utf8_lossy(&owner).into_owned(), fence, pttl));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        self.enough_answered(errors)?;
        // As many waiters as a majority counts at least.
        waiting.sort_unstable_by(|a, b| b.cmp(a));
        let waiting = waiting.get(self.needed - 1).copied().unwrap_or_default();
        if held.len() < self.needed {
            return Ok((LockStatus::free().waiting(waiting), true));
        }
        // What most holders show: a proclaim one server missed, or one accepted by a minority,
        // is not taken for the leader's value because that server answered first.
        let owner = most_common(held.iter().map(|(owner, ..)| owner.as_str()));
        let holder = owner.and_then(|(owner, _)| scripts::holder_of(owner)).map(str::to_owned);
        // The counter is the holder's token only when lockkit took the grant (its value names
        // a holder); a redis-py lock on the same key has no token. Most holders' counter: the
        // acquire raised them all to the grant's token, and a server left out of the vote (a
        // clock far off) keeps the far-off token it minted, which is not the grant's.
        let fence = most_common(held.iter().filter_map(|(_, f, _)| *f));
        let token = holder.as_ref().and(fence).map(|(f, _)| FencingToken::new(f));
        let ttl_left = held.iter().filter(|(.., p)| *p >= 0).map(|(.., p)| Duration::from_millis(*p as u64)).min();
        let settled = token.is_none() || fence.is_some_and(|(_, agreeing)| agreeing >= self.needed);
        Ok((LockStatus::held(holder, token, ttl_left).waiting(waiting), settled))
    }

    /// Fails when too few instances answered to decide: with an error that trying again will
    /// not fix if there was one (wrong credentials, a counter holding garbage), else with the
    /// connection error (of the only server, or a summary).
    fn enough_answered(&self, mut errors: Vec<Error>) -> Result<(), Error> {
        if self.instances.len() - errors.len() >= self.needed {
            return Ok(());
        }
        // Refusals alone (a bad counter, a skewed clock) keep a majority from ever agreeing:
        // that is the answer. Otherwise servers that did not answer are part of why, and
        // trying again once they are back may succeed: a temporary error.
        let refusals = errors.iter().filter(|e| !e.is_temporary()).count();
        if self.instances.len() - refusals < self.needed || self.instances.len() == 1 {
            let first = errors.iter().position(|e| !e.is_temporary()).unwrap_or(0);
            return Err(errors.swap_remove(first));
        }
        // The first error shown is one of the servers that did not answer.
        errors.sort_by_key(|e| !e.is_temporary());
        let endpoints: Vec<&str> = self.instances.iter().map(|i| i.address.as_str()).collect();
        Err(Error::connection(
            self.backend,
            endpoints.join(","),
            format!(
                "only {} of {} servers answered, and Redlock needs {}; first error: {}",
                self.instances.len() - errors.len(),
                self.instances.len(),
                self.needed,
                errors[0]
            ),
            None,
        ))
    }
}
