//! The audience (`profiles`, `suppressions`, `frequency_caps`,
//! `frequency_counts`, and `cap_scopes`, which a workflow's publication
//! fills): who a journey is about, how to reach them, what
//! they agreed to receive, and how often they may be messaged. The channel
//! workers read it for a whole batch of sends at once ([`AudienceStore::
//! audience_of`]) and reserve the sends a frequency cap counts in one
//! transaction ([`AudienceStore::reserve_sends`]). Every statement is the
//! same on both databases.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{Executor, QueryBuilder};

pub use sojourn_runtime::caps::{FrequencyCap, OnCap};

use crate::Result;
use crate::sql::{Bind, Doc, Instant, Read, Sql, SqlStore, at};

// ---- records -----------------------------------------------------------------

/// How to reach a person, per channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Addresses {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// E.164.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Device tokens (strings) and browser push subscriptions (objects),
    /// newest last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub push: Vec<Value>,
    /// A chat user or channel id (a Slack member id, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<String>,
}

/// What a person agreed to receive. Transactional messages ignore all of
/// it (never the suppression list).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Preferences {
    /// No marketing message on any channel.
    pub opted_out: bool,
    /// Per channel (`email: false`): marketing on that channel.
    pub channels: BTreeMap<String, bool>,
    /// Per category (`newsletter: false`), on every channel.
    pub categories: BTreeMap<String, bool>,
}

impl Preferences {
    /// Why a message of `category` on `channel` may not go, if it may not.
    pub fn refuses(&self, channel: &str, category: &str) -> Option<String> {
        if self.opted_out {
            return Some("the recipient opted out of marketing messages".into());
        }
        if self.channels.get(channel) == Some(&false) {
            return Some(format!("the recipient opted out of {channel} messages"));
        }
        if self.categories.get(category) == Some(&false) {
            return Some(format!("the recipient opted out of {category:?} messages"));
        }
        None
    }
}

/// A profile's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub attributes: Map<String, Value>,
    pub addresses: Addresses,
    pub preferences: Preferences,
    pub timezone: Option<String>,
    pub locale: Option<String>,
}

/// A change to a profile: each field given replaces (or, for the maps,
/// merges into) what is there; a field left out is kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfilePatch {
    /// Merged key by key; a `null` value removes its key.
    pub attributes: Option<Map<String, Value>>,
    /// `Some(None)` clears.
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub chat: Option<Option<String>>,
    /// Replaces the list.
    pub push: Option<Vec<Value>>,
    pub timezone: Option<Option<String>>,
    pub locale: Option<Option<String>>,
    pub opted_out: Option<bool>,
    /// Merged key by key.
    pub channels: BTreeMap<String, bool>,
    pub categories: BTreeMap<String, bool>,
}

impl Profile {
    /// Applies a patch.
    pub fn apply(&mut self, p: &ProfilePatch) {
        if let Some(attrs) = &p.attributes {
            for (k, v) in attrs {
                if v.is_null() {
                    self.attributes.remove(k);
                } else {
                    self.attributes.insert(k.clone(), v.clone());
                }
            }
        }
        let a = &mut self.addresses;
        if let Some(v) = &p.email {
            a.email.clone_from(v);
        }
        if let Some(v) = &p.phone {
            a.phone.clone_from(v);
        }
        if let Some(v) = &p.chat {
            a.chat.clone_from(v);
        }
        if let Some(v) = &p.push {
            a.push.clone_from(v);
        }
        if let Some(v) = &p.timezone {
            self.timezone.clone_from(v);
        }
        if let Some(v) = &p.locale {
            self.locale.clone_from(v);
        }
        let prefs = &mut self.preferences;
        if let Some(v) = p.opted_out {
            prefs.opted_out = v;
        }
        for (k, v) in &p.channels {
            prefs.channels.insert(k.clone(), *v);
        }
        for (k, v) in &p.categories {
            prefs.categories.insert(k.clone(), *v);
        }
    }
}

/// A stored profile.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProfileRecord {
    pub namespace: String,
    pub subject: String,
    #[sqlx(json)]
    pub attributes: Map<String, Value>,
    #[sqlx(json)]
    pub addresses: Addresses,
    #[sqlx(json)]
    pub preferences: Preferences,
    pub timezone: Option<String>,
    pub locale: Option<String>,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "Instant")]
    pub updated_at: DateTime<Utc>,
}

impl ProfileRecord {
    pub fn profile(&self) -> Profile {
        Profile {
            attributes: self.attributes.clone(),
            addresses: self.addresses.clone(),
            preferences: self.preferences.clone(),
            timezone: self.timezone.clone(),
            locale: self.locale.clone(),
        }
    }
}

/// An address on the suppression list.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Suppression {
    pub namespace: String,
    pub channel: String,
    /// Normalized (see [`normalize_address`]).
    pub address: String,
    /// `bounced`, `complained`, `unsubscribed` or `manual`.
    pub reason: String,
    pub detail: Option<String>,
    #[sqlx(try_from = "Instant")]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
#[doc(hidden)]
pub struct NamespacedCap {
    namespace: String,
    #[sqlx(flatten)]
    cap: CapRow,
}

#[derive(Debug, sqlx::FromRow)]
#[doc(hidden)]
pub struct CapRow {
    channel: String,
    category: String,
    max_sends: i32,
    window_seconds: i64,
    on_cap: String,
}

