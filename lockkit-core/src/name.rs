//! Lock names, namespaces and their safe mapping into backend keys.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::{Error, Result};

/// The longest lock name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 1024;

/// Bytes that stay as they are in a key; every other byte is percent-encoded.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// A validated lock name: any non-empty UTF-8 string of at most [`MAX_NAME_LEN`] bytes.
///
/// Names are mapped into each backend's keyspace by [`LockName::escaped`], which keeps
/// `A–Z a–z 0–9 - _ .` and percent-encodes every other byte, so two different names never
/// map to the same key and no name can leave its namespace (`/`, `..`, NUL are all encoded).
/// A name made only of the kept characters is used verbatim, which is what interoperating
/// with other clients on the same key needs. Redis keys use the lighter
/// [`LockName::escaped_verbatim`] instead (see [`Namespace::verbatim_key`]).
///
/// ```
/// use lockkit_core::LockName;
/// assert_eq!(LockName::new("nightly-report").unwrap().escaped(), "nightly-report");
/// assert_eq!(LockName::new("a/../b").unwrap().escaped(), "a%2F..%2Fb");
/// assert!(LockName::new("").is_err());
/// ```
///
/// Cheap to clone: a guard, its loss signal and its request share one copy of the name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(std::sync::Arc<str>);

impl LockName {
    /// Validates a name.
    ///
    /// # Errors
    /// [`Error::InvalidName`] when the name is empty or longer than [`MAX_NAME_LEN`] bytes.
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::invalid_name(name, "a lock name cannot be empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Error::invalid_name(
                name,
                format!("a lock name can be at most {MAX_NAME_LEN} bytes of UTF-8; use a shorter name"),
            ));
        }
        Ok(LockName(name.into()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as one key segment: injective, and free of `/`, NUL and other special bytes.
    /// `.` and `..` become `%2E` and `%2E%2E`, since some backends give them a meaning.
    pub fn escaped(&self) -> String {
        escape_segment(&self.0)
    }

    /// The name as one key segment for keyspaces that take any bytes and are shared with other
    /// clients by plain name (Redis): percent-encodes only `%`, `/`, `{`, `}` and the control
    /// bytes (0x00–0x1F, 0x7F), and keeps every other character as it is — `:`, spaces, `.`,
    /// non-ASCII UTF-8 — so `jobs:nightly` stays `jobs:nightly`. Injective (`%` itself is
    /// encoded), and the result never contains `/`, `{` or `}`.
    ///
    /// ```
    /// use lockkit_core::LockName;
    /// assert_eq!(LockName::new("jobs:nightly").unwrap().escaped_verbatim(), "jobs:nightly");
    /// assert_eq!(LockName::new("a{b}/c").unwrap().escaped_verbatim(), "a%7Bb%7D%2Fc");
    /// ```
    pub fn escaped_verbatim(&self) -> String {
        escape_verbatim(&self.0)
    }

    /// The name as a file name stem (without extension): [`escaped`](Self::escaped) when that
    /// fits in 200 bytes, otherwise `~` and the SHA-256 of the name in hex (`~` never appears
    /// in an escaped name, so the two forms cannot collide).
    pub fn file_stem(&self) -> String {
        use sha2::{Digest, Sha256};
        let escaped = self.escaped();
        if escaped.len() <= 200 {
            return escaped;
        }
        let digest = Sha256::digest(self.0.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("~{hex}")
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

fn escape_segment(s: &str) -> String {
    match s {
        "." => "%2E".to_owned(),
        ".." => "%2E%2E".to_owned(),
        _ => utf8_percent_encode(s, ESCAPED).to_string(),
    }
}

/// Percent-encodes `%`, `/`, `{`, `}` and the control bytes; keeps every other character.
fn escape_verbatim(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '/' | '{' | '}') || c.is_ascii_control() {
            escaped.push_str(&format!("%{:02X}", c as u32));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// A namespace: `/`-separated segments that prefix every key of a backend handle, so two
/// applications (or two test runs) on one server never see each other's locks.
///
/// Each segment is escaped like a lock name; empty segments are dropped, so `"/a//b/"` and
/// `"a/b"` are the same namespace.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Namespace {
    /// Escaped with [`LockName::escaped`]'s style.
    segments: Vec<String>,
    /// Escaped with [`LockName::escaped_verbatim`]'s style.
    verbatim: Vec<String>,
}

impl Namespace {
    /// Parses a `/`-separated namespace.
    pub fn new(path: &str) -> Self {
        let raw: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        Namespace {
            segments: raw.iter().copied().map(escape_segment).collect(),
            verbatim: raw.iter().copied().map(escape_verbatim).collect(),
        }
    }

    /// Whether this is the empty (root) namespace.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The escaped segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The key of `name` in this namespace, segments joined with `/`: `ns1/ns2/<escaped name>`,
    /// or just the escaped name in the root namespace.
    pub fn key(&self, name: &LockName) -> String {
        join(&self.segments, &name.escaped())
    }

    /// The key of `name` for keyspaces shared with other clients by plain name (Redis):
    /// like [`key`](Self::key), but the segments and the name are escaped with
    /// [`LockName::escaped_verbatim`]'s style, so `jobs:nightly` in the root namespace is the
    /// key `jobs:nightly`, and `app/jobs:nightly` in namespace `app`.
    ///
    /// Injective over (namespace, name) pairs: no piece contains `/` (a name's `/` is
    /// encoded), so the pieces are read back by splitting at `/`, and each piece's encoding
    /// is injective. The key never contains `{` or `}`, so a Redis Cluster slot is the hash of
    /// the whole key, and a helper key `KEY:{KEY}:suffix` (tagged with the whole key) can equal
    /// no lock key.
    ///
    /// ```
    /// use lockkit_core::{LockName, Namespace};
    /// let name = LockName::new("jobs:nightly").unwrap();
    /// assert_eq!(Namespace::new("").verbatim_key(&name), "jobs:nightly");
    /// assert_eq!(Namespace::new("prod eu").verbatim_key(&name), "prod eu/jobs:nightly");
    /// ```
    pub fn verbatim_key(&self, name: &LockName) -> String {
        join(&self.verbatim, &name.escaped_verbatim())
    }
}

/// `segments` and `last` joined with `/`.
fn join(segments: &[String], last: &str) -> String {
    let mut key = String::new();
    for segment in segments {
        key.push_str(segment);
        key.push('/');
    }
    key.push_str(last);
    key
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("/"))
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({:?})", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_injectively_to_keys() {
        let names = ["a", "a/b", "a%2Fb", "a%b", ".", "..", "%2E", "a\0b", "a b", "ä", "a\u{301}", "~x", "A", "a:b"];
        let keys: std::collections::HashSet<String> =
            names.iter().map(|n| LockName::new(n).unwrap().escaped()).collect();
        assert_eq!(keys.len(), names.len(), "{keys:?}");
        for key in &keys {
            assert!(!key.contains('/') && !key.contains('\0') && key != "." && key != "..", "{key}");
        }
    }

    #[test]
    fn plain_names_are_kept_verbatim() {
        assert_eq!(LockName::new("jobs.nightly_report-1").unwrap().escaped(), "jobs.nightly_report-1");
    }

    #[test]
    fn empty_and_oversized_names_are_rejected() {
        assert!(matches!(LockName::new(""), Err(Error::InvalidName { .. })));
        assert!(LockName::new(&"x".repeat(MAX_NAME_LEN)).is_ok());
        let err = LockName::new(&"x".repeat(MAX_NAME_LEN + 1)).unwrap_err();
        assert!(err.to_string().contains("at most 1024 bytes"), "{err}");
    }

    #[test]
    fn long_names_get_a_hashed_file_stem() {
        let long = LockName::new(&"ü".repeat(500)).unwrap();
        let stem = long.file_stem();
        assert!(stem.starts_with('~') && stem.len() == 65, "{stem}");
        let other = LockName::new(&format!("{}x", "ü".repeat(499))).unwrap();
        assert_ne!(stem, other.file_stem());
        assert_eq!(LockName::new("short").unwrap().file_stem(), "short");
    }

    #[test]
    fn verbatim_keys_keep_what_redis_users_write() {
        let key = |ns: &str, name: &str| Namespace::new(ns).verbatim_key(&LockName::new(name).unwrap());
        assert_eq!(key("", "jobs:nightly"), "jobs:nightly");
        assert_eq!(key("", "a b.c:ä-😀"), "a b.c:ä-😀");
        assert_eq!(key("", "a{b}"), "a%7Bb%7D");
        assert_eq!(key("", "{tag}"), "%7Btag%7D");
        assert_eq!(key("", "50%"), "50%25");
        assert_eq!(key("", "a/b"), "a%2Fb");
        assert_eq!(key("", "a\0b\r\n\u{7f}"), "a%00b%0D%0A%7F");
        assert_eq!(key("", ".."), "..");
        assert_eq!(key("app/{x}", "n"), "app/%7Bx%7D/n");
    }

    #[test]
    fn verbatim_keys_and_their_helper_keys_are_injective() {
        let namespaces = ["", "a", "a/b", "a%2Fb", "a{", "{a}", "a:b", "b"];
        let names = [
            "a", "b", "a/b", "b/c", "a%2Fb", "a%b", "%", "%25", "{", "}", "%7B", "{a}", "a}", "a:b", "a b", "ä", ".",
            "..", "a\0", "a%00", ":fence", "a}:fence", "x\u{7f}",
        ];
        let mut keys = std::collections::HashSet::new();
        let mut all = std::collections::HashSet::new();
        for ns in namespaces {
            for name in names {
                let key = Namespace::new(ns).verbatim_key(&LockName::new(name).unwrap());
                assert!(!key.contains(['{', '}']) && !key.bytes().any(|b| b.is_ascii_control()), "{key:?}");
                assert!(keys.insert(key.clone()), "two pairs give the key {key:?}");
                for suffix in ["fence", "queue", "waiters", "wakeup", "released"] {
                    // Helper keys begin with `{`, which no lock key has.
                    assert!(all.insert(format!("{{{key}}}:{suffix}")), "{key:?} {suffix}");
                }
                assert!(all.insert(key.clone()), "a helper key equals the lock key {key:?}");
            }
        }
        assert_eq!(keys.len(), namespaces.len() * names.len());
    }

    #[test]
    fn namespaces_prefix_keys_and_cannot_be_escaped() {
        let name = LockName::new("x").unwrap();
        assert_eq!(Namespace::new("/app//prod/").key(&name), "app/prod/x");
        assert_eq!(Namespace::new("").key(&name), "x");
        assert_eq!(Namespace::new("../etc").key(&name), "%2E%2E/etc/x");
        // A name with a slash stays one segment, so it cannot reach into another namespace.
        let ns_a = Namespace::new("a").key(&LockName::new("b/c").unwrap());
        let ns_ab = Namespace::new("a/b").key(&LockName::new("c").unwrap());
        assert_ne!(ns_a, ns_ab);
    }
}
