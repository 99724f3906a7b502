//! Keeping every instance's memory tier as fresh as Redis, without a Redis round trip per hit.
//!
//! * Every purge is published on `{prefix}:_purge`; each instance bumps its local scope counters
//!   when it hears one and acknowledges it on the purger's `{prefix}:_ack:{id}` channel.
//! * Each instance publishes a heartbeat to its own `{prefix}:_hb:{id}` channel every 100 ms,
//!   stamped with its own monotonic send time. Pub/sub delivers in Redis order, so hearing a
//!   heartbeat sent at `S` means every purge published before `S` has been heard too: memory
//!   hits are trusted until `S + LEASE`. A paused or partitioned instance stops trusting its
//!   memory tier by itself, and old buffered heartbeats cannot extend the lease past their send
//!   time.
//! * A purge waits for every other subscriber's ack, or at most `LEASE`, after which any instance
//!   that did not ack has stopped trusting its memory.
//! * After a subscription drop, the whole memory tier is invalidated (one bump of `all`): messages
//!   may have been missed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::scope::{CounterMirror, Generations, ALL};
use crate::tiers::redis::RedisTier;

/// How long a heard heartbeat keeps the memory tier trusted.
pub const LEASE: Duration = Duration::from_millis(500);
const HEARTBEAT: Duration = Duration::from_millis(100);

/// This instance's side of the protocol.
pub struct Coherence {
    id: u64,
    base: Instant,
    /// Nanoseconds since `base` until which memory hits are trusted.
    lease_until: AtomicU64,
    subscribed: AtomicBool,
    subscriptions: AtomicU64,
    next_purge: AtomicU64,
    pending: Mutex<HashMap<u64, watch::Sender<usize>>>,
    redis: Arc<RedisTier>,
    generations: Arc<Generations>,
    mirror: Arc<CounterMirror>,
    channel: String,
    /// Other instances heard from on the purge channels, for the status page.
    peers: Mutex<HashMap<u64, Peer>>,
}

/// Another instance as this one has heard it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer {
    /// When it last acknowledged one of our purges (Unix seconds).
    pub last_ack_unix: Option<u64>,
    /// When we last heard a purge it published (Unix seconds).
    pub last_purge_unix: Option<u64>,
}

/// Most peers remembered: ids are random per process, so a fleet that restarts often would
/// otherwise grow the table for ever. The least recently heard go first.
const MAX_PEERS: usize = 256;

