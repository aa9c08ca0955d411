//! Lock URLs: `scheme://[user[:password]@]host1[:port][,host2[:port]…][/path][?option=value&…]`.
//!
//! One parser handles the common part for every backend; options that only one driver knows are
//! left for that driver, and [`LockUrl::check_options`] turns any option nobody knows into an
//! error that lists the known ones.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::name::Namespace;
use crate::{Error, Result};

/// The URL schemes lockkit knows, whether or not their driver is compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `memory://[store]` — in-process.
    Memory,
    /// `file:///dir` — advisory file locks on one host.
    File,
    /// `etcd://` and `etcds://` (TLS).
    Etcd,
    /// `zk://` or `zookeeper://`.
    ZooKeeper,
    /// `consul://` and `consuls://` (HTTPS).
    Consul,
    /// `redis://` and `rediss://` (TLS).
    Redis,
    /// `redlock://` — a quorum of independent Redis masters.
    Redlock,
    /// `redis-cluster://` and `rediss-cluster://` (TLS) — a Redis Cluster, given by seed nodes
    /// (`redis+cluster://` is accepted too).
    RedisCluster,
}

/// Every spelling lockkit accepts, with the scheme it means and whether it asks for TLS.
const SCHEMES: &[(&str, Scheme, bool)] = &[
    ("memory", Scheme::Memory, false),
    ("file", Scheme::File, false),
    ("etcd", Scheme::Etcd, false),
    ("etcds", Scheme::Etcd, true),
    ("zk", Scheme::ZooKeeper, false),
    ("zookeeper", Scheme::ZooKeeper, false),
    ("consul", Scheme::Consul, false),
    ("consuls", Scheme::Consul, true),
    ("redis", Scheme::Redis, false),
    ("rediss", Scheme::Redis, true),
    ("redlock", Scheme::Redlock, false),
    ("redlocks", Scheme::Redlock, true),
    ("redis-cluster", Scheme::RedisCluster, false),
    ("rediss-cluster", Scheme::RedisCluster, true),
    ("redis+cluster", Scheme::RedisCluster, false),
    ("rediss+cluster", Scheme::RedisCluster, true),
];

impl Scheme {
    /// The cargo feature of the `lockkit` crate that compiles this scheme's driver in
    /// (`None` for the built-in `memory` and `file`).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Scheme::Memory | Scheme::File => None,
            Scheme::Etcd => Some("etcd"),
            Scheme::ZooKeeper => Some("zookeeper"),
            Scheme::Consul => Some("consul"),
            Scheme::Redis | Scheme::Redlock | Scheme::RedisCluster => Some("redis"),
        }
    }

    /// All accepted spellings, for messages.
    pub fn known() -> String {
        SCHEMES.iter().map(|(s, ..)| format!("{s}://")).collect::<Vec<_>>().join(", ")
    }
}

/// Options every backend understands.
pub const COMMON_OPTIONS: &[&str] = &["ttl", "refresh", "timeout", "namespace"];

/// A secret (password, token): shown as `***` in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for sending to the server. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One `host[:port]` of a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port, when given.
    pub port: Option<u16>,
}

impl Host {
    /// `host:port`, with `default_port` when none was given; IPv6 in brackets.
    pub fn address(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        if self.host.contains(':') { format!("[{}]:{port}", self.host) } else { format!("{}:{port}", self.host) }
    }
}

/// TLS material named by a URL's `ca`, `cert` and `key` options, read from disk (PEM).
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// The CA to trust instead of the public roots (`ca`).
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key, for mutual TLS (`cert` and `key`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles").field("ca", &self.ca.is_some()).field("identity", &self.identity.is_some()).finish()
    }
}

/// The TLS options every TLS-capable driver accepts (pass them to [`LockUrl::check_options`]).
pub const TLS_OPTIONS: &[&str] = &["ca", "cert", "key"];

/// Option names whose values are secrets: shown as `***`, and left out of
/// [`without_credentials`](LockUrl::without_credentials).
const SECRET_OPTIONS: &[&str] = &["token", "password"];

/// The options, of every driver, whose values are shown. Any other option's value is shown as
/// `***`: an option lockkit does not know may be a misspelled secret (`tokn=…`).
const SHOWN_OPTIONS: &[&str] = &[
    "ttl",
    "refresh",
    "timeout",
    "namespace",
    "fair",
    "ca",
    "cert",
    "key",
    "session_timeout",
    "recipe",
    "lock_delay",
    "blocking_wait",
    "dc",
    "mode",
];

