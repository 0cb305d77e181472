//! The messages the channel actions send, read from an attempt's rendered
//! inputs. A field that does not read is a permanent failure naming it
//! (`inputs.to: …`): no provider would accept it on a retry.

use serde_json::{Map, Value};

use super::Channel;

/// One message, typed by channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Email(Email),
    Sms(Sms),
    Push(Push),
    Chat(Chat),
}

/// `email.send`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Email {
    pub to: Vec<String>,
    /// `None`: the provider's configured sender.
    pub from: Option<String>,
    pub reply_to: Option<String>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    /// Fetched by the worker at send time (through the egress policy).
    pub attachments: Vec<AttachmentRef>,
    /// Extra headers (`X-Campaign`, `List-Id`, …).
    pub headers: Vec<(String, String)>,
}

/// An attachment named by URL.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachmentRef {
    pub url: String,
    pub filename: String,
    /// `None`: what the server answers, else `application/octet-stream`.
    pub content_type: Option<String>,
}

/// An attachment's bytes, fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

/// `sms.send`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sms {
    /// E.164 (`+33612345678`).
    pub to: String,
    /// `None`: the provider's configured sender.
    pub from: Option<String>,
    pub body: String,
}

/// `push.send`: to a device token (FCM, APNs) or a browser's push
/// subscription (Web Push).
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub to: PushTarget,
    pub title: Option<String>,
    pub body: Option<String>,
    /// Key/value data delivered to the app (strings).
    pub data: Map<String, Value>,
    pub badge: Option<u32>,
    pub sound: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PushTarget {
    Token(String),
    /// A `PushSubscription` as the browser gives it: `endpoint` and
    /// `keys.p256dh`, `keys.auth`.
    Subscription {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
}

/// `chat.send`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    /// A channel id or name, for providers that post to one (Slack's
    /// `chat.postMessage`); webhooks post where they were made for.
    pub channel: Option<String>,
    pub text: Option<String>,
    /// Slack blocks.
    pub blocks: Option<Value>,
    /// Discord embeds.
    pub embeds: Option<Value>,
    /// A Teams Adaptive Card.
    pub card: Option<Value>,
}

impl Message {
    /// Reads the message of `channel` from an attempt's inputs.
    pub fn parse(channel: Channel, inputs: &Value) -> Result<Message, String> {
        let Some(i) = inputs.as_object() else {
            return Err("inputs: must be an object".into());
        };
        Ok(match channel {
            Channel::Email => Message::Email(email(i)?),
            Channel::Sms => Message::Sms(Sms {
                to: phone(i, "to")?,
                from: opt_text(i, "from")?,
                body: text(i, "body")?,
            }),
            Channel::Push => Message::Push(push(i)?),
            Channel::Chat => Message::Chat(chat(i)?),
        })
    }

    pub fn channel(&self) -> Channel {
        match self {
            Message::Email(_) => Channel::Email,
            Message::Sms(_) => Channel::Sms,
            Message::Push(_) => Channel::Push,
            Message::Chat(_) => Channel::Chat,
        }
    }

    /// Who it goes to, as the delivery log records it.
    pub fn recipient(&self) -> String {
        match self {
            Message::Email(e) => e.to.join(", "),
            Message::Sms(s) => s.to.clone(),
            Message::Push(p) => match &p.to {
                PushTarget::Token(t) => t.clone(),
                PushTarget::Subscription { endpoint, .. } => endpoint.clone(),
            },
            Message::Chat(c) => c.channel.clone().unwrap_or_default(),
        }
    }
}

/// Checks an address for a profile (`field` names it in the error):
/// an email address, or an E.164 number; returns it as sent.
pub fn check_address(channel: Channel, field: &str, value: &str) -> Result<String, String> {
    match channel {
        Channel::Email => address(field, value),
        Channel::Sms => {
            let mut i = Map::new();
            i.insert("to".into(), Value::String(value.to_owned()));
            phone(&i, "to").map_err(|e| e.replace("inputs.to", field))
        }
        _ => Ok(value.trim().to_owned()),
    }
}

