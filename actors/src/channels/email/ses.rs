//! `ses`: Amazon SES v2 `SendEmail` (`POST /v2/email/outbound-emails`,
//! SigV4 for service `ses`) with the raw MIME message — the same MIME the
//! SMTP provider sends, so its `Message-ID` is the attempt's key. The key
//! also goes in an email tag (`sojourn_key`, its `/` as `-`: tags allow
//! letters, digits, `_` and `-`), which SES puts in every event it
//! publishes for the message. SES's error type (`x-amzn-ErrorType`) is
//! the class: throttling and limits may pass, a rejected message or an
//! unverified sender do not.

use std::time::Duration;

use base64::Engine as _;
use lettre::message::Mailbox;
use serde_json::json;

use super::super::aws::{AwsKey, class_of};
use super::super::http::{call, client, truncate};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use crate::channels::config::{SesConfig, http_url};

#[derive(Debug)]
pub(crate) struct Ses {
    client: reqwest::Client,
    url: reqwest::Url,
    key: AwsKey,
    from: Mailbox,
    configuration_set: Option<String>,
}

pub(crate) fn build(
    field: &str,
    c: &SesConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    let key = AwsKey::new(
        field,
        &c.access_key_id,
        &c.secret_access_key,
        &c.region,
        "ses",
        cx,
    )?;
    let endpoint = c
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://email.{}.amazonaws.com", key.region()));
    let base = http_url(&format!("{field}.endpoint"), &endpoint)?;
    let url = base
        .join("/v2/email/outbound-emails")
        .map_err(|e| ConfigError::new(format!("{field}.endpoint"), e.to_string()))?;
    let from = c
        .from
        .parse()
        .map_err(|e| ConfigError::new(format!("{field}.from"), format!("not an address ({e})")))?;
    Ok(Built::one(
        Channel::Email,
        Ses {
            client: client(field, timeout)?,
            url,
            key,
            from,
            configuration_set: c.configuration_set.clone(),
        },
    ))
}

impl Provider for Ses {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Email(e) = out.message else {
                return Err(SendError::new(ErrorClass::Invalid, "ses sends email only"));
            };
            let mime = super::smtp::mime(e, &self.from, out.key, out.attachments)?;
            let tag: String = out
                .key
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let mut body = json!({
                "Content": {"Raw": {"Data": base64::engine::general_purpose::STANDARD.encode(mime.formatted())}},
                "EmailTags": [{"Name": "sojourn_key", "Value": tag}],
            });
            if let Some(set) = &self.configuration_set {
                body["ConfigurationSetName"] = json!(set);
            }
            let body = body.to_string();
            let headers = [("content-type", "application/json")];
            let signed = self
                .key
                .sign(self.url.as_str(), &headers, body.as_bytes())?;
            let mut request = self
                .client
                .post(self.url.clone())
                .header("content-type", "application/json");
            for (k, v) in &signed {
                request = request.header(k.as_str(), v.as_str());
            }
            let answer = call(request.body(body)).await?;
            let json = answer.json();
            if answer.status.is_success() {
                return Ok(Sent {
                    message_id: json["MessageId"].as_str().map(str::to_owned),
                    status: SentStatus::Queued,
                });
            }
            let code = answer
                .headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(|t| t.split(':').next().unwrap_or(t).to_owned())
                .unwrap_or_default();
            let message = json["message"]
                .as_str()
                .or(json["Message"].as_str())
                .unwrap_or(&answer.body);
            let mut err = SendError::new(
                class_of(&code, answer.status.as_u16()),
                format!(
                    "HTTP {} {code}: {}",
                    answer.status.as_u16(),
                    truncate(message, 300)
                ),
            );
            err.retry_after = super::super::http::retry_after(&answer.headers);
            if !code.is_empty() {
                err = err.with_code(code);
            }
            Err(err)
        })
    }
}
