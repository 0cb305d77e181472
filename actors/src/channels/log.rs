//! `log`: records each message in the node's log (recipient masked, no
//! content: a rendered subject may hold a secret) and sends nothing. The quick start's provider: `sojourn dev`
//! shows an email being "sent" without an account.

use super::{Message, Outgoing, Provider, SendFuture, Sent, SentStatus};

#[derive(Debug)]
pub(crate) struct LogProvider {
    pub name: String,
}

impl Provider for LogProvider {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let to = match out.message {
                Message::Email(e) => {
                    e.to.iter()
                        .map(|a| super::message::mask_email(a))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                Message::Sms(s) => super::message::mask_phone(&s.to),
                Message::Push(_) => "a device".into(),
                Message::Chat(c) => c.channel.clone().unwrap_or_else(|| "a chat".into()),
            };
            tracing::info!(provider = %self.name, channel = %out.message.channel(), to = %to, key = %out.key,
                "message recorded by the log provider (not sent)");
            Ok(Sent {
                message_id: Some(out.key.to_owned()),
                status: SentStatus::Sent,
            })
        })
    }
}
