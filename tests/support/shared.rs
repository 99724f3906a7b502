//! One Redis-tier test, run against a single node and against a local Redis Cluster: the
//! same assertions, so the cluster is held to everything the single node is.

use super::cluster::RedisCluster;
use super::RedisServer;

/// Which Redis a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    Cluster,
}

/// A running single node or cluster, stopped on drop (by pid).
pub enum SharedRedis {
    Node(RedisServer),
    Cluster(RedisCluster),
}

impl SharedRedis {
    pub async fn start(kind: Kind) -> SharedRedis {
        match kind {
            Kind::Node => SharedRedis::Node(RedisServer::start().await),
            Kind::Cluster => SharedRedis::Cluster(RedisCluster::start().await),
        }
    }

    /// The `redis_url` value (TOML) that names it.
    pub fn url_toml(&self) -> String {
        match self {
            SharedRedis::Node(r) => format!("\"{}\"", r.url()),
            SharedRedis::Cluster(c) => format!("\"{}\"", c.cluster_url()),
        }
    }

    /// `[cache]` lines for a proxy sharing it under `prefix`.
    pub fn cache_toml(&self, prefix: &str) -> String {
        format!("[cache]\nredis_url = {}\nkey_prefix = \"{prefix}\"\n", self.url_toml())
    }

    /// Runs one command where its key lives.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match self {
            SharedRedis::Node(r) => cmd.query_async(&mut r.conn().await.unwrap()).await.unwrap(),
            SharedRedis::Cluster(c) => {
                let mut conn = c.client().get_async_connection().await.unwrap();
                cmd.query_async(&mut conn).await.unwrap()
            }
        }
    }

    /// Closes every pub/sub connection on every node (`CLIENT KILL TYPE pubsub`); returns how
    /// many were closed.
    pub async fn kill_pubsub_clients(&self) -> i64 {
        let mut killed = 0;
        for port in self.ports() {
            let mut conn = node_conn(port).await;
            killed += redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async::<i64>(&mut conn)
                .await
                .unwrap();
        }
        killed
    }

    fn ports(&self) -> Vec<u16> {
        match self {
            SharedRedis::Node(r) => vec![r.port],
            SharedRedis::Cluster(c) => c.nodes().iter().filter(|n| n.is_running()).map(|n| n.port).collect(),
        }
    }

    /// Calls of `command` (lower case, e.g. `get`, `evalsha`) every node has served so far.
    pub async fn calls(&self, command: &str) -> u64 {
        let mut total = 0;
        for port in self.ports() {
            let mut conn = node_conn(port).await;
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn)
                .await
                .unwrap();
            total += calls_in(&info, command);
        }
        total
    }
}

async fn node_conn(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `cmdstat_<command>:calls=N,…` from `INFO commandstats`.
fn calls_in(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs each named `async fn name(kind: Kind)` as two tests, `name::single_node` and
/// `name::cluster`.
#[macro_export]
macro_rules! on_node_and_cluster {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn single_node() {
                    super::$name(super::support::shared::Kind::Node).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$name(super::support::shared::Kind::Cluster).await
                }
            }
        )*
    };
}
