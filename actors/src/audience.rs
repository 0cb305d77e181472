//! Sends respect the recipient, checked at send time (DESIGN invariant 8):
//! before a channel worker sends a batch it reads the batch's audience at
//! once ([`AudienceStore::audience_of`]: the executions' subjects, their
//! profiles, the suppressed addresses, the namespaces' frequency caps) and
//! decides each message:
//!
//! - `to: "subject"` is resolved from the profile *now* (an address changed
//!   after the journey started is the one used); none: `no_address`;
//! - an address on the suppression list is never sent to, whatever the
//!   category: `suppressed`;
//! - a marketing message (any category but `transactional`) to a subject
//!   who opted out of it, its channel or all marketing: `unsubscribed`;
//! - the caps that count it are reserved atomically across the cluster
//!   ([`AudienceStore::reserve_sends`]): its workflow's own caps
//!   (`Dispatch::frequency_caps`) over the namespace's; over one: `capped`
//!   (skipped), or deferred to when the cap allows it.
//!
//! A message not sent gets a delivery row saying why and the outcome
//! [`ActionOutcome::Skipped`] (the node's `skipped` branch) or
//! [`ActionOutcome::Deferred`]. Marketing email carries `List-Unsubscribe`
//! and one-click `List-Unsubscribe-Post` (RFC 8058); templates get the same
//! signed link as `{{ unsubscribe_url }}`.

use std::collections::HashMap;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit as _, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Map;
use serde_json::{Value, json};
use sojourn_persistence::{
    AudienceStore, CapRequest, CapVerdict, FrequencyCap, OnCap, ProfilePatch, addresses_of,
    normalize_address,
};
use sojourn_runtime::caps::WorkflowCaps;
use sojourn_runtime::{ActionOutcome, Dispatch};

use crate::channels::message::check_address;
use crate::channels::{Channel, Delivery};

pub use sojourn_runtime::caps::{TRANSACTIONAL, is_category};

/// The secret name `{{ unsubscribe_url }}` renders a marker for: the worker
/// puts the recipient's signed link there.
pub const UNSUBSCRIBE_MARKER: &str = sojourn_runtime::secrets::UNSUBSCRIBE_URL;

/// How the audience checks run on a node.
#[derive(Clone, Default)]
pub struct AudienceConfig {
    /// Signs unsubscribe links. Without it there are no links: a template
    /// using `{{ unsubscribe_url }}` fails, and email goes without
    /// `List-Unsubscribe`.
    pub unsubscribe_key: Option<SecretString>,
    /// Where recipients reach this cluster (`https://sojourn.example.com`):
    /// the links point there.
    pub public_url: Option<String>,
    /// How long a link works, in seconds (`None`: forever).
    pub link_ttl_seconds: Option<u64>,
    /// A channel's category when an action names none (else `marketing`).
    pub default_categories: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for AudienceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudienceConfig")
            .field(
                "unsubscribe_key",
                &self.unsubscribe_key.as_ref().map(|_| "[redacted]"),
            )
            .field("public_url", &self.public_url)
            .field("link_ttl_seconds", &self.link_ttl_seconds)
            .field("default_categories", &self.default_categories)
            .finish()
    }
}

/// What an unsubscribe link names: one recipient of one category on one
/// channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribe {
    #[serde(rename = "n")]
    pub namespace: String,
    /// The subject, when the message had one: its preferences change. Else
    /// the address goes on the suppression list.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(rename = "c")]
    pub channel: String,
    #[serde(rename = "k")]
    pub category: String,
    /// The address the message went to (normalized).
    #[serde(rename = "a")]
    pub address: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// The message it came in (its idempotency key): an unsubscribe is
    /// counted against its delivery (links made before had none).
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("unsubscribe links are not configured on this node (audience.unsubscribe_key)")]
    NotConfigured,
    #[error("the link is not one of ours (altered or made elsewhere)")]
    Forged,
    #[error("the link has expired")]
    Expired,
}

