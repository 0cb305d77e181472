//! # sojourn-cluster
//!
//! What several nodes share beside the database: who is alive (membership
//! with heartbeats), which node holds each active execution (leases), and
//! the secret nodes use to talk to each other.
//!
//! Two implementations behind one [`Cluster`]:
//! - **Redis** (`sojourn serve` with `SOJOURN_REDIS_URL`): a lease is a key
//!   `sojourn:lease:<execution>` holding the node id, taken with `SET NX PX`
//!   (inside a script that takes a whole batch in one round trip), renewed
//!   in batches while the actor lives, released on passivation with a
//!   compare-and-delete. Membership is a key per node with a TTL, refreshed
//!   by heartbeats.
//! - **Local** (`sojourn dev`, or a single `serve` without Redis): in-process
//!   maps; one node, so every lease is its own.
//!
//! Nodes also tell each other which executions finished (a Redis channel,
//! `sojourn:finished`), so that a request waiting on one node for an
//! execution that finishes on another is woken at once.
//!
//! Redis gives liveness and speed, not safety: the database's lease epoch
//! fences every write (DESIGN invariant 1), so a lease lost to a Redis
//! restart or `FLUSHALL` can delay work but never double it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sojourn_runtime::ExecutionId;
use tracing::warn;

/// What went wrong in the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis is unreachable or refused.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected: {0}")]
    Protocol(String),
    #[error("no randomness: {0}")]
    Random(String),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A subscription's connection closed (Redis restarted, the network).
    #[error("redis closed the subscription's connection")]
    SubscriptionClosed,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A live node, as it describes itself in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// Where other nodes reach its internal endpoint (`http://host:port`).
    pub address: String,
    /// Execution actors live on it.
    pub actors: u64,
    /// Milliseconds since the Unix epoch.
    pub last_seen_ms: u64,
    pub started_ms: u64,
    /// It is passivating its actors and takes no new ones.
    pub draining: bool,
}

/// The outcome of asking for one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This node holds it now, under this token (renew and release with it).
    Mine(Token),
    /// Another node does (its id).
    HeldBy(String),
}

/// The value a lease holds while this process owns it: the node id, this
/// process's nonce and a counter — unique per acquisition, so a release
/// that lost a race with a later acquisition by the same node deletes
/// nothing, and a restarted node does not inherit its predecessor's leases.
pub type Token = String;

/// The cluster: Redis, or in-process for one node.
#[derive(Debug)]
pub struct Cluster {
    node_id: String,
    /// `node#nonce:` — the prefix of this process's lease tokens.
    prefix: String,
    counter: std::sync::atomic::AtomicU64,
    lease_ttl: Duration,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Local(Local),
    Redis(Box<RedisBackend>),
}

#[derive(Debug, Default)]
struct Local {
    nodes: Mutex<HashMap<String, (NodeInfo, u64)>>,
    drains: Mutex<Vec<String>>,
    secret: Mutex<Option<String>>,
}

struct RedisBackend {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    acquire: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    rate: redis::Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").finish_non_exhaustive()
    }
}

const PREFIX: &str = "sojourn:";
/// The channel on which nodes announce executions that finished.
const FINISHED_CHANNEL: &str = "sojourn:finished";
/// How long connecting and subscribing to the channel may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a quiet subscription checks that Redis still answers on it (a
/// connection that died without closing would otherwise hear nothing,
/// forever), and how long the answer may take.
const KEEPALIVE: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Leases asked for or renewed in one script call.
const CHUNK: usize = 1_000;

