//! Health, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use sojourn_actors::metrics;
use sojourn_persistence::Store;

use crate::state::AppState;

#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    /// `ok` (liveness); `ready`, `degraded` (ready, but a dependency that
    /// only delays sends does not answer: Kafka) or `not ready`.
    pub status: String,
    pub node: String,
    /// Per dependency: `ok` or the error (empty for liveness).
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub(crate) async fn healthz<S: Store>(State(app): State<AppState<S>>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
        node: app.engine.node_id().to_owned(),
        checks: Vec::new(),
    })
}

pub(crate) async fn readyz<S: Store>(State(app): State<AppState<S>>) -> Response {
    let db = app.engine.store().ping().await;
    let stopping = app.engine.is_stopping();
    let ok = db.is_ok() && !stopping;
    let mut checks = vec![Check {
        name: "database".into(),
        ok: db.is_ok(),
        error: db.err().map(|e| {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            "unreachable".to_owned()
        }),
    }];
    let redis = app.engine.cluster_ready().await;
    let redis_ok = redis.is_ok();
    if app.engine.is_clustered() {
        checks.push(Check {
            name: "redis".into(),
            ok: redis_ok,
            error: redis.err().map(|e| {
                tracing::warn!(error = %e, "readiness: redis does not answer");
                "unreachable".to_owned()
            }),
        });
    }
    // Kafka away: the node still takes starts (channel messages wait in
    // the outbox), so it stays ready, and says it is degraded.
    let mut degraded = false;
    if let Some(kafka) = app.engine.kafka_ready().await {
        degraded = kafka.is_err();
        checks.push(Check {
            name: "kafka".into(),
            ok: kafka.is_ok(),
            error: kafka.err().map(|e| {
                tracing::warn!(error = %e, "readiness: Kafka does not answer");
                "unreachable".to_owned()
            }),
        });
    }
    let draining = app.engine.is_draining();
    if draining {
        checks.push(Check {
            name: "engine".into(),
            ok: false,
            error: Some("draining".into()),
        });
    }
    let ok = ok && redis_ok && !draining;
    if stopping {
        checks.push(Check {
            name: "engine".into(),
            ok: false,
            error: Some("shutting down".into()),
        });
    }
    let body = Health {
        status: match (ok, degraded) {
            (true, false) => "ready",
            (true, true) => "degraded",
            (false, _) => "not ready",
        }
        .into(),
        node: app.engine.node_id().to_owned(),
        checks,
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

pub(crate) async fn metrics<S: Store>(State(app): State<AppState<S>>) -> Response {
    let actors = app.engine.active_actors().await;
    app.active_actors
        .set(i64::try_from(actors).unwrap_or(i64::MAX));
    app.waiters
        .set(i64::try_from(app.engine.waiters()).unwrap_or(i64::MAX));
    // Left out of the answer when the database cannot be read.
    app.timers_pending
        .set(app.engine.store().pending_timers().await.ok());
    (
        [(CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::encode(&app.registry),
    )
        .into_response()
}