fn text(i: &Map<String, Value>, field: &str) -> Result<String, String> {
    match i.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("inputs.{field}: is empty")),
        None | Some(Value::Null) => Err(format!("inputs.{field}: required")),
        Some(_) => Err(format!("inputs.{field}: must be text")),
    }
}

fn opt_text(i: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match i.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("inputs.{field}: must be text")),
    }
}

/// An address as `local@domain` or `Name <local@domain>`, checked by
/// lettre's parser (the one the SMTP provider sends with).
fn address(field: &str, s: &str) -> Result<String, String> {
    let s = s.trim();
    s.parse::<lettre::message::Mailbox>()
        .map_err(|e| format!("{field}: {s:?} is not an email address ({e})"))?;
    Ok(s.to_owned())
}

fn email(i: &Map<String, Value>) -> Result<Email, String> {
    let to = match i.get("to") {
        Some(Value::String(s)) => s
            .split(',')
            .filter(|a| !a.trim().is_empty())
            .map(|a| address("inputs.to", a))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(n, a)| match a.as_str() {
                Some(a) => address(&format!("inputs.to[{n}]"), a),
                None => Err(format!("inputs.to[{n}]: must be text")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None | Some(Value::Null) => return Err("inputs.to: required".into()),
        Some(_) => return Err("inputs.to: must be an address or a list of them".into()),
    };
    if to.is_empty() {
        return Err("inputs.to: no address".into());
    }
    if to.len() > 50 {
        return Err("inputs.to: at most 50 addresses".into());
    }
    let from = opt_text(i, "from")?
        .map(|f| address("inputs.from", &f))
        .transpose()?;
    let reply_to = opt_text(i, "reply_to")?
        .map(|f| address("inputs.reply_to", &f))
        .transpose()?;
    let subject = text(i, "subject")?;
    if subject.contains(['\r', '\n']) {
        return Err("inputs.subject: must be one line".into());
    }
    let text_body = opt_text(i, "text")?;
    let html = opt_text(i, "html")?;
    if text_body.is_none() && html.is_none() {
        return Err("inputs.text: an email needs text or html".into());
    }
    let mut attachments = Vec::new();
    match i.get("attachments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            if list.len() > 10 {
                return Err("inputs.attachments: at most 10".into());
            }
            for (n, a) in list.iter().enumerate() {
                let field = format!("inputs.attachments[{n}]");
                let Some(a) = a.as_object() else {
                    return Err(format!("{field}: must be an object with url and filename"));
                };
                let url = text(a, "url").map_err(|e| e.replace("inputs.", &format!("{field}.")))?;
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(format!("{field}.url: must be an http(s) URL"));
                }
                let filename = match opt_text(a, "filename")
                    .map_err(|e| e.replace("inputs.", &format!("{field}.")))?
                {
                    Some(f) => f,
                    None => url
                        .rsplit('/')
                        .next()
                        .filter(|s| !s.is_empty())
                        .unwrap_or("attachment")
                        .to_owned(),
                };
                if filename.contains(['\r', '\n', '"', '/', '\\']) {
                    return Err(format!("{field}.filename: {filename:?} is not a file name"));
                }
                let content_type = opt_text(a, "content_type")
                    .map_err(|e| e.replace("inputs.", &format!("{field}.")))?;
                attachments.push(AttachmentRef {
                    url,
                    filename,
                    content_type,
                });
            }
        }
        Some(_) => return Err("inputs.attachments: must be a list".into()),
    }
    let mut headers = Vec::new();
    match i.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (name, v) in h {
                let Some(v) = v.as_str() else {
                    return Err(format!("inputs.headers.{name}: must be text"));
                };
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(format!("inputs.headers.{name}: not a header name"));
                }
                if v.contains(['\r', '\n']) {
                    return Err(format!("inputs.headers.{name}: must be one line"));
                }
                let lower = name.to_ascii_lowercase();
                // Set from the other inputs, or by the provider.
                if [
                    "to",
                    "from",
                    "cc",
                    "bcc",
                    "subject",
                    "reply-to",
                    "content-type",
                    "content-transfer-encoding",
                    "mime-version",
                    "message-id",
                    "date",
                ]
                .contains(&lower.as_str())
                {
                    return Err(format!(
                        "inputs.headers.{name}: set by Sojourn (use the matching input)"
                    ));
                }
                headers.push((name.clone(), v.to_owned()));
            }
        }
        Some(_) => return Err("inputs.headers: must be an object of text".into()),
    }
    Ok(Email {
        to,
        from,
        reply_to,
        subject,
        text: text_body,
        html,
        attachments,
        headers,
    })
}

