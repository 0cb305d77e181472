//! Channels and their providers: what sends an email, an SMS, a push or a
//! chat message.
//!
//! A provider is one module under its channel's folder (`email/smtp.rs`,
//! `sms/twilio.rs`, …) implementing [`Provider`], with its configuration
//! type in [`config`]; [`config::ProviderConfig::build`] is the one place
//! that registers it. The operator names provider configurations
//! (`[providers.marketing-smtp]`) and lists, per channel, the ones used by
//! default, in failover order; an action may name its own
//! (`provider: "marketing-smtp"`, or a list).
//!
//! Each named provider has its own concurrency limit, rate limit (sends per
//! second with a burst, shared by the whole cluster through Redis when there
//! is one), timeout and metrics, so a slow SMTP server holds only its own
//! sends. A worker sends one message ([`Channels::send`]) through the first
//! provider of its list; a retryable failure of it, or its rate limit being
//! full while another follows, moves the attempt on to the next, with the
//! same idempotency key. Each provider tried leaves a [`Delivery`] for the
//! delivery log.

mod aws;
pub mod config;
mod http;
pub mod message;
mod rate;

mod chat;
mod email;
mod log;
mod push;
mod sms;
mod webhook;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Value, json};
use sojourn_runtime::{ActionOutcome, Dispatch};
use tokio::sync::Semaphore;

pub use config::{ChannelConfig, Credential, Limits, ProviderConfig};
pub use message::{Attachment, Message};

use crate::metrics::{Histogram, Registry};

/// A messaging channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    Email,
    Sms,
    Push,
    Chat,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Email, Channel::Sms, Channel::Push, Channel::Chat];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::Chat => "chat",
        }
    }

    /// The channel an action sends on (`email.send` → email), if it is one.
    pub fn of_action(action: &str) -> Option<Channel> {
        match action {
            "email.send" => Some(Channel::Email),
            "sms.send" => Some(Channel::Sms),
            "push.send" => Some(Channel::Push),
            "chat.send" => Some(Channel::Chat),
            _ => None,
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a send failed, as the delivery log and the action's output name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// No answer in time.
    Timeout,
    /// The provider asked us to slow down (429).
    RateLimited,
    /// The provider is away or failing (5xx, connection refused).
    Unavailable,
    /// The recipient cannot be sent to (invalid address or number,
    /// unregistered device token).
    InvalidRecipient,
    /// The recipient opted out at the provider.
    Unsubscribed,
    /// The provider refused our credentials.
    Auth,
    /// The provider refused the message (any other 4xx).
    Rejected,
    /// The message itself does not read, or no provider is configured.
    Invalid,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::InvalidRecipient => "invalid_recipient",
            ErrorClass::Unsubscribed => "unsubscribed",
            ErrorClass::Auth => "auth",
            ErrorClass::Rejected => "rejected",
            ErrorClass::Invalid => "invalid",
        }
    }

    /// Whether trying again (later, or with another provider) may help.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Timeout | ErrorClass::RateLimited | ErrorClass::Unavailable
        )
    }
}

/// A failed send.
#[derive(Debug, Clone, PartialEq)]
pub struct SendError {
    pub class: ErrorClass,
    /// For people; never holds a credential.
    pub message: String,
    /// The provider's own code for it, when it gives one.
    pub code: Option<String>,
    /// How long the provider asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The provider may have taken the message although we saw no answer
    /// (a timeout, a 500, 502 or 504, an answer cut short): another
    /// provider must not be tried, which could send it twice.
    pub may_have_sent: bool,
}

impl SendError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> SendError {
        SendError {
            class,
            message: message.into(),
            code: None,
            retry_after: None,
            may_have_sent: class == ErrorClass::Timeout,
        }
    }

    /// Whether the next provider may be tried with the same message: the
    /// failure proves this provider did not take it, and it is this
    /// provider's (busy, away, refusing our credentials), not the message's.
    pub fn moves_on(&self) -> bool {
        !self.may_have_sent && (self.class.retryable() || self.class == ErrorClass::Auth)
    }

    pub fn with_code(mut self, code: impl Into<String>) -> SendError {
        self.code = Some(code.into());
        self
    }
}