/// Takes each lease that is free or already this process's (a new token
/// each time); answers the value each key holds afterwards. A key that
/// vanished (a Redis restart) is simply free.
/// KEYS: leases; ARGV[i]: the new token for KEYS[i]; then the process
/// prefix, then the TTL in milliseconds.
const ACQUIRE: &str = r"
local n = #KEYS
local prefix = ARGV[n + 1]
local ttl = ARGV[n + 2]
local out = {}
for i, k in ipairs(KEYS) do
  local cur = redis.call('GET', k)
  if (not cur) or string.sub(cur, 1, #prefix) == prefix then
    redis.call('SET', k, ARGV[i], 'PX', ttl)
    out[i] = ARGV[i]
  else
    out[i] = cur
  end
end
return out
";

/// Extends the leases still holding their token; answers the indexes of
/// the others (taken by another node, or vanished with a Redis flush or
/// restart): lost.
const RENEW: &str = r"
local n = #KEYS
local lost = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then
    redis.call('PEXPIRE', k, ARGV[n + 1])
  else
    table.insert(lost, i)
  end
end
return lost
";

/// Deletes the leases that still hold their token.
const RELEASE: &str = r"
local n = 0
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i] then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
";

/// A rate limit shared by the cluster (GCRA, the generic cell rate
/// algorithm): the key holds the theoretical arrival time in microseconds
/// of Redis's own clock. Without reserving (ARGV[3] = 0): takes one unit
/// when the limit allows it now (answers 0), else answers the microseconds
/// to wait and takes nothing. Reserving (1): always takes the next unit,
/// and answers how long until it may be used (0: now) — waiters queue on
/// Redis's clock instead of racing for each free slot.
/// KEYS[1]: the limit; ARGV: the interval between units and the burst
/// tolerance, in microseconds; whether to reserve. (A script may write
/// after `TIME` since Redis 5, which replicates a script's effects.)
const RATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allowed_at = tat - tolerance
local wait = 0
if now < allowed_at then
  if ARGV[3] ~= '1' then
    return math.ceil(allowed_at - now)
  end
  wait = math.ceil(allowed_at - now)
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return wait
";

