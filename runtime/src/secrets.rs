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

use crate::json::{any_string, rewrite_strings};

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

/// The name `{{ unsubscribe_url }}` refers to: the worker puts the
/// recipient's signed unsubscribe link there at send time, as it does a
/// secret's value.
pub const UNSUBSCRIBE_URL: &str = "SOJOURN_UNSUBSCRIBE_URL";

/// The template value of `{{ unsubscribe_url }}`.
pub(crate) fn unsubscribe_url() -> JinjaValue {
    JinjaValue::from_object(SecretRef(UNSUBSCRIBE_URL.into()))
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
    if !any_string(inputs, &|s| s.contains(OPEN)) {
        return Ok(Cow::Borrowed(inputs));
    }
    let mut out = inputs.clone();
    let mut failed = None;
    rewrite_strings(&mut out, &mut |s| {
        if failed.is_some() || !s.contains(OPEN) {
            return None;
        }
        resolve_str(s, lookup, used)
            .map_err(|e| failed = Some(e))
            .ok()
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(Cow::Owned(out)),
    }
}

/// Replaces marker characters (U+FFFD) in every string and key of a value
/// computed from data (a `$expr` result): only a `{{ secrets.NAME }}` in a
/// template may make a marker.
pub fn defuse(v: &mut Value) {
    let marked = |s: &str| s.contains([OPEN, CLOSE]);
    if any_string(v, &marked) {
        rewrite_strings(v, &mut |s| {
            marked(s).then(|| s.replace([OPEN, CLOSE], "\u{fffd}"))
        });
    }
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
    let holds = |s: &str| values.iter().any(|x| !x.is_empty() && s.contains(x));
    if values.is_empty() || !any_string(v, &holds) {
        return;
    }
    rewrite_strings(v, &mut |s| {
        holds(s).then(|| {
            let mut s = s.to_owned();
            scrub_str(&mut s, values);
            s
        })
    });
}

/// [`scrub`] for one string.
pub fn scrub_str(s: &mut String, values: &[&str]) {
    for secret in values {
        if !secret.is_empty() && s.contains(secret) {
            *s = s.replace(secret, REDACTED);
        }
    }
}

/// Header names whose values are credentials (compared without
/// allocating: this runs for every dispatch that has headers).
pub fn is_sensitive_header(name: &str) -> bool {
    let contains = |needle: &str| {
        name.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    };
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
        || [
            "api-key",
            "apikey",
            "token",
            "secret",
            "password",
            "signature",
        ]
        .iter()
        .any(|n| contains(n))
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
