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
/// with other clients on the same key needs.
///
/// ```
/// use lockkit_core::LockName;
/// assert_eq!(LockName::new("nightly-report").unwrap().escaped(), "nightly-report");
/// assert_eq!(LockName::new("a/../b").unwrap().escaped(), "a%2F..%2Fb");
/// assert!(LockName::new("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(String);

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
        Ok(LockName(name.to_owned()))
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

/// A namespace: `/`-separated segments that prefix every key of a backend handle, so two
/// applications (or two test runs) on one server never see each other's locks.
///
/// Each segment is escaped like a lock name; empty segments are dropped, so `"/a//b/"` and
/// `"a/b"` are the same namespace.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Namespace(Vec<String>);

impl Namespace {
    /// Parses a `/`-separated namespace.
    pub fn new(path: &str) -> Self {
        Namespace(path.split('/').filter(|s| !s.is_empty()).map(escape_segment).collect())
    }

    /// Whether this is the empty (root) namespace.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The escaped segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The key of `name` in this namespace, segments joined with `/`: `ns1/ns2/<escaped name>`,
    /// or just the escaped name in the root namespace.
    pub fn key(&self, name: &LockName) -> String {
        let mut key = String::new();
        for segment in &self.0 {
            key.push_str(segment);
            key.push('/');
        }
        key.push_str(&name.escaped());
        key
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
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
