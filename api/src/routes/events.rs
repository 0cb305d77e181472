//! `POST /v1/events`: an event by name and correlation key, delivered to
//! every execution waiting for it and to journeys' exit criteria, sleeping
//! executions included.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sojourn_persistence::Store;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::state::AppState;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendEvent {
    /// The event's name (`order_placed`).
    #[schemars(length(min = 1))]
    pub name: String,
    /// The correlation key (e.g. a user id), matched against the key of
    /// waiting executions.
    #[schemars(length(min = 1))]
    pub key: String,
    #[serde(default)]
    pub payload: Option<Value>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EventDelivered {
    /// How many executions it was delivered to.
    pub delivered: usize,
}

pub(crate) async fn send<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<SendEvent>,
) -> ApiResult<Response> {
    if req.name.is_empty() {
        return Err(ApiError::invalid("name", "must not be empty"));
    }
    if req.key.is_empty() {
        return Err(ApiError::invalid("key", "must not be empty"));
    }
    let delivered = app
        .engine
        .send_event(
            &caller.namespace,
            &req.name,
            &req.key,
            req.payload.unwrap_or(Value::Null),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(EventDelivered { delivered }),
    )
        .into_response())
}
