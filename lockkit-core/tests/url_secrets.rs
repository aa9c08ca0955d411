//! Property tests of URL parsing: a secret (a password, a token, the value of a misspelled
//! option) put into a URL of any shape — written raw or percent-encoded, with `/`, `?`, `#`,
//! `@` or `:` in it — never shows in anything lockkit renders of that URL, parsing never panics,
//! and what is handed to a command (`without_credentials`) parses back to the same settings.
//!
//! A user name is shown (as every tool shows it); what follows its first `:` is the password.
//! Secrets are built so that any leak of two characters or more is seen: every other
//! character is a marker letter (upper-case `J`, `K`, `Q`, `X`, `Z`) that no other part of the
//! generated URLs and no message of lockkit uses.

use lockkit_core::driver::TLS_OPTIONS;
use lockkit_core::{COMMON_OPTIONS, LockUrl, Settings};
use proptest::prelude::*;

const MARKERS: &[char] = &['J', 'K', 'Q', 'X', 'Z'];

/// A secret: marker letters alternating with anything, URL punctuation included.
fn secret() -> impl Strategy<Value = String> {
    let filler =
        prop::sample::select(vec!['/', '?', '#', '@', ':', '%', '&', '=', '+', ',', ' ', 'a', '7', 'é', '[', ']']);
    prop::collection::vec((prop::sample::select(MARKERS.to_vec()), filler), 2..8)
        .prop_map(|pairs| pairs.into_iter().flat_map(|(m, f)| [m, f]).collect())
}

fn scheme() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "memory",
        "file",
        "etcd",
        "etcds",
        "zk",
        "consul",
        "consuls",
        "redis",
        "rediss",
        "redlock",
        "redis-cluster",
    ])
}

fn hosts() -> impl Strategy<Value = String> {
    let host = ("[a-z][a-z0-9.]{0,8}", prop::option::of(1u16..65535))
        .prop_map(|(h, port)| port.map_or(h.clone(), |p| format!("{h}:{p}")));
    prop::collection::vec(host, 0..3).prop_map(|h| h.join(","))
}

fn path() -> impl Strategy<Value = String> {
    prop::option::of("(/[a-z0-9 .-]{0,6}){1,3}").prop_map(Option::unwrap_or_default)
}

/// Options lockkit knows (their values are shown).
const KNOWN: &[&str] = &["ttl", "timeout", "namespace", "fair", "ca"];

/// Known options, and `ttx`, which no driver knows (its value is shown as `***`).
fn options() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop::sample::select(vec!["ttl", "timeout", "namespace", "fair", "ca", "ttx"]);
    prop::collection::vec((key, "[a-z0-9 .]{0,6}"), 0..3)
        .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// Where in the URL the secret goes.
#[derive(Clone, Copy, Debug)]
enum Place {
    /// `user:SECRET@hosts`, as typed (unencoded).
    RawPassword,
    /// `user:SECRET@hosts`, percent-encoded as it should be.
    EncodedPassword,
    /// `?token=SECRET` (or `password=`), encoded.
    SecretOption,
    /// `?tokn=SECRET`: a misspelled secret option, encoded.
    MisspelledOption,
    /// `scheme:/user:SECRET@hosts`: the `//` forgotten.
    NoSlashes,
}

