//! The audience: profiles (`/v1/profiles`), the suppression list
//! (`/v1/suppressions`), frequency caps (`/v1/frequency-caps`) and the
//! recipients' own unsubscribe links and page (`/v1/unsubscribe/{token}`,
//! no API key: the sealed token is the credential).

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sojourn_actors::channels::Channel;
use sojourn_actors::channels::message::check_address;
use sojourn_persistence::{
    OnCap, ProfilePatch, ProfileRecord, Store, Suppression, addresses_of, normalize_address,
};
use sojourn_runtime::Input;
use sojourn_runtime::caps::{CapSpec, TRANSACTIONAL, check_caps};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path, Q};
use crate::routes::{Page, limit_of};
use crate::state::AppState;

pub use sojourn_actors::audience::ProfileIn;

fn field_error(e: sojourn_actors::audience::FieldError) -> ApiError {
    ApiError::invalid(&e.field, e.message)
}

/// Most profiles in one batch request.
const MAX_BATCH: usize = 1000;

#[derive(Debug, Serialize, JsonSchema)]
pub struct ProfileOut {
    pub subject: String,
    pub attributes: Map<String, Value>,
    pub addresses: AddressesOut,
    pub preferences: PreferencesOut,
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The segments it is in (when one profile is read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<String>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AddressesOut {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub push: Vec<Value>,
    pub chat: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PreferencesOut {
    pub opted_out: bool,
    pub channels: std::collections::BTreeMap<String, bool>,
    pub categories: std::collections::BTreeMap<String, bool>,
}

impl From<ProfileRecord> for ProfileOut {
    fn from(r: ProfileRecord) -> Self {
        ProfileOut {
            subject: r.subject,
            attributes: r.attributes,
            addresses: AddressesOut {
                email: r.addresses.email,
                phone: r.addresses.phone,
                push: r.addresses.push,
                chat: r.addresses.chat,
            },
            preferences: PreferencesOut {
                opted_out: r.preferences.opted_out,
                channels: r.preferences.channels,
                categories: r.preferences.categories,
            },
            timezone: r.timezone,
            locale: r.locale,
            created_at: r.created_at,
            updated_at: r.updated_at,
            segments: None,
        }
    }
}

/// The schema of a `{subject}` path parameter.
pub(crate) fn subject_param() -> Value {
    serde_json::json!({"type": "string", "minLength": 1, "maxLength": 200,
        "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"})
}

/// The schema of a segment's `{name}`.
pub(crate) fn name_param() -> Value {
    serde_json::json!({"type": "string", "minLength": 1, "maxLength": 200,
        "pattern": "^[A-Za-z0-9._-]+$"})
}

fn valid_subject(field: &str, s: &str) -> ApiResult<()> {
    if !sojourn_actors::audience::is_subject(s) {
        return Err(ApiError::invalid(
            field,
            "must be 1 to 200 characters, none a control character",
        ));
    }
    Ok(())
}

async fn write<S: Store>(
    app: &AppState<S>,
    caller: &Caller,
    subject: String,
    body: ProfileIn,
    replace: bool,
) -> ApiResult<axum::Json<ProfileOut>> {
    valid_subject("subject", &subject)?;
    let patch = body.patch("").map_err(field_error)?;
    let mut rows = app
        .engine
        .store()
        .write_profiles(&caller.namespace, &[(subject, patch)], replace, Utc::now())
        .await?;
    let row = rows
        .pop()
        .ok_or_else(|| ApiError::internal("no profile written"))?;
    Ok(axum::Json(row.into()))
}

/// `POST /v1/profiles/{subject}`: creates or merges.
pub(crate) async fn merge<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(subject): Path<String>,
    Body(body): Body<ProfileIn>,
) -> ApiResult<axum::Json<ProfileOut>> {
    write(&app, &caller, subject, body, false).await
}

/// `PUT /v1/profiles/{subject}`: creates or replaces.
pub(crate) async fn replace<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(subject): Path<String>,
    Body(body): Body<ProfileIn>,
) -> ApiResult<axum::Json<ProfileOut>> {
    write(&app, &caller, subject, body, true).await
}

pub(crate) async fn get<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(subject): Path<String>,
) -> ApiResult<axum::Json<ProfileOut>> {
    let store = app.engine.store();
    let mut out: ProfileOut = store
        .get_profile(&caller.namespace, &subject)
        .await?
        .ok_or_else(|| ApiError::not_found("profile", &subject))?
        .into();
    out.segments = Some(
        store
            .segments_of(&caller.namespace, &subject)
            .await?
            .into_iter()
            .collect(),
    );
    Ok(axum::Json(out))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListProfiles {
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// 1 to 500 (default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

pub(crate) async fn list<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<ListProfiles>,
) -> ApiResult<axum::Json<Page<ProfileOut>>> {
    let limit = limit_of(q.limit)?;
    let rows = app
        .engine
        .store()
        .list_profiles(&caller.namespace, q.cursor.as_deref(), limit + 1)
        .await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |r| r.subject.clone(),
        ProfileOut::from,
    )))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ErasedOut {
    /// Whether there was a profile.
    pub erased: bool,
    /// The subject's executions that were still running, now cancelled.
    pub cancelled: Vec<String>,
}

