//! `sendgrid`: SendGrid's v3 mail send (`POST /v3/mail/send`, bearer API
//! key). The attempt's key goes in `custom_args.sojourn_key`, which
//! SendGrid echoes in every event of the message (the status webhook finds
//! the delivery by it and by `X-Message-Id`). 202 is queued.

use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::super::http::{call, client, refusal};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use super::split_mailbox;
use crate::channels::config::{SendgridConfig, http_url};

#[derive(Debug)]
pub(crate) struct Sendgrid {
    client: reqwest::Client,
    url: reqwest::Url,
    key: SecretString,
    from: String,
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
        },
    ))
}

fn address(mailbox: &str) -> Value {
    let (email, name) = split_mailbox(mailbox);
    match name {
        Some(name) => json!({"email": email, "name": name}),
        None => json!({"email": email}),
    }
}

impl Provider for Sendgrid {
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
