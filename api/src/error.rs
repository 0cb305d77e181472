//! The one error format: `{"error": {"code", "message", "field"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use sojourn_actors::Error as EngineError;
use sojourn_persistence::Error as StoreError;
use tracing::error;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Every validation problem, for `invalid_workflow`.
    pub details: Option<serde_json::Value>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code: `invalid_request`, `not_found`,
    /// `conflict`, `unauthorized`, `forbidden`, `payload_too_large`, …
    pub code: String,
    /// What went wrong, naming the offending field.
    pub message: String,
    /// The offending field, as a path (`input`, `definition.nodes[2].config.url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every validation problem, when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            details: None,
        }
    }

    /// A 400 about one field; the message is prefixed with the field.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError {
            field: Some(field.to_owned()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("{field}: {message}"),
            )
        }
    }

    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id:?} not found"),
        )
    }

    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            field: field.map(str::to_owned),
            ..ApiError::new(StatusCode::CONFLICT, "conflict", message)
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the server's log)",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
                details: self.details,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Every 503 here is transient (the database, Redis, a node
            // shutting down): say when to come back.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict { field, value } => {
                ApiError::conflict(Some(field), format!("{field}: {value:?} already exists"))
            }
            StoreError::NotFound { what, id } => ApiError::not_found(what, &id),
            StoreError::Invalid(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            e @ StoreError::Database(_) if e.is_data_error() => {
                ApiError::invalid("body", format!("the database refused a value: {e}"))
            }
            StoreError::Database(e) => {
                error!(error = %e, "database error");
                ApiError::unavailable("the database is unavailable or failed; retry")
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::Store(e) => e.into(),
            EngineError::WorkflowNotFound(w) => ApiError {
                field: Some("workflow".into()),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("workflow: {w:?} not found or not published"),
                )
            },
            EngineError::WorkflowArchived(w) => ApiError::conflict(
                Some("workflow"),
                format!("workflow: {w:?} is archived; it starts no new executions"),
            ),
            EngineError::Validation(m) => ApiError {
                field: Some("definition".into()),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_workflow",
                    format!("definition: {m}"),
                )
            },
            EngineError::Start(sojourn_runtime::Error::InvalidStart { field, message }) => {
                ApiError::invalid(field, message)
            }
            EngineError::Start(e) => ApiError::conflict(None, e.to_string()),
            EngineError::VersionNotFound { version } => ApiError {
                field: Some("version".into()),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("version: the workflow has no published version {version}"),
                )
            },
            EngineError::Rejected(m) => ApiError::invalid("input", m),
            e @ EngineError::LimitReached { .. } => {
                ApiError::conflict(Some("subject"), e.to_string())
            }
            EngineError::Unavailable(e) => {
                error!(error = %e, "store unavailable");
                ApiError::unavailable("the database is unavailable or failed; retry")
            }
            EngineError::ShuttingDown => {
                ApiError::unavailable("the node is shutting down; retry on another")
            }
            e @ EngineError::Overloaded { .. } => {
                ApiError::unavailable(format!("{e}; retry later or on another node"))
            }
            other => ApiError::internal(other),
        }
    }
}

/// `Result` for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
