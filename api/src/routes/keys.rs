//! API keys of the caller's namespace (admin scope).

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sojourn_persistence::{ApiKeyRecord, NewApiKey, Store};

use crate::auth::{Caller, generate_key_id, generate_secret, parse_scopes};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};
use crate::state::AppState;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[serde(default)]
    pub name: Option<String>,
    /// Any of `read`, `write`, `admin` (each includes the ones before it).
    #[schemars(length(min = 1), extend("items" = {"type": "string", "enum": ["read", "write", "admin"]}))]
    pub scopes: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct KeyOut {
    pub id: String,
    pub namespace: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Shown once, at creation; only its hash is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<ApiKeyRecord> for KeyOut {
    fn from(k: ApiKeyRecord) -> Self {
        KeyOut {
            id: k.id,
            namespace: k.namespace,
            name: k.name,
            scopes: k.scopes,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            secret: None,
        }
    }
}

/// Creates a key in `namespace`; returns it with its secret.
pub async fn create_key<S: Store>(
    store: &S,
    namespace: &str,
    name: Option<String>,
    scopes: &[String],
) -> ApiResult<KeyOut> {
    let scopes = parse_scopes(scopes)?;
    let (secret, hash) = generate_secret().map_err(ApiError::internal)?;
    let id = generate_key_id().map_err(ApiError::internal)?;
    let record = store
        .create_api_key(NewApiKey {
            id,
            namespace: namespace.to_owned(),
            name,
            hash,
            scopes,
            now: Utc::now(),
        })
        .await?;
    let mut out = KeyOut::from(record);
    out.secret = Some(secret);
    Ok(out)
}

pub(crate) async fn create<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateKey>,
) -> ApiResult<Response> {
    let out = create_key(app.engine.store(), &caller.namespace, req.name, &req.scopes).await?;
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

pub(crate) async fn list<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<axum::Json<Vec<KeyOut>>> {
    let keys = app.engine.store().list_api_keys(&caller.namespace).await?;
    Ok(axum::Json(keys.into_iter().map(KeyOut::from).collect()))
}

pub(crate) async fn revoke<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<KeyOut>> {
    let record = app
        .engine
        .store()
        .revoke_api_key(&caller.namespace, &id, Utc::now())
        .await?;
    app.keys.forget();
    Ok(axum::Json(record.into()))
}
