//! `apns`: Apple Push Notification service (`POST /3/device/<token>` over
//! HTTP/2), authorised with a provider token: a JWT (ES256, `kid` the key
//! id, `iss` the team id) signed with the `.p8` key, renewed every 50
//! minutes (Apple refuses one older than an hour, and too-frequent
//! renewals). The attempt's key becomes the `apns-id` (a UUID made from
//! it), so a re-send carries the same id.
//!
//! Refusals carry Apple's `reason`: BadDeviceToken, Unregistered (410) and
//! DeviceTokenNotForTopic are the recipient; ExpiredProviderToken makes a
//! new token and may pass; TooManyRequests is a rate limit.

use std::time::Duration;

use serde_json::{Value, json};

use super::super::http::{call, refusal};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use super::{CachedToken, uuid_of};
use crate::channels::config::{ApnsConfig, http_url};
use crate::channels::message::PushTarget;

pub(crate) struct Apns {
    client: reqwest::Client,
    base: reqwest::Url,
    topic: String,
    team_id: String,
    key_id: String,
    key: jsonwebtoken::EncodingKey,
    token: CachedToken,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns")
            .field("base", &self.base.as_str())
            .field("topic", &self.topic)
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

pub(crate) fn build(
    field: &str,
    c: &ApnsConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    use secrecy::ExposeSecret;
    for (name, value) in [("team_id", &c.team_id), ("key_id", &c.key_id)] {
        if value.len() != 10 || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::new(
                format!("{field}.{name}"),
                "must be Apple's 10-character id",
            ));
        }
    }
    if c.topic.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.topic"),
            "required (the app's bundle id)",
        ));
    }
    let pem = c.private_key.resolve(&format!("{field}.private_key"), cx)?;
    let key =
        jsonwebtoken::EncodingKey::from_ec_pem(pem.expose_secret().as_bytes()).map_err(|_| {
            ConfigError::new(
                format!("{field}.private_key"),
                "not a .p8 (EC P-256) key in PEM",
            )
        })?;
    let base = http_url(&format!("{field}.base_url"), &c.base_url)?;
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(4);
    builder = if base.scheme() == "http" {
        // Plain HTTP/2 (a local relay or a test double): no TLS to negotiate it.
        builder.http2_prior_knowledge()
    } else {
        builder
    };
    let client = builder
        .build()
        .map_err(|e| ConfigError::new(field, format!("making its HTTP/2 client: {e}")))?;
    Ok(Built::one(
        Channel::Push,
        Apns {
            client,
            base,
            topic: c.topic.clone(),
            team_id: c.team_id.clone(),
            key_id: c.key_id.clone(),
            key,
            token: CachedToken::default(),
        },
    ))
}

impl Apns {
    async fn provider_token(&self) -> Result<String, SendError> {
        self.token
            .get(|| async {
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                header.kid = Some(self.key_id.clone());
                let claims = json!({"iss": self.team_id, "iat": chrono::Utc::now().timestamp()});
                let token = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
                    SendError::new(ErrorClass::Auth, format!("signing the provider token: {e}"))
                })?;
                Ok((token, Duration::from_secs(50 * 60)))
            })
            .await
    }
}

impl Provider for Apns {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Push(p) = out.message else {
                return Err(SendError::new(ErrorClass::Invalid, "apns sends push only"));
            };
            let PushTarget::Token(device) = &p.to else {
                return Err(SendError::new(
                    ErrorClass::Invalid,
                    "inputs.subscription: apns sends to device tokens",
                ));
            };
            if device.is_empty() || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SendError::new(
                    ErrorClass::InvalidRecipient,
                    "inputs.to: an APNs device token is hexadecimal",
                ));
            }
            let alert = p.title.is_some() || p.body.is_some();
            let mut aps = json!({});
            if alert {
                aps["alert"] = json!({"title": p.title, "body": p.body});
            } else {
                aps["content-available"] = json!(1);
            }
            if let Some(b) = p.badge {
                aps["badge"] = json!(b);
            }
            if let Some(s) = &p.sound {
                aps["sound"] = json!(s);
            }
            let mut payload = serde_json::Map::new();
            payload.insert("aps".into(), aps);
            for (k, v) in &p.data {
                if k != "aps" {
                    payload.insert(k.clone(), v.clone());
                }
            }
            let url = self
                .base
                .join(&format!("/3/device/{device}"))
                .map_err(|e| SendError::new(ErrorClass::Invalid, format!("inputs.to: {e}")))?;
            let token = self.provider_token().await?;
            let id = uuid_of(out.key);
            let answer = call(
                self.client
                    .post(url)
                    .header("authorization", format!("bearer {token}"))
                    .header("apns-topic", &self.topic)
                    .header("apns-push-type", if alert { "alert" } else { "background" })
                    .header("apns-priority", if alert { "10" } else { "5" })
                    .header("apns-id", &id)
                    .json(&Value::Object(payload)),
            )
            .await?;
            if answer.status.is_success() {
                let id = answer
                    .headers
                    .get("apns-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .unwrap_or(id);
                return Ok(Sent {
                    message_id: Some(id),
                    status: SentStatus::Sent,
                });
            }
            let reason = answer.json()["reason"].as_str().unwrap_or("").to_owned();
            let mut err = refusal(&answer, &reason);
            err.class = match reason.as_str() {
                "BadDeviceToken" | "Unregistered" | "DeviceTokenNotForTopic" | "ExpiredToken" => {
                    ErrorClass::InvalidRecipient
                }
                "TooManyRequests" | "TooManyProviderTokenUpdates" => ErrorClass::RateLimited,
                "InvalidProviderToken"
                | "MissingProviderToken"
                | "BadCertificate"
                | "Forbidden" => ErrorClass::Auth,
                "ExpiredProviderToken" => {
                    self.token.clear().await;
                    ErrorClass::Unavailable
                }
                "InternalServerError" | "ServiceUnavailable" | "Shutdown" => {
                    ErrorClass::Unavailable
                }
                _ => err.class,
            };
            if !reason.is_empty() {
                err = err.with_code(reason);
            }
            Err(err)
        })
    }
}