/// `DELETE /v1/profiles/{subject}`: a right-to-erasure request.
pub(crate) async fn erase<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(subject): Path<String>,
) -> ApiResult<axum::Json<ErasedOut>> {
    valid_subject("subject", &subject)?;
    let erased = app
        .engine
        .store()
        .erase_profile(&caller.namespace, &subject)
        .await?;
    let mut cancelled = Vec::with_capacity(erased.running.len());
    for id in erased.running {
        let eid = sojourn_runtime::ExecutionId::new(id.clone());
        let input = Input::Cancel {
            reason: Some("the subject's data was erased".into()),
        };
        match app.engine.send_input(&eid, input).await {
            Ok(()) => cancelled.push(id),
            Err(e) => {
                tracing::warn!(execution.id = %id, error = %e, "an erased subject's execution could not be cancelled")
            }
        }
    }
    Ok(axum::Json(ErasedOut {
        erased: erased.profile,
        cancelled,
    }))
}

/// One profile of a batch: its `subject` and the fields of a profile
/// update (an unknown field is refused, as on `POST /v1/profiles/{subject}`).
#[derive(Debug, JsonSchema)]
pub struct BatchProfile {
    /// 1 to 200 characters, none a control character.
    #[schemars(
        length(min = 1, max = 200),
        regex(pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")
    )]
    pub subject: String,
    #[serde(flatten)]
    pub profile: ProfileIn,
}

impl<'de> Deserialize<'de> for BatchProfile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // `flatten` would let unknown fields through: the subject is taken
        // out, and the rest read strictly.
        let mut map = Map::<String, Value>::deserialize(d)?;
        let subject = match map.remove("subject") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("subject: must be text")),
            None => return Err(D::Error::missing_field("subject")),
        };
        let profile = ProfileIn::deserialize(Value::Object(map)).map_err(D::Error::custom)?;
        Ok(BatchProfile { subject, profile })
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBatch {
    /// At most 1,000.
    pub profiles: Vec<BatchProfile>,
    /// Replace each profile rather than merge into it.
    #[serde(default)]
    pub replace: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BatchOut {
    pub written: usize,
}

/// `POST /v1/profiles:batch`: all or nothing, in one transaction.
pub(crate) async fn batch<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<ProfileBatch>,
) -> ApiResult<axum::Json<BatchOut>> {
    if body.profiles.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "profiles",
            format!("at most {MAX_BATCH} per request"),
        ));
    }
    let mut patches = Vec::with_capacity(body.profiles.len());
    for (n, p) in body.profiles.into_iter().enumerate() {
        valid_subject(&format!("profiles[{n}].subject"), &p.subject)?;
        patches.push((
            p.subject,
            p.profile
                .patch(&format!("profiles[{n}]."))
                .map_err(field_error)?,
        ));
    }
    let written = app
        .engine
        .store()
        .write_profiles(&caller.namespace, &patches, body.replace, Utc::now())
        .await?
        .len();
    Ok(axum::Json(BatchOut { written }))
}

