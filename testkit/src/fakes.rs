//! Local fakes of the providers' APIs. Each checks the request the way the
//! provider documents it — method, path, auth, content type, body shape —
//! and answers as the provider does, its refusals included (a bad key, an
//! invalid recipient, a 429 with `Retry-After`, a 5xx). What a fake
//! accepted is kept ([`Fake::accepted`]); what it refused too
//! ([`Fake::refused`]), so a test can tell "our request was malformed"
//! from "the provider said no".
//!
//! Scripted answers ([`Fake::script`]) go first, one per request, whatever
//! the request: how a test makes the provider busy or rate limited.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

/// A request a fake received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    /// A JSON body, a form's fields (as an object of lists), or a
    /// multipart form's fields (files as `{filename, content_type,
    /// content_base64}`).
    pub body: Value,
    /// The body as received (empty for a multipart form).
    pub raw: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The first value of a form field.
    pub fn field(&self, name: &str) -> &str {
        self.body[name][0].as_str().unwrap_or("")
    }
}

/// An answer to give.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut r = (
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            self.body,
        )
            .into_response();
        for (k, v) in self.headers {
            if let (Ok(k), Ok(v)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                r.headers_mut().insert(k, v);
            }
        }
        r
    }
}

#[derive(Debug, Default)]
struct Inner {
    accepted: Vec<Received>,
    refused: Vec<(Received, Answer)>,
    script: VecDeque<Answer>,
    /// OAuth2 tokens issued (`token:<t>`).
    tokens: HashMap<String, String>,
    counter: u64,
}

type Check = fn(&str, &Received, &mut Inner) -> Result<Answer, Answer>;

/// A fake provider on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    secret: Arc<str>,
    check: Check,
}

impl Fake {
    async fn start(secret: &str, check: Check) -> Fake {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a fake provider");
        let addr = listener.local_addr().expect("its address");
        let shared = Shared {
            inner: inner.clone(),
            secret: secret.into(),
            check,
        };
        let app = Router::new().fallback(handle).with_state(shared);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { inner, addr }
    }

    /// SendGrid v3 mail send, accepting `Bearer <api_key>`.
    pub async fn sendgrid(api_key: &str) -> Fake {
        Fake::start(api_key, sendgrid).await
    }

    /// Mailgun's messages API for any domain, accepting `api:<api_key>`.
    pub async fn mailgun(api_key: &str) -> Fake {
        Fake::start(api_key, mailgun).await
    }

    /// Twilio's Messages API, accepting `<sid>:<token>` given as
    /// `"sid:token"`. Twilio's magic numbers answer as Twilio's test
    /// credentials do: +15005550001 is not a valid number (21211),
    /// +15005550004 has opted out (21610), +15005550009 cannot receive SMS
    /// (21614).
    pub async fn twilio(sid_and_token: &str) -> Fake {
        Fake::start(sid_and_token, twilio).await
    }

    /// Vonage's SMS API, accepting `api_key:api_secret`.
    pub async fn vonage(key_and_secret: &str) -> Fake {
        Fake::start(key_and_secret, vonage).await
    }

    /// Slack: incoming webhooks under `/services/…`, and `chat.postMessage`
    /// with `Bearer <bot_token>` (channel `#gone` is not found).
    pub async fn slack(bot_token: &str) -> Fake {
        Fake::start(bot_token, slack).await
    }

    /// A Discord webhook (`/api/webhooks/<id>/<token>`).
    pub async fn discord() -> Fake {
        Fake::start("", discord).await
    }

    /// A Teams incoming webhook.
    pub async fn teams() -> Fake {
        Fake::start("", teams).await
    }

    /// FCM: its OAuth2 token endpoint (`POST /token`, checking the
    /// assertion against [`FCM_TEST_PUBLIC_KEY`]) and HTTP v1 send (only
    /// with a token it issued; device token `unregistered` is gone).
    pub async fn fcm() -> Fake {
        Fake::start(FCM_TEST_PUBLIC_KEY, fcm).await
    }

    /// APNs over HTTP/2 (prior knowledge), checking provider tokens
    /// against [`APNS_TEST_PUBLIC_KEY`]; device token `0bad` is refused
    /// (BadDeviceToken), `dead` is Unregistered.
    pub async fn apns() -> Fake {
        Fake::start(APNS_TEST_PUBLIC_KEY, apns).await
    }

    /// A browser push service: checks the VAPID signature and decrypts the
    /// payload with the subscription's keys ([`push_subscription`]); the
    /// decrypted JSON is the [`Received::body`]. Path `/push/gone` is a
    /// subscription that expired (410).
    pub async fn push_service() -> Fake {
        Fake::start("", push_service).await
    }

