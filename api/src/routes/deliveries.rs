//! The delivery log (`GET /v1/deliveries`) and the providers a node sends
//! through (`GET /v1/providers`).

use axum::Extension;
use axum::extract::State;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sojourn_persistence::{DeliveryQuery, DeliveryRecord, Store};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Q;
use crate::routes::{Page, limit_of};
use crate::state::AppState;

const CHANNELS: [&str; 4] = ["email", "sms", "push", "chat"];
const STATUSES: [&str; 14] = [
    "queued",
    "sent",
    "failed",
    "delivered",
    "bounced",
    "complained",
    "opened",
    "clicked",
    "undelivered",
    "unsubscribed",
    "suppressed",
    "no_address",
    "capped",
    "deferred",
];

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDeliveries {
    /// Only this execution's.
    #[serde(default)]
    pub execution: Option<String>,
    /// A workflow key or id.
    #[serde(default)]
    pub workflow: Option<String>,
    /// Only the deliveries of this subject's executions.
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    #[schemars(extend("enum" = ["email", "sms", "push", "chat"]))]
    pub channel: Option<String>,
    /// A provider's configured name.
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    #[schemars(extend("enum" = ["queued", "sent", "failed", "delivered", "bounced", "complained", "opened", "clicked", "undelivered", "unsubscribed", "suppressed", "no_address", "capped", "deferred"]))]
    pub status: Option<String>,
    /// Sent at or after (RFC 3339).
    #[serde(default)]
    pub after: Option<DateTime<Utc>>,
    /// Sent before (RFC 3339).
    #[serde(default)]
    pub before: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// 1 to 500 (default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
}

/// One send attempt to one provider.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DeliveryOut {
    pub id: String,
    pub workflow_id: String,
    pub execution_id: String,
    pub node: String,
    pub attempt: i32,
    /// The attempt's idempotency key, as the provider was given it.
    pub idempotency_key: String,
    pub channel: String,
    /// The provider's configured name.
    pub provider: String,
    /// Email addresses and phone numbers masked (`j***@example.com`,
    /// `+336******78`).
    pub recipient: String,
    /// queued, sent or failed; then delivered, bounced, complained, opened,
    /// clicked or undelivered as the provider reports them. Not sent (the
    /// provider is `-`): unsubscribed, suppressed, no_address, capped, or
    /// deferred (sent later, when a frequency cap allows it).
    pub status: String,
    pub provider_message_id: Option<String>,
    /// timeout, rate_limited, unavailable, invalid_recipient, unsubscribed,
    /// auth, rejected or invalid.
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub updated_at: DateTime<Utc>,
}

/// A recipient as listings show it.
fn mask(channel: &str, recipient: &str) -> String {
    use sojourn_actors::channels::message::{mask_email, mask_phone};
    match channel {
        "email" => recipient
            .split(", ")
            .map(mask_email)
            .collect::<Vec<_>>()
            .join(", "),
        "sms" => mask_phone(recipient),
        // A device token or a push endpoint: its end only.
        "push" => {
            let tail: String = recipient
                .chars()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("…{tail}")
        }
        _ => recipient.to_owned(),
    }
}

impl From<DeliveryRecord> for DeliveryOut {
    fn from(d: DeliveryRecord) -> Self {
        DeliveryOut {
            recipient: mask(&d.channel, &d.recipient),
            id: d.id,
            workflow_id: d.workflow_id,
            execution_id: d.execution_id,
            node: d.node,
            attempt: d.attempt,
            idempotency_key: d.idempotency_key,
            channel: d.channel,
            provider: d.provider,
            status: d.status,
            provider_message_id: d.provider_message_id,
            error_class: d.error_class,
            error: d.error,
            created_at: d.created_at,
            duration_ms: d.duration_ms,
            updated_at: d.updated_at,
        }
    }
}