/// What the provider did with a message it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentStatus {
    /// Accepted for sending later (SendGrid's 202, Twilio's `queued`).
    Queued,
    /// Handed on (an SMTP server's 250, a chat webhook's 200).
    Sent,
}

impl SentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SentStatus::Queued => "queued",
            SentStatus::Sent => "sent",
        }
    }
}

/// A message a provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// The provider's id of it (for status webhooks and support tickets).
    pub message_id: Option<String>,
    pub status: SentStatus,
}

/// What a provider is handed.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub message: &'a Message,
    /// The attempt's idempotency key (`execution/node/attempt`): sent
    /// wherever the provider accepts one.
    pub key: &'a str,
    /// The email's attachments, fetched.
    pub attachments: &'a [Attachment],
    /// The rendered inputs the message was read from (secrets resolved),
    /// for providers that pass them on whole (`webhook`).
    pub inputs: &'a Value,
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Sent, SendError>> + Send + 'a>>;

/// One provider of one channel (or, for `log` and `webhook`, of any).
pub trait Provider: Send + Sync + fmt::Debug {
    /// Sends one message. Must not panic on any answer; must not put a
    /// credential in an error.
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a>;

    /// Fetches what verifying a report needs and the provider does not
    /// hold yet (SNS: the signing certificate the message names), before
    /// [`Provider::verify_report`]. Most need nothing.
    fn prepare_report<'a>(&'a self, _report: &'a Report<'a>) -> PrepareFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Verifies a status report the provider posted to its webhook and
    /// reads it. Providers without status reports keep the default.
    fn verify_report(&self, _report: &Report<'_>) -> Result<Verified, ReportError> {
        Err(ReportError::NotSupported)
    }
}

pub type PrepareFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ReportError>> + Send + 'a>>;

/// A status report as received on `POST /v1/webhooks/<provider>`.
#[derive(Debug)]
pub struct Report<'a> {
    /// The query string, without its `?`.
    pub query: &'a str,
    pub headers: &'a reqwest::header::HeaderMap,
    pub body: &'a [u8],
    pub now: DateTime<Utc>,
}

impl Report<'_> {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A delivery's new status, by the provider's message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub message_id: String,
    /// delivered, bounced, complained, opened, clicked, undelivered.
    pub status: &'static str,
}

/// A report whose signature held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Where receipts are kept apart: `None`, the provider's name; a
    /// provider whose signing key serves several (Mailgun's is the
    /// account's) names the key, so a report signed for one cannot be
    /// replayed to another.
    pub scope: Option<String>,
    /// What makes this call unique (the provider's token, or a digest of
    /// the signed content): the same receipt twice is a replay.
    pub receipt: String,
    pub updates: Vec<StatusUpdate>,
}

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("this provider has no status webhook")]
    NotSupported,
    #[error("no provider named {0:?} is configured")]
    UnknownProvider(String),
    /// The provider's webhook key is not configured on this node.
    #[error("{0}")]
    NotConfigured(String),
    /// The signature is missing or does not match.
    #[error("{0}")]
    Forged(String),
    /// Signed too long ago (or in the future) to be taken.
    #[error("{0}")]
    Stale(String),
    /// Signed, but not a report.
    #[error("{0}")]
    Malformed(String),
}

/// How long ago a report may have been signed (or how far ahead of our
/// clock): a day, as providers retry a report they could not deliver for
/// hours under its first signature; a replay within it is known by its
/// receipt.
pub(crate) const REPORT_WINDOW_SECONDS: u64 = 86_400;

/// Checks a report's signing time against the window.
pub(crate) fn fresh(signed_at: i64, now: DateTime<Utc>) -> Result<(), ReportError> {
    let off = now.timestamp().abs_diff(signed_at);
    if off > REPORT_WINDOW_SECONDS {
        return Err(ReportError::Stale(format!(
            "signed {off} s away from now; reports signed more than {REPORT_WINDOW_SECONDS} s away are refused"
        )));
    }
    Ok(())
}

