//! Secrets by reference, and what of an action's inputs may be stored.
//!
//! A workflow never holds a credential: it names one,
//! `"Authorization": "Bearer {{ secrets.CRM_TOKEN }}"`. The interpreter
//! renders the reference as a *marker* — the name between two Unicode
//! noncharacters, [`OPEN`]`CRM_TOKEN`[`CLOSE`] — so the journal, the outbox
//! and the node executions hold the name only. The worker that sends the
//! action swaps markers for values at send time ([`resolve`]) from the
//! node's configuration, and scrubs those values from whatever the provider
//! answers before it is stored.
//!
//! Nothing but a `{{ secrets.NAME }}` output may produce a marker: every
//! other value a template writes (inputs, event payloads, variables — data
//! that may come from anyone) has the two noncharacters replaced, so a
//! crafted payload cannot smuggle a reference to a secret into a request it
//! controls. The consequence for authors: a secret is interpolated on its
//! own (`Bearer {{ secrets.X }}`), not through filters or `~`.
//!
//! [`redact_for_storage`] is the other half: header values that are
//! credentials (`Authorization`, cookies, API-key headers) are replaced in
//! the copies of the inputs kept for people (journal, node executions).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::{Error as JinjaError, ErrorKind, Output, State, Value as JinjaValue};
use serde_json::Value;

/// Opens a secret marker (U+FDD0, a noncharacter).
pub const OPEN: char = '\u{FDD0}';
/// Closes a secret marker (U+FDD1).
pub const CLOSE: char = '\u{FDD1}';
/// What a redacted value reads as.
pub const REDACTED: &str = "[redacted]";

/// A secret's name: a letter or `_`, then letters, digits and `_` (at most
/// 128), like an environment variable.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// The marker a reference to `name` renders as.
pub fn marker(name: &str) -> String {
    format!("{OPEN}{name}{CLOSE}")
}

/// The `secrets` global of templates: `secrets.NAME` is a reference.
#[derive(Debug)]
pub(crate) struct SecretsRoot;

impl Object for SecretsRoot {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &JinjaValue) -> Option<JinjaValue> {
        let name = key.as_str()?;
        is_valid_name(name).then(|| JinjaValue::from_object(SecretRef(name.into())))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::NonEnumerable
    }
}

/// `secrets.NAME`: written by [`formatter`] as a marker.
#[derive(Debug)]
struct SecretRef(Arc<str>);

impl Object for SecretRef {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    /// Reached only when the reference is used as a string (a filter,
    /// `~`): the name in brackets, never a marker.
    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[secret {}]", self.0)
    }
}

/// The template formatter: a secret reference becomes its marker; any other
/// value is written with marker characters replaced (U+FFFD).
pub(crate) fn formatter(
    out: &mut Output<'_>,
    state: &mut State<'_, '_>,
    value: &JinjaValue,
) -> Result<(), JinjaError> {
    let write_failed = |_| JinjaError::from(ErrorKind::WriteFailure);
    if let Some(secret) = value.downcast_object_ref::<SecretRef>() {
        return fmt::Write::write_str(out, &marker(&secret.0)).map_err(write_failed);
    }
    let text = match value.as_str() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(value.to_string()),
    };
    if text.contains([OPEN, CLOSE]) {
        let clean = text.replace([OPEN, CLOSE], "\u{fffd}");
        return fmt::Write::write_str(out, &clean).map_err(write_failed);
    }
    minijinja::escape_formatter(out, state, value)
}

/// Why an action's secrets could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("secret {0:?} is not configured on this node")]
    Unknown(String),
    #[error("a secret marker is not closed")]
    Malformed,
}

/// Swaps every marker in `inputs` for the value `lookup` gives its name.
/// Borrowed when there is no marker (the common case: no copy). `used`
/// collects the values put in, for scrubbing the answer.
pub fn resolve<'v, 's>(
    inputs: &'v Value,
    lookup: &dyn Fn(&str) -> Option<&'s str>,
    used: &mut Vec<&'s str>,
) -> Result<Cow<'v, Value>, ResolveError> {
    if !has_marker(inputs) {
        return Ok(Cow::Borrowed(inputs));
    }
    let mut out = inputs.clone();
    resolve_in(&mut out, lookup, used)?;
    Ok(Cow::Owned(out))
}

/// Replaces marker characters (U+FFFD) in every string and key of a value
/// computed from data (a `$expr` result): only a `{{ secrets.NAME }}` in a
/// template may make a marker.
pub fn defuse(v: &mut Value) {
    if !has_marker_char(v) {
        return;
    }
    match v {
        Value::String(s) => *s = s.replace([OPEN, CLOSE], "\u{fffd}"),
        Value::Array(items) => items.iter_mut().for_each(defuse),
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut v) in old {
                defuse(&mut v);
                map.insert(k.replace([OPEN, CLOSE], "\u{fffd}"), v);
            }
        }
        _ => {}
    }
}

fn has_marker_char(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains([OPEN, CLOSE]),
        Value::Array(items) => items.iter().any(has_marker_char),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains([OPEN, CLOSE]) || has_marker_char(v)),
        _ => false,
    }
}

fn has_marker(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains(OPEN),
        Value::Array(items) => items.iter().any(has_marker),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains(OPEN) || has_marker(v)),
        _ => false,
    }
}

