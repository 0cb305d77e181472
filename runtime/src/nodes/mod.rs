//! One module per node type: its config (what the document says), its
//! compiled form (what validation produced) and what it does when an
//! execution enters it or an input arrives for it.

pub mod action;
pub mod condition;
pub mod delay;
pub mod exit;
pub mod function;
pub mod split;
pub mod start;
pub mod wait_for_event;

pub use action::{ActionConfig, RetryPolicy};
pub use condition::ConditionConfig;
pub use delay::DelayConfig;
pub use exit::ExitConfig;
pub use function::{Assignment, FunctionConfig};
pub use split::{SplitConfig, SplitRule, SplitVariant};
pub use start::{StartConfig, Trigger};
pub use wait_for_event::WaitForEventConfig;

#[cfg(test)]
pub(crate) mod testing;
