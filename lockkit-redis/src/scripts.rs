//! The server-side scripts. Each runs atomically on one instance.
//!
//! Keys of lock `K`: `K` is the namespaced name ([`Namespace::verbatim_key`]: only `%`, `/`,
//! `{`, `}` and control bytes are percent-encoded, so `jobs:nightly` is the key
//! `jobs:nightly`). It holds the owner value as a plain string, as redis-py's `Lock` holds its
//! token, so the two exclude each other on the same name. The value is a random token, a
//! space, and the holder metadata, so the metadata lives and expires with the grant.
//! `K:{K}:fence` is the fencing counter (never expires). A release publishes on channel
//! `K:{K}:released` the owner value of the one waiter it wakes: plain waiters register in
//! `K:{K}:wakeup` (a sorted set ranked by arrival, expiring a TTL after its last waiter asked)
//! and a release pops the first; with `fair=true`, waiters queue in `K:{K}:queue` (a list,
//! arrival order) and `K:{K}:waiters` (a sorted set: when each queued entry expires unless its
//! waiter asks again) instead.
//!
//! Every helper key is `K:{K}:suffix`: it starts with `K`, so an ACL user limited to its
//! namespace (`~app/*`, `&app/*`) reaches its helpers and channel too, and it carries the whole
//! of `K` as its Redis Cluster hash tag. `K` never contains `{` or `}`, so its slot is the hash
//! of the whole key and the tag is exactly `K`: all keys of one script are in one slot, and no
//! helper key can equal a lock key or another lock's helper.
//!
//! [`Namespace::verbatim_key`]: lockkit_core::Namespace::verbatim_key

use std::sync::LazyLock;
use std::time::Duration;

use lockkit_core::driver::random_u64;
use lockkit_core::{LockName, Namespace};

use crate::fence::FENCE;
use redis::{Script, ScriptInvocation};

/// The keys and channel of one lock.
#[derive(Clone, Debug)]
pub(crate) struct LockKeys {
    pub(crate) lock: String,
    pub(crate) fence: String,
    pub(crate) queue: String,
    pub(crate) waiters: String,
    pub(crate) wakeup: String,
    pub(crate) channel: String,
}

impl LockKeys {
    /// The keys of lock `name` in `namespace`.
    pub(crate) fn of(namespace: &Namespace, name: &LockName) -> Self {
        LockKeys::new(namespace.verbatim_key(name))
    }

    /// The keys of the lock key `key`: each helper starts with `key` (so ACL key patterns such
    /// as `~app/*` cover them) and is tagged with the whole of `key` (one cluster slot).
    pub(crate) fn new(key: String) -> Self {
        LockKeys {
            fence: format!("{key}:{{{key}}}:fence"),
            queue: format!("{key}:{{{key}}}:queue"),
            waiters: format!("{key}:{{{key}}}:waiters"),
            wakeup: format!("{key}:{{{key}}}:wakeup"),
            channel: format!("{key}:{{{key}}}:released"),
            lock: key,
        }
    }

    /// Where the holder's proclaimed value is kept (an election's leader), with its owner token:
    /// `K:{K}:value`. Not kept per grant: only elections need it.
    pub(crate) fn proclaimed(&self) -> String {
        format!("{0}:{{{0}}}:value", self.lock)
    }

    /// lock, fence, queue, waiters: the KEYS of the fair scripts.
    fn fair(&self) -> [&str; 4] {
        [&self.lock, &self.fence, &self.queue, &self.waiters]
    }
}

/// A fresh owner value for a grant: a random token that no other grant has, then the holder
/// metadata.
pub(crate) fn owner_value(holder: &str) -> String {
    format!("{:016x}{:016x} {holder}", random_u64(), random_u64())
}

/// The holder metadata in a lock's value, when lockkit wrote it (a redis-py token has none).
pub(crate) fn holder_of(value: &str) -> Option<&str> {
    let (token, holder) = value.split_once(' ')?;
    (token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())).then_some(holder)
}

/// Lua that sets `now` to the server's clock in milliseconds (a macro, for `concat!`).
macro_rules! now_lua {
    () => {
        "
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"
    };
}

