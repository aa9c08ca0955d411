//! Fencing tokens that never go backwards, even when a server loses data.
//!
//! A grant's token is `max(counter + 1, now_µs)`, `now_µs` being the server's clock (`TIME`)
//! in microseconds, and it is written back to the counter (`SET`, not `INCR`) in the same
//! script. After a `FLUSHALL`, a restart without persistence, an evicted counter or a failover
//! to a replica that missed the last write, the counter starts again from the clock, which
//! has moved past every token minted before — as long as the clocks agree: the first token
//! after the loss is above the last one before it when the server minting it has a clock
//! behind the one that minted the last token by less than the time between the two grants.
//! On one server that holds unless its clock is set back; on a failover, the clock
//! skew between master and replica is the bound (keep them on NTP: a promoted replica whose
//! clock is 2 s behind can repeat or go below tokens minted in the 2 s before the failover).
//! The counter runs ahead of the clock only when grants come faster than one a microsecond,
//! or when it was raised to a token minted by a server whose clock is ahead (Redlock, a
//! failover). A counter more than a day ahead of its server's clock is refused (`BADFENCE`,
//! nothing granted): it comes from a mistaken `SET`, a restored key or a clock set back, and
//! minting from it would hand out tokens near the 2^53 limit — with Redlock, raised onto every
//! server, so one bad server would stop the whole majority. Refused, such a server drops out
//! of the vote like one that is down. Redlock also compares each acquire's server clocks: a
//! server whose clock is more than 6 h from the middle one is left out of the vote too, so a
//! server with a clock far ahead cannot raise the others' counters out of their range.
//!
//! Lua numbers are doubles: integers are exact up to 2^53, so the counter is checked to be a
//! whole number below 2^53 − 1 before anything is written (the next token is then at most
//! 2^53 − 1), and tokens travel as strings. Anything else in the counter — bytes that are not
//! UTF-8 included — is shown in the error as printable ASCII only, so the reply always parses.

use lockkit_core::Error;

/// Lua, run before a script writes anything: reads the counter at `fence_key` (a local the
/// script defines) into `fence` (a string, or false when absent), and answers a `BADFENCE`
/// error when it holds anything but a whole number below 2^53 − 1 or is more than a day ahead
/// of the server's clock (`now_us`, and `server_clock` as a string, which it sets). Defines `mint()`, which
/// writes the next token back to the counter and returns it as a string.
pub(crate) const FENCE: &str = r#"
local fence = redis.call('GET', fence_key)
if fence and not (string.match(fence, '^%d+$') and #fence <= 16 and tonumber(fence) < 9007199254740991) then
  local shown = string.gsub(string.sub(fence, 1, 40), '[^%w%p ]', '?')
  return redis.error_reply('BADFENCE the fencing counter ' .. fence_key .. ' holds \"' .. shown ..
    '\", not a whole number from 0 to 2^53 - 2, so no token (at most 2^53 - 1) can be minted and nothing was ' ..
    'granted; delete it (redis-cli DEL \"' .. fence_key .. '\"): the next grant then takes its token from the ' ..
    'server clock, above earlier tokens unless this counter had run ahead of the clock')
end
local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local server_clock = string.format('%d', now_us)
if fence and tonumber(fence) > now_us + 86400000000 then
  return redis.error_reply('BADFENCE the fencing counter ' .. fence_key .. ' holds ' .. fence ..
    ', more than a day ahead of this server\'s clock (' .. string.format('%d', now_us) .. ' µs): a mistaken ' ..
    'SET, a restored key, or a clock set back. Nothing was granted. If the clock is right and nothing relies ' ..
    'on tokens that high, delete it (redis-cli DEL \"' .. fence_key .. '\"); otherwise wait for the clock to pass it')
end
local function mint()
  local token = string.format('%d', math.max(tonumber(fence or '0') + 1, now_us))
  redis.call('SET', fence_key, token)
  return token
end
"#;

/// What an acquire script answered: `{1, token, 0, clock}` granted, `{0, "0", pttl, clock}`
/// not granted; `clock` is the server's clock in µs.
pub(crate) type AcquireReply = (i64, String, i64, String);

/// An acquire script's answer, read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Granted with this token.
    Granted(u64),
    /// Not granted; the current grant expires in this many ms (-1: never, 0 or -2: free now).
    Busy(i64),
}

/// Reads an acquire script's answer from the server at `address`, with the server's clock (µs).
pub(crate) fn acquired((granted, token, pttl, clock): AcquireReply, address: &str) -> Result<(Acquired, u64), Error> {
    match (granted, token.parse::<u64>(), clock.parse::<u64>()) {
        (0, _, Ok(clock)) => Ok((Acquired::Busy(pttl), clock)),
        (1, Ok(token), Ok(clock)) if token > 0 => Ok((Acquired::Granted(token), clock)),
        _ => Err(Error::backend(
            crate::BACKEND,
            format!(
                "redis at {address} answered the acquire script with ({granted}, {token:?}, {pttl}, {clock:?}), not \
                 a grant with a positive token nor a refusal; is another program loading scripts under lockkit's SHA1s?"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_and_refusals_are_read_apart_from_the_token() {
        let clock = "1764711000123457";
        let read = |granted, token: &str, pttl| {
            acquired((granted, token.to_owned(), pttl, clock.to_owned()), "127.0.0.1:6379").map(|(a, _)| a)
        };
        assert_eq!(read(1, "1764711000123456", 0).unwrap(), Acquired::Granted(1_764_711_000_123_456));
        assert_eq!(read(1, "18446744073709551615", 0).unwrap(), Acquired::Granted(u64::MAX));
        assert_eq!(read(0, "0", 1500).unwrap(), Acquired::Busy(1500));
        assert_eq!(read(0, "0", -1).unwrap(), Acquired::Busy(-1));
        for (granted, token) in [(1, "0"), (1, "-3"), (1, "1.7e15"), (2, "5")] {
            let err = read(granted, token, 0).unwrap_err();
            assert!(err.to_string().contains("127.0.0.1:6379"), "{err}");
        }
        let reply = (1, "5".to_owned(), 0, "soon".to_owned());
        assert!(acquired(reply, "127.0.0.1:6379").is_err(), "a clock that is not a number");
        let reply = (0, "0".to_owned(), 10, clock.to_owned());
        assert_eq!(acquired(reply, "127.0.0.1:6379").unwrap(), (Acquired::Busy(10), 1_764_711_000_123_457));
    }
}
