//! Minting ids: a prefix and a UUIDv7 (time-ordered, so ids sort by
//! creation and index well): `exe_0192f8…`, `wf_0192f8…`.

use sojourn_runtime::ExecutionId;

fn mint(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A new execution id, `exe_…`.
pub fn new_execution_id() -> ExecutionId {
    ExecutionId::new(mint("exe"))
}

/// A new workflow id, `wf_…`.
pub fn new_workflow_id() -> String {
    mint("wf")
}

/// A new dead letter id, `dlq_…`.
pub fn new_dead_letter_id() -> String {
    mint("dlq")
}

/// `dlv_…`: a delivery (UUIDv7: sorts by time).
pub fn new_delivery_id() -> String {
    mint("dlv")
}
