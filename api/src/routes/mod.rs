//! The API's handlers, by resource.

use schemars::JsonSchema;
use serde::Serialize;

use crate::error::{ApiError, ApiResult};

pub(crate) mod analytics;
pub(crate) mod audience;
pub(crate) mod cluster;
pub(crate) mod deliveries;
pub(crate) mod events;
pub(crate) mod executions;
pub(crate) mod keys;
pub(crate) mod registry;
pub(crate) mod system;
pub(crate) mod triggers;
pub(crate) mod workflows;

/// One page of a listing, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from `limit + 1` rows (the extra one says there is more).
    pub(crate) fn of<R>(
        mut rows: Vec<R>,
        limit: u32,
        cursor: impl Fn(&R) -> String,
        map: impl Fn(R) -> T,
    ) -> Page<T> {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more { rows.last().map(&cursor) } else { None };
        Page {
            items: rows.into_iter().map(map).collect(),
            next_cursor,
        }
    }
}

pub(crate) const DEFAULT_LIMIT: u32 = 50;
pub(crate) const MAX_LIMIT: u32 = 500;

pub(crate) fn limit_of(limit: Option<u32>) -> ApiResult<u32> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(
            "limit",
            format!("{n} is out of range (1 to {MAX_LIMIT})"),
        )),
    }
}

/// Keys, paths and names: 1 to 200 of letters, digits, `-`, `_`, `.`, `/`
/// (no leading or trailing `/`).
pub(crate) fn valid_key(field: &str, v: &str) -> ApiResult<()> {
    if v.contains('/') {
        return Err(ApiError::invalid(field, "'/' is not allowed in a key"));
    }
    valid_name(field, v)
}

pub(crate) fn valid_name(field: &str, v: &str) -> ApiResult<()> {
    if v.is_empty() || v.len() > 200 {
        return Err(ApiError::invalid(field, "must be 1 to 200 characters"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(ApiError::invalid(
            field,
            format!("{c:?} is not allowed (letters, digits, '-', '_', '.', '/')"),
        ));
    }
    if v.starts_with('/') || v.ends_with('/') || v.contains("//") {
        return Err(ApiError::invalid(
            field,
            "no leading, trailing or double '/'",
        ));
    }
    Ok(())
}
