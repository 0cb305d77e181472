//! The node's settings: one typed struct, loaded by figment from (weakest
//! first) the built-in defaults, a TOML file (`--config`), `SOJOURN_*`
//! environment variables and command-line flags. An unknown key or a bad
//! value stops the node at start with the key and where it came from.
//!
//! Environment names: a top-level key in upper case behind `SOJOURN_`
//! (`SOJOURN_DATABASE_URL`, `SOJOURN_LEASE_TTL_MS`); a key of a section
//! joined by a double underscore (`SOJOURN_ENGINE__TIMER_BATCH`,
//! `SOJOURN_HTTP__ALLOW`); `SOJOURN_KAFKA_BROKERS` for `kafka.brokers`;
//! `SOJOURN_SECRET_<NAME>` for `secrets.<NAME>` (the name keeps its case).
//! The client's variables (`SOJOURN_URL`, `SOJOURN_API_KEY`), the log
//! filter (`SOJOURN_LOG`) and the tests' (`SOJOURN_TEST_*`) are not
//! settings of the node.
//!
//! Secrets (`secrets.*`, credentials in URLs) are [`Secret`]s: they print
//! as `[redacted]` in `Debug`, in `sojourn config` and in logs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Failure;

/// Which command the settings are for: their defaults differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `sojourn dev`: loopback destinations are allowed by default, so a
    /// local quick start can call a local sink.
    Dev,
    /// `sojourn serve`: every internal destination is refused by default.
    Serve,
}

/// Every setting of a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    /// Where the HTTP API listens.
    pub(crate) listen: String,
    /// PostgreSQL (`serve`); may hold a password.
    pub(crate) database_url: Option<SecretUrl>,
    /// Connections in the PostgreSQL pool.
    pub(crate) database_pool_size: u32,
    /// Redis for leases and membership (`serve`); without it the node runs
    /// alone. May hold a password.
    pub(crate) redis_url: Option<SecretUrl>,
    /// This node's id in the cluster (default `<hostname>-<pid>`).
    pub(crate) node_id: Option<String>,
    /// Where other nodes reach this one (default `http://<listen>`).
    pub(crate) advertise_url: Option<String>,
    /// How long an execution lease lasts without renewal.
    pub(crate) lease_ttl_ms: u64,
    pub(crate) kafka: KafkaSettings,
    pub(crate) engine: EngineSettings,
    pub(crate) http: HttpSettings,
    pub(crate) tracing: TracingSettings,
    pub(crate) audience: AudienceSettings,
    /// Named secrets that workflows reference as `{{ secrets.NAME }}`.
    pub(crate) secrets: BTreeMap<String, Secret>,
    /// Named providers (`[providers.marketing-smtp]`, `kind = "smtp"`, …).
    pub(crate) providers: BTreeMap<String, sojourn_actors::channels::ProviderConfig>,
    /// Per channel (`[channels.email]`), the providers used when an action
    /// names none, in failover order.
    pub(crate) channels: BTreeMap<String, sojourn_actors::channels::ChannelConfig>,
}

/// Kafka: event triggers, `kafka.publish` and the channel workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct KafkaSettings {
    /// `host:port` of each bootstrap broker (a list, or one comma-separated
    /// string).
    #[serde(deserialize_with = "list_or_csv")]
    pub(crate) brokers: Vec<String>,
    /// Partitions of the channel topics a node creates when they are missing
    /// (how many workers can share a channel).
    pub(crate) topic_partitions: i32,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: Vec::new(),
            topic_partitions: sojourn_actors::Config::default().kafka_topic_partitions,
        }
    }
}

/// The engine's tunables (see `sojourn_actors::Config` for each one).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EngineSettings {
    pub(crate) max_commit_batch: usize,
    pub(crate) timer_lookahead_ms: u64,
    pub(crate) timer_claim_ttl_ms: u64,
    pub(crate) timer_poll_ms: u64,
    pub(crate) timer_batch: u32,
    pub(crate) schedule_poll_ms: u64,
    pub(crate) schedule_claim_ttl_ms: u64,
    pub(crate) analytics_rollup_ms: u64,
    pub(crate) retention_sweep_ms: u64,
    pub(crate) timer_fire_rate: u32,
    pub(crate) outbox_claim_ttl_ms: u64,
    pub(crate) outbox_poll_ms: u64,
    pub(crate) max_in_flight_actions: usize,
    pub(crate) max_resident_starts: usize,
    pub(crate) start_wait_ms: u64,
    pub(crate) results_in_memory: bool,
    pub(crate) idle_timeout_ms: u64,
    pub(crate) max_restarts: u32,
    pub(crate) recovery_poll_ms: u64,
    pub(crate) heartbeat_interval_ms: u64,
    /// The channels this node's workers send (all four by default; `[]`
    /// leaves sending to `sojourn worker`).
    pub(crate) worker_channels: Vec<String>,
    /// The stand-in provider of every channel: each message POSTed here as
    /// JSON (else only logged).
    pub(crate) channel_webhook: Option<Secret>,
}

