//! The storage error type.

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored JSON value does not read back as its type.
    #[error("corrupt {what}: {source}")]
    Corrupt {
        what: &'static str,
        source: serde_json::Error,
    },
    /// A name that must be unique is taken (`field` names which).
    #[error("{field} {value:?} already exists")]
    Conflict { field: &'static str, value: String },
    /// The row to change does not exist.
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    /// The caller broke the API's contract (a bug above this crate).
    #[error("invalid request to the store: {0}")]
    Invalid(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        // A stored JSON document that does not read back as its type: a
        // derived row mapping reports it as a column it could not decode.
        match e {
            sqlx::Error::ColumnDecode { index, source } => {
                match source.downcast::<serde_json::Error>() {
                    Ok(source) => Error::Corrupt {
                        what: "stored JSON",
                        source: *source,
                    },
                    Err(source) => Error::Database(sqlx::Error::ColumnDecode { index, source }),
                }
            }
            e => Error::Database(e),
        }
    }
}

impl Error {
    /// The database refused the data itself (SQLSTATE classes 22, data
    /// exception, and 54, program limit: a NUL byte, a value too long to
    /// index): the caller's input is at fault, retrying will not help.
    pub fn is_data_error(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("54")),
            _ => false,
        }
    }

    pub(crate) fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
        move |source| Error::Corrupt { what, source }
    }
}

/// Whether `e` is a unique violation of a constraint that mentions `word`:
/// PostgreSQL names the constraint (`api_keys_hash_unique`), SQLite the
/// columns (`UNIQUE constraint failed: api_keys.hash`).
pub(crate) fn unique_violation_on(e: &sqlx::Error, word: &str) -> bool {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            d.constraint().is_some_and(|c| c.contains(word)) || d.message().contains(word)
        }
        _ => false,
    }
}