/// What one shared purge reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    /// Other instances that acknowledged it.
    pub acks: usize,
    /// Other instances it had to reach (registered as live, or subscribed when more).
    pub others: usize,
    /// From publishing to the last acknowledgement, or to the lease running out.
    pub took: Duration,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Coherence {
    /// Protocol state for one instance.
    pub fn new(redis: Arc<RedisTier>, generations: Arc<Generations>) -> Arc<Self> {
        let channel = redis.keys().purge_channel().to_string();
        Arc::new(Coherence {
            id: rand::random(),
            base: Instant::now(),
            lease_until: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            subscriptions: AtomicU64::new(0),
            next_purge: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            redis,
            generations,
            mirror: Arc::default(),
            channel,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// This instance's id on the purge channels.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Other instances heard from, by id.
    pub fn peers(&self) -> Vec<(u64, Peer)> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(u64, Peer)> = peers.iter().map(|(id, p)| (*id, *p)).collect();
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }

    fn heard_from(&self, id: u64, update: impl FnOnce(&mut Peer)) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if !peers.contains_key(&id) && peers.len() >= MAX_PEERS {
            let last_heard = |p: &Peer| p.last_ack_unix.max(p.last_purge_unix);
            if let Some(oldest) = peers.iter().min_by_key(|(_, p)| last_heard(p)).map(|(id, _)| *id) {
                peers.remove(&oldest);
            }
        }
        update(peers.entry(id).or_default());
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Redis' counters as this instance knows them, kept by the purge channel.
    pub(crate) fn mirror(&self) -> &Arc<CounterMirror> {
        &self.mirror
    }

    /// How many times the purge channel has been (re)subscribed.
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::Acquire)
    }

    /// Whether memory-tier hits may be served without asking Redis.
    pub fn lease_valid(&self) -> bool {
        self.now_nanos() < self.lease_until.load(Ordering::Acquire)
    }

    /// Sets a once-only marker for `name` across instances; false when it was already set.
    /// An unreachable Redis answers true: the caller's local check still stands.
    pub async fn remember_once(&self, name: &str, ttl: Duration) -> bool {
        !matches!(self.redis.set_once(name, ttl).await, Ok(false))
    }

    /// Records a purge of `scopes` in Redis and publishes it, runs `apply_locally` once Redis
    /// has recorded it (or failed to), then waits until every other instance has acknowledged
    /// it or the lease time has passed. Returns the acks and how long they took.
    ///
    /// Local counters move only after Redis' have and this instance knows their new values:
    /// otherwise a lookup here could, in between, find a purged Redis entry still valid and
    /// keep it in memory under fresh stamps.
    ///
    /// # Errors
    /// The Redis failure; the purge then reached this instance only.
    pub async fn publish_purge(
        &self,
        scopes: &[String],
        soft: bool,
        apply_locally: impl FnOnce(),
    ) -> Result<Propagation, crate::tiers::redis::TierError> {
        let purge_id = self.next_purge.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = watch::channel(0usize);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(purge_id, tx);
        let message = format!("{} {purge_id} {} {}", self.id, u8::from(soft), scopes.join(" "));
        let period = self.mirror.period();
        let published = Instant::now();
        let result = self.redis.purge(scopes, soft, &self.channel, &message, self.id).await;
        match &result {
            // Our own message is not applied when it comes back: learn the values here.
            Ok(receipt) => self.mirror.heard(
                period,
                Some(receipt.epoch),
                soft,
                scopes.iter().map(String::as_str).zip(receipt.values.iter().copied()),
            ),
            // What we knew may now be behind Redis (the purge may have landed there after all).
            Err(_) => self.mirror.forget(),
        }
        apply_locally();
        let acks = match &result {
            Ok(receipt) => {
                let (receivers, registered) = (receipt.receivers, receipt.others);
                // Registered instances that did not receive it (a dropped subscription) never
                // ack: waiting out the lease for them is what fences them.
                let subscribers = receivers.saturating_sub(usize::from(self.subscribed.load(Ordering::Acquire)));
                let others = registered.max(subscribers);
                let _ = tokio::time::timeout(LEASE, rx.wait_for(|n| *n >= others)).await;
                let got = *rx.borrow();
                (got.min(others), others)
            }
            Err(_) => {
                // Nobody can be told. Every other instance heard its last heartbeat before
                // Redis became unreachable to us, so after one lease none of them trusts its
                // memory tier any more (beyond `degraded_memory_ttl`): wait that out.
                tokio::time::sleep(LEASE).await;
                (0, 0)
            }
        };
        let took = published.elapsed();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&purge_id);
        result.map(|_| Propagation {
            acks: acks.0,
            others: acks.1,
            took,
        })
    }

    /// Runs the subscriber (with reconnects) and the heartbeat until `stop`.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let hb = tokio::spawn(self.clone().heartbeat(stop.clone()));
        self.subscribe_loop(stop).await;
        let _ = hb.await;
        self.redis.deregister(self.id).await;
    }

    async fn heartbeat(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let channel = self.redis.keys().heartbeat_channel(self.id);
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if self.subscribed.load(Ordering::Acquire) {
                let _ = self
                    .redis
                    .heartbeat(self.id, LEASE * 2, &channel, &self.now_nanos().to_string())
                    .await;
            }
        }
    }

    async fn subscribe_loop(&self, mut stop: watch::Receiver<bool>) {
        let mut first = true;
        // Connections tried so far: on a cluster each goes to the next seed node.
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            if let Ok(mut pubsub) = self.redis.subscriber(attempt - 1).get_async_pubsub().await {
                let keys = self.redis.keys();
                let ok = pubsub.subscribe(&self.channel).await.is_ok()
                    && pubsub.subscribe(keys.heartbeat_channel(self.id)).await.is_ok()
                    && pubsub.subscribe(keys.ack_channel(self.id)).await.is_ok();
                if ok {
                    if !first {
                        // Messages may have been lost while unsubscribed: forget the memory tier
                        // and what we knew of Redis' counters.
                        self.generations.bump(ALL);
                        self.mirror.forget();
                        tracing::info!("purge channel resubscribed: memory tier dropped");
                    }
                    first = false;
                    self.subscribed.store(true, Ordering::Release);
                    self.subscriptions.fetch_add(1, Ordering::AcqRel);
                    let mut stream = pubsub.into_on_message();
                    loop {
                        let msg = tokio::select! {
                            m = futures_util::StreamExt::next(&mut stream) => m,
                            _ = stop.changed() => return,
                        };
                        let Some(msg) = msg else { break };
                        self.on_message(msg.get_channel_name(), msg.get_payload_bytes());
                    }
                    self.subscribed.store(false, Ordering::Release);
                    self.lease_until.store(0, Ordering::Release);
                    self.mirror.forget();
                    tracing::warn!("purge channel subscription lost; memory hits need Redis until it is back");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn on_message(&self, channel: &str, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else { return };
        if channel == self.channel {
            self.on_purge(text);
        } else if self.redis.keys().is_heartbeat_channel(channel) {
            if let Ok(sent) = text.parse::<u64>() {
                let until = sent + LEASE.as_nanos() as u64;
                let held = self.lease_until.load(Ordering::Acquire);
                if held <= self.now_nanos() && until > held {
                    // A new lease after a lapse (Redis down, a failover, a pause): a purge may
                    // have been published and never delivered (a master that died before the
                    // cluster bus passed its message on), and a heartbeat from a new master
                    // proves nothing about the old one's. Forget what we knew of the counters
                    // and the memory tier before trusting either again.
                    self.mirror.forget();
                    self.generations.bump(ALL);
                }
                self.lease_until.fetch_max(until, Ordering::AcqRel);
            }
        } else {
            // `purge_id acker_id`; an acker from before receipts sends the purge id alone.
            let mut parts = text.split(' ');
            let Some(Ok(purge_id)) = parts.next().map(str::parse::<u64>) else {
                return;
            };
            if let Some(tx) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).get(&purge_id) {
                tx.send_modify(|n| *n += 1);
            }
            if let Some(Ok(acker)) = parts.next().map(str::parse::<u64>) {
                self.heard_from(acker, |p| p.last_ack_unix = Some(unix_now()));
            }
        }
    }

    fn on_purge(&self, text: &str) {
        let period = self.mirror.period();
        let (head, values) = text.split_once(" | ").unwrap_or((text, ""));
        let mut parts = head.split(' ');
        let (Some(from), Some(purge_id), Some(soft)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if from == self.id.to_string() {
            return;
        }
        if let Ok(from) = from.parse::<u64>() {
            self.heard_from(from, |p| p.last_purge_unix = Some(unix_now()));
        }
        let scopes: Vec<&str> = parts.filter(|s| !s.is_empty()).collect();
        // `scope… | counter… epoch`: the counters as the purge left them. Applied before the
        // local counters move: a lookup whose stamps are taken after that must not find a
        // Redis entry valid by what the mirror still said.
        let mut values: Vec<u64> = values.split(' ').filter_map(|v| v.parse().ok()).collect();
        if values.len() == scopes.len() + 1 {
            let epoch = values.pop();
            self.mirror
                .heard(period, epoch, soft == "1", scopes.iter().copied().zip(values));
        } else {
            // A message without values (an older version): nothing to learn, so forget.
            self.mirror.forget();
        }
        for scope in &scopes {
            self.generations.bump(scope);
        }
        // The acker's id lets the purger list who acknowledged. A purger from before
        // receipts reads the whole payload as the purge id, fails, and waits out the lease
        // instead: slower purges while a fleet is upgraded, never a missed one.
        let (redis, channel, purge_id) = (
            self.redis.clone(),
            self.redis.keys().ack_channel(from),
            format!("{purge_id} {}", self.id),
        );
        tokio::spawn(async move {
            let _ = redis.publish(&channel, &purge_id).await;
        });
    }
}
