//! API keys (`api_keys`): only the hash of a secret is stored. Every
//! statement is the same on both databases (the scopes column differs in
//! type, which [`Scopes`] hides).

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::Executor;

use crate::Result;
use crate::error::unique_violation_on;
use crate::sql::{Bind, Instant, Read, Scopes, Sql, SqlStore, at, conflict, not_found};
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

const COLUMNS: &str = "id, namespace, name, scopes, created_at, revoked_at";

impl<DB> KeyStore for SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> Scopes: Bind<'q, DB>,
    ApiKeyRecord: Read<DB>,
{
    async fn create_api_key(&self, key: NewApiKey) -> Result<ApiKeyRecord> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_keys (id, namespace, name, hash, scopes, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
        )))
        .bind(key.id.as_str())
        .bind(key.namespace.as_str())
        .bind(key.name.as_deref())
        .bind(key.hash.as_str())
        .bind(Scopes(key.scopes.clone()))
        .bind(at(key.now))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if unique_violation_on(&e, "hash") {
                conflict(e, "hash", &key.hash)
            } else {
                conflict(e, "id", &key.id)
            }
        })
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE hash = $1 AND revoked_at IS NULL"
        )))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_api_keys(&self, namespace: &str) -> Result<Vec<ApiKeyRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE namespace = $1 ORDER BY created_at, id"
        )))
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn revoke_api_key(
        &self,
        namespace: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<ApiKeyRecord> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3)
             WHERE namespace = $1 AND id = $2 RETURNING {COLUMNS}"
        )))
        .bind(namespace)
        .bind(id)
        .bind(at(now))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found("api key", id))
    }
}
