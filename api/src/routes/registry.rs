//! The registry: the trigger and action definitions of the caller's
//! namespace, the built-in ones included, with their versions; edits
//! (each a new version), deletion, enable and disable. The builder's
//! palette and property forms are read from here.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sojourn_persistence::{RegistryEntry, Store};
use sojourn_runtime::registry::{builtin_definitions, is_valid_name};
use sojourn_runtime::{Definition, Kind};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path, Q};
use crate::state::AppState;

/// A definition as the API shows it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DefinitionOut {
    pub name: String,
    /// Built in (not editable; may be disabled).
    pub builtin: bool,
    /// Disabled: new workflow versions may not use it, and an execution
    /// that reaches it pauses until it is enabled and retried.
    pub enabled: bool,
    /// Deleted (shown only by enable and disable): new versions can no
    /// longer use it; what pins it still runs with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The version shown (none for a built-in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    /// The highest version (none for a built-in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<i32>,
    pub definition: Definition,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Every version, oldest first (one definition's page only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<VersionItem>>,
    /// An edit that made a new version (`PUT` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<bool>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VersionItem {
    pub version: i32,
    pub created_at: DateTime<Utc>,
}

impl From<RegistryEntry> for DefinitionOut {
    fn from(e: RegistryEntry) -> Self {
        DefinitionOut {
            name: e.name,
            builtin: false,
            enabled: e.enabled,
            deleted: e.deleted,
            version: Some(e.version),
            latest_version: Some(e.latest_version),
            definition: e.definition,
            created_at: Some(e.created_at),
            updated_at: Some(e.updated_at),
            versions: None,
            new: None,
        }
    }
}

fn builtin(name: &str, def: &Definition, enabled: bool) -> DefinitionOut {
    DefinitionOut {
        name: name.to_owned(),
        builtin: true,
        enabled,
        deleted: false,
        version: None,
        latest_version: None,
        definition: def.clone(),
        created_at: None,
        updated_at: None,
        versions: None,
        new: None,
    }
}

fn builtin_named(name: &str) -> Option<&'static Definition> {
    builtin_definitions()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| d)
}

/// The schema of a definition's `{name}`.
pub(crate) fn name_param() -> Value {
    serde_json::json!({"type": "string", "minLength": 3, "maxLength": 100,
        "pattern": "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$"})
}

fn check_name(name: &str) -> ApiResult<()> {
    if builtin_named(name).is_none() && !is_valid_name(name) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "{name:?}: two or more dot-separated parts of lower-case letters, digits and _ (crm.update_contact)"
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDefinitions {
    /// Only actions, or only triggers.
    #[serde(default)]
    pub kind: Option<Kind>,
}

pub(crate) async fn list<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<ListDefinitions>,
) -> ApiResult<axum::Json<Vec<DefinitionOut>>> {
    let store = app.engine.store();
    let disabled = store.disabled_definitions(Some(&caller.namespace)).await?;
    let is_disabled = |name: &str| disabled.iter().any(|(_, n)| n == name);
    let mut out: Vec<DefinitionOut> = builtin_definitions()
        .iter()
        .map(|(name, def)| builtin(name, def, !is_disabled(name)))
        .collect();
    out.extend(
        store
            .list_definitions(&caller.namespace)
            .await?
            .into_iter()
            .map(DefinitionOut::from),
    );
    if let Some(kind) = q.kind {
        out.retain(|d| d.definition.kind == kind);
    }
    Ok(axum::Json(out))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetDefinition {
    /// A version (the latest when absent).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub version: Option<i32>,
}

pub(crate) async fn get<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Q(q): Q<GetDefinition>,
) -> ApiResult<axum::Json<DefinitionOut>> {
    check_name(&name)?;
    let store = app.engine.store();
    if let Some(def) = builtin_named(&name) {
        if let Some(v) = q.version {
            // A built-in has no versions.
            return Err(ApiError::not_found(
                "registry definition version",
                &format!("{name} v{v}"),
            ));
        }
        let disabled = store.disabled_definitions(Some(&caller.namespace)).await?;
        let enabled = !disabled.iter().any(|(_, n)| *n == name);
        return Ok(axum::Json(builtin(&name, def, enabled)));
    }
    let entry = store
        .get_definition(&caller.namespace, &name, q.version)
        .await?
        .ok_or_else(|| match q.version {
            Some(v) => ApiError::not_found("registry definition version", &format!("{name} v{v}")),
            None => ApiError::not_found("registry definition", &name),
        })?;
    let versions = store
        .list_definition_versions(&caller.namespace, &name)
        .await?;
    let mut out = DefinitionOut::from(entry);
    out.versions = Some(
        versions
            .into_iter()
            .map(|v| VersionItem {
                version: v.version,
                created_at: v.created_at,
            })
            .collect(),
    );
    Ok(axum::Json(out))
}

pub(crate) async fn put<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(def): Body<Definition>,
) -> ApiResult<Response> {
    check_name(&name)?;
    if builtin_named(&name).is_some() {
        return Err(ApiError::conflict(
            Some("name"),
            format!("name: {name} is built in: it cannot be edited (it can be disabled)"),
        ));
    }
    let problems = def.problems(&name);
    if let Some((field, message)) = problems.first() {
        let count = problems.len();
        return Err(ApiError {
            details: serde_json::to_value(
                problems
                    .iter()
                    .map(|(f, m)| serde_json::json!({"field": f, "message": m}))
                    .collect::<Vec<_>>(),
            )
            .ok(),
            ..ApiError::invalid(
                field,
                format!("{field}: {message} ({count} problem(s) in all; see details)"),
            )
        });
    }
    let (entry, new) = app
        .engine
        .store()
        .put_definition(&caller.namespace, &name, &def, Utc::now())
        .await?;
    let status = if new && entry.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut out = DefinitionOut::from(entry);
    out.new = Some(new);
    Ok((status, axum::Json(out)).into_response())
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Deleted {
    pub name: String,
    pub deleted: bool,
}

pub(crate) async fn delete<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Deleted>> {
    check_name(&name)?;
    if builtin_named(&name).is_some() {
        return Err(ApiError::conflict(
            Some("name"),
            format!("name: {name} is built in: it cannot be deleted (it can be disabled)"),
        ));
    }
    app.engine
        .store()
        .delete_definition(&caller.namespace, &name, Utc::now())
        .await?;
    Ok(axum::Json(Deleted {
        name,
        deleted: true,
    }))
}

async fn set_enabled<S: Store>(
    app: &AppState<S>,
    caller: &Caller,
    name: String,
    enabled: bool,
) -> ApiResult<axum::Json<DefinitionOut>> {
    check_name(&name)?;
    let store = app.engine.store();
    let builtin_def = builtin_named(&name);
    let entry = store
        .set_enabled(
            &caller.namespace,
            &name,
            builtin_def.map(|d| d.kind),
            enabled,
            Utc::now(),
        )
        .await?;
    app.engine.registry_changed().await;
    Ok(axum::Json(match (builtin_def, entry) {
        (Some(def), _) => builtin(&name, def, enabled),
        (None, Some(entry)) => DefinitionOut::from(entry),
        (None, None) => return Err(ApiError::not_found("registry definition", &name)),
    }))
}

pub(crate) async fn enable<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<DefinitionOut>> {
    set_enabled(&app, &caller, name, true).await
}

pub(crate) async fn disable<S: Store>(
    State(app): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<DefinitionOut>> {
    set_enabled(&app, &caller, name, false).await
}
