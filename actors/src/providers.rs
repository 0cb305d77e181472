//! Action providers: what actually sends. `http.request` and
//! `kafka.publish` are sent from the node's relay; the channel actions
//! (`email.send`, `sms.send`, `push.send`, `chat.send`) reach a channel
//! worker through the bus, which sends them with the channel's providers
//! ([`crate::channels`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sojourn_runtime::secrets;
use sojourn_runtime::{ActionOutcome, Dispatch};

use crate::bus::Bus;
use crate::channels::{Channel, Channels, Delivery};
use crate::config::{Config, Secrets};
use crate::egress::{EgressPolicy, GuardedResolver, refusal_in};

/// Sends `http.request` actions with reqwest.
///
/// Inputs: `url` (required), `method` (default POST), `headers` (object of
/// strings), `body` (any JSON; sent as JSON). The attempt's idempotency key
/// goes in the `Idempotency-Key` header, the same on every redelivery.
/// 2xx is success (output: `status`, `body`); 408, 429, 5xx, timeouts and
/// connection errors are retryable failures; other statuses are not. A
/// destination the [`EgressPolicy`] refuses fails without retry, with
/// nothing sent. At most `max_response_bytes` of a body are read; past
/// that the output's `body` is the text read so far and `truncated` is true.
#[derive(Debug, Clone)]
pub struct HttpProvider {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
    max_response_bytes: usize,
}

impl HttpProvider {
    pub fn new(policy: EgressPolicy, max_response_bytes: usize) -> HttpProvider {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .redirect(policy.redirect_policy())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpProvider {
            client,
            policy,
            max_response_bytes,
        }
    }

    pub async fn send(&self, d: &Dispatch, inputs: &Value) -> ActionOutcome {
        let failure = |error: String, retryable: bool| ActionOutcome::failure(error, retryable);
        let Some(url) = inputs.get("url").and_then(Value::as_str) else {
            return failure("inputs.url: missing or not a string".into(), false);
        };
        let url = match reqwest::Url::parse(url) {
            Ok(url) => url,
            Err(e) => return failure(format!("inputs.url: {e}"), false),
        };
        if let Err(refusal) = self.policy.check_url(&url) {
            return failure(format!("inputs.url: {refusal}"), false);
        }
        let method = inputs
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
        if let Some(headers) = inputs.get("headers").and_then(Value::as_object) {
            for (k, v) in headers {
                if let Some(v) = v.as_str() {
                    request = request.header(k.as_str(), v);
                }
            }
        }
        if let Some(body) = inputs.get("body") {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let (text, truncated) = match read_capped(response, self.max_response_bytes).await {
                    Ok(read) => read,
                    Err(e) => return failure(format!("reading the response: {e}"), true),
                };
                let body = if truncated {
                    Value::String(text)
                } else {
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))
                };
                if status.is_success() {
                    let mut output = json!({ "status": status.as_u16(), "body": body });
                    if truncated {
                        output["truncated"] = Value::Bool(true);
                    }
                    ActionOutcome::Success { output }
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
                if let Some(refusal) = refusal_in(&e) {
                    return failure(refusal.to_string(), false);
                }
                let retryable = e.is_timeout() || e.is_connect() || e.is_request();
                failure(describe(e), retryable)
            }
        }
    }
}