/// A parsed lock URL.
///
/// ```
/// use lockkit_core::{LockUrl, Scheme};
/// let url = LockUrl::parse("etcd://app:s3cret@10.0.0.1:2379,10.0.0.2/jobs?ttl=10s").unwrap();
/// assert_eq!(url.scheme(), Scheme::Etcd);
/// assert_eq!(url.hosts().len(), 2);
/// assert_eq!(url.password().unwrap().expose(), "s3cret");
/// assert_eq!(url.to_string(), "etcd://app:***@10.0.0.1:2379,10.0.0.2/jobs?ttl=10s");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct LockUrl {
    scheme_text: String,
    scheme: Scheme,
    tls: bool,
    username: Option<String>,
    password: Option<Secret>,
    hosts: Vec<Host>,
    path: String,
    options: BTreeMap<String, String>,
}

impl LockUrl {
    /// Parses a URL. Unknown schemes are an error here; unknown options are reported by
    /// [`check_options`](Self::check_options), which each driver calls with its own options.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let (scheme_text, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid(text, "expected `scheme://…`, e.g. `etcd://127.0.0.1:2379` or `memory://`"))?;
        let scheme_lower = scheme_text.to_ascii_lowercase();
        let &(_, scheme, tls) = SCHEMES.iter().find(|(s, ..)| *s == scheme_lower).ok_or_else(|| {
            // What stands before `://` is shown only when it looks like a scheme, not like a
            // password typed in its place.
            let plain = scheme_text.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            let scheme = if plain { scheme_text.to_owned() } else { "***".to_owned() };
            Error::UnknownScheme { scheme, known: Scheme::known() }
        })?;
        // Where a user and password belong, only the authority (up to the first `/` or `?`)
        // is read. An `@` after it means a password with an unencoded `/`, `?` or `@`: read
        // the usual way, part of the password would become the host and the rest the path,
        // shown in every message. Refused, showing nothing before the `@`.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if scheme == Scheme::File {
            // A local directory: no host, user or password to misread (`@` is fine in a path).
            if !matches!(rest[..authority_end].to_ascii_lowercase().as_str(), "" | "localhost") {
                return Err(invalid(text, "a file URL names a local directory: `file:///absolute/path`"));
            }
        } else if rest[authority_end..].contains('@') {
            return Err(invalid(
                text,
                "there is an `@` after the host part: percent-encode `/`, `?`, `#` and `@` in a user or password \
                 (as %2F, %3F, %23 and %40), and an `@` in the path or an option as %40",
            ));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, host_list) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut url = LockUrl {
            scheme_text: scheme_lower,
            scheme,
            tls,
            username: None,
            password: None,
            hosts: Vec::new(),
            path: decode(text, path)?,
            options: BTreeMap::new(),
        };
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                url.username = Some(decode(text, user)?);
            }
            if let Some(p) = password {
                url.password = Some(Secret(decode(text, p)?));
            }
        }
        if !host_list.is_empty() {
            for host in host_list.split(',') {
                url.hosts.push(parse_host(&url, host)?);
            }
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (decode(text, key)?, decode(text, value)?);
            if url.options.insert(key.clone(), value).is_some() {
                return Err(url.invalid(format!("option `{key}` is given twice; give it once")));
            }
        }
        Ok(url)
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The scheme as written (lowercased), e.g. `rediss`.
    pub fn scheme_str(&self) -> &str {
        &self.scheme_text
    }

    /// Whether the scheme asks for TLS (`etcds`, `rediss`, `consuls`, `redlocks`,
    /// `rediss-cluster`).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The user name, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password, if any.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The hosts, in the order given (may be empty, e.g. `memory://`).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The percent-decoded path, with its leading `/` (empty when there is none).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A raw option value.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }

    /// An option that holds a duration (`500ms`, `10s`, `2m`, `1h`).
    pub fn duration_option(&self, key: &str) -> Result<Option<Duration>> {
        self.option(key)
            .map(|v| parse_duration(v).map_err(|reason| self.invalid(format!("option `{key}`: {reason}"))))
            .transpose()
    }

    /// The namespace: the `namespace` option if given, else the path.
    pub fn namespace(&self) -> Namespace {
        Namespace::new(self.option("namespace").unwrap_or(&self.path))
    }

    /// Fails when an option is neither common ([`COMMON_OPTIONS`]) nor in `driver_options`,
    /// listing the options that are known.
    pub fn check_options(&self, driver_options: &[&str]) -> Result<()> {
        for key in self.options.keys() {
            if !COMMON_OPTIONS.contains(&key.as_str()) && !driver_options.contains(&key.as_str()) {
                let known: Vec<&str> = COMMON_OPTIONS.iter().chain(driver_options).copied().collect();
                // (Its value is not shown: `Display` shows only the values of known options.)
                return Err(self.invalid(format!(
                    "unknown option `{}` for {}://; known options: {}",
                    shown_key(key),
                    self.scheme_text,
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Reads the files of the `ca`, `cert` and `key` options now, so that a wrong path is an
    /// error at connect. They are for TLS schemes only; `cert` and `key` go together.
    pub fn tls_files(&self) -> Result<TlsFiles> {
        let read = |option: &str| -> Result<Option<Vec<u8>>> {
            self.option(option)
                .map(|path| {
                    std::fs::read(path)
                        .map_err(|e| self.invalid(format!("cannot read the `{option}` file {path}: {e}")))
                })
                .transpose()
        };
        let (ca, cert, key) = (read("ca")?, read("cert")?, read("key")?);
        if !self.tls && (ca.is_some() || cert.is_some() || key.is_some()) {
            return Err(self.invalid(format!("`ca`, `cert` and `key` are for TLS: use {}://", self.tls_spelling())));
        }
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(self.invalid("give both `cert` and `key` for a client certificate")),
        };
        Ok(TlsFiles { ca, identity })
    }

    /// The TLS spelling of this URL's scheme (`etcd` → `etcds`, `redis-cluster` →
    /// `rediss-cluster`): the TLS spelling of the same scheme that is this one with one more `s`.
    fn tls_spelling(&self) -> &str {
        let text = self.scheme_text.as_str();
        SCHEMES
            .iter()
            .find(|(s, scheme, tls)| {
                *tls && *scheme == self.scheme
                    && s.len() == text.len() + 1
                    && (0..s.len()).any(|i| s.is_char_boundary(i) && format!("{}{}", &s[..i], &s[i + 1..]) == text)
            })
            .map_or(text, |(s, ..)| s)
    }

    /// An [`Error::InvalidUrl`] for this URL (redacted).
    pub fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::InvalidUrl { url: self.to_string(), reason: reason.into() }
    }

    /// The hosts, or an error asking for at least one `what` (e.g. "endpoint") like `example`.
    pub fn required_hosts(&self, what: &str, example: &str) -> Result<&[Host]> {
        if self.hosts.is_empty() {
            return Err(self.invalid(format!("name at least one {what}: {example}")));
        }
        Ok(&self.hosts)
    }

    /// The user and password, when the URL gives both; an error when it gives only one
    /// (`example` shows the form).
    pub fn user_and_password(&self, example: &str) -> Result<Option<(String, Secret)>> {
        match (self.username(), self.password()) {
            (Some(user), Some(password)) => Ok(Some((user.to_owned(), password.clone()))),
            (None, None) => Ok(None),
            _ => Err(self.invalid(format!("give both user and password: {example}"))),
        }
    }

    /// The hosts as `host:port` joined by commas, for messages.
    pub fn endpoints(&self, default_port: u16) -> String {
        self.hosts.iter().map(|h| h.address(default_port)).collect::<Vec<_>>().join(",")
    }

    /// The URL with user, password and secret options removed, for handing to other
    /// programs (e.g. `LOCKKIT_URL` in a child's environment).
    pub fn without_credentials(&self) -> String {
        let mut url = self.clone();
        url.username = None;
        url.password = None;
        url.options.retain(|k, _| !SECRET_OPTIONS.contains(&k.as_str()));
        url.to_string()
    }
}

/// Shows the URL with the password, secret options and the values of options lockkit does not
/// know as `***`, every part encoded so that it parses back to the same URL.
impl fmt::Display for LockUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme_text)?;
        if let Some(user) = &self.username {
            f.write_str(&encode(user, ":@/?#"))?;
        }
        if self.password.is_some() {
            f.write_str(":***")?;
        }
        if self.username.is_some() || self.password.is_some() {
            f.write_str("@")?;
        }
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| match h.port {
                Some(p) => Host { host: h.host.clone(), port: None }.address(p),
                None if h.host.contains(':') => format!("[{}]", h.host),
                None => h.host.clone(),
            })
            .collect();
        // Parts are encoded where needed, so that what is shown parses back to the same URL
        // (`LOCKKIT_URL` for a command is this, without credentials).
        write!(f, "{}{}", hosts.join(","), encode(&self.path, "?#@"))?;
        for (i, (k, v)) in self.options.iter().enumerate() {
            let v = if SHOWN_OPTIONS.contains(&k.as_str()) { encode(v, "&#?@") } else { "***".into() };
            write!(f, "{}{}={v}", if i == 0 { '?' } else { '&' }, encode(&shown_key(k), "&=#?@"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for LockUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockUrl({self})")
    }
}

fn invalid(url: &str, reason: &str) -> Error {
    Error::InvalidUrl { url: redact_unparsed(url), reason: reason.to_owned() }
}

/// An option's name as shown: an unknown one only when it looks like a name (letters, digits,
/// `_`, `-`, up to 32) and does not begin like a secret option, not like a secret typed with
/// the wrong separator (`token:s3cret`, `tokens3cret`).
fn shown_key(key: &str) -> std::borrow::Cow<'_, str> {
    let plain = key.len() <= 32
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !SECRET_OPTIONS.iter().any(|secret| key.to_ascii_lowercase().starts_with(secret));
    if plain || SHOWN_OPTIONS.contains(&key) || SECRET_OPTIONS.contains(&key) { key.into() } else { "***".into() }
}

/// A URL that did not parse, safe to show: before it is parsed, a password cannot be told
/// apart, so everything up to its last `@` (where a user and password end) is `***`, and so is
/// its query (options such as `token=`).
fn redact_unparsed(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) => {
            (format!("{scheme}://"), rest)
        }
        _ => (String::new(), url),
    };
    let rest = match rest.rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_owned(),
    };
    match rest.split_once('?') {
        Some((before, _)) => format!("{scheme}{before}?***"),
        None => format!("{scheme}{rest}"),
    }
}

