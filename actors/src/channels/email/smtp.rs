//! `smtp`: any SMTP server through lettre — STARTTLS (required) or implicit
//! TLS, AUTH when a username is set, a pool of open connections. The
//! attempt's idempotency key is the message's `Message-ID`
//! (`<execution/node/attempt@sender-domain>`), so a re-send after a crash
//! carries the same id and a receiver or the relay can recognise it.
//!
//! Replies: 5xx is permanent (550, 551, 553 and 5.1.x: the recipient);
//! 4xx is transient (retryable); no connection or a timeout is retryable.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as LettreAttachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::ExposeSecret;

use super::super::config::{SmtpConfig, SmtpTls};
use super::super::message::{Attachment, Email};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};

pub(crate) struct SmtpProvider {
    /// Made on the first send: a pooled transport spawns its pool's task
    /// when made and when dropped, which needs a runtime (the settings are
    /// checked, and providers built, before one may run).
    builder: lettre::transport::smtp::AsyncSmtpTransportBuilder,
    transport: std::sync::OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

pub(crate) fn build(field: &str, c: &SmtpConfig, cx: &Context) -> Result<Built, ConfigError> {
    let from: Mailbox = c
        .from
        .parse()
        .map_err(|e| ConfigError::new(format!("{field}.from"), format!("not an address ({e})")))?;
    if c.host.trim().is_empty() {
        return Err(ConfigError::new(format!("{field}.host"), "required"));
    }
    let tls_error = |e: lettre::transport::smtp::Error| {
        ConfigError::new(format!("{field}.host"), e.to_string())
    };
    let builder = match c.tls {
        SmtpTls::Starttls => {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host).map_err(tls_error)?
        }
        SmtpTls::Implicit => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host).map_err(tls_error)?
        }
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
    };
    let port = c.port.unwrap_or(match c.tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Implicit => 465,
        SmtpTls::None => 25,
    });
    let mut builder = builder
        .port(port)
        .timeout(Some(std::time::Duration::from_millis(c.limits.timeout_ms)))
        .pool_config(PoolConfig::new().max_size(c.pool_size.max(1)));
    match (&c.username, &c.password) {
        (Some(user), Some(password)) => {
            let password = password.resolve(&format!("{field}.password"), cx)?;
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                format!("{field}.password"),
                "required with a username",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                format!("{field}.username"),
                "required with a password",
            ));
        }
        (None, None) => {}
    }
    Ok(Built::one(
        Channel::Email,
        SmtpProvider {
            builder,
            transport: std::sync::OnceLock::new(),
            from,
        },
    ))
}

/// The MIME message: text and HTML as `multipart/alternative`, inside a
/// `multipart/mixed` with the attachments when there are any.
pub(crate) fn mime(
    e: &Email,
    default_from: &Mailbox,
    key: &str,
    attachments: &[Attachment],
) -> Result<lettre::Message, SendError> {
    let invalid = |m: String| SendError::new(ErrorClass::Invalid, m);
    let from: Mailbox = match &e.from {
        Some(f) => f
            .parse()
            .map_err(|err| invalid(format!("inputs.from: {err}")))?,
        None => default_from.clone(),
    };
    let domain = from.email.domain().to_owned();
    let mut b = lettre::Message::builder()
        .from(from)
        .subject(e.subject.clone())
        .message_id(Some(format!("<{key}@{domain}>")));
    for to in &e.to {
        b = b.to(to
            .parse()
            .map_err(|err| invalid(format!("inputs.to: {err}")))?);
    }
    if let Some(r) = &e.reply_to {
        b = b.reply_to(
            r.parse()
                .map_err(|err| invalid(format!("inputs.reply_to: {err}")))?,
        );
    }
    for (name, value) in &e.headers {
        let header = HeaderName::new_from_ascii(name.clone())
            .map_err(|err| invalid(format!("inputs.headers.{name}: {err}")))?;
        b = b.raw_header(HeaderValue::new(header, value.clone()));
    }
    let body = match (&e.text, &e.html) {
        (Some(t), Some(h)) => MultiPart::alternative_plain_html(t.clone(), h.clone()),
        (Some(t), None) => MultiPart::mixed().singlepart(SinglePart::plain(t.clone())),
        (None, Some(h)) => MultiPart::mixed().singlepart(SinglePart::html(h.clone())),
        (None, None) => return Err(invalid("inputs.text: an email needs text or html".into())),
    };
    let body = if attachments.is_empty() {
        body
    } else {
        let mut mixed = MultiPart::mixed().multipart(body);
        for a in attachments {
            let ct = ContentType::parse(&a.content_type).unwrap_or(
                ContentType::parse("application/octet-stream")
                    .map_err(|err| invalid(err.to_string()))?,
            );
            mixed = mixed
                .singlepart(LettreAttachment::new(a.filename.clone()).body(a.content.clone(), ct));
        }
        mixed
    };
    b.multipart(body)
        .map_err(|err| invalid(format!("the message: {err}")))
}

/// An SMTP failure, classed.
fn classify(e: lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(|c| c.to_string());
    let class = if e.is_timeout() {
        ErrorClass::Timeout
    } else if e.is_permanent() {
        match code.as_deref() {
            Some("550" | "551" | "553" | "501") => ErrorClass::InvalidRecipient,
            Some("535" | "530") => ErrorClass::Auth,
            _ => ErrorClass::Rejected,
        }
    } else {
        // 4xx replies, refused connections, TLS and I/O errors.
        ErrorClass::Unavailable
    };
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    let err = SendError::new(class, text);
    match code {
        Some(c) => err.with_code(c),
        None => err,
    }
}

impl Provider for SmtpProvider {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Email(e) = out.message else {
                return Err(SendError::new(ErrorClass::Invalid, "smtp sends email only"));
            };
            let message = mime(e, &self.from, out.key, out.attachments)?;
            let id = message
                .headers()
                .get_raw("Message-ID")
                .map(|v| v.trim().to_owned());
            let transport = self.transport.get_or_init(|| self.builder.clone().build());
            transport.send(message).await.map_err(classify)?;
            Ok(Sent {
                message_id: id,
                status: SentStatus::Sent,
            })
        })
    }
}
