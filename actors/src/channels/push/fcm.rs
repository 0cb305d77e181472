//! `fcm`: Firebase Cloud Messaging HTTP v1
//! (`POST /v1/projects/<project>/messages:send`, bearer OAuth2 token).
//! The token is made from the service account: a JWT (RS256) signed with
//! its private key, exchanged at its token endpoint for an access token,
//! cached until a minute before it expires and made again after a 401.
//! FCM takes no idempotency key: the attempt's key rides in the message's
//! data (`sojourn_key`), where the app can recognise a re-send.
//!
//! Errors carry FCM's `errorCode`: UNREGISTERED and SENDER_ID_MISMATCH are
//! the recipient (the token is no longer valid), QUOTA_EXCEEDED is a rate
//! limit (with `Retry-After`), UNAVAILABLE and INTERNAL may pass.

use std::time::Duration;

use serde_json::{Value, json};

use super::super::http::{call, client, refusal};
use super::super::{
    Built, Channel, ConfigError, Context, ErrorClass, Message, Outgoing, Provider, SendError,
    SendFuture, Sent, SentStatus,
};
use super::CachedToken;
use crate::channels::config::{FcmConfig, http_url};
use crate::channels::message::PushTarget;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

pub(crate) struct Fcm {
    client: reqwest::Client,
    send_url: reqwest::Url,
    token_url: reqwest::Url,
    email: String,
    key: jsonwebtoken::EncodingKey,
    token: CachedToken,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("send_url", &self.send_url.as_str())
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

pub(crate) fn build(
    field: &str,
    c: &FcmConfig,
    cx: &Context,
    timeout: Duration,
) -> Result<Built, ConfigError> {
    use secrecy::ExposeSecret;
    let sa_field = format!("{field}.service_account");
    let sa = c.service_account.resolve(&sa_field, cx)?;
    let sa: Value = serde_json::from_str(sa.expose_secret())
        .map_err(|_| ConfigError::new(&sa_field, "not a service account's JSON key"))?;
    let text = |name: &str| {
        sa[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ConfigError::new(&sa_field, format!("the JSON key has no {name}")))
    };
    let email = text("client_email")?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(text("private_key")?.as_bytes())
        .map_err(|_| ConfigError::new(&sa_field, "its private_key is not an RSA key in PEM"))?;
    let project = match &c.project_id {
        Some(p) => p.clone(),
        None => text("project_id")?,
    };
    if project.is_empty()
        || !project
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ConfigError::new(
            format!("{field}.project_id"),
            "not a project id",
        ));
    }
    let token_url = match &c.token_url {
        Some(u) => u.clone(),
        None => text("token_uri")?,
    };
    let token_url = http_url(&format!("{field}.token_url"), &token_url)?;
    let base = http_url(&format!("{field}.base_url"), &c.base_url)?;
    let send_url = base
        .join(&format!("/v1/projects/{project}/messages:send"))
        .map_err(|e| ConfigError::new(format!("{field}.base_url"), e.to_string()))?;
    Ok(Built::one(
        Channel::Push,
        Fcm {
            client: client(field, timeout)?,
            send_url,
            token_url,
            email,
            key,
            token: CachedToken::default(),
        },
    ))
}

impl Fcm {
    /// A new access token: a signed assertion exchanged at the token URL.
    async fn new_token(&self) -> Result<(String, Duration), SendError> {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": self.email, "scope": SCOPE, "aud": self.token_url.as_str(),
            "iat": now, "exp": now + 3600,
        });
        let assertion = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|e| SendError::new(ErrorClass::Auth, format!("signing the token request: {e}")))?;
        let body = super::super::sms::form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &assertion),
        ]);
        let answer = call(
            self.client
                .post(self.token_url.clone())
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body),
        )
        .await?;
        let json = answer.json();
        if !answer.status.is_success() {
            // invalid_grant: the key was revoked or the clock is off.
            let detail = json["error_description"]
                .as_str()
                .or(json["error"].as_str())
                .unwrap_or(&answer.body)
                .to_owned();
            let mut e = refusal(&answer, &format!("the token endpoint: {detail}"));
            if e.class == ErrorClass::Rejected {
                e.class = ErrorClass::Auth;
            }
            return Err(e);
        }
        let token = json["access_token"]
            .as_str()
            .ok_or_else(|| {
                SendError::new(
                    ErrorClass::Unavailable,
                    "the token endpoint answered no access_token",
                )
            })?
            .to_owned();
        let valid = json["expires_in"]
            .as_u64()
            .unwrap_or(3600)
            .saturating_sub(60)
            .max(1);
        Ok((token, Duration::from_secs(valid)))
    }
}

impl Provider for Fcm {
    fn send<'a>(&'a self, out: &'a Outgoing<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let Message::Push(p) = out.message else {
                return Err(SendError::new(ErrorClass::Invalid, "fcm sends push only"));
            };
            let PushTarget::Token(device) = &p.to else {
                return Err(SendError::new(
                    ErrorClass::Invalid,
                    "inputs.subscription: fcm sends to device tokens (use a webpush provider for browser subscriptions)",
                ));
            };
            let mut data = p.data.clone();
            data.insert("sojourn_key".into(), Value::String(out.key.to_owned()));
            let mut message = json!({"token": device, "data": data});
            if p.title.is_some() || p.body.is_some() {
                message["notification"] = json!({"title": p.title, "body": p.body});
            }
            if let Some(sound) = &p.sound {
                message["android"] = json!({"notification": {"sound": sound}});
            }
            if p.badge.is_some() || p.sound.is_some() {
                message["apns"] = json!({"payload": {"aps": {"badge": p.badge, "sound": p.sound}}});
            }
            let token = self.token.get(|| self.new_token()).await.map_err(|mut e| {
                // The message itself was not posted.
                e.may_have_sent = false;
                e
            })?;
            let answer = call(
                self.client
                    .post(self.send_url.clone())
                    .bearer_auth(&token)
                    .json(&json!({"message": message})),
            )
            .await?;
            let json = answer.json();
            if answer.status.is_success() {
                return Ok(Sent {
                    message_id: json["name"].as_str().map(str::to_owned),
                    status: SentStatus::Sent,
                });
            }
            let error = &json["error"];
            let code = error["details"]
                .as_array()
                .and_then(|d| d.iter().find_map(|x| x["errorCode"].as_str()))
                .or(error["status"].as_str())
                .unwrap_or("")
                .to_owned();
            let detail = error["message"].as_str().unwrap_or(&answer.body).to_owned();
            let mut err = refusal(&answer, &format!("{code}: {detail}"));
            err.class = match code.as_str() {
                "UNREGISTERED" | "SENDER_ID_MISMATCH" => ErrorClass::InvalidRecipient,
                "QUOTA_EXCEEDED" => ErrorClass::RateLimited,
                "UNAVAILABLE" | "INTERNAL" => ErrorClass::Unavailable,
                "THIRD_PARTY_AUTH_ERROR" => ErrorClass::Auth,
                _ => err.class,
            };
            if answer.status.as_u16() == 401 {
                // The token was refused: the next try makes a new one.
                self.token.clear().await;
                err.class = ErrorClass::Unavailable;
            }
            if !code.is_empty() {
                err = err.with_code(code);
            }
            Err(err)
        })
    }
}
