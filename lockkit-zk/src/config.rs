//! What a `zk://` URL asks for, read and checked without a server.

use lockkit_core::driver::Secret;
use lockkit_core::{LockUrl, Namespace, Result, Settings};

use crate::recipe::Recipe;

/// Options of `zk://` URLs besides the common ones.
const OPTIONS: &[&str] = &["session_timeout", "recipe", "acl"];

/// The port of a server given without one.
const DEFAULT_PORT: u16 = 2181;

/// Who may touch the nodes a handle creates (the `acl` option; see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Acl {
    /// `acl=open` (the default): anyone may read, change and delete them, as with Curator and
    /// kazoo by default.
    Open,
    /// `acl=creator`: only the handle's `digest` identity (ZooKeeper's `auth` ACL).
    Creator,
}

/// A handle's configuration, read from its URL by [`ZkConfig::from_url`] (every check and
/// default of the URL, no request to ZooKeeper) and used by
/// [`connect_config`](crate::connect_config). `Debug` never shows the password.
///
/// ```
/// # use lockkit_core::LockUrl;
/// let url = LockUrl::parse("zk://app:s3cret@zk1,zk2:2182/locks?session_timeout=10s").unwrap();
/// let config = lockkit_zk::ZkConfig::from_url(&url).unwrap();
/// assert_eq!(config.servers, ["zk1:2181", "zk2:2182"]);
/// assert_eq!(config.chroot.to_string(), "locks");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ZkConfig {
    /// TTL (the session timeout: `session_timeout` or `ttl`), refresh interval, request
    /// timeout and namespace (the `namespace` option only: the path is the chroot).
    pub settings: Settings,
    /// The ensemble's servers as `host:port` (port 2181 when none is given), in the URL's order.
    pub servers: Vec<String>,
    /// The chroot, the URL's path: every lock lives below it.
    pub chroot: Namespace,
    /// The node layout (`recipe`).
    pub recipe: Recipe,
    /// Who may touch the nodes (`acl`).
    pub acl: Acl,
    /// The `digest` identity (`zk://user:password@…`).
    pub digest: Option<(String, Secret)>,
}

