//! One Redis server: a reconnecting connection, bounded calls, and errors mapped to lockkit's.

use std::time::Duration;

use lockkit_core::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, RedisError, RedisResult, ScriptInvocation};

use crate::{BACKEND, version};

#[derive(Clone)]
pub struct Instance {
    /// `host:port`, for messages (never with credentials).
    pub address: String,
    pub client: redis::Client,
    connection: ConnectionManager,
    /// Bound on each call (Redlock keeps it small, so one dead instance does not stall a grant).
    timeout: Duration,
    /// Bound on the check at connect, which also sets the connection up: several round trips.
    connect_timeout: Duration,
}

impl Instance {
    /// A lazily connecting instance; nothing is sent yet.
    pub fn new(
        address: String,
        client: redis::Client,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| error(&address, e))?;
        Ok(Instance { address, client, connection, timeout, connect_timeout })
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT), bounded by the call timeout. Another
    /// client's `SCRIPT FLUSH` can land between the load and the retried EVALSHA: that NOSCRIPT
    /// is retried too (the script never ran), a few times.
    pub async fn run<T: FromRedisValue>(&self, invocation: ScriptInvocation<'_>) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        let call = async {
            let mut tries = 0;
            loop {
                match invocation.invoke_async(&mut connection).await {
                    Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) && tries < 4 => {
                        tries += 1
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| error(&self.address, e)),
            Err(_) => Err(timed_out(&self.address, self.timeout)),
        }
    }

    /// Runs a pipeline of invocations of one script in one round trip. `Err` when the
    /// pipeline got no answer; otherwise each invocation's own answer, an error reply (say
    /// WRONGTYPE, for a key another client replaced) failing only its own.
    pub async fn run_many(
        &self,
        script: &redis::Script,
        invocations: &[ScriptInvocation<'_>],
    ) -> Result<Vec<RedisResult<i64>>, Error> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().load_script(script).ignore();
        for invocation in invocations {
            pipe.invoke_script(invocation);
        }
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async(&mut connection)).await {
            Ok(result) => result.map_err(|e| error(&self.address, e)),
            Err(_) => Err(timed_out(&self.address, self.timeout)),
        }
    }

    /// Checks that the server answers, accepts the credentials and is recent enough for the
    /// scripts ([`version::MINIMUM`]). A user not allowed `INFO` skips the version check.
    pub async fn check(&self) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let info = async {
            redis::cmd("PING").query_async::<()>(&mut connection).await?;
            match redis::cmd("INFO").arg("server").query_async::<String>(&mut connection).await {
                Err(e) if e.code().is_some() => {
                    tracing::debug!(address = %self.address, error = %e, "INFO refused; the server version is not checked");
                    Ok(None)
                }
                other => other.map(Some),
            }
        };
        // Connection setup, PING and INFO are round trips one after the other: bounded by the
        // connect timeout, not by one call's (Redlock's is TTL / 10).
        match tokio::time::timeout(self.connect_timeout.max(self.timeout), info).await {
            Ok(Ok(Some(info))) => version::check(&info, &self.address),
            Ok(Ok(None)) => Ok(()),
            Ok(Err(e)) => Err(error(&self.address, e)),
            Err(_) => Err(timed_out(&self.address, self.connect_timeout.max(self.timeout))),
        }
    }
}

fn timed_out(address: &str, timeout: Duration) -> Error {
    Error::connection(
        BACKEND,
        address,
        format!("no answer within {timeout:?}; is the server up and the `timeout` option long enough?"),
        None,
    )
}

/// Maps a client error: authentication, connection trouble, or what the server answered.
pub fn error(address: &str, e: RedisError) -> Error {
    let auth =
        e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
    if auth {
        return Error::Authentication { backend: BACKEND, endpoint: address.to_owned(), message: e.to_string() };
    }
    if e.code() == Some("BADFENCE") {
        let detail = e.detail().unwrap_or("its fencing counter holds garbage");
        return Error::backend(BACKEND, format!("redis at {address} refused the grant: {detail}"));
    }
    // A server busy with a long script, loading its data, or without its master: it passes.
    if matches!(e.code(), Some("BUSY" | "LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN")) {
        return Error::Backend {
            backend: BACKEND,
            message: format!("redis at {address} answered: {e}; this passes, try again"),
            temporary: true,
            source: Some(Box::new(e)),
        };
    }
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        return Error::connection(BACKEND, address, format!("{e}; is the server up?"), Some(Box::new(e)));
    }
    Error::Backend {
        backend: BACKEND,
        message: format!("redis at {address} answered: {e}"),
        temporary: false,
        source: Some(Box::new(e)),
    }
}
