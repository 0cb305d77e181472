//! Compiled workflow versions, cached: a published version never changes,
//! so it is compiled once per process.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sojourn_persistence::Store;
use sojourn_runtime::CompiledWorkflow;

use crate::Error;

/// How long a key → (id, latest version) lookup is trusted. Deploys through
/// this node forget it at once; other nodes' deploys show within this.
const KEY_TTL: Duration = Duration::from_secs(1);

/// `(namespace, id or key)`.
type NamespacedKey = (String, String);
/// `(workflow id, latest version, when it was looked up)`.
type Resolved = (String, i32, Instant);

#[derive(Debug, Default)]
pub(crate) struct WorkflowCache {
    compiled: RwLock<HashMap<(String, i32), Arc<CompiledWorkflow>>>,
    keys: RwLock<HashMap<NamespacedKey, Resolved>>,
}

impl WorkflowCache {
    /// The workflow id and latest version for an id or key.
    pub(crate) async fn resolve<S: Store>(
        &self,
        store: &S,
        namespace: &str,
        id_or_key: &str,
    ) -> Result<(String, i32), Error> {
        let k = (namespace.to_owned(), id_or_key.to_owned());
        if let Some((id, v, at)) = self.keys.read().ok().and_then(|m| m.get(&k).cloned())
            && at.elapsed() < KEY_TTL
        {
            return Ok((id, v));
        }
        let record = store
            .get_workflow(namespace, id_or_key)
            .await?
            .ok_or_else(|| Error::WorkflowNotFound(id_or_key.to_owned()))?;
        if record.archived_at.is_some() {
            return Err(Error::WorkflowArchived(id_or_key.to_owned()));
        }
        let version = record.latest_version.ok_or_else(|| {
            Error::WorkflowNotFound(format!("{id_or_key} has no published version"))
        })?;
        if let Ok(mut m) = self.keys.write() {
            m.insert(k, (record.id.clone(), version, Instant::now()));
        }
        Ok((record.id, version))
    }

    /// Forgets cached lookups after a deploy.
    pub(crate) fn forget_keys(&self) {
        if let Ok(mut m) = self.keys.write() {
            m.clear();
        }
    }

    pub(crate) async fn get<S: Store>(
        &self,
        store: &S,
        workflow_id: &str,
        version: i32,
    ) -> Result<Arc<CompiledWorkflow>, Error> {
        let key = (workflow_id.to_owned(), version);
        if let Some(wf) = self.compiled.read().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(wf);
        }
        let v = store
            .get_version(workflow_id, Some(version))
            .await?
            .ok_or_else(|| Error::WorkflowNotFound(format!("{workflow_id} v{version}")))?;
        let registry = crate::registry::pinned_registry(store, workflow_id, &v.registry)
            .await?
            .to_run();
        let wf = CompiledWorkflow::compile(&v.definition, &registry).map_err(|errors| {
            Error::InvalidWorkflow {
                workflow: workflow_id.to_owned(),
                version,
                message: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })?;
        let wf = Arc::new(wf);
        if let Ok(mut m) = self.compiled.write() {
            m.insert(key, wf.clone());
        }
        Ok(wf)
    }
}