    /// Amazon SES v2 `SendEmail`, checking the SigV4 signature made with
    /// `"access_key_id:secret"` (region us-east-1).
    pub async fn ses(key_and_secret: &str) -> Fake {
        Fake::start(key_and_secret, ses).await
    }

    /// Amazon SNS `Publish` (the query API), checking SigV4 the same way;
    /// +15005550001 is not a valid number.
    pub async fn sns(key_and_secret: &str) -> Fake {
        Fake::start(key_and_secret, sns).await
    }

    /// A JSON API of one's own (a CRM, a webhook receiver), accepting any
    /// path with `Bearer <token>` and a JSON body (GET and HEAD without
    /// one): 200 `{"ok": true, "id": N}`; 401 for another token, 415 for a
    /// body that is not JSON.
    pub async fn json_api(token: &str) -> Fake {
        Fake::start(token, json_api).await
    }

    /// The number of OAuth2 tokens this fake issued.
    pub fn tokens_issued(&self) -> u64 {
        self.lock()
            .tokens
            .keys()
            .filter(|k| k.starts_with("token:"))
            .count() as u64
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers to give first, one per request, whatever it is.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.lock().script.extend(answers);
    }

    /// Requests it accepted, in order.
    pub fn accepted(&self) -> Vec<Received> {
        self.lock().accepted.clone()
    }

