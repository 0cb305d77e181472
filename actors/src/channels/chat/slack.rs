//! `slack`: an incoming webhook (`POST <webhook_url>`, `{text, blocks}`;
//! Slack answers `ok` or a plain-text error such as `invalid_payload`,
//! `channel_not_found`), or `chat.postMessage` with a bot token (`POST
//! /api/chat.postMessage`, bearer; answers 200 with `{"ok": false, "error":
//! …}` for a refusal). Slack takes no idempotency key; with a bot token the
//! attempt's key travels in the message's metadata
//! (`event_type: sojourn_send`), where a re-send can be recognised.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::super::http::{call, client, refusal};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use crate::channels::config::{SlackConfig, http_url};

#[derive(Debug)]
enum Mode {
    Webhook(SecretString),
    Bot {
        url: reqwest::Url,
        token: SecretString,
    },
}

#[derive(Debug)]
pub(crate) struct Slack {
    client: reqwest::Client,
    mode: Mode,
}

pub(crate) fn build(
    field: &str,
    c: &SlackConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    let mode = match (&c.webhook_url, &c.bot_token) {
        (Some(url), None) => {
            let url = url.resolve(&format!("{field}.webhook_url"), cx)?;
            http_url(&format!("{field}.webhook_url"), url.expose_secret())?;
            Mode::Webhook(url)
        }
        (None, Some(token)) => {
            let base = http_url(&format!("{field}.base_url"), &c.base_url)?;
            Mode::Bot {
                url: base
                    .join("/api/chat.postMessage")
                    .map_err(|e| ConfigError::new(format!("{field}.base_url"), e.to_string()))?,
                token: token.resolve(&format!("{field}.bot_token"), cx)?,
            }
        }
        _ => {
            return Err(ConfigError::new(
                format!("{field}.webhook_url"),
                "set either webhook_url or bot_token",
            ));
        }
    };
    Ok(Built::one(
        Channel::Chat,
        Slack {
            client: client(field, timeout)?,
            mode,
        },
    ))
}

fn class_of(error: &str) -> ErrorClass {
    match error {
        "channel_not_found"
        | "channel_is_archived"
        | "not_in_channel"
        | "is_archived"
        | "no_service"
        | "user_not_found" => ErrorClass::InvalidRecipient,
        "invalid_auth" | "not_authed" | "account_inactive" | "token_revoked" | "invalid_token"
        | "action_prohibited" | "missing_scope" => ErrorClass::Auth,
        "ratelimited" | "rate_limited" => ErrorClass::RateLimited,
        "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => {
            ErrorClass::Unavailable
        }
        _ => ErrorClass::Rejected,
    }
}

impl Provider for Slack {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Chat(m) = out.message else {
                return Err(SendError::new(ErrorClass::Invalid, "slack sends chat only"));
            };
            let mut body = json!({});
            if let Some(t) = &m.text {
                body["text"] = json!(t);
            }
            if let Some(b) = &m.blocks {
                body["blocks"] = b.clone();
            }
            match &self.mode {
                Mode::Webhook(url) => {
                    let answer = call(self.client.post(url.expose_secret()).json(&body)).await?;
                    if answer.status.is_success() {
                        return Ok(Sent {
                            message_id: None,
                            status: SentStatus::Sent,
                        });
                    }
                    let mut err = refusal(&answer, &answer.body);
                    if !err.class.retryable() {
                        err.class = match class_of(answer.body.trim()) {
                            ErrorClass::Rejected => err.class,
                            c => c,
                        };
                    }
                    Err(err.with_code(answer.body.trim().chars().take(64).collect::<String>()))
                }
                Mode::Bot { url, token } => {
                    let Some(channel) = &m.channel else {
                        return Err(SendError::new(
                            ErrorClass::Invalid,
                            "inputs.channel: required with a Slack bot token",
                        ));
                    };
                    body["channel"] = json!(channel);
                    body["metadata"] =
                        json!({"event_type": "sojourn_send", "event_payload": {"key": out.key}});
                    let answer = call(
                        self.client
                            .post(url.clone())
                            .bearer_auth(token.expose_secret())
                            .json(&body),
                    )
                    .await?;
                    if !answer.status.is_success() {
                        return Err(refusal(&answer, &answer.body));
                    }
                    let json = answer.json();
                    if json["ok"].as_bool() == Some(true) {
                        let id = match (json["channel"].as_str(), json["ts"].as_str()) {
                            (Some(c), Some(ts)) => Some(format!("{c}/{ts}")),
                            (None, Some(ts)) => Some(ts.to_owned()),
                            _ => None,
                        };
                        return Ok(Sent {
                            message_id: id,
                            status: SentStatus::Sent,
                        });
                    }
                    let error = json["error"].as_str().unwrap_or("unknown_error");
                    let mut err = SendError::new(class_of(error), format!("Slack: {error}"));
                    // Slack says part of the call may have succeeded.
                    err.may_have_sent = matches!(error, "internal_error" | "fatal_error");
                    Err(err.with_code(error))
                }
            }
        })
    }
}