fn resolve_in<'s>(
    v: &mut Value,
    lookup: &dyn Fn(&str) -> Option<&'s str>,
    used: &mut Vec<&'s str>,
) -> Result<(), ResolveError> {
    match v {
        Value::String(s) if s.contains(OPEN) => *s = resolve_str(s, lookup, used)?,
        Value::Array(items) => {
            for item in items {
                resolve_in(item, lookup, used)?;
            }
        }
        Value::Object(map) => {
            if map.keys().any(|k| k.contains(OPEN)) {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    resolve_in(&mut v, lookup, used)?;
                    map.insert(resolve_str(&k, lookup, used)?, v);
                }
            } else {
                for v in map.values_mut() {
                    resolve_in(v, lookup, used)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn resolve_str<'s>(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<&'s str>,
    used: &mut Vec<&'s str>,
) -> Result<String, ResolveError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len_utf8()..];
        let end = after.find(CLOSE).ok_or(ResolveError::Malformed)?;
        let name = &after[..end];
        let value = lookup(name).ok_or_else(|| ResolveError::Unknown(name.to_owned()))?;
        out.push_str(value);
        if !value.is_empty() && !used.contains(&value) {
            used.push(value);
        }
        rest = &after[end + CLOSE.len_utf8()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Replaces every occurrence of the given secret values in the strings of
/// `v` (keys included) with [`REDACTED`]: what a provider answered may echo
/// a credential it was sent.
pub fn scrub(v: &mut Value, values: &[&str]) {
    if values.is_empty() {
        return;
    }
    match v {
        Value::String(s) => scrub_str(s, values),
        Value::Array(items) => items.iter_mut().for_each(|i| scrub(i, values)),
        Value::Object(map) => {
            if map.keys().any(|k| values.iter().any(|s| k.contains(s))) {
                let old = std::mem::take(map);
                for (mut k, mut v) in old {
                    scrub_str(&mut k, values);
                    scrub(&mut v, values);
                    map.insert(k, v);
                }
            } else {
                map.values_mut().for_each(|i| scrub(i, values));
            }
        }
        _ => {}
    }
}

/// [`scrub`] for one string.
pub fn scrub_str(s: &mut String, values: &[&str]) {
    for secret in values {
        if !secret.is_empty() && s.contains(secret) {
            *s = s.replace(secret, REDACTED);
        }
    }
}

/// Header names whose values are credentials.
fn is_sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || n.contains("api-key")
        || n.contains("apikey")
        || n.contains("token")
        || n.contains("secret")
        || n.contains("password")
        || n.contains("signature")
}

/// The inputs as they may be kept for people (journal, node executions):
/// the values of credential headers (`headers.Authorization`, …) replaced
/// by [`REDACTED`]. Borrowed when there is nothing to redact.
pub fn redact_for_storage(inputs: &Value) -> Cow<'_, Value> {
    let needs = inputs
        .get("headers")
        .and_then(Value::as_object)
        .is_some_and(|h| h.keys().any(|k| is_sensitive_header(k)));
    if !needs {
        return Cow::Borrowed(inputs);
    }
    let mut out = inputs.clone();
    if let Some(headers) = out.get_mut("headers").and_then(Value::as_object_mut) {
        for (k, v) in headers.iter_mut() {
            if is_sensitive_header(k) {
                *v = Value::String(REDACTED.into());
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lookup(name: &str) -> Option<&'static str> {
        match name {
            "TOKEN" => Some("s3cr3t"),
            "EMPTY" => Some(""),
            _ => None,
        }
    }

    #[test]
    fn markers_resolve_and_unknown_names_fail() {
        let inputs = json!({
            "headers": {"Authorization": format!("Bearer {}", marker("TOKEN"))},
            "body": [marker("TOKEN"), 1],
            "url": "https://example.com",
        });
        let mut used = Vec::new();
        let out = resolve(&inputs, &lookup, &mut used).expect("resolves");
        assert_eq!(out["headers"]["Authorization"], "Bearer s3cr3t");
        assert_eq!(out["body"][0], "s3cr3t");
        assert_eq!(used, ["s3cr3t"]);

        let plain = json!({"url": "https://example.com"});
        assert!(matches!(
            resolve(&plain, &lookup, &mut Vec::new()),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(
            resolve(&json!(marker("NOPE")), &lookup, &mut Vec::new()),
            Err(ResolveError::Unknown("NOPE".into()))
        );
        assert_eq!(
            resolve(&json!(format!("{OPEN}TOKEN")), &lookup, &mut Vec::new()),
            Err(ResolveError::Malformed)
        );
    }

    #[test]
    fn scrub_replaces_echoed_values() {
        let mut answer = json!({"headers": {"authorization": "Bearer s3cr3t"}, "s3cr3t": 1});
        scrub(&mut answer, &["s3cr3t"]);
        assert_eq!(
            answer,
            json!({"headers": {"authorization": "Bearer [redacted]"}, "[redacted]": 1})
        );
    }

    #[test]
    fn credential_headers_are_redacted_for_storage() {
        let inputs = json!({
            "url": "https://example.com",
            "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k", "Accept": "json"},
        });
        let stored = redact_for_storage(&inputs);
        assert_eq!(stored["headers"]["Authorization"], REDACTED);
        assert_eq!(stored["headers"]["X-Api-Key"], REDACTED);
        assert_eq!(stored["headers"]["Accept"], "json");
        let plain = json!({"headers": {"Accept": "json"}});
        assert!(matches!(redact_for_storage(&plain), Cow::Borrowed(_)));
    }

    #[test]
    fn names_are_like_environment_variables() {
        assert!(is_valid_name("CRM_TOKEN"));
        assert!(is_valid_name("_x1"));
        assert!(!is_valid_name("1X"));
        assert!(!is_valid_name("a-b"));
        assert!(!is_valid_name(""));
    }
}
