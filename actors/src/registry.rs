//! The registry as the engine uses it: the action types a namespace's new
//! versions are validated against ([`namespace_registry`]), the ones a
//! published version runs with ([`pinned_registry`]), and the gate that
//! holds a send of an action disabled since ([`Gate`]).

use std::collections::{HashMap, HashSet};
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

/// Disabled actions as a relay knows them: action name → namespaces.
#[derive(Debug, Default)]
pub struct Gate {
    state: RwLock<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    read_at: Option<Instant>,
    disabled: Arc<HashMap<String, HashSet<String>>>,
}

impl Gate {
    /// Reads the disabled actions again if what it knows is older than
    /// [`GATE_REFRESH`] (one indexed query; nothing when fresh).
    pub(crate) async fn refresh_if_stale<S: Store>(&self, store: &S) {
        let fresh = self
            .state
            .read()
            .ok()
            .and_then(|s| s.read_at)
            .is_some_and(|t| t.elapsed() < GATE_REFRESH);
        if !fresh {
            self.refresh(store).await;
        }
    }

    /// Reads the disabled actions now (after a change through this node).
    pub async fn refresh<S: Store>(&self, store: &S) {
        match store.disabled_definitions(None).await {
            Ok(rows) => {
                let mut disabled: HashMap<String, HashSet<String>> = HashMap::new();
                for (namespace, name) in rows {
                    disabled.entry(name).or_default().insert(namespace);
                }
                if let Ok(mut s) = self.state.write() {
                    s.read_at = Some(Instant::now());
                    s.disabled = Arc::new(disabled);
                }
            }
            // Kept as it was: a database outage holds nothing new.
            Err(e) => warn!(error = %e, "reading the disabled registry actions failed"),
        }
    }

    /// Whether `action` is disabled in some namespace (no lock held after).
    fn namespaces(&self, action: &str) -> Option<HashSet<String>> {
        let s = self.state.read().ok()?;
        s.disabled.get(action).cloned()
    }

    /// Why a message may not be sent, if it may not: its action is disabled
    /// in its execution's namespace. The common case (nothing disabled
    /// under that name) costs one hash lookup.
    pub(crate) async fn held<S: Store>(
        &self,
        store: &S,
        m: &OutboxMessage,
    ) -> Option<ActionOutcome> {
        let namespaces = self.namespaces(&m.dispatch.action)?;
        let namespace = match store.load_execution(&m.execution_id).await {
            Ok(Some(record)) => record.namespace,
            // Sent as usual; the record is not there to say otherwise.
            Ok(None) => return None,
            Err(e) => {
                warn!(error = %e, "reading an execution's namespace failed; sending");
                return None;
            }
        };
        namespaces.contains(&namespace).then(|| ActionOutcome::Held {
            reason: format!(
                "action {} is disabled in the registry of namespace {namespace:?}: enable it, then retry the execution",
                m.dispatch.action
            ),
        })
    }
}
