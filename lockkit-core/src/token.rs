//! Fencing tokens.

use std::fmt;

/// A number the backend mints at each grant of a lock: every grant of a name gets a token
/// strictly greater than the tokens of all earlier grants of that name, whichever process or
/// client took them.
///
/// A lock alone cannot stop a holder that was paused (GC, swap, a stopped VM) past its lease
/// from writing after someone else took over. Fencing can: send the token with every write to
/// the protected resource; the resource remembers the highest token it has seen and rejects
/// any write that carries a lower one.
///
/// ```
/// use lockkit_core::FencingToken;
///
/// struct Storage { highest: Option<FencingToken>, value: String }
///
/// impl Storage {
///     fn write(&mut self, token: FencingToken, value: &str) -> Result<(), String> {
///         if self.highest.is_some_and(|h| token < h) {
///             return Err(format!("stale holder: token {token} < {}", self.highest.unwrap()));
///         }
///         self.highest = Some(token);
///         self.value = value.to_owned();
///         Ok(())
///     }
/// }
///
/// let mut s = Storage { highest: None, value: String::new() };
/// s.write(FencingToken::new(7), "new holder").unwrap();
/// assert!(s.write(FencingToken::new(6), "paused old holder").is_err());
/// ```
///
/// Each backend says where its tokens come from: a server-side counter (memory, file, Redis),
/// the key's create revision (etcd), the node's czxid (ZooKeeper), the key's modify index
/// (Consul). Tokens of different lock names are not comparable in a meaningful way.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a value minted by a backend.
    pub const fn new(value: u64) -> Self {
        FencingToken(value)
    }

    /// The number inside.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FencingToken({})", self.0)
    }
}

impl From<FencingToken> for u64 {
    fn from(token: FencingToken) -> u64 {
        token.0
    }
}
