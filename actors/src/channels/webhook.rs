//! `webhook`: POSTs each message as JSON to a URL of the operator's —
//! `{"channel", "action", "inputs"}` with the attempt's `Idempotency-Key`
//! header — for a service that sends messages itself. 2xx is sent.

use std::time::Duration;

use serde_json::json;

use super::http::{call, client, refusal};
use super::{ConfigError, Outgoing, Provider, SendFuture, Sent, SentStatus};

pub(crate) struct WebhookProvider {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl std::fmt::Debug for WebhookProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a token: not shown.
        f.debug_struct("WebhookProvider").finish_non_exhaustive()
    }
}

impl WebhookProvider {
    pub(crate) fn new(
        field: &str,
        url: &super::Credential,
        cx: &super::Context,
        timeout: Duration,
    ) -> Result<WebhookProvider, ConfigError> {
        use secrecy::ExposeSecret;
        let field_url = format!("{field}.url");
        let url = url.resolve(&field_url, cx)?;
        Ok(WebhookProvider {
            client: client(field, timeout)?,
            url: super::config::http_url(&field_url, url.expose_secret())?,
        })
    }
}

impl Provider for WebhookProvider {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let channel = out.message.channel();
            let body = json!({
                "channel": channel.as_str(),
                "action": format!("{channel}.send"),
                "inputs": out.inputs,
            });
            let answer = call(
                self.client
                    .post(self.url.clone())
                    .header("Idempotency-Key", out.key)
                    .json(&body),
            )
            .await?;
            if answer.status.is_success() {
                Ok(Sent {
                    message_id: Some(out.key.to_owned()),
                    status: SentStatus::Sent,
                })
            } else {
                Err(refusal(&answer, &answer.body))
            }
        })
    }
}
