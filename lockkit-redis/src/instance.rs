//! One place the scripts run: a single Redis server (a reconnecting connection) or a whole
//! Redis Cluster (a connection that follows the slots, MOVED and ASK). Calls are bounded, and
//! errors mapped to lockkit's.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use lockkit_core::Error;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, ScriptInvocation, Value};

use crate::error::error;
use crate::version;

/// The connection the scripts go through.
#[derive(Clone)]
pub(crate) enum Link {
    /// One server, reconnected in the background.
    Server(ConnectionManager),
    /// A cluster: each command goes to the master of its first key's slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Server(connection) => connection.req_packed_command(cmd),
            Link::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Server(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Server(connection) => connection.get_db(),
            Link::Cluster(connection) => connection.get_db(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Instance {
    /// `host:port` (the seed nodes, for a cluster), for messages (never with credentials).
    pub(crate) address: String,
    /// `redis`, `redlock` or `redis-cluster`, for messages.
    pub(crate) backend: &'static str,
    link: Link,
    /// Bound on each call (Redlock keeps it small, so one dead instance does not stall a grant).
    timeout: Duration,
    /// Bound on the check at connect, which also sets the connection up: several round trips.
    connect_timeout: Duration,
}

impl Instance {
    /// A lazily connecting single server; nothing is sent yet.
    pub(crate) fn server(
        backend: &'static str,
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
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| error(backend, &address, e))?;
        Ok(Instance { address, backend, link: Link::Server(connection), timeout, connect_timeout })
    }

    /// A whole cluster through one (connected) cluster connection.
    pub(crate) fn cluster(
        backend: &'static str,
        address: String,
        connection: ClusterConnection,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        Instance { address, backend, link: Link::Cluster(connection), timeout, connect_timeout }
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT), bounded by the call timeout. Another
    /// client's `SCRIPT FLUSH` can land between the load and the retried EVALSHA: that NOSCRIPT
    /// is retried too (the script never ran), a few times.
    pub(crate) async fn run<T: FromRedisValue>(&self, invocation: ScriptInvocation<'_>) -> Result<T, Error> {
        let link = self.link.clone();
        let call = async {
            let mut tries = 0;
            loop {
                match invocation.invoke_async(&mut link.clone()).await {
                    Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) && tries < 4 => {
                        tries += 1
                    }
                    other => return other,
                }
            }
        };
        self.bounded(call).await.map_err(|e| error(self.backend, &self.address, e))
    }

    /// Runs invocations of one script, the i-th on `keys[i]` (its first key), in one
    /// pipelined round trip. `Err` when nothing was answered; otherwise each invocation's own
    /// answer, an error reply (say WRONGTYPE, for a key another client replaced) failing only
    /// its own. A cluster pipeline goes to one node, so there it is one pipeline per slot, all
    /// at once, and a slot without an answer fails only its own invocations.
    pub(crate) async fn run_many(
        &self,
        script: &redis::Script,
        invocations: &[ScriptInvocation<'_>],
        keys: &[&str],
    ) -> Result<Vec<RedisResult<i64>>, Error> {
        if let Link::Server(_) = self.link {
            let all = self.pipeline(script, invocations.iter()).await;
            return all.map_err(|e| error(self.backend, &self.address, e));
        }
        let mut slots: HashMap<Slot, Vec<usize>> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            slots.entry(Slot::for_key(key)).or_default().push(i);
        }
        let groups: Vec<Vec<usize>> = slots.into_values().collect();
        let replies = join_all(groups.iter().map(|group| async move {
            match group.as_slice() {
                // EVALSHA, with a SCRIPT LOAD only on NOSCRIPT.
                [one] => {
                    let mut link = self.link.clone();
                    Ok(vec![self.bounded(invocations[*one].invoke_async(&mut link)).await])
                }
                _ => self.pipeline(script, group.iter().map(|i| &invocations[*i])).await,
            }
        }))
        .await;
        let mut results: Vec<RedisResult<i64>> = (0..invocations.len()).map(|_| Ok(0)).collect();
        for (group, reply) in groups.iter().zip(replies) {
            match reply {
                Ok(values) => group.iter().zip(values).for_each(|(i, value)| results[*i] = value),
                Err(e) => group.iter().for_each(|i| results[*i] = Err(e.clone())),
            }
        }
        Ok(results)
    }

    /// A pipeline that loads the script, then runs the invocations, each answer its own.
    async fn pipeline<'a>(
        &self,
        script: &redis::Script,
        invocations: impl Iterator<Item = &'a ScriptInvocation<'a>>,
    ) -> RedisResult<Vec<RedisResult<i64>>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().load_script(script).ignore();
        for invocation in invocations {
            pipe.invoke_script(invocation);
        }
        let mut link = self.link.clone();
        self.bounded(async move { pipe.query_async(&mut link).await }).await
    }

    /// Checks that the server answers, accepts the credentials and is recent enough for the
    /// scripts ([`version::MINIMUM`]; on a cluster, every master, and 7.0 for sharded pub/sub).
    /// A user not allowed `INFO` skips the version check.
    pub(crate) async fn check(&self) -> Result<(), Error> {
        let mut link = self.link.clone();
        let cluster = matches!(link, Link::Cluster(_));
        let info = async {
            redis::cmd("PING").query_async::<()>(&mut link).await?;
            // A cluster answers INFO from every master: address → text.
            let info = match cluster {
                true => redis::cmd("INFO").arg("server").query_async::<HashMap<String, String>>(&mut link).await,
                false => redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut link)
                    .await
                    .map(|info| HashMap::from([(self.address.clone(), info)])),
            };
            match info {
                Err(e) if e.code().is_some() => {
                    tracing::debug!(address = %self.address, error = %e, "INFO refused; the server version is not checked");
                    Ok(HashMap::new())
                }
                other => other,
            }
        };
        // Connection setup, PING and INFO are round trips one after the other: bounded by the
        // connect timeout, not by one call's (Redlock's is TTL / 10).
        let limit = self.connect_timeout.max(self.timeout);
        let infos = bounded(limit, info).await.map_err(|e| error(self.backend, &self.address, e))?;
        for (address, info) in &infos {
            version::check(info, address)?;
            if cluster {
                crate::cluster::check_version(info, address)?;
            }
        }
        Ok(())
    }

    /// `call`, failing with a timeout error after the call timeout.
    async fn bounded<T>(&self, call: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
        bounded(self.timeout, call).await
    }
}

/// `call`, failing with a timeout error after `limit`.
async fn bounded<T>(limit: Duration, call: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?} (the `timeout` option)"),
        ))),
    }
}