/// What `http.request` actions may reach and read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpSettings {
    /// Internal destinations allowed anyway: networks (`10.0.0.0/8`),
    /// addresses or host names (a list, or one comma-separated string).
    #[serde(deserialize_with = "list_or_csv")]
    pub(crate) allow: Vec<String>,
    /// Most bytes of a response body read.
    pub(crate) max_response_bytes: usize,
}

/// Unsubscribe links and message categories.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AudienceSettings {
    /// Seals unsubscribe links: at least 32 characters, the same on every
    /// node and worker of a cluster. `sojourn dev` makes one in its data
    /// directory. Unset (serve): no links, and email goes without
    /// `List-Unsubscribe`.
    pub(crate) unsubscribe_key: Option<Secret>,
    /// Where recipients reach the cluster, for the links
    /// (default: `advertise_url`).
    pub(crate) public_url: Option<String>,
    /// Days an unsubscribe link works (unset: forever).
    pub(crate) link_ttl_days: Option<u64>,
    /// Per channel, the category of messages that name none (`sms =
    /// "transactional"`); else `marketing`.
    pub(crate) categories: BTreeMap<String, String>,
}

/// Trace export.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TracingSettings {
    /// An OTLP/HTTP collector (`http://collector:4318`): `sojourn dev` and
    /// `sojourn serve` export their spans there (protobuf, to `/v1/traces`,
    /// added unless given). Off when unset.
    pub(crate) otlp_endpoint: Option<SecretUrl>,
    /// The service name spans carry (`sojourn` when unset).
    pub(crate) service_name: Option<String>,
}