    /// Requests it refused, with the answer given.
    pub fn refused(&self) -> Vec<(Received, Answer)> {
        self.lock().refused.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn handle(State(s): State<Shared>, request: Request) -> Response {
    let version = format!("{:?}", request.version());
    let method = request.method().clone();
    let uri = request.uri().clone();
    let headers = request.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut raw = Bytes::new();
    let body = if content_type.starts_with("multipart/form-data") {
        match axum::extract::Multipart::from_request(request, &()).await {
            Ok(mut m) => {
                let mut fields = serde_json::Map::new();
                while let Ok(Some(field)) = m.next_field().await {
                    let name = field.name().unwrap_or("").to_owned();
                    let filename = field.file_name().map(str::to_owned);
                    let ct = field.content_type().map(str::to_owned);
                    let bytes = field.bytes().await.unwrap_or_default();
                    let v = match filename {
                        Some(f) => json!({"filename": f, "content_type": ct,
                            "content_base64": base64::engine::general_purpose::STANDARD.encode(&bytes)}),
                        None => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                    };
                    if let Some(list) = fields
                        .entry(name)
                        .or_insert_with(|| Value::Array(Vec::new()))
                        .as_array_mut()
                    {
                        list.push(v);
                    }
                }
                Value::Object(fields)
            }
            Err(_) => Value::Null,
        }
    } else {
        let bytes = axum::body::to_bytes(request.into_body(), 16 * 1024 * 1024)
            .await
            .unwrap_or_default();
        raw = bytes.clone();
        if content_type.starts_with("application/x-www-form-urlencoded") {
            form_fields(&bytes)
        } else if content_type.starts_with("application/octet-stream") {
            json!({"raw_base64": base64::engine::general_purpose::STANDARD.encode(&bytes)})
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        }
    };
    let received = Received {
        version,
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers,
        body,
        raw,
    };
    let mut inner = s.inner.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(answer) = inner.script.pop_front() {
        inner.refused.push((received, answer.clone()));
        return answer.into_response();
    }
    let _ = Method::POST;
    match (s.check)(&s.secret, &received, &mut inner) {
        Ok(answer) => {
            inner.accepted.push(received);
            answer.into_response()
        }
        Err(answer) => {
            inner.refused.push((received, answer.clone()));
            answer.into_response()
        }
    }
}

fn form_fields(bytes: &Bytes) -> Value {
    let mut fields = serde_json::Map::new();
    for (k, v) in url::form_urlencoded::parse(bytes) {
        if let Some(list) = fields
            .entry(k.into_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
        {
            list.push(Value::String(v.into_owned()));
        }
    }
    Value::Object(fields)
}

fn basic(r: &Received) -> Option<(String, String)> {
    let v = r.header("authorization").strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn plausible_email(s: &str) -> bool {
    let s = s.trim();
    let bare = match (s.find('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => &s[a + 1..b],
        _ => s,
    };
    matches!(bare.split_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !bare.contains(' '))
}

fn next_id(inner: &mut Inner, prefix: &str) -> String {
    inner.counter += 1;
    format!("{prefix}{:032x}", inner.counter)
}

/// A JSON API of one's own: `Bearer <token>`, JSON bodies.
fn json_api(token: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    if r.header("authorization") != format!("Bearer {token}") {
        return Err(Answer::new(
            401,
            json!({"error": "unauthorized"}).to_string(),
        ));
    }
    if r.method != "GET"
        && r.method != "HEAD"
        && !r.header("content-type").starts_with("application/json")
    {
        return Err(Answer::new(
            415,
            json!({"error": "expected JSON"}).to_string(),
        ));
    }
    inner.counter += 1;
    Ok(
        Answer::new(200, json!({"ok": true, "id": inner.counter}).to_string())
            .header("content-type", "application/json"),
    )
}

/// SendGrid: `POST /v3/mail/send`, `Authorization: Bearer <key>`, JSON.
/// Errors are `{"errors": [{"message", "field", "help"}]}`.
fn sendgrid(key: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    let error = |status: u16, message: &str, field: Option<&str>| {
        Answer::new(
            status,
            json!({"errors": [{"message": message, "field": field, "help": null}]}).to_string(),
        )
    };
    if r.method != "POST" || r.path != "/v3/mail/send" {
        return Err(Answer::new(404, "Not Found"));
    }
    if r.header("authorization") != format!("Bearer {key}") {
        return Err(error(
            401,
            "The provided authorization grant is invalid, expired, or revoked",
            None,
        ));
    }
    if !r.header("content-type").starts_with("application/json") {
        return Err(error(415, "Content-Type should be application/json.", None));
    }
    let b = &r.body;
    let Some(ps) = b["personalizations"].as_array().filter(|p| !p.is_empty()) else {
        return Err(error(
            400,
            "The personalizations field is required and must have at least one personalization.",
            Some("personalizations"),
        ));
    };
    for (i, p) in ps.iter().enumerate() {
        let Some(to) = p["to"].as_array().filter(|t| !t.is_empty()) else {
            return Err(error(
                400,
                "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
                Some(&format!("personalizations.{i}.to")),
            ));
        };
        for (j, t) in to.iter().enumerate() {
            let email = t["email"].as_str().unwrap_or("");
            if !plausible_email(email) || email.contains('<') {
                return Err(error(
                    400,
                    "Does not contain a valid address.",
                    Some(&format!("personalizations.{i}.to.{j}.email")),
                ));
            }
        }
    }
    if !b["from"]["email"].as_str().is_some_and(plausible_email) {
        return Err(error(
            400,
            "The from object must be provided for every email send. It is an object that requires an email parameter, but may also contain a name parameter.",
            Some("from.email"),
        ));
    }
    if b["subject"].as_str().is_none_or(str::is_empty) {
        return Err(error(400, "The subject is required.", Some("subject")));
    }
    let Some(content) = b["content"].as_array().filter(|c| !c.is_empty()) else {
        return Err(error(
            400,
            "Unless a valid template_id is provided, the content parameter is required.",
            Some("content"),
        ));
    };
    let types: Vec<&str> = content.iter().filter_map(|c| c["type"].as_str()).collect();
    if types.iter().position(|t| *t == "text/html") < types.iter().position(|t| *t == "text/plain")
        && types.contains(&"text/html")
        && types.contains(&"text/plain")
    {
        return Err(error(
            400,
            "If present, text/plain content must be first.",
            Some("content.0.type"),
        ));
    }
    if let Some(atts) = b["attachments"].as_array() {
        for (i, a) in atts.iter().enumerate() {
            let ok = a["content"]
                .as_str()
                .is_some_and(|c| base64::engine::general_purpose::STANDARD.decode(c).is_ok())
                && a["filename"].as_str().is_some();
            if !ok {
                return Err(error(
                    400,
                    "The attachment content must be base64 encoded.",
                    Some(&format!("attachments.{i}.content")),
                ));
            }
        }
    }
    let id = next_id(inner, "sg");
    Ok(Answer::new(202, "").header("X-Message-Id", &id))
}

/// Mailgun: `POST /v3/<domain>/messages`, basic `api:<key>`, multipart.
fn mailgun(key: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    let Some(domain) = r
        .path
        .strip_prefix("/v3/")
        .and_then(|p| p.strip_suffix("/messages"))
        .filter(|d| !d.contains('/'))
    else {
        return Err(Answer::new(404, "404 page not found"));
    };
    if basic(r) != Some(("api".into(), key.to_owned())) {
        return Err(Answer::new(401, "Forbidden"));
    }
    if !r.header("content-type").starts_with("multipart/form-data")
        && !r
            .header("content-type")
            .starts_with("application/x-www-form-urlencoded")
    {
        return Err(Answer::new(
            400,
            json!({"message": "from parameter is missing"}).to_string(),
        ));
    }
    let bad = |m: &str| Answer::new(400, json!({"message": m}).to_string());
    if !plausible_email(r.field("from")) {
        return Err(bad("from parameter is missing"));
    }
    let to = r.body["to"].as_array().cloned().unwrap_or_default();
    if to.is_empty() {
        return Err(bad("to parameter is missing"));
    }
    if !to.iter().all(|t| t.as_str().is_some_and(plausible_email)) {
        return Err(bad(
            "to parameter is not a valid address. please check documentation",
        ));
    }
    if r.field("text").is_empty() && r.field("html").is_empty() {
        return Err(bad(
            "Need at least one of 'text', 'html', 'amp-html' or 'template' parameters specified",
        ));
    }
    let id = format!("<{}.1@{domain}>", next_id(inner, ""));
    Ok(Answer::new(
        200,
        json!({"id": id, "message": "Queued. Thank you."}).to_string(),
    ))
}

/// Twilio: `POST /2010-04-01/Accounts/<sid>/Messages.json`, basic
/// `<sid>:<token>`, a form.
fn twilio(sid_token: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    let (sid, token) = sid_token.split_once(':').unwrap_or((sid_token, ""));
    let error = |status: u16, code: u32, message: &str| {
        Answer::new(
            status,
            json!({"code": code, "message": message,
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status})
            .to_string(),
        )
    };
    if r.method != "POST" || r.path != format!("/2010-04-01/Accounts/{sid}/Messages.json") {
        return Err(error(404, 20404, "The requested resource was not found"));
    }
    if basic(r) != Some((sid.to_owned(), token.to_owned())) {
        return Err(error(401, 20003, "Authenticate"));
    }
    if !r
        .header("content-type")
        .starts_with("application/x-www-form-urlencoded")
    {
        return Err(error(
            400,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required",
        ));
    }
    let to = r.field("To");
    if to.is_empty() {
        return Err(error(400, 21604, "A 'To' phone number is required."));
    }
    if r.field("From").is_empty() && r.field("MessagingServiceSid").is_empty() {
        return Err(error(
            400,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required",
        ));
    }
    if r.field("Body").is_empty() {
        return Err(error(400, 21602, "Message body is required."));
    }
    match to {
        "+15005550001" => {
            return Err(error(
                400,
                21211,
                &format!("The 'To' number {to} is not a valid phone number."),
            ));
        }
        "+15005550004" => {
            return Err(error(
                400,
                21610,
                "Attempt to send to unsubscribed recipient",
            ));
        }
        "+15005550009" => {
            return Err(error(
                400,
                21614,
                &format!("'To' number {to} is not a valid mobile number"),
            ));
        }
        _ => {}
    }
    if !to.starts_with('+') {
        return Err(error(
            400,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        ));
    }
    let id = next_id(inner, "SM");
    Ok(Answer::new(
        201,
        json!({"sid": id, "account_sid": sid, "to": to, "from": r.field("From"),
            "body": r.field("Body"), "status": "queued", "num_segments": "1",
            "uri": format!("/2010-04-01/Accounts/{sid}/Messages/{id}.json")})
        .to_string(),
    ))
}

/// Vonage: `POST /sms/json`, a form with `api_key` and `api_secret`;
/// always 200, each message with its `status`.
fn vonage(key_secret: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    let (key, secret) = key_secret.split_once(':').unwrap_or((key_secret, ""));
    let status = |code: &str, text: &str| {
        Answer::new(
            200,
            json!({"message-count": "1", "messages": [{"status": code, "error-text": text}]})
                .to_string(),
        )
    };
    if r.method != "POST" || r.path != "/sms/json" {
        return Err(Answer::new(404, "Not Found"));
    }
    if r.field("api_key") != key || r.field("api_secret") != secret {
        return Err(status("4", "Bad Credentials"));
    }
    let to = r.field("to");
    if to.is_empty() || r.field("from").is_empty() || r.field("text").is_empty() {
        return Err(status("2", "Missing to param"));
    }
    if to.starts_with('+') || !to.bytes().all(|b| b.is_ascii_digit()) {
        return Err(status("3", "Invalid to param"));
    }
    if to == "15005550006" {
        return Err(status("6", "Invalid Message"));
    }
    let id = next_id(inner, "");
    Ok(Answer::new(
        200,
        json!({"message-count": "1", "messages": [{"to": to, "message-id": id, "status": "0",
            "remaining-balance": "3.14159265", "message-price": "0.03330000", "network": "12345",
            "client-ref": r.field("client-ref")}]})
        .to_string(),
    ))
}

/// Slack: webhooks answer `ok` or a plain-text error; the Web API answers
/// 200 with `ok` true or false.
fn slack(token: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    if r.path.starts_with("/services/") {
        if r.path.ends_with("/gone") {
            return Err(Answer::new(404, "no_service"));
        }
        let has = r.body["text"].is_string() || r.body["blocks"].is_array();
        if !has {
            return Err(Answer::new(400, "invalid_payload"));
        }
        return Ok(Answer::new(200, "ok"));
    }
    if r.path == "/api/chat.postMessage" {
        if r.header("authorization") != format!("Bearer {token}") {
            return Err(Answer::new(
                200,
                json!({"ok": false, "error": "invalid_auth"}).to_string(),
            ));
        }
        let channel = r.body["channel"].as_str().unwrap_or("");
        if channel.is_empty() {
            return Err(Answer::new(
                200,
                json!({"ok": false, "error": "channel_not_found"}).to_string(),
            ));
        }
        if channel == "#gone" {
            return Err(Answer::new(
                200,
                json!({"ok": false, "error": "channel_not_found"}).to_string(),
            ));
        }
        if !(r.body["text"].is_string() || r.body["blocks"].is_array()) {
            return Err(Answer::new(
                200,
                json!({"ok": false, "error": "no_text"}).to_string(),
            ));
        }
        inner.counter += 1;
        let ts = format!("1700000000.{:06}", inner.counter);
        return Ok(Answer::new(
            200,
            json!({"ok": true, "channel": "C0123456789", "ts": ts,
            "message": {"text": r.body["text"], "ts": ts}})
            .to_string(),
        ));
    }
    Err(Answer::new(404, "not_found"))
}

/// Discord: `POST /api/webhooks/<id>/<token>?wait=true`, JSON; answers the
/// message posted (204 without `wait`).
fn discord(_: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    let error = |status: u16, code: u32, message: &str| {
        Answer::new(
            status,
            json!({"message": message, "code": code}).to_string(),
        )
    };
    let parts: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    if parts.len() != 4 || parts[0] != "api" || parts[1] != "webhooks" {
        return Err(error(404, 0, "404: Not Found"));
    }
    if parts[3] == "gone" {
        return Err(error(404, 10015, "Unknown Webhook"));
    }
    let content = r.body["content"].as_str().unwrap_or("");
    let embeds = r.body["embeds"].as_array().map_or(0, Vec::len);
    if content.is_empty() && embeds == 0 {
        return Err(error(400, 50006, "Cannot send an empty message"));
    }
    if content.chars().count() > 2000 {
        return Err(error(400, 50035, "Invalid Form Body"));
    }
    let wait = r.query.split('&').any(|p| p == "wait=true");
    inner.counter += 1;
    let id = format!("{}", 1_100_000_000_000_000_000u64 + inner.counter);
    if wait {
        Ok(Answer::new(
            200,
            json!({"id": id, "type": 0, "content": content,
            "channel_id": "1000000000000000000"})
            .to_string(),
        ))
    } else {
        Ok(Answer::new(204, ""))
    }
}

/// Teams: an incoming webhook; `1` on success, plain-text errors.
fn teams(_: &str, r: &Received, _: &mut Inner) -> Result<Answer, Answer> {
    if r.path.ends_with("/gone") {
        return Err(Answer::new(404, "Webhook not found"));
    }
    let text = r.body["text"].as_str().is_some_and(|t| !t.is_empty());
    let card = r.body["type"] == json!("message")
        && r.body["attachments"][0]["contentType"]
            == json!("application/vnd.microsoft.card.adaptive")
        && r.body["attachments"][0]["content"]["type"] == json!("AdaptiveCard");
    if !(text || card) {
        return Err(Answer::new(
            400,
            "Bad payload received by generic incoming webhook.",
        ));
    }
    Ok(Answer::new(200, "1"))
}

/// A Mailgun webhook call as Mailgun signs it: `signature.signature` is
/// the hex HMAC-SHA256 of the timestamp and the token, keyed with the
/// webhook signing key.
pub fn mailgun_report(signing_key: &str, token: &str, event: &str, message_id: &str) -> Value {
    use hmac::{KeyInit, Mac};
    let ts = chrono::Utc::now().timestamp().to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(signing_key.as_bytes())
        .expect("an HMAC takes any key");
    mac.update(ts.as_bytes());
    mac.update(token.as_bytes());
    json!({
        "signature": {"timestamp": ts, "token": token,
                      "signature": hex::encode(mac.finalize().into_bytes())},
        "event-data": {"event": event, "severity": "permanent",
                       "message": {"headers": {"message-id": message_id}}},
    })
}

/// The test service account's private key (a key made for the tests).
pub const FCM_TEST_PRIVATE_KEY: &str = include_str!("../keys/fcm-test-key.pem");
/// Its public key.
pub const FCM_TEST_PUBLIC_KEY: &str = include_str!("../keys/fcm-test-key.pub");
/// The test APNs `.p8` key.
pub const APNS_TEST_PRIVATE_KEY: &str = include_str!("../keys/apns-test-key.p8");
/// Its public key.
pub const APNS_TEST_PUBLIC_KEY: &str = include_str!("../keys/apns-test-key.pub");

/// A service account JSON key for the fake FCM at `url`.
pub fn fcm_service_account(url: &str) -> Value {
    json!({
        "type": "service_account",
        "project_id": "sojourn-test",
        "private_key_id": "k1",
        "private_key": FCM_TEST_PRIVATE_KEY,
        "client_email": "sender@sojourn-test.iam.gserviceaccount.com",
        "token_uri": format!("{url}/token"),
    })
}

/// The browser side of a push subscription for the fake push service at
/// `url`: the `PushSubscription` JSON a page would give.
pub fn push_subscription(url: &str, path: &str) -> Value {
    use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let public = ua_secret().public_key().to_encoded_point(false);
    json!({
        "endpoint": format!("{url}{path}"),
        "keys": {"p256dh": b64.encode(public.as_bytes()), "auth": b64.encode(UA_AUTH)},
    })
}

const UA_AUTH: [u8; 16] = [5; 16];

fn ua_secret() -> web_push_native::p256::SecretKey {
    web_push_native::p256::SecretKey::from_slice(&[9u8; 32]).expect("a valid scalar")
}

fn fcm(public_pem: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    let google_error = |status: u16, code: &str, message: &str, fcm_code: Option<&str>| {
        let details = match fcm_code {
            Some(c) => {
                json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}])
            }
            None => json!([]),
        };
        Answer::new(status, json!({"error": {"code": status, "message": message, "status": code, "details": details}}).to_string())
    };
    if r.path == "/token" {
        let bad = |d: &str| {
            Answer::new(
                400,
                json!({"error": "invalid_grant", "error_description": d}).to_string(),
            )
        };
        if r.field("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
            return Err(Answer::new(
                400,
                json!({"error": "unsupported_grant_type"}).to_string(),
            ));
        }
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes())
            .map_err(|_| bad("key"))?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&[format!("http://{}/token", r.header("host"))]);
        v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        let claims = jsonwebtoken::decode::<Value>(r.field("assertion"), &key, &v)
            .map_err(|e| bad(&format!("Invalid JWT Signature or claims: {e}")))?
            .claims;
        if claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging" {
            return Err(bad("Invalid scope"));
        }
        inner.counter += 1;
        let token = format!("ya29.fake-{}", inner.counter);
        inner.tokens.insert(format!("token:{token}"), String::new());
        return Ok(Answer::new(
            200,
            json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
        ));
    }
    let Some(project) = r
        .path
        .strip_prefix("/v1/projects/")
        .and_then(|p| p.strip_suffix("/messages:send"))
    else {
        return Err(google_error(404, "NOT_FOUND", "Not found", None));
    };
    let token = r
        .header("authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("");
    if !inner.tokens.contains_key(&format!("token:{token}")) {
        return Err(google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            None,
        ));
    }
    let m = &r.body["message"];
    let Some(device) = m["token"].as_str() else {
        return Err(google_error(
            400,
            "INVALID_ARGUMENT",
            "Recipient of the message is not set.",
            Some("INVALID_ARGUMENT"),
        ));
    };
    if let Some(data) = m["data"].as_object()
        && !data.values().all(Value::is_string)
    {
        return Err(google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.data': values must be strings",
            Some("INVALID_ARGUMENT"),
        ));
    }
    if device == "unregistered" {
        return Err(google_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
        ));
    }
    inner.counter += 1;
    Ok(Answer::new(
        200,
        json!({"name": format!("projects/{project}/messages/0:{}", inner.counter)}).to_string(),
    ))
}

