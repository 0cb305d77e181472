//! The registry as the engine uses it: the action types a namespace's new
//! versions are validated against ([`namespace_registry`]), the ones a
//! published version runs with ([`pinned_registry`]), and the gate that
//! holds a send of an action disabled since ([`Gate`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sojourn_persistence::{OutboxMessage, Pins, Store};
use sojourn_runtime::{ActionOutcome, Kind, Registry};
use tracing::warn;

use crate::Error;

/// How long a relay trusts what it read of disabled actions: disabling an
/// action holds the sends of every node within this.
pub const GATE_REFRESH: Duration = Duration::from_secs(2);

/// The built-in actions, the namespace's own enabled ones at their latest
/// versions, less what it disabled: what a new version is checked against.
pub async fn namespace_registry<S: Store>(store: &S, namespace: &str) -> Result<Registry, Error> {
    let mut registry = Registry::builtin();
    for e in store.list_definitions(namespace).await? {
        if e.definition.kind != Kind::Action {
            continue;
        }
        if let Err(problem) = registry.add(&e.name, e.version, &e.definition) {
            // Checked when stored; a definition that no longer reads is
            // left out (a workflow using it is refused as unknown).
            warn!(namespace, name = %e.name, %problem, "a registry definition does not compile");
        }
    }
    for (_, name) in store.disabled_definitions(Some(namespace)).await? {
        registry.disable(&name);
    }
    Ok(registry)
}

/// The built-ins and the definitions a published version pins: what it
/// runs with, whatever was edited or disabled since.
pub(crate) async fn pinned_registry<S: Store>(
    store: &S,
    workflow_id: &str,
    pins: &Pins,
) -> Result<Registry, Error> {
    let mut registry = Registry::builtin();
    if pins.is_empty() {
        return Ok(registry);
    }
    for (name, version, def) in store.pinned_definitions(workflow_id, pins).await? {
        registry
            .add(&name, version, &def)
            .map_err(|e| Error::Validation(format!("registry: {e}")))?;
    }
    Ok(registry)
}

/// How long one read of the disabled actions may take.
const GATE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Disabled actions as a relay knows them: action name → namespaces.
#[derive(Debug, Default)]
pub struct Gate {
    state: RwLock<GateState>,
    /// A background read is under way.
    reading: AtomicBool,
    /// Reads are numbered as they start: one that started earlier never
    /// replaces what a later one read.
    reads: AtomicU64,
}

#[derive(Debug, Default)]
struct GateState {
    /// When the read that is applied started, and its number.
    read_at: Option<Instant>,
    read: u64,
    disabled: HashMap<String, HashSet<String>>,
}

/// Clears the `reading` flag however the read ends (a panic included).
struct Reading<'g>(&'g AtomicBool);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Gate {
    /// Reads the disabled actions again, in a task of its own, if what it
    /// knows is older than [`GATE_REFRESH`]: the relay never waits on it
    /// (nor on a database that does not answer).
    pub(crate) fn refresh_if_stale<S: Store>(self: &Arc<Self>, store: &Arc<S>) {
        let fresh = self
            .state
            .read()
            .ok()
            .and_then(|s| s.read_at)
            .is_some_and(|t| t.elapsed() < GATE_REFRESH);
        if fresh || self.reading.swap(true, Ordering::AcqRel) {
            return;
        }
        let (gate, store) = (self.clone(), store.clone());
        tokio::spawn(async move {
            let _reading = Reading(&gate.reading);
            gate.refresh(&*store).await;
        });
    }

    /// Reads the disabled actions now (at start, and after a change
    /// through this node). A failed or slow read keeps what was known,
    /// and is tried again after [`GATE_REFRESH`].
    pub async fn refresh<S: Store>(&self, store: &S) {
        let number = self.reads.fetch_add(1, Ordering::AcqRel) + 1;
        let started = Instant::now();
        let read = tokio::time::timeout(GATE_READ_TIMEOUT, store.disabled_definitions(None)).await;
        let Ok(mut s) = self.state.write() else {
            return;
        };
        if number < s.read {
            return;
        }
        s.read = number;
        s.read_at = Some(started);
        match read {
            Ok(Ok(rows)) => {
                let mut disabled: HashMap<String, HashSet<String>> = HashMap::new();
                for (namespace, name) in rows {
                    disabled.entry(name).or_default().insert(namespace);
                }
                s.disabled = disabled;
            }
            Ok(Err(e)) => warn!(error = %e, "reading the disabled registry actions failed"),
            Err(_) => warn!("reading the disabled registry actions timed out"),
        }
    }
    /// Whether a message might be held: its action, or the built-in it is
    /// sent through, is disabled in some namespace. One hash lookup (two
    /// for a custom action) under a read lock.
    pub(crate) fn may_hold(&self, m: &OutboxMessage) -> bool {
        let Ok(s) = self.state.read() else {
            return false;
        };
        if s.disabled.is_empty() {
            return false;
        }
        s.disabled.contains_key(&m.dispatch.action)
            || m.dispatch
                .via
                .as_deref()
                .is_some_and(|via| s.disabled.contains_key(via))
    }

    /// Why a message may not be sent, if it may not: its action (or what
    /// it is sent through) is disabled in its execution's namespace. Reads
    /// the namespace (one indexed lookup): call it only when
    /// [`Gate::may_hold`].
    pub(crate) async fn held<S: Store>(
        &self,
        store: &S,
        m: &OutboxMessage,
    ) -> Option<ActionOutcome> {
        let namespace = match store.execution_namespace(m.execution_id.as_str()).await {
            Ok(Some(namespace)) => namespace,
            // Sent as usual; the record is not there to say otherwise.
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, "reading an execution's namespace failed; sending");
                return None;
            }
        };
        let s = self.state.read().ok()?;
        let disabled = |name: &str| {
            s.disabled
                .get(name)
                .is_some_and(|ns| ns.contains(&namespace))
        };
        let name = [Some(m.dispatch.action.as_str()), m.dispatch.via.as_deref()]
            .into_iter()
            .flatten()
            .find(|n| disabled(n))?;
        Some(ActionOutcome::Held {
            reason: format!(
                "action {name} is disabled in the registry of namespace {namespace:?}: enable it, then retry the execution"
            ),
        })
    }
}