/// The node id in a lease value (`node#nonce:counter`).
fn node_of(value: &str) -> &str {
    value.split('#').next().unwrap_or(value)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lease_key(id: &ExecutionId) -> String {
    format!("{PREFIX}lease:{id}")
}

fn node_key(id: &str) -> String {
    format!("{PREFIX}node:{id}")
}

fn ttl_ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Cluster {
    /// One node, in-process.
    pub fn local(node_id: impl Into<String>, lease_ttl: Duration) -> Cluster {
        let node_id = node_id.into();
        Cluster {
            prefix: format!("{node_id}#local:"),
            node_id,
            counter: Default::default(),
            lease_ttl,
            backend: Backend::Local(Local::default()),
        }
    }

    /// Redis at `url`. Connects lazily: a node starts while Redis is down
    /// and keeps trying (each operation fails until it answers).
    pub fn redis(url: &str, node_id: impl Into<String>, lease_ttl: Duration) -> Result<Cluster> {
        let client = redis::Client::open(url)?;
        let node_id = node_id.into();
        let mut nonce = [0u8; 6];
        getrandom::fill(&mut nonce).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Cluster {
            prefix: format!("{node_id}#{}:", hex::encode(nonce)),
            node_id,
            counter: Default::default(),
            lease_ttl,
            backend: Backend::Redis(Box::new(RedisBackend {
                client,
                conn: tokio::sync::Mutex::new(None),
                acquire: redis::Script::new(ACQUIRE),
                renew: redis::Script::new(RENEW),
                release: redis::Script::new(RELEASE),
                rate: redis::Script::new(RATE),
            })),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Whether this is a real, shared cluster (Redis).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Whether Redis answers (always, in-process).
    pub async fn ping(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(_) => Ok(()),
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let _: String = redis::cmd("PING").query_async(&mut c).await?;
                Ok(())
            }
        }
    }

    // ---- leases -------------------------------------------------------------

    fn token(&self) -> Token {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{n}", self.prefix)
    }

    /// Takes the leases of `ids` where they are free (or this process's
    /// already); one answer per id, in order.
    pub async fn acquire(&self, ids: &[ExecutionId]) -> Result<Vec<Lease>> {
        match &self.backend {
            Backend::Local(_) => Ok(ids.iter().map(|_| Lease::Mine(self.token())).collect()),
            Backend::Redis(r) => {
                let mut out = Vec::with_capacity(ids.len());
                let mut c = r.conn().await?;
                for chunk in ids.chunks(CHUNK) {
                    let tokens: Vec<Token> = chunk.iter().map(|_| self.token()).collect();
                    let mut inv = r.acquire.prepare_invoke();
                    for id in chunk {
                        inv.key(lease_key(id));
                    }
                    for t in &tokens {
                        inv.arg(t);
                    }
                    inv.arg(&self.prefix).arg(ttl_ms(self.lease_ttl));
                    let values: Vec<String> = inv.invoke_async(&mut c).await?;
                    if values.len() != chunk.len() {
                        return Err(Error::Protocol(format!(
                            "acquire answered {} values for {} leases",
                            values.len(),
                            chunk.len()
                        )));
                    }
                    out.extend(tokens.into_iter().zip(values).map(|(t, v)| {
                        if v == t {
                            Lease::Mine(t)
                        } else {
                            Lease::HeldBy(node_of(&v).to_owned())
                        }
                    }));
                }
                Ok(out)
            }
        }
    }

    /// Extends the leases held under these tokens; returns those lost
    /// (another node holds them now, or they vanished): their actors must
    /// stop at once.
    pub async fn renew(&self, leases: &[(ExecutionId, Token)]) -> Result<Vec<ExecutionId>> {
        match &self.backend {
            Backend::Local(_) => Ok(Vec::new()),
            Backend::Redis(r) => {
                let mut lost = Vec::new();
                let mut c = r.conn().await?;
                for chunk in leases.chunks(CHUNK) {
                    let mut inv = r.renew.prepare_invoke();
                    for (id, _) in chunk {
                        inv.key(lease_key(id));
                    }
                    for (_, t) in chunk {
                        inv.arg(t);
                    }
                    inv.arg(ttl_ms(self.lease_ttl));
                    let idx: Vec<usize> = inv.invoke_async(&mut c).await?;
                    for i in idx {
                        if let Some((id, _)) = i.checked_sub(1).and_then(|i| chunk.get(i)) {
                            lost.push(id.clone());
                        }
                    }
                }
                Ok(lost)
            }
        }
    }

    /// Gives back the leases still held under these tokens.
    pub async fn release(&self, leases: &[(ExecutionId, Token)]) -> Result<()> {
        match &self.backend {
            Backend::Local(_) => Ok(()),
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                for chunk in leases.chunks(CHUNK) {
                    let mut inv = r.release.prepare_invoke();
                    for (id, _) in chunk {
                        inv.key(lease_key(id));
                    }
                    for (_, t) in chunk {
                        inv.arg(t);
                    }
                    let _: i64 = inv.invoke_async(&mut c).await?;
                }
                Ok(())
            }
        }
    }

    /// The node holding an execution's lease, if any.
    pub async fn holder(&self, id: &ExecutionId) -> Result<Option<String>> {
        match &self.backend {
            Backend::Local(_) => Ok(None),
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let v: Option<String> = redis::cmd("GET")
                    .arg(lease_key(id))
                    .query_async(&mut c)
                    .await?;
                Ok(v.map(|v| node_of(&v).to_owned()))
            }
        }
    }

    /// The holders of many executions' leases, in one round trip.
    pub async fn holders(&self, ids: &[ExecutionId]) -> Result<Vec<Option<String>>> {
        match &self.backend {
            Backend::Local(_) => Ok(vec![None; ids.len()]),
            Backend::Redis(_) if ids.is_empty() => Ok(Vec::new()),
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let keys: Vec<String> = ids.iter().map(lease_key).collect();
                let values: Vec<Option<String>> =
                    redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
                Ok(values
                    .into_iter()
                    .map(|v| v.map(|v| node_of(&v).to_owned()))
                    .collect())
            }
        }
    }

    // ---- membership ---------------------------------------------------------

    /// Registers or refreshes this node; it counts as dead `ttl` after its
    /// last heartbeat.
    pub async fn heartbeat(&self, info: &NodeInfo, ttl: Duration) -> Result<()> {
        match &self.backend {
            Backend::Local(l) => {
                if let Ok(mut m) = l.nodes.lock() {
                    m.insert(info.id.clone(), (info.clone(), now_ms() + ttl_ms(ttl)));
                }
                Ok(())
            }
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let json =
                    serde_json::to_string(info).map_err(|e| Error::Protocol(e.to_string()))?;
                let _: () = redis::pipe()
                    .cmd("SET")
                    .arg(node_key(&info.id))
                    .arg(json)
                    .arg("PX")
                    .arg(ttl_ms(ttl))
                    .ignore()
                    .cmd("SADD")
                    .arg(format!("{PREFIX}nodes"))
                    .arg(&info.id)
                    .ignore()
                    .query_async(&mut c)
                    .await?;
                Ok(())
            }
        }
    }

    /// Removes this node at once (a clean stop), instead of after its TTL.
    pub async fn leave(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(l) => {
                if let Ok(mut m) = l.nodes.lock() {
                    m.remove(&self.node_id);
                }
                Ok(())
            }
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let _: () = redis::pipe()
                    .cmd("DEL")
                    .arg(node_key(&self.node_id))
                    .ignore()
                    .cmd("SREM")
                    .arg(format!("{PREFIX}nodes"))
                    .arg(&self.node_id)
                    .ignore()
                    .query_async(&mut c)
                    .await?;
                Ok(())
            }
        }
    }

    /// The live nodes, and the ids of nodes whose heartbeat expired (each
    /// reported dead once, to the one caller that removes it).
    pub async fn members(&self) -> Result<(Vec<NodeInfo>, Vec<String>)> {
        match &self.backend {
            Backend::Local(l) => {
                let now = now_ms();
                let mut live = Vec::new();
                let mut dead = Vec::new();
                if let Ok(mut m) = l.nodes.lock() {
                    m.retain(|id, (info, until)| {
                        if *until >= now {
                            live.push(info.clone());
                            true
                        } else {
                            dead.push(id.clone());
                            false
                        }
                    });
                }
                live.sort_by(|a, b| a.id.cmp(&b.id));
                Ok((live, dead))
            }
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let ids: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(format!("{PREFIX}nodes"))
                    .query_async(&mut c)
                    .await?;
                if ids.is_empty() {
                    return Ok((Vec::new(), Vec::new()));
                }
                let keys: Vec<String> = ids.iter().map(|i| node_key(i)).collect();
                let values: Vec<Option<String>> =
                    redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
                let mut live = Vec::new();
                let mut dead = Vec::new();
                for (id, v) in ids.into_iter().zip(values) {
                    match v.and_then(|v| serde_json::from_str::<NodeInfo>(&v).ok()) {
                        Some(info) => live.push(info),
                        None => {
                            // Only the caller whose SREM removed it reports it.
                            let removed: i64 = redis::cmd("SREM")
                                .arg(format!("{PREFIX}nodes"))
                                .arg(&id)
                                .query_async(&mut c)
                                .await?;
                            if removed == 1 {
                                dead.push(id);
                            }
                        }
                    }
                }
                live.sort_by(|a, b| a.id.cmp(&b.id));
                Ok((live, dead))
            }
        }
    }

    /// Asks a node to drain (passivate its actors and take no new ones).
    pub async fn request_drain(&self, node: &str) -> Result<()> {
        match &self.backend {
            Backend::Local(l) => {
                if let Ok(mut d) = l.drains.lock() {
                    d.push(node.to_owned());
                }
                Ok(())
            }
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let _: () = redis::cmd("SET")
                    .arg(format!("{PREFIX}drain:{node}"))
                    .arg(now_ms())
                    .arg("PX")
                    .arg(3_600_000u64)
                    .query_async(&mut c)
                    .await?;
                Ok(())
            }
        }
    }

    /// Whether this node was asked to drain.
    pub async fn drain_requested(&self) -> Result<bool> {
        match &self.backend {
            Backend::Local(l) => Ok(l
                .drains
                .lock()
                .map(|d| d.contains(&self.node_id))
                .unwrap_or(false)),
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let v: Option<String> = redis::cmd("GET")
                    .arg(format!("{PREFIX}drain:{}", self.node_id))
                    .query_async(&mut c)
                    .await?;
                Ok(v.is_some())
            }
        }
    }

    /// Clears a drain request for this node (a restarted node takes work
    /// again).
    pub async fn clear_drain(&self) -> Result<()> {
        match &self.backend {
            Backend::Local(l) => {
                if let Ok(mut d) = l.drains.lock() {
                    d.retain(|n| *n != self.node_id);
                }
                Ok(())
            }
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let _: () = redis::cmd("DEL")
                    .arg(format!("{PREFIX}drain:{}", self.node_id))
                    .query_async(&mut c)
                    .await?;
                Ok(())
            }
        }
    }

    /// Takes one unit of the shared rate limit `name` (`per_second`, with
    /// `burst` at once). Not reserving: `Duration::ZERO` when taken, else
    /// how long until one is free (nothing taken). Reserving: the next unit
    /// is taken in any case, and the answer is how long to wait before
    /// using it. In-process there is nothing to share: always taken at
    /// once (callers limit locally).
    pub async fn take_rate(
        &self,
        name: &str,
        per_second: f64,
        burst: u32,
        reserve: bool,
    ) -> Result<Duration> {
        let Backend::Redis(r) = &self.backend else {
            return Ok(Duration::ZERO);
        };
        let interval = (1_000_000.0 / per_second.max(1e-6)).max(1.0);
        let tolerance = interval * f64::from(burst.saturating_sub(1));
        let mut conn = r.conn().await?;
        let wait: i64 = r
            .rate
            .key(format!("{PREFIX}{name}"))
            .arg(interval.round() as i64)
            .arg(tolerance.round() as i64)
            .arg(if reserve { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(Duration::from_micros(wait.max(0) as u64))
    }

    /// The secret nodes present to each other's internal endpoint: made by
    /// the first node that asks, shared through Redis.
    pub async fn secret(&self) -> Result<String> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
        let fresh = hex::encode(bytes);
        match &self.backend {
            Backend::Local(l) => {
                let mut s = l
                    .secret
                    .lock()
                    .map_err(|_| Error::Protocol("poisoned".into()))?;
                Ok(s.get_or_insert(fresh).clone())
            }
            Backend::Redis(r) => {
                let mut c = r.conn().await?;
                let key = format!("{PREFIX}cluster-secret");
                let _: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .query_async(&mut c)
                    .await?;
                let v: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut c).await?;
                v.ok_or_else(|| Error::Protocol("the cluster secret vanished".into()))
            }
        }
    }
}

