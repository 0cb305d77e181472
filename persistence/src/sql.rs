//! What lets a statement be written once for both databases.
//!
//! [`SqlStore`] is the store, generic over the sqlx database: `PgStore` is
//! `SqlStore<Postgres>`, `SqliteStore` is `SqlStore<Sqlite>`. An area
//! implements its trait once for every `SqlStore<DB>` where the two dialects
//! agree (sqlx binds `$1…` on both), and hands the statements that differ to
//! a small per-area trait implemented for `Postgres` and `Sqlite` in the
//! area's `postgres.rs` / `sqlite.rs`.
//!
//! The two schemas store some columns differently; the column types here
//! hide that, so one `#[derive(sqlx::FromRow)]` reads a row on both:
//!
//! | column type | PostgreSQL | SQLite |
//! |---|---|---|
//! | [`Instant`], [`MaybeInstant`] | `timestamptz` | INTEGER milliseconds |
//! | [`Doc`] (binds), `Json<T>` (reads), [`MaybeDoc`] | `jsonb` | TEXT |
//! | [`Scopes`] | `text[]` | TEXT (a JSON array) |
//!
//! Generic code must name every bound it uses (Rust does not imply bounds
//! on other types from a trait's `where` clause), so each area's `impl`
//! lists what it binds ([`Bind`]) and reads ([`Read`]).

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sojourn_runtime::Status;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};
use sqlx::types::Json;
use sqlx::{Database, Decode, Encode, FromRow, IntoArguments, Pool, Postgres, Sqlite, Type};

use crate::Result;
use crate::error::Error;

/// A store on a sqlx database: PostgreSQL ([`crate::PgStore`]) or SQLite
/// ([`crate::SqliteStore`]).
#[derive(Debug)]
pub struct SqlStore<DB: Database> {
    pub(crate) pool: Pool<DB>,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        SqlStore {
            pool: self.pool.clone(),
        }
    }
}

impl<DB: Database> SqlStore<DB> {
    /// The pool, for readiness checks.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Postgres {}
    impl Sealed for sqlx::Sqlite {}
}

/// A database the store runs on: `Postgres` or `Sqlite` (sealed).
pub trait Sql:
    Database<Arguments: IntoArguments<Self>> + sqlx::database::HasStatementCache + sealed::Sealed
{
    /// Appended to a `SELECT` that locks the rows it reads until the
    /// transaction ends. SQLite has one writer (one connection here), so a
    /// transaction holds everything already.
    const FOR_UPDATE: &'static str;
    /// Appended to the `SELECT` of a claim: rows another transaction holds
    /// are passed over rather than waited for (PostgreSQL); SQLite's one
    /// writer needs nothing.
    const SKIP_LOCKED: &'static str;
    /// Appended to a `SELECT` that share-locks what it reads (SQLite's one
    /// writer needs nothing).
    const FOR_SHARE: &'static str;
    /// A condition on `segment_changes` rows: only those of transactions
    /// older than every one still running (PostgreSQL hands out ids before
    /// commit; SQLite commits one writer at a time, in id order).
    const SETTLED_CHANGES: &'static str;
    /// `SELECT` the oldest transaction still running and this
    /// transaction's own id (given one if it has none), as `bigint`s (see
    /// `analytics::rollup_journal`); `None` where ids are handed out in
    /// commit order (SQLite's one writer), so that what is visible is
    /// settled.
    const SNAPSHOT_HORIZON: Option<&'static str>;

    /// A string field of a JSON object column, in SQL: NULL when absent or
    /// not a string (as `Value::as_str`). `field` is a literal of ours,
    /// never input.
    fn json_text(column: &str, field: &str) -> String;
}

impl Sql for Postgres {
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const FOR_SHARE: &'static str = " FOR SHARE";
    const SETTLED_CHANGES: &'static str = " AND tx < pg_snapshot_xmin(pg_current_snapshot())";
    const SNAPSHOT_HORIZON: Option<&'static str> = Some(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
                pg_current_xact_id()::text::bigint",
    );

    fn json_text(column: &str, field: &str) -> String {
        format!(
            "(CASE WHEN jsonb_typeof({column}->'{field}') = 'string' THEN {column}->>'{field}' END)"
        )
    }
}

impl Sql for Sqlite {
    const FOR_UPDATE: &'static str = "";
    const SKIP_LOCKED: &'static str = "";
    const FOR_SHARE: &'static str = "";
    const SETTLED_CHANGES: &'static str = "";
    const SNAPSHOT_HORIZON: Option<&'static str> = None;

    fn json_text(column: &str, field: &str) -> String {
        format!(
            "(CASE WHEN json_type({column}, '$.{field}') = 'text' \
             THEN json_extract({column}, '$.{field}') END)"
        )
    }
}

/// A value a shared statement binds on `DB`, in a query that lives for
/// `'q`: an owned value binds for any `'q` (`for<'q> Instant: Bind<'q, DB>`),
/// a borrowed one for as long as its borrow (`for<'a> &'a str: Bind<'a, DB>`).
pub trait Bind<'q, DB: Database>: Encode<'q, DB> + Type<DB> + Send {}
impl<'q, DB: Database, T: Encode<'q, DB> + Type<DB> + Send> Bind<'q, DB> for T {}

/// A row a shared statement reads on `DB` (a `#[derive(sqlx::FromRow)]`
/// type, or a tuple of columns).
pub trait Read<DB: Database>: for<'r> FromRow<'r, DB::Row> + Send + Unpin {}
impl<DB: Database, T: for<'r> FromRow<'r, DB::Row> + Send + Unpin> Read<DB> for T {}