fn place() -> impl Strategy<Value = Place> {
    prop::sample::select(vec![
        Place::RawPassword,
        Place::EncodedPassword,
        Place::SecretOption,
        Place::MisspelledOption,
        Place::NoSlashes,
    ])
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn url_with(place: Place, scheme: &str, hosts: &str, path: &str, options: &[(String, String)], secret: &str) -> String {
    let mut query: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let authority = match place {
        Place::RawPassword | Place::NoSlashes => format!("app:{secret}@{hosts}"),
        Place::EncodedPassword => format!("app:{}@{hosts}", encode(secret)),
        Place::SecretOption => {
            query.push(format!("token={}", encode(secret)));
            hosts.to_owned()
        }
        Place::MisspelledOption => {
            query.push(format!("tokn={}", encode(secret)));
            hosts.to_owned()
        }
    };
    let separator = if matches!(place, Place::NoSlashes) { ":/" } else { "://" };
    let query = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
    format!("{scheme}{separator}{authority}{path}{query}")
}

fn assert_hidden(rendering: &str, what: &str, url: &str) {
    let leaked: String = rendering.chars().filter(|c| MARKERS.contains(c)).collect();
    assert!(leaked.is_empty(), "{what} of {url:?} shows part of the secret ({leaked}): {rendering}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_secret_never_shows_and_parsing_never_panics(
        place in place(), scheme in scheme(), hosts in hosts(), path in path(), options in options(), secret in secret(),
    ) {
        let url = url_with(place, scheme, &hosts, &path, &options, &secret);
        match LockUrl::parse(&url) {
            Err(e) => {
                assert_hidden(&e.to_string(), "the error", &url);
                assert_hidden(&format!("{e:?}"), "the error's Debug", &url);
            }
            Ok(parsed) => {
                assert_hidden(&parsed.to_string(), "Display", &url);
                assert_hidden(&format!("{parsed:?}"), "Debug", &url);
                assert_hidden(&parsed.invalid("x").to_string(), "an error about it", &url);
                let exported = parsed.without_credentials();
                assert_hidden(&exported, "without_credentials", &url);
                let driver_options: Vec<&str> = TLS_OPTIONS.iter().chain(["fair"].iter()).copied().collect();
                if let Err(e) = parsed.check_options(&driver_options) {
                    assert_hidden(&e.to_string(), "the unknown-option error", &url);
                }
                match Settings::from_url(&parsed) {
                    Ok(settings) => assert_hidden(&format!("{settings:?}"), "the settings", &url),
                    Err(e) => assert_hidden(&e.to_string(), "a settings error", &url),
                }
                // What a command gets parses back to the same settings, minus the credentials
                // (a URL with an unknown option never gets that far: connect refuses it).
                let back = LockUrl::parse(&exported).unwrap_or_else(|e| panic!("{exported:?} of {url:?}: {e}"));
                prop_assert_eq!(back.hosts(), parsed.hosts());
                prop_assert_eq!(back.path(), parsed.path());
                for key in COMMON_OPTIONS.iter().chain(KNOWN) {
                    prop_assert_eq!(back.option(key), parsed.option(key), "option {}", key);
                }
            }
        }
    }

    /// Without secrets, what `Display` shows is the URL itself: it parses back to the same URL.
    #[test]
    fn what_a_url_shows_parses_back_to_it(
        scheme in scheme(), hosts in hosts(), path in path(), options in options(), tail in "[a-z%?#@& ]{0,4}",
    ) {
        let mut options: Vec<(String, String)> = options.into_iter().filter(|(k, _)| KNOWN.contains(&k.as_str())).collect();
        options.push(("namespace".to_owned(), encode(&tail)));
        options.dedup_by(|a, b| a.0 == b.0);
        let query: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let url = format!("{scheme}://{hosts}{path}?{}", query.join("&"));
        if let Ok(parsed) = LockUrl::parse(&url) {
            let shown = parsed.to_string();
            let back = LockUrl::parse(&shown).unwrap_or_else(|e| panic!("{shown:?} of {url:?}: {e}"));
            prop_assert_eq!(back, parsed, "{} shown as {}", url, shown);
        }
    }
}

/// The cases the issue measured: an unencoded `/` in a Base64 password, and a `?` in one.
#[test]
fn base64_passwords_typed_unencoded_are_refused_without_showing_them() {
    for url in [
        "redis://app:12/34@redis.internal:6379",
        "redis://app:AbC/dEf+gh==@redis.internal:6379/0",
        "etcd://u:a?b@h:2379",
    ] {
        let err = LockUrl::parse(url).unwrap_err().to_string();
        for fragment in ["12", "34", "AbC", "dEf", "gh==", "a?b"] {
            if url.contains(fragment) {
                assert!(!err.contains(fragment), "{url}: {err}");
            }
        }
        assert!(err.contains("percent-encode") && err.contains("%2F"), "{err}");
    }
    let url = LockUrl::parse("redis://app:AbC%2FdEf+gh%3D%3D@redis.internal:6379/0").unwrap();
    assert_eq!(url.password().unwrap().expose(), "AbC/dEf+gh==");
    assert_eq!(url.to_string(), "redis://app:***@redis.internal:6379/0");
}

/// `LOCKKIT_URL` round-trips a path with an encoded `?` (it was exported decoded).
#[test]
fn an_encoded_question_mark_in_a_path_round_trips() {
    let url = LockUrl::parse("file:///tmp/a%3Fb?ttl=2s").unwrap();
    assert_eq!(url.path(), "/tmp/a?b");
    let back = LockUrl::parse(&url.without_credentials()).unwrap();
    assert_eq!((back.path(), back.option("ttl")), ("/tmp/a?b", Some("2s")));
}

/// Attack (#16): a misspelled separator puts a secret into an option's *name*
/// (`?token:s3cret`, `?password s3cret`), which the "unknown option" error and `Display` show
/// verbatim; and a `zk://` `acl` value written as ZooKeeper's `digest:user:password` is echoed
/// by the driver's error and shown by `Display` (`acl` is a shown option).
#[test]
fn a_secret_typed_with_the_wrong_separator_is_not_shown() {
    for text in [
        "redis://h?token:JaKaQ",
        "consul://h:8500?tokenJaKaQ",
        "redis://h?password%20JaKaQ",
        "zk://h?acl=digest:u:JaKaQ",
    ] {
        let url = LockUrl::parse(text).unwrap();
        let err = url.check_options(&["token"]).unwrap_err().to_string();
        for rendering in [url.to_string(), format!("{url:?}"), err] {
            assert!(!rendering.contains("JaKaQ"), "{text}: {rendering}");
        }
    }
}

/// `LOCKKIT_URL` round trips for odd but valid paths and options.
#[test]
fn odd_paths_and_options_round_trip() {
    for text in [
        "file:///tmp/a%20b%20",
        "file:///tmp/%20lead",
        "file:///tmp/a%23b",
        "file:///tmp/a%25b",
        "file:///tmp/a%26b?namespace=x%26y%3Dz",
        "file:////tmp//x/",
        "file:///tmp/a,b",
        "file:///tmp/%C3%A9?mode=0640",
        "etcd://[::1]:2379/a%3Fb?namespace=%23x",
        "redis://u%3Ax:p@h:1/0?ttl=10s",
        "file://localhost/tmp/x",
    ] {
        let url = LockUrl::parse(text).unwrap();
        let exported = url.without_credentials();
        let back = LockUrl::parse(&exported).unwrap_or_else(|e| panic!("{text} → {exported}: {e}"));
        assert_eq!(
            (back.path(), back.hosts(), back.option("namespace"), back.option("mode")),
            (url.path(), url.hosts(), url.option("namespace"), url.option("mode")),
            "{text} → {exported}"
        );
    }
}
