//! `sendgrid`: SendGrid's v3 mail send (`POST /v3/mail/send`, bearer API
//! key). The attempt's key goes in `custom_args.sojourn_key`, which
//! SendGrid echoes in every event of the message (the status webhook finds
//! the delivery by it and by `X-Message-Id`). 202 is queued.

use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::super::http::{call, client, refusal};
use sha2::Digest as _;

use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, Report,
    ReportError, SendError, SendFuture, Sent, SentStatus, StatusUpdate, Verified,
};
use super::split_mailbox;
use crate::channels::config::{SendgridConfig, http_url};

#[derive(Debug)]
pub(crate) struct Sendgrid {
    client: reqwest::Client,
    url: reqwest::Url,
    key: SecretString,
    from: String,
    webhook_key: Option<p256::ecdsa::VerifyingKey>,
}

pub(crate) fn build(
    field: &str,
    c: &SendgridConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    let base = http_url(&format!("{field}.base_url"), &c.base_url)?;
    let url = base
        .join("/v3/mail/send")
        .map_err(|e| ConfigError::new(format!("{field}.base_url"), e.to_string()))?;
    c.from
        .parse::<lettre::message::Mailbox>()
        .map_err(|e| ConfigError::new(format!("{field}.from"), format!("not an address ({e})")))?;
    Ok(Built::one(
        Channel::Email,
        Sendgrid {
            client: client(field, timeout)?,
            url,
            key: c.api_key.resolve(&format!("{field}.api_key"), cx)?,
            from: c.from.clone(),
            webhook_key: c
                .webhook_public_key
                .as_deref()
                .map(|k| verifying_key(&format!("{field}.webhook_public_key"), k))
                .transpose()?,
        },
    ))
}

/// SendGrid's verification key: base64 of a DER public key (P-256).
fn verifying_key(field: &str, text: &str) -> Result<p256::ecdsa::VerifyingKey, ConfigError> {
    use p256::pkcs8::DecodePublicKey;
    let der = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| ConfigError::new(field, format!("not base64 ({e})")))?;
    p256::ecdsa::VerifyingKey::from_public_key_der(&der)
        .map_err(|e| ConfigError::new(field, format!("not a P-256 public key ({e})")))
}

/// SendGrid's events → delivery statuses (the others move nothing). Only
/// a hard bounce (`bounce` of type `bounce`) or a drop because the address
/// bounced or is invalid is `bounced` (which suppresses the address); a
/// block (a temporary refusal) or a drop for another reason (spam content,
/// an unsubscribe at SendGrid) is `undelivered`.
fn status_of(e: &Value) -> Option<&'static str> {
    let event = e["event"].as_str()?;
    Some(match event {
        "delivered" => "delivered",
        "bounce" if e["type"].as_str() == Some("blocked") => "undelivered",
        "bounce" => "bounced",
        "dropped" => {
            let reason = e["reason"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if reason.contains("bounced address") || reason.contains("invalid") {
                "bounced"
            } else {
                "undelivered"
            }
        }
        "spamreport" => "complained",
        "open" => "opened",
        "click" => "clicked",
        _ => return None,
    })
}

fn address(mailbox: &str) -> Value {
    let (email, name) = split_mailbox(mailbox);
    match name {
        Some(name) => json!({"email": email, "name": name}),
        None => json!({"email": email}),
    }
}