impl Cluster {
    // ---- finished executions ------------------------------------------------

    /// Tells every node that these executions finished, in one message (in
    /// process: nothing to tell).
    pub async fn publish_finished(&self, ids: &[ExecutionId]) -> Result<()> {
        match &self.backend {
            Backend::Local(_) => Ok(()),
            Backend::Redis(_) if ids.is_empty() => Ok(()),
            Backend::Redis(r) => {
                let payload =
                    serde_json::to_string(ids).map_err(|e| Error::Protocol(e.to_string()))?;
                let mut c = r.conn().await?;
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(FINISHED_CHANNEL)
                    .arg(payload)
                    .query_async(&mut c)
                    .await?;
                Ok(())
            }
        }
    }

    /// Subscribes to the executions any node announces as finished (its own
    /// included), on a connection of its own. `None` in process: one node
    /// has nobody to hear from.
    pub async fn subscribe_finished(&self) -> Result<Option<FinishedFeed>> {
        match &self.backend {
            Backend::Local(_) => Ok(None),
            Backend::Redis(r) => {
                let subscribe = async {
                    let (mut sink, stream) = r.client.get_async_pubsub().await?.split();
                    sink.subscribe(FINISHED_CHANNEL).await?;
                    Ok::<_, Error>((sink, stream))
                };
                let (sink, stream) = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe)
                    .await
                    .map_err(|_| Error::Timeout(SUBSCRIBE_TIMEOUT))??;
                let mut keepalive =
                    tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
                keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Ok(Some(FinishedFeed {
                    sink,
                    stream,
                    keepalive,
                }))
            }
        }
    }
}

