//! `smtp`: any SMTP server through lettre — STARTTLS (required) or implicit
//! TLS, AUTH when a username is set, a pool of open connections (ours: see
//! [`Pool`]). The
//! attempt's idempotency key is the message's `Message-ID`
//! (`<execution/node/attempt@sender-domain>`), so a re-send after a crash
//! carries the same id and a receiver or the relay can recognise it.
//!
//! Replies: 5xx is permanent (550, 551, 553 and 5.1.x: the recipient);
//! 4xx is transient (retryable); no connection or a timeout is retryable.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as LettreAttachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use secrecy::ExposeSecret;

use super::super::config::{SmtpConfig, SmtpTls};
use super::super::message::{Attachment, Email};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};

pub(crate) struct SmtpProvider {
    pool: Pool,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("from", &self.from)
            .field("host", &self.pool.host)
            .field("port", &self.pool.port)
            .finish_non_exhaustive()
    }
}

/// Open connections to one server, `size` at most, reused while they
/// last. Ours rather than lettre's pooled transport: lettre (0.11.23)
/// leaves Nagle's algorithm on, and ends each message with a separate
/// five-byte write, which then waits for the server's delayed ACK — 40 ms
/// a message on Linux (lettre#1159, merged upstream, not yet released).
/// Our sockets set `TCP_NODELAY` and are handed to lettre's connection
/// (`connect_with_transport`), which speaks SMTP, STARTTLS and AUTH. With
/// implicit TLS lettre must make the socket itself, so that mode keeps the
/// stall until lettre's release.
struct Pool {
    host: String,
    port: u16,
    tls: SmtpTls,
    credentials: Option<Credentials>,
    connect_timeout: std::time::Duration,
    idle: std::sync::Mutex<Vec<(AsyncSmtpConnection, std::time::Instant)>>,
    slots: tokio::sync::Semaphore,
}

/// An idle connection older than this is checked (NOOP) before reuse.
const CHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

impl Pool {
    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        let hello = ClientId::default();
        let tls = || TlsParameters::new(self.host.clone());
        let plain = || async {
            let tcp = tokio::time::timeout(
                self.connect_timeout,
                tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
            )
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(Failure::Connect)?;
            tcp.set_nodelay(true).map_err(Failure::Connect)?;
            Ok::<_, Failure>(
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello).await?,
            )
        };
        let mut conn = match self.tls {
            SmtpTls::None => plain().await?,
            SmtpTls::Starttls => {
                let mut c = plain().await?;
                c.starttls(tls()?, &hello).await?;
                c
            }
            SmtpTls::Implicit => {
                AsyncSmtpConnection::connect_tokio1(
                    (self.host.as_str(), self.port),
                    Some(self.connect_timeout),
                    &hello,
                    Some(tls()?),
                    None,
                )
                .await?
            }
        };
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await?;
        }
        Ok(conn)
    }

    async fn send(
        &self,
        envelope: &lettre::address::Envelope,
        message: &[u8],
    ) -> Result<(), Failure> {
        let _slot = self.slots.acquire().await;
        let mut conn = loop {
            let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match taken {
                Some((mut c, at)) if !c.has_broken() => {
                    if at.elapsed() < CHECK_AFTER || c.test_connected().await {
                        break c;
                    }
                }
                Some(_) => {}
                // Nothing of the message is sent while connecting.
                None => break self.connect().await.map_err(Failure::before_sending)?,
            }
        };
        match conn.send(envelope, message).await {
            Ok(_) => {
                self.idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((conn, std::time::Instant::now()));
                Ok(())
            }
            Err(e) => {
                // The session's state is unknown after a refusal: a new
                // connection for the next message.
                conn.abort().await;
                Err(e.into())
            }
        }
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
    let port = c.port.unwrap_or(match c.tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Implicit => 465,
        SmtpTls::None => 25,
    });
    if c.tls != SmtpTls::None {
        TlsParameters::new(c.host.clone())
            .map_err(|e| ConfigError::new(format!("{field}.host"), e.to_string()))?;
    }
    let credentials = match (&c.username, &c.password) {
        (Some(user), Some(password)) => {
            let password = password.resolve(&format!("{field}.password"), cx)?;
            Some(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ))
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
        (None, None) => None,
    };
    let size = c.pool_size.clamp(1, 1_000) as usize;
    Ok(Built::one(
        Channel::Email,
        SmtpProvider {
            pool: Pool {
                host: c.host.clone(),
                port,
                tls: c.tls,
                credentials,
                connect_timeout: std::time::Duration::from_millis(c.limits.timeout_ms.min(30_000)),
                idle: std::sync::Mutex::new(Vec::with_capacity(size)),
                slots: tokio::sync::Semaphore::new(size),
            },
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

/// Why a send through the pool failed.
#[derive(Debug)]
enum Failure {
    /// No connection within the timeout.
    Timeout,
    Connect(std::io::Error),
    /// What lettre says: a reply, TLS, the network.
    Smtp(lettre::transport::smtp::Error),
    /// What lettre said while connecting: nothing was sent.
    Setup(lettre::transport::smtp::Error),
}

impl Failure {
    /// A failure while connecting (greeting, STARTTLS, AUTH): the message
    /// was not sent.
    fn before_sending(self) -> Failure {
        match self {
            Failure::Smtp(e) => Failure::Setup(e),
            other => other,
        }
    }
}

impl From<lettre::transport::smtp::Error> for Failure {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        Failure::Smtp(e)
    }
}

/// A send's failure, classed.
fn classify(f: Failure) -> SendError {
    let e = match f {
        Failure::Timeout => {
            // No connection: nothing was sent.
            let mut err = SendError::new(
                ErrorClass::Timeout,
                "connecting to the SMTP server timed out",
            );
            err.may_have_sent = false;
            return err;
        }
        Failure::Connect(e) => {
            return SendError::new(
                ErrorClass::Unavailable,
                format!("connecting to the SMTP server: {e}"),
            );
        }
        Failure::Smtp(e) => e,
        Failure::Setup(e) => {
            let mut err = classify(Failure::Smtp(e));
            err.may_have_sent = false;
            return err;
        }
    };
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
    let mut err = SendError::new(class, crate::providers::with_causes(&e));
    // A reply refusing the message, or TLS failing before it: not taken.
    // Anything else (the connection lost mid-message, a timeout) may have
    // been.
    err.may_have_sent = !(e.is_permanent() || e.is_transient() || e.is_tls());
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
            self.pool
                .send(message.envelope(), &message.formatted())
                .await
                .map_err(classify)?;
            Ok(Sent {
                message_id: id,
                status: SentStatus::Sent,
            })
        })
    }
}
