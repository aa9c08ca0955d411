//! A `consul://` URL, read and checked without contacting Consul.

use std::time::Duration;

use lockkit_core::driver::{Secret, TLS_OPTIONS, TlsFiles};
use lockkit_core::{LockUrl, Result, Settings};

/// Consul's default lock-delay (and `consul lock`'s).
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// How long one blocking query waits unless `blocking_wait` says otherwise.
const DEFAULT_BLOCKING_WAIT: Duration = Duration::from_secs(60);

/// Consul's default HTTP port.
const DEFAULT_PORT: u16 = 8500;

/// What a `consul://` or `consuls://` URL asks for, every default resolved and every rule
/// checked: [`ConsulConfig::from_url`] talks to no server. Its `Debug` never shows the token.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// The common settings; the time a guard counts as held is capped at the lock-delay.
    pub settings: Settings,
    /// The agent's `host:port` (port 8500 unless given).
    pub agent: String,
    /// HTTPS (`consuls://`).
    pub tls: bool,
    /// The ACL token: the `token` option, else `CONSUL_HTTP_TOKEN`.
    pub token: Option<Secret>,
    /// The datacenter of every request (`dc`), else the agent's.
    pub datacenter: Option<String>,
    /// The `LockDelay` of the handle's sessions (`lock_delay`, default 15 s, at most 60 s).
    pub lock_delay: Duration,
    /// How long one blocking query waits (`blocking_wait`, default 60 s, at most 10 min).
    pub blocking_wait: Duration,
    /// The CA and client certificate of `ca`, `cert` and `key` (`consuls://` only), read.
    pub tls_files: TlsFiles,
}

impl ConsulConfig {
    /// Reads and checks `url`. Nothing is sent anywhere; the TLS files are read.
    pub fn from_url(url: &LockUrl) -> Result<Self> {
        url.check_options(&[&["lock_delay", "blocking_wait", "dc", "token"], TLS_OPTIONS].concat())?;
        let [host] = url.hosts() else {
            return Err(
                url.invalid("name one Consul agent: consul://127.0.0.1:8500 (the agent forwards to the servers)")
            );
        };
        if url.username().is_some() {
            return Err(
                url.invalid("Consul takes an ACL token, not a user: consul://host:8500?token=… or CONSUL_HTTP_TOKEN")
            );
        }
        let mut settings = Settings::from_url(url)?;
        let lock_delay = url.duration_option("lock_delay")?.unwrap_or(DEFAULT_LOCK_DELAY);
        if lock_delay > Duration::from_secs(60) {
            return Err(url.invalid("`lock_delay` can be at most 60s (Consul's limit)"));
        }
        // A session Consul ends without its holder hearing of it (its node deregistered, its
        // agent gone) frees the keys after the lock-delay: a guard may count as held no longer.
        settings.cap_validity(lock_delay).map_err(|reason| url.invalid(lock_delay_too_short(lock_delay, &reason)))?;
        let blocking_wait = url.duration_option("blocking_wait")?.unwrap_or(DEFAULT_BLOCKING_WAIT);
        if blocking_wait.is_zero() || blocking_wait > Duration::from_secs(600) {
            return Err(url.invalid("`blocking_wait` must be above zero and at most 10m (Consul's limit)"));
        }
        let token =
            url.option("token").map(Secret::new).or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok().map(Secret::new));
        let config = ConsulConfig {
            tls_files: url.tls_files()?,
            agent: host.address(DEFAULT_PORT),
            tls: url.tls(),
            token,
            datacenter: url.option("dc").map(str::to_owned),
            lock_delay,
            blocking_wait,
            settings,
        };
        // The certificates are parsed when the HTTP client is built: with certificate files,
        // build one now, so that a file `connect` would refuse is refused here, with the same
        // error (attack5).
        if config.tls_files.ca.is_some() || config.tls_files.identity.is_some() {
            crate::http_client(&config)?;
        }
        Ok(config)
    }

    /// The agent's base URL: `http://host:port` or `https://…`.
    pub(crate) fn base(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.agent)
    }
}

