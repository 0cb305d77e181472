//! `webpush`: Web Push to a browser's push subscription (RFC 8030): the
//! payload (JSON: `title`, `body`, `data`, `badge`, `sound`, `key`) is
//! encrypted for the subscription's keys (RFC 8291, aes128gcm) and the
//! request signed with the operator's VAPID key (RFC 8292), by the
//! `web-push-native` crate. The endpoint comes from the workflow's input,
//! so it goes through the same egress guard as `http.request`.
//!
//! 201 is accepted (the `Location` is the message); 404 and 410 mean the
//! subscription is gone (the recipient); 413 the payload is too large;
//! 429 a rate limit.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use web_push_native::jwt_simple::algorithms::ES256KeyPair;

use super::super::http::{call, refusal};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use crate::channels::config::WebpushConfig;
use crate::channels::message::PushTarget;
use crate::egress::{EgressPolicy, GuardedResolver};

pub(crate) struct WebPush {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
    key: ES256KeyPair,
    subject: String,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .or_else(|| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(s)
                .ok()
        })
}

pub(crate) fn build(
    field: &str,
    c: &WebpushConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    use secrecy::ExposeSecret;
    let key_field = format!("{field}.vapid_private_key");
    let raw = c.vapid_private_key.resolve(&key_field, cx)?;
    let key = b64url(raw.expose_secret())
        .filter(|b| b.len() == 32)
        .and_then(|b| ES256KeyPair::from_bytes(&b).ok())
        .ok_or_else(|| {
            ConfigError::new(
                &key_field,
                "must be a P-256 private key: 32 bytes, base64url",
            )
        })?;
    if !(c.subject.starts_with("mailto:") || c.subject.starts_with("https://")) {
        return Err(ConfigError::new(
            format!("{field}.subject"),
            "must be a mailto: or https: URL",
        ));
    }
    let policy = Arc::new(cx.egress.clone());
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: policy.clone(),
        }))
        .build()
        .map_err(|e| ConfigError::new(field, format!("making its HTTP client: {e}")))?;
    Ok(Built::one(
        Channel::Push,
        WebPush {
            client,
            policy,
            key,
            subject: c.subject.clone(),
        },
    ))
}

impl WebPush {
    /// The VAPID `Authorization` (RFC 8292): a JWT (ES256) whose `aud` is
    /// the push resource's origin — with its port when it is not the
    /// scheme's default, which the crate's own signer leaves out — valid
    /// for 12 hours, and the public key.
    fn vapid(&self, endpoint: &reqwest::Url) -> Result<String, SendError> {
        use web_push_native::jwt_simple::prelude::*;
        let origin = endpoint.origin().ascii_serialization();
        let claims = Claims::create(web_push_native::jwt_simple::prelude::Duration::from_hours(
            12,
        ))
        .with_audience(origin)
        .with_subject(&self.subject);
        let token = self.key.sign(claims).map_err(|e| {
            SendError::new(ErrorClass::Auth, format!("signing the VAPID token: {e}"))
        })?;
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.key.public_key().public_key().to_bytes_uncompressed());
        Ok(format!("vapid t={token}, k={public}"))
    }
}

impl Provider for WebPush {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Push(p) = out.message else {
                return Err(SendError::new(
                    ErrorClass::Invalid,
                    "webpush sends push only",
                ));
            };
            let PushTarget::Subscription {
                endpoint,
                p256dh,
                auth,
            } = &p.to
            else {
                return Err(SendError::new(
                    ErrorClass::Invalid,
                    "inputs.subscription: webpush sends to a browser's push subscription",
                ));
            };
            let invalid = |m: &str| SendError::new(ErrorClass::InvalidRecipient, m.to_owned());
            let url = reqwest::Url::parse(endpoint)
                .map_err(|_| invalid("inputs.subscription.endpoint: not a URL"))?;
            self.policy.check_url(&url).map_err(|r| {
                SendError::new(
                    ErrorClass::Invalid,
                    format!("inputs.subscription.endpoint: {r}"),
                )
            })?;
            let ua_public = b64url(p256dh)
                .and_then(|b| web_push_native::p256::PublicKey::from_sec1_bytes(&b).ok())
                .ok_or_else(|| {
                    invalid("inputs.subscription.keys.p256dh: not a P-256 public key")
                })?;
            let ua_auth = b64url(auth)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(web_push_native::Auth::from)
                .ok_or_else(|| {
                    invalid("inputs.subscription.keys.auth: not 16 bytes of base64url")
                })?;
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|_| invalid("inputs.subscription.endpoint: not a URL"))?;
            let payload = json!({
                "title": p.title, "body": p.body, "data": p.data,
                "badge": p.badge, "sound": p.sound, "key": out.key,
            })
            .to_string();
            let request = web_push_native::WebPushBuilder::new(uri, ua_public, ua_auth)
                .with_valid_duration(Duration::from_secs(24 * 3600))
                .build(payload)
                .map_err(|e| {
                    SendError::new(ErrorClass::Invalid, format!("encrypting the push: {e}"))
                })?;
            let (parts, body) = request.into_parts();
            let vapid = self.vapid(&url)?;
            let mut builder = self
                .client
                .post(url)
                .header(reqwest::header::AUTHORIZATION, vapid);
            for (name, value) in &parts.headers {
                builder = builder.header(name.as_str(), value.as_bytes());
            }
            let answer = call(builder.header("Urgency", "normal").body(body)).await?;
            if answer.status.is_success() {
                let id = answer
                    .headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                return Ok(Sent {
                    message_id: id,
                    status: SentStatus::Sent,
                });
            }
            let mut err = refusal(&answer, &answer.body);
            match answer.status.as_u16() {
                404 | 410 => err.class = ErrorClass::InvalidRecipient,
                413 => err.class = ErrorClass::Rejected,
                _ => {}
            }
            Err(err)
        })
    }
}
