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
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, ScriptInvocation, Value};

/// The connection the scripts go through.
#[derive(Clone)]
pub enum Link {
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
pub struct Instance {
    /// `host:port` (the seed nodes, for a cluster), for messages (never with credentials).
    pub address: String,
    /// `redis`, `redlock` or `redis-cluster`, for messages.
    pub backend: &'static str,
    link: Link,
    /// Bound on each call (Redlock keeps it small, so one dead instance does not stall a grant).
    timeout: Duration,
}

impl Instance {
    /// A lazily connecting single server; nothing is sent yet.
    pub fn server(
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
        Ok(Instance { address, backend, link: Link::Server(connection), timeout })
    }

    /// A whole cluster through one (connected) cluster connection.
    pub fn cluster(backend: &'static str, address: String, connection: ClusterConnection, timeout: Duration) -> Self {
        Instance { address, backend, link: Link::Cluster(connection), timeout }
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT), bounded by the call timeout.
    pub async fn run<T: FromRedisValue>(&self, invocation: ScriptInvocation<'_>) -> Result<T, Error> {
        self.run_ref(&invocation).await
    }

    async fn run_ref<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Result<T, Error> {
        let mut link = self.link.clone();
        self.bounded(async move { invocation.invoke_async(&mut link).await }).await
    }

    /// Runs invocations of one script, the i-th on `keys[i]` (its first key), in one
    /// pipelined round trip. A cluster pipeline goes to one node, so there it is one pipeline
    /// per slot, all at once.
    pub async fn run_many(
        &self,
        script: &redis::Script,
        invocations: &[ScriptInvocation<'_>],
        keys: &[&str],
    ) -> Result<Vec<i64>, Error> {
        if let Link::Server(_) = self.link {
            return self.pipeline(script, invocations.iter()).await;
        }
        let mut slots: HashMap<Slot, Vec<usize>> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            slots.entry(Slot::for_key(key)).or_default().push(i);
        }
        let groups: Vec<Vec<usize>> = slots.into_values().collect();
        let replies = join_all(groups.iter().map(|group| async move {
            match group.as_slice() {
                // EVALSHA, with a SCRIPT LOAD only on NOSCRIPT.
                [one] => self.run_ref::<i64>(&invocations[*one]).await.map(|reply| vec![reply]),
                _ => self.pipeline(script, group.iter().map(|i| &invocations[*i])).await,
            }
        }))
        .await;
        let mut results = vec![0; invocations.len()];
        for (group, reply) in groups.iter().zip(replies) {
            for (i, value) in group.iter().zip(reply?) {
                results[*i] = value;
            }
        }
        Ok(results)
    }

    /// A pipeline that loads the script, then runs the invocations.
    async fn pipeline<'a>(
        &self,
        script: &redis::Script,
        invocations: impl Iterator<Item = &'a ScriptInvocation<'a>>,
    ) -> Result<Vec<i64>, Error> {
        let mut pipe = redis::pipe();
        pipe.load_script(script).ignore();
        for invocation in invocations {
            pipe.invoke_script(invocation);
        }
        let mut link = self.link.clone();
        self.bounded(async move { pipe.query_async(&mut link).await }).await
    }

    /// Checks that the server (every cluster master) answers and accepts the credentials.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut link = self.link.clone();
        self.bounded(async move { redis::cmd("PING").query_async::<()>(&mut link).await }).await
    }

    async fn bounded<T>(&self, call: impl Future<Output = Result<T, RedisError>>) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| error(self.backend, &self.address, e)),
            Err(_) => Err(timed_out(self.backend, &self.address, self.timeout)),
        }
    }
}

fn timed_out(backend: &'static str, address: &str, timeout: Duration) -> Error {
    Error::connection(
        backend,
        address,
        format!("no answer within {timeout:?}; is the server up and the `timeout` option long enough?"),
        None,
    )
}

/// Maps a client error: authentication, connection trouble, or what the server answered.
pub fn error(backend: &'static str, address: &str, e: RedisError) -> Error {
    let auth =
        e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
    if auth {
        return Error::Authentication { backend, endpoint: address.to_owned(), message: e.to_string() };
    }
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        return Error::connection(backend, address, format!("{e}; is the server up?"), Some(Box::new(e)));
    }
    let cluster = backend == crate::CLUSTER;
    let hint = match e.code() {
        Some("MOVED" | "ASK" | "CLUSTERDOWN") if !cluster => {
            "; the server is a Redis Cluster node: connect with redis-cluster://host:port,…"
        }
        _ => "",
    };
    // A cluster in the middle of a failover or a slot move answers these for a while.
    let temporary = matches!(e.code(), Some("TRYAGAIN" | "LOADING" | "MASTERDOWN"))
        || cluster && matches!(e.code(), Some("MOVED" | "ASK" | "CLUSTERDOWN"));
    Error::Backend {
        backend,
        message: format!("redis at {address} answered: {e}{hint}"),
        temporary,
        source: Some(Box::new(e)),
    }
}