/// Why a `lock_delay` is refused, and what to set.
fn lock_delay_too_short(lock_delay: Duration, reason: &str) -> String {
    let shown = if lock_delay.is_zero() { "0s".to_owned() } else { format!("{lock_delay:?}") };
    format!(
        "`lock_delay={shown}` is too short: {reason}. When Consul ends a session without its holder \
         hearing of it (its node deregistered, its agent gone), only the lock-delay keeps others out, so a guard \
         counts as held for at most min(ttl, lock_delay) after its last renew and must be renewed well within \
         that. Set `lock_delay` to at least twice the refresh interval — the ttl is a good choice (Consul's \
         default is 15s, its maximum 60s)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that exists, for the TLS options.
    /// A throwaway self-signed certificate and its key, in one PEM file (the certificates
    /// are parsed here, as `connect` parses them).
    const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/cert-and-key.pem");
    /// A file that is no PEM at all.
    const NOT_PEM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    type Check = fn(&ConsulConfig) -> bool;

    fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// Every rule of a Consul URL: what it gives (`Ok`: a check of the fields) or the error
    /// (`Err`: part of its message).
    #[test]
    fn urls_are_read_and_checked_without_a_server() {
        let no_token_in_env = std::env::var("CONSUL_HTTP_TOKEN").is_err();
        let with_file = |query: &str| query.replace("FILE", FILE);
        let table: Vec<(String, std::result::Result<Check, &str>)> = vec![
            // Defaults.
            (
                "consul://127.0.0.1".into(),
                Ok(|c| {
                    c.agent == "127.0.0.1:8500"
                        && c.base() == "http://127.0.0.1:8500"
                        && !c.tls
                        && c.lock_delay == secs(15)
                        && c.blocking_wait == secs(60)
                        && c.datacenter.is_none()
                        && c.settings.ttl == secs(15)
                        && c.settings.timeout == secs(5)
                        && c.settings.max_validity == Some(secs(15))
                        && c.settings.refresh_for(secs(15)) == secs(5)
                        && c.settings.namespace.key(&lockkit_core::LockName::new("x").unwrap()) == "x"
                        && c.tls_files.ca.is_none()
                        && c.tls_files.identity.is_none()
                }),
            ),
            (
                "consul://[::1]:9500/jobs".into(),
                Ok(|c| {
                    c.agent == "[::1]:9500"
                        && c.settings.namespace.key(&lockkit_core::LockName::new("x").unwrap()) == "jobs/x"
                }),
            ),
            ("consuls://agent".into(), Ok(|c| c.tls && c.base() == "https://agent:8500")),
            // TLS files: consuls:// only, both `cert` and `key`.
            (
                with_file("consuls://h?ca=FILE&cert=FILE&key=FILE"),
                Ok(|c| c.tls_files.ca.is_some() && c.tls_files.identity.is_some()),
            ),
            (with_file("consul://h?ca=FILE"), Err("are for TLS: use consuls://")),
            (with_file("consuls://h?cert=FILE"), Err("give both `cert` and `key`")),
            ("consuls://h?ca=/nonexistent/ca.pem".into(), Err("cannot read the `ca` file")),
            (format!("consuls://h?cert={NOT_PEM}&key={NOT_PEM}"), Err("the `cert`/`key` files")),
            (
                "consul://h?dc=eu-1&blocking_wait=10m".into(),
                Ok(|c| c.datacenter.as_deref() == Some("eu-1") && c.blocking_wait == secs(600)),
            ),
            // The ACL token: sent, never shown.
            (
                "consul://h?token=s3cret".into(),
                Ok(|c| c.token.as_ref().map(Secret::expose) == Some("s3cret") && !format!("{c:?}").contains("s3cret")),
            ),
            ("consul://user:pw@h".into(), Err("Consul takes an ACL token, not a user")),
            ("consul://:pw@h".into(), Ok(|c| c.agent == "h:8500")),
            // One agent.
            ("consul://".into(), Err("name one Consul agent")),
            ("consul://a,b".into(), Err("name one Consul agent")),
            ("consul://h?fair=true".into(), Err("fair")),
            ("consul://h?sesion_timeout=1s".into(), Err("sesion_timeout")),
            // lock_delay: at most 60 s, long enough for the refresh interval, caps the validity.
            (
                "consul://h?lock_delay=60s&ttl=2m".into(),
                Ok(|c| {
                    c.lock_delay == secs(60)
                        && c.settings.max_validity == Some(secs(60))
                        && c.settings.refresh_for(secs(120)) == secs(20)
                }),
            ),
            ("consul://h?lock_delay=61s".into(), Err("`lock_delay` can be at most 60s")),
            ("consul://h?lock_delay=0s".into(), Err("`lock_delay=0s` is too short")),
            ("consul://h?lock_delay=50ms".into(), Err("`lock_delay=50ms` is too short")),
            ("consul://h?lock_delay=5s&refresh=3s".into(), Err("`lock_delay=5s` is too short")),
            ("consul://h?lock_delay=6s&refresh=3s".into(), Err("a refresh must leave room for one retry")),
            ("consul://h?lock_delay=7s&refresh=3s".into(), Ok(|c| c.settings.refresh_for(secs(15)) == secs(3))),
            ("consul://h?lock_delay=3s&ttl=10s".into(), Ok(|c| c.settings.refresh_for(secs(10)) == secs(1))),
            ("consul://h?lock_delay=soon".into(), Err("lock_delay")),
            // blocking_wait: above zero, at most 10 min.
            ("consul://h?blocking_wait=0s".into(), Err("`blocking_wait` must be above zero and at most 10m")),
            ("consul://h?blocking_wait=11m".into(), Err("`blocking_wait` must be above zero and at most 10m")),
            // The common options.
            ("consul://h?ttl=1ms".into(), Err("TTL")),
            ("consul://h?timeout=0s".into(), Err("`timeout` must be above zero")),
        ];
        for (url, expected) in table {
            match (expected, ConsulConfig::from_url(&LockUrl::parse(&url).unwrap())) {
                (Ok(check), Ok(config)) => assert!(check(&config), "{url}: {config:?}"),
                (Err(part), Err(e @ lockkit_core::Error::InvalidUrl { .. })) => {
                    assert!(e.to_string().contains(part), "{url}: {e}")
                }
                (expected, got) => panic!("{url}: expected {:?}, got {got:?}", expected.err()),
            }
        }
        if no_token_in_env {
            let config = ConsulConfig::from_url(&LockUrl::parse("consul://h").unwrap()).unwrap();
            assert!(config.token.is_none());
        }
    }
}