// ---- suppressions ------------------------------------------------------------

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressionIn {
    #[schemars(extend("enum" = ["email", "sms", "push", "chat"]))]
    pub channel: String,
    /// An email address, an E.164 number, a device token or a chat id.
    #[schemars(length(min = 1, max = 4096))]
    pub address: String,
    /// Why (kept with it; default `manual`).
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SuppressionOut {
    pub channel: String,
    pub address: String,
    /// bounced, complained, unsubscribed or manual.
    pub reason: String,
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<Suppression> for SuppressionOut {
    fn from(s: Suppression) -> Self {
        SuppressionOut {
            channel: s.channel,
            address: s.address,
            reason: s.reason,
            detail: s.detail,
            created_at: s.created_at,
        }
    }
}

fn channel_of(field: &str, c: &str) -> ApiResult<Channel> {
    Channel::parse(c).ok_or_else(|| {
        ApiError::invalid(
            field,
            format!("{c:?} is not a channel (email, sms, push, chat)"),
        )
    })
}

pub(crate) async fn suppress<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<SuppressionIn>,
) -> ApiResult<(StatusCode, axum::Json<SuppressionOut>)> {
    let channel = channel_of("channel", &body.channel)?;
    let address = check_address(channel, "address", &body.address)
        .map_err(|e| ApiError::invalid("address", e.trim_start_matches("address: ")))?;
    if address.is_empty() {
        return Err(ApiError::invalid("address", "must not be empty"));
    }
    let row = Suppression {
        namespace: caller.namespace.clone(),
        channel: body.channel.clone(),
        address: normalize_address(&body.channel, &address),
        reason: "manual".into(),
        detail: body.detail,
        created_at: Utc::now(),
    };
    app.engine
        .store()
        .add_suppressions(std::slice::from_ref(&row))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(row.into())))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSuppressions {
    #[serde(default)]
    #[schemars(extend("enum" = ["email", "sms", "push", "chat"]))]
    pub channel: Option<String>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// 1 to 500 (default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

pub(crate) async fn suppressions<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<ListSuppressions>,
) -> ApiResult<axum::Json<Page<SuppressionOut>>> {
    let limit = limit_of(q.limit)?;
    if let Some(c) = &q.channel {
        channel_of("channel", c)?;
    }
    // `channel:address`; anything else reads as a channel (what sorts
    // after it comes next).
    let after = q
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| c.split_once(':').unwrap_or((c, "")));
    let rows = app
        .engine
        .store()
        .list_suppressions(&caller.namespace, q.channel.as_deref(), after, limit + 1)
        .await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |r| format!("{}:{}", r.channel, r.address),
        SuppressionOut::from,
    )))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Unsuppress {
    #[schemars(extend("enum" = ["email", "sms", "push", "chat"]))]
    pub channel: String,
    pub address: String,
}

/// What a delete removed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Removed {
    pub removed: String,
}

pub(crate) async fn unsuppress<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<Unsuppress>,
) -> ApiResult<axum::Json<Removed>> {
    let channel = channel_of("channel", &q.channel)?;
    // Normalized as it was added (`+33 6 12…` is `+33612…`).
    let address = check_address(channel, "address", &q.address).unwrap_or(q.address.clone());
    let address = normalize_address(&q.channel, &address);
    if app
        .engine
        .store()
        .remove_suppression(&caller.namespace, &q.channel, &address)
        .await?
    {
        Ok(axum::Json(Removed { removed: address }))
    } else {
        Err(ApiError::not_found("suppression", &address))
    }
}

// ---- frequency caps ------------------------------------------------------------

