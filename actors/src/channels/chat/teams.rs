//! `teams`: a Microsoft Teams incoming webhook. A message with a `card` is
//! posted as an Adaptive Card attachment
//! (`application/vnd.microsoft.card.adaptive`); text alone as `{text}`.
//! Teams answers 200 (or 202 from a Workflows webhook); its errors are
//! plain text. It takes no idempotency key.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::super::http::{call, client, refusal};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use crate::channels::config::{ChatWebhookConfig, http_url};

#[derive(Debug)]
pub(crate) struct Teams {
    client: reqwest::Client,
    url: SecretString,
}

pub(crate) fn build(
    field: &str,
    c: &ChatWebhookConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    let url = c.webhook_url.resolve(&format!("{field}.webhook_url"), cx)?;
    http_url(&format!("{field}.webhook_url"), url.expose_secret())?;
    Ok(Built::one(
        Channel::Chat,
        Teams {
            client: client(field, timeout)?,
            url,
        },
    ))
}

impl Provider for Teams {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Chat(m) = out.message else {
                return Err(SendError::new(ErrorClass::Invalid, "teams sends chat only"));
            };
            let body = match (&m.card, &m.text) {
                (Some(card), _) => json!({
                    "type": "message",
                    "attachments": [{
                        "contentType": "application/vnd.microsoft.card.adaptive",
                        "contentUrl": null,
                        "content": card,
                    }],
                }),
                (None, Some(text)) => json!({"text": text}),
                (None, None) => {
                    return Err(SendError::new(
                        ErrorClass::Invalid,
                        "inputs.text: Teams needs text or a card",
                    ));
                }
            };
            let answer = call(self.client.post(self.url.expose_secret()).json(&body)).await?;
            // Legacy connectors answer 200 with an error in the text when
            // they throttle or fail ("Microsoft Teams endpoint returned HTTP
            // error 429 …"); success is "1", or an empty body.
            let body = answer.body.trim();
            if answer.status.is_success() && (body.is_empty() || body == "1") {
                return Ok(Sent {
                    message_id: None,
                    status: SentStatus::Sent,
                });
            }
            if answer.status.is_success() {
                let class = if body.contains("429") {
                    ErrorClass::RateLimited
                } else {
                    ErrorClass::Unavailable
                };
                let mut err = SendError::new(
                    class,
                    format!(
                        "Teams answered 200 with an error: {}",
                        super::super::http::truncate(body, 300)
                    ),
                );
                // Only a throttle says it did not post.
                err.may_have_sent = class != ErrorClass::RateLimited;
                return Err(err);
            }
            let mut err = refusal(&answer, &answer.body);
            if answer.status.as_u16() == 404 || answer.status.as_u16() == 410 {
                err.class = ErrorClass::InvalidRecipient;
            }
            Err(err)
        })
    }
}