/// Lua that sets `now` (`now_lua!`), then drops queued waiters (KEYS[3] list, KEYS[4]
/// expiries) that stopped asking.
const PURGE: &str = concat!(
    now_lua!(),
    r"
while true do
  local first = redis.call('LINDEX', KEYS[3], 0)
  if not first then break end
  local expires = redis.call('ZSCORE', KEYS[4], first)
  if expires and tonumber(expires) > now then break end
  redis.call('LPOP', KEYS[3])
  redis.call('ZREM', KEYS[4], first)
end
"
);

/// KEYS: lock, fence, queue, waiters. ARGV: owner, ttl ms, join (0: no), channel, publish
/// command. Fair acquire: granted only when free and this owner is first in line (or the line
/// is empty); otherwise, when `join`, joins the line or renews its place there for one TTL. A
/// grant announces itself on the channel (an empty message, for observers). Answers like
/// [`ACQUIRE`] (pttl 0: free, but someone else is first in line).
static ACQUIRE_FAIR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PURGE}local fence_key = KEYS[2]\n{FENCE}{}",
        r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, fence or mint(), 0, server_clock}
end
local head = redis.call('LINDEX', KEYS[3], 0)
if current == false and (head == false or head == ARGV[1]) then
  if head == ARGV[1] then
    redis.call('LPOP', KEYS[3])
    redis.call('ZREM', KEYS[4], ARGV[1])
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  local token = mint()
  redis.call(ARGV[5], ARGV[4], '')
  return {1, token, 0, server_clock}
end
if ARGV[3] ~= '0' and redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[3], ARGV[1])
end
if current == false then
  return {0, '0', 0, server_clock}
end
return {0, '0', redis.call('PTTL', KEYS[1]), server_clock}
"
    ))
});

/// KEYS: lock, fence, queue, waiters. ARGV: owner, channel, publish command. Fair release:
/// gives up this owner's grant and its place in line; when the lock is free, wakes the first
/// in line, and a release announces itself (an empty message, for observers). 1 if it held
/// the lock.
static RELEASE_FAIR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PURGE}{}",
        r"
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
redis.call('LREM', KEYS[3], 0, ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local head = redis.call('LINDEX', KEYS[3], 0)
if head and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call(ARGV[3], ARGV[2], head)
end
if released == 1 then
  redis.call(ARGV[3], ARGV[2], '')
end
return released
"
    ))
});

/// KEYS: lock, fence, wakeup. ARGV: owner, ttl ms, join (0: no, else the waiter's arrival
/// time), channel, publish command; a new grant announces itself on the channel (an empty
/// message, for observers). Answers `{1, token, 0, server_clock}` when granted (also when this owner already holds it: a
/// retry after a lost reply), the token a string (see [`fence`](crate::fence)); else
/// `{0, '0', pttl, server_clock}` with the pttl of the current grant (-1: no expiry); `clock` is the
/// server's clock in µs (a string), which Redlock compares across servers, after registering the owner as a waiter to wake when
/// `join`, ranked by its arrival (so that every Redlock server wakes the same one). A counter
/// holding garbage is a `BADFENCE` error, before anything is written.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "local fence_key = KEYS[2]\n{FENCE}{}",
        r"
local granted = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if granted or redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[3] ~= '0' then
    redis.call('ZREM', KEYS[3], ARGV[1])
  end
  if granted then
    local token = mint()
    redis.call(ARGV[5], ARGV[4], '')
    return {1, token, 0, server_clock}
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, fence or mint(), 0, server_clock}
end
if ARGV[3] ~= '0' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
  end
end
return {0, '0', redis.call('PTTL', KEYS[1]), server_clock}
"
    ))
});

/// KEYS: lock, wakeup. ARGV: owner, channel, withdraw (0/1), publish command. Deletes only this owner's grant
/// and wakes the waiter that arrived first (observers read that message too; with no waiter
/// it announces the release with an empty one); with `withdraw` (an acquire given up) also
/// takes the owner out of the waiters. 1 if it held the lock.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
local wake = redis.call('ZPOPMIN', KEYS[2])[1]
redis.call(ARGV[4], ARGV[2], wake or '')
return 1
",
    )
});

/// KEYS: fence. ARGV: token, channel, publish command. Raises the counter to `token`
/// (Redlock: the quorum's maximum), and announces it (observers read the grant's token once a
/// majority of its holders agree on it); a counter holding garbage is a `BADFENCE` error.
static RAISE_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "local fence_key = KEYS[1]\n{FENCE}{}",
        r"