/// `text` percent-encoded where it would be read back as something else: `%`, control
/// characters, the characters in `reserved`, and whitespace at either end (a URL is trimmed).
fn encode<'a>(text: &'a str, reserved: &str) -> std::borrow::Cow<'a, str> {
    let special = |c: char| c == '%' || c.is_control() || reserved.contains(c);
    let trimmed = text.trim();
    if !text.contains(special) && trimmed.len() == text.len() {
        return text.into();
    }
    let inner = trimmed.as_ptr() as usize - text.as_ptr() as usize..;
    let inner = inner.start..inner.start + trimmed.len();
    let mut out = String::with_capacity(text.len() + 8);
    for (i, c) in text.char_indices() {
        if special(c) || (c.is_whitespace() && !inner.contains(&i)) {
            let mut bytes = [0; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out.into()
}

fn decode(url: &str, part: &str) -> Result<String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid(url, "a percent-encoded part is not valid UTF-8"))
}

fn parse_host(url: &LockUrl, text: &str) -> Result<Host> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) =
            v6.split_once(']').ok_or_else(|| url.invalid(format!("host `{text}` has `[` without `]`")))?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(url.invalid(format!("empty host in `{text}`; write hosts as host:port separated by commas")));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| url.invalid(format!("port `{p}` of host `{host}` is not a number from 0 to 65535")))
        })
        .transpose()?;
    Ok(Host { host: host.to_owned(), port })
}

