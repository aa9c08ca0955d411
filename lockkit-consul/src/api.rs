//! The few Consul HTTP API calls the driver makes, with their answers checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use lockkit_core::Error;
use lockkit_core::driver::Secret;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::BACKEND;
use crate::error::ConsulError;

/// What a request answers, or why it failed.
type Answer<T> = std::result::Result<T, ConsulError>;

/// A Consul agent's HTTP API.
#[derive(Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    /// `http://host:port` or `https://…`.
    base: String,
    /// `host:port`, for messages.
    endpoint: String,
    token: Option<Secret>,
    datacenter: Option<String>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish_non_exhaustive()
    }
}

/// Whether a request was answered: it succeeded, or failed with an answer that applied nothing
/// or applied it for sure — not "no answer" (which Consul may still apply later).
pub(crate) fn answered<T>(outcome: &Answer<T>) -> bool {
    !matches!(outcome, Err(e) if !e.answered())
}

/// A KV entry, as `GET /v1/kv/<key>` gives it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Entry {
    pub(crate) modify_index: u64,
    #[serde(default)]
    pub(crate) flags: u64,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) session: Option<String>,
}

impl Entry {
    /// The value, decoded; `None` when empty or not UTF-8.
    pub(crate) fn text(&self) -> Option<String> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(self.value.as_deref()?).ok()?;
        String::from_utf8(bytes).ok().filter(|v| !v.is_empty())
    }
}

/// The first pause before a request Consul's rate limiter refused is sent again; it doubles up
/// to [`MAX_RATE_LIMIT_PAUSE`].
const FIRST_RATE_LIMIT_PAUSE: Duration = Duration::from_millis(50);
const MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_millis(1000);

/// How much later than its `wait` Consul may answer a blocking query: it adds up to wait / 16
/// to spread the wake-ups of many queries.
pub(crate) fn blocking_jitter(wait: Duration) -> Duration {
    wait / 16
}

/// A blocking query: the index to wait past, and for how long (Consul adds its jitter).
pub(crate) struct Blocking {
    pub(crate) index: u64,
    pub(crate) wait: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Renewed {
    #[serde(rename = "TTL", default)]
    ttl: String,
}

/// What a transaction that applied answers.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnAnswer {
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
}

#[derive(Deserialize)]
struct TxnResult {
    #[serde(rename = "KV", default)]
    kv: Option<Entry>,
}

/// `'%'` in keys (lockkit's escapes) must travel as `%25`.
fn path_of(key: &str) -> String {
    key.replace('%', "%25")
}

impl Api {
    pub(crate) fn new(
        client: reqwest::Client,
        base: String,
        token: Option<Secret>,
        datacenter: Option<String>,
        timeout: Duration,
    ) -> Self {
        let endpoint = base.split_once("://").map_or(base.as_str(), |(_, rest)| rest).to_owned();
        Api { client, base, endpoint, token, datacenter, timeout }
    }

