//! `vonage`: Vonage's (Nexmo's) SMS API (`POST /sms/json`, a form with
//! `api_key` and `api_secret`). The attempt's key goes in `client-ref`
//! (echoed in delivery receipts). Vonage answers 200 even for a refusal:
//! each message part has a `status`, `"0"` for success; 1 (throttled) and
//! 5 (internal error) may pass on a retry; 4 is the credentials; 6, 7 and
//! 29 are the recipient. A long text some of whose parts went is not sent
//! again (the recipient would get those parts twice).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::super::http::{call, client, refusal};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use super::form;
use crate::channels::config::{VonageConfig, http_url};

#[derive(Debug)]
pub(crate) struct Vonage {
    client: reqwest::Client,
    url: reqwest::Url,
    key: String,
    secret: SecretString,
    from: String,
}

pub(crate) fn build(
    field: &str,
    c: &VonageConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    let base = http_url(&format!("{field}.base_url"), &c.base_url)?;
    let url = base
        .join("/sms/json")
        .map_err(|e| ConfigError::new(format!("{field}.base_url"), e.to_string()))?;
    if c.api_key.is_empty() {
        return Err(ConfigError::new(format!("{field}.api_key"), "required"));
    }
    Ok(Built::one(
        Channel::Sms,
        Vonage {
            client: client(field, timeout)?,
            url,
            key: c.api_key.clone(),
            secret: c.api_secret.resolve(&format!("{field}.api_secret"), cx)?,
            from: c.from.clone(),
        },
    ))
}

impl Provider for Vonage {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Sms(m) = out.message else {
                return Err(SendError::new(ErrorClass::Invalid, "vonage sends sms only"));
            };
            // Vonage wants the number without its `+`; client-ref is at most 100 characters.
            let to = m.to.trim_start_matches('+');
            let from = m.from.as_deref().unwrap_or(&self.from);
            let client_ref: String = out.key.chars().take(100).collect();
            let body = form(&[
                ("api_key", &self.key),
                ("api_secret", self.secret.expose_secret()),
                ("from", from),
                ("to", to),
                ("text", &m.body),
                ("client-ref", &client_ref),
            ]);
            let answer = call(
                self.client
                    .post(self.url.clone())
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(body),
            )
            .await?;
            if !answer.status.is_success() {
                return Err(refusal(&answer, &answer.body));
            }
            let json = answer.json();
            let Some(parts) = json["messages"].as_array().filter(|p| !p.is_empty()) else {
                let mut err =
                    SendError::new(ErrorClass::Unavailable, "Vonage answered no message status");
                // It answered 200: the text may have gone.
                err.may_have_sent = true;
                return Err(err);
            };
            let sent_parts = parts
                .iter()
                .filter(|p| p["status"].as_str() == Some("0"))
                .count();
            if let Some(part) = parts.iter().find(|p| p["status"].as_str() != Some("0")) {
                let status = part["status"].as_str().unwrap_or("");
                let text = part["error-text"].as_str().unwrap_or("refused").to_owned();
                let class = match status {
                    // Some parts went: sending again would repeat them.
                    _ if sent_parts > 0 => ErrorClass::Rejected,
                    "1" => ErrorClass::RateLimited,
                    "5" => ErrorClass::Unavailable,
                    "4" | "8" | "9" => ErrorClass::Auth,
                    "6" | "7" | "29" => ErrorClass::InvalidRecipient,
                    _ => ErrorClass::Rejected,
                };
                let note = if sent_parts > 0 {
                    format!(" ({sent_parts} of {} parts were sent)", parts.len())
                } else {
                    String::new()
                };
                return Err(
                    SendError::new(class, format!("Vonage status {status}: {text}{note}"))
                        .with_code(status),
                );
            }
            Ok(Sent {
                message_id: parts[0]["message-id"].as_str().map(str::to_owned),
                status: SentStatus::Queued,
            })
        })
    }
}
