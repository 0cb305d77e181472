//! Walking the strings of a JSON value (object keys included): the one
//! walker behind secret resolution and scrubbing, marker defusing, and
//! making an action's outcome storable.

use serde_json::Value;

/// Whether any string or key of `v` satisfies `pred` (no allocation: the
/// cheap test callers make before rewriting).
pub fn any_string(v: &Value, pred: &dyn Fn(&str) -> bool) -> bool {
    match v {
        Value::String(s) => pred(s),
        Value::Array(items) => items.iter().any(|i| any_string(i, pred)),
        Value::Object(map) => map.iter().any(|(k, v)| pred(k) || any_string(v, pred)),
        _ => false,
    }
}

/// Replaces every string and key of `v` for which `f` returns a new text.
/// Objects are rebuilt, so call it after [`any_string`] found something.
pub fn rewrite_strings(v: &mut Value, f: &mut dyn FnMut(&str) -> Option<String>) {
    match v {
        Value::String(s) => {
            if let Some(new) = f(s) {
                *s = new;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite_strings(i, f)),
        Value::Object(map) => {
            for (k, mut child) in std::mem::take(map) {
                rewrite_strings(&mut child, f);
                map.insert(f(&k).unwrap_or(k), child);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strings_and_keys_are_found_and_rewritten() {
        let mut v = json!({"a": ["x1", {"x2": 3}], "b": true});
        assert!(any_string(&v, &|s| s == "x2"));
        assert!(!any_string(&v, &|s| s == "zz"));
        rewrite_strings(&mut v, &mut |s| {
            s.starts_with('x').then(|| s.to_uppercase())
        });
        assert_eq!(v, json!({"a": ["X1", {"X2": 3}], "b": true}));
    }
}