// ---- instants ----------------------------------------------------------------

/// An instant column: `timestamptz` in PostgreSQL, INTEGER milliseconds
/// since the Unix epoch in SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant(pub DateTime<Utc>);

/// A nullable [`Instant`] column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeInstant(pub Option<DateTime<Utc>>);

impl From<Instant> for DateTime<Utc> {
    fn from(i: Instant) -> Self {
        i.0
    }
}

impl From<MaybeInstant> for Option<DateTime<Utc>> {
    fn from(i: MaybeInstant) -> Self {
        i.0
    }
}

impl Type<Postgres> for Instant {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Instant {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Instant {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Instant)
    }
}

impl Type<Sqlite> for Instant {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Instant {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.0.timestamp_millis(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Instant {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let ms = <i64 as Decode<Sqlite>>::decode(value)?;
        match Utc.timestamp_millis_opt(ms).single() {
            Some(t) => Ok(Instant(t)),
            None => Err(format!("timestamp {ms} out of range").into()),
        }
    }
}

impl<DB: Database> Type<DB> for MaybeInstant
where
    Instant: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <Instant as Type<DB>>::type_info()
    }
    fn compatible(ty: &DB::TypeInfo) -> bool {
        <Instant as Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: Database> Decode<'r, DB> for MaybeInstant
where
    Option<Instant>: Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let i = <Option<Instant> as Decode<DB>>::decode(value)?;
        Ok(MaybeInstant(i.map(|i| i.0)))
    }
}

/// `t` as a column value.
pub(crate) fn at(t: DateTime<Utc>) -> Instant {
    Instant(t)
}

// ---- JSON --------------------------------------------------------------------

/// A JSON document to bind, serialized once: `jsonb` in PostgreSQL, TEXT in
/// SQLite. (Reading one back is `sqlx::types::Json<T>` or
/// `#[sqlx(json)]`, which sqlx decodes from either.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc(pub String);

impl Doc {
    /// Serializes `v`; `what` names it in the error.
    pub(crate) fn of<T: serde::Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Doc> {
        serde_json::to_string(v)
            .map(Doc)
            .map_err(Error::corrupt(what))
    }
}

impl Type<Postgres> for Doc {
    fn type_info() -> PgTypeInfo {
        <Json<Value> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <Json<Value> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Doc {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        // jsonb's binary form: the format version (1), then the text.
        buf.push(1);
        buf.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

impl Type<Sqlite> for Doc {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Doc {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode_by_ref(&self.0, buf)
    }
}

/// A nullable JSON column read as `Option<Value>`: SQL NULL is `None`, a
/// stored JSON `null` is `Some(Value::Null)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MaybeDoc(pub Option<Value>);

impl From<MaybeDoc> for Option<Value> {
    fn from(d: MaybeDoc) -> Self {
        d.0
    }
}

impl<DB: Database> Type<DB> for MaybeDoc
where
    Json<Value>: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <Json<Value> as Type<DB>>::type_info()
    }
    fn compatible(ty: &DB::TypeInfo) -> bool {
        <Json<Value> as Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: Database> Decode<'r, DB> for MaybeDoc
where
    Option<Json<Value>>: Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let v = <Option<Json<Value>> as Decode<DB>>::decode(value)?;
        Ok(MaybeDoc(v.map(|j| j.0)))
    }
}

// ---- other columns -----------------------------------------------------------

/// An API key's scopes: `text[]` in PostgreSQL, a JSON array (TEXT) in
/// SQLite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes(pub Vec<String>);

impl From<Scopes> for Vec<String> {
    fn from(s: Scopes) -> Self {
        s.0
    }
}

impl Type<Postgres> for Scopes {
    fn type_info() -> PgTypeInfo {
        <Vec<String> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <Vec<String> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Scopes {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Scopes {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <Vec<String> as Decode<Postgres>>::decode(value).map(Scopes)
    }
}

impl Type<Sqlite> for Scopes {
    fn type_info() -> SqliteTypeInfo {
        <Json<Vec<String>> as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <Json<Vec<String>> as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Scopes {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode_by_ref(&Json(&self.0), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Scopes {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        <Json<Vec<String>> as Decode<Sqlite>>::decode(value).map(|j| Scopes(j.0))
    }
}

/// An execution's status column (`pending`, `running`, …) read as a
/// [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusText(pub Status);

impl From<StatusText> for Status {
    fn from(s: StatusText) -> Self {
        s.0
    }
}

impl<DB: Database> Type<DB> for StatusText
where
    String: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <String as Type<DB>>::type_info()
    }
    fn compatible(ty: &DB::TypeInfo) -> bool {
        <String as Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: Database> Decode<'r, DB> for StatusText
where
    String: Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <String as Decode<DB>>::decode(value)?;
        Ok(StatusText(serde_json::from_value(Value::String(s))?))
    }
}

// ---- errors ------------------------------------------------------------------

/// Whether `e` is a unique violation (of any constraint).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// `e` as a conflict on `field` (holding `value`) when it is a unique
/// violation, else as it is.
pub(crate) fn conflict(e: sqlx::Error, field: &'static str, value: &str) -> Error {
    if is_unique_violation(&e) {
        Error::Conflict {
            field,
            value: value.to_owned(),
        }
    } else {
        e.into()
    }
}

/// `Error::NotFound` for `what` named `id`.
pub(crate) fn not_found(what: &'static str, id: &str) -> Error {
    Error::NotFound {
        what,
        id: id.to_owned(),
    }
}