/// The audience side of a node: link signing and the per-batch decisions.
#[derive(Debug, Clone, Default)]
pub struct Audience {
    config: AudienceConfig,
    /// Made once from the unsubscribe key (a token is made per message).
    keys: Option<Keys>,
}

/// The keyed HMAC (links signed before tokens were sealed) and the sealing
/// key derived from the same secret.
#[derive(Clone)]
struct Keys {
    mac: HmacSha256,
    sealer: XChaCha20Poly1305,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[keys]")
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// XChaCha20-Poly1305's nonce, in bytes.
const NONCE_LEN: usize = 24;

impl Audience {
    pub fn new(config: AudienceConfig) -> Audience {
        let keys = config.unsubscribe_key.as_ref().and_then(|key| {
            let mac = HmacSha256::new_from_slice(key.expose_secret().as_bytes()).ok()?;
            // The sealing key: an HMAC of a fixed label (one secret to
            // configure, a key per use).
            let mut derive = mac.clone();
            derive.update(b"sojourn unsubscribe token v2");
            let sealer =
                XChaCha20Poly1305::new_from_slice(derive.finalize().into_bytes().as_slice())
                    .ok()?;
            Some(Keys { mac, sealer })
        });
        Audience { config, keys }
    }

    /// The category of a message: its `category` input, else the channel's
    /// configured default, else `marketing`.
    pub fn category_of(&self, channel: Channel, inputs: &Value) -> String {
        match inputs.get("category").and_then(Value::as_str) {
            Some(c) if !c.trim().is_empty() => c.trim().to_ascii_lowercase(),
            _ => self
                .config
                .default_categories
                .get(channel.as_str())
                .cloned()
                .unwrap_or_else(|| "marketing".to_owned()),
        }
    }

    /// The marketing categories this node names by default (a channel's
    /// configured one, and `marketing`).
    pub fn categories(&self) -> Vec<String> {
        let mut all: Vec<String> = self.config.default_categories.values().cloned().collect();
        all.push("marketing".to_owned());
        all.retain(|c| c != TRANSACTIONAL);
        all.sort();
        all.dedup();
        all
    }

    fn mac(&self) -> Option<HmacSha256> {
        self.keys.as_ref().map(|k| k.mac.clone())
    }

    fn cipher(&self) -> Option<&XChaCha20Poly1305> {
        self.keys.as_ref().map(|k| &k.sealer)
    }

    /// A token for `u`: sealed (XChaCha20-Poly1305, a random 192-bit nonce),
    /// so the link neither shows the subject and address nor can be
    /// altered. `base64url(nonce ‖ ciphertext)`.
    pub fn sign(&self, u: &Unsubscribe) -> Option<String> {
        let cipher = self.cipher()?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(&nonce, serde_json::to_vec(u).ok()?.as_slice())
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// The link for `u`, where recipients reach the cluster.
    pub fn link(&self, u: &Unsubscribe) -> Option<String> {
        let base = self.config.public_url.as_deref()?.trim_end_matches('/');
        Some(format!("{base}/v1/unsubscribe/{}", self.sign(u)?))
    }

    /// Reads a token: what it names, if we made it and it has not expired.
    /// Links sent before tokens were sealed (`body.signature`, HMAC-SHA256)
    /// still work.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Unsubscribe, LinkError> {
        let json = match token.split_once('.') {
            Some((body, sig)) => {
                let mut mac = self.mac().ok_or(LinkError::NotConfigured)?;
                let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| LinkError::Forged)?;
                mac.update(body.as_bytes());
                mac.verify_slice(&sig).map_err(|_| LinkError::Forged)?;
                URL_SAFE_NO_PAD
                    .decode(body)
                    .map_err(|_| LinkError::Forged)?
            }
            None => {
                let cipher = self.cipher().ok_or(LinkError::NotConfigured)?;
                let raw = URL_SAFE_NO_PAD
                    .decode(token)
                    .map_err(|_| LinkError::Forged)?;
                if raw.len() < NONCE_LEN {
                    return Err(LinkError::Forged);
                }
                let (nonce, sealed) = raw.split_at(NONCE_LEN);
                let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| LinkError::Forged)?;
                cipher
                    .decrypt(&XNonce::from(nonce), sealed)
                    .map_err(|_| LinkError::Forged)?
            }
        };
        let u: Unsubscribe = serde_json::from_slice(&json).map_err(|_| LinkError::Forged)?;
        if u.expires.is_some_and(|x| x < now.timestamp()) {
            return Err(LinkError::Expired);
        }
        Ok(u)
    }

    fn expiry(&self, now: DateTime<Utc>) -> Option<i64> {
        self.config.link_ttl_seconds.map(|s| {
            now.timestamp()
                .saturating_add(i64::try_from(s).unwrap_or(i64::MAX))
        })
    }
}

