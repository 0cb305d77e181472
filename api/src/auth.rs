//! API keys: random secrets, stored as SHA-256 hashes, with scopes
//! (`read` ⊂ `write` ⊂ `admin`), each belonging to one namespace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sojourn_persistence::{ApiKeyRecord, Store};

use crate::error::ApiError;
use crate::state::AppState;

/// What a key may do. Each scope includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Whether requests need a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Production (`sojourn serve`): every route but health needs a key.
    Required,
    /// `sojourn dev`: a request without a key acts as an admin of the
    /// `default` namespace; a key that is given is still checked.
    Optional,
}

/// Who is calling: the namespace their key belongs to and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    /// The highest scope of the key.
    pub scope: Scope,
    /// `None` for an anonymous dev-mode caller.
    pub key_id: Option<String>,
}

/// Prefix of every secret, so a leaked one is recognisable.
pub const SECRET_PREFIX: &str = "sjk_";

/// A new random secret and its hash.
pub fn generate_secret() -> Result<(String, String), getrandom::Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)?;
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(bytes));
    let hash = hash_secret(&secret);
    Ok((secret, hash))
}

/// A new public key id (`key_…`).
pub fn generate_key_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok(format!("key_{}", hex::encode(bytes)))
}

/// Lowercase hex SHA-256 of a secret: what the store keeps.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Parses and checks a list of scope names.
pub fn parse_scopes(names: &[String]) -> Result<Vec<String>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "give at least one of read, write, admin",
        ));
    }
    let mut out = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let s = Scope::parse(n).ok_or_else(|| {
            ApiError::invalid(
                &format!("scopes[{i}]"),
                format!("{n:?} is not a scope (read, write, admin)"),
            )
        })?;
        if !out.iter().any(|x: &String| x == s.as_str()) {
            out.push(s.as_str().to_owned());
        }
    }
    Ok(out)
}

/// Verified keys, so a request does not cost a database read. A revoked
/// key stops working within [`KEY_CACHE_TTL`].
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(10);

const MAX_CACHED_KEYS: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    entries: Mutex<HashMap<String, (Option<Caller>, Instant)>>,
}

impl KeyCache {
    fn get(&self, hash: &str) -> Option<Option<Caller>> {
        let m = self.entries.lock().ok()?;
        let (caller, at) = m.get(hash)?;
        (at.elapsed() < KEY_CACHE_TTL).then(|| caller.clone())
    }

    fn put(&self, hash: String, caller: Option<Caller>) {
        if let Ok(mut m) = self.entries.lock() {
            if m.len() >= MAX_CACHED_KEYS {
                // Bounded: expired entries go, then unknown keys (a flood of
                // made-up ones), then everything.
                m.retain(|_, (c, at)| c.is_some() && at.elapsed() < KEY_CACHE_TTL);
                if m.len() >= MAX_CACHED_KEYS {
                    m.clear();
                }
            }
            m.insert(hash, (caller, Instant::now()));
        }
    }

    pub(crate) fn forget(&self) {
        if let Ok(mut m) = self.entries.lock() {
            m.clear();
        }
    }
}

fn caller_of(record: ApiKeyRecord) -> Caller {
    let scope = record
        .scopes
        .iter()
        .filter_map(|s| Scope::parse(s))
        .max()
        .unwrap_or(Scope::Read);
    Caller {
        namespace: record.namespace,
        scope,
        key_id: Some(record.id),
    }
}

/// The key in `Authorization: Bearer …` (or `X-Api-Key`).
fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    if let Some(v) = headers.get(AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| unauthorized("Authorization: not valid text"))?;
        let key = v
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("Authorization: expected \"Bearer <api key>\""))?;
        return Ok(Some(key.trim()));
    }
    if let Some(v) = headers.get("x-api-key") {
        return v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| unauthorized("X-Api-Key: not valid text"));
    }
    Ok(None)
}

fn unauthorized(message: &str) -> ApiError {
    ApiError {
        field: Some("Authorization".into()),
        ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

/// Resolves the caller of a request.
pub(crate) async fn authenticate<S: Store>(
    app: &AppState<S>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let Some(secret) = presented_key(headers)? else {
        return match app.auth {
            AuthMode::Optional => Ok(Caller {
                namespace: app.default_namespace.clone(),
                scope: Scope::Admin,
                key_id: None,
            }),
            AuthMode::Required => Err(unauthorized(
                "Authorization: an API key is required (Authorization: Bearer <key>; create one with `sojourn keys create`)",
            )),
        };
    };
    let hash = hash_secret(secret);
    let caller = match app.keys.get(&hash) {
        Some(c) => c,
        None => {
            let found = app
                .engine
                .store()
                .api_key_by_hash(&hash)
                .await?
                .map(caller_of);
            app.keys.put(hash, found.clone());
            found
        }
    };
    caller.ok_or_else(|| unauthorized("Authorization: unknown or revoked API key"))
}

/// Route middleware: authenticates, checks the route's scope and hands the
/// [`Caller`] to the handler.
pub(crate) async fn require<S: Store>(
    State((app, scope)): State<(AppState<S>, Scope)>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match authenticate(&app, req.headers()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if caller.scope < scope {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this key's scope is {}; this route needs {}",
                caller.scope.as_str(),
                scope.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}
