//! `twilio`: Twilio's Messages API
//! (`POST /2010-04-01/Accounts/<sid>/Messages.json`, basic auth
//! `<sid>:<token>`, a form). 201 answers the message's `sid` and `status`
//! (`queued` or `accepted`). Twilio's Messages API takes no idempotency
//! key: the attempt's key rides on the status callback URL (`?key=`), so
//! the status webhook can name the attempt.
//!
//! Refusals carry Twilio's own `code`: 21211/21614/21612 (not a number we
//! can text) are the recipient, 21610 (the recipient replied STOP) is
//! unsubscribed, 20003 is auth, 20429 and 429 are rate limits.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::super::http::{call, client, refusal};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use super::form;
use crate::channels::config::{TwilioConfig, http_url};

#[derive(Debug)]
pub(crate) struct Twilio {
    client: reqwest::Client,
    url: reqwest::Url,
    sid: String,
    token: SecretString,
    from: Option<String>,
    service: Option<String>,
    callback: Option<reqwest::Url>,
}

pub(crate) fn build(
    field: &str,
    c: &TwilioConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    if !c.account_sid.starts_with("AC") || !c.account_sid.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(ConfigError::new(
            format!("{field}.account_sid"),
            "must be an account SID (AC…)",
        ));
    }
    if c.from.is_none() && c.messaging_service_sid.is_none() {
        return Err(ConfigError::new(
            format!("{field}.from"),
            "required (or messaging_service_sid)",
        ));
    }
    let base = http_url(&format!("{field}.base_url"), &c.base_url)?;
    let url = base
        .join(&format!(
            "/2010-04-01/Accounts/{}/Messages.json",
            c.account_sid
        ))
        .map_err(|e| ConfigError::new(format!("{field}.base_url"), e.to_string()))?;
    let callback = c
        .status_callback
        .as_deref()
        .map(|u| http_url(&format!("{field}.status_callback"), u))
        .transpose()?;
    Ok(Built::one(
        Channel::Sms,
        Twilio {
            client: client(field, timeout)?,
            url,
            sid: c.account_sid.clone(),
            token: c.auth_token.resolve(&format!("{field}.auth_token"), cx)?,
            from: c.from.clone(),
            service: c.messaging_service_sid.clone(),
            callback,
        },
    ))
}

impl Provider for Twilio {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Sms(m) = out.message else {
                return Err(SendError::new(ErrorClass::Invalid, "twilio sends sms only"));
            };
            let callback = self.callback.as_ref().map(|u| {
                let mut u = u.clone();
                u.query_pairs_mut().append_pair("key", out.key);
                u.to_string()
            });
            let mut pairs: Vec<(&str, &str)> = vec![("To", &m.to), ("Body", &m.body)];
            match (&m.from, &self.from, &self.service) {
                (Some(from), _, _) | (None, Some(from), _) => pairs.push(("From", from)),
                (None, None, Some(service)) => pairs.push(("MessagingServiceSid", service)),
                (None, None, None) => {}
            }
            if let Some(cb) = &callback {
                pairs.push(("StatusCallback", cb));
            }
            let answer = call(
                self.client
                    .post(self.url.clone())
                    .basic_auth(&self.sid, Some(self.token.expose_secret()))
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form(&pairs)),
            )
            .await?;
            let json = answer.json();
            if answer.status.is_success() {
                let status = match json["status"].as_str() {
                    Some("sent" | "delivered") => SentStatus::Sent,
                    _ => SentStatus::Queued,
                };
                return Ok(Sent {
                    message_id: json["sid"].as_str().map(str::to_owned),
                    status,
                });
            }
            let detail = json["message"].as_str().unwrap_or(&answer.body).to_owned();
            let mut err = refusal(&answer, &detail);
            if let Some(code) = json["code"].as_u64() {
                err.class = match code {
                    21211 | 21212 | 21612 | 21614 | 21408 => ErrorClass::InvalidRecipient,
                    21610 => ErrorClass::Unsubscribed,
                    20003 | 20005 => ErrorClass::Auth,
                    20429 => ErrorClass::RateLimited,
                    _ => err.class,
                };
                err = err.with_code(code.to_string());
            }
            Err(err)
        })
    }
}
