//! What every handler shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sojourn_actors::Engine;
use sojourn_actors::metrics::{Gauge, HttpHistogram, Listed, Registry, ScrapedGauge};
use sojourn_persistence::{Store, TriggerRecord};

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
    pub(crate) http_seconds: HttpHistogram,
    /// Execution actors live here, set when scraped.
    pub(crate) active_actors: Gauge,
    /// Requests waiting here for executions to finish, set when scraped.
    pub(crate) waiters: Gauge,
    /// Timers waiting (all nodes), read when scraped.
    pub(crate) timers_pending: ScrapedGauge,
    /// Every series `/metrics` shows: the engine's and the above.
    pub(crate) registry: Registry,
    /// `api` triggers by path, for `POST /trigger/{path}`.
    pub(crate) triggers: TriggerCache,
}

/// How long a trigger lookup is trusted. Moves through this node forget it
/// at once; other nodes' moves show within this.
const TRIGGER_TTL: Duration = Duration::from_secs(1);

/// `(namespace, path)` → the trigger (or none) and when it was read.
type TriggerEntry = (Option<Arc<TriggerRecord>>, Instant);

/// Active-trigger lookups, cached briefly: a fire costs no query.
#[derive(Debug, Default)]
pub(crate) struct TriggerCache {
    entries: Mutex<HashMap<(String, String), TriggerEntry>>,
}

impl TriggerCache {
    pub(crate) async fn get<S: Store>(
        &self,
        store: &S,
        namespace: &str,
        path: &str,
    ) -> Result<Option<Arc<TriggerRecord>>, sojourn_persistence::Error> {
        let key = (namespace.to_owned(), path.to_owned());
        if let Ok(m) = self.entries.lock()
            && let Some((t, at)) = m.get(&key)
            && at.elapsed() < TRIGGER_TTL
        {
            return Ok(t.clone());
        }
        let t = store.api_trigger(namespace, path).await?.map(Arc::new);
        if let Ok(mut m) = self.entries.lock() {
            if m.len() >= 10_000 {
                m.clear();
            }
            m.insert(key, (t.clone(), Instant::now()));
        }
        Ok(t)
    }

    pub(crate) fn forget(&self) {
        if let Ok(mut m) = self.entries.lock() {
            m.clear();
        }
    }
}

impl<S: Store> AppState<S> {
    pub fn new(engine: Arc<Engine<S>>, auth: AuthMode) -> AppState<S> {
        let http_seconds = HttpHistogram::default();
        let active_actors = Gauge::default();
        let waiters = Gauge::default();
        let timers_pending = ScrapedGauge::default();
        let mut registry = Registry::default();
        engine.stats().register(&mut registry);
        engine.channels().register(&mut registry);
        registry.register(
            "sojourn_active_actors",
            "Execution actors live on this node",
            active_actors.clone(),
        );
        registry.register(
            "sojourn_waiters",
            "Requests waiting on this node for executions to finish (?wait=)",
            waiters.clone(),
        );
        registry.register(
            "sojourn_timers_pending",
            "Durable timers waiting to fire (all nodes)",
            timers_pending.clone(),
        );
        registry.register(
            "sojourn_http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            Listed(http_seconds.clone()),
        );
        AppState {
            inner: Arc::new(Inner {
                engine,
                auth,
                default_namespace: "default".into(),
                keys: KeyCache::default(),
                http_seconds,
                active_actors,
                waiters,
                timers_pending,
                registry,
                triggers: TriggerCache::default(),
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
