//! The server-side scripts. Each runs atomically on one instance.
//!
//! Keys of lock `K`: `K` holds the owner token as a plain string (what redis-py's `Lock`
//! stores, so the two exclude each other), `K:holder` the holder metadata with the same TTL,
//! `K:fence` the fencing counter (never expires); releases publish on channel `K:released`.
//! Lock names are escaped (`:` becomes `%3A`), so these suffixes never collide with a lock.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, ScriptInvocation};

/// The keys and channel of one lock. With `fair=true`, waiters also queue in `K:queue` (a list,
/// arrival order) and `K:waiters` (a sorted set: when each queued waiter's entry expires unless
/// it asks again).
#[derive(Clone, Debug)]
pub struct LockKeys {
    pub lock: String,
    pub holder: String,
    pub fence: String,
    pub queue: String,
    pub waiters: String,
    pub channel: String,
}

impl LockKeys {
    pub fn new(key: String) -> Self {
        LockKeys {
            holder: format!("{key}:holder"),
            fence: format!("{key}:fence"),
            queue: format!("{key}:queue"),
            waiters: format!("{key}:waiters"),
            channel: format!("{key}:released"),
            lock: key,
        }
    }

    /// lock, holder, fence, queue, waiters: the KEYS of the fair scripts.
    fn all(&self) -> [&str; 5] {
        [&self.lock, &self.holder, &self.fence, &self.queue, &self.waiters]
    }
}

/// Lua that drops queued waiters (KEYS[4] list, KEYS[5] expiries) that stopped asking.
const PURGE: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
while true do
  local first = redis.call('LINDEX', KEYS[4], 0)
  if not first then break end
  local expires = redis.call('ZSCORE', KEYS[5], first)
  if expires and tonumber(expires) > now then break end
  redis.call('LPOP', KEYS[4])
  redis.call('ZREM', KEYS[5], first)
end
";

/// KEYS: lock, holder, fence, queue, waiters. ARGV: owner, ttl ms, holder text, join (0/1).
/// Fair acquire: granted only when free and this owner is first in line (or the line is
/// empty); otherwise, when `join`, joins the line or renews its place there for one TTL.
/// Returns like [`ACQUIRE`] (pttl 0: free, but someone else is first in line).
static ACQUIRE_FAIR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PURGE}{}",
        r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  return {tonumber(redis.call('GET', KEYS[3]) or '0'), 0}
end
local head = redis.call('LINDEX', KEYS[4], 0)
if current == false and (head == false or head == ARGV[1]) then
  if head == ARGV[1] then
    redis.call('LPOP', KEYS[4])
    redis.call('ZREM', KEYS[5], ARGV[1])
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  return {redis.call('INCR', KEYS[3]), 0}
end
if ARGV[4] == '1' and redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[4], ARGV[1])
end
if current == false then
  return {0, 0}
end
return {0, redis.call('PTTL', KEYS[1])}
"
    ))
});

/// KEYS: lock, holder, fence, queue, waiters. ARGV: owner, channel. Fair release: gives up
/// this owner's grant and its place in line; when the lock is free, wakes the first in line
/// (the message is its owner token). 1 if it held the lock.
static RELEASE_FAIR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PURGE}{}",
        r"
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  released = 1
end
redis.call('LREM', KEYS[4], 0, ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('PUBLISH', ARGV[2], redis.call('LINDEX', KEYS[4], 0) or '')
end
return released
"
    ))
});

/// KEYS: lock, holder, fence. ARGV: owner, ttl ms, holder text.
/// Returns `{fence, 0}` when granted (also when this owner already holds it: a retry after a
/// lost reply), else `{0, pttl}` of the current grant (-1: no expiry).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  return {redis.call('INCR', KEYS[3]), 0}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  return {tonumber(redis.call('GET', KEYS[3]) or '0'), 0}
end
return {0, redis.call('PTTL', KEYS[1])}
",
    )
});

/// KEYS: fence. ARGV: token. Raises the counter to `token` (Redlock: the quorum's maximum).
static RAISE_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
",
    )
});

/// KEYS: lock, holder. ARGV: owner, channel. Deletes only this owner's grant; 1 if it did.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
",
    )
});

/// KEYS: lock, holder. ARGV: owner, ttl ms. Extends only this owner's grant; 1 if it did.
pub static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
",
    )
});

/// KEYS: lock, holder, fence, queue, waiters. ARGV: channel. Deletes whatever grant there is
/// and wakes the first in line (or anyone); 1 if there was a grant.
static EVICT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PURGE}{}",
        r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], redis.call('LINDEX', KEYS[4], 0) or '')
return existed
"
    ))
});

/// KEYS: lock, holder, fence. Returns `{owner|nil, holder|nil, fence|nil, pttl}`.
static STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3]), redis.call('PTTL', KEYS[1])}
",
    )
});

/// An invocation of one of the scripts above with its keys and arguments.
fn invoke(script: &'static Script, keys: &[&str], args: &[&str]) -> ScriptInvocation<'static> {
    let mut invocation = script.prepare_invoke();
    for key in keys {
        invocation.key(*key);
    }
    for arg in args {
        invocation.arg(*arg);
    }
    invocation
}

/// `queue`: `None` for the plain (unfair) script; `Some(join)` for the fair one, joining the
/// line when `join`.
pub fn acquire(
    keys: &LockKeys,
    owner: &str,
    ttl: Duration,
    holder: &str,
    queue: Option<bool>,
) -> ScriptInvocation<'static> {
    let ttl = ttl.as_millis().to_string();
    match queue {
        None => invoke(&ACQUIRE, &[&keys.lock, &keys.holder, &keys.fence], &[owner, &ttl, holder]),
        Some(join) => invoke(&ACQUIRE_FAIR, &keys.all(), &[owner, &ttl, holder, if join { "1" } else { "0" }]),
    }
}

pub fn raise_fence(keys: &LockKeys, token: u64) -> ScriptInvocation<'static> {
    invoke(&RAISE_FENCE, &[&keys.fence], &[&token.to_string()])
}

pub fn release(keys: &LockKeys, owner: &str, fair: bool) -> ScriptInvocation<'static> {
    match fair {
        false => invoke(&RELEASE, &[&keys.lock, &keys.holder], &[owner, &keys.channel]),
        true => invoke(&RELEASE_FAIR, &keys.all(), &[owner, &keys.channel]),
    }
}

pub fn refresh(keys: &LockKeys, owner: &str, ttl: Duration) -> ScriptInvocation<'static> {
    invoke(&REFRESH, &[&keys.lock, &keys.holder], &[owner, &ttl.as_millis().to_string()])
}

pub fn evict(keys: &LockKeys) -> ScriptInvocation<'static> {
    invoke(&EVICT, &keys.all(), &[&keys.channel])
}

pub fn status(keys: &LockKeys) -> ScriptInvocation<'static> {
    invoke(&STATUS, &[&keys.lock, &keys.holder, &keys.fence], &[])
}
