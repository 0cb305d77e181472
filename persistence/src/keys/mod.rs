//! API keys (`api_keys`): only the hash of a secret is stored.

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::Result;
use crate::types::{ApiKeyRecord, NewApiKey};

/// API keys.
pub trait KeyStore: Send + Sync {
    /// Stores a new API key. [`crate::Error::Conflict`] on `id` or `hash`.
    fn create_api_key(&self, key: NewApiKey) -> impl Future<Output = Result<ApiKeyRecord>> + Send;

    /// The key whose secret hashes to `hash`, unless revoked.
    fn api_key_by_hash(
        &self,
        hash: &str,
    ) -> impl Future<Output = Result<Option<ApiKeyRecord>>> + Send;

    /// The keys of a namespace (revoked ones included), oldest first.
    fn list_api_keys(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<ApiKeyRecord>>> + Send;

    /// Revokes a key; [`crate::Error::NotFound`] if the namespace has no such
    /// key. Revoking twice keeps the first time.
    fn revoke_api_key(
        &self,
        namespace: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<ApiKeyRecord>> + Send;
}
