//! A `redis://`, `redis-cluster://` or `redlock://` URL, read and checked without contacting a
//! server.

use std::time::Duration;

use lockkit_core::driver::{Host, Secret, TLS_OPTIONS, TlsFiles};
use lockkit_core::{Error, LockUrl, Namespace, Result, Scheme, Settings};

/// Redis's default port.
const DEFAULT_PORT: u16 = 6379;

/// What a Redis URL asks for, every default resolved and every rule checked:
/// [`RedisConfig::from_url`] talks to no server. Its `Debug` never shows the password.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The common settings; the namespace is the `namespace` option (the path is the database).
    pub settings: Settings,
    /// [`Scheme::Redis`] (one server), [`Scheme::RedisCluster`] or [`Scheme::Redlock`].
    pub scheme: Scheme,
    /// TLS (`rediss://`, `rediss-cluster://`, `redlocks://`).
    pub tls: bool,
    /// The server (`redis://`), the seed nodes (`redis-cluster://`) or the independent servers
    /// (`redlock://`: an odd number, at least 3); port 6379 unless given.
    pub servers: Vec<Host>,
    /// The ACL user, if any.
    pub username: Option<String>,
    /// The password, if any.
    pub password: Option<Secret>,
    /// The database: the URL's path (0 unless given; always 0 on a cluster).
    pub db: i64,
    /// `fair=true`: waiters are granted in arrival order (not on `redlock://`).
    pub fair: bool,
    /// The bound on each call to one server: the request timeout, and for Redlock at most a
    /// tenth of the TTL (at least 50 ms), so one dead server cannot eat the validity time.
    pub call_timeout: Duration,
    /// The CA and client certificate of `ca`, `cert` and `key` (TLS schemes only), read.
    pub tls_files: TlsFiles,
}

