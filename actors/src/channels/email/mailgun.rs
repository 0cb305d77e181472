//! `mailgun`: Mailgun's messages API (`POST /v3/<domain>/messages`, basic
//! auth `api:<key>`, multipart form). The attempt's key goes in the custom
//! variable `v:sojourn-key`, which Mailgun echoes in the message's events
//! (`user-variables`). 200 is queued; the answer's `id` is the message id.

use std::time::Duration;

use reqwest::multipart::{Form, Part};
use secrecy::{ExposeSecret, SecretString};

use super::super::http::{call, client, refusal};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, Report,
    ReportError, SendError, SendFuture, Sent, SentStatus, StatusUpdate, Verified,
};
use crate::channels::config::{MailgunConfig, http_url};

#[derive(Debug)]
pub(crate) struct Mailgun {
    client: reqwest::Client,
    url: reqwest::Url,
    key: SecretString,
    from: String,
    signing_key: Option<SecretString>,
}

pub(crate) fn build(
    field: &str,
    c: &MailgunConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    if c.domain.is_empty() || c.domain.contains(['/', '?', '#']) {
        return Err(ConfigError::new(
            format!("{field}.domain"),
            "must be a sending domain (mg.example.com)",
        ));
    }
    let base = http_url(&format!("{field}.base_url"), &c.base_url)?;
    let url = base
        .join(&format!("/v3/{}/messages", c.domain))
        .map_err(|e| ConfigError::new(format!("{field}.base_url"), e.to_string()))?;
    c.from
        .parse::<lettre::message::Mailbox>()
        .map_err(|e| ConfigError::new(format!("{field}.from"), format!("not an address ({e})")))?;
    Ok(Built::one(
        Channel::Email,
        Mailgun {
            client: client(field, timeout)?,
            url,
            key: c.api_key.resolve(&format!("{field}.api_key"), cx)?,
            from: c.from.clone(),
            signing_key: c
                .webhook_signing_key
                .as_ref()
                .map(|k| k.resolve(&format!("{field}.webhook_signing_key"), cx))
                .transpose()?,
        },
    ))
}

impl Mailgun {
    /// Mailgun's webhook signature: `signature.signature` is the hex
    /// HMAC-SHA256 of `timestamp` followed by `token`, keyed with the
    /// webhook signing key; the token is unique per call (the receipt).
    fn verify(&self, r: &Report<'_>) -> Result<Verified, ReportError> {
        use hmac::{KeyInit, Mac};
        let key = self.signing_key.as_ref().ok_or_else(|| {
            ReportError::NotConfigured(
                "webhook_signing_key is not configured for this provider".into(),
            )
        })?;
        let body: serde_json::Value = serde_json::from_slice(r.body).map_err(|_| {
            ReportError::Forged("the body is not Mailgun's JSON (no signature)".into())
        })?;
        let sig = &body["signature"];
        let (Some(timestamp), Some(token), Some(signature)) = (
            sig["timestamp"].as_str(),
            sig["token"].as_str(),
            sig["signature"].as_str(),
        ) else {
            return Err(ReportError::Forged(
                "no signature (timestamp, token, signature)".into(),
            ));
        };
        let expected = hex::decode(signature)
            .map_err(|_| ReportError::Forged("the signature is not hex".into()))?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose_secret().as_bytes())
            .map_err(|_| ReportError::NotConfigured("the signing key is unusable".into()))?;
        mac.update(timestamp.as_bytes());
        mac.update(token.as_bytes());
        mac.verify_slice(&expected)
            .map_err(|_| ReportError::Forged("the signature does not match".into()))?;
        let at: i64 = timestamp
            .parse()
            .map_err(|_| ReportError::Malformed("the timestamp is not a number".into()))?;
        super::super::fresh(at, r.now)?;
        let data = &body["event-data"];
        let status = match (data["event"].as_str(), data["severity"].as_str()) {
            (Some("delivered"), _) => Some("delivered"),
            (Some("failed"), Some("permanent")) => Some("bounced"),
            (Some("opened"), _) => Some("opened"),
            (Some("clicked"), _) => Some("clicked"),
            (Some("complained"), _) => Some("complained"),
            _ => None,
        };
        let id = data["message"]["headers"]["message-id"].as_str();
        let updates = match (status, id) {
            // The send's answer gave the id in angle brackets; events without.
            (Some(status), Some(id)) => vec![StatusUpdate {
                message_id: format!("<{}>", id.trim_matches(['<', '>'])),
                status,
            }],
            _ => Vec::new(),
        };
        // Mailgun signs only the timestamp and token, with the account's
        // key: receipts are kept per key, and the event's content is
        // Mailgun's word, not signed.
        use sha2::Digest as _;
        let scope = format!(
            "mailgun:{}",
            &hex::encode(sha2::Sha256::digest(key.expose_secret().as_bytes()))[..16]
        );
        Ok(Verified {
            scope: Some(scope),
            receipt: token.to_owned(),
            updates,
        })
    }
}

impl Provider for Mailgun {
    fn verify_report(&self, r: &Report<'_>) -> Result<Verified, ReportError> {
        self.verify(r)
    }

    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Email(e) = out.message else {
                return Err(SendError::new(
                    ErrorClass::Invalid,
                    "mailgun sends email only",
                ));
            };
            let mut form = Form::new()
                .text("from", e.from.clone().unwrap_or_else(|| self.from.clone()))
                .text("subject", e.subject.clone())
                .text("v:sojourn-key", out.key.to_owned());
            for to in &e.to {
                form = form.text("to", to.clone());
            }
            if let Some(t) = &e.text {
                form = form.text("text", t.clone());
            }
            if let Some(h) = &e.html {
                form = form.text("html", h.clone());
            }
            if let Some(r) = &e.reply_to {
                form = form.text("h:Reply-To", r.clone());
            }
            for (k, v) in &e.headers {
                form = form.text(format!("h:{k}"), v.clone());
            }
            for a in out.attachments {
                let part = Part::bytes(a.content.clone())
                    .file_name(a.filename.clone())
                    .mime_str(&a.content_type)
                    .map_err(|err| {
                        SendError::new(ErrorClass::Invalid, format!("an attachment's type: {err}"))
                    })?;
                form = form.part("attachment", part);
            }
            let answer = call(
                self.client
                    .post(self.url.clone())
                    .basic_auth("api", Some(self.key.expose_secret()))
                    .multipart(form),
            )
            .await?;
            let json = answer.json();
            if answer.status.is_success() {
                return Ok(Sent {
                    message_id: json["id"].as_str().map(str::to_owned),
                    status: SentStatus::Queued,
                });
            }
            let detail = json["message"].as_str().unwrap_or(&answer.body).to_owned();
            let mut err = refusal(&answer, &detail);
            if err.class == ErrorClass::Rejected
                && detail.to_ascii_lowercase().contains("to parameter")
            {
                err.class = ErrorClass::InvalidRecipient;
            }
            Err(err)
        })
    }
}
