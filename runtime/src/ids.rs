//! Typed identifiers. Each is a string newtype so that an execution id can
//! never be passed where a node id is expected.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string as this id. No format is enforced here; the
            /// layer that mints ids decides their shape.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// One execution of a workflow, printed as `exe_…` by the layer that mints it.
    ExecutionId
);
string_id!(
    /// A node inside one workflow document (`"send_welcome"`).
    NodeId
);
string_id!(
    /// A durable timer of one execution; unique within that execution.
    TimerId
);
string_id!(
    /// An event subscription of one execution; unique within that execution.
    SubscriptionId
);

impl NodeId {
    /// Node ids are what operators type and what appears in idempotency keys
    /// (`execution/node/attempt`), so they are restricted to a safe alphabet.
    pub fn is_well_formed(&self) -> bool {
        !self.0.is_empty()
            && self.0.len() <= 128
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}