impl ZkConfig {
    /// Reads and checks a URL: options, servers, common settings, session timeout,
    /// credentials, ACL and recipe.
    pub fn from_url(url: &LockUrl) -> Result<Self> {
        url.check_options(OPTIONS)?;
        let hosts = url.required_hosts("server", "zk://127.0.0.1:2181")?;
        if url.tls() {
            return Err(url.invalid("TLS is not supported for ZooKeeper yet; use zk://"));
        }
        let mut settings = Settings::from_url(url)?;
        if let Some(ttl) = url.duration_option("session_timeout")? {
            if url.option("ttl").is_some() {
                return Err(url.invalid("give `session_timeout` or `ttl`, not both: they are the same"));
            }
            settings.ttl = ttl;
        }
        settings.namespace = Namespace::new(url.option("namespace").unwrap_or(""));
        let digest = url.user_and_password("zk://user:password@host:2181")?;
        let acl = match url.option("acl") {
            None | Some("open") => Acl::Open,
            Some("creator") if digest.is_some() => Acl::Creator,
            Some("creator") => {
                return Err(url.invalid(
                    "`acl=creator` gives the nodes to the handle's digest identity: give one, \
                     zk://user:password@host:2181",
                ));
            }
            // Its value is not repeated: ZooKeeper's own ACL syntax (`digest:user:password`)
            // holds secrets.
            Some(_) => return Err(url.invalid("option `acl` takes `creator` or `open`")),
        };
        let recipe = match url.option("recipe") {
            None | Some("curator") => Recipe::Curator,
            Some("curator-latch") => Recipe::CuratorLatch,
            Some("kazoo") => Recipe::Kazoo,
            Some(other) => {
                return Err(url.invalid(format!(
                    "option `recipe`: `{other}` is not a recipe; use curator, curator-latch or kazoo"
                )));
            }
        };
        Ok(ZkConfig {
            settings,
            servers: hosts.iter().map(|h| h.address(DEFAULT_PORT)).collect(),
            chroot: Namespace::new(url.path()),
            recipe,
            acl,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a config holds, in one line: servers | chroot | namespace | ttl, refresh, timeout |
    /// recipe, acl | user.
    fn summary(config: &ZkConfig) -> String {
        let s = &config.settings;
        let user = config.digest.as_ref().map_or("-", |(user, _)| user.as_str());
        format!(
            "{} | /{} | {} | {:?} {:?} {:?} | {:?} {:?} | {user}",
            config.servers.join(","),
            config.chroot,
            s.namespace,
            s.ttl,
            s.refresh_interval,
            s.timeout,
            config.recipe,
            config.acl
        )
    }

    /// Every rule of `zk://` URLs: (URL, the config's summary, or the whole reason of the
    /// `InvalidUrl` error: messages stay as they are).
    #[test]
    fn urls_give_configs_or_say_exactly_what_is_wrong() {
        let known = "ttl, refresh, timeout, namespace, session_timeout, recipe, acl";
        let unknown = |option: &str| format!("unknown option `{option}` for zk://; known options: {known}");
        let (ca, misspelled, bogus) = (unknown("ca"), unknown("session_timout"), unknown("bogus"));
        let creator = "`acl=creator` gives the nodes to the handle's digest identity: give one, \
                       zk://user:password@host:2181";
        let rows: &[(&str, Result<&str, &str>)] = &[
            // Defaults: port 2181, no chroot, no namespace, TTL 15s, timeout 5s, Curator, open.
            ("zk://h", Ok("h:2181 | / |  | 15s None 5s | Curator Open | -")),
            ("zookeeper://a:1,b,[::1]", Ok("a:1,b:2181,[::1]:2181 | / |  | 15s None 5s | Curator Open | -")),
            // The path is the chroot; the namespace comes from the option only.
            ("zk://h/locks/app?namespace=jobs", Ok("h:2181 | /locks/app | jobs | 15s None 5s | Curator Open | -")),
            // The session timeout is the TTL, given either way (not both).
            ("zk://h?session_timeout=8s", Ok("h:2181 | / |  | 8s None 5s | Curator Open | -")),
            ("zk://h?ttl=6s&refresh=1s&timeout=2s", Ok("h:2181 | / |  | 6s Some(1s) 2s | Curator Open | -")),
            ("zk://h?session_timeout=5s&ttl=5s", Err("give `session_timeout` or `ttl`, not both: they are the same")),
            (
                "zk://h?session_timeout=soon",
                Err(
                    "option `session_timeout`: `soon` is not a duration; write a number and a unit: 500ms, 10s, 2m, 1h",
                ),
            ),
            ("zk://h?ttl=10ms", Err("TTL 10ms is too short; use at least 100ms")),
            ("zk://h?timeout=0s", Err("`timeout` must be above zero")),
            // Recipes.
            ("zk://h?recipe=kazoo", Ok("h:2181 | / |  | 15s None 5s | Kazoo Open | -")),
            ("zk://h?recipe=curator", Ok("h:2181 | / |  | 15s None 5s | Curator Open | -")),
            ("zk://h?recipe=curator-latch", Ok("h:2181 | / |  | 15s None 5s | CuratorLatch Open | -")),
            ("zk://h?recipe=etcd", Err("option `recipe`: `etcd` is not a recipe; use curator, curator-latch or kazoo")),
            // Digest credentials (both or neither) and ACLs; `creator` needs credentials.
            ("zk://app:s3cret@h", Ok("h:2181 | / |  | 15s None 5s | Curator Open | app")),
            ("zk://app:s3cret@h?acl=creator", Ok("h:2181 | / |  | 15s None 5s | Curator Creator | app")),
            ("zk://h?acl=open", Ok("h:2181 | / |  | 15s None 5s | Curator Open | -")),
            ("zk://app@h", Err("give both user and password: zk://user:password@host:2181")),
            ("zk://:s3cret@h", Err("give both user and password: zk://user:password@host:2181")),
            ("zk://h?acl=creator", Err(creator)),
            ("zk://h?acl=digest:app:s3cret", Err("option `acl` takes `creator` or `open`")),
            ("zk://h?acl=creator&recipe=etcd", Err(creator)),
            // Servers and options: no TLS options on zk://.
            ("zk://", Err("name at least one server: zk://127.0.0.1:2181")),
            ("zk:///locks", Err("name at least one server: zk://127.0.0.1:2181")),
            ("zk://h?ca=/etc/ca.pem", Err(&ca)),
            ("zk://h?session_timout=5s", Err(&misspelled)),
            ("zk://?bogus=1", Err(&bogus)),
        ];
        for (text, expected) in rows {
            let config = ZkConfig::from_url(&LockUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}")));
            let got = config.as_ref().map(summary).map_err(|e| match e {
                lockkit_core::Error::InvalidUrl { reason, .. } => reason.clone(),
                other => format!("not an invalid URL: {other}"),
            });
            assert!(!format!("{config:?} {got:?}").contains("s3cret"), "{text}: a secret shows: {config:?}");
            assert_eq!(got.as_ref().map(String::as_str).map_err(String::as_str), *expected, "{text}");
        }
    }
}
