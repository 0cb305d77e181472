//! Action providers: what actually sends. `http.request` is built in; the
//! other channels arrive with their own issue and, until then, fail without
//! retry so the execution pauses for an operator instead of pretending.

use std::time::Duration;

use serde_json::{Value, json};
use sojourn_runtime::{ActionOutcome, Dispatch};

/// Sends `http.request` actions with reqwest.
///
/// Inputs: `url` (required), `method` (default POST), `headers` (object of
/// strings), `body` (any JSON; sent as JSON). The attempt's idempotency key
/// goes in the `Idempotency-Key` header, the same on every redelivery.
/// 2xx is success (output: `status`, `body`); 408, 429, 5xx, timeouts and
/// connection errors are retryable failures; other statuses are not.
#[derive(Debug, Clone)]
pub struct HttpProvider {
    client: reqwest::Client,
}

impl Default for HttpProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpProvider {
    pub fn new() -> HttpProvider {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpProvider { client }
    }

    pub async fn send(&self, d: &Dispatch) -> ActionOutcome {
        let failure = |error: String, retryable: bool| ActionOutcome::Failure { error, retryable };
        let Some(url) = d.inputs.get("url").and_then(Value::as_str) else {
            return failure("inputs.url: missing or not a string".into(), false);
        };
        let method = d
            .inputs
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("POST")
            .to_ascii_uppercase();
        let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
            return failure(
                format!("inputs.method: {method:?} is not an HTTP method"),
                false,
            );
        };
        let mut request = self
            .client
            .request(method, url)
            .timeout(Duration::from_millis(d.timeout_ms.max(1)))
            .header("Idempotency-Key", &d.idempotency_key);
        if let Some(headers) = d.inputs.get("headers").and_then(Value::as_object) {
            for (k, v) in headers {
                if let Some(v) = v.as_str() {
                    request = request.header(k.as_str(), v);
                }
            }
        }
        if let Some(body) = d.inputs.get("body") {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                if status.is_success() {
                    ActionOutcome::Success {
                        output: json!({ "status": status.as_u16(), "body": body }),
                    }
                } else {
                    let retryable = status.is_server_error()
                        || status.as_u16() == 429
                        || status.as_u16() == 408;
                    failure(
                        format!(
                            "HTTP {}: {}",
                            status.as_u16(),
                            truncate(&body.to_string(), 500)
                        ),
                        retryable,
                    )
                }
            }
            Err(e) => {
                let retryable = e.is_timeout() || e.is_connect() || e.is_request();
                failure(format!("{e}"), retryable)
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Sends a dispatch with the provider for its action. The outcome is made
/// storable: PostgreSQL's `jsonb` refuses `\u0000`, and one unstorable
/// result must not sink the batch of results recorded with it.
pub(crate) async fn send(http: &HttpProvider, d: &Dispatch) -> ActionOutcome {
    storable(send_raw(http, d).await)
}

fn storable(outcome: ActionOutcome) -> ActionOutcome {
    match outcome {
        ActionOutcome::Success { mut output } => {
            strip_nul(&mut output);
            ActionOutcome::Success { output }
        }
        ActionOutcome::Failure { error, retryable } => ActionOutcome::Failure {
            error: error.replace('\0', "\u{fffd}"),
            retryable,
        },
    }
}

/// Replaces NUL characters in every string and key with U+FFFD.
fn strip_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{fffd}"),
        Value::Array(items) => items.iter_mut().for_each(strip_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    strip_nul(&mut v);
                    map.insert(k.replace('\0', "\u{fffd}"), v);
                }
            } else {
                map.values_mut().for_each(strip_nul);
            }
        }
        _ => {}
    }
}

async fn send_raw(http: &HttpProvider, d: &Dispatch) -> ActionOutcome {
    match d.action.as_str() {
        "http.request" => http.send(d).await,
        other => ActionOutcome::Failure {
            error: format!("no provider is configured for {other} on this node"),
            retryable: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_lose_their_nul_characters() {
        let out = storable(ActionOutcome::Success {
            output: json!({"body": "a\u{0}b", "k\u{0}": ["\u{0}"]}),
        });
        assert_eq!(
            out,
            ActionOutcome::Success {
                output: json!({"body": "a\u{fffd}b", "k\u{fffd}": ["\u{fffd}"]})
            }
        );
        let out = storable(ActionOutcome::Failure {
            error: "x\u{0}".into(),
            retryable: true,
        });
        assert_eq!(
            out,
            ActionOutcome::Failure {
                error: "x\u{fffd}".into(),
                retryable: true
            }
        );
    }
}