impl Settings {
    fn defaults(mode: Mode) -> Settings {
        let engine = sojourn_actors::Config::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Settings {
            listen: "127.0.0.1:8080".into(),
            database_url: None,
            database_pool_size: 16,
            redis_url: None,
            node_id: None,
            advertise_url: None,
            lease_ttl_ms: ms(engine.lease_ttl),
            kafka: KafkaSettings::default(),
            engine: EngineSettings {
                max_commit_batch: engine.max_commit_batch,
                timer_lookahead_ms: ms(engine.timer_lookahead),
                timer_claim_ttl_ms: ms(engine.timer_claim_ttl),
                timer_poll_ms: ms(engine.timer_poll),
                timer_batch: engine.timer_batch,
                schedule_poll_ms: ms(engine.schedule_poll),
                analytics_rollup_ms: ms(engine.analytics_rollup),
                retention_sweep_ms: ms(engine.retention_sweep),
                worker_channels: engine.worker_channels.clone(),
                channel_webhook: None,
                schedule_claim_ttl_ms: ms(engine.schedule_claim_ttl),
                timer_fire_rate: engine.timer_fire_rate,
                outbox_claim_ttl_ms: ms(engine.outbox_claim_ttl),
                outbox_poll_ms: ms(engine.outbox_poll),
                max_in_flight_actions: engine.max_in_flight_actions,
                max_resident_starts: engine.max_resident_starts,
                start_wait_ms: ms(engine.start_wait),
                results_in_memory: engine.results_in_memory,
                idle_timeout_ms: ms(engine.idle_timeout),
                max_restarts: engine.max_restarts,
                recovery_poll_ms: ms(engine.recovery_poll),
                heartbeat_interval_ms: ms(engine.heartbeat_interval),
            },
            http: HttpSettings {
                allow: match mode {
                    Mode::Dev => {
                        sojourn_actors::egress::EgressPolicy::allowing_loopback().entries()
                    }
                    Mode::Serve => Vec::new(),
                },
                max_response_bytes: engine.max_response_bytes,
            },
            tracing: TracingSettings::default(),
            audience: AudienceSettings::default(),
            secrets: BTreeMap::new(),
            // `sojourn dev` logs every channel's messages (the quick start
            // needs no account); `serve` sends nothing it was not told how to.
            providers: match mode {
                Mode::Dev => engine.providers.clone(),
                Mode::Serve => BTreeMap::new(),
            },
            channels: match mode {
                Mode::Dev => engine.channels.clone(),
                Mode::Serve => BTreeMap::new(),
            },
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::defaults(Mode::Serve)
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Settings::default().engine
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Settings::default().http
    }
}

/// Flags given on the command line (they beat everything else).
#[derive(Debug, Default)]
pub(crate) struct Flags {
    pub(crate) listen: Option<String>,
}

/// The loaded settings, and the figment they came from (to say where each
/// value came from). `Debug` by hand: the figment holds every raw value,
/// secrets included.
pub(crate) struct Loaded {
    pub(crate) settings: Settings,
    figment: Figment,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Loads the settings for `mode`: defaults, then `file`, then the
/// environment, then `flags`.
pub(crate) fn load(mode: Mode, file: Option<&Path>, flags: &Flags) -> Result<Loaded, Failure> {
    let mut figment = Figment::from(Named {
        name: "default",
        inner: Serialized::defaults(Settings::defaults(mode)),
    });
    if let Some(path) = file {
        if !path.is_file() {
            return Err(Failure::Invalid(format!(
                "--config {}: no such file",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(environment()).merge(SecretEnv);
    let mut flag_dict = Dict::new();
    if let Some(listen) = &flags.listen {
        flag_dict.insert("listen".into(), Value::from(listen.clone()));
    }
    figment = figment.merge(FlagProvider(flag_dict));
    let settings: Settings = figment.extract().map_err(|e| describe(&figment, e))?;
    check(&settings)?;
    Ok(Loaded { settings, figment })
}

/// The environment, as settings (see the module docs for the names).
fn environment() -> Env {
    // `lowercase(false)` last: figment resets it with every filter or map,
    // and secret names keep their case.
    Env::prefixed("SOJOURN_")
        .filter(|k| {
            let k = k.as_str().to_ascii_uppercase();
            // Secrets are read raw by `SecretEnv`: figment would parse
            // `0123` as a number and `{…}` as a map.
            !(k == "URL"
                || k == "API_KEY"
                || k == "LOG"
                || k.starts_with("TEST_")
                || k.starts_with("SECRET_"))
        })
        .map(|k| env_key(k.as_str()).into())
        .lowercase(false)
}

/// `ENGINE__TIMER_BATCH` → `engine.timer_batch`; `SECRET_Crm` →
/// `secrets.Crm`; `KAFKA_BROKERS` → `kafka.brokers`.
fn env_key(var: &str) -> String {
    if let Some(name) = var
        .strip_prefix("SECRET_")
        .or_else(|| var.strip_prefix("secret_"))
    {
        return format!("secrets.{name}");
    }
    let lower = var.to_ascii_lowercase();
    if lower == "kafka_brokers" {
        return "kafka.brokers".into();
    }
    lower.replace("__", ".")
}

/// The environment variable that sets `key` (the inverse of [`env_key`]).
fn env_var(key: &str) -> String {
    if let Some(name) = key.strip_prefix("secrets.") {
        return format!("SOJOURN_SECRET_{name}");
    }
    if key == "kafka.brokers" {
        return "SOJOURN_KAFKA_BROKERS".into();
    }
    format!("SOJOURN_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// Where a value came from, for people.
fn source_of(metadata: &Metadata, key: &str) -> String {
    if metadata.name.contains("environment") {
        format!("environment {}", env_var(key))
    } else if let Some(source) = &metadata.source {
        format!("file {source}")
    } else {
        metadata.name.to_string()
    }
}

/// A figment error as one line per problem, each naming the key and where
/// it came from.
fn describe(figment: &Figment, e: figment::Error) -> Failure {
    let lines: Vec<String> = e
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let from = e
                .metadata
                .as_ref()
                .map(|m| source_of(m, &key))
                .or_else(|| figment.find_metadata(&key).map(|m| source_of(m, &key)))
                .unwrap_or_else(|| "settings".into());
            let what = match &e.kind {
                figment::error::Kind::UnknownField(field, _) => {
                    // The error's path ends with the field already.
                    let full = if key.is_empty() {
                        field.clone()
                    } else if key == *field || key.ends_with(&format!(".{field}")) {
                        key.clone()
                    } else {
                        format!("{key}.{field}")
                    };
                    let from = match &e.metadata {
                        Some(m) if m.name.contains("environment") => {
                            format!("environment {}", env_var(&full))
                        }
                        _ => from.clone(),
                    };
                    return format!("setting {full:?} ({from}): unknown setting");
                }
                // A secret's or a URL's value is never repeated.
                figment::error::Kind::InvalidType(_, expected)
                | figment::error::Kind::InvalidValue(_, expected)
                    if sensitive(&key) =>
                {
                    format!("invalid value (not shown), expected {expected}")
                }
                _ if sensitive(&key) => "invalid value (not shown)".to_owned(),
                kind => kind.to_string(),
            };
            format!("setting {key:?} ({from}): {what}")
        })
        .collect();
    Failure::Invalid(lines.join("\n"))
}

/// Whether a setting's value may be a secret (never repeated in errors).
fn sensitive(key: &str) -> bool {
    // A provider's settings are read as one value (its `kind` first), so an
    // error may name only `providers.<name>`: none of them is repeated.
    key.starts_with("secrets")
        || key.starts_with("providers")
        || key.ends_with("_url")
        || key.ends_with("webhook")
        || key.ends_with("endpoint")
        || key.ends_with("_key")
}

/// Checks what types alone cannot.
fn check(s: &Settings) -> Result<(), Failure> {
    let bad = |key: &str, what: String| Err(Failure::Invalid(format!("setting {key:?}: {what}")));
    if s.listen.parse::<std::net::SocketAddr>().is_err() {
        return bad(
            "listen",
            format!("{:?} is not an address like 127.0.0.1:8080", s.listen),
        );
    }
    if let Err(e) = sojourn_actors::egress::EgressPolicy::parse(&s.http.allow) {
        return bad("http.allow", e);
    }
    if s.http.max_response_bytes == 0 {
        return bad("http.max_response_bytes", "must be at least 1".into());
    }
    if s.lease_ttl_ms < 500 {
        return bad("lease_ttl_ms", "must be at least 500".into());
    }
    if s.database_pool_size == 0 {
        return bad("database_pool_size", "must be at least 1".into());
    }
    let e = &s.engine;
    for (key, value) in [
        ("engine.max_commit_batch", e.max_commit_batch as u64),
        ("engine.timer_batch", u64::from(e.timer_batch)),
        ("engine.timer_fire_rate", u64::from(e.timer_fire_rate)),
        (
            "engine.max_in_flight_actions",
            e.max_in_flight_actions as u64,
        ),
        ("engine.max_resident_starts", e.max_resident_starts as u64),
        ("engine.timer_poll_ms", e.timer_poll_ms),
        ("engine.outbox_poll_ms", e.outbox_poll_ms),
        ("engine.recovery_poll_ms", e.recovery_poll_ms),
        ("engine.heartbeat_interval_ms", e.heartbeat_interval_ms),
        ("engine.timer_claim_ttl_ms", e.timer_claim_ttl_ms),
        ("engine.schedule_poll_ms", e.schedule_poll_ms),
        ("engine.schedule_claim_ttl_ms", e.schedule_claim_ttl_ms),
        ("engine.analytics_rollup_ms", e.analytics_rollup_ms),
        ("engine.retention_sweep_ms", e.retention_sweep_ms),
        ("engine.outbox_claim_ttl_ms", e.outbox_claim_ttl_ms),
        ("engine.idle_timeout_ms", e.idle_timeout_ms),
        ("engine.start_wait_ms", e.start_wait_ms),
    ] {
        if value == 0 {
            return bad(key, "must be at least 1".into());
        }
    }
    if !(1..=10_000).contains(&s.kafka.topic_partitions) {
        return bad("kafka.topic_partitions", "must be 1 to 10000".into());
    }
    for channel in &e.worker_channels {
        if !sojourn_actors::providers::CHANNELS.contains(&channel.as_str()) {
            return bad(
                "engine.worker_channels",
                format!(
                    "{channel:?} is not a channel ({})",
                    sojourn_actors::providers::CHANNELS.join(", ")
                ),
            );
        }
    }
    if let Some(url) = &e.channel_webhook
        && !(url.0.expose_secret().starts_with("http://")
            || url.0.expose_secret().starts_with("https://"))
    {
        return bad(
            "engine.channel_webhook",
            "not an http(s) URL (not shown: it may hold a token)".into(),
        );
    }
    let a = &s.audience;
    if let Some(k) = &a.unsubscribe_key
        && k.0.expose_secret().len() < 32
    {
        return bad(
            "audience.unsubscribe_key",
            "must be at least 32 characters (not shown)".into(),
        );
    }
    if let Some(u) = &a.public_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return bad(
            "audience.public_url",
            format!("{u:?} is not an http(s) URL"),
        );
    }
    if a.link_ttl_days == Some(0) {
        return bad(
            "audience.link_ttl_days",
            "must be at least 1 (unset: forever)".into(),
        );
    }
    for (channel, category) in &a.categories {
        if !sojourn_actors::providers::CHANNELS.contains(&channel.as_str()) {
            return bad(
                &format!("audience.categories.{channel}"),
                format!(
                    "not a channel ({})",
                    sojourn_actors::providers::CHANNELS.join(", ")
                ),
            );
        }
        if category.is_empty()
            || category.len() > 200
            || !category
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(
                &format!("audience.categories.{channel}"),
                format!("{category:?} is not a category name (letters, digits, '-', '_', '.')"),
            );
        }
    }
    // Every provider builds (its URLs, addresses and `secret:` references
    // read), so a node with a bad one stops at start, naming the setting.
    if let Err(e) = s
        .engine_config("check".into(), String::new())
        .build_channels(None)
    {
        return bad(&e.field, e.message);
    }
    for name in s.secrets.keys() {
        if !sojourn_runtime::secrets::is_valid_name(name) {
            return bad(
                &format!("secrets.{name}"),
                "a secret's name is letters, digits and _, not starting with a digit".into(),
            );
        }
    }
    for broker in &s.kafka.brokers {
        if broker
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return bad("kafka.brokers", format!("{broker:?} is not host:port"));
        }
    }
    if let Some(url) = &s.database_url
        && !(url.expose().starts_with("postgres://") || url.expose().starts_with("postgresql://"))
    {
        return bad("database_url", format!("{url} is not a postgres:// URL"));
    }
    if let Some(url) = &s.redis_url
        && !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://"))
    {
        return bad("redis_url", format!("{url} is not a redis:// URL"));
    }
    Ok(())
}

impl Settings {
    /// The engine's configuration these settings make (the node id and
    /// the advertised URL are the caller's).
    pub(crate) fn engine_config(
        &self,
        node_id: String,
        advertise: String,
    ) -> sojourn_actors::Config {
        let d = Duration::from_millis;
        let e = &self.engine;
        let secrets = self
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        sojourn_actors::Config {
            node_id,
            max_commit_batch: e.max_commit_batch,
            timer_lookahead: d(e.timer_lookahead_ms),
            timer_claim_ttl: d(e.timer_claim_ttl_ms),
            timer_poll: d(e.timer_poll_ms),
            timer_batch: e.timer_batch,
            schedule_poll: d(e.schedule_poll_ms),
            analytics_rollup: d(e.analytics_rollup_ms),
            retention_sweep: d(e.retention_sweep_ms),
            worker_channels: e.worker_channels.clone(),
            channel_webhook: e
                .channel_webhook
                .as_ref()
                .map(|u| u.0.expose_secret().to_owned()),
            schedule_claim_ttl: d(e.schedule_claim_ttl_ms),
            timer_fire_rate: e.timer_fire_rate,
            outbox_claim_ttl: d(e.outbox_claim_ttl_ms),
            outbox_poll: d(e.outbox_poll_ms),
            max_in_flight_actions: e.max_in_flight_actions,
            max_resident_starts: e.max_resident_starts,
            start_wait: d(e.start_wait_ms),
            results_in_memory: e.results_in_memory,
            idle_timeout: d(e.idle_timeout_ms),
            max_restarts: e.max_restarts,
            recovery_poll: d(e.recovery_poll_ms),
            lease_ttl: d(self.lease_ttl_ms),
            heartbeat_interval: d(e.heartbeat_interval_ms),
            egress: sojourn_actors::egress::EgressPolicy::parse(&self.http.allow)
                .unwrap_or_default(),
            max_response_bytes: self.http.max_response_bytes,
            secrets: sojourn_actors::Secrets::new(secrets),
            providers: self.providers.clone(),
            channels: self.channels.clone(),
            audience: sojourn_actors::audience::AudienceConfig {
                unsubscribe_key: self.audience.unsubscribe_key.as_ref().map(|k| k.0.clone()),
                public_url: self
                    .audience
                    .public_url
                    .clone()
                    .or_else(|| self.advertise_url.clone())
                    .or_else(|| (!advertise.is_empty()).then(|| advertise.clone())),
                link_ttl_seconds: self
                    .audience
                    .link_ttl_days
                    .map(|d| d.saturating_mul(86_400)),
                default_categories: self.audience.categories.clone(),
            },
            advertise,
            ..sojourn_actors::Config::default()
        }
    }
}

impl Loaded {
    /// The effective settings, one `key = value` a line (TOML values),
    /// each with where it came from; secrets redacted.
    pub(crate) fn render(&self) -> Result<String, Failure> {
        let value = Value::serialize(&self.settings)
            .map_err(|e| Failure::Invalid(format!("printing the settings: {e}")))?;
        let mut lines = Vec::new();
        flatten("", &value, &mut lines);
        let width = lines
            .iter()
            .map(|(k, v)| k.len() + v.len() + 3)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (key, value) in lines {
            let source = self
                .figment
                .find_metadata(&key)
                .map(|m| source_of(m, &key))
                .unwrap_or_else(|| "default".into());
            let line = format!("{key} = {value}");
            out.push_str(&format!("{line:<width$}  # {source}\n"));
        }
        Ok(out)
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Dict(_, dict) => {
            for (k, v) in dict {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        leaf => out.push((prefix.to_owned(), toml_value(leaf))),
    }
}

fn toml_value(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{:?}", c.to_string()),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => n
            .to_u128()
            .map(|n| n.to_string())
            .or_else(|| n.to_i128().map(|n| n.to_string()))
            .or_else(|| n.to_f64().map(|n| n.to_string()))
            .unwrap_or_default(),
        Value::Empty(..) => "# unset".into(),
        Value::Array(_, items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Dict(..) => "{}".into(),
    }
}

/// `SOJOURN_SECRET_<NAME>` variables, as text exactly as given.
struct SecretEnv;

impl Provider for SecretEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named("`SOJOURN_SECRET_*` environment variables")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut secrets = Dict::new();
        for (key, value) in std::env::vars_os() {
            let (Some(key), Some(value)) = (key.to_str(), value.to_str()) else {
                continue;
            };
            if let Some(name) = key.strip_prefix("SOJOURN_SECRET_") {
                secrets.insert(name.to_owned(), Value::from(value.to_owned()));
            }
        }
        let mut dict = Dict::new();
        if !secrets.is_empty() {
            dict.insert("secrets".into(), Value::from(secrets));
        }
        let mut map = Map::new();
        map.insert(Profile::Default, dict);
        Ok(map)
    }
}

/// A provider under a name of ours (the defaults).
struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// The command-line flags as a provider.
struct FlagProvider(Dict);

impl Provider for FlagProvider {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flag")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut map = Map::new();
        map.insert(Profile::Default, self.0.clone());
        Ok(map)
    }
}

/// A secret value: never printed (`[redacted]` in `Debug`, `Display` and
/// when serialized for `sojourn config`).
#[derive(Clone)]
pub(crate) struct Secret(SecretString);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Text, or a number or boolean taken as its text (`PIN = 1234` in a
    /// file); never echoed in an error.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
                Ok(v.to_string())
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
                Ok(v.to_string())
            }
        }
        Ok(Secret(SecretString::from(d.deserialize_any(Text)?)))
    }
}