// ---- profile updates (the API and event triggers) --------------------------

fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A profile's fields to write: each one given replaces what is there
/// (`null` clears it); `attributes` and the preference maps merge key by key
/// on `POST` (a `null` attribute removes it) and replace on `PUT`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileIn {
    /// Any JSON object: what segments and conditions read.
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "some")]
    pub email: Option<Option<String>>,
    /// E.164 (`+33612345678`).
    #[serde(default, deserialize_with = "some")]
    pub phone: Option<Option<String>>,
    /// Device tokens (strings) and browser `PushSubscription`s (objects),
    /// newest last; `push.send` with `to: "subject"` uses the newest.
    #[serde(default)]
    pub push: Option<Vec<Value>>,
    /// A chat user or channel id.
    #[serde(default, deserialize_with = "some")]
    pub chat: Option<Option<String>>,
    /// An IANA time zone (`Europe/Paris`).
    #[serde(default, deserialize_with = "some")]
    pub timezone: Option<Option<String>>,
    /// A BCP 47 tag (`fr-FR`).
    #[serde(default, deserialize_with = "some")]
    pub locale: Option<Option<String>>,
    #[serde(default)]
    pub preferences: Option<PreferencesIn>,
}

/// What the person agreed to receive (marketing only: transactional
/// messages ignore preferences).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferencesIn {
    /// No marketing message at all.
    #[serde(default)]
    pub opted_out: Option<bool>,
    /// Per channel: `{"sms": false}`.
    #[serde(default)]
    pub channels: std::collections::BTreeMap<String, bool>,
    /// Per category: `{"newsletter": false}`.
    #[serde(default)]
    pub categories: std::collections::BTreeMap<String, bool>,
}

impl ProfileIn {
    /// The patch, every field checked (`prefix` names where it came from).
    pub fn patch(self, prefix: &str) -> Result<ProfilePatch, FieldError> {
        let f = |name: &str| format!("{prefix}{name}");
        let check = |channel: Channel, name: &str, v: Option<Option<String>>| match v {
            Some(Some(a)) => check_address(channel, &f(name), &a)
                .map(|a| Some(Some(a)))
                .map_err(|e| {
                    let (field, msg) = e.split_once(": ").unwrap_or((name, &e));
                    FieldError::new(field, msg)
                }),
            other => Ok(other),
        };
        let email = check(Channel::Email, "email", self.email)?;
        let phone = check(Channel::Sms, "phone", self.phone)?;
        if let Some(push) = &self.push {
            if push.len() > 20 {
                return Err(FieldError::new(&f("push"), "at most 20 devices"));
            }
            for (n, p) in push.iter().enumerate() {
                let ok = match p {
                    Value::String(t) => !t.trim().is_empty() && t.len() <= 4096,
                    Value::Object(o) => {
                        o.get("endpoint")
                            .and_then(Value::as_str)
                            .is_some_and(|e| e.starts_with("https://") || e.starts_with("http://"))
                            && o.get("keys").and_then(|k| k.get("p256dh")).is_some()
                            && o.get("keys").and_then(|k| k.get("auth")).is_some()
                    }
                    _ => false,
                };
                if !ok {
                    return Err(FieldError::new(
                        &f(&format!("push[{n}]")),
                        "must be a device token or a PushSubscription (endpoint, keys.p256dh, keys.auth)",
                    ));
                }
            }
        }
        if let Some(Some(tz)) = &self.timezone {
            sojourn_runtime::time::parse_timezone(tz)
                .map_err(|e| FieldError::new(&f("timezone"), e))?;
        }
        if let Some(Some(l)) = &self.locale
            && (l.is_empty()
                || l.len() > 35
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(FieldError::new(
                &f("locale"),
                format!("{l:?} is not a locale tag"),
            ));
        }
        let prefs = self.preferences.unwrap_or_default();
        for c in prefs.channels.keys() {
            if Channel::parse(c).is_none() {
                return Err(FieldError::new(
                    &f(&format!("preferences.channels.{c}")),
                    "not a channel (email, sms, push, chat)",
                ));
            }
        }
        for c in prefs.categories.keys() {
            if !is_category(c) {
                return Err(FieldError::new(
                    &f(&format!("preferences.categories.{c}")),
                    "a category is 1 to 200 letters, digits, '-', '_' or '.'",
                ));
            }
        }
        Ok(ProfilePatch {
            attributes: self.attributes,
            email,
            phone,
            chat: self.chat,
            push: self.push,
            timezone: self.timezone,
            locale: self.locale,
            opted_out: prefs.opted_out,
            channels: prefs.channels,
            categories: prefs.categories,
        })
    }
}

