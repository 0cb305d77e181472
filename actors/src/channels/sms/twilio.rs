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
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, Report,
    ReportError, SendError, SendFuture, Sent, SentStatus, StatusUpdate, Verified,
};
use super::form;
use crate::channels::config::{TwilioConfig, http_url};

pub(crate) struct Twilio {
    client: reqwest::Client,
    url: reqwest::Url,
    sid: String,
    token: SecretString,
    from: Option<String>,
    service: Option<String>,
    callback: Option<reqwest::Url>,
}

impl std::fmt::Debug for Twilio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The callback URL may carry credentials (Twilio suggests basic
        // auth in it): not shown.
        f.debug_struct("Twilio")
            .field("sid", &self.sid)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
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
        .as_ref()
        .map(|u| {
            use secrecy::ExposeSecret;
            let field = format!("{field}.status_callback");
            let u = u.resolve(&field, cx)?;
            http_url(&field, u.expose_secret())
        })
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

impl Twilio {
    /// Twilio's request signature: `X-Twilio-Signature` is the base64
    /// HMAC-SHA1, keyed with the auth token, of the URL Twilio called (the
    /// configured `status_callback` with the query it was given) followed
    /// by each POST parameter's name and value, sorted by name.
    fn verify(&self, r: &Report<'_>) -> Result<Verified, ReportError> {
        use base64::Engine as _;
        use hmac::{KeyInit, Mac};
        use sha2::Digest as _;
        let callback = self.callback.as_ref().ok_or_else(|| {
            ReportError::NotConfigured("status_callback is not configured for this provider".into())
        })?;
        let signature = r
            .header("x-twilio-signature")
            .ok_or_else(|| ReportError::Forged("no X-Twilio-Signature".into()))?;
        let expected = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| ReportError::Forged("the signature is not base64".into()))?;
        // The URL Twilio called: the configured callback's scheme, host and
        // path, with the query the request came with (ours, `key=…`, after
        // any the callback had).
        let mut called = callback.clone();
        called.set_query(None);
        let mut url = called.as_str().to_owned();
        if !r.query.is_empty() {
            url.push('?');
            url.push_str(r.query);
        }
        let mut params: Vec<(String, String)> = url::form_urlencoded::parse(r.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        params.sort();
        let mut signed = url.clone();
        for (k, v) in &params {
            signed.push_str(k);
            signed.push_str(v);
        }
        let mut mac =
            hmac::Hmac::<sha1::Sha1>::new_from_slice(self.token.expose_secret().as_bytes())
                .map_err(|_| ReportError::NotConfigured("the auth token is unusable".into()))?;
        mac.update(signed.as_bytes());
        mac.verify_slice(&expected)
            .map_err(|_| ReportError::Forged("the signature does not match".into()))?;
        let field = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let status = match field("MessageStatus") {
            Some("sent") => Some("sent"),
            Some("delivered") => Some("delivered"),
            Some("undelivered" | "failed") => Some("undelivered"),
            Some("read") => Some("opened"),
            _ => None,
        };
        let updates = match (status, field("MessageSid")) {
            (Some(status), Some(sid)) => vec![StatusUpdate {
                message_id: sid.to_owned(),
                status,
            }],
            _ => Vec::new(),
        };
        // Twilio signs no time: a replay is known by what it signed (the
        // URL and the sorted parameters; not the unsigned headers, nor the
        // body's encoding, which a replayer could vary).
        let receipt = hex::encode(sha2::Sha256::digest(signed.as_bytes()));
        Ok(Verified {
            scope: None,
            receipt,
            updates,
        })
    }
}

impl Provider for Twilio {
    fn verify_report(&self, r: &Report<'_>) -> Result<Verified, ReportError> {
        self.verify(r)
    }

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
