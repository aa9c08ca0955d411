//! `redis-cluster://`: a Redis Cluster reached through its seed nodes, with the `redis`
//! crate's cluster client. It learns the slots from the seeds, sends each script to the master
//! of its first key's slot, follows MOVED and ASK, and refreshes the slots after a failover.
//! Wake-ups use sharded pub/sub (RESP3 pushes on the same connection), so a release reaches
//! only the shard of its lock.

use lockkit_core::Error;
use redis::cluster::ClusterClientBuilder;
use redis::{IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo, TlsCertificates};

use crate::CLUSTER;
use crate::config::RedisConfig;
use crate::error::{Cause, Failure, error};
use crate::instance::Instance;
use crate::wakeups::Feed;

/// Connects to the cluster the config's servers seed: the instance the scripts run on, and the
/// feed of its sharded messages. Fails when no seed answers, or when a seed is not a cluster
/// node.
pub(crate) async fn connect(
    config: &RedisConfig,
    settings: &RedisConnectionInfo,
    certificates: Option<TlsCertificates>,
) -> Result<(Instance, Feed), Error> {
    let (connect_timeout, call_timeout) = (config.settings.timeout, config.call_timeout);
    let address = config.endpoints();
    let mut seeds = Vec::new();
    for host in &config.servers {
        let info = config.connection_addr(host).into_connection_info().map_err(|e| error(CLUSTER, &address, e))?;
        seeds.push(info.set_redis_settings(settings.clone()));
    }
    let (pushes, feed) = tokio::sync::mpsc::unbounded_channel();
    let mut builder = ClusterClientBuilder::new(seeds)
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(pushes)
        .connection_timeout(connect_timeout)
        .response_timeout(call_timeout)
        // Redirects and a failover are retried quickly, within the call timeout (the default
        // waits over a second before its first retry).
        .retries(8)
        .min_retry_wait(10)
        .max_retry_wait(200);
    if let Some(certificates) = certificates {
        builder = builder.certs(certificates);
    }
    let client = builder.build().map_err(|e| error(CLUSTER, &address, e))?;
    let connection = match tokio::time::timeout(connect_timeout, client.get_async_connection()).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => match Failure::classify(CLUSTER, &address, e) {
            failure if failure.cause == Cause::NotACluster => {
                return Err(config.invalid(format!(
                    "{address} is not a Redis Cluster node (its cluster support is disabled); \
                     for a single server use redis://host:port"
                )));
            }
            failure => return Err(failure.into()),
        },
        Err(_) => {
            return Err(Error::connection(
                CLUSTER,
                address,
                format!("no seed node gave the cluster's slots within {connect_timeout:?}; are the nodes up?"),
                None,
            ));
        }
    };
    Ok((
        Instance::cluster(CLUSTER, address, connection.clone(), connect_timeout, call_timeout),
        Feed::Cluster(connection, feed),
    ))
}

/// Redis 7.0: wake-ups on a cluster use sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`).
const MINIMUM: (u32, u32, u32) = (7, 0, 0);

/// Checks that the cluster node at `address` (its `INFO server`) has sharded pub/sub.
pub(crate) fn check_version(info: &str, address: &str) -> Result<(), Error> {
    match crate::version::version(info) {
        Some((field, found)) if found < MINIMUM => Err(Error::backend(
            CLUSTER,
            format!(
                "redis at {address} is version {field}, and redis-cluster:// needs 7.0 or later (its wake-ups use \
                 sharded pub/sub, SSUBSCRIBE and SPUBLISH); upgrade the cluster"
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_need_sharded_pubsub() {
        let info = |version: &str| format!("# Server\r\nredis_version:{version}\r\nredis_mode:cluster\r\n");
        for version in ["7.0.0", "7.0.15", "7.2.4", "8.0.1"] {
            assert!(check_version(&info(version), "127.0.0.1:7000").is_ok(), "{version}");
        }
        for version in ["6.2.14", "5.0.14"] {
            let err = check_version(&info(version), "127.0.0.1:7000").unwrap_err().to_string();
            assert!(err.contains(version) && err.contains("needs 7.0") && err.contains("SSUBSCRIBE"), "{err}");
        }
    }
}