fn apns(public_pem: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    let reason =
        |status: u16, reason: &str| Answer::new(status, json!({"reason": reason}).to_string());
    if r.version != "HTTP/2.0" {
        return Err(reason(400, "BadRequest (HTTP/2 required)"));
    }
    let Some(device) = r.path.strip_prefix("/3/device/") else {
        return Err(reason(404, "BadPath"));
    };
    let Some(token) = r.header("authorization").strip_prefix("bearer ") else {
        return Err(reason(403, "MissingProviderToken"));
    };
    let key = jsonwebtoken::DecodingKey::from_ec_pem(public_pem.as_bytes())
        .map_err(|_| reason(500, "InternalServerError"))?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_required_spec_claims(&["iat", "iss"]);
    v.validate_exp = false;
    let Ok(decoded) = jsonwebtoken::decode::<Value>(token, &key, &v) else {
        return Err(reason(403, "InvalidProviderToken"));
    };
    if decoded.header.kid.as_deref().is_none_or(|k| k.len() != 10) {
        return Err(reason(403, "InvalidProviderToken"));
    }
    if r.header("apns-topic").is_empty() {
        return Err(reason(400, "MissingTopic"));
    }
    if !matches!(r.header("apns-push-type"), "alert" | "background") {
        return Err(reason(400, "InvalidPushType"));
    }
    let id = r.header("apns-id");
    if !id.is_empty() && uuid::Uuid::parse_str(id).is_err() {
        return Err(reason(400, "BadMessageId"));
    }
    if !r.body["aps"].is_object() {
        return Err(reason(400, "PayloadEmpty"));
    }
    match device {
        "0bad" => return Err(reason(400, "BadDeviceToken")),
        "dead" => {
            return Err(Answer::new(
                410,
                json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}).to_string(),
            ));
        }
        _ => {}
    }
    inner.counter += 1;
    let id = if id.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else {
        id.to_owned()
    };
    Ok(Answer::new(200, "").header("apns-id", &id))
}