/// Parses a duration written as a number and a unit: `250ms`, `10s`, `1.5s`, `2m`, `1h`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(lockkit_core::parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(lockkit_core::parse_duration("10").is_err());
/// ```
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{text}` is not a duration; write a number and a unit: 500ms, 10s, 2m, 1h")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write a number and a unit: 500ms, 10s, 2m, 1h"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("duration `{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_of_every_shape() {
        struct Case {
            url: &'static str,
            scheme: Scheme,
            hosts: &'static [(&'static str, Option<u16>)],
            path: &'static str,
            user: Option<&'static str>,
            shown: &'static str,
        }
        let cases = [
            Case { url: "memory://", scheme: Scheme::Memory, hosts: &[], path: "", user: None, shown: "memory://" },
            Case {
                url: "memory://tests",
                scheme: Scheme::Memory,
                hosts: &[("tests", None)],
                path: "",
                user: None,
                shown: "memory://tests",
            },
            Case {
                url: "file:///var/lock/app",
                scheme: Scheme::File,
                hosts: &[],
                path: "/var/lock/app",
                user: None,
                shown: "file:///var/lock/app",
            },
            Case {
                url: "file:///tmp/a%20b",
                scheme: Scheme::File,
                hosts: &[],
                path: "/tmp/a b",
                user: None,
                shown: "file:///tmp/a b",
            },
            Case {
                url: "etcd://u:p%40ss@h1:2379,h2:2380/ns?ttl=5s",
                scheme: Scheme::Etcd,
                hosts: &[("h1", Some(2379)), ("h2", Some(2380))],
                path: "/ns",
                user: Some("u"),
                shown: "etcd://u:***@h1:2379,h2:2380/ns?ttl=5s",
            },
            Case {
                url: "ZK://[::1]:2181,zk2/chroot",
                scheme: Scheme::ZooKeeper,
                hosts: &[("::1", Some(2181)), ("zk2", None)],
                path: "/chroot",
                user: None,
                shown: "zk://[::1]:2181,zk2/chroot",
            },
            Case {
                url: "zookeeper://zk",
                scheme: Scheme::ZooKeeper,
                hosts: &[("zk", None)],
                path: "",
                user: None,
                shown: "zookeeper://zk",
            },
            Case {
                url: "consul://c:8500?token=abc",
                scheme: Scheme::Consul,
                hosts: &[("c", Some(8500))],
                path: "",
                user: None,
                shown: "consul://c:8500?token=***",
            },
            Case {
                url: "rediss://:pw@r:6380/2",
                scheme: Scheme::Redis,
                hosts: &[("r", Some(6380))],
                path: "/2",
                user: None,
                shown: "rediss://:***@r:6380/2",
            },
            Case {
                url: "redlock://a:1,b:2,c:3",
                scheme: Scheme::Redlock,
                hosts: &[("a", Some(1)), ("b", Some(2)), ("c", Some(3))],
                path: "",
                user: None,
                shown: "redlock://a:1,b:2,c:3",
            },
            Case {
                url: "rediss-cluster://u:pw@a:7000,b:7001",
                scheme: Scheme::RedisCluster,
                hosts: &[("a", Some(7000)), ("b", Some(7001))],
                path: "",
                user: Some("u"),
                shown: "rediss-cluster://u:***@a:7000,b:7001",
            },
            Case {
                url: "redis+cluster://a:7000",
                scheme: Scheme::RedisCluster,
                hosts: &[("a", Some(7000))],
                path: "",
                user: None,
                shown: "redis+cluster://a:7000",
            },
        ];
        for case in cases {
            let url = LockUrl::parse(case.url).unwrap_or_else(|e| panic!("{}: {e}", case.url));
            assert_eq!(url.scheme(), case.scheme, "{}", case.url);
            let hosts: Vec<(&str, Option<u16>)> = url.hosts().iter().map(|h| (h.host.as_str(), h.port)).collect();
            assert_eq!(hosts, case.hosts, "{}", case.url);
            assert_eq!(url.path(), case.path, "{}", case.url);
            assert_eq!(url.username(), case.user, "{}", case.url);
            assert_eq!(url.to_string(), case.shown, "{}", case.url);
            assert_eq!(format!("{url:?}"), format!("LockUrl({})", case.shown));
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("localhost:2379", "expected `scheme://"),
            ("mysql://db", "use one of: memory://"),
            ("etcd://h:99999", "not a number from 0 to 65535"),
            ("etcd://h1,,h2", "empty host"),
            ("etcd://[::1:2379", "without `]`"),
            ("etcd://h?ttl=1s&ttl=2s", "given twice"),
            ("etcd://h/%FF", "not valid UTF-8"),
        ];
        for (url, expected) in cases {
            let err = LockUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn passwords_never_show_in_errors() {
        for url in ["etcd://u:hunter2@h:notaport", "etcd://u:hunter2@h?ttl=x", "etcd://u:hunter2@"] {
            let err = LockUrl::parse(url).and_then(|u| u.duration_option("ttl").map(|_| ()));
            if let Err(e) = err {
                assert!(!e.to_string().contains("hunter2"), "{e}");
                assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
            }
        }
        let url = LockUrl::parse("redis://u:hunter2@h?token=t0ken").unwrap();
        assert!(!format!("{url} {url:?} {:?}", url.password()).contains("hunter2"));
        assert!(!url.to_string().contains("t0ken"));
        assert_eq!(url.without_credentials(), "redis://h");
    }

    #[test]
    fn unknown_options_list_the_known_ones() {
        let url = LockUrl::parse("zk://h?session_timout=5s").unwrap();
        let err = url.check_options(&["session_timeout", "recipe"]).unwrap_err().to_string();
        assert!(err.contains("unknown option `session_timout`"), "{err}");
        assert!(err.contains("ttl, refresh, timeout, namespace, session_timeout, recipe"), "{err}");
        assert!(LockUrl::parse("zk://h?session_timeout=5s").unwrap().check_options(&["session_timeout"]).is_ok());
    }

    #[test]
    fn namespace_comes_from_option_or_path() {
        assert_eq!(LockUrl::parse("etcd://h/a/b").unwrap().namespace().to_string(), "a/b");
        assert_eq!(LockUrl::parse("etcd://h/a?namespace=c").unwrap().namespace().to_string(), "c");
    }

    /// Random mixtures of URL punctuation, digits, letters and multi-byte characters never make
    /// the parsers panic, and every failure is a clear error.
    #[test]
    fn no_input_makes_the_parsers_panic() {
        let alphabet: Vec<char> = ":/@?&=,[]%.#-_ 0123456789aZé🔒\0msh".chars().collect();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            let len = (seed % 24) as usize;
            let text: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            for candidate in [text.clone(), format!("etcd://{text}"), format!("redis://u:p@{text}?ttl={text}")] {
                if let Ok(url) = LockUrl::parse(&candidate) {
                    let _ = (
                        url.to_string(),
                        url.duration_option("ttl"),
                        url.check_options(&[]),
                        url.without_credentials(),
                    );
                } else if let Err(e) = LockUrl::parse(&candidate) {
                    assert!(!e.to_string().is_empty());
                }
            }
            let _ = parse_duration(&text);
        }
    }

    #[test]
    fn tls_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "PEM").unwrap();
        let url = LockUrl::parse(&format!("rediss://h?ca={}", ca.display())).unwrap();
        assert_eq!(url.tls_files().unwrap().ca.as_deref(), Some(&b"PEM"[..]));
        for (text, expected) in [
            (format!("redis://h?ca={}", ca.display()), "are for TLS: use rediss://"),
            (format!("redis-cluster://h?ca={}", ca.display()), "are for TLS: use rediss-cluster://"),
            (format!("redis+cluster://h?ca={}", ca.display()), "are for TLS: use rediss+cluster://"),
            (format!("redlock://h?ca={}", ca.display()), "are for TLS: use redlocks://"),
            ("etcds://h?ca=/nonexistent".to_owned(), "cannot read the `ca` file /nonexistent"),
            (format!("etcds://h?cert={}", ca.display()), "give both `cert` and `key`"),
        ] {
            let err = LockUrl::parse(&text).unwrap().tls_files().unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "1.2.3s", "-1s", "5 parsecs", "1e999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let url = LockUrl::parse("memory://?ttl=forever").unwrap();
        let err = url.duration_option("ttl").unwrap_err().to_string();
        assert!(err.contains("option `ttl`") && err.contains("10s"), "{err}");
    }
}

#[cfg(test)]
mod attack_tests {
    use super::*;

    /// A secret under a misspelled option name (`Token`, `tokne`, `pasword`) is not shown in
    /// the "unknown option" error: the error printed the URL with its value.
    #[test]
    fn a_secret_under_a_misspelled_option_is_not_shown() {
        for url in ["consul://h:8500?Token=s3cret", "consul://h:8500?tokne=s3cret", "redis://h?pasword=s3cret"] {
            let err = LockUrl::parse(url).unwrap().check_options(&["token"]).unwrap_err().to_string();
            assert!(err.contains("unknown option") && !err.contains("s3cret"), "{err}");
        }
    }
}
