//! `discord`: an incoming webhook (`POST <webhook_url>?wait=true` with
//! `{content, embeds}`; answers the message, whose `id` is kept). Discord's
//! Execute Webhook takes no idempotency key (`nonce` is for bot messages):
//! the attempt's key is in the delivery log only. Refusals carry Discord's
//! `code` (10015: the webhook is gone); 429 answers say `retry_after` in
//! seconds.

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
pub(crate) struct Discord {
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
    let mut parsed = http_url(&format!("{field}.webhook_url"), url.expose_secret())?;
    parsed.query_pairs_mut().append_pair("wait", "true");
    Ok(Built::one(
        Channel::Chat,
        Discord {
            client: client(field, timeout)?,
            url: SecretString::from(parsed.to_string()),
        },
    ))
}

impl Provider for Discord {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Chat(m) = out.message else {
                return Err(SendError::new(
                    ErrorClass::Invalid,
                    "discord sends chat only",
                ));
            };
            let mut body = json!({});
            if let Some(t) = &m.text {
                body["content"] = json!(t);
            }
            if let Some(e) = &m.embeds {
                body["embeds"] = e.clone();
            }
            let answer = call(self.client.post(self.url.expose_secret()).json(&body)).await?;
            let json = answer.json();
            if answer.status.is_success() {
                return Ok(Sent {
                    message_id: json["id"].as_str().map(str::to_owned),
                    status: SentStatus::Sent,
                });
            }
            let detail = json["message"].as_str().unwrap_or(&answer.body).to_owned();
            let mut err = refusal(&answer, &detail);
            if err.retry_after.is_none()
                && let Some(secs) = json["retry_after"].as_f64()
            {
                err.retry_after = Some(Duration::from_secs_f64(secs.clamp(0.0, 86_400.0)));
            }
            if let Some(code) = json["code"].as_u64() {
                if matches!(code, 10015 | 10003) {
                    err.class = ErrorClass::InvalidRecipient;
                }
                err = err.with_code(code.to_string());
            }
            Err(err)
        })
    }
}
