//! `sns`: Amazon SNS `Publish` to a phone number (the query API: a form
//! with `Action=Publish`, SigV4 for service `sns`), with the SMS type
//! (`Transactional` unless configured) and sender id as message
//! attributes. The answer is XML; its `MessageId` and, on a refusal, its
//! `<Code>` are read from it. SNS takes no idempotency key for SMS: the
//! attempt's key is in the delivery log only.

use std::time::Duration;

use super::super::aws::{AwsKey, class_of, xml_text};
use super::super::http::{call, client, truncate};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use super::form;
use crate::channels::config::{SnsConfig, http_url};

#[derive(Debug)]
pub(crate) struct Sns {
    client: reqwest::Client,
    url: reqwest::Url,
    key: AwsKey,
    sms_type: String,
    sender_id: Option<String>,
}

pub(crate) fn build(
    field: &str,
    c: &SnsConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    let key = AwsKey::new(
        field,
        &c.access_key_id,
        &c.secret_access_key,
        &c.region,
        "sns",
        cx,
    )?;
    let endpoint = c
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://sns.{}.amazonaws.com", key.region()));
    let url = http_url(&format!("{field}.endpoint"), &endpoint)?;
    let sms_type = c.sms_type.clone().unwrap_or_else(|| "Transactional".into());
    if !matches!(sms_type.as_str(), "Transactional" | "Promotional") {
        return Err(ConfigError::new(
            format!("{field}.sms_type"),
            "Transactional or Promotional",
        ));
    }
    Ok(Built::one(
        Channel::Sms,
        Sns {
            client: client(field, timeout)?,
            url,
            key,
            sms_type,
            sender_id: c.sender_id.clone(),
        },
    ))
}

impl Provider for Sns {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Sms(m) = out.message else {
                return Err(SendError::new(ErrorClass::Invalid, "sns sends sms only"));
            };
            let mut pairs: Vec<(&str, &str)> = vec![
                ("Action", "Publish"),
                ("Version", "2010-03-31"),
                ("PhoneNumber", &m.to),
                ("Message", &m.body),
                ("MessageAttributes.entry.1.Name", "AWS.SNS.SMS.SMSType"),
                ("MessageAttributes.entry.1.Value.DataType", "String"),
                (
                    "MessageAttributes.entry.1.Value.StringValue",
                    &self.sms_type,
                ),
            ];
            let sender = m.from.as_deref().or(self.sender_id.as_deref());
            if let Some(sender) = sender {
                pairs.push(("MessageAttributes.entry.2.Name", "AWS.SNS.SMS.SenderID"));
                pairs.push(("MessageAttributes.entry.2.Value.DataType", "String"));
                pairs.push(("MessageAttributes.entry.2.Value.StringValue", sender));
            }
            let body = form(&pairs);
            let content_type = "application/x-www-form-urlencoded; charset=utf-8";
            let signed = self.key.sign(
                self.url.as_str(),
                &[("content-type", content_type)],
                body.as_bytes(),
            )?;
            let mut request = self
                .client
                .post(self.url.clone())
                .header("content-type", content_type);
            for (k, v) in &signed {
                request = request.header(k.as_str(), v.as_str());
            }
            let answer = call(request.body(body)).await?;
            if answer.status.is_success() {
                return Ok(Sent {
                    message_id: xml_text(&answer.body, "MessageId").map(str::to_owned),
                    status: SentStatus::Queued,
                });
            }
            let code = xml_text(&answer.body, "Code").unwrap_or("").to_owned();
            let message = xml_text(&answer.body, "Message")
                .unwrap_or(&answer.body)
                .to_owned();
            let mut class = class_of(&code, answer.status.as_u16());
            if class == ErrorClass::Rejected && message.contains("PhoneNumber") {
                class = ErrorClass::InvalidRecipient;
            }
            let mut err = SendError::new(
                class,
                format!(
                    "HTTP {} {code}: {}",
                    answer.status.as_u16(),
                    truncate(&message, 300)
                ),
            );
            err.retry_after = super::super::http::retry_after(&answer.headers);
            err.may_have_sent = super::super::http::ambiguous(answer.status.as_u16());
            if !code.is_empty() {
                err = err.with_code(code);
            }
            Err(err)
        })
    }
}
