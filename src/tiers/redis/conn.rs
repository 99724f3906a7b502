//! Getting a connection to Redis, and getting the tier back up after a failure.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

use super::RedisTier;

impl RedisTier {
    /// Connects (retrying with backoff) and then keeps probing while the tier is down.
    pub async fn connect(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut delay = Duration::from_millis(100);
        loop {
            let cfg = ConnectionManagerConfig::new()
                .set_response_timeout(self.timeout)
                .set_connection_timeout(self.timeout.max(Duration::from_secs(1)))
                .set_number_of_retries(2)
                .set_max_delay(1000);
            let attempt = tokio::select! {
                r = self.client.get_connection_manager_with_config(cfg) => r,
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
            if self.is_up() {
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
    pub(super) async fn reach_directly(&self) -> bool {
        let conn = tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection()).await;
        match conn {
            Ok(Ok(c)) => self.replay_pending(c).await,
            _ => false,
        }
    }
}
