//! The cluster: live nodes, drain requests, and the internal endpoint
//! nodes forward inputs to.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sojourn_actors::{Forwarded, SECRET_HEADER};
use sojourn_persistence::Store;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Q, parse_json};
use crate::state::AppState;

#[derive(Debug, Serialize, JsonSchema)]
pub struct NodeOut {
    pub id: String,
    /// Where other nodes reach it.
    pub address: String,
    /// Execution actors it holds.
    pub actors: u64,
    /// When its last heartbeat was written (milliseconds since the epoch).
    pub last_seen_ms: u64,
    pub started_ms: u64,
    pub draining: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ClusterOut {
    /// The node that answered.
    pub node: String,
    /// Whether the nodes share Redis (false: one node, in-process leases).
    pub shared: bool,
    pub nodes: Vec<NodeOut>,
}

/// `POST /cluster/nodes/{node}/drain` options.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainQuery {
    /// Drain even the last node that takes work (nothing will run the
    /// executions until a node starts).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DrainOut {
    pub node: String,
    pub drain_requested: bool,
}

pub(crate) async fn status<S: Store>(
    State(app): State<AppState<S>>,
) -> ApiResult<axum::Json<ClusterOut>> {
    let nodes = app
        .engine
        .members()
        .await
        .map_err(|e| ApiError::unavailable(format!("the cluster does not answer: {e}")))?;
    Ok(axum::Json(ClusterOut {
        node: app.engine.node_id().to_owned(),
        shared: app.engine.is_clustered(),
        nodes: nodes
            .into_iter()
            .map(|n| NodeOut {
                id: n.id,
                address: n.address,
                actors: n.actors,
                last_seen_ms: n.last_seen_ms,
                started_ms: n.started_ms,
                draining: n.draining,
            })
            .collect(),
    }))
}

pub(crate) async fn drain<S: Store>(
    State(app): State<AppState<S>>,
    Path(node): Path<String>,
    Q(query): Q<DrainQuery>,
) -> ApiResult<Response> {
    let nodes = app
        .engine
        .members()
        .await
        .map_err(|e| ApiError::unavailable(format!("the cluster does not answer: {e}")))?;
    if !nodes.iter().any(|n| n.id == node) {
        return Err(ApiError {
            field: Some("node".into()),
            ..ApiError::not_found("node", &node)
        });
    }
    // The last node that takes work would leave every execution with no
    // node to run it: only on purpose.
    let others_take_work = nodes.iter().any(|n| n.id != node && !n.draining);
    let target_takes_work = nodes.iter().any(|n| n.id == node && !n.draining);
    if target_takes_work && !others_take_work && !query.force {
        return Err(ApiError {
            field: Some("node".into()),
            ..ApiError::conflict(
                Some("node"),
                format!(
                    "node: {node:?} is the last node that takes work; draining it stops all executions until another node starts (add force=true to drain it anyway)"
                ),
            )
        });
    }
    app.engine
        .request_drain(&node)
        .await
        .map_err(|e| ApiError::unavailable(format!("the cluster does not answer: {e}")))?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(DrainOut {
            node,
            drain_requested: true,
        }),
    )
        .into_response())
}

/// `POST /internal/v1/deliver`: inputs another node forwards to this one.
/// Only nodes of the cluster (holding its secret) may call it.
pub(crate) async fn deliver<S: Store>(
    State(app): State<AppState<S>>,
    req: axum::extract::Request,
) -> ApiResult<StatusCode> {
    let headers: &HeaderMap = req.headers();
    // The secret is checked before the body is read: a caller without it
    // learns nothing, not even what a valid body looks like.
    let given = headers
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut ok = false;
    // The cached secret first; on a mismatch, the current one (it changes
    // when Redis is flushed).
    for fresh in [false, true] {
        let secret = app
            .engine
            .cluster_secret(fresh)
            .await
            .map_err(|e| ApiError::unavailable(format!("the cluster does not answer: {e}")))?;
        if constant_time_eq(given.as_bytes(), secret.as_bytes()) {
            ok = true;
            break;
        }
    }
    if !ok {
        return Err(ApiError {
            field: Some(SECRET_HEADER.into()),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{SECRET_HEADER}: only nodes of this cluster may call this route"),
            )
        });
    }
    let body = <axum::body::Bytes as axum::extract::FromRequest<()>>::from_request(req, &())
        .await
        .map_err(crate::extract::body_rejection)?;
    let items: Vec<Forwarded> = parse_json(&body)?;
    app.engine.accept_forwarded(items).await;
    Ok(StatusCode::ACCEPTED)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