/// One send a cap counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[doc(hidden)]
pub struct Counted {
    /// `execution/node`: a retry of the same node replaces its entry.
    key: String,
    channel: String,
    category: String,
    at: DateTime<Utc>,
}

/// A send that caps may count: the subject's, under `key`
/// (`execution/node`).
#[derive(Debug, Clone, PartialEq)]
pub struct CapRequest {
    pub subject: String,
    pub key: String,
    pub channel: String,
    pub category: String,
    /// The caps that decide this send when its workflow overrides the
    /// namespace's (see `WorkflowCaps::over`); `None`: the namespace's.
    pub caps: Option<Arc<[FrequencyCap]>>,
}

/// Sends of `channel` and `category` (`*`: any) that a workflow's own caps
/// count: counted and kept `window_seconds` in the namespace, whichever
/// journey makes them and whatever the namespace's caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapScope {
    pub channel: String,
    pub category: String,
    pub window_seconds: u64,
}

/// What counts a send and how long: a cap or a scope.
trait Counts: Sync {
    fn counts(&self, channel: &str, category: &str) -> bool;
    fn window_seconds(&self) -> u64;
}

impl Counts for FrequencyCap {
    fn counts(&self, channel: &str, category: &str) -> bool {
        FrequencyCap::counts(self, channel, category)
    }
    fn window_seconds(&self) -> u64 {
        self.window_seconds
    }
}

impl Counts for CapScope {
    fn counts(&self, channel: &str, category: &str) -> bool {
        sojourn_runtime::caps::matches(&self.channel, &self.category, channel, category)
    }
    fn window_seconds(&self) -> u64 {
        self.window_seconds
    }
}

impl CapRequest {
    fn decided_by<'a>(&'a self, namespace: &'a [FrequencyCap]) -> &'a [FrequencyCap] {
        self.caps.as_deref().unwrap_or(namespace)
    }
}

/// What the caps say of a send.
#[derive(Debug, Clone, PartialEq)]
pub enum CapVerdict {
    /// Counted: it may go.
    Allowed,
    /// Over a cap until `until`.
    Capped {
        until: DateTime<Utc>,
        on_cap: OnCap,
        cap: String,
    },
}

/// What the workers need to know of a batch's recipients.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AudienceFacts {
    /// By execution id: its namespace and subject.
    pub executions: HashMap<String, (String, Option<String>)>,
    /// By (namespace, subject).
    pub profiles: HashMap<(String, String), Profile>,
    /// (namespace, address) of the channel that are suppressed, with why
    /// (`unsubscribed` holds back marketing only).
    pub suppressed: HashMap<(String, String), String>,
    /// By namespace (only namespaces that have some).
    pub caps: HashMap<String, Vec<FrequencyCap>>,
    /// By namespace: the sends its workflows' own caps count.
    pub scopes: HashMap<String, Vec<CapScope>>,
}

/// What an erasure removed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Erased {
    pub profile: bool,
    /// The subject's executions that have not finished (to cancel).
    pub running: Vec<String>,
}

/// An address as the suppression list keys it: an email's bare address in
/// lower case (`Ann <Ann@X.org>` is `ann@x.org`), anything else trimmed.
pub fn normalize_address(channel: &str, address: &str) -> String {
    let a = address.trim();
    if channel == "email" {
        let bare = match (a.rfind('<'), a.rfind('>')) {
            (Some(l), Some(r)) if l < r => &a[l + 1..r],
            _ => a,
        };
        bare.trim().to_lowercase()
    } else {
        a.to_owned()
    }
}

// ---- the trait ---------------------------------------------------------------