fn push_service(_: &str, r: &Received, _: &mut Inner) -> Result<Answer, Answer> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    if r.path == "/push/gone" {
        return Err(Answer::new(
            410,
            "push subscription has unsubscribed or expired.",
        ));
    }
    if r.header("content-encoding") != "aes128gcm" {
        return Err(Answer::new(415, "Content-Encoding must be aes128gcm"));
    }
    if r.header("ttl").parse::<u64>().is_err() {
        return Err(Answer::new(400, "TTL header required"));
    }
    // Authorization: vapid t=<jwt>, k=<P-256 public key>
    let auth = r.header("authorization");
    let Some(rest) = auth.strip_prefix("vapid ") else {
        return Err(Answer::new(401, "VAPID authorization required"));
    };
    let mut t = "";
    let mut k = "";
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = v;
        } else if let Some(v) = part.strip_prefix("k=") {
            k = v;
        }
    }
    let Some(point) = b64.decode(k).ok().filter(|p| p.len() == 65 && p[0] == 4) else {
        return Err(Answer::new(401, "k is not an uncompressed P-256 point"));
    };
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        &b64.encode(&point[1..33]),
        &b64.encode(&point[33..]),
    )
    .map_err(|_| Answer::new(401, "bad k"))?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    let origin = format!("http://{}", r.header("host"));
    v.set_audience(&[origin]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(t, &key, &v)
        .map_err(|e| Answer::new(403, format!("VAPID: {e}")))?
        .claims;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    if exp > chrono::Utc::now().timestamp() + 24 * 3600 + 60 {
        return Err(Answer::new(403, "VAPID: exp more than 24 hours ahead"));
    }
    let raw = r.body["raw_base64"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| Answer::new(400, "no body"))?;
    let plain = web_push_native::decrypt(raw, &ua_secret(), &web_push_native::Auth::from(UA_AUTH))
        .map_err(|_| {
            Answer::new(
                400,
                "the payload does not decrypt with the subscription's keys",
            )
        })?;
    let _payload: Value =
        serde_json::from_slice(&plain).map_err(|_| Answer::new(400, "not JSON"))?;
    Ok(Answer::new(201, "").header("Location", &format!("/messages/{}", uuid::Uuid::now_v7())))
}

