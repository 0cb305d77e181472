//! Action results on their way to a live local actor, in memory.
//!
//! The relay hands a result for an execution whose actor lives here to the
//! supervisor, which puts it here and tells the actor. The actor applies it
//! in a transition that also removes the action's outbox row, and only
//! after that commit removes it from here. Whatever is still here when the
//! actor stops — it failed, was fenced, or stopped with the notice still in
//! its mailbox — the supervisor records the durable way (attempt result and
//! inbox row, outbox row removed) and routes as an ordinary input. So a
//! result is never only in a mailbox: an actor's death cannot lose it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use sojourn_runtime::ExecutionId;

use crate::execution::LocalResult;

/// Results waiting for the transition that applies them, by execution.
#[derive(Debug, Default)]
pub(crate) struct Unapplied {
    waiting: Mutex<HashMap<ExecutionId, Vec<LocalResult>>>,
}

impl Unapplied {
    /// The map, also after a panic elsewhere held the lock: losing a result
    /// to a poisoned lock would stall its execution.
    fn lock(&self) -> MutexGuard<'_, HashMap<ExecutionId, Vec<LocalResult>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn put(&self, id: &ExecutionId, result: LocalResult) {
        self.lock().entry(id.clone()).or_default().push(result);
    }

    /// Copies of what waits for `id`, in arrival order.
    pub(crate) fn peek(&self, id: &ExecutionId) -> Vec<LocalResult> {
        self.lock().get(id).cloned().unwrap_or_default()
    }

    /// Drops the result with outbox key `key` (its commit succeeded).
    pub(crate) fn remove(&self, id: &ExecutionId, key: &str) {
        let mut m = self.lock();
        if let Some(list) = m.get_mut(id) {
            list.retain(|r| r.key != key);
            if list.is_empty() {
                m.remove(id);
            }
        }
    }

    /// Everything that waits for `id`, taken out (its actor stopped).
    pub(crate) fn take(&self, id: &ExecutionId) -> Vec<LocalResult> {
        self.lock().remove(id).unwrap_or_default()
    }

    /// Every waiting result, taken out (the node stops).
    pub(crate) fn take_all(&self) -> Vec<(ExecutionId, LocalResult)> {
        self.lock()
            .drain()
            .flat_map(|(id, list)| list.into_iter().map(move |r| (id.clone(), r)))
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sojourn_runtime::ActionOutcome;

    fn result(key: &str) -> LocalResult {
        LocalResult {
            node: "first".into(),
            attempt: 1,
            outcome: ActionOutcome::Success {
                output: serde_json::json!({"status": 200}),
            },
            key: key.into(),
        }
    }

    #[test]
    fn a_result_stays_until_its_commit_removes_it_or_its_actor_stops() {
        let u = Unapplied::default();
        let a = ExecutionId::from("exe_a".to_owned());
        let b = ExecutionId::from("exe_b".to_owned());
        u.put(&a, result("k1"));
        u.put(&a, result("k2"));
        u.put(&b, result("k3"));
        // Peeking (an actor applying) leaves them there.
        assert_eq!(u.peek(&a).len(), 2);
        assert_eq!(u.peek(&a).len(), 2);
        u.remove(&a, "k1");
        let left: Vec<String> = u.peek(&a).into_iter().map(|r| r.key).collect();
        assert_eq!(left, vec!["k2".to_owned()]);
        // Its actor stopped: what is left is taken, once.
        assert_eq!(u.take(&a).len(), 1);
        assert!(u.take(&a).is_empty());
        assert_eq!(u.len(), 1);
        assert_eq!(u.take_all().len(), 1);
        assert_eq!(u.len(), 0);
    }
}
