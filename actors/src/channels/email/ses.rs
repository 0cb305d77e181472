//! `ses`: Amazon SES v2 `SendEmail` (`POST /v2/email/outbound-emails`,
//! SigV4 for service `ses`) with the raw MIME message — the same MIME the
//! SMTP provider sends, so its `Message-ID` is the attempt's key. The key
//! also goes in an email tag (`sojourn_key`, its `/` as `-`: tags allow
//! letters, digits, `_` and `-`), which SES puts in every event it
//! publishes for the message. Status reports are SES's events published to
//! an SNS topic (`events_topic_arn`) and delivered to
//! `/v1/webhooks/<name>`: each SNS message's signature (SignatureVersion 2,
//! RSA SHA-256) is checked with the certificate it names, fetched once
//! from the configured prefix (`https://sns.<region>.amazonaws.com/`, over
//! TLS: what authenticates it, as AWS documents). SES's error type (`x-amzn-ErrorType`) is
//! the class: throttling and limits may pass, a rejected message or an
//! unverified sender do not.

use std::time::Duration;

use base64::Engine as _;
use lettre::message::Mailbox;
use serde_json::json;

use super::super::aws::{AwsKey, class_of};
use super::super::http::{call, client, truncate};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, Report,
    ReportError, SendError, SendFuture, Sent, SentStatus, StatusUpdate, Verified,
};
use crate::channels::config::{SesConfig, http_url};

#[derive(Debug)]
pub(crate) struct Ses {
    client: reqwest::Client,
    url: reqwest::Url,
    key: AwsKey,
    from: Mailbox,
    configuration_set: Option<String>,
    /// Status reports: the SNS topic, and where its certificates come from.
    topic: Option<String>,
    cert_prefix: String,
    /// Signing certificates fetched (DER), by URL.
    certs: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
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
            topic: c.events_topic_arn.clone(),
            cert_prefix: c
                .sns_cert_url_prefix
                .clone()
                .unwrap_or_else(|| format!("https://sns.{}.amazonaws.com/", c.region)),
            certs: Default::default(),
        },
    ))
}

/// The fields of an SNS message that its signature covers, in order, for
/// its type.
fn signed_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Notification" => &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ],
        _ => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
    }
}