if tonumber(fence or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call(ARGV[3], ARGV[2], '')
end
return 1
"
    ))
});

/// KEYS: lock, proclaimed. ARGV: owner, ttl ms. Extends only this owner's grant, and the value
/// it proclaimed if any (which so lives no longer than the grant); 1 if it did.
pub(crate) static REFRESH: LazyLock<Script> = LazyLock::new(|| {
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

/// KEYS: lock, fence, queue, waiters, wakeup. ARGV: channel, publish command. Deletes whatever grant there is
/// and wakes one waiter (the first in line, else the plain waiter that arrived first); 1 if
/// there was a grant.
static EVICT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PURGE}{}",
        r"
local existed = redis.call('DEL', KEYS[1])
local wake = redis.call('LINDEX', KEYS[3], 0) or redis.call('ZPOPMIN', KEYS[5])[1]
if wake or existed == 1 then
  redis.call(ARGV[2], ARGV[1], wake or '')
end
return existed
"
    ))
});

/// KEYS: lock, fence, waiters, wakeup, proclaimed. Returns `{owner|nil, fence|nil, pttl,
/// waiting}`, waiting counting both kinds of waiters (fair ones whose place has not expired).
/// When the holder proclaimed (`proclaimed` starts with its owner token), the owner's holder
/// part is the proclaimed value.
static STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        now_lua!(),
        r"
local waiting = redis.call('ZCARD', KEYS[4]) + redis.call('ZCOUNT', KEYS[3], now, '+inf')
local owner = redis.call('GET', KEYS[1])
local proclaimed = redis.call('GET', KEYS[5])
if owner and proclaimed and #owner >= 33 and string.sub(proclaimed, 1, 33) == string.sub(owner, 1, 33) then
  owner = proclaimed
end
return {owner, redis.call('GET', KEYS[2]), redis.call('PTTL', KEYS[1]), waiting}
"
    ))
});

/// KEYS: lock, proclaimed. ARGV: owner, value, channel, publish command. While this owner
/// holds the lock, stores its owner token and `value` as the value it proclaims (read by
/// [`STATUS`]; the lock's own value, which refreshes and releases compare, stays), expiring
/// with the grant (refreshes extend both), and announces it on the channel. 1 if it held the
/// lock.
static PROCLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local left = redis.call('PTTL', KEYS[1])
if left <= 0 then
  left = 1
end
redis.call('SET', KEYS[2], string.sub(ARGV[1], 1, 33) .. ARGV[2], 'PX', left)
redis.call(ARGV[4], ARGV[3], '')
return 1
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

/// `fair`: the script that keeps the line; `join`: when not granted, take (or renew) a place
/// among the waiters a release wakes, ranked by this arrival time (ms since the epoch);
/// `sharded`: announce with sharded pub/sub.
pub(crate) fn acquire(
    keys: &LockKeys,
    owner: &str,
    ttl: Duration,
    fair: bool,
    join: Option<u64>,
    sharded: bool,
) -> ScriptInvocation<'static> {
    let (ttl, join) = (ttl.as_millis().to_string(), join.map_or_else(|| "0".to_owned(), |at| at.max(1).to_string()));
    let args = [owner, &ttl, &join, &keys.channel, publish(sharded)];
    match fair {
        false => invoke(&ACQUIRE, &[&keys.lock, &keys.fence, &keys.wakeup], &args),
        true => invoke(&ACQUIRE_FAIR, &keys.fair(), &args),
    }
}

/// `sharded`: announce with sharded pub/sub.
pub(crate) fn raise_fence(keys: &LockKeys, token: u64, sharded: bool) -> ScriptInvocation<'static> {
    invoke(&RAISE_FENCE, &[&keys.fence], &[&token.to_string(), &keys.channel, publish(sharded)])
}

/// The command a release wakes a waiter with: `PUBLISH`, or `SPUBLISH` when `sharded` (on a
/// cluster: only the node serving the channel's slot, and its subscribers, see the message).
fn publish(sharded: bool) -> &'static str {
    if sharded { "SPUBLISH" } else { "PUBLISH" }
}

