//! Getting a connection to Redis, and getting the tier back up after a failure.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::RedisTier;

/// Where commands go: one node, or a Redis Cluster (which follows `MOVED`/`ASK` and
/// failovers by itself). Both multiplex and clone cheaply.
#[derive(Clone)]
pub(crate) enum Conn {
    /// A single node, reconnected by the manager.
    Single(ConnectionManager),
    /// A cluster, routed by key slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The clients the tier connects with.
pub(crate) enum Clients {
    /// One node.
    Single(redis::Client),
    /// A cluster, and a client per seed node for the purge channel.
    Cluster(redis::cluster::ClusterClient),
}

impl RedisTier {
    /// Connects (retrying with backoff) and then keeps probing while the tier is down.
    pub async fn connect(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut delay = Duration::from_millis(100);
        loop {
            let attempt = tokio::select! {
                r = self.open() => r,
                _ = stop.changed() => return,
            };
            match attempt {
                Ok(conn) => {
                    let _ = self.conn.set(conn);
                    self.mark_up();
                    break;
                }
                Err(e) => {
                    if delay == Duration::from_millis(100) {
                        tracing::warn!(error = %e, "redis unreachable: serving from memory tier and origin until it answers");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.probe_while_down(stop).await;
    }

    async fn probe_while_down(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            // Up with purges still queued: one failed after the last replay had emptied the
            // queue, and it must reach Redis too.
            if self.is_up() && !self.has_pending() {
                continue;
            }
            let Some(mut conn) = self.conn.get().cloned() else {
                continue;
            };
            let ping = tokio::time::timeout(self.timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await;
            if matches!(ping, Ok(Ok(_))) && self.replay_pending(conn).await {
                self.mark_up();
            }
        }
    }

    /// While the tier is marked down, a purge does not wait for the probe: it tries a fresh
    /// connection at once (a writer must not miss a Redis that is already back while other
    /// instances use it), replaying the purges Redis has not recorded yet.
    /// A new connection: the manager for a node, the routing connection for a cluster.
    async fn open(&self) -> redis::RedisResult<Conn> {
        match &self.clients {
            Clients::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_response_timeout(self.timeout)
                    .set_connection_timeout(self.timeout.max(Duration::from_secs(1)))
                    .set_number_of_retries(2)
                    .set_max_delay(1000);
                client.get_connection_manager_with_config(cfg).await.map(Conn::Single)
            }
            Clients::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    pub(super) async fn reach_directly(&self) -> bool {
        let conn = match &self.clients {
            Clients::Single(client) => {
                match tokio::time::timeout(self.timeout, client.get_multiplexed_async_connection()).await {
                    Ok(Ok(c)) => return self.replay_pending(c).await,
                    _ => return false,
                }
            }
            // The cluster connection reconnects by itself: use it.
            Clients::Cluster(_) => self.conn.get().cloned(),
        };
        match conn {
            Some(c) => self.replay_pending(c).await,
            None => false,
        }
    }
}
