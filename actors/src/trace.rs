//! Joins the spans of one execution into one trace where the work crosses
//! a task or an actor: the request that starts an execution, each of its
//! activations on this node, and its action sends.
//!
//! A process-local, bounded map from the execution to the OpenTelemetry
//! context of its trace, touched only when the span at hand is enabled
//! (with no OpenTelemetry layer installed and logging at `warn`, these
//! `info` spans are disabled and nothing here runs). An execution that
//! moves to another node, or outlives this process, starts a new trace
//! there (its spans still carry `execution.id`).

use std::collections::HashMap;
use std::sync::Mutex;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use sojourn_runtime::ExecutionId;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// At most this many executions remembered; the map is cleared when full.
const MAX_TRACES: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct Traces {
    parents: Mutex<HashMap<ExecutionId, SpanContext>>,
}

impl Traces {
    /// Remembers `span` as the parent of what comes next for `id`.
    pub(crate) fn remember(&self, id: &ExecutionId, span: &Span) {
        if span.is_disabled() {
            return;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return;
        }
        if let Ok(mut m) = self.parents.lock() {
            if m.len() >= MAX_TRACES && !m.contains_key(id) {
                m.clear();
            }
            m.insert(id.clone(), sc);
        }
    }

    /// Makes `span` (just created, not yet entered) a child of what was
    /// remembered for `id`.
    pub(crate) fn adopt(&self, id: &ExecutionId, span: &Span) {
        if span.is_disabled() {
            return;
        }
        let parent = self.parents.lock().ok().and_then(|m| m.get(id).cloned());
        if let Some(sc) = parent {
            let _ = span.set_parent(Context::new().with_remote_span_context(sc));
        }
    }

    /// Forgets `id` (it ended).
    pub(crate) fn forget(&self, id: &ExecutionId) {
        if let Ok(mut m) = self.parents.lock()
            && !m.is_empty()
        {
            m.remove(id);
        }
    }
}