/// A URL that may carry credentials: shown with its password (and a
/// username that looks like a token) replaced, never whole.
#[derive(Clone)]
pub(crate) struct SecretUrl(SecretString);

impl SecretUrl {
    /// The whole URL, for the client that connects with it.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.expose()))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}", self = self.to_string())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.contains("://***@") || text.contains(":***@") || text == "[redacted]" {
            return Err(serde::de::Error::custom(
                "a redacted URL (copied from `sojourn config`?) cannot be used",
            ));
        }
        Ok(SecretUrl(SecretString::from(text)))
    }
}

/// A URL with its password replaced by `***`, in its user info and in
/// query parameters that carry one (`?password=`, `sslpassword`, tokens,
/// keys); an unparsable one is hidden whole, since it may hold a password
/// where a parser cannot find it.
pub(crate) fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            if url.query().is_some() {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let lower = k.to_ascii_lowercase();
                        let secret = ["pass", "secret", "token", "key", "auth"]
                            .iter()
                            .any(|w| lower.contains(w));
                        let v = if secret {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        Err(_) => "[redacted]".into(),
    }
}

/// A list, or one string of comma-separated items.
fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(items) => items,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_map_both_ways() {
        for (var, key) in [
            ("DATABASE_URL", "database_url"),
            ("ENGINE__TIMER_BATCH", "engine.timer_batch"),
            ("KAFKA_BROKERS", "kafka.brokers"),
            ("SECRET_CRM_token", "secrets.CRM_token"),
            ("HTTP__ALLOW", "http.allow"),
        ] {
            assert_eq!(env_key(var), key);
            assert_eq!(env_var(key), format!("SOJOURN_{var}"));
        }
    }

    fn load_file(text: &str) -> Result<Loaded, Failure> {
        let path = std::env::temp_dir().join(format!(
            "sojourn-settings-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).expect("write the file");
        let loaded = load(Mode::Serve, Some(&path), &Flags::default());
        let _ = std::fs::remove_file(&path);
        loaded
    }

    #[test]
    fn providers_load_from_the_file_and_never_print_their_credentials() {
        let loaded = load_file(
            r#"
[secrets]
SG = "SG.the-real-key"

[providers.marketing-smtp]
kind = "smtp"
host = "smtp.example.com"
username = "mailer"
password = "pa55-smtp-word"
from = "News <news@example.com>"
limits = { per_second = 10, burst = 20, concurrency = 4 }

[providers.backup]
kind = "sendgrid"
api_key = "secret:SG"
from = "news@example.com"

[channels.email]
providers = ["marketing-smtp", "backup"]
"#,
        )
        .expect("loads");
        let s = &loaded.settings;
        assert_eq!(s.providers.len(), 2);
        assert_eq!(
            s.providers["marketing-smtp"].limits().per_second,
            Some(10.0)
        );
        let config = s.engine_config("n".into(), String::new());
        let channels = config.build_channels(None).expect("builds");
        assert_eq!(channels.defaults_of("backup").len(), 1);
        let rendered = loaded.render().expect("renders");
        assert!(
            rendered.contains("providers.marketing-smtp.password = \"[redacted]\""),
            "{rendered}"
        );
        assert!(
            rendered.contains("secret:SG"),
            "a reference is shown: {rendered}"
        );
        for secret in ["pa55-smtp-word", "SG.the-real-key"] {
            assert!(!rendered.contains(secret), "{rendered}");
            assert!(!format!("{loaded:?} {channels:?}").contains(secret));
        }
        // Serve sends nothing it was not told how to: no default provider.
        let bare = load_file("listen = \"127.0.0.1:1\"\n").expect("loads");
        assert!(bare.settings.providers.is_empty());
    }

    #[test]
    fn a_bad_provider_stops_the_node_naming_its_setting() {
        for (text, field) in [
            (
                "[providers.m]\nkind = \"smtp\"\nhost = \"h\"\nfrom = \"nope\"\n",
                "providers.m.from",
            ),
            (
                "[providers.m]\nkind = \"sendgrid\"\napi_key = \"secret:MISSING\"\nfrom = \"a@b.test\"\n",
                "providers.m.api_key",
            ),
            ("[providers.m]\nkind = \"pigeon\"\n", "providers.m"),
            (
                "[channels.email]\nproviders = [\"ghost\"]\n",
                "channels.email.providers[0]",
            ),
        ] {
            let Err(Failure::Invalid(message)) = load_file(text) else {
                panic!("{text} loads")
            };
            assert!(message.contains(field), "{field}: {message}");
        }
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("postgres://app:hunter2@db/sojourn"),
            "postgres://app:***@db/sojourn"
        );
        assert_eq!(redact_url("not a url hunter2"), "[redacted]");
        assert_eq!(
            redact_url("postgres://db/x?password=hunter2&sslmode=require"),
            "postgres://db/x?password=***&sslmode=require"
        );
        let url = SecretUrl(SecretString::from("redis://u:hunter2@h:1"));
        assert!(!format!("{url} {url:?}").contains("hunter2"));
        let secret = Secret(SecretString::from("hunter2"));
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