    /// One request; the status and body, or a clear error. `wait` is the wait of a blocking
    /// query, which Consul may answer as late as wait + wait / 16 (its jitter). A request that
    /// Consul's rate limiter refused (429, 503: nothing was applied) is sent again after a
    /// pause, for up to the request timeout.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
        wait: Duration,
    ) -> Answer<(StatusCode, Vec<u8>, Option<u64>)> {
        let mut url = format!("{}{path}", self.base);
        let datacenter = self.datacenter.iter().map(|dc| ("dc", dc.clone()));
        let pairs: Vec<String> = query.iter().cloned().chain(datacenter).map(|(k, v)| format!("{k}={v}")).collect();
        if !pairs.is_empty() {
            url.push('?');
            url.push_str(&pairs.join("&"));
        }
        let started = Instant::now();
        let mut pause = FIRST_RATE_LIMIT_PAUSE;
        let (status, body, index) = loop {
            let answer = self.send(method.clone(), &url, body.clone(), wait).await?;
            let refused = answer.0 == StatusCode::TOO_MANY_REQUESTS || answer.0 == StatusCode::SERVICE_UNAVAILABLE;
            if !refused || started.elapsed() + pause >= self.timeout {
                break answer;
            }
            tracing::debug!(backend = BACKEND, endpoint = %self.endpoint, status = %answer.0, retry_in = ?pause, "rate limited; retrying");
            tokio::time::sleep(pause + Duration::from_millis(lockkit_core::driver::random_u64() % 10)).await;
            pause = (pause * 2).min(MAX_RATE_LIMIT_PAUSE);
        };
        let (endpoint, body_text) = (self.endpoint.clone(), text(&body));
        match status {
            // 409: a transaction whose checks failed, which its body details.
            s if s.is_success() || s == StatusCode::NOT_FOUND || s == StatusCode::CONFLICT => Ok((s, body, index)),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Err(ConsulError::Denied { endpoint, body: body_text }),
            status @ (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) => {
                Err(ConsulError::RateLimited { endpoint, status, waited: started.elapsed(), body: body_text })
            }
            status => Err(ConsulError::Status { endpoint, status, body: body_text }),
        }
    }

    /// Sends one request and reads its answer, within the request timeout (plus, for a
    /// blocking query, its wait and Consul's jitter).
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Vec<u8>,
        wait: Duration,
    ) -> Answer<(StatusCode, Vec<u8>, Option<u64>)> {
        let budget = self.timeout + wait + blocking_jitter(wait);
        let deadline = tokio::time::Instant::now() + budget;
        let mut request = self.client.request(method, url).body(body);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token.expose());
        }
        let unanswered =
            |message: String| ConsulError::Unreachable { endpoint: self.endpoint.clone(), message, source: None };
        let response = tokio::time::timeout_at(deadline, request.send())
            .await
            .map_err(|_| unanswered(format!("no answer within {budget:?}; is Consul running there?")))?
            .map_err(|e| self.connection(e))?;
        let status = response.status();
        let index = response.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let body = tokio::time::timeout_at(deadline, response.bytes())
            .await
            .map_err(|_| unanswered("the answer stopped half-way".to_owned()))?
            .map_err(|e| self.connection(e))?;
        Ok((status, body.to_vec(), index))
    }

    fn connection(&self, e: reqwest::Error) -> ConsulError {
        // reqwest's own message names the URL; the root cause says what went wrong.
        let mut cause: &dyn std::error::Error = &e;
        while let Some(source) = cause.source() {
            cause = source;
        }
        let message = format!("{cause}; is Consul running there?");
        ConsulError::Unreachable { endpoint: self.endpoint.clone(), message, source: Some(Arc::new(e)) }
    }

    /// A body that should be JSON of type `T`.
    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str, body: &[u8]) -> Answer<T> {
        serde_json::from_slice(body).map_err(|e| {
            Error::backend(
                BACKEND,
                format!("Consul at {} answered {what} with something else ({e}): {}", self.endpoint, text(body)),
            )
            .into()
        })
    }

    /// Creates a TTL session (no node checks) whose keys are released when it ends.
    pub(crate) async fn create_session(&self, name: &str, ttl: Duration, lock_delay: Duration) -> Answer<String> {
        let spec = serde_json::json!({
            "Name": name,
            "TTL": format!("{}s", ttl.as_secs_f64()),
            "LockDelay": format!("{}ms", lock_delay.as_millis()),
            "Behavior": "release",
            "NodeChecks": [],
        });
        let (_, body, _) =
            self.call(Method::PUT, "/v1/session/create", &[], spec.to_string().into_bytes(), Duration::ZERO).await?;
        Ok(self.parse::<Created>("a session", &body)?.id)
    }

    /// Renews a session: the TTL Consul answers (it may be larger than asked), `None` if gone.
    pub(crate) async fn renew_session(&self, id: &str) -> Answer<Option<Duration>> {
        let (status, body, _) =
            self.call(Method::PUT, &format!("/v1/session/renew/{id}"), &[], Vec::new(), Duration::ZERO).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let renewed: Vec<Renewed> = self.parse("a session renewal", &body)?;
        let ttl = renewed.first().and_then(|r| lockkit_core::parse_duration(&r.ttl).ok()).unwrap_or_default();
        Ok(Some(ttl))
    }

    pub(crate) async fn destroy_session(&self, id: &str) -> Answer<()> {
        self.call(Method::PUT, &format!("/v1/session/destroy/{id}"), &[], Vec::new(), Duration::ZERO).await.map(drop)
    }

    /// `PUT ?acquire=` (`release = false`) or `?release=`: whether it took.
    pub(crate) async fn lock(&self, key: &str, session: &str, release: bool, value: &[u8], flags: u64) -> Answer<bool> {
        let verb = if release { "release" } else { "acquire" };
        let query = [(verb, session.to_owned()), ("flags", flags.to_string())];
        let (status, body, _) =
            self.call(Method::PUT, &format!("/v1/kv/{}", path_of(key)), &query, value.to_vec(), Duration::ZERO).await?;
        if status == StatusCode::NOT_FOUND {
            return Err(Error::backend(BACKEND, format!("Consul at {} has no KV endpoint (404)", self.endpoint)).into());
        }
        self.parse(&format!("the {verb} of {key}"), &body)
    }

    /// Rewrites the value of `key` only while `session` holds it: one transaction, a
    /// `check-session` then a `lock` (which, by the holding session, keeps the lock and its
    /// lock index). The entry's new `ModifyIndex`, or `None` when the session no longer holds
    /// the key (nothing was written).
    pub(crate) async fn relock(&self, key: &str, session: &str, value: &[u8], flags: u64) -> Answer<Option<u64>> {
        let value = base64::engine::general_purpose::STANDARD.encode(value);
        let ops = serde_json::json!([
            {"KV": {"Verb": "check-session", "Key": key, "Session": session}},
            {"KV": {"Verb": "lock", "Key": key, "Value": value, "Flags": flags, "Session": session}},
        ]);
        let (status, body, _) =
            self.call(Method::PUT, "/v1/txn", &[], ops.to_string().into_bytes(), Duration::ZERO).await?;
        if status == StatusCode::CONFLICT {
            return Ok(None);
        }
        if status == StatusCode::NOT_FOUND {
            return Err(
                Error::backend(BACKEND, format!("Consul at {} has no /v1/txn endpoint (404)", self.endpoint)).into()
            );
        }
        let answer: TxnAnswer = self.parse(&format!("the rewrite of {key}"), &body)?;
        match answer.results.as_deref().and_then(<[TxnResult]>::last) {
            Some(TxnResult { kv: Some(entry) }) => Ok(Some(entry.modify_index)),
            _ => Err(Error::backend(
                BACKEND,
                format!("Consul at {} answered the rewrite of {key} without its entry: {}", self.endpoint, text(&body)),
            )
            .into()),
        }
    }

    /// Reads a key (a blocking query when `blocking` is given): the entry, if any, and the index.
    pub(crate) async fn get(&self, key: &str, blocking: Option<Blocking>) -> Answer<(Option<Entry>, u64)> {
        let mut query = Vec::new();
        let mut wait = Duration::ZERO;
        if let Some(b) = blocking {
            wait = b.wait;
            query.push(("index", b.index.to_string()));
            query.push(("wait", format!("{}ms", b.wait.as_millis())));
        }
        let (status, body, index) =
            self.call(Method::GET, &format!("/v1/kv/{}", path_of(key)), &query, Vec::new(), wait).await?;
        let Some(index) = index else {
            return Err(Error::backend(
                BACKEND,
                format!("Consul at {} answered a read without X-Consul-Index: {}", self.endpoint, text(&body)),
            )
            .into());
        };
        // An index of 0 would make every blocking query return at once: Consul's docs say to use 1.
        let index = index.max(1);
        if status == StatusCode::NOT_FOUND {
            return Ok((None, index));
        }
        let entries: Vec<Entry> = self.parse(&format!("the read of {key}"), &body)?;
        Ok((entries.into_iter().next(), index))
    }
}

/// A server's answer, shortened for a message.
fn text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text.to_owned()
    }
}