fn phone(i: &Map<String, Value>, field: &str) -> Result<String, String> {
    let raw = text(i, field)?;
    let compact: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let digits = compact.strip_prefix('+').unwrap_or("");
    if digits.len() < 8 || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "inputs.{field}: {raw:?} is not a phone number in E.164 form (+ and 8 to 15 digits)"
        ));
    }
    Ok(compact)
}

fn push(i: &Map<String, Value>) -> Result<Push, String> {
    let to = match (i.get("subscription"), i.get("to").or(i.get("token"))) {
        (Some(sub), _) if !sub.is_null() => {
            let Some(sub) = sub.as_object() else {
                return Err("inputs.subscription: must be a PushSubscription object".into());
            };
            let endpoint =
                text(sub, "endpoint").map_err(|e| e.replace("inputs.", "inputs.subscription."))?;
            if !endpoint.starts_with("https://") && !endpoint.starts_with("http://") {
                return Err("inputs.subscription.endpoint: must be an http(s) URL".into());
            }
            let keys = sub
                .get("keys")
                .and_then(Value::as_object)
                .ok_or("inputs.subscription.keys: required (p256dh and auth)")?;
            PushTarget::Subscription {
                endpoint,
                p256dh: text(keys, "p256dh")
                    .map_err(|e| e.replace("inputs.", "inputs.subscription.keys."))?,
                auth: text(keys, "auth")
                    .map_err(|e| e.replace("inputs.", "inputs.subscription.keys."))?,
            }
        }
        (_, Some(Value::String(t))) if !t.trim().is_empty() => {
            PushTarget::Token(t.trim().to_owned())
        }
        (_, Some(Value::String(_))) => return Err("inputs.to: is empty".into()),
        (_, Some(v)) if !v.is_null() => return Err("inputs.to: must be a device token".into()),
        _ => return Err("inputs.to: required (a device token, or inputs.subscription)".into()),
    };
    let title = opt_text(i, "title")?;
    let body = opt_text(i, "body")?;
    let data = match i.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(d)) => d
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => Value::String(s.clone()),
                    other => Value::String(other.to_string()),
                };
                (k.clone(), v)
            })
            .collect(),
        Some(_) => return Err("inputs.data: must be an object".into()),
    };
    if title.is_none() && body.is_none() && data.is_empty() {
        return Err("inputs.body: a push needs a title, a body or data".into());
    }
    let badge = match i.get("badge") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|b| u32::try_from(b).ok())
                .ok_or("inputs.badge: must be a whole number from 0")?,
        ),
    };
    Ok(Push {
        to,
        title,
        body,
        data,
        badge,
        sound: opt_text(i, "sound")?,
    })
}

fn chat(i: &Map<String, Value>) -> Result<Chat, String> {
    let rich = |field: &str, array: bool| -> Result<Option<Value>, String> {
        match i.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v @ Value::Array(_)) if array => Ok(Some(v.clone())),
            Some(v @ Value::Object(_)) if !array => Ok(Some(v.clone())),
            Some(_) if array => Err(format!("inputs.{field}: must be a list")),
            Some(_) => Err(format!("inputs.{field}: must be an object")),
        }
    };
    let c = Chat {
        channel: opt_text(i, "channel")?,
        text: opt_text(i, "text")?,
        blocks: rich("blocks", true)?,
        embeds: rich("embeds", true)?,
        card: rich("card", false)?,
    };
    if c.text.is_none() && c.blocks.is_none() && c.embeds.is_none() && c.card.is_none() {
        return Err("inputs.text: a chat message needs text, blocks, embeds or a card".into());
    }
    Ok(c)
}