/// One send attempt to one provider, for the delivery log.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub channel: Channel,
    pub provider: String,
    pub recipient: String,
    /// `queued`, `sent` or `failed`.
    pub status: &'static str,
    pub message_id: Option<String>,
    pub error_class: Option<&'static str>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SendLabels {
    provider: String,
    channel: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
    channel: &'static str,
}

/// A configured provider with its limits and metrics.
#[derive(Debug)]
struct Entry {
    name: String,
    kind: &'static str,
    channels: Vec<Channel>,
    provider: Box<dyn Provider>,
    slots: Arc<Semaphore>,
    rate: Option<rate::Rate>,
    timeout: Duration,
    /// Its series, per channel it sends, made once (a send is then an
    /// atomic add, no label lookup).
    metrics: BTreeMap<Channel, EntryMetrics>,
}

#[derive(Debug)]
struct EntryMetrics {
    seconds: Histogram,
    /// By result: `sent`, `queued`, then each failure class.
    results: Vec<(&'static str, Counter)>,
}

impl EntryMetrics {
    fn count(&self, result: &str) {
        if let Some((_, c)) = self.results.iter().find(|(r, _)| *r == result) {
            c.inc();
        }
    }
}

/// Every result a send can have, as its metric label.
const RESULTS: [&str; 10] = [
    "sent",
    "queued",
    "timeout",
    "rate_limited",
    "unavailable",
    "invalid_recipient",
    "unsubscribed",
    "auth",
    "rejected",
    "invalid",
];

/// Every configured provider, and each channel's default list.
#[derive(Debug, Default)]
pub struct Channels {
    entries: BTreeMap<String, Arc<Entry>>,
    /// Each channel's default route, resolved once.
    routes: BTreeMap<Channel, Vec<Arc<Entry>>>,
    sends: Family<SendLabels, Counter>,
    seconds: Family<ProviderLabels, Histogram>,
}

/// A provider configuration that does not make a provider.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The setting at fault (`providers.mail.port`).
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What building the providers needs from the node.
#[derive(Debug, Clone)]
pub struct Context {
    /// The secrets `secret:NAME` credentials name.
    pub secrets: crate::config::Secrets,
    /// The cluster whose Redis shares the rate limits (in-process when
    /// there is none).
    pub cluster: Option<Arc<sojourn_cluster::Cluster>>,
    /// Where addresses that come from workflows may go (a browser's push
    /// endpoint): the same guard as `http.request`.
    pub egress: crate::egress::EgressPolicy,
}

impl Channels {
    /// Builds every named provider; the first configuration that does not
    /// build is the error, named by its setting.
    pub fn build(
        providers: &BTreeMap<String, ProviderConfig>,
        channels: &BTreeMap<String, ChannelConfig>,
        cx: &Context,
    ) -> Result<Channels, ConfigError> {
        let mut out = Channels::default();
        for (name, config) in providers {
            let field = format!("providers.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::new(
                    field,
                    "a provider's name is letters, digits, - and _",
                ));
            }
            let limits = config.limits();
            limits.check(&format!("{field}.limits"))?;
            let built = config.build(&field, cx)?;
            let metrics = built
                .channels
                .iter()
                .map(|c| {
                    let results = RESULTS
                        .iter()
                        .map(|r| {
                            let labels = SendLabels {
                                provider: name.clone(),
                                channel: c.as_str(),
                                result: r,
                            };
                            (*r, out.sends.get_or_create(&labels).clone())
                        })
                        .collect();
                    let labels = ProviderLabels {
                        provider: name.clone(),
                        channel: c.as_str(),
                    };
                    let seconds = out.seconds.get_or_create(&labels).clone();
                    (*c, EntryMetrics { seconds, results })
                })
                .collect();
            let rate = limits.per_second.map(|per_second| {
                rate::Rate::new(name, per_second, limits.burst(), cx.cluster.clone())
            });
            out.entries.insert(
                name.clone(),
                Arc::new(Entry {
                    name: name.clone(),
                    kind: config.kind(),
                    channels: built.channels,
                    provider: built.provider,
                    slots: Arc::new(Semaphore::new(limits.concurrency)),
                    rate,
                    timeout: Duration::from_millis(limits.timeout_ms),
                    metrics,
                }),
            );
        }
        for (channel_name, c) in channels {
            let Some(channel) = Channel::parse(channel_name) else {
                return Err(ConfigError::new(
                    format!("channels.{channel_name}"),
                    "not a channel (email, sms, push, chat)",
                ));
            };
            for (n, name) in c.providers.iter().enumerate() {
                let field = format!("channels.{channel_name}.providers[{n}]");
                out.check_name(channel, name)
                    .map_err(|m| ConfigError::new(&field, m))?;
                if c.providers[..n].contains(name) {
                    return Err(ConfigError::new(field, format!("{name:?} is listed twice")));
                }
            }
            let route = c
                .providers
                .iter()
                .filter_map(|n| out.entries.get(n).cloned())
                .collect();
            out.routes.insert(channel, route);
        }
        Ok(out)
    }

    /// Whether `name` is a provider that sends `channel`.
    fn check_name(&self, channel: Channel, name: &str) -> Result<(), String> {
        match self.entries.get(name) {
            None => Err(format!(
                "no provider named {name:?} is configured (providers.{name})"
            )),
            Some(e) if !e.channels.contains(&channel) => Err(format!(
                "provider {name:?} ({}) does not send {channel}",
                e.kind
            )),
            Some(_) => Ok(()),
        }
    }

    /// Each named provider: name, kind, channels.
    pub fn list(&self) -> Vec<(String, &'static str, Vec<Channel>)> {
        self.entries
            .values()
            .map(|e| (e.name.clone(), e.kind, e.channels.clone()))
            .collect()
    }

    /// The channels that use provider `name` by default, with its place in
    /// their order.
    pub fn defaults_of(&self, name: &str) -> Vec<(Channel, usize)> {
        self.routes
            .iter()
            .filter_map(|(c, route)| route.iter().position(|e| e.name == name).map(|p| (*c, p)))
            .collect()
    }

    /// A workflow's channel actions against the providers: a channel with
    /// no provider, or a `provider` input naming one that is not configured
    /// (or does not send that channel), is an error at its node and field.
    pub fn check_workflow(
        &self,
        workflow: &sojourn_runtime::Workflow,
    ) -> Vec<sojourn_runtime::ValidationError> {
        let mut errors = Vec::new();
        for node in &workflow.nodes {
            let sojourn_runtime::model::NodeKind::Action(config) = &node.kind else {
                continue;
            };
            let Some(channel) = Channel::of_action(&config.action) else {
                continue;
            };
            let id = &node.id;
            match config.inputs.get("provider") {
                None | Some(Value::Null) => {
                    if self.routes.get(&channel).is_none_or(Vec::is_empty) {
                        errors.push(sojourn_runtime::ValidationError::at_node(
                            id,
                            "config.action",
                            format!(
                                "no {channel} provider is configured on this cluster (channels.{channel}.providers), and the node names none"
                            ),
                        ));
                    }
                }
                Some(p) => {
                    let names: Vec<Option<&str>> = match p {
                        Value::Array(list) => list.iter().map(Value::as_str).collect(),
                        other => vec![other.as_str()],
                    };
                    if names.is_empty() {
                        errors.push(sojourn_runtime::ValidationError::at_node(
                            id,
                            "config.inputs.provider",
                            "an empty list names no provider",
                        ));
                    }
                    for name in names {
                        let problem = match name {
                            None => Some("must be a provider's name or a list of them".to_owned()),
                            Some(n) if n.contains("{{") => Some(
                                "must be a provider's name, not a template (checked when the workflow is published)".to_owned(),
                            ),
                            Some(n) => self.check_name(channel, n).err(),
                        };
                        if let Some(message) = problem {
                            errors.push(sojourn_runtime::ValidationError::at_node(
                                id,
                                "config.inputs.provider",
                                message,
                            ));
                        }
                    }
                }
            }
        }
        errors
    }

    /// Verifies and reads a status report posted for provider `name`.
    pub fn verify_report(&self, name: &str, report: &Report<'_>) -> Result<Verified, ReportError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ReportError::UnknownProvider(name.to_owned()))?;
        entry.provider.verify_report(report)
    }

    /// [`Channels::verify_report`], after fetching what it needs (an SNS
    /// signing certificate).
    pub async fn check_report(
        &self,
        name: &str,
        report: &Report<'_>,
    ) -> Result<Verified, ReportError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ReportError::UnknownProvider(name.to_owned()))?;
        entry.provider.prepare_report(report).await?;
        entry.provider.verify_report(report)
    }

    /// Registers the providers' metrics.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "sojourn_channel_sends",
            "Messages handed to a provider, by provider, channel and result (sent, queued, or the failure's class)",
            self.sends.clone(),
        );
        r.register(
            "sojourn_channel_send_seconds",
            "How long a provider took to answer a send",
            self.seconds.clone(),
        );
    }

    /// The providers an attempt goes through, in order: the action's own
    /// (`provider`, a name or a list; a name listed twice is tried once),
    /// else the channel's.
    fn route(&self, channel: Channel, inputs: &Value) -> Result<Vec<Arc<Entry>>, SendError> {
        let named: Vec<&str> = match inputs.get("provider") {
            None | Some(Value::Null) => {
                return match self.routes.get(&channel) {
                    Some(route) if !route.is_empty() => Ok(route.clone()),
                    _ => Err(SendError::new(
                        ErrorClass::Invalid,
                        format!(
                            "no {channel} provider is configured on this node (channels.{channel}.providers)"
                        ),
                    )),
                };
            }
            Some(Value::String(name)) => vec![name.as_str()],
            Some(Value::Array(list)) => list
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    SendError::new(
                        ErrorClass::Invalid,
                        "inputs.provider: must be a list of names",
                    )
                })?,
            Some(_) => {
                return Err(SendError::new(
                    ErrorClass::Invalid,
                    "inputs.provider: must be a name or a list of names",
                ));
            }
        };
        let mut route: Vec<Arc<Entry>> = Vec::with_capacity(named.len());
        for name in named {
            self.check_name(channel, name).map_err(|m| {
                SendError::new(ErrorClass::Invalid, format!("inputs.provider: {m}"))
            })?;
            if let Some(e) = self.entries.get(name)
                && !route.iter().any(|r| Arc::ptr_eq(r, e))
            {
                route.push(e.clone());
            }
        }
        Ok(route)
    }

    /// Sends one channel message (its inputs already rendered and their
    /// secrets resolved) through its providers in order. Returns the
    /// action's outcome and one delivery per provider tried.
    pub async fn send(
        &self,
        channel: Channel,
        d: &Dispatch,
        inputs: &Value,
        fetcher: &crate::providers::HttpProvider,
    ) -> (ActionOutcome, Vec<Delivery>) {
        let message = match Message::parse(channel, inputs) {
            Ok(m) => m,
            Err(e) => {
                return (
                    failed(channel, None, &SendError::new(ErrorClass::Invalid, e)),
                    Vec::new(),
                );
            }
        };
        let route = match self.route(channel, inputs) {
            Ok(r) => r,
            Err(e) => return (failed(channel, None, &e), Vec::new()),
        };
        let attachments = match &message {
            Message::Email(e) if !e.attachments.is_empty() => {
                match email::fetch_attachments(fetcher, &e.attachments, d.timeout_ms).await {
                    Ok(a) => a,
                    Err(e) => return (failed(channel, None, &e), Vec::new()),
                }
            }
            _ => Vec::new(),
        };
        let out = Outgoing {
            message: &message,
            key: &d.idempotency_key,
            attachments: &attachments,
            inputs,
        };
        let recipient = message.recipient();
        let mut deliveries = Vec::with_capacity(1);
        let mut last: Option<(String, SendError)> = None;
        for (n, entry) in route.iter().enumerate() {
            let more = n + 1 < route.len();
            // A place among the provider's sends first, then a slot of its
            // rate: a slot taken while waiting for a place would be spent
            // later, in a burst above the rate.
            let Ok(_slot) = entry.slots.acquire().await else {
                continue;
            };
            if let Some(rate) = &entry.rate {
                match rate.take().await {
                    Ok(()) => {}
                    // Full, and another provider follows: that one.
                    Err(wait) if more => {
                        tracing::debug!(provider = %entry.name, ?wait, "rate limit full; trying the next provider");
                        continue;
                    }
                    Err(_) => rate.wait().await,
                }
            }
            let started_at = Utc::now();
            let clock = Instant::now();
            let result = match tokio::time::timeout(entry.timeout, entry.provider.send(&out)).await
            {
                Ok(r) => r,
                Err(_) => Err(SendError::new(
                    ErrorClass::Timeout,
                    format!("{} did not answer within {:?}", entry.name, entry.timeout),
                )),
            };
            let elapsed = clock.elapsed();
            if let Some(m) = entry.metrics.get(&channel) {
                m.seconds.observe(elapsed.as_secs_f64());
                m.count(match &result {
                    Ok(sent) => sent.status.as_str(),
                    Err(e) => e.class.as_str(),
                });
            }
            let mut delivery = Delivery {
                channel,
                provider: entry.name.clone(),
                recipient: recipient.clone(),
                status: "failed",
                message_id: None,
                error_class: None,
                error: None,
                started_at,
                duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            };
            match result {
                Ok(sent) => {
                    delivery.status = sent.status.as_str();
                    delivery.message_id = sent.message_id.clone();
                    deliveries.push(delivery);
                    let output = json!({
                        "provider": entry.name,
                        "channel": channel.as_str(),
                        "message_id": sent.message_id,
                        "status": sent.status.as_str(),
                    });
                    return (ActionOutcome::Success { output }, deliveries);
                }
                Err(e) => {
                    delivery.error_class = Some(e.class.as_str());
                    delivery.error = Some(e.message.clone());
                    deliveries.push(delivery);
                    // The error's text is in the outcome and the delivery
                    // log, scrubbed of the secrets the inputs used; not here.
                    tracing::info!(provider = %entry.name, class = e.class.as_str(), "a send failed");
                    let moves_on = e.moves_on();
                    last = Some((entry.name.clone(), e));
                    if !(moves_on && more) {
                        break;
                    }
                }
            }
        }
        let outcome = match &last {
            Some((provider, e)) => failed(channel, Some(provider), e),
            // Every provider was skipped (closed): tried again later.
            None => ActionOutcome::failure("no provider could take the message now", true),
        };
        (outcome, deliveries)
    }
}

/// The outcome of a failed send: its class and provider in the output.
fn failed(channel: Channel, provider: Option<&str>, e: &SendError) -> ActionOutcome {
    ActionOutcome::Failure {
        error: match provider {
            Some(p) => format!("{p}: {}", e.message),
            None => e.message.clone(),
        },
        retryable: e.class.retryable(),
        output: json!({
            "class": e.class.as_str(),
            "channel": channel.as_str(),
            "provider": provider,
            "code": e.code,
        }),
        retry_after_ms: e
            .retry_after
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// What a provider configuration builds.
#[derive(Debug)]
pub(crate) struct Built {
    pub channels: Vec<Channel>,
    pub provider: Box<dyn Provider>,
}

impl Built {
    pub(crate) fn one(channel: Channel, provider: impl Provider + 'static) -> Built {
        Built {
            channels: vec![channel],
            provider: Box::new(provider),
        }
    }
}