pub(crate) async fn list<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<ListDeliveries>,
) -> ApiResult<axum::Json<Page<DeliveryOut>>> {
    let limit = limit_of(q.limit)?;
    if let Some(c) = &q.channel
        && !CHANNELS.contains(&c.as_str())
    {
        return Err(ApiError::invalid(
            "channel",
            format!("{c:?} is not a channel ({})", CHANNELS.join(", ")),
        ));
    }
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            format!("{s:?} is not a delivery status ({})", STATUSES.join(", ")),
        ));
    }
    let workflow_id = match q.workflow {
        Some(w) => Some(
            crate::routes::workflows::find(&app, &caller, &w)
                .await
                .map_err(|e| ApiError {
                    field: Some("workflow".into()),
                    ..e
                })?
                .id,
        ),
        None => None,
    };
    let rows = app
        .engine
        .store()
        .list_deliveries(&DeliveryQuery {
            namespace: caller.namespace.clone(),
            execution_id: q.execution,
            subject: q.subject,
            workflow_id,
            channel: q.channel,
            provider: q.provider,
            status: q.status,
            created_after: q.after,
            created_before: q.before,
            before_id: q.cursor,
            limit: limit + 1,
        })
        .await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |r| r.id.clone(),
        DeliveryOut::from,
    )))
}

/// A provider configured on this node (never its credentials).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProviderOut {
    /// Its configured name (what an action's `provider` input names).
    pub name: String,
    /// smtp, sendgrid, mailgun, twilio, vonage, slack, discord, teams, log,
    /// webhook.
    pub kind: String,
    /// The channels it sends.
    pub channels: Vec<String>,
    /// The channels that use it when an action names no provider, with its
    /// place in their failover order (0 first).
    pub default_for: Vec<DefaultFor>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DefaultFor {
    pub channel: String,
    pub position: usize,
}

pub(crate) async fn providers<S: Store>(
    State(app): State<AppState<S>>,
) -> ApiResult<axum::Json<Vec<ProviderOut>>> {
    let channels = app.engine.channels();
    Ok(axum::Json(
        channels
            .list()
            .into_iter()
            .map(|(name, kind, served)| ProviderOut {
                default_for: channels
                    .defaults_of(&name)
                    .into_iter()
                    .map(|(c, position)| DefaultFor {
                        channel: c.as_str().to_owned(),
                        position,
                    })
                    .collect(),
                name,
                kind: kind.to_owned(),
                channels: served.iter().map(|c| c.as_str().to_owned()).collect(),
            })
            .collect(),
    ))
}

/// What a status report changed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReportOut {
    /// Deliveries whose status moved.
    pub updated: u64,
}

/// `POST /v1/webhooks/{provider}`: a provider's status report. No API key:
/// the provider's own signature is the credential (SendGrid's signed event
/// webhook, Mailgun's HMAC, Twilio's request signature), checked against
/// the provider's configured key; a forged, stale or replayed report is
/// refused and changes nothing.
pub(crate) async fn report<S: Store>(
    State(app): State<AppState<S>>,
    crate::extract::Path(provider): crate::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: axum::http::HeaderMap,
    crate::extract::RawBody(body): crate::extract::RawBody,
) -> ApiResult<axum::Json<ReportOut>> {
    use axum::http::StatusCode;
    use sojourn_actors::channels::{Report, ReportError};
    let now = Utc::now();
    let report = Report {
        query: query.as_deref().unwrap_or(""),
        headers: &headers,
        body: &body,
        now,
    };
    let verified = app
        .engine
        .channels()
        .check_report(&provider, &report)
        .await
        .map_err(|e| match &e {
            ReportError::UnknownProvider(_) => ApiError {
                field: Some("provider".into()),
                ..ApiError::not_found("provider", &provider)
            },
            ReportError::NotSupported => ApiError {
                field: Some("provider".into()),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("provider: {provider:?} has no status webhook"),
                )
            },
            ReportError::NotConfigured(m) => {
                ApiError::new(StatusCode::CONFLICT, "webhook_not_configured", m.clone())
            }
            ReportError::Forged(m) => {
                tracing::warn!(provider, reason = %m, "a status report with a bad signature was refused");
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", m.clone())
            }
            ReportError::Stale(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "stale_report", m.clone())
            }
            ReportError::Malformed(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("body: {m}"))
            }
        })?;
    let updates: Vec<(String, String)> = verified
        .updates
        .into_iter()
        .map(|u| (u.message_id, u.status.to_owned()))
        .collect();
    match app
        .engine
        .store()
        .apply_delivery_report(
            &provider,
            verified.scope.as_deref().unwrap_or(&provider),
            &verified.receipt,
            &updates,
            now,
        )
        .await?
    {
        Some(updated) => Ok(axum::Json(ReportOut { updated })),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "replayed",
            "this report was received before; it changes nothing",
        )),
    }
}