impl Sendgrid {
    /// The Signed Event Webhook: an ECDSA (P-256, SHA-256) signature of
    /// the timestamp header followed by the raw body.
    fn verify(&self, r: &Report<'_>) -> Result<Verified, ReportError> {
        use p256::ecdsa::signature::Verifier;
        let key = self.webhook_key.as_ref().ok_or_else(|| {
            ReportError::NotConfigured(
                "webhook_public_key is not configured for this provider".into(),
            )
        })?;
        let signature = r
            .header("x-twilio-email-event-webhook-signature")
            .ok_or_else(|| {
                ReportError::Forged("no X-Twilio-Email-Event-Webhook-Signature".into())
            })?;
        let timestamp = r
            .header("x-twilio-email-event-webhook-timestamp")
            .ok_or_else(|| {
                ReportError::Forged("no X-Twilio-Email-Event-Webhook-Timestamp".into())
            })?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .ok()
            .and_then(|der| p256::ecdsa::Signature::from_der(&der).ok())
            .ok_or_else(|| {
                ReportError::Forged("the signature is not a DER ECDSA signature".into())
            })?;
        let mut signed = Vec::with_capacity(timestamp.len() + r.body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(r.body);
        key.verify(&signed, &signature)
            .map_err(|_| ReportError::Forged("the signature does not match".into()))?;
        let at: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| ReportError::Malformed("the timestamp is not a number".into()))?;
        super::super::fresh(at, r.now)?;
        let events: Vec<Value> = serde_json::from_slice(r.body).map_err(|e| {
            ReportError::Malformed(format!("the body is not a list of events: {e}"))
        })?;
        let updates = events
            .iter()
            .filter_map(|e| {
                let status = status_of(e)?;
                // `sg_message_id` is the X-Message-Id, then `.filter…`.
                let id = e["sg_message_id"].as_str()?.split('.').next()?.to_owned();
                Some(StatusUpdate {
                    message_id: id,
                    status,
                })
            })
            .collect();
        let digest = sha2::Sha256::digest(r.body);
        Ok(Verified {
            scope: None,
            receipt: format!("{}:{}", timestamp.trim(), hex::encode(digest)),
            updates,
        })
    }
}

impl Provider for Sendgrid {
    fn verify_report(&self, r: &Report<'_>) -> Result<Verified, ReportError> {
        self.verify(r)
    }

    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Email(e) = out.message else {
                return Err(SendError::new(
                    ErrorClass::Invalid,
                    "sendgrid sends email only",
                ));
            };
            // text/plain must come before text/html.
            let mut content = Vec::new();
            if let Some(t) = &e.text {
                content.push(json!({"type": "text/plain", "value": t}));
            }
            if let Some(h) = &e.html {
                content.push(json!({"type": "text/html", "value": h}));
            }
            let mut body = json!({
                "personalizations": [{"to": e.to.iter().map(|t| address(t)).collect::<Vec<_>>()}],
                "from": address(e.from.as_deref().unwrap_or(&self.from)),
                "subject": e.subject,
                "content": content,
                "custom_args": {"sojourn_key": out.key},
            });
            if let Some(r) = &e.reply_to {
                body["reply_to"] = address(r);
            }
            if !e.headers.is_empty() {
                body["headers"] = e
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            if !out.attachments.is_empty() {
                body["attachments"] = out
                    .attachments
                    .iter()
                    .map(|a| {
                        json!({
                            "content": base64::engine::general_purpose::STANDARD.encode(&a.content),
                            "type": a.content_type,
                            "filename": a.filename,
                            "disposition": "attachment",
                        })
                    })
                    .collect();
            }
            let answer = call(
                self.client
                    .post(self.url.clone())
                    .bearer_auth(self.key.expose_secret())
                    .json(&body),
            )
            .await?;
            if answer.status.is_success() {
                let id = answer
                    .headers
                    .get("x-message-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                return Ok(Sent {
                    message_id: id,
                    status: SentStatus::Queued,
                });
            }
            // {"errors": [{"message", "field", "help"}]}
            let json = answer.json();
            let first = &json["errors"][0];
            let detail = match (first["field"].as_str(), first["message"].as_str()) {
                (Some(f), Some(m)) => format!("{f}: {m}"),
                (None, Some(m)) => m.to_owned(),
                _ => answer.body.clone(),
            };
            let mut err = refusal(&answer, &detail);
            if err.class == ErrorClass::Rejected
                && first["field"]
                    .as_str()
                    .is_some_and(|f| f.contains(".to") || f.starts_with("personalizations"))
            {
                err.class = ErrorClass::InvalidRecipient;
            }
            Err(err)
        })
    }
}
