//! Where the fleet's Redis is: one server (a `ConnectionManager` that reconnects), or a Redis
//! Cluster found from its seed nodes (redis-rs's cluster client, which follows the slot map and
//! its `MOVED` answers). Either way a caller gets one `Conn` and sends commands on it; which node
//! serves a command is the cluster client's business, decided by the command's first key.
//!
//! Each call the fleet makes holds the keys of one hash tag only (one proxyguard key's, one
//! client address's, or the key state's `{fleet}`), so each goes to one slot: a Cluster serves
//! them as one server does.
//!
//! Whether Redis answers again (`Conn::probe`) is a `PING` to the server, or on a Cluster to the
//! primary of every slot: a fan-out `PING` would leave out a node whose connection is gone (the
//! cluster client skips it), and so call a cluster with a primary down healthy.

use std::time::Duration;

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value,
};

/// How long a new connection may take; a request never waits on it (the breaker answers first).
const CONNECT: Duration = Duration::from_millis(500);

/// How to make a connection.
pub enum Backend {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        client: ClusterClient,
        config: ClusterConfig,
    },
}

impl Backend {
    /// One server at `url`, or (`seeds` not empty) a Cluster found from `seeds`; `timeout` is
    /// how long a command's answer may take.
    pub fn new(
        url: &str,
        seeds: &[String],
        password: Option<&str>,
        timeout: Duration,
    ) -> RedisResult<Backend> {
        if !seeds.is_empty() {
            let nodes = seeds
                .iter()
                .map(|seed| seed.as_str().into_connection_info())
                .collect::<RedisResult<Vec<_>>>()?;
            let mut builder = ClusterClient::builder(nodes)
                // One retry (a `MOVED` after a resharding is followed, not counted as one):
                // the request's own timeout bounds the rest.
                .retries(1);
            if let Some(password) = password {
                builder = builder.password(password);
            }
            let config = ClusterConfig::new()
                .set_connection_timeout(CONNECT)
                .set_response_timeout(timeout);
            return Ok(Backend::Cluster {
                client: builder.build()?,
                config,
            });
        }
        let mut info = url.into_connection_info()?;
        if let Some(password) = password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(CONNECT))
            .set_number_of_retries(1)
            .set_max_delay(CONNECT);
        Ok(Backend::Single {
            client: redis::Client::open(info)?,
            config,
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster { .. })
    }

    /// A connection that connects on its first command (Redis may be down now). Call it within
    /// the tokio runtime that will drive it.
    pub fn connect_lazily(&self) -> RedisResult<Conn> {
        Ok(match self {
            Backend::Single { client, config } => Conn::Single(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
            ),
            Backend::Cluster { client, config } => {
                Conn::Cluster(client.get_pending_async_connection_with_config(config.clone()))
            }
        })
    }
}

/// A connection to the fleet's Redis, whichever kind.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Whether every node the fleet's calls may reach answers: the server, or each slot's
    /// primary in the Cluster's own slot map (`CLUSTER SLOTS` from any node).
    pub async fn probe(&mut self) -> RedisResult<()> {
        let conn = match self {
            Conn::Single(conn) => return redis::cmd("PING").query_async(conn).await,
            Conn::Cluster(conn) => conn,
        };
        let any = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let slots = conn
            .route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), any)
            .await?;
        let primaries = primaries(&slots);
        if primaries.is_empty() {
            return Err((
                ErrorKind::ClusterConnectionNotFound,
                "the cluster names no slot's primary",
            )
                .into());
        }
        for (host, port) in primaries {
            let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            conn.route_command(redis::cmd("PING"), node).await?;
        }
        Ok(())
    }
}

/// Each slot range's primary (`host`, `port`) in a `CLUSTER SLOTS` answer: per range
/// `[from, to, [host, port, id, ...], replicas...]`.
fn primaries(slots: &Value) -> Vec<(String, u16)> {
    let Value::Array(ranges) = slots else {
        return Vec::new();
    };
    let mut primaries: Vec<(String, u16)> = ranges
        .iter()
        .filter_map(|range| match range {
            Value::Array(range) => match range.get(2)? {
                Value::Array(node) => match (node.first()?, node.get(1)?) {
                    (Value::BulkString(host), Value::Int(port)) => Some((
                        String::from_utf8_lossy(host).into_owned(),
                        u16::try_from(*port).ok()?,
                    )),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect();
    primaries.sort();
    primaries.dedup();
    primaries
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_ranges_primary_is_read_from_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.into()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |from: i64, to: i64, nodes: Vec<Value>| {
            let mut range = vec![Value::Int(from), Value::Int(to)];
            range.extend(nodes);
            Value::Array(range)
        };
        let slots = Value::Array(vec![
            range(
                0,
                5460,
                vec![node("127.0.0.1", 7001), node("127.0.0.1", 7004)],
            ),
            range(5461, 10922, vec![node("127.0.0.1", 7002)]),
            range(10923, 16000, vec![node("127.0.0.1", 7003)]),
            // Two ranges of one primary count once.
            range(16001, 16383, vec![node("127.0.0.1", 7001)]),
        ]);
        assert_eq!(
            primaries(&slots),
            [
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".into(), 7002),
                ("127.0.0.1".into(), 7003)
            ]
        );
        assert!(primaries(&Value::Nil).is_empty());
        assert!(primaries(&Value::Array(vec![range(0, 1, vec![])])).is_empty());
    }
}
