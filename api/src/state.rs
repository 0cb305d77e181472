//! What every handler shares.

use std::sync::Arc;

use sojourn_actors::Engine;
use sojourn_actors::metrics::{LATENCY_BUCKETS, LabeledHistogram};
use sojourn_persistence::Store;

use crate::auth::{AuthMode, KeyCache};

/// The API's state: the node's engine and the API's own caches and metrics.
pub struct AppState<S: Store> {
    inner: Arc<Inner<S>>,
}

pub struct Inner<S: Store> {
    pub engine: Arc<Engine<S>>,
    pub auth: AuthMode,
    /// The namespace of anonymous dev-mode callers.
    pub default_namespace: String,
    pub(crate) keys: KeyCache,
    /// Request latency by method, route and status.
    pub(crate) http_seconds: LabeledHistogram,
}

impl<S: Store> AppState<S> {
    pub fn new(engine: Arc<Engine<S>>, auth: AuthMode) -> AppState<S> {
        AppState {
            inner: Arc::new(Inner {
                engine,
                auth,
                default_namespace: "default".into(),
                keys: KeyCache::default(),
                http_seconds: LabeledHistogram::new(LATENCY_BUCKETS),
            }),
        }
    }
}

impl<S: Store> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Store> std::ops::Deref for AppState<S> {
    type Target = Inner<S>;
    fn deref(&self) -> &Inner<S> {
        &self.inner
    }
}

impl<S: Store> std::fmt::Debug for Inner<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").field("auth", &self.auth).finish()
    }
}

impl<S: Store> std::fmt::Debug for AppState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("auth", &self.auth)
            .finish()
    }
}