/// The payload a [`Fake::push_service`] decrypted from a request it accepted.
pub fn decrypted_push(r: &Received) -> Value {
    let raw = r.body["raw_base64"]
        .as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default();
    web_push_native::decrypt(raw, &ua_secret(), &web_push_native::Auth::from(UA_AUTH))
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or(Value::Null)
}

/// Checks a request's AWS Signature Version 4 from first principles (the
/// canonical request, the string to sign, the derived key), as AWS does:
/// an independent check of what `aws-sigv4` made.
fn sigv4(r: &Received, key_and_secret: &str, service: &str) -> Result<(), String> {
    use hmac::{KeyInit, Mac};
    use sha2::Digest;
    let (access_key, secret) = key_and_secret
        .split_once(':')
        .unwrap_or((key_and_secret, ""));
    let auth = r.header("authorization");
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("MissingAuthenticationToken")?;
    let mut credential = "";
    let mut signed_headers = "";
    let mut signature = "";
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = v;
        }
    }
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[0] != access_key {
        return Err("InvalidClientTokenId".into());
    }
    if scope[2] != "us-east-1" || scope[3] != service || scope[4] != "aws4_request" {
        return Err(format!("SignatureDoesNotMatch (scope {credential})"));
    }
    let amz_date = r.header("x-amz-date");
    if !amz_date.starts_with(scope[1]) {
        return Err("SignatureDoesNotMatch (date)".into());
    }
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        canonical_headers.push_str(&format!("{name}:{}\n", r.header(name).trim()));
    }
    let mut query: Vec<&str> = r.query.split('&').filter(|q| !q.is_empty()).collect();
    query.sort();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        r.method,
        r.path,
        query.join("&"),
        canonical_headers,
        signed_headers,
        hex::encode(sha2::Sha256::digest(&r.raw))
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}/us-east-1/{service}/aws4_request\n{}",
        scope[1],
        hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
    );
    let hmac = |key: &[u8], data: &[u8]| {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    let k = hmac(format!("AWS4{secret}").as_bytes(), scope[1].as_bytes());
    let k = hmac(&k, b"us-east-1");
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    if hex::encode(hmac(&k, to_sign.as_bytes())) != signature {
        return Err("SignatureDoesNotMatch".into());
    }
    if !signed_headers.split(';').any(|h| h == "host") {
        return Err("SignatureDoesNotMatch (host is not signed)".into());
    }
    Ok(())
}