/// A field of a profile update that does not read, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl std::fmt::Display) -> FieldError {
        FieldError {
            field: field.to_owned(),
            message: message.to_string(),
        }
    }
}

/// A subject: 1 to 200 characters, none a control character (the API's
/// paths, event triggers and imports hold subjects to it).
pub fn is_subject(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 200 && !s.chars().any(char::is_control)
}

/// One message of a batch, as the audience sees it.
#[derive(Debug)]
pub struct Job<'a> {
    pub execution_id: &'a str,
    pub dispatch: &'a Dispatch,
}

/// What to do with one message.
#[derive(Debug)]
pub enum Plan {
    /// Send it, with these inputs when they changed (the address resolved,
    /// the unsubscribe headers), and this link for `{{ unsubscribe_url }}`.
    Send {
        inputs: Option<Value>,
        link: Option<String>,
        /// The cap reservation to give back if it fails:
        /// (namespace, subject, key).
        counted: Option<(String, String, String)>,
    },
    /// Not sent: this outcome, and this delivery row if it reached the
    /// audience's decision (a refused input has none).
    Done(ActionOutcome, Option<Delivery>),
}

impl Plan {
    /// Send it as it is (no audience applies).
    pub fn unchanged() -> Plan {
        Plan::Send {
            inputs: None,
            link: None,
            counted: None,
        }
    }
}

/// Where a message that may go goes: namespace, subject, address
/// (normalized), and the value that replaces `"subject"` in its inputs.
type Target = (String, Option<String>, String, Option<Value>);

/// What one message is, before the store is asked.
struct Read {
    category: String,
    to_subject: bool,
    /// Literal addresses (normalized).
    literal: Vec<String>,
}

fn read(audience: &Audience, channel: Channel, inputs: &Value) -> Read {
    let category = audience.category_of(channel, inputs);
    let field = match channel {
        Channel::Chat => "channel",
        _ => "to",
    };
    let target = inputs.get(field).or_else(|| inputs.get("to"));
    let to_subject = target.and_then(Value::as_str) == Some("subject");
    let mut literal = Vec::new();
    if !to_subject {
        match (channel, target) {
            (Channel::Email, Some(Value::String(s))) => literal.extend(
                s.split(',')
                    .filter(|a| !a.trim().is_empty())
                    .map(|a| normalize_address("email", a)),
            ),
            (Channel::Email, Some(Value::Array(list))) => literal.extend(
                list.iter()
                    .filter_map(Value::as_str)
                    .map(|a| normalize_address("email", a)),
            ),
            // As the message will read it (E.164, separators dropped); a
            // number that does not read fails at send time anyway.
            (Channel::Sms, Some(Value::String(s))) => literal
                .push(check_address(Channel::Sms, "to", s).unwrap_or_else(|_| s.trim().to_owned())),
            (_, Some(Value::String(s))) => literal.push(s.trim().to_owned()),
            _ => {}
        }
        if channel == Channel::Push {
            if let Some(t) = inputs.get("token").and_then(Value::as_str) {
                literal.push(t.trim().to_owned());
            }
            if let Some(e) = inputs
                .get("subscription")
                .and_then(|s| s.get("endpoint"))
                .and_then(Value::as_str)
            {
                literal.push(e.trim().to_owned());
            }
        }
    }
    Read {
        category,
        to_subject,
        literal,
    }
}