impl Ses {
    /// The message's certificate URL, if it may be fetched (from the
    /// configured prefix, a `.pem`).
    fn cert_url<'a>(&self, msg: &'a serde_json::Value) -> Result<&'a str, ReportError> {
        let url = msg["SigningCertURL"]
            .as_str()
            .ok_or_else(|| ReportError::Forged("no SigningCertURL".into()))?;
        if !url.starts_with(&self.cert_prefix) || !url.ends_with(".pem") || url.contains("..") {
            return Err(ReportError::Forged(format!(
                "SigningCertURL is not an SNS certificate ({}….pem)",
                self.cert_prefix
            )));
        }
        Ok(url)
    }

    /// An SNS message (SignatureVersion 2: RSA, SHA-256) from the
    /// configured topic, signed by the certificate it names.
    fn verify(&self, r: &Report<'_>) -> Result<Verified, ReportError> {
        let topic = self.topic.as_deref().ok_or_else(|| {
            ReportError::NotConfigured(
                "events_topic_arn is not configured for this provider".into(),
            )
        })?;
        let msg: serde_json::Value = serde_json::from_slice(r.body)
            .map_err(|_| ReportError::Forged("the body is not an SNS message".into()))?;
        let kind = msg["Type"].as_str().unwrap_or("");
        if msg["TopicArn"].as_str() != Some(topic) {
            return Err(ReportError::Forged("not from the configured topic".into()));
        }
        if msg["SignatureVersion"].as_str() != Some("2") {
            return Err(ReportError::Forged(
                "only SignatureVersion 2 (SHA-256) is taken: set the topic's SignatureVersion to 2"
                    .into(),
            ));
        }
        let url = self.cert_url(&msg)?;
        let der = self
            .certs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(url)
            .cloned()
            .ok_or_else(|| {
                ReportError::Forged("the signing certificate could not be fetched".into())
            })?;
        let mut signed = String::new();
        for field in signed_fields(kind) {
            if let Some(v) = msg[*field].as_str() {
                signed.push_str(field);
                signed.push('\n');
                signed.push_str(v);
                signed.push('\n');
            } else if *field != "Subject" {
                return Err(ReportError::Forged(format!("no {field}")));
            }
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(msg["Signature"].as_str().unwrap_or(""))
            .map_err(|_| ReportError::Forged("the signature is not base64".into()))?;
        let cert_der = rustls_pki_types::CertificateDer::from(der);
        let cert = webpki::EndEntityCert::try_from(&cert_der)
            .map_err(|_| ReportError::Forged("the signing certificate does not parse".into()))?;
        cert.verify_signature(
            webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &signature,
        )
        .map_err(|_| ReportError::Forged("the signature does not match".into()))?;
        let at = msg["Timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .ok_or_else(|| ReportError::Malformed("the Timestamp does not read".into()))?;
        super::super::fresh(at.timestamp(), r.now)?;
        let receipt = msg["MessageId"].as_str().unwrap_or("").to_owned();
        if kind != "Notification" {
            // A subscription to confirm: the operator does it (the
            // SubscribeURL is in the node's log), nothing moves.
            tracing::info!(
                kind,
                subscribe_url = msg["SubscribeURL"].as_str().unwrap_or(""),
                "an SNS subscription message for SES events; confirm it to receive them"
            );
            return Ok(Verified {
                scope: None,
                receipt,
                updates: Vec::new(),
            });
        }
        // The event SES published (configuration-set events, or the older
        // notifications).
        let event: serde_json::Value = msg["Message"]
            .as_str()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or_default();
        let kind = event["eventType"]
            .as_str()
            .or(event["notificationType"].as_str())
            .unwrap_or("");
        let status = match kind {
            "Delivery" => Some("delivered"),
            "Bounce" if event["bounce"]["bounceType"].as_str() == Some("Permanent") => {
                Some("bounced")
            }
            "Complaint" => Some("complained"),
            "Open" => Some("opened"),
            "Click" => Some("clicked"),
            "Reject" | "Rendering Failure" => Some("undelivered"),
            _ => None,
        };
        let updates = match (status, event["mail"]["messageId"].as_str()) {
            (Some(status), Some(id)) => vec![StatusUpdate {
                message_id: id.to_owned(),
                status,
            }],
            _ => Vec::new(),
        };
        Ok(Verified {
            scope: None,
            receipt,
            updates,
        })
    }

    /// Fetches (once) the certificate an SNS message names.
    async fn fetch_cert(&self, r: &Report<'_>) -> Result<(), ReportError> {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(r.body) else {
            return Ok(());
        };
        let Ok(url) = self.cert_url(&msg) else {
            return Ok(());
        };
        if self
            .certs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(url)
        {
            return Ok(());
        }
        let answer = call(self.client.get(url)).await.map_err(|e| {
            ReportError::NotConfigured(format!("fetching the SNS certificate: {}", e.message))
        })?;
        if !answer.status.is_success() {
            return Err(ReportError::Forged(format!(
                "the SNS certificate answered {}",
                answer.status
            )));
        }
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(answer.body.as_bytes())
            .map_err(|_| ReportError::Forged("the SNS certificate is not PEM".into()))?;
        let mut certs = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        if certs.len() > 64 {
            certs.clear();
        }
        certs.insert(url.to_owned(), der.as_ref().to_vec());
        Ok(())
    }
}

impl Provider for Ses {
    fn prepare_report<'a>(&'a self, report: &'a Report<'a>) -> super::super::PrepareFuture<'a> {
        Box::pin(self.fetch_cert(report))
    }

    fn verify_report(&self, report: &Report<'_>) -> Result<Verified, ReportError> {
        self.verify(report)
    }

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
            err.may_have_sent = super::super::http::ambiguous(answer.status.as_u16());
            if !code.is_empty() {
                err = err.with_code(code);
            }
            Err(err)
        })
    }
}