/// A subscription to finished executions ([`Cluster::subscribe_finished`]).
pub struct FinishedFeed {
    sink: redis::aio::PubSubSink,
    stream: redis::aio::PubSubStream,
    keepalive: tokio::time::Interval,
}

impl std::fmt::Debug for FinishedFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinishedFeed").finish_non_exhaustive()
    }
}

/// One announcement: executions that finished on some node.
#[derive(Debug)]
pub struct Announced(redis::Msg);

impl Announced {
    /// The executions (none if the message is not ours: it is ignored).
    pub fn ids(&self) -> Vec<ExecutionId> {
        serde_json::from_slice(self.0.get_payload_bytes()).unwrap_or_default()
    }
}

impl FinishedFeed {
    /// The next announcement. An error means the subscription is gone (the
    /// connection closed, or stopped answering): subscribe again; what was
    /// announced meanwhile is not heard.
    pub async fn next(&mut self) -> Result<Announced> {
        use futures_util::StreamExt as _;
        loop {
            tokio::select! {
                msg = self.stream.next() => {
                    return msg.map(Announced).ok_or(Error::SubscriptionClosed);
                }
                _ = self.keepalive.tick() => {
                    tokio::time::timeout(KEEPALIVE_TIMEOUT, self.sink.ping::<redis::Value>())
                        .await
                        .map_err(|_| Error::Timeout(KEEPALIVE_TIMEOUT))??;
                }
            }
        }
    }
}