impl RedisConfig {
    /// Reads and checks `url`. Nothing is sent anywhere; the TLS files are read.
    pub fn from_url(url: &LockUrl) -> Result<Self> {
        url.check_options(&[TLS_OPTIONS, &["fair"]].concat())?;
        let scheme = url.scheme();
        let redlock = scheme == Scheme::Redlock;
        let hosts = url.hosts();
        if hosts.is_empty() {
            return Err(url.invalid(match scheme {
                Scheme::RedisCluster => "name the seed nodes: redis-cluster://127.0.0.1:7000,127.0.0.1:7001",
                _ => "name the server: redis://127.0.0.1:6379",
            }));
        }
        if scheme == Scheme::Redis && hosts.len() > 1 {
            return Err(url.invalid(
                "redis:// takes one server; for a Redis Cluster use redis-cluster://h1,h2,…, \
                 for a majority of independent servers redlock://h1,h2,h3",
            ));
        }
        if redlock && (hosts.len() < 3 || hosts.len().is_multiple_of(2)) {
            return Err(url.invalid("redlock:// needs an odd number of independent servers, at least 3"));
        }
        let tls_files = url.tls_files()?;
        let fair = match url.option("fair") {
            None | Some("false") => false,
            Some("true") if !redlock => true,
            Some("true") => {
                return Err(url.invalid(
                    "`fair=true` is for redis:// and redis-cluster://; Redlock grants by majority, not in line",
                ));
            }
            Some(other) => return Err(url.invalid(format!("`fair` is true or false, not `{other}`"))),
        };
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            db => db.parse::<i64>().map_err(|_| {
                url.invalid(format!(
                    "the path of a Redis URL is the database number, not `{db}`; set a namespace with ?namespace="
                ))
            })?,
        };
        if scheme == Scheme::RedisCluster && db != 0 {
            return Err(url.invalid("a Redis Cluster has only database 0; set a namespace with ?namespace="));
        }
        let mut settings = Settings::from_url(url)?;
        settings.namespace = Namespace::new(url.option("namespace").unwrap_or(""));
        let call_timeout = match redlock {
            true => settings.timeout.min((settings.ttl / 10).max(Duration::from_millis(50))),
            false => settings.timeout,
        };
        Ok(RedisConfig {
            settings,
            scheme,
            tls: url.tls(),
            servers: hosts.to_vec(),
            username: url.username().map(str::to_owned),
            password: url.password().cloned(),
            db,
            fair,
            call_timeout,
            tls_files,
        })
    }

    /// The backend named in errors: `redis`, `redis-cluster` or `redlock`.
    pub(crate) fn backend(&self) -> &'static str {
        match self.scheme {
            Scheme::Redlock => "redlock",
            Scheme::RedisCluster => crate::CLUSTER,
            _ => crate::BACKEND,
        }
    }

    /// A server's `host:port`.
    pub(crate) fn address(host: &Host) -> String {
        host.address(DEFAULT_PORT)
    }

    /// The servers as `host:port` joined by commas, for messages.
    pub(crate) fn endpoints(&self) -> String {
        self.servers.iter().map(Self::address).collect::<Vec<_>>().join(",")
    }

    /// A server's connection address.
    pub(crate) fn connection_addr(&self, host: &Host) -> redis::ConnectionAddr {
        let (name, port) = (host.host.clone(), host.port.unwrap_or(DEFAULT_PORT));
        match self.tls {
            true => redis::ConnectionAddr::TcpTls { host: name, port, insecure: false, tls_params: None },
            false => redis::ConnectionAddr::Tcp(name, port),
        }
    }

    /// An [`Error::InvalidUrl`] for this URL (shown redacted).
    pub(crate) fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::InvalidUrl { url: self.settings.url.clone(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that exists, for the TLS options.
    const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    type Check = fn(&RedisConfig) -> bool;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn key(config: &RedisConfig) -> String {
        config.settings.namespace.verbatim_key(&lockkit_core::LockName::new("x").unwrap())
    }

    /// Every rule of the Redis URLs: what each gives (`Ok`: a check of the fields) or the
    /// error (`Err`: part of its message).
    #[test]
    fn urls_are_read_and_checked_without_a_server() {
        let with_file = |query: &str| query.replace("FILE", FILE);
        let table: Vec<(String, std::result::Result<Check, &str>)> = vec![
            // Defaults: port 6379, database 0, no namespace, the common settings.
            (
                "redis://127.0.0.1".into(),
                Ok(|c| {
                    c.scheme == Scheme::Redis
                        && c.backend() == "redis"
                        && c.endpoints() == "127.0.0.1:6379"
                        && c.db == 0
                        && !c.fair
                        && !c.tls
                        && key(c) == "x"
                        && c.username.is_none()
                        && c.password.is_none()
                        && c.settings.ttl == ms(15_000)
                        && c.call_timeout == ms(5000)
                        && c.tls_files.ca.is_none()
                        && c.tls_files.identity.is_none()
                }),
            ),
            // The path is the database, the namespace an option.
            (
                "redis://h:7000/3?namespace=app&timeout=2s".into(),
                Ok(|c| c.endpoints() == "h:7000" && c.db == 3 && key(c) == "app/x" && c.call_timeout == ms(2000)),
            ),
            ("redis://h/jobs".into(), Err("the path of a Redis URL is the database number, not `jobs`")),
            ("redis://[::1]".into(), Ok(|c| c.endpoints() == "[::1]:6379")),
            // Credentials: kept, never shown.
            (
                "redis://app:s3cret@h".into(),
                Ok(|c| {
                    c.username.as_deref() == Some("app")
                        && c.password.as_ref().map(Secret::expose) == Some("s3cret")
                        && !format!("{c:?}").contains("s3cret")
                }),
            ),
            ("redis://:s3cret@h".into(), Ok(|c| c.username.is_none() && c.password.is_some())),
            // Servers: one for redis://.
            ("redis://".into(), Err("name the server: redis://127.0.0.1:6379")),
            ("redis://a,b".into(), Err("redis:// takes one server")),
            // redis-cluster://: seeds, database 0.
            (
                "redis-cluster://a:7000,b:7001".into(),
                Ok(|c| {
                    c.scheme == Scheme::RedisCluster
                        && c.backend() == "redis-cluster"
                        && c.endpoints() == "a:7000,b:7001"
                }),
            ),
            ("redis+cluster://a".into(), Ok(|c| c.scheme == Scheme::RedisCluster)),
            ("redis-cluster://".into(), Err("name the seed nodes")),
            ("redis-cluster://a/0".into(), Ok(|c| c.db == 0)),
            ("redis-cluster://a/1".into(), Err("a Redis Cluster has only database 0")),
            ("redis-cluster://a?fair=true".into(), Ok(|c| c.fair)),
            // redlock://: an odd number of servers, at least 3; no fair; a short call timeout.
            (
                "redlock://a,b,c".into(),
                Ok(|c| c.scheme == Scheme::Redlock && c.backend() == "redlock" && c.call_timeout == ms(1500)),
            ),
            ("redlock://a,b,c,d,e/2?ttl=1s".into(), Ok(|c| c.db == 2 && c.call_timeout == ms(100))),
            ("redlock://a,b,c?ttl=200ms&timeout=30ms".into(), Ok(|c| c.call_timeout == ms(30))),
            ("redlock://a,b,c?ttl=300ms".into(), Ok(|c| c.call_timeout == ms(50))),
            ("redlock://a".into(), Err("redlock:// needs an odd number of independent servers, at least 3")),
            ("redlock://a,b".into(), Err("redlock:// needs an odd number of independent servers, at least 3")),
            ("redlock://a,b,c,d".into(), Err("redlock:// needs an odd number of independent servers, at least 3")),
            ("redlock://".into(), Err("name the server")),
            ("redlock://a,b,c?fair=true".into(), Err("`fair=true` is for redis:// and redis-cluster://")),
            ("redlock://a,b,c?fair=false".into(), Ok(|c| !c.fair)),
            // fair: true or false.
            ("redis://h?fair=true".into(), Ok(|c| c.fair)),
            ("redis://h?fair=yes".into(), Err("`fair` is true or false, not `yes`")),
            // Unknown options, the common ones.
            ("redis://h?lock_delay=1s".into(), Err("lock_delay")),
            ("redis://h?ttl=1ms".into(), Err("TTL")),
            ("redis://h?timeout=0s".into(), Err("`timeout` must be above zero")),
            // TLS: the schemes with an `s`; files only there, both `cert` and `key`.
            ("rediss://h".into(), Ok(|c| c.tls && c.scheme == Scheme::Redis)),
            ("rediss-cluster://a,b".into(), Ok(|c| c.tls && c.scheme == Scheme::RedisCluster)),
            ("redlocks://a,b,c".into(), Ok(|c| c.tls && c.scheme == Scheme::Redlock)),
            (
                with_file("rediss://h?ca=FILE&cert=FILE&key=FILE"),
                Ok(|c| c.tls_files.ca.is_some() && c.tls_files.identity.is_some()),
            ),
            (with_file("redis://h?ca=FILE"), Err("are for TLS: use rediss://")),
            (with_file("redis-cluster://h?cert=FILE&key=FILE"), Err("are for TLS: use rediss-cluster://")),
            (with_file("redlock://a,b,c?ca=FILE"), Err("are for TLS: use redlocks://")),
            (with_file("redlocks://a,b,c?key=FILE"), Err("give both `cert` and `key`")),
            ("rediss://h?ca=/nonexistent/ca.pem".into(), Err("cannot read the `ca` file")),
        ];
        for (url, expected) in table {
            match (expected, RedisConfig::from_url(&LockUrl::parse(&url).unwrap())) {
                (Ok(check), Ok(config)) => assert!(check(&config), "{url}: {config:?}"),
                (Err(part), Err(e @ Error::InvalidUrl { .. })) => assert!(e.to_string().contains(part), "{url}: {e}"),
                (expected, got) => panic!("{url}: expected {:?}, got {got:?}", expected.err()),
            }
        }
    }
}