impl HttpProvider {
    /// GETs a URL the workflow named (an email's attachment) through the
    /// egress policy, reading at most `cap` bytes: its body and content
    /// type. The error says whether trying again may help.
    pub(crate) async fn fetch(
        &self,
        url: &str,
        cap: usize,
        timeout_ms: u64,
    ) -> Result<(Vec<u8>, Option<String>), (String, bool)> {
        let url = reqwest::Url::parse(url).map_err(|e| (e.to_string(), false))?;
        self.policy
            .check_url(&url)
            .map_err(|refusal| (refusal.to_string(), false))?;
        let response = self
            .client
            .get(url)
            .timeout(Duration::from_millis(timeout_ms.max(1)))
            .send()
            .await
            .map_err(|e| match refusal_in(&e) {
                Some(refusal) => (refusal.to_string(), false),
                None => {
                    let retryable = e.is_timeout() || e.is_connect() || e.is_request();
                    (describe(e), retryable)
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err((
                format!("HTTP {}", status.as_u16()),
                status.is_server_error() || status.as_u16() == 429,
            ));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| (describe(e), true))? {
            if bytes.len() + chunk.len() > cap {
                return Err((format!("larger than {cap} bytes"), false));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((bytes, content_type))
    }
}

/// A request error as stored: without the URL (it may carry credentials in
/// its user info or query), with its causes (reqwest's own text alone is
/// "error sending request").
fn describe(e: reqwest::Error) -> String {
    with_causes(&e.without_url())
}

/// An error's text followed by each cause's that it does not already say.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// Reads at most `cap` bytes of a body (as text, lossily); `true` when
/// there was more, which is left unread.
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(String, bool), reqwest::Error> {
    let mut bytes: Vec<u8> = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        let room = cap - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok((text, truncated))
}

/// At most `max` characters of `s`.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The providers of a node, with what they share: the secrets actions may
/// reference.
#[derive(Debug, Clone)]
pub struct Providers {
    http: HttpProvider,
    bus: Bus,
    channels: Arc<Channels>,
    secrets: Secrets,
    /// Preferences, suppressions, caps and unsubscribe links.
    pub(crate) audience: Arc<crate::audience::Audience>,
    /// The node stopping: publishes waiting out a broker outage give up
    /// (the outbox keeps their messages).
    stop: tokio_util::sync::CancellationToken,
}

impl Providers {
    pub fn new(
        config: &Config,
        bus: Bus,
        channels: Arc<Channels>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Providers {
        Providers {
            http: HttpProvider::new(config.egress.clone(), config.max_response_bytes),
            bus,
            channels,
            secrets: config.secrets.clone(),
            audience: Arc::new(crate::audience::Audience::new(config.audience.clone())),
            stop,
        }
    }

    /// The bus they publish to.
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Cancelled when the node stops.
    pub(crate) fn stop(&self) -> &tokio_util::sync::CancellationToken {
        &self.stop
    }
}

/// The messaging channel an action sends on (`email.send` → `email`), if
/// it is one: those go through the bus to a channel worker.
pub fn message_channel(action: &str) -> Option<&'static str> {
    Channel::of_action(action).map(Channel::as_str)
}

fn failure(error: String, retryable: bool) -> ActionOutcome {
    ActionOutcome::failure(error, retryable)
}

/// The messaging channels.
pub const CHANNELS: [&str; 4] = ["email", "sms", "push", "chat"];

/// The topic a channel's messages go through.
pub fn channel_topic(channel: &str) -> String {
    format!("sojourn.actions.{channel}")
}

/// `kafka.publish`: `topic`, `value` (any JSON, sent as JSON), `key`
/// (text), `headers` (object of strings). The attempt's idempotency key
/// goes in the `idempotency-key` header, so consumers can drop a repeat.
/// Output: `topic`, `partition`, `offset`.
async fn kafka_publish(
    bus: &Bus,
    stop: &tokio_util::sync::CancellationToken,
    d: &Dispatch,
    inputs: &Value,
) -> ActionOutcome {
    let Some(topic) = inputs.get("topic").and_then(Value::as_str) else {
        return failure("inputs.topic: must be a string".into(), false);
    };
    if let Err(e) = sojourn_runtime::triggers::check_user_topic(topic) {
        return failure(format!("inputs.topic: {e}"), false);
    }
    let key = match inputs.get("key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(k)) => k.clone(),
        Some(other) => other.to_string(),
    };
    let value = match inputs.get("value") {
        Some(v) => v.to_string(),
        None => return failure("inputs.value: required".into(), false),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(hs) = inputs.get("headers") {
        let Some(hs) = hs.as_object() else {
            return failure("inputs.headers: must be an object of strings".into(), false);
        };
        for (name, v) in hs {
            let Some(v) = v.as_str() else {
                return failure(format!("inputs.headers.{name}: must be a string"), false);
            };
            headers.push((name.clone(), v.to_owned()));
        }
    }
    headers.push(("idempotency-key".into(), d.idempotency_key.clone()));
    let refs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    // Kafka away: the record waits here (librdkafka retries it, then this
    // loop), so an outage spends none of the action's retries; the attempt
    // holds one of the relay's slots meanwhile. A node that stops does not
    // wait it out: the attempt fails retryable, and its node's retry policy
    // publishes it again (same key) once the broker is back.
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        let published = tokio::select! {
            _ = stop.cancelled() => {
                return failure("the node stopped before Kafka answered".into(), true);
            }
            p = bus.publish(topic, key.as_bytes(), value.as_bytes(), &refs) => p,
        };
        match published {
            Ok(p) => {
                return ActionOutcome::Success {
                    output: json!({"topic": topic, "partition": p.partition, "offset": p.offset}),
                };
            }
            // No broker (the in-process queue) and nothing to read it: no
            // retry makes it arrive.
            Err(e) if !bus.is_kafka() => return failure(e, false),
            Err(e) => {
                tracing::warn!(error = %e, topic, "kafka.publish failed; trying again while the node runs");
                tokio::select! {
                    _ = stop.cancelled() => {
                        return failure(format!("the node stopped before Kafka answered: {e}"), true);
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }
}

/// Sends a dispatch with the provider for its action: its secret references
/// are resolved here, at send time, and the values are scrubbed from what
/// the provider answered. The outcome is made storable: PostgreSQL's
/// `jsonb` refuses `\u0000`, and one unstorable result must not sink the
/// batch of results recorded with it.
///
/// `inputs` replaces the dispatch's (the audience resolved an address or
/// added headers); `link` is what `{{ unsubscribe_url }}` becomes.
pub(crate) async fn send(
    providers: &Providers,
    d: &Dispatch,
    inputs: Option<&Value>,
    link: Option<&str>,
) -> (ActionOutcome, Vec<Delivery>) {
    let mut used = Vec::new();
    let lookup = |name: &str| match name {
        crate::audience::UNSUBSCRIBE_MARKER => link,
        _ => providers.secrets.get(name),
    };
    let inputs = match secrets::resolve(inputs.unwrap_or(&d.inputs), &lookup, &mut used) {
        Ok(inputs) => inputs,
        Err(secrets::ResolveError::Unknown(name))
            if name == crate::audience::UNSUBSCRIBE_MARKER =>
        {
            return (
                failure(
                    "inputs: {{ unsubscribe_url }} has no link for this message (a transactional message, or audience.unsubscribe_key and audience.public_url not set)".into(),
                    false,
                ),
                Vec::new(),
            );
        }
        Err(e) => return (failure(format!("inputs: {e}"), false), Vec::new()),
    };
    let (outcome, mut deliveries) = match Channel::of_action(&d.action) {
        Some(channel) => {
            providers
                .channels
                .send(channel, d, &inputs, &providers.http)
                .await
        }
        None => (send_action(providers, d, &inputs).await, Vec::new()),
    };
    drop(inputs);
    let used = scrub_forms(&used);
    let used: Vec<&str> = used.iter().map(String::as_str).collect();
    let outcome = match outcome {
        ActionOutcome::Success { mut output } => {
            secrets::scrub(&mut output, &used);
            ActionOutcome::Success { output }
        }
        ActionOutcome::Failure {
            mut error,
            retryable,
            mut output,
            retry_after_ms,
        } => {
            secrets::scrub_str(&mut error, &used);
            secrets::scrub(&mut output, &used);
            ActionOutcome::Failure {
                error,
                retryable,
                output,
                retry_after_ms,
            }
        }
        other => other,
    };
    // What the delivery log keeps is scrubbed too (a recipient or an
    // error may echo a secret an input used).
    for d in &mut deliveries {
        secrets::scrub_str(&mut d.recipient, &used);
        if let Some(e) = &mut d.error {
            secrets::scrub_str(e, &used);
            *e = e.replace('\0', "\u{fffd}");
        }
        d.recipient = d.recipient.replace('\0', "\u{fffd}");
    }
    (storable(outcome), deliveries)
}

/// What to scrub from an answer for the secrets used: each value as sent,
/// percent-encoded (a URL) and JSON-escaped. Values shorter than 4 bytes are
/// left alone: scrubbing them would rewrite unrelated text.
fn scrub_forms(used: &[&str]) -> Vec<String> {
    let mut forms: Vec<String> = Vec::new();
    for value in used.iter().filter(|v| v.len() >= 4) {
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped
            .strip_prefix('"')
            .and_then(|e| e.strip_suffix('"'))
            .unwrap_or(value)
            .to_owned();
        for form in [(*value).to_owned(), encoded, escaped] {
            if !forms.contains(&form) {
                forms.push(form);
            }
        }
    }
    // Longest first, so a value is not half-replaced through a shorter form.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms
}

fn storable(outcome: ActionOutcome) -> ActionOutcome {
    match outcome {
        ActionOutcome::Success { mut output } => {
            strip_nul(&mut output);
            ActionOutcome::Success { output }
        }
        ActionOutcome::Failure {
            error,
            retryable,
            mut output,
            retry_after_ms,
        } => {
            strip_nul(&mut output);
            ActionOutcome::Failure {
                error: error.replace('\0', "\u{fffd}"),
                retryable,
                output,
                retry_after_ms,
            }
        }
        other => other,
    }
}

/// Replaces NUL characters in every string and key with U+FFFD.
pub(crate) fn strip_nul(v: &mut Value) {
    let nul = |s: &str| s.contains('\0');
    if sojourn_runtime::json::any_string(v, &nul) {
        sojourn_runtime::json::rewrite_strings(v, &mut |s| {
            nul(s).then(|| s.replace('\0', "\u{fffd}"))
        });
    }
}

async fn send_action(providers: &Providers, d: &Dispatch, inputs: &Value) -> ActionOutcome {
    match d.sent_as() {
        "http.request" => providers.http.send(d, inputs).await,
        "kafka.publish" => kafka_publish(&providers.bus, &providers.stop, d, inputs).await,
        other => failure(
            format!("no provider is configured for {other} on this node"),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_in_every_form_they_may_come_back_in() {
        let forms = scrub_forms(&["p@ss:w/rd \"x\"", "12"]);
        assert!(forms.contains(&"p@ss:w/rd \"x\"".to_owned()));
        assert!(forms.contains(&"p%40ss%3Aw%2Frd+%22x%22".to_owned()));
        assert!(forms.contains(&"p@ss:w/rd \\\"x\\\"".to_owned()));
        assert!(!forms.iter().any(|f| f == "12"), "short values are left");
    }

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
        let out = storable(ActionOutcome::failure("x\u{0}", true));
        assert_eq!(out, ActionOutcome::failure("x\u{fffd}", true));
    }
}