/// Profiles, suppressions and frequency caps.
pub trait AudienceStore: Send + Sync {
    /// Writes profiles in one transaction: each patch applied to the
    /// subject's profile (to an empty one with `replace`, or when there is
    /// none). Returns the profiles as written, in order.
    fn write_profiles(
        &self,
        namespace: &str,
        patches: &[(String, ProfilePatch)],
        replace: bool,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<ProfileRecord>>> + Send;

    fn get_profile(
        &self,
        namespace: &str,
        subject: &str,
    ) -> impl Future<Output = Result<Option<ProfileRecord>>> + Send;

    /// A namespace's profiles by subject, after `after`.
    fn list_profiles(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ProfileRecord>>> + Send;

    /// Erases a subject (a right-to-erasure request): its profile and what
    /// its caps counted go, the recipients of its deliveries are blanked,
    /// in one transaction. Returns its executions still running.
    fn erase_profile(
        &self,
        namespace: &str,
        subject: &str,
    ) -> impl Future<Output = Result<Erased>> + Send;

    /// Adds addresses to the suppression list (one kept per address: the
    /// first reason).
    fn add_suppressions(&self, rows: &[Suppression]) -> impl Future<Output = Result<()>> + Send;

    /// Removes an address; whether it was there.
    fn remove_suppression(
        &self,
        namespace: &str,
        channel: &str,
        address: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Undoes an unsubscribe link's own opt-out of an address (reason
    /// `unsubscribed`); a bounce, a complaint or an operator's entry stays.
    /// Whether one was removed.
    fn resubscribe(
        &self,
        namespace: &str,
        channel: &str,
        address: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// A namespace's suppressions (of one channel, if given), by channel
    /// and address, after `after` (`channel/address`).
    fn list_suppressions(
        &self,
        namespace: &str,
        channel: Option<&str>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Suppression>>> + Send;

    /// Replaces a namespace's frequency caps.
    fn put_frequency_caps(
        &self,
        namespace: &str,
        caps: &[FrequencyCap],
    ) -> impl Future<Output = Result<()>> + Send;

    fn frequency_caps(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<FrequencyCap>>> + Send;

    /// What a batch of sends on `channel` needs: each execution's namespace
    /// and subject, the subjects' profiles, which of `addresses` (and the
    /// profiles' addresses for the channel) are suppressed, the namespaces'
    /// caps and cap scopes of the channel (or `*`). Four reads, whatever
    /// the batch's size.
    fn audience_of(
        &self,
        channel: &str,
        executions: &[&str],
        addresses: &[String],
    ) -> impl Future<Output = Result<AudienceFacts>> + Send;

    /// Counts sends against caps, atomically: each subject's row is locked
    /// while its sends are counted, so two workers sending for one person
    /// take turns and never pass a cap together. A send is decided by its
    /// own caps (`CapRequest::caps`) or the namespace's `caps`; it is
    /// counted if those, the namespace's caps or a `scopes` entry count it,
    /// unless a cap refuses it; a counted send is kept as long as something
    /// that counts it looks back.
    fn reserve_sends(
        &self,
        namespace: &str,
        caps: &[FrequencyCap],
        scopes: &[CapScope],
        requests: &[CapRequest],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<CapVerdict>>> + Send;

    /// Forgets counted sends that did not go (`(subject, key)`).
    fn release_sends(
        &self,
        namespace: &str,
        sends: &[(String, String)],
    ) -> impl Future<Output = Result<()>> + Send;
}

const PROFILE_COLUMNS: &str = "namespace, subject, attributes, addresses, preferences, timezone, locale, created_at, updated_at";

const SUPPRESSION_COLUMNS: &str = "namespace, channel, address, reason, detail, created_at";

/// Rows per statement (SQLite binds at most 32,766 values). The statements
/// made of `IN (…)` or `VALUES` lists are not kept prepared
/// (`persistent(false)`): PostgreSQL plans each with its values, where a
/// cached generic plan chose sequential scans that grew with the table.
const CHUNK: usize = 500;

impl<DB> AudienceStore for SqlStore<DB>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
    for<'q> i64: Bind<'q, DB>,
    for<'q> i32: Bind<'q, DB>,
    for<'q> Doc: Bind<'q, DB>,
    ProfileRecord: Read<DB>,
    Suppression: Read<DB>,
    CapRow: Read<DB>,
    NamespacedCap: Read<DB>,
    (String,): Read<DB>,
    (String, String): Read<DB>,
    (String, String, String): Read<DB>,
    (String, String, Option<String>): Read<DB>,
    (String, String, sqlx::types::Json<Vec<Counted>>): Read<DB>,
    (String, Option<String>, i32): Read<DB>,
    (i64,): Read<DB>,
    for<'q> bool: Bind<'q, DB>,
{
    async fn write_profiles(
        &self,
        namespace: &str,
        patches: &[(String, ProfilePatch)],
        replace: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<ProfileRecord>> {
        let mut tx = self.pool.begin().await?;
        // Segments first (share-locked), then the profiles, in one order
        // everywhere (see `segments::expression_segments`).
        let segments = crate::segments::expression_segments::<DB>(&mut tx, namespace).await?;
        let mut written = Vec::with_capacity(patches.len());
        for chunk in patches.chunks(CHUNK) {
            // A row for each subject first (a new subject's too, so that two
            // writers of one new subject take turns instead of the second
            // overwriting the first), in subject order (no deadlock between
            // two batches); then the rows, locked until the transaction ends.
            let mut subjects: Vec<&str> = chunk.iter().map(|(s, _)| s.as_str()).collect();
            subjects.sort_unstable();
            subjects.dedup();
            let mut q = QueryBuilder::<DB>::new("INSERT INTO profiles (");
            q.push(PROFILE_COLUMNS).push(") ");
            q.push_values(&subjects, |mut b, s| {
                b.push_bind(namespace)
                    .push_bind(*s)
                    .push_bind(Doc("{}".into()))
                    .push_bind(Doc("{}".into()))
                    .push_bind(Doc("{}".into()))
                    .push_bind(None::<&str>)
                    .push_bind(None::<&str>)
                    .push_bind(at(now))
                    .push_bind(at(now));
            });
            q.push(" ON CONFLICT (namespace, subject) DO NOTHING RETURNING subject");
            let created: Vec<(String,)> = q
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await?;
            let created: std::collections::HashSet<String> =
                created.into_iter().map(|(s,)| s).collect();
            let mut have: HashMap<String, ProfileRecord> = HashMap::new();
            {
                let mut q = QueryBuilder::<DB>::new("SELECT ");
                q.push(PROFILE_COLUMNS)
                    .push(" FROM profiles WHERE namespace = ")
                    .push_bind(namespace)
                    .push(" AND subject IN (");
                let mut list = q.separated(", ");
                for s in &subjects {
                    list.push_bind(*s);
                }
                q.push(") ORDER BY subject").push(DB::FOR_UPDATE);
                let rows: Vec<ProfileRecord> = q
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await?;
                have.extend(rows.into_iter().map(|r| (r.subject.clone(), r)));
            }
            // One row per subject: a subject twice in a batch gets both
            // patches, in order.
            let mut next: Vec<ProfileRecord> = Vec::with_capacity(chunk.len());
            let mut at_index: HashMap<&str, usize> = HashMap::new();
            for (subject, patch) in chunk {
                if let Some(&i) = at_index.get(subject.as_str()) {
                    let mut p = next[i].profile();
                    p.apply(patch);
                    set(&mut next[i], p);
                    continue;
                }
                // A row made just now is no profile yet; `replace` keeps
                // only when the profile was first made.
                let (mut p, created_at) = match have.get(subject) {
                    Some(r) if replace || created.contains(subject) => {
                        (Profile::default(), r.created_at)
                    }
                    Some(r) => (r.profile(), r.created_at),
                    None => (Profile::default(), now),
                };
                p.apply(patch);
                let mut rec = ProfileRecord {
                    namespace: namespace.to_owned(),
                    subject: subject.clone(),
                    attributes: Map::new(),
                    addresses: Addresses::default(),
                    preferences: Preferences::default(),
                    timezone: None,
                    locale: None,
                    created_at,
                    updated_at: now,
                };
                set(&mut rec, p);
                at_index.insert(subject.as_str(), next.len());
                next.push(rec);
            }
            let mut q = QueryBuilder::<DB>::new("INSERT INTO profiles (");
            q.push(PROFILE_COLUMNS).push(") ");
            q.push_values(&next, |mut b, r| {
                b.push_bind(r.namespace.as_str())
                    .push_bind(r.subject.as_str())
                    .push_bind(Doc(serde_json::to_string(&r.attributes).unwrap_or_default()))
                    .push_bind(Doc(serde_json::to_string(&r.addresses).unwrap_or_default()))
                    .push_bind(Doc(
                        serde_json::to_string(&r.preferences).unwrap_or_default()
                    ))
                    .push_bind(r.timezone.as_deref())
                    .push_bind(r.locale.as_deref())
                    .push_bind(at(r.created_at))
                    .push_bind(at(r.updated_at));
            });
            q.push(
                " ON CONFLICT (namespace, subject) DO UPDATE SET
                    attributes = excluded.attributes, addresses = excluded.addresses,
                    preferences = excluded.preferences, timezone = excluded.timezone,
                    locale = excluded.locale, updated_at = excluded.updated_at",
            );
            q.build().persistent(false).execute(&mut *tx).await?;
            let refreshed: Vec<(&str, &Map<String, Value>)> = next
                .iter()
                .map(|r| (r.subject.as_str(), &r.attributes))
                .collect();
            crate::segments::refresh_memberships::<DB>(
                &mut tx, namespace, &segments, &refreshed, now,
            )
            .await?;
            // In the order asked, once per patch.
            for (subject, _) in chunk {
                if let Some(&i) = at_index.get(subject.as_str()) {
                    written.push(next[i].clone());
                }
            }
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn get_profile(&self, namespace: &str, subject: &str) -> Result<Option<ProfileRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PROFILE_COLUMNS} FROM profiles WHERE namespace = $1 AND subject = $2"
        )))
        .bind(namespace)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_profiles(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ProfileRecord>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PROFILE_COLUMNS} FROM profiles WHERE namespace = $1 AND subject > $2
             ORDER BY subject LIMIT $3"
        )))
        .bind(namespace)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn erase_profile(&self, namespace: &str, subject: &str) -> Result<Erased> {
        let mut tx = self.pool.begin().await?;
        let gone: Option<(String,)> = sqlx::query_as(
            "DELETE FROM profiles WHERE namespace = $1 AND subject = $2 RETURNING subject",
        )
        .bind(namespace)
        .bind(subject)
        .fetch_optional(&mut *tx)
        .await?;
        for table in ["frequency_counts", "segment_members", "segment_changes"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE namespace = $1 AND subject = $2"
            )))
            .bind(namespace)
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        }
        // Through the workflows of the namespace: the index on executions
        // is (workflow_id, subject).
        let of_subject = "SELECT e.id FROM executions e JOIN workflows w ON w.id = e.workflow_id
             WHERE w.namespace = $1 AND e.subject = $2";
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE deliveries SET recipient = '[erased]'
             WHERE execution_id IN ({of_subject})"
        )))
        .bind(namespace)
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        let running: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{of_subject} AND e.status NOT IN ('completed', 'failed', 'cancelled') ORDER BY e.id"
        )))
        .bind(namespace)
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Erased {
            profile: gone.is_some(),
            running: running.into_iter().map(|(id,)| id).collect(),
        })
    }

    async fn add_suppressions(&self, rows: &[Suppression]) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        insert_suppressions::<DB>(&mut conn, rows).await
    }

    async fn remove_suppression(
        &self,
        namespace: &str,
        channel: &str,
        address: &str,
    ) -> Result<bool> {
        delete_suppression(&self.pool, namespace, channel, address, false).await
    }

    async fn resubscribe(&self, namespace: &str, channel: &str, address: &str) -> Result<bool> {
        delete_suppression(&self.pool, namespace, channel, address, true).await
    }

    async fn list_suppressions(
        &self,
        namespace: &str,
        channel: Option<&str>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<Suppression>> {
        let mut q = QueryBuilder::<DB>::new("SELECT ");
        q.push(SUPPRESSION_COLUMNS)
            .push(" FROM suppressions WHERE namespace = ")
            .push_bind(namespace);
        if let Some(c) = channel {
            q.push(" AND channel = ").push_bind(c);
        }
        if let Some((c, a)) = after {
            q.push(" AND (channel > ")
                .push_bind(c)
                .push(" OR (channel = ")
                .push_bind(c)
                .push(" AND address > ")
                .push_bind(a)
                .push("))");
        }
        q.push(" ORDER BY channel, address LIMIT ")
            .push_bind(i64::from(limit));
        Ok(q.build_query_as()
            .persistent(false)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn put_frequency_caps(&self, namespace: &str, caps: &[FrequencyCap]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM frequency_caps WHERE namespace = $1")
            .bind(namespace)
            .execute(&mut *tx)
            .await?;
        if !caps.is_empty() {
            let mut q = QueryBuilder::<DB>::new(
                "INSERT INTO frequency_caps (namespace, channel, category, max_sends, window_seconds, on_cap) ",
            );
            q.push_values(caps, |mut b, c| {
                b.push_bind(namespace)
                    .push_bind(c.channel.as_str())
                    .push_bind(c.category.as_str())
                    .push_bind(i32::try_from(c.max_sends).unwrap_or(i32::MAX))
                    .push_bind(i64::try_from(c.window_seconds).unwrap_or(i64::MAX))
                    .push_bind(c.on_cap.as_str());
            });
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn frequency_caps(&self, namespace: &str) -> Result<Vec<FrequencyCap>> {
        let rows: Vec<CapRow> = sqlx::query_as(
            "SELECT channel, category, max_sends, window_seconds, on_cap FROM frequency_caps
             WHERE namespace = $1 ORDER BY channel, category, window_seconds",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(cap_of).collect())
    }

    async fn audience_of(
        &self,
        channel: &str,
        executions: &[&str],
        addresses: &[String],
    ) -> Result<AudienceFacts> {
        let mut facts = AudienceFacts::default();
        if executions.is_empty() {
            return Ok(facts);
        }
        let mut q =
            QueryBuilder::<DB>::new("SELECT id, namespace, subject FROM executions WHERE id IN (");
        let mut list = q.separated(", ");
        for id in executions {
            list.push_bind(*id);
        }
        q.push(")");
        let rows: Vec<(String, String, Option<String>)> = q
            .build_query_as()
            .persistent(false)
            .fetch_all(&self.pool)
            .await?;
        let mut by_namespace: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (_, ns, subject) in &rows {
            let subjects = by_namespace.entry(ns.as_str()).or_default();
            if let Some(s) = subject
                && !subjects.contains(&s.as_str())
            {
                subjects.push(s.as_str());
            }
        }
        let mut candidates: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (ns, subjects) in &by_namespace {
            let mut found: Vec<ProfileRecord> = Vec::new();
            for chunk in subjects.chunks(CHUNK) {
                let mut q = QueryBuilder::<DB>::new("SELECT ");
                q.push(PROFILE_COLUMNS)
                    .push(" FROM profiles WHERE namespace = ")
                    .push_bind(*ns)
                    .push(" AND subject IN (");
                let mut list = q.separated(", ");
                for s in chunk {
                    list.push_bind(*s);
                }
                q.push(")");
                found.extend(
                    q.build_query_as::<ProfileRecord>()
                        .fetch_all(&self.pool)
                        .await?,
                );
            }
            let c = candidates.entry(*ns).or_default();
            c.extend(addresses.iter().cloned());
            for r in found {
                let p = r.profile();
                c.extend(
                    addresses_of(&p.addresses, channel)
                        .into_iter()
                        .map(|a| normalize_address(channel, &a)),
                );
                facts.profiles.insert((r.namespace, r.subject), p);
            }
        }
        for (ns, list) in &mut candidates {
            list.sort();
            list.dedup();
            for chunk in list.chunks(CHUNK) {
                let mut q = QueryBuilder::<DB>::new(
                    "SELECT namespace, address, reason FROM suppressions WHERE namespace = ",
                );
                q.push_bind(*ns)
                    .push(" AND channel = ")
                    .push_bind(channel)
                    .push(" AND address IN (");
                let mut sep = q.separated(", ");
                for a in chunk {
                    sep.push_bind(a.as_str());
                }
                q.push(")");
                let hits: Vec<(String, String, String)> = q
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(&self.pool)
                    .await?;
                facts
                    .suppressed
                    .extend(hits.into_iter().map(|(n, a, r)| ((n, a), r)));
            }
        }
        if by_namespace.is_empty() {
            facts.executions = rows
                .into_iter()
                .map(|(id, ns, subject)| (id, (ns, subject)))
                .collect();
            return Ok(facts);
        }
        // The caps and the scopes of the workflows' own caps, in one read
        // (a scope is a row with `on_cap` = 'scope').
        let mut q = QueryBuilder::<DB>::new(
            "SELECT namespace, channel, category, max_sends, window_seconds, on_cap FROM frequency_caps
             WHERE channel IN (",
        );
        q.push_bind(channel).push(", '*') AND namespace IN (");
        let mut sep = q.separated(", ");
        for ns in by_namespace.keys() {
            sep.push_bind(*ns);
        }
        q.push(
            ") UNION ALL SELECT namespace, channel, category, 1, window_seconds, 'scope' FROM cap_scopes
             WHERE channel IN (",
        );
        q.push_bind(channel).push(", '*') AND namespace IN (");
        let mut sep = q.separated(", ");
        for ns in by_namespace.keys() {
            sep.push_bind(*ns);
        }
        q.push(")");
        let caps: Vec<NamespacedCap> = q
            .build_query_as()
            .persistent(false)
            .fetch_all(&self.pool)
            .await?;
        for r in caps {
            if r.cap.on_cap == "scope" {
                facts.scopes.entry(r.namespace).or_default().push(CapScope {
                    channel: r.cap.channel,
                    category: r.cap.category,
                    window_seconds: u64::try_from(r.cap.window_seconds)
                        .unwrap_or(0)
                        .min(sojourn_runtime::caps::MAX_WINDOW_SECONDS),
                });
            } else {
                facts
                    .caps
                    .entry(r.namespace)
                    .or_default()
                    .push(cap_of(r.cap));
            }
        }
        facts.executions = rows
            .into_iter()
            .map(|(id, ns, subject)| (id, (ns, subject)))
            .collect();
        Ok(facts)
    }

    async fn reserve_sends(
        &self,
        namespace: &str,
        caps: &[FrequencyCap],
        scopes: &[CapScope],
        requests: &[CapRequest],
        now: DateTime<Utc>,
    ) -> Result<Vec<CapVerdict>> {
        let mut verdicts = vec![CapVerdict::Allowed; requests.len()];
        // Everything that counts some send: a workflow exempt from a cap
        // still adds to the others' counts.
        let mut counters: Vec<&dyn Counts> = Vec::new();
        counters.extend(caps.iter().map(|c| c as &dyn Counts));
        counters.extend(scopes.iter().map(|c| c as &dyn Counts));
        // The requests of one workflow share their caps (one `Arc`).
        let mut own: Vec<&Arc<[FrequencyCap]>> = Vec::new();
        for c in requests.iter().filter_map(|r| r.caps.as_ref()) {
            if !own.iter().any(|o| Arc::ptr_eq(o, c)) {
                own.push(c);
            }
        }
        counters.extend(
            own.iter()
                .flat_map(|c| c.iter())
                .filter(|c| !caps.contains(c))
                .map(|c| c as &dyn Counts),
        );
        let counted: Vec<usize> = requests
            .iter()
            .enumerate()
            .filter(|(_, r)| counters.iter().any(|c| c.counts(&r.channel, &r.category)))
            .map(|(i, _)| i)
            .collect();
        if counted.is_empty() {
            return Ok(verdicts);
        }
        let mut subjects: Vec<&str> = counted
            .iter()
            .map(|&i| requests[i].subject.as_str())
            .collect();
        // Locked in one order everywhere: two batches never wait on each
        // other in a circle.
        subjects.sort_unstable();
        subjects.dedup();
        let mut tx = self.pool.begin().await?;
        let mut rows: HashMap<String, Vec<Counted>> = HashMap::new();
        for chunk in subjects.chunks(CHUNK) {
            let mut q = QueryBuilder::<DB>::new(
                "INSERT INTO frequency_counts (namespace, subject, sends, updated_at) ",
            );
            q.push_values(chunk, |mut b, s| {
                b.push_bind(namespace)
                    .push_bind(*s)
                    .push_bind(Doc("[]".into()))
                    .push_bind(at(now));
            });
            q.push(" ON CONFLICT (namespace, subject) DO NOTHING");
            q.build().persistent(false).execute(&mut *tx).await?;
            let mut q = QueryBuilder::<DB>::new(
                "SELECT namespace, subject, sends FROM frequency_counts WHERE namespace = ",
            );
            q.push_bind(namespace).push(" AND subject IN (");
            let mut sep = q.separated(", ");
            for s in chunk {
                sep.push_bind(*s);
            }
            q.push(") ORDER BY subject").push(DB::FOR_UPDATE);
            let got: Vec<(String, String, sqlx::types::Json<Vec<Counted>>)> = q
                .build_query_as()
                .persistent(false)
                .fetch_all(&mut *tx)
                .await?;
            rows.extend(got.into_iter().map(|(_, s, j)| (s, j.0)));
        }
        // A send is kept while something that counts it looks back that far.
        let cutoffs: Vec<(&dyn Counts, DateTime<Utc>)> = counters
            .iter()
            .map(|k| (*k, now - window(k.window_seconds())))
            .collect();
        for sends in rows.values_mut() {
            sends.retain(|c| {
                cutoffs
                    .iter()
                    .any(|(k, cutoff)| c.at > *cutoff && k.counts(&c.channel, &c.category))
            });
        }
        for &i in &counted {
            let r = &requests[i];
            let Some(sends) = rows.get_mut(&r.subject) else {
                continue;
            };
            // A retry of a node already counted replaces its entry.
            sends.retain(|c| c.key != r.key);
            if let Some(v) = over_cap(r.decided_by(caps), sends, r, now) {
                verdicts[i] = v;
                continue;
            }
            sends.push(Counted {
                key: r.key.clone(),
                channel: r.channel.clone(),
                category: r.category.clone(),
                at: now,
            });
        }
        // One statement for the batch (the rows exist and are locked).
        let updated: Vec<(&String, Doc)> = rows
            .iter()
            .map(|(s, sends)| Ok((s, Doc::of("counted sends", sends)?)))
            .collect::<Result<_>>()?;
        for chunk in updated.chunks(CHUNK) {
            let mut q = QueryBuilder::<DB>::new(
                "INSERT INTO frequency_counts (namespace, subject, sends, updated_at) ",
            );
            q.push_values(chunk, |mut b, (s, doc)| {
                b.push_bind(namespace)
                    .push_bind(s.as_str())
                    .push_bind(doc.clone())
                    .push_bind(at(now));
            });
            q.push(
                " ON CONFLICT (namespace, subject) DO UPDATE SET
                    sends = excluded.sends, updated_at = excluded.updated_at",
            );
            q.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(verdicts)
    }

    async fn release_sends(&self, namespace: &str, sends: &[(String, String)]) -> Result<()> {
        if sends.is_empty() {
            return Ok(());
        }
        let mut by_subject: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (s, k) in sends {
            by_subject.entry(s.as_str()).or_default().push(k.as_str());
        }
        let mut tx = self.pool.begin().await?;
        for (subject, keys) in by_subject {
            let row: Option<(String, String, sqlx::types::Json<Vec<Counted>>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT namespace, subject, sends FROM frequency_counts
                     WHERE namespace = $1 AND subject = $2{}",
                    DB::FOR_UPDATE
                )))
                .bind(namespace)
                .bind(subject)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((_, _, mut counted)) = row else {
                continue;
            };
            let before = counted.0.len();
            counted.0.retain(|c| !keys.contains(&c.key.as_str()));
            if counted.0.len() != before {
                sqlx::query(
                    "UPDATE frequency_counts SET sends = $1 WHERE namespace = $2 AND subject = $3",
                )
                .bind(Doc::of("counted sends", &counted.0)?)
                .bind(namespace)
                .bind(subject)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Adds addresses to the suppression list, in statements of [`CHUNK`]
/// rows (one kept per address: the first reason). Also what a status
/// report's bounces and complaints go through, in its transaction.
pub(crate) async fn insert_suppressions<DB>(
    conn: &mut DB::Connection,
    rows: &[Suppression],
) -> Result<()>
where
    DB: Sql,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    for<'a> Option<&'a str>: Bind<'a, DB>,
    for<'q> Instant: Bind<'q, DB>,
{
    for chunk in rows.chunks(CHUNK) {
        let mut q = QueryBuilder::<DB>::new("INSERT INTO suppressions (");
        q.push(SUPPRESSION_COLUMNS).push(") ");
        q.push_values(chunk, |mut b, s| {
            b.push_bind(s.namespace.as_str())
                .push_bind(s.channel.as_str())
                .push_bind(s.address.as_str())
                .push_bind(s.reason.as_str())
                .push_bind(s.detail.as_deref())
                .push_bind(at(s.created_at));
        });
        // One row per address, the first reason kept, except that a
        // bounce, a complaint or an operator's entry replaces a link's own
        // opt-out (which holds back marketing only, and can be undone).
        q.push(
            " ON CONFLICT (namespace, channel, address) DO UPDATE SET
                reason = excluded.reason, detail = excluded.detail, created_at = excluded.created_at
              WHERE suppressions.reason = 'unsubscribed' AND excluded.reason <> 'unsubscribed'",
        );
        q.build().persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes an address from the suppression list (only a link's own
/// opt-out when `unsubscribed_only`); whether it was there.
async fn delete_suppression<DB>(
    pool: &sqlx::Pool<DB>,
    namespace: &str,
    channel: &str,
    address: &str,
    unsubscribed_only: bool,
) -> Result<bool>
where
    DB: Sql,
    for<'c> &'c sqlx::Pool<DB>: Executor<'c, Database = DB>,
    for<'a> &'a str: Bind<'a, DB>,
    (String,): Read<DB>,
{
    let only = if unsubscribed_only {
        " AND reason = 'unsubscribed'"
    } else {
        ""
    };
    let gone: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM suppressions WHERE namespace = $1 AND channel = $2 AND address = $3{only}
         RETURNING address"
    )))
    .bind(namespace)
    .bind(channel)
    .bind(address)
    .fetch_optional(pool)
    .await?;
    Ok(gone.is_some())
}

fn set(rec: &mut ProfileRecord, p: Profile) {
    rec.attributes = p.attributes;
    rec.addresses = p.addresses;
    rec.preferences = p.preferences;
    rec.timezone = p.timezone;
    rec.locale = p.locale;
}

/// A stored cap, within the bounds the API allows (a row edited by hand
/// cannot make the arithmetic below overflow).
fn cap_of(r: CapRow) -> FrequencyCap {
    FrequencyCap {
        channel: r.channel,
        category: r.category,
        max_sends: u32::try_from(r.max_sends).unwrap_or(1).clamp(1, 10_000),
        window_seconds: u64::try_from(r.window_seconds)
            .unwrap_or(60)
            .clamp(1, 366 * 86_400),
        on_cap: if r.on_cap == "defer" {
            OnCap::Defer
        } else {
            OnCap::Skip
        },
    }
}

/// A profile's addresses for a channel (push: every device, newest last).
pub fn addresses_of(a: &Addresses, channel: &str) -> Vec<String> {
    match channel {
        "email" => a.email.iter().cloned().collect(),
        "sms" => a.phone.iter().cloned().collect(),
        "chat" => a.chat.iter().cloned().collect(),
        "push" => a
            .push
            .iter()
            .filter_map(|p| match p {
                Value::String(t) => Some(t.clone()),
                Value::Object(o) => o.get("endpoint").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A window as a duration, at most the longest a cap may have.
fn window(seconds: u64) -> Duration {
    Duration::seconds(
        i64::try_from(seconds.min(sojourn_runtime::caps::MAX_WINDOW_SECONDS)).unwrap_or(0),
    )
}

/// The first cap `r` would pass, with when it allows the next send.
fn over_cap(
    caps: &[FrequencyCap],
    sends: &[Counted],
    r: &CapRequest,
    now: DateTime<Utc>,
) -> Option<CapVerdict> {
    let mut worst: Option<CapVerdict> = None;
    for cap in caps.iter().filter(|c| c.counts(&r.channel, &r.category)) {
        let window = window(cap.window_seconds);
        // Within the bounds the checks allow (a cap that came from
        // elsewhere cannot make the arithmetic below fail).
        let max_sends = cap.max_sends.max(1);
        let mut inside: Vec<DateTime<Utc>> = sends
            .iter()
            .filter(|c| cap.counts(&c.channel, &c.category) && c.at > now - window)
            .map(|c| c.at)
            .collect();
        if inside.len() < max_sends as usize {
            continue;
        }
        // The send that frees a place is the one that leaves the window
        // first among those that keep it full.
        inside.sort_unstable();
        let freeing = inside[inside.len() - max_sends as usize];
        let until = freeing + window;
        let later = match &worst {
            Some(CapVerdict::Capped { until: u, .. }) => until > *u,
            _ => true,
        };
        if later {
            worst = Some(CapVerdict::Capped {
                until,
                on_cap: cap.on_cap,
                cap: format!(
                    "at most {} {} {} per {}",
                    cap.max_sends,
                    if cap.category == "*" {
                        ""
                    } else {
                        cap.category.as_str()
                    },
                    if cap.channel == "*" {
                        "messages".to_owned()
                    } else {
                        format!("{} messages", cap.channel)
                    },
                    sojourn_runtime::caps::describe_window(cap.window_seconds)
                )
                .replace("  ", " "),
            });
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(channel: &str, category: &str, max: u32, window: u64) -> FrequencyCap {
        FrequencyCap {
            channel: channel.into(),
            category: category.into(),
            max_sends: max,
            window_seconds: window,
            on_cap: OnCap::Skip,
        }
    }

    #[test]
    fn a_cap_counts_its_window_and_names_when_it_frees() {
        let now = Utc::now();
        let sent = |key: &str, ago: i64, category: &str| Counted {
            key: key.into(),
            channel: "email".into(),
            category: category.into(),
            at: now - Duration::hours(ago),
        };
        let caps = [cap("email", "marketing", 2, 86_400)];
        let req = CapRequest {
            subject: "u".into(),
            key: "k".into(),
            channel: "email".into(),
            category: "marketing".into(),
            caps: None,
        };
        // Two inside the day: capped until the older leaves it.
        let sends = [sent("a", 5, "marketing"), sent("b", 2, "marketing")];
        match over_cap(&caps, &sends, &req, now) {
            Some(CapVerdict::Capped { until, cap, .. }) => {
                assert_eq!(until, now - Duration::hours(5) + Duration::days(1));
                assert_eq!(cap, "at most 2 marketing email messages per day");
            }
            other => panic!("{other:?}"),
        }
        // One is older than the window, one is another category.
        let sends = [sent("a", 30, "marketing"), sent("b", 2, "receipts")];
        assert_eq!(over_cap(&caps, &sends, &req, now), None);
    }

    #[test]
    fn addresses_normalize_for_the_suppression_list() {
        assert_eq!(normalize_address("email", " Ann <Ann@X.org> "), "ann@x.org");
        assert_eq!(normalize_address("email", "BOB@y.z"), "bob@y.z");
        assert_eq!(normalize_address("sms", " +33612345678 "), "+33612345678");
    }

    #[test]
    fn patches_merge_attributes_and_preferences() {
        let mut p = Profile::default();
        p.apply(&ProfilePatch {
            attributes: Some(
                serde_json::from_str(r#"{"plan":"pro","age":3}"#).expect("test value"),
            ),
            email: Some(Some("a@b.c".into())),
            ..Default::default()
        });
        p.apply(&ProfilePatch {
            attributes: Some(
                serde_json::from_str(r#"{"age":null,"vip":true}"#).expect("test value"),
            ),
            categories: [("newsletter".to_owned(), false)].into(),
            ..Default::default()
        });
        assert_eq!(
            Value::Object(p.attributes.clone()),
            serde_json::json!({"plan":"pro","vip":true})
        );
        assert_eq!(p.addresses.email.as_deref(), Some("a@b.c"));
        assert!(p.preferences.refuses("email", "newsletter").is_some());
        assert!(p.preferences.refuses("email", "marketing").is_none());
    }
}
