//! What an `etcd://` or `etcds://` URL asks for, read and checked without a server.

use lockkit_core::driver::{Secret, TLS_OPTIONS, TlsFiles};
use lockkit_core::{LockUrl, Result, Settings};

/// The port of an endpoint given without one.
const DEFAULT_PORT: u16 = 2379;

/// A handle's configuration, read from its URL by [`EtcdConfig::from_url`] (every check and
/// default of the URL, no request to etcd; the `ca`, `cert` and `key` files are read) and used
/// by [`connect_config`](crate::connect_config). `Debug` never shows the password.
///
/// ```
/// # use lockkit_core::LockUrl;
/// let url = LockUrl::parse("etcd://app:s3cret@10.0.0.1,10.0.0.2:2380/jobs?ttl=10s").unwrap();
/// let config = lockkit_etcd::EtcdConfig::from_url(&url).unwrap();
/// assert_eq!(config.endpoints, ["10.0.0.1:2379", "10.0.0.2:2380"]);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// TTL, refresh interval, request timeout and namespace (the `namespace` option, else the
    /// URL's path).
    pub settings: Settings,
    /// The cluster's members as `host:port` (port 2379 when none is given), in the URL's order.
    pub endpoints: Vec<String>,
    /// For `etcds://`: the CA to trust instead of the public roots (`ca`) and a client
    /// certificate (`cert` and `key`). `None` for `etcd://`.
    pub tls: Option<TlsFiles>,
    /// The user and password of etcd's authentication (`etcd://user:password@…`).
    pub credentials: Option<(String, Secret)>,
}

impl EtcdConfig {
    /// Reads and checks a URL: options, endpoints, common settings, TLS files, credentials.
    pub fn from_url(url: &LockUrl) -> Result<Self> {
        url.check_options(TLS_OPTIONS)?;
        let hosts = url.required_hosts("endpoint", "etcd://127.0.0.1:2379")?;
        let settings = Settings::from_url(url)?;
        let files = url.tls_files()?;
        let credentials = url.user_and_password("etcd://user:password@host:2379")?;
        Ok(EtcdConfig {
            settings,
            endpoints: hosts.iter().map(|h| h.address(DEFAULT_PORT)).collect(),
            tls: url.tls().then_some(files),
            credentials,
        })
    }

    /// The endpoints joined by commas, for messages.
    pub(crate) fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What a config holds, in one line: endpoints | TLS | user | ttl, refresh, timeout | namespace.
    fn summary(config: &EtcdConfig) -> String {
        let tls = match &config.tls {
            None => "plain".to_owned(),
            Some(files) => format!("tls ca={} identity={}", files.ca.is_some(), files.identity.is_some()),
        };
        let user = config.credentials.as_ref().map_or("-", |(user, _)| user.as_str());
        let s = &config.settings;
        let timing = format!("{:?} {:?} {:?}", s.ttl, s.refresh_interval, s.timeout);
        format!("{} | {tls} | {user} | {timing} | {}", config.endpoints.join(","), s.namespace)
    }

    /// Every rule of `etcd://` URLs: (URL, the config's summary, or part of the error).
    #[test]
    fn urls_give_configs_or_say_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("lockkit-etcd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("any.pem");
        std::fs::write(&pem, "PEM").unwrap();
        let pem = pem.display();
        let rows: Vec<(String, Result<&str, &str>)> = vec![
            // Defaults: port 2379, TTL 15s, timeout 5s, no namespace, plain, no user.
            ("etcd://h".into(), Ok("h:2379 | plain | - | 15s None 5s | ")),
            ("etcd://a:1,b,[::1]".into(), Ok("a:1,b:2379,[::1]:2379 | plain | - | 15s None 5s | ")),
            ("ETCD://h/jobs/nightly".into(), Ok("h:2379 | plain | - | 15s None 5s | jobs/nightly")),
            ("etcd://h/jobs?namespace=other".into(), Ok("h:2379 | plain | - | 15s None 5s | other")),
            ("etcd://h?ttl=10s&refresh=2s&timeout=1s".into(), Ok("h:2379 | plain | - | 10s Some(2s) 1s | ")),
            // Credentials: both or neither.
            ("etcd://app:s3cret@h".into(), Ok("h:2379 | plain | app | 15s None 5s | ")),
            ("etcd://app@h".into(), Err("give both user and password")),
            ("etcd://:s3cret@h".into(), Err("give both user and password")),
            // Endpoints, options, common settings.
            ("etcd://".into(), Err("name at least one endpoint: etcd://127.0.0.1:2379")),
            ("etcd:///jobs".into(), Err("name at least one endpoint")),
            (
                "etcd://h?session_timeout=5s".into(),
                Err(
                    "unknown option `session_timeout` for etcd://; known options: ttl, refresh, timeout, namespace, ca, cert, key",
                ),
            ),
            ("etcd://?bogus=1".into(), Err("unknown option `bogus`")),
            ("etcd://h?ttl=10ms".into(), Err("TTL 10ms is too short")),
            ("etcd://h?ttl=2s&refresh=3s".into(), Err("must be above zero and below the TTL")),
            ("etcd://h?timeout=0s".into(), Err("`timeout` must be above zero")),
            ("etcd://h?timeout=soon".into(), Err("option `timeout`")),
            ("etcd://u:s3cret@h?ttl=1ms".into(), Err("etcd://u:***@h")),
            // TLS: etcds:// only; public roots unless `ca`; `cert` and `key` together.
            ("etcds://h".into(), Ok("h:2379 | tls ca=false identity=false | - | 15s None 5s | ")),
            (format!("etcds://h?ca={pem}"), Ok("h:2379 | tls ca=true identity=false | - | 15s None 5s | ")),
            (format!("etcds://h?cert={pem}&key={pem}"), Ok("h:2379 | tls ca=false identity=true | - | 15s None 5s | ")),
            (format!("etcd://h?ca={pem}"), Err("`ca`, `cert` and `key` are for TLS: use etcds://")),
            (format!("etcds://h?cert={pem}"), Err("give both `cert` and `key`")),
            ("etcds://h?ca=/nonexistent/ca.pem".into(), Err("cannot read the `ca` file /nonexistent/ca.pem")),
            ("etcd://h?ca=/nonexistent/ca.pem".into(), Err("cannot read the `ca` file")),
        ];
        for (text, expected) in &rows {
            let url = LockUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let got = EtcdConfig::from_url(&url);
            let shown = match &got {
                Ok(config) => format!("{config:?}"),
                Err(e) => format!("{e} {e:?}"),
            };
            assert!(!shown.contains("s3cret"), "{text}: the password shows: {shown}");
            match (got, expected) {
                (Ok(config), Ok(summary_expected)) => assert_eq!(summary(&config), *summary_expected, "{text}"),
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{text}: {e}"),
                (got, _) => panic!("{text}: expected {expected:?}, got {got:?}"),
            }
        }
        let config = EtcdConfig::from_url(&LockUrl::parse("etcd://app:s3cret@h").unwrap()).unwrap();
        assert_eq!(config.credentials.unwrap().1.expose(), "s3cret", "the password is kept for the server");
        assert_eq!(Settings::DEFAULT_TTL, Duration::from_secs(15));
        std::fs::remove_dir_all(dir).ok();
    }
}
