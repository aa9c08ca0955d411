//! The server-side scripts. Each runs atomically on one instance.
//!
//! Keys of lock `K`: `K` holds the owner token as a plain string (what redis-py's `Lock`
//! stores, so the two exclude each other), `K:holder` the holder metadata with the same TTL,
//! `K:fence` the fencing counter (never expires); releases publish on channel `K:released`.
//! Lock names are escaped (`:` becomes `%3A`), so these suffixes never collide with a lock.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, ScriptInvocation};

/// The keys and channel of one lock.
#[derive(Clone, Debug)]
pub struct LockKeys {
    pub lock: String,
    pub holder: String,
    pub fence: String,
    pub channel: String,
}

impl LockKeys {
    pub fn new(key: String) -> Self {
        LockKeys {
            holder: format!("{key}:holder"),
            fence: format!("{key}:fence"),
            channel: format!("{key}:released"),
            lock: key,
        }
    }
}

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

/// KEYS: lock, holder. ARGV: channel. Deletes whatever grant there is; 1 if there was one.
static EVICT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], '')
return existed
",
    )
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

pub fn acquire(keys: &LockKeys, owner: &str, ttl: Duration, holder: &str) -> ScriptInvocation<'static> {
    invoke(&ACQUIRE, &[&keys.lock, &keys.holder, &keys.fence], &[owner, &ttl.as_millis().to_string(), holder])
}

pub fn raise_fence(keys: &LockKeys, token: u64) -> ScriptInvocation<'static> {
    invoke(&RAISE_FENCE, &[&keys.fence], &[&token.to_string()])
}

pub fn release(keys: &LockKeys, owner: &str) -> ScriptInvocation<'static> {
    invoke(&RELEASE, &[&keys.lock, &keys.holder], &[owner, &keys.channel])
}

pub fn refresh(keys: &LockKeys, owner: &str, ttl: Duration) -> ScriptInvocation<'static> {
    invoke(&REFRESH, &[&keys.lock, &keys.holder], &[owner, &ttl.as_millis().to_string()])
}

pub fn evict(keys: &LockKeys) -> ScriptInvocation<'static> {
    invoke(&EVICT, &[&keys.lock, &keys.holder], &[&keys.channel])
}

pub fn status(keys: &LockKeys) -> ScriptInvocation<'static> {
    invoke(&STATUS, &[&keys.lock, &keys.holder, &keys.fence], &[])
}