/// Decides a batch of one channel's messages: one read of the audience, and
/// one transaction per namespace whose caps count some of them.
pub async fn plan<S: AudienceStore>(
    store: &S,
    audience: &Audience,
    channel: Channel,
    jobs: &[Job<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<Plan>, sojourn_persistence::Error> {
    let reads: Vec<Read> = jobs
        .iter()
        .map(|j| read(audience, channel, &j.dispatch.inputs))
        .collect();
    let ids: Vec<&str> = jobs.iter().map(|j| j.execution_id).collect();
    let mut literal: Vec<String> = reads.iter().flat_map(|r| r.literal.clone()).collect();
    literal.sort();
    literal.dedup();
    let facts = store.audience_of(channel.as_str(), &ids, &literal).await?;
    let mut plans: Vec<Option<Plan>> = Vec::with_capacity(jobs.len());
    // (namespace) → (job index, request)
    let mut caps_asked: HashMap<String, (Vec<usize>, Vec<CapRequest>)> = HashMap::new();
    // A workflow's caps over its namespace's, made once per batch and
    // shared by its requests.
    let mut own_caps: HashMap<(&str, &WorkflowCaps), Arc<[FrequencyCap]>> = HashMap::new();
    let mut targets: Vec<Option<Target>> = Vec::with_capacity(jobs.len());
    for (i, (job, r)) in jobs.iter().zip(&reads).enumerate() {
        let d = job.dispatch;
        let skip = |status: &'static str, reason: String, recipient: String| {
            Some(Plan::Done(
                ActionOutcome::Skipped {
                    reason: reason.clone(),
                    output: json!({"status": status, "channel": channel.as_str(), "category": r.category}),
                },
                Some(not_sent(channel, status, recipient, reason, now)),
            ))
        };
        if !is_category(&r.category) {
            plans.push(Some(Plan::Done(
                ActionOutcome::failure(
                    format!(
                        "inputs.category: {:?} is not a category (1 to 200 letters, digits, '-', '_', '.')",
                        r.category
                    ),
                    false,
                ),
                None,
            )));
            targets.push(None);
            continue;
        }
        let Some((ns, subject)) = facts.executions.get(job.execution_id) else {
            // The attempt began, so its execution is there; if not, the
            // send goes as it would have without an audience.
            plans.push(Some(Plan::unchanged()));
            targets.push(None);
            continue;
        };
        let profile = subject
            .as_ref()
            .and_then(|s| facts.profiles.get(&(ns.clone(), s.clone())));
        // The address, resolved now.
        let (address, replaced) = if r.to_subject {
            match profile.and_then(|p| resolve(channel, &p.addresses)) {
                Some((shown, value)) => (normalize_address(channel.as_str(), &shown), Some(value)),
                None => {
                    let reason = match subject {
                        None => "to is \"subject\" but the execution has no subject".to_owned(),
                        Some(s) => {
                            format!("the profile of {s:?} has no {} address", channel.as_str())
                        }
                    };
                    plans.push(skip("no_address", reason, String::new()));
                    targets.push(None);
                    continue;
                }
            }
        } else {
            (r.literal.first().cloned().unwrap_or_default(), None)
        };
        let checked: Vec<&str> = if r.to_subject {
            vec![address.as_str()]
        } else {
            r.literal.iter().map(String::as_str).collect()
        };
        // An address unsubscribed by a link (no subject to hold the
        // preference) holds back marketing only; a bounce, a complaint or
        // an operator's entry holds back everything.
        if let Some(hit) = checked.iter().find(|a| {
            facts
                .suppressed
                .get(&(ns.clone(), (**a).to_owned()))
                .is_some_and(|why| why != "unsubscribed" || r.category != TRANSACTIONAL)
        }) {
            plans.push(skip(
                "suppressed",
                format!("{} is on the suppression list", mask(channel, hit)),
                (*hit).to_owned(),
            ));
            targets.push(None);
            continue;
        }
        if r.category != TRANSACTIONAL
            && let Some(why) =
                profile.and_then(|p| p.preferences.refuses(channel.as_str(), &r.category))
        {
            plans.push(skip("unsubscribed", why, address.clone()));
            targets.push(None);
            continue;
        }
        if r.category != TRANSACTIONAL
            && let Some(s) = subject
        {
            let namespace_caps = facts.caps.get(ns).map_or(&[][..], Vec::as_slice);
            let own = d.frequency_caps.as_deref().map(|w| {
                own_caps
                    .entry((ns.as_str(), w))
                    .or_insert_with(|| w.over(namespace_caps).into())
                    .clone()
            });
            let scopes = facts.scopes.get(ns).map_or(&[][..], Vec::as_slice);
            let ch = channel.as_str();
            let counted = namespace_caps.iter().any(|c| c.counts(ch, &r.category))
                || own
                    .iter()
                    .flat_map(|c| c.iter())
                    .any(|c| c.counts(ch, &r.category))
                || scopes.iter().any(|c| {
                    sojourn_runtime::caps::matches(&c.channel, &c.category, ch, &r.category)
                });
            if counted {
                let (at, requests) = caps_asked.entry(ns.clone()).or_default();
                at.push(i);
                requests.push(CapRequest {
                    subject: s.clone(),
                    // The attempt's key: each pass of a node through a loop
                    // counts; a retry follows a release, so counts once.
                    key: d.idempotency_key.clone(),
                    channel: ch.to_owned(),
                    category: r.category.clone(),
                    // The workflow's own caps decide its sends.
                    caps: own,
                });
            }
        }
        plans.push(None);
        targets.push(Some((ns.clone(), subject.clone(), address, replaced)));
    }
    let mut counted: HashMap<usize, (String, String, String)> = HashMap::new();
    for (ns, (at, requests)) in caps_asked {
        let caps = facts.caps.get(&ns).map_or(&[][..], Vec::as_slice);
        let scopes = facts.scopes.get(&ns).map_or(&[][..], Vec::as_slice);
        let verdicts = store
            .reserve_sends(&ns, caps, scopes, &requests, now)
            .await?;
        for ((i, req), v) in at.into_iter().zip(requests).zip(verdicts) {
            match v {
                CapVerdict::Allowed => {
                    counted.insert(i, (ns.clone(), req.subject, req.key));
                }
                CapVerdict::Capped { until, on_cap, cap } => {
                    let address = targets[i].as_ref().map(|t| t.2.clone()).unwrap_or_default();
                    targets[i] = None;
                    let reason = format!(
                        "frequency cap: {cap} (the next may go at {})",
                        until.to_rfc3339()
                    );
                    let outcome = match on_cap {
                        OnCap::Skip => ActionOutcome::Skipped {
                            reason: reason.clone(),
                            output: json!({"status": "capped", "channel": channel.as_str(), "category": req.category, "until": until}),
                        },
                        OnCap::Defer => ActionOutcome::Deferred {
                            until,
                            reason: reason.clone(),
                        },
                    };
                    let status = match on_cap {
                        OnCap::Skip => "capped",
                        OnCap::Defer => "deferred",
                    };
                    plans[i] = Some(Plan::Done(
                        outcome,
                        Some(not_sent(channel, status, address, reason, now)),
                    ));
                }
            }
        }
    }
    Ok(plans
        .into_iter()
        .zip(targets)
        .enumerate()
        .map(|(i, (plan, target))| {
            if let Some(p) = plan {
                return p;
            }
            let Some((ns, subject, address, replaced)) = target else {
                return Plan::unchanged();
            };
            let job = &jobs[i];
            let r = &reads[i];
            // The link changes the subject's preferences only when the
            // message went to the subject's own address; a literal address
            // gets a link of its own (without the subject); a message to
            // several addresses gets none (whose would it be?).
            let own = r.to_subject
                || subject.as_ref().is_some_and(|s| {
                    facts
                        .profiles
                        .get(&(ns.clone(), s.clone()))
                        .is_some_and(|p| {
                            addresses_of(&p.addresses, channel.as_str())
                                .iter()
                                .any(|a| normalize_address(channel.as_str(), a) == address)
                        })
                });
            let single = r.to_subject || r.literal.len() == 1;
            let link = (r.category != TRANSACTIONAL && single)
                .then(|| {
                    audience.link(&Unsubscribe {
                        namespace: ns,
                        subject: subject.filter(|_| own),
                        channel: channel.as_str().to_owned(),
                        category: r.category.clone(),
                        address,
                        expires: audience.expiry(now),
                        message: Some(job.dispatch.idempotency_key.clone()),
                    })
                })
                .flatten();
            let inputs = rewrite(channel, &job.dispatch.inputs, replaced, link.as_deref());
            Plan::Send {
                inputs,
                link,
                counted: counted.remove(&i),
            }
        })
        .collect())
}

/// The profile's address for the channel: (as logged, as the input takes
/// it). Push: the newest device.
fn resolve(channel: Channel, a: &sojourn_persistence::Addresses) -> Option<(String, Value)> {
    if channel == Channel::Push {
        let last = a.push.last()?;
        let shown = addresses_of(a, "push").pop()?;
        return Some((shown, last.clone()));
    }
    let shown = addresses_of(a, channel.as_str()).pop()?;
    Some((shown.clone(), Value::String(shown)))
}

/// The inputs to send, when they change: the resolved address in place of
/// `"subject"`, and the unsubscribe headers on marketing email.
fn rewrite(
    channel: Channel,
    inputs: &Value,
    replaced: Option<Value>,
    link: Option<&str>,
) -> Option<Value> {
    let headers = channel == Channel::Email && link.is_some();
    if replaced.is_none() && !headers {
        return None;
    }
    let mut out = inputs.clone();
    let o = out.as_object_mut()?;
    if let Some(v) = replaced {
        match (channel, &v) {
            (Channel::Push, Value::Object(_)) => {
                o.remove("to");
                o.remove("token");
                o.insert("subscription".into(), v);
            }
            (Channel::Chat, _) => {
                o.remove("to");
                o.insert("channel".into(), v);
            }
            _ => {
                o.insert("to".into(), v);
            }
        }
    }
    if let (true, Some(link)) = (headers, link) {
        let h = o
            .entry("headers")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(h) = h.as_object_mut() {
            // The author's own List-Unsubscribe wins.
            if !h.keys().any(|k| k.eq_ignore_ascii_case("list-unsubscribe")) {
                h.insert(
                    "List-Unsubscribe".into(),
                    Value::String(format!("<{link}>")),
                );
                h.insert(
                    "List-Unsubscribe-Post".into(),
                    Value::String("List-Unsubscribe=One-Click".into()),
                );
            }
        }
    }
    Some(out)
}

fn mask(channel: Channel, address: &str) -> String {
    match channel {
        Channel::Email => crate::channels::message::mask_email(address),
        Channel::Sms => crate::channels::message::mask_phone(address),
        _ => "the address".to_owned(),
    }
}

/// The delivery row of a message not sent.
fn not_sent(
    channel: Channel,
    status: &'static str,
    recipient: String,
    reason: String,
    now: DateTime<Utc>,
) -> Delivery {
    Delivery {
        channel,
        provider: NOT_SENT.to_owned(),
        recipient,
        status,
        message_id: None,
        error_class: None,
        error: Some(reason),
        started_at: now,
        duration_ms: 0,
    }
}

/// The provider column of a message the audience kept back.
pub const NOT_SENT: &str = "-";

#[cfg(test)]
mod tests {
    use super::*;

    fn audience() -> Audience {
        Audience::new(AudienceConfig {
            unsubscribe_key: Some(SecretString::from("k".repeat(32))),
            public_url: Some("https://s.example/".into()),
            ..Default::default()
        })
    }

    fn u() -> Unsubscribe {
        Unsubscribe {
            namespace: "default".into(),
            subject: Some("u1".into()),
            channel: "email".into(),
            category: "marketing".into(),
            address: "a@b.c".into(),
            expires: None,
            message: None,
        }
    }

    #[test]
    fn links_verify_and_tampering_is_refused() {
        let a = audience();
        let link = a.link(&u()).expect("test value");
        assert!(link.starts_with("https://s.example/v1/unsubscribe/"));
        let token = link.rsplit('/').next().expect("test value");
        assert_eq!(a.verify(token, Utc::now()), Ok(u()));
        // Sealed: the link shows neither the subject nor the address.
        let raw = URL_SAFE_NO_PAD.decode(token).expect("base64url");
        let shown = String::from_utf8_lossy(&raw);
        assert!(
            !shown.contains("a@b.c") && !shown.contains("\"s\":\"u1\""),
            "{shown}"
        );
        assert_ne!(a.sign(&u()), a.sign(&u()), "a fresh nonce each time");
        // Any bit changed is refused.
        for i in [0, NONCE_LEN, raw.len() - 1] {
            let mut bent = raw.clone();
            bent[i] ^= 1;
            let bent = URL_SAFE_NO_PAD.encode(bent);
            assert_eq!(
                a.verify(&bent, Utc::now()),
                Err(LinkError::Forged),
                "byte {i}"
            );
        }
        assert_eq!(a.verify(&token[..20], Utc::now()), Err(LinkError::Forged));
        // A link signed before tokens were sealed (`body.signature`) works;
        // another recipient's body under its signature does not.
        let signed = |u: &Unsubscribe| {
            let mut mac = a.mac().expect("key");
            let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(u).expect("json"));
            mac.update(body.as_bytes());
            let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
            (body, sig)
        };
        let (body, sig) = signed(&u());
        assert_eq!(a.verify(&format!("{body}.{sig}"), Utc::now()), Ok(u()));
        let (other_body, _) = signed(&Unsubscribe {
            subject: Some("u2".into()),
            ..u()
        });
        let forged = format!("{other_body}.{sig}");
        assert_eq!(a.verify(&forged, Utc::now()), Err(LinkError::Forged));
        // Another key.
        let b = Audience::new(AudienceConfig {
            unsubscribe_key: Some(SecretString::from("z".repeat(32))),
            ..Default::default()
        });
        assert_eq!(b.verify(token, Utc::now()), Err(LinkError::Forged));
        assert_eq!(a.verify("nope", Utc::now()), Err(LinkError::Forged));
        // Expired.
        let old = a
            .sign(&Unsubscribe {
                expires: Some(Utc::now().timestamp() - 1),
                message: None,
                ..u()
            })
            .expect("test value");
        assert_eq!(a.verify(&old, Utc::now()), Err(LinkError::Expired));
    }

    #[test]
    fn marketing_email_gets_one_click_headers_and_the_resolved_address() {
        let inputs = json!({"to": "subject", "subject": "s", "text": "t"});
        let out = rewrite(
            Channel::Email,
            &inputs,
            Some(json!("ann@x.org")),
            Some("https://s/v1/unsubscribe/t"),
        )
        .expect("test value");
        assert_eq!(out["to"], "ann@x.org");
        assert_eq!(
            out["headers"]["List-Unsubscribe"],
            "<https://s/v1/unsubscribe/t>"
        );
        assert_eq!(
            out["headers"]["List-Unsubscribe-Post"],
            "List-Unsubscribe=One-Click"
        );
        assert_eq!(
            rewrite(Channel::Sms, &json!({"to": "+331"}), None, Some("x")),
            None
        );
    }
}