/// `withdraw`: the acquire was given up, so also leave the waiters (the fair script always does).
/// `sharded`: wake with sharded pub/sub.
pub(crate) fn release(
    keys: &LockKeys,
    owner: &str,
    fair: bool,
    withdraw: bool,
    sharded: bool,
) -> ScriptInvocation<'static> {
    let withdraw = if withdraw { "1" } else { "0" };
    match fair {
        false => invoke(&RELEASE, &[&keys.lock, &keys.wakeup], &[owner, &keys.channel, withdraw, publish(sharded)]),
        true => invoke(&RELEASE_FAIR, &keys.fair(), &[owner, &keys.channel, publish(sharded)]),
    }
}

pub(crate) fn refresh(keys: &LockKeys, owner: &str, ttl: Duration) -> ScriptInvocation<'static> {
    invoke(&REFRESH, &[&keys.lock, &keys.proclaimed()], &[owner, &ttl.as_millis().to_string()])
}

pub(crate) fn evict(keys: &LockKeys, sharded: bool) -> ScriptInvocation<'static> {
    let keys_ = [&keys.lock, &keys.fence, &keys.queue, &keys.waiters, &keys.wakeup].map(String::as_str);
    invoke(&EVICT, &keys_, &[&keys.channel, publish(sharded)])
}

pub(crate) fn status(keys: &LockKeys) -> ScriptInvocation<'static> {
    invoke(&STATUS, &[&keys.lock, &keys.fence, &keys.waiters, &keys.wakeup, &keys.proclaimed()], &[])
}

/// `sharded`: announce with sharded pub/sub.
pub(crate) fn proclaim(keys: &LockKeys, owner: &str, value: &str, sharded: bool) -> ScriptInvocation<'static> {
    invoke(&PROCLAIM, &[&keys.lock, &keys.proclaimed()], &[owner, value, &keys.channel, publish(sharded)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_back_from_lockkit_values_only() {
        let value = owner_value("api on host-7 pid 12");
        assert_eq!(holder_of(&value), Some("api on host-7 pid 12"));
        assert_eq!(holder_of(&owner_value("")), Some(""));
        assert_ne!(owner_value("x"), owner_value("x"), "every grant has its own value");
        // redis-py's token: 32 hex digits and nothing else.
        assert_eq!(holder_of("9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d"), None);
        assert_eq!(holder_of("not a lockkit value"), None);
    }

    #[test]
    fn helper_keys_are_tagged_with_the_whole_lock_key() {
        let keys = LockKeys::of(&Namespace::new("app"), &LockName::new("jobs:nightly").unwrap());
        assert_eq!(keys.lock, "app/jobs:nightly");
        assert_eq!(keys.fence, "app/jobs:nightly:{app/jobs:nightly}:fence");
        assert_eq!(keys.queue, "app/jobs:nightly:{app/jobs:nightly}:queue");
        assert_eq!(keys.waiters, "app/jobs:nightly:{app/jobs:nightly}:waiters");
        assert_eq!(keys.wakeup, "app/jobs:nightly:{app/jobs:nightly}:wakeup");
        assert_eq!(keys.channel, "app/jobs:nightly:{app/jobs:nightly}:released");
    }
    /// Every helper key and the channel hash to the lock key's cluster slot, whatever the name
    /// and namespace hold (braces, colons, slashes, percent signs, non-ASCII), so each script
    /// touches one slot.
    #[test]
    fn helper_keys_share_the_lock_keys_cluster_slot() {
        use redis::cluster_routing::Slot;
        let cases = [
            ("", "plain"),
            ("app", "jobs:nightly"),
            ("a{b", "n}"),
            ("}x{", "{y}"),
            ("{}", "{}"),
            ("ns/{tag}", "a{b}c:{d}"),
            ("50%", "a:{x}:fence"),
            ("ä😀", "a\u{0}b"),
        ];
        for (namespace, name) in cases {
            let keys = LockKeys::of(&Namespace::new(namespace), &LockName::new(name).unwrap());
            let slot = Slot::for_key(&keys.lock);
            for helper in [&keys.fence, &keys.queue, &keys.waiters, &keys.wakeup, &keys.channel] {
                assert_eq!(Slot::for_key(helper), slot, "{namespace:?}/{name:?}: {helper} vs {}", keys.lock);
                assert!(helper.starts_with(&keys.lock) && helper != &keys.lock);
            }
        }
    }
}
