//! Provider configurations: one type per provider, tagged by `kind`, as the
//! operator writes them (`[providers.<name>]` in the node's settings).
//! Registering a provider is one variant here and one arm in
//! [`ProviderConfig::build`].
//!
//! Credentials are [`Credential`]s: given inline (from the file or the
//! environment) or as `secret:NAME`, which reads the node's secret `NAME`
//! (`SOJOURN_SECRET_NAME`). They never print: `Debug` and serialization
//! (what `sojourn config` shows) say `[redacted]`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Built, Channel, ConfigError, Context};

/// A secret in a provider's configuration.
#[derive(Clone)]
pub struct Credential(SecretString);

impl Credential {
    pub fn new(value: impl Into<String>) -> Credential {
        Credential(SecretString::from(value.into()))
    }

    /// The value, reading `secret:NAME` from the node's secrets.
    pub(crate) fn resolve(&self, field: &str, cx: &Context) -> Result<SecretString, ConfigError> {
        let raw = self.0.expose_secret();
        match raw.strip_prefix("secret:") {
            Some(name) => cx
                .secrets
                .get(name)
                .map(|v| SecretString::from(v.to_owned()))
                .ok_or_else(|| {
                    ConfigError::new(
                        field,
                        format!("names the secret {name:?}, which is not set (secrets.{name}, SOJOURN_SECRET_{name})"),
                    )
                }),
            None if raw.is_empty() => Err(ConfigError::new(field, "is empty")),
            None => Ok(self.0.clone()),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Credential {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // `secret:NAME` is a reference, not a secret: shown as written.
        let raw = self.0.expose_secret();
        if raw.starts_with("secret:") {
            s.serialize_str(raw)
        } else {
            s.serialize_str("[redacted]")
        }
    }
}

impl<'de> Deserialize<'de> for Credential {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Credential::new)
    }
}

/// A provider's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sends to it in flight at once, on each node.
    pub concurrency: usize,
    /// Sends per second across the cluster (none: unlimited).
    pub per_second: Option<f64>,
    /// Sends allowed at once above the rate (default: one second's worth).
    pub burst: Option<u32>,
    /// How long one send may take.
    pub timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency: 32,
            per_second: None,
            burst: None,
            timeout_ms: 30_000,
        }
    }
}

impl Limits {
    pub(crate) fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.per_second.unwrap_or(1.0).ceil().max(1.0) as u32)
    }

    pub(crate) fn check(&self, field: &str) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.concurrency) {
            return Err(ConfigError::new(
                format!("{field}.concurrency"),
                "must be 1 to 10000",
            ));
        }
        if let Some(r) = self.per_second
            && !(r.is_finite() && r > 0.0 && r <= 1_000_000.0)
        {
            return Err(ConfigError::new(
                format!("{field}.per_second"),
                "must be more than 0 and at most 1000000",
            ));
        }
        if self.burst == Some(0) {
            return Err(ConfigError::new(
                format!("{field}.burst"),
                "must be at least 1",
            ));
        }
        if !(1..=3_600_000).contains(&self.timeout_ms) {
            return Err(ConfigError::new(
                format!("{field}.timeout_ms"),
                "must be 1 to 3600000",
            ));
        }
        Ok(())
    }
}

/// The providers a channel uses by default, in failover order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    pub providers: Vec<String>,
}

/// `log`: records each message in the node's log and sends nothing (the
/// quick start's provider). Any channel, or the ones listed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// `webhook`: POSTs each message as JSON (`channel`, `action`, `message`)
/// to a URL of the operator's, with the attempt's `Idempotency-Key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// May carry a token (in its path or query): a credential.
    pub url: Credential,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain, then STARTTLS, required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all: local relays and tests only.
    None,
}

/// `smtp`: any SMTP server, through lettre, with a connection pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default: 587 (STARTTLS), 465 (implicit TLS), 25 (none).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Credential>,
    /// The sender when a message names none.
    pub from: String,
    /// Connections kept open.
    #[serde(default = "default_pool")]
    pub pool_size: u32,
    #[serde(default)]
    pub limits: Limits,
}

fn default_pool() -> u32 {
    4
}

/// `sendgrid`: SendGrid's v3 mail send API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendgridConfig {
    pub api_key: Credential,
    pub from: String,
    /// The Signed Event Webhook's verification key (base64, as SendGrid
    /// shows it): status reports are refused without it.
    #[serde(default)]
    pub webhook_public_key: Option<String>,
    #[serde(default = "sendgrid_url")]
    pub base_url: String,
    #[serde(default)]
    pub limits: Limits,
}

fn sendgrid_url() -> String {
    "https://api.sendgrid.com".into()
}

/// `mailgun`: Mailgun's messages API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailgunConfig {
    pub domain: String,
    pub api_key: Credential,
    pub from: String,
    /// The HTTP webhook signing key: status reports are refused without it.
    #[serde(default)]
    pub webhook_signing_key: Option<Credential>,
    /// `https://api.eu.mailgun.net` for the EU region.
    #[serde(default = "mailgun_url")]
    pub base_url: String,
    #[serde(default)]
    pub limits: Limits,
}

