//! Compiled workflow versions, cached: a published version never changes,
//! so it is compiled once per process.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sojourn_persistence::Store;
use sojourn_runtime::{CompiledWorkflow, Registry};

use crate::Error;

#[derive(Debug, Default)]
pub(crate) struct WorkflowCache {
    compiled: RwLock<HashMap<(String, i32), Arc<CompiledWorkflow>>>,
}

impl WorkflowCache {
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
        let wf =
            CompiledWorkflow::compile(&v.definition, &Registry::builtin()).map_err(|errors| {
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