/// An email address for a listing: `j***@example.com`.
pub fn mask_email(address: &str) -> String {
    let bare = match (address.find('<'), address.rfind('>')) {
        (Some(a), Some(b)) if a < b => &address[a + 1..b],
        _ => address,
    };
    match bare.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// A phone number for a listing: `+336******78`.
pub fn mask_phone(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 6 {
        return "***".into();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 6))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_email_reads_with_every_field_and_names_what_is_wrong() {
        let m = Message::parse(
            Channel::Email,
            &json!({"to": "Ann <ann@example.com>, bob@example.com", "from": "news@shop.test",
                "subject": "Hi", "html": "<p>hi</p>", "headers": {"X-Campaign": "c1"},
                "attachments": [{"url": "https://files.test/a.pdf"}]}),
        )
        .expect("reads");
        let Message::Email(e) = m else { panic!() };
        assert_eq!(e.to, ["Ann <ann@example.com>", "bob@example.com"]);
        assert_eq!(e.attachments[0].filename, "a.pdf");
        for (inputs, field) in [
            (json!({"subject": "s", "text": "t"}), "inputs.to: required"),
            (
                json!({"to": "nope", "subject": "s", "text": "t"}),
                "inputs.to: \"nope\"",
            ),
            (json!({"to": "a@b.c", "subject": "s"}), "inputs.text:"),
            (
                json!({"to": "a@b.c", "subject": "s\nBcc: x@y.z", "text": "t"}),
                "inputs.subject:",
            ),
            (
                json!({"to": "a@b.c", "subject": "s", "text": "t", "headers": {"Bcc": "x@y.z"}}),
                "inputs.headers.Bcc:",
            ),
            (
                json!({"to": "a@b.c", "subject": "s", "text": "t", "headers": {"X-A": "1\r\nBcc: x"}}),
                "inputs.headers.X-A:",
            ),
            (
                json!({"to": "a@b.c", "subject": "s", "text": "t", "attachments": [{"url": "file:///etc/passwd"}]}),
                "inputs.attachments[0].url:",
            ),
        ] {
            let e = Message::parse(Channel::Email, &inputs).expect_err("refused");
            assert!(e.starts_with(field), "{e} / {field}");
        }
    }

    #[test]
    fn sms_push_and_chat_read_and_refuse() {
        let Message::Sms(s) = Message::parse(
            Channel::Sms,
            &json!({"to": "+33 6 12 34 56 78", "body": "hi"}),
        )
        .expect("sms") else {
            panic!()
        };
        assert_eq!(s.to, "+33612345678");
        assert!(
            Message::parse(Channel::Sms, &json!({"to": "0612345678", "body": "hi"}))
                .expect_err("not E.164")
                .starts_with("inputs.to:")
        );
        let Message::Push(p) = Message::parse(
            Channel::Push,
            &json!({"token": "abc", "title": "T", "data": {"n": 1}, "badge": 2}),
        )
        .expect("push") else {
            panic!()
        };
        assert_eq!(p.to, PushTarget::Token("abc".into()));
        assert_eq!(p.data["n"], "1");
        assert!(
            Message::parse(
                Channel::Push,
                &json!({"subscription": {"endpoint": "https://p.test/x"}, "body": "b"})
            )
            .expect_err("no keys")
            .starts_with("inputs.subscription.keys")
        );
        assert!(
            Message::parse(Channel::Chat, &json!({"channel": "#x"}))
                .expect_err("empty")
                .starts_with("inputs.text:")
        );
    }

    #[test]
    fn addresses_are_masked_for_listings() {
        assert_eq!(mask_email("Ann <ann@example.com>"), "a***@example.com");
        assert_eq!(mask_email("bob@example.com"), "b***@example.com");
        assert_eq!(mask_phone("+33612345678"), "+336******78");
    }
}