fn mailgun_url() -> String {
    "https://api.mailgun.net".into()
}

/// `ses`: Amazon SES v2 (`SendEmail`, the raw MIME message), signed with
/// SigV4.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SesConfig {
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Credential,
    pub from: String,
    /// Events (deliveries, bounces) go where this configuration set says.
    #[serde(default)]
    pub configuration_set: Option<String>,
    /// Default: `https://email.<region>.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The SNS topic SES publishes this provider's events to (through the
    /// configuration set): status reports from any other topic are refused,
    /// and without it none are taken.
    #[serde(default)]
    pub events_topic_arn: Option<String>,
    /// Where SNS signing certificates may come from. Default:
    /// `https://sns.<region>.amazonaws.com/`.
    #[serde(default)]
    pub sns_cert_url_prefix: Option<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// `sns`: Amazon SNS `Publish` to a phone number, signed with SigV4.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnsConfig {
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Credential,
    /// `Transactional` (default) or `Promotional`.
    #[serde(default)]
    pub sms_type: Option<String>,
    /// Where sender ids are supported.
    #[serde(default)]
    pub sender_id: Option<String>,
    /// Default: `https://sns.<region>.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// `twilio`: Twilio's Messages API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: Credential,
    /// A sender number; or `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Where Twilio reports status changes (this node's
    /// `/v1/webhooks/twilio/<name>` behind its public address).
    /// May carry basic-auth credentials, as Twilio suggests: a credential.
    #[serde(default)]
    pub status_callback: Option<Credential>,
    #[serde(default = "twilio_url")]
    pub base_url: String,
    #[serde(default)]
    pub limits: Limits,
}

fn twilio_url() -> String {
    "https://api.twilio.com".into()
}

/// `vonage`: Vonage's (Nexmo's) SMS API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VonageConfig {
    pub api_key: String,
    pub api_secret: Credential,
    pub from: String,
    #[serde(default = "vonage_url")]
    pub base_url: String,
    #[serde(default)]
    pub limits: Limits,
}

fn vonage_url() -> String {
    "https://rest.nexmo.com".into()
}

/// `slack`: an incoming webhook, or `chat.postMessage` with a bot token
/// (then a message names its `channel`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    #[serde(default)]
    pub webhook_url: Option<Credential>,
    #[serde(default)]
    pub bot_token: Option<Credential>,
    #[serde(default = "slack_url")]
    pub base_url: String,
    #[serde(default)]
    pub limits: Limits,
}

fn slack_url() -> String {
    "https://slack.com".into()
}

/// `discord` and `teams`: an incoming webhook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatWebhookConfig {
    pub webhook_url: Credential,
    #[serde(default)]
    pub limits: Limits,
}

/// `fcm`: Firebase Cloud Messaging's HTTP v1 API, authorised with an
/// OAuth2 token made from a service account (a signed JWT exchanged at its
/// token endpoint; the token is cached until shortly before it expires).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account's JSON key (its content, or `secret:NAME`).
    pub service_account: Credential,
    /// Default: the service account's `project_id`.
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default = "fcm_url")]
    pub base_url: String,
    /// Default: the service account's `token_uri`.
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default)]
    pub limits: Limits,
}

fn fcm_url() -> String {
    "https://fcm.googleapis.com".into()
}

/// `apns`: Apple Push Notification service over HTTP/2 with a token-based
/// (ES256 JWT) provider key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    pub team_id: String,
    pub key_id: String,
    /// The `.p8` key's PEM (its content, or `secret:NAME`).
    pub private_key: Credential,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.sandbox.push.apple.com` for development builds.
    #[serde(default = "apns_url")]
    pub base_url: String,
    #[serde(default)]
    pub limits: Limits,
}

fn apns_url() -> String {
    "https://api.push.apple.com".into()
}

/// `webpush`: Web Push to browsers (RFC 8030), payloads encrypted per
/// RFC 8291 (aes128gcm), signed with VAPID (RFC 8292).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebpushConfig {
    /// The VAPID private key: 32 bytes, base64url (or `secret:NAME`).
    pub vapid_private_key: Credential,
    /// Who to contact about these pushes: `mailto:…` or `https://…`.
    pub subject: String,
    #[serde(default)]
    pub limits: Limits,
}

/// One named provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderConfig {
    Log(LogConfig),
    Webhook(WebhookConfig),
    Smtp(SmtpConfig),
    Sendgrid(SendgridConfig),
    Mailgun(MailgunConfig),
    Ses(SesConfig),
    Twilio(TwilioConfig),
    Sns(SnsConfig),
    Vonage(VonageConfig),
    Slack(SlackConfig),
    Discord(ChatWebhookConfig),
    Teams(ChatWebhookConfig),
    Fcm(FcmConfig),
    Apns(ApnsConfig),
    Webpush(WebpushConfig),
}

