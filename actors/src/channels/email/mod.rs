//! Email providers, and what they share: the sender's address, attachments
//! fetched at send time.

pub(crate) mod mailgun;
pub(crate) mod sendgrid;
pub(crate) mod ses;
pub(crate) mod smtp;

use super::message::{Attachment, AttachmentRef};
use super::{ErrorClass, SendError};

/// Most bytes of all of an email's attachments.
pub(crate) const MAX_ATTACHMENT_BYTES: usize = 10 * 1024 * 1024;

/// Fetches an email's attachments through the egress policy (their URLs
/// are the workflow author's): an address the policy refuses, a 4xx or a
/// body over the cap fails the send for good; a 5xx or a timeout may pass.
pub(crate) async fn fetch_attachments(
    http: &crate::providers::HttpProvider,
    refs: &[AttachmentRef],
    timeout_ms: u64,
) -> Result<Vec<Attachment>, SendError> {
    let mut out = Vec::with_capacity(refs.len());
    let mut left = MAX_ATTACHMENT_BYTES;
    for (n, r) in refs.iter().enumerate() {
        let field = format!("inputs.attachments[{n}].url");
        let (content, content_type) =
            http.fetch(&r.url, left, timeout_ms)
                .await
                .map_err(|(e, retryable)| {
                    SendError::new(
                        if retryable {
                            ErrorClass::Unavailable
                        } else {
                            ErrorClass::Invalid
                        },
                        format!("{field}: {e}"),
                    )
                })?;
        left -= content.len();
        out.push(Attachment {
            filename: r.filename.clone(),
            content_type: r
                .content_type
                .clone()
                .or(content_type)
                .unwrap_or_else(|| "application/octet-stream".into()),
            content,
        });
    }
    Ok(out)
}

/// A mailbox (`Name <a@b>` or `a@b`) as an address and an optional name.
pub(crate) fn split_mailbox(s: &str) -> (String, Option<String>) {
    match s.parse::<lettre::message::Mailbox>() {
        Ok(m) => (m.email.to_string(), m.name.filter(|n| !n.is_empty())),
        Err(_) => (s.trim().to_owned(), None),
    }
}
