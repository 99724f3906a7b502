//! A real local Redis Cluster: six `redis-server` processes (three masters, three replicas),
//! each in its own temporary directory, on free loopback ports. The cluster bus port of every
//! node is a free port too, set with `--cluster-port` (Redis 7.0 or later), never the default
//! port + 10000.
//!
//! Every test starts its own cluster with [`RedisCluster::start`] (about two and a half seconds,
//! most of it `redis-cli` joining the nodes): tests kill masters, and on a cluster shared by a
//! whole test binary one test's failover would disturb the others. As no other test writes to
//! it, keys need no per-test prefix. The processes are killed by pid when the cluster is dropped, also while a
//! failing test unwinds, and a start that fails half way kills what it had started.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

const MASTERS: usize = 3;
const NODES: usize = MASTERS * 2;
/// Small, so that a killed master is failed over within a few seconds.
const NODE_TIMEOUT_MS: u32 = 1000;
const START_DEADLINE: Duration = Duration::from_secs(30);
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(50);

const INSTALL_SERVER: &str = "install it with: apt-get install -y redis-server (scripts/test.sh does)";
const INSTALL_CLI: &str = "install it with: apt-get install -y redis-tools (it comes with redis-server)";

/// One `redis-server` of a [`RedisCluster`].
pub struct ClusterNode {
    /// The client port.
    pub port: u16,
    /// The cluster bus port.
    pub bus_port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl ClusterNode {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id, while the node runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// False once the node was killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last lines of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        // Start-up errors (a bad option, a port in use) go to the output before the log opens.
        let mut log = std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default();
        log.push_str(&std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default());
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGKILL by pid, then reaps the process.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One slot range and the nodes serving it, by client port, as `CLUSTER SLOTS` tells.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: u16,
    pub replicas: BTreeSet<u16>,
}

impl SlotRange {
    pub fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end).contains(&slot)
    }
}

/// A running three-master, three-replica Redis Cluster on loopback, killed on drop.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    password: Option<String>,
}

impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create … --cluster-replicas 1`
    /// and waits until every node says `cluster_state:ok`, all agree on the slot map and every
    /// replica is in sync with its master.
    pub async fn start() -> RedisCluster {
        RedisCluster::start_with_password(None).await
    }

    /// Like [`RedisCluster::start`]; with a password, every node has `--requirepass` (clients
    /// `AUTH` as the default user) and `--masterauth` (replicas authenticate to their masters).
    pub async fn start_with_password(password: Option<&str>) -> RedisCluster {
        // Tests run in parallel; forming many clusters at once on two cores can outlast the
        // start deadline. Two at a time keeps start-up well inside it.
        static FORMING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let _turn = FORMING.acquire().await.expect("never closed");
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(NODES),
            password: password.map(str::to_owned),
        };
        let ports = free_ports(NODES * 2);
        for pair in ports.chunks(2) {
            let node = cluster.spawn_node(pair[0], pair[1]);
            cluster.nodes.push(node);
        }
        let end = Instant::now() + START_DEADLINE;
        while let Err(e) = cluster.ping_all().await {
            if cluster.any_exited() || Instant::now() >= end {
                cluster.fail(&format!("the cluster nodes did not answer PING: {e}"));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        cluster.create().await;
        let r = poll(START_DEADLINE, || cluster.check_started()).await;
        if let Err(e) = r {
            cluster.fail(&format!("the cluster did not become healthy: {e}"));
        }
        cluster
    }

    fn spawn_node(&self, port: u16, bus_port: u16) -> ClusterNode {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string()])
            .args(["--cluster-port", &bus_port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(dir.path().join("nodes.conf"))
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // A replica always tries to take over, however long ago it last heard its master.
            .args(["--cluster-replica-validity-factor", "0"])
            // Replicas sync at once instead of waiting for more replicas to join a transfer.
            .args(["--repl-diskless-sync-delay", "0"])
            // CLUSTER SLOTS leaves out a replica until its replication offset is above zero,
            // which on an empty master first happens with the master's ping (every 10 s by
            // default).
            .args(["--repl-ping-replica-period", "1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"));
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p, "--masterauth", p]);
        }
        let output = std::fs::File::create(dir.path().join("output.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); {INSTALL_SERVER}"));
        ClusterNode {
            port,
            bus_port,
            child: Some(child),
            dir,
        }
    }

    async fn ping_all(&self) -> Result<(), String> {
        for n in &self.nodes {
            let mut c = self.conn_to(n.port).await?;
            query::<String>(&mut c, &redis::cmd("PING")).await?;
        }
        Ok(())
    }

    /// Whether a node that was not killed on purpose has exited.
    fn any_exited(&mut self) -> bool {
        self.nodes
            .iter_mut()
            .any(|n| n.child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None))))
    }

    async fn create(&mut self) {
        let mut cmd = tokio::process::Command::new("redis-cli");
        if let Some(p) = &self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        cmd.arg("--cluster").arg("create");
        cmd.args(self.nodes.iter().map(ClusterNode::addr));
        cmd.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); {INSTALL_CLI}"));
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains("All 16384 slots covered") {
            self.fail(&format!(
                "redis-cli --cluster create failed ({}):\n{text}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    /// Panics with `msg`, which nodes have exited and the tail of every node's log. Dropping
    /// `self` while unwinding kills the nodes.
    fn fail(&mut self, msg: &str) -> ! {
        let mut report = String::new();
        for n in &mut self.nodes {
            let state = match n.child.as_mut().map(Child::try_wait) {
                None => "killed by the test".to_string(),
                Some(Ok(None)) => "running".to_string(),
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Err(e)) => format!("unknown: {e}"),
            };
            report.push_str(&format!(
                "\n--- node {} (bus {}), {state}; log tail:\n{}\n",
                n.addr(),
                n.bus_port,
                n.log_tail()
            ));
        }
        panic!("{msg}\n(redis-server 7.0 or later is needed for --cluster-port){report}");
    }

    /// Every node, running or killed, in start order.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn running(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    fn node_url(&self, port: u16) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{port}"),
            None => format!("redis://127.0.0.1:{port}"),
        }
    }

    /// `redis://[:password@]127.0.0.1:port` of every running node: the seeds of a cluster client.
    pub fn seed_urls(&self) -> Vec<String> {
        self.running().map(|n| self.node_url(n.port)).collect()
    }

    /// `redis+cluster://[:password@]127.0.0.1:p1,127.0.0.1:p2,…/` over every running node, the
    /// form of `[cache] redis_url` that names a cluster.
    pub fn cluster_url(&self) -> String {
        let hosts: Vec<String> = self.running().map(ClusterNode::addr).collect();
        let auth = match &self.password {
            Some(p) => format!(":{p}@"),
            None => String::new(),
        };
        format!("redis+cluster://{auth}{}/", hosts.join(","))
    }

    /// A cluster client seeded with every running node.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.seed_urls()).expect("cluster client")
    }

    /// A plain (non-cluster) connection to one node.
    pub async fn node_conn(&self, port: u16) -> redis::RedisResult<MultiplexedConnection> {
        redis::Client::open(self.node_url(port))?
            .get_multiplexed_async_connection()
            .await
    }

    async fn conn_to(&self, port: u16) -> Result<MultiplexedConnection, String> {
        match tokio::time::timeout(QUERY_TIMEOUT, self.node_conn(port)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("cannot connect to 127.0.0.1:{port}: {e}")),
            Err(_) => Err(format!("connecting to 127.0.0.1:{port} timed out")),
        }
    }

    /// `CLUSTER SLOTS` as one node sees it, sorted by slot.
    async fn slots_from(&self, port: u16) -> Result<Vec<SlotRange>, String> {
        let mut c = self.conn_to(port).await?;
        let v: Value = query(&mut c, redis::cmd("CLUSTER").arg("SLOTS"))
            .await
            .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
        parse_slots(&v).map_err(|e| format!("CLUSTER SLOTS from 127.0.0.1:{port}: {e}"))
    }

    async fn state_ok(&self, port: u16) -> Result<(), String> {
        let mut c = self.conn_to(port).await?;
        let info: String = query(&mut c, redis::cmd("CLUSTER").arg("INFO")).await?;
        if info.lines().any(|l| l.trim() == "cluster_state:ok") {
            Ok(())
        } else {
            Err(format!("127.0.0.1:{port} is not cluster_state:ok:\n{info}"))
        }
    }

    async fn replication_info(&self, port: u16) -> Result<String, String> {
        let mut c = self.conn_to(port).await?;
        query(&mut c, redis::cmd("INFO").arg("replication")).await
    }

    /// Every running node is `cluster_state:ok` and reports the same `CLUSTER SLOTS`, which
    /// covers every slot and names only running nodes. Returns that slot map.
    async fn check_agreed(&self) -> Result<Vec<SlotRange>, String> {
        let mut agreed: Option<(u16, Vec<SlotRange>)> = None;
        for n in self.running() {
            self.state_ok(n.port).await?;
            let map = self.slots_from(n.port).await?;
            match &agreed {
                None => agreed = Some((n.port, map)),
                Some((first, m)) if *m != map => {
                    return Err(format!(
                        "127.0.0.1:{first} and 127.0.0.1:{} disagree on the slot map:\n{m:?}\n{map:?}",
                        n.port
                    ))
                }
                Some(_) => {}
            }
        }
        let (_, map) = agreed.ok_or("no node is running")?;
        let mut next = 0u32;
        for r in &map {
            if u32::from(r.start) != next {
                return Err(format!("slots {next}..{} are not served: {map:?}", r.start));
            }
            next = u32::from(r.end) + 1;
        }
        if next != u32::from(SLOTS) {
            return Err(format!("slots {next}.. are not served: {map:?}"));
        }
        let live: BTreeSet<u16> = self.running().map(|n| n.port).collect();
        for r in &map {
            if let Some(p) = std::iter::once(&r.master)
                .chain(&r.replicas)
                .find(|p| !live.contains(p))
            {
                return Err(format!(
                    "the slot map still names the killed node 127.0.0.1:{p}: {map:?}"
                ));
            }
        }
        Ok(map)
    }

    /// The start-up condition: agreement, three masters with one in-sync replica each, and every
    /// node placed in the map.
    async fn check_started(&self) -> Result<(), String> {
        let map = self.check_agreed().await?;
        let masters: BTreeSet<u16> = map.iter().map(|r| r.master).collect();
        if masters.len() != MASTERS {
            return Err(format!("expected {MASTERS} masters, the slot map has {masters:?}"));
        }
        let mut placed = masters.clone();
        for r in &map {
            if r.replicas.len() != 1 {
                return Err(format!("expected one replica per master: {r:?}"));
            }
            placed.extend(&r.replicas);
        }
        if placed.len() != NODES {
            return Err(format!("not every node is in the slot map: {map:?}"));
        }
        for r in &map {
            for &replica in &r.replicas {
                let info = self.replication_info(replica).await?;
                if !info.lines().any(|l| l.trim() == "master_link_status:up") {
                    return Err(format!("replica 127.0.0.1:{replica} is not in sync yet:\n{info}"));
                }
            }
        }
        Ok(())
    }

    /// The current slot map, as the running nodes agree on it (waits for agreement).
    pub async fn slot_map(&self) -> Vec<SlotRange> {
        match poll(START_DEADLINE, || self.check_agreed()).await {
            Ok(map) => map,
            Err(e) => panic!("the cluster nodes do not agree on a slot map: {e}"),
        }
    }

    /// The client port of the master serving `slot`.
    pub async fn master_for_slot(&self, slot: u16) -> u16 {
        assert!(slot < SLOTS, "slot {slot} is out of range");
        let map = self.slot_map().await;
        map.iter()
            .find(|r| r.contains(slot))
            .expect("every slot is served")
            .master
    }

    /// The client ports of the masters, sorted.
    pub async fn masters(&self) -> Vec<u16> {
        let masters: BTreeSet<u16> = self.slot_map().await.iter().map(|r| r.master).collect();
        masters.into_iter().collect()
    }

    /// The client ports of the replicas, sorted.
    pub async fn replicas(&self) -> Vec<u16> {
        let replicas: BTreeSet<u16> = self.slot_map().await.iter().flat_map(|r| r.replicas.clone()).collect();
        replicas.into_iter().collect()
    }

    /// `{prefix}{n}` for the first `n` whose slot `master` serves.
    pub async fn key_on_master(&self, prefix: &str, master: u16) -> String {
        let map = self.slot_map().await;
        (0u32..)
            .map(|n| format!("{prefix}{n}"))
            .find(|k| {
                let slot = key_slot(k);
                map.iter().any(|r| r.master == master && r.contains(slot))
            })
            .expect("some key lands on every master")
    }

    /// SIGKILLs the master serving `slot` (by pid), then waits until one of its replicas is
    /// promoted and the surviving nodes are `cluster_state:ok` and agree on a slot map that no
    /// longer names the killed node. Returns the port of the killed master, the port of the
    /// promoted replica and the time from the kill to that point.
    pub async fn kill_master_of_slot(&mut self, slot: u16) -> Failover {
        let map = self.slot_map().await;
        let range = map
            .iter()
            .find(|r| r.contains(slot))
            .expect("every slot is served")
            .clone();
        assert!(
            !range.replicas.is_empty(),
            "the master of slot {slot} (127.0.0.1:{}) has no replica to promote",
            range.master
        );
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == range.master)
            .expect("the master is a node of this cluster");
        let started = Instant::now();
        node.kill();
        let r = poll(FAILOVER_DEADLINE, || async {
            let map = self.check_agreed().await?;
            let now = map
                .iter()
                .find(|r| r.contains(slot))
                .expect("checked: every slot is served");
            if !range.replicas.contains(&now.master) {
                return Err(format!("slot {slot} is not served by a promoted replica yet: {now:?}"));
            }
            let info = self.replication_info(now.master).await?;
            if !info.lines().any(|l| l.trim() == "role:master") {
                return Err(format!("127.0.0.1:{} does not say role:master yet", now.master));
            }
            Ok(now.master)
        })
        .await;
        match r {
            Ok(promoted) => Failover {
                killed: range.master,
                promoted,
                took: started.elapsed(),
            },
            Err(e) => self.fail(&format!(
                "no replica took over slot {slot} from the killed 127.0.0.1:{} within {FAILOVER_DEADLINE:?}: {e}",
                range.master
            )),
        }
    }
}