impl RedisBackend {
    /// The shared connection, made on first use (and again after a failed
    /// first attempt); it reconnects by itself afterwards.
    async fn conn(&self) -> Result<ConnectionManager> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        match ConnectionManager::new_with_config(self.client.clone(), config).await {
            Ok(c) => {
                *guard = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                warn!(error = %e, "redis unreachable");
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_leases_are_always_ours_and_members_expire() {
        let c = Cluster::local("n1", Duration::from_secs(5));
        let ids = vec![ExecutionId::new("exe_a".to_owned())];
        let got = c.acquire(&ids).await.expect("acquire");
        let Some(Lease::Mine(token)) = got.first().cloned() else {
            panic!("{got:?}");
        };
        assert!(token.starts_with("n1#"));
        let held = vec![(ids[0].clone(), token)];
        assert!(c.renew(&held).await.expect("renew").is_empty());
        let info = NodeInfo {
            id: "n1".into(),
            address: "http://127.0.0.1:1".into(),
            actors: 3,
            last_seen_ms: now_ms(),
            started_ms: now_ms(),
            draining: false,
        };
        c.heartbeat(&info, Duration::from_millis(50))
            .await
            .expect("beat");
        let (live, dead) = c.members().await.expect("members");
        assert_eq!((live.len(), dead.len()), (1, 0));
        tokio::time::sleep(Duration::from_millis(80)).await;
        let (live, dead) = c.members().await.expect("members");
        assert_eq!((live.len(), dead), (0, vec!["n1".to_owned()]));
        assert!(!c.drain_requested().await.expect("drain"));
        c.request_drain("n1").await.expect("drain");
        assert!(c.drain_requested().await.expect("drain"));
        assert_eq!(
            c.secret().await.expect("secret"),
            c.secret().await.expect("secret")
        );
    }
}