impl ProviderConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Log(_) => "log",
            ProviderConfig::Webhook(_) => "webhook",
            ProviderConfig::Smtp(_) => "smtp",
            ProviderConfig::Sendgrid(_) => "sendgrid",
            ProviderConfig::Mailgun(_) => "mailgun",
            ProviderConfig::Ses(_) => "ses",
            ProviderConfig::Sns(_) => "sns",
            ProviderConfig::Twilio(_) => "twilio",
            ProviderConfig::Vonage(_) => "vonage",
            ProviderConfig::Slack(_) => "slack",
            ProviderConfig::Discord(_) => "discord",
            ProviderConfig::Teams(_) => "teams",
            ProviderConfig::Fcm(_) => "fcm",
            ProviderConfig::Apns(_) => "apns",
            ProviderConfig::Webpush(_) => "webpush",
        }
    }

    pub fn limits(&self) -> &Limits {
        match self {
            ProviderConfig::Log(c) => &c.limits,
            ProviderConfig::Webhook(c) => &c.limits,
            ProviderConfig::Smtp(c) => &c.limits,
            ProviderConfig::Sendgrid(c) => &c.limits,
            ProviderConfig::Mailgun(c) => &c.limits,
            ProviderConfig::Ses(c) => &c.limits,
            ProviderConfig::Sns(c) => &c.limits,
            ProviderConfig::Twilio(c) => &c.limits,
            ProviderConfig::Vonage(c) => &c.limits,
            ProviderConfig::Slack(c) => &c.limits,
            ProviderConfig::Discord(c) | ProviderConfig::Teams(c) => &c.limits,
            ProviderConfig::Fcm(c) => &c.limits,
            ProviderConfig::Apns(c) => &c.limits,
            ProviderConfig::Webpush(c) => &c.limits,
        }
    }

    /// A `log` provider for every channel.
    pub fn log() -> ProviderConfig {
        ProviderConfig::Log(LogConfig::default())
    }

    /// A `webhook` provider for every channel.
    pub fn webhook(url: impl Into<String>) -> ProviderConfig {
        ProviderConfig::Webhook(WebhookConfig {
            url: Credential::new(url),
            channels: Vec::new(),
            limits: Limits::default(),
        })
    }

    /// Makes the provider; `field` is its setting (`providers.<name>`).
    pub(crate) fn build(&self, field: &str, cx: &Context) -> Result<Built, ConfigError> {
        let timeout = std::time::Duration::from_millis(self.limits().timeout_ms);
        Ok(match self {
            ProviderConfig::Log(c) => Built {
                channels: channels(field, &c.channels)?,
                provider: Box::new(super::log::LogProvider {
                    name: field_name(field),
                }),
            },
            ProviderConfig::Webhook(c) => Built {
                channels: channels(field, &c.channels)?,
                provider: Box::new(super::webhook::WebhookProvider::new(
                    field, &c.url, cx, timeout,
                )?),
            },
            ProviderConfig::Smtp(c) => super::email::smtp::build(field, c, cx)?,
            ProviderConfig::Sendgrid(c) => super::email::sendgrid::build(field, c, cx, timeout)?,
            ProviderConfig::Mailgun(c) => super::email::mailgun::build(field, c, cx, timeout)?,
            ProviderConfig::Ses(c) => super::email::ses::build(field, c, cx, timeout)?,
            ProviderConfig::Sns(c) => super::sms::sns::build(field, c, cx, timeout)?,
            ProviderConfig::Twilio(c) => super::sms::twilio::build(field, c, cx, timeout)?,
            ProviderConfig::Vonage(c) => super::sms::vonage::build(field, c, cx, timeout)?,
            ProviderConfig::Slack(c) => super::chat::slack::build(field, c, cx, timeout)?,
            ProviderConfig::Discord(c) => super::chat::discord::build(field, c, cx, timeout)?,
            ProviderConfig::Teams(c) => super::chat::teams::build(field, c, cx, timeout)?,
            ProviderConfig::Fcm(c) => super::push::fcm::build(field, c, cx, timeout)?,
            ProviderConfig::Apns(c) => super::push::apns::build(field, c, cx, timeout)?,
            ProviderConfig::Webpush(c) => super::push::webpush::build(field, c, cx, timeout)?,
        })
    }
}

fn field_name(field: &str) -> String {
    field.strip_prefix("providers.").unwrap_or(field).to_owned()
}

/// The channels listed (all when none are).
fn channels(field: &str, names: &[String]) -> Result<Vec<Channel>, ConfigError> {
    if names.is_empty() {
        return Ok(Channel::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            Channel::parse(n).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.channels"),
                    format!("{n:?} is not a channel (email, sms, push, chat)"),
                )
            })
        })
        .collect()
}

/// Checks that a URL setting is an http(s) URL.
pub(crate) fn http_url(field: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ConfigError::new(field, format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::new(field, "must be an http(s) URL"));
    }
    Ok(parsed)
}