/// What [`RedisCluster::kill_master_of_slot`] did.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// Client port of the killed master.
    pub killed: u16,
    /// Client port of the replica that took its place.
    pub promoted: u16,
    /// From the kill until the survivors agreed on the new master and said `cluster_state:ok`.
    pub took: Duration,
}

/// The hash slot of `key`, computed like Redis does: CRC16 (XMODEM) of the key, or of the part
/// between the first `{` and the next `}` when that part is not empty, modulo 16384.
pub fn key_slot(key: impl AsRef<[u8]>) -> u16 {
    let key = key.as_ref();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &rest[..len])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// `n` distinct free loopback ports: all are held until all are picked, so none repeats.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Runs `check` until it succeeds or `deadline` passes; the error is the last check's.
async fn poll<T, F, Fut>(deadline: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = Instant::now() + deadline;
    loop {
        match check().await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

async fn query<T: redis::FromRedisValue>(c: &mut MultiplexedConnection, cmd: &redis::Cmd) -> Result<T, String> {
    match tokio::time::timeout(QUERY_TIMEOUT, cmd.query_async::<T>(c)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the query timed out".to_string()),
    }
}

/// Parses a `CLUSTER SLOTS` reply: `[[start, end, [ip, port, id, …] (master), [ip, port, …]
/// (replicas)…], …]`.
fn parse_slots(v: &Value) -> Result<Vec<SlotRange>, String> {
    fn int(v: &Value) -> Result<u16, String> {
        match v {
            Value::Int(i) => u16::try_from(*i).map_err(|_| format!("{i} is out of range")),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
    fn port(v: &Value) -> Result<u16, String> {
        match v {
            Value::Array(node) if node.len() >= 2 => int(&node[1]),
            other => Err(format!("expected [ip, port, …], found {other:?}")),
        }
    }
    let Value::Array(ranges) = v else {
        return Err(format!("expected an array, found {v:?}"));
    };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        match r {
            Value::Array(items) if items.len() >= 3 => out.push(SlotRange {
                start: int(&items[0])?,
                end: int(&items[1])?,
                master: port(&items[2])?,
                replicas: items[3..].iter().map(port).collect::<Result<_, _>>()?,
            }),
            other => return Err(format!("expected [start, end, master, …], found {other:?}")),
        }
    }
    out.sort();
    Ok(out)
}