/// "At most `max_sends` messages of `channel` and `category` per `window`"
/// for each subject, across all journeys.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapIo {
    /// A channel, or `*` for all.
    #[schemars(extend("enum" = ["*", "email", "sms", "push", "chat"]))]
    pub channel: String,
    /// A category, or `*` for every one (transactional messages are never
    /// capped).
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^(\*|[A-Za-z0-9._-]+)$"))]
    pub category: String,
    /// 1 to 10,000.
    #[schemars(range(min = 1, max = 10000))]
    pub max_sends: u32,
    /// `1d`, `7d`, `12h`: 1 minute to 366 days.
    #[schemars(length(min = 1))]
    pub window: String,
    /// `skip` (the node's `skipped` branch) or `defer` (sent when the cap
    /// allows it; a durable timer).
    #[serde(default = "skip")]
    #[schemars(extend("enum" = ["skip", "defer"]))]
    pub on_cap: String,
}

fn skip() -> String {
    "skip".into()
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    pub caps: Vec<CapIo>,
}

fn window_text(s: u64) -> String {
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3_600) {
        format!("{}h", s / 3_600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

pub(crate) async fn get_caps<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<axum::Json<Caps>> {
    let caps = app.engine.store().frequency_caps(&caller.namespace).await?;
    Ok(axum::Json(Caps {
        caps: caps
            .into_iter()
            .map(|c| CapIo {
                channel: c.channel,
                category: c.category,
                max_sends: c.max_sends,
                window: window_text(c.window_seconds),
                on_cap: c.on_cap.as_str().into(),
            })
            .collect(),
    }))
}

/// `PUT /v1/frequency-caps`: replaces the namespace's caps.
pub(crate) async fn put_caps<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<Caps>,
) -> ApiResult<axum::Json<Caps>> {
    let mut specs = Vec::with_capacity(body.caps.len());
    for (n, c) in body.caps.iter().enumerate() {
        let on_cap = match c.on_cap.as_str() {
            "skip" => OnCap::Skip,
            "defer" => OnCap::Defer,
            other => {
                return Err(ApiError::invalid(
                    &format!("caps[{n}].on_cap"),
                    format!("{other:?} is not skip or defer"),
                ));
            }
        };
        specs.push(CapSpec {
            channel: c.channel.clone(),
            category: c.category.clone(),
            max_sends: c.max_sends,
            window: c.window.clone(),
            on_cap,
        });
    }
    // The checks a workflow's own caps get too.
    let caps = check_caps(&specs)
        .map_err(|(field, message)| ApiError::invalid(&format!("caps{field}"), message))?;
    app.engine
        .store()
        .put_frequency_caps(&caller.namespace, &caps)
        .await?;
    get_caps(State(app), Extension(caller)).await
}

// ---- unsubscribe -------------------------------------------------------------

fn link_error(e: sojourn_actors::audience::LinkError) -> ApiError {
    use sojourn_actors::audience::LinkError;
    match e {
        LinkError::NotConfigured => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        LinkError::Forged => ApiError::new(StatusCode::FORBIDDEN, "invalid_link", e.to_string()),
        LinkError::Expired => ApiError::new(StatusCode::GONE, "expired_link", e.to_string()),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The categories a recipient's page offers: the configured defaults, the
/// link's, and any the profile has a preference for.
fn page_categories(
    app_categories: Vec<String>,
    link: &str,
    prefs: &sojourn_persistence::Preferences,
) -> Vec<String> {
    let mut all = app_categories;
    all.push(link.to_owned());
    all.extend(prefs.categories.keys().cloned());
    all.retain(|c| c != TRANSACTIONAL);
    all.sort();
    all.dedup();
    all
}

fn html_page(title: &str, body: &str) -> Response {
    Html(format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#222;line-height:1.45}}button{{font-size:1rem;padding:.55rem 1rem;margin:.3rem 0;cursor:pointer}}fieldset{{border:1px solid #ccc;border-radius:.4rem;margin:1rem 0}}label{{display:block;margin:.25rem 0}}</style></head>
<body>{body}</body></html>"#
    ))
    .into_response()
}

fn checkbox(name: &str, value: &str, label: &str, checked: bool) -> String {
    format!(
        r#"<label><input type="checkbox" name="{name}" value="{}"{}> {}</label>"#,
        escape(value),
        if checked { " checked" } else { "" },
        escape(label)
    )
}

/// `GET /v1/unsubscribe/{token}`: the recipient's preference page (a link
/// in a message). Reading it changes nothing (mail scanners follow links).
pub(crate) async fn page<S: Store>(
    State(app): State<AppState<S>>,
    Path(token): Path<String>,
) -> ApiResult<Response> {
    let audience = app.engine.audience();
    let u = audience.verify(&token, Utc::now()).map_err(link_error)?;
    let what = escape(&u.category);
    let channel = escape(&u.channel);
    let quick = format!(
        r#"<form method="post"><input type="hidden" name="scope" value="category"><button type="submit">Unsubscribe from “{what}”</button></form>
<form method="post"><input type="hidden" name="scope" value="all"><button type="submit">Unsubscribe from all marketing messages</button></form>"#
    );
    let profile = match &u.subject {
        Some(s) => app.engine.store().get_profile(&u.namespace, s).await?,
        None => None,
    };
    let Some(profile) = profile else {
        // An address without a profile: it receives marketing on this
        // channel or not; a link's own opt-out can be undone.
        return Ok(html_page(
            "Your preferences",
            &format!(
                r#"<h1>Your preferences</h1>
<p>Choose what you no longer want to receive by {channel}.</p>
{quick}
<form method="post"><input type="hidden" name="scope" value="resubscribe"><button type="submit">Receive marketing messages by {channel} again</button></form>
<p><small>Messages you need (receipts, security notices) still reach you.</small></p>"#
            ),
        ));
    };
    let p = &profile.preferences;
    let mut channels = String::new();
    for c in Channel::ALL.map(Channel::as_str) {
        channels.push_str(&checkbox(
            "channel",
            c,
            c,
            p.channels.get(c) != Some(&false),
        ));
    }
    let mut categories = String::new();
    for c in page_categories(audience.categories(), &u.category, p) {
        let on = p.categories.get(&c) != Some(&false);
        categories.push_str(&checkbox("category", &c, &c, on));
    }
    Ok(html_page(
        "Your preferences",
        &format!(
            r#"<h1>Your preferences</h1>
{quick}
<form method="post"><input type="hidden" name="scope" value="preferences">
<fieldset><legend>Marketing messages</legend>{all}</fieldset>
<fieldset><legend>By channel</legend>{channels}</fieldset>
<fieldset><legend>By topic</legend>{categories}</fieldset>
<button type="submit">Save my preferences</button></form>
<p><small>Messages you need (receipts, security notices) still reach you.</small></p>"#,
            all = checkbox(
                "receive",
                "marketing",
                "Send me marketing messages",
                !p.opted_out
            ),
        ),
    ))
}

/// `POST /v1/unsubscribe/{token}`: one-click (RFC 8058,
/// `List-Unsubscribe=One-Click`, or the page's `scope=category`), `scope=all`,
/// the page's preferences (`scope=preferences` with the `receive`,
/// `channel` and `category` boxes ticked) or, for an address alone,
/// `scope=resubscribe` (undoes a link's own opt-out: never a bounce's).
pub(crate) async fn unsubscribe<S: Store>(
    State(app): State<AppState<S>>,
    Path(token): Path<String>,
    crate::extract::RawBody(body): crate::extract::RawBody,
) -> ApiResult<Response> {
    let now = Utc::now();
    let audience = app.engine.audience();
    let u = audience.verify(&token, now).map_err(link_error)?;
    let mut scope = "category".to_owned();
    let mut ticked: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        match k.as_ref() {
            "scope" => scope = v.into_owned(),
            "receive" | "channel" | "category" => ticked.push((k.into_owned(), v.into_owned())),
            _ => {}
        }
    }
    let is = |k: &str, v: &str| ticked.iter().any(|(a, b)| a == k && b == v);
    let store = app.engine.store();
    // The subject's preferences, while it has a profile (an old link of an
    // erased subject does not make the profile again).
    let profile = match &u.subject {
        Some(subject) => store.get_profile(&u.namespace, subject).await?,
        None => None,
    };
    let done = match (scope.as_str(), &profile) {
        ("preferences" | "all" | "category", Some(profile)) => {
            let mut patch = ProfilePatch::default();
            if scope == "preferences" {
                // Opting in again is for the person the link reaches now: a
                // link whose address the profile no longer has (a forwarded
                // message, a recycled address) can only opt out.
                let owns = addresses_of(&profile.addresses, &u.channel)
                    .iter()
                    .any(|a| normalize_address(&u.channel, a) == u.address);
                let p = &profile.preferences;
                let receive = is("receive", "marketing");
                if owns || !receive {
                    patch.opted_out = Some(!receive);
                }
                for c in Channel::ALL.map(Channel::as_str) {
                    let on = is("channel", c);
                    if owns || !on || p.channels.get(c) != Some(&false) {
                        patch.channels.insert(c.to_owned(), on);
                    }
                }
                for c in page_categories(audience.categories(), &u.category, p) {
                    let on = is("category", &c);
                    if owns || !on || p.categories.get(&c) != Some(&false) {
                        patch.categories.insert(c, on);
                    }
                }
            } else if scope == "all" {
                patch.opted_out = Some(true);
            } else {
                patch.categories.insert(u.category.clone(), false);
            }
            store
                .write_profiles(
                    &u.namespace,
                    &[(profile.subject.clone(), patch)],
                    false,
                    now,
                )
                .await?;
            if scope == "preferences" {
                "Your preferences are saved.".to_owned()
            } else {
                unsubscribed_from(&scope, &u)
            }
        }
        ("resubscribe", None) => {
            if store
                .resubscribe(&u.namespace, &u.channel, &u.address)
                .await?
            {
                format!(
                    "You will receive marketing messages by {} again.",
                    escape(&u.channel)
                )
            } else {
                "There was no unsubscribe of yours to undo.".to_owned()
            }
        }
        ("resubscribe", Some(_)) => {
            return Err(ApiError::invalid(
                "scope",
                "resubscribe is for an address without a profile: save the page's preferences instead",
            ));
        }
        ("all" | "category", None) => {
            // No subject (or no profile any more): the address stops
            // receiving marketing on this channel (transactional messages
            // still go).
            store
                .add_suppressions(&[Suppression {
                    namespace: u.namespace.clone(),
                    channel: u.channel.clone(),
                    address: u.address.clone(),
                    reason: "unsubscribed".into(),
                    detail: Some(format!("unsubscribe link ({})", u.category)),
                    created_at: now,
                }])
                .await?;
            unsubscribed_from(&scope, &u)
        }
        (other, _) => {
            return Err(ApiError::invalid(
                "scope",
                format!(
                    "{other:?} is not category, all, preferences (with a profile) or resubscribe"
                ),
            ));
        }
    };
    // An opt-out through a message's link counts against that message
    // (its workflow, node, channel and provider), never holding the page.
    let opted_out = match scope.as_str() {
        "all" | "category" => true,
        "preferences" => {
            !is("receive", "marketing")
                || !is("category", &u.category)
                || !is("channel", &u.channel)
        }
        _ => false,
    };
    if opted_out
        && let Some(message) = &u.message
        && let Err(e) = store.mark_unsubscribed(&u.namespace, message, now).await
    {
        tracing::warn!(error = %e, "an unsubscribe was not counted against its message");
    }
    tracing::info!(channel = %u.channel, category = %u.category, scope, "a recipient changed their preferences");
    Ok(html_page("Saved", &format!("<h1>Done</h1><p>{done}</p>")))
}

fn unsubscribed_from(scope: &str, u: &sojourn_actors::audience::Unsubscribe) -> String {
    let what = if scope == "all" {
        "all marketing messages".to_owned()
    } else {
        format!("“{}”", escape(&u.category))
    };
    format!(
        "You will no longer receive {what} by {}.",
        escape(&u.channel)
    )
}

// ---- segments ------------------------------------------------------------------

/// A segment: a CEL expression over a profile's `attributes` (and its
/// `subject`), or a static list of subjects. Give exactly one.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentIn {
    /// `attributes.plan == 'pro' && attributes.orders > 3`.
    #[serde(default)]
    pub expression: Option<String>,
    /// At most 10,000 subjects.
    #[serde(default)]
    pub subjects: Option<Vec<String>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SegmentOut {
    pub name: String,
    /// Absent for a static list.
    pub expression: Option<String>,
    /// Each change adds one.
    pub version: i32,
    /// How many subjects are in it.
    pub members: i64,
    /// Whether its members are still being computed (a new or changed
    /// expression is backfilled in the background).
    pub backfilling: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<sojourn_persistence::SegmentRecord> for SegmentOut {
    fn from(r: sojourn_persistence::SegmentRecord) -> Self {
        SegmentOut {
            name: r.name,
            expression: r.expression,
            version: r.version,
            members: r.members,
            backfilling: r.backfill_after.is_some(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `PUT /v1/segments/{name}`: creates or replaces.
pub(crate) async fn put_segment<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(body): Body<SegmentIn>,
) -> ApiResult<axum::Json<SegmentOut>> {
    crate::routes::valid_key("name", &name)?;
    let def = match (body.expression, body.subjects) {
        (Some(e), None) => {
            sojourn_runtime::expr::Expr::compile_segment(&e)
                .map_err(|m| ApiError::invalid("expression", m))?;
            sojourn_persistence::SegmentDef::Expression(e)
        }
        (None, Some(list)) => {
            if list.len() > sojourn_persistence::segments_max_static() {
                return Err(ApiError::invalid(
                    "subjects",
                    format!("at most {}", sojourn_persistence::segments_max_static()),
                ));
            }
            for (n, s) in list.iter().enumerate() {
                valid_subject(&format!("subjects[{n}]"), s)?;
            }
            sojourn_persistence::SegmentDef::Static(list)
        }
        _ => {
            return Err(ApiError::invalid(
                "expression",
                "give an expression or a list of subjects (one of them)",
            ));
        }
    };
    let seg = app
        .engine
        .store()
        .put_segment(&caller.namespace, &name, &def, Utc::now())
        .await?;
    Ok(axum::Json(seg.into()))
}

pub(crate) async fn segments<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<axum::Json<Vec<SegmentOut>>> {
    let list = app.engine.store().list_segments(&caller.namespace).await?;
    Ok(axum::Json(list.into_iter().map(SegmentOut::from).collect()))
}

pub(crate) async fn get_segment<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<SegmentOut>> {
    app.engine
        .store()
        .get_segment(&caller.namespace, &name)
        .await?
        .map(|s| axum::Json(s.into()))
        .ok_or_else(|| ApiError::not_found("segment", &name))
}

pub(crate) async fn delete_segment<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Removed>> {
    if app
        .engine
        .store()
        .delete_segment(&caller.namespace, &name)
        .await?
    {
        Ok(axum::Json(Removed { removed: name }))
    } else {
        Err(ApiError::not_found("segment", &name))
    }
}

pub(crate) async fn members<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Q(q): Q<ListProfiles>,
) -> ApiResult<axum::Json<Page<String>>> {
    let limit = limit_of(q.limit)?;
    let store = app.engine.store();
    let rows = store
        .segment_members(&caller.namespace, &name, q.cursor.as_deref(), limit + 1)
        .await?;
    // Whether the segment exists is asked only of an empty page (reading
    // the segment counts its members: not for every page).
    if rows.is_empty() && store.get_segment(&caller.namespace, &name).await?.is_none() {
        return Err(ApiError::not_found("segment", &name));
    }
    Ok(axum::Json(Page::of(rows, limit, Clone::clone, |s| s)))
}