fn ses(key: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    let error = |status: u16, kind: &str, message: &str| {
        Answer::new(status, json!({"message": message}).to_string())
            .header("x-amzn-ErrorType", kind)
    };
    if r.method != "POST" || r.path != "/v2/email/outbound-emails" {
        return Err(error(404, "NotFoundException", "Not found"));
    }
    if let Err(e) = sigv4(r, key, "ses") {
        let kind = e
            .split(' ')
            .next()
            .unwrap_or("SignatureDoesNotMatch")
            .to_owned();
        return Err(error(403, &kind, &e));
    }
    let Some(data) = r.body["Content"]["Raw"]["Data"].as_str() else {
        return Err(error(400, "BadRequestException", "Content is required"));
    };
    let Ok(mime) = base64::engine::general_purpose::STANDARD.decode(data) else {
        return Err(error(400, "BadRequestException", "Raw.Data must be base64"));
    };
    let mime = String::from_utf8_lossy(&mime);
    if !mime.contains("\r\nTo: ") && !mime.starts_with("To: ") {
        return Err(error(
            400,
            "BadRequestException",
            "Missing required header 'To'.",
        ));
    }
    if mime.contains("To: bounce@") {
        return Err(error(
            400,
            "MessageRejected",
            "Email address is not verified. The following identities failed the check: bounce@example.com",
        ));
    }
    if let Some(tags) = r.body["EmailTags"].as_array() {
        for t in tags {
            let v = t["Value"].as_str().unwrap_or("");
            if !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(error(400, "BadRequestException", "Invalid tag value"));
            }
        }
    }
    inner.counter += 1;
    Ok(Answer::new(
        200,
        json!({"MessageId": format!("0100018c-{:08x}-ses", inner.counter)}).to_string(),
    ))
}

fn sns(key: &str, r: &Received, inner: &mut Inner) -> Result<Answer, Answer> {
    let error = |status: u16, code: &str, message: &str| {
        Answer::new(
            status,
            format!(
                "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>r-1</RequestId></ErrorResponse>"
            ),
        )
    };
    if let Err(e) = sigv4(r, key, "sns") {
        let code = e
            .split(' ')
            .next()
            .unwrap_or("SignatureDoesNotMatch")
            .to_owned();
        return Err(error(403, &code, &e));
    }
    if r.field("Action") != "Publish" || r.field("Version") != "2010-03-31" {
        return Err(error(
            400,
            "InvalidAction",
            "The action or operation requested is invalid.",
        ));
    }
    let phone = r.field("PhoneNumber");
    if phone == "+15005550001" || !phone.starts_with('+') {
        return Err(error(
            400,
            "InvalidParameter",
            &format!("Invalid parameter: PhoneNumber Reason: {phone} is not valid to publish to"),
        ));
    }
    if r.field("Message").is_empty() {
        return Err(error(
            400,
            "InvalidParameter",
            "Invalid parameter: Empty message",
        ));
    }
    inner.counter += 1;
    Ok(Answer::new(
        200,
        format!(
            "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult><MessageId>sns-{:08x}</MessageId></PublishResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></PublishResponse>",
            inner.counter
        ),
    ))
}

/// The certificate SNS messages made by [`sns_message`] are signed under.
pub const SNS_TEST_CERT: &str = include_str!("../keys/sns-test-cert.pem");

/// Serves [`SNS_TEST_CERT`] at `<url>/SimpleNotificationService-test.pem`,
/// as SNS serves its signing certificates.
pub async fn sns_cert_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = Router::new().route(
        "/SimpleNotificationService-test.pem",
        axum::routing::get(|| async { SNS_TEST_CERT }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// An SNS notification of `topic` carrying `message` (an SES event's JSON),
/// signed as SNS signs (SignatureVersion 2: RSA with SHA-256 over the
/// message's fields, `key\nvalue\n` in order) with the test key, naming
/// the certificate at `cert_url`.
pub fn sns_message(topic: &str, message: &Value, cert_url: &str, message_id: &str) -> Value {
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let message = message.to_string();
    let signed = format!(
        "Message\n{message}\nMessageId\n{message_id}\nTimestamp\n{timestamp}\nTopicArn\n{topic}\nType\nNotification\n"
    );
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(FCM_TEST_PRIVATE_KEY.as_bytes())
        .expect("the test key");
    let sig = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, jsonwebtoken::Algorithm::RS256)
        .expect("signs");
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .expect("base64url");
    json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic,
        "Message": message,
        "Timestamp": timestamp,
        "SignatureVersion": "2",
        "Signature": base64::engine::general_purpose::STANDARD.encode(sig),
        "SigningCertURL": format!("{cert_url}/SimpleNotificationService-test.pem"),
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    })
}
