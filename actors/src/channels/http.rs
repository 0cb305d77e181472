//! What the HTTP providers share: a client, and reading an answer into a
//! [`SendError`] the same way (429 with `Retry-After`, 5xx, 4xx).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::{ConfigError, ErrorClass, SendError};

/// A client for one provider: its own pool and timeout, rustls, no proxy
/// from the environment, no redirects (an API that redirects a send is
/// not one to follow blindly).
pub(crate) fn client(field: &str, timeout: Duration) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(64)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("sojourn/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::new(field, format!("making its HTTP client: {e}")))
}

/// An answer, read (at most 64 KiB of its body).
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends a request and reads its answer; a transport failure is classed
/// (timeouts and refused connections are retryable). The error never holds
/// the URL (it may hold a credential: a webhook's path, a query key).
pub(crate) async fn call(request: reqwest::RequestBuilder) -> Result<Answer, SendError> {
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let headers = response.headers().clone();
    let mut response = response;
    let mut body: Vec<u8> = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = 65_536usize.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return Err(transport(e)),
        }
    }
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub(crate) fn transport(e: reqwest::Error) -> SendError {
    // A destination the egress guard refused (a workflow's address that
    // resolves inside): no retry makes it allowed.
    if let Some(refusal) = crate::egress::refusal_in(&e) {
        return SendError::new(ErrorClass::Invalid, refusal.to_string());
    }
    let e = e.without_url();
    let class = if e.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Unavailable
    };
    // Refused before a byte of the request left (no connection, a bad
    // request): nothing was sent. Anything later may have been.
    let may_have_sent = !(e.is_connect() || e.is_builder());
    let mut err = SendError::new(class, crate::providers::with_causes(&e));
    err.may_have_sent = may_have_sent;
    err
}

/// The usual reading of a refusal: 429 → rate limited (with its
/// `Retry-After`), 408 → timeout, 5xx → unavailable, 401 and 403 → auth,
/// any other 4xx → rejected. `detail` is what the provider said, as the provider's
/// module extracted it.
pub(crate) fn refusal(answer: &Answer, detail: &str) -> SendError {
    let status = answer.status;
    let class = match status.as_u16() {
        429 => ErrorClass::RateLimited,
        408 => ErrorClass::Timeout,
        401 | 403 => ErrorClass::Auth,
        s if s >= 500 => ErrorClass::Unavailable,
        _ => ErrorClass::Rejected,
    };
    let mut e = SendError::new(
        class,
        format!("HTTP {}: {}", status.as_u16(), truncate(detail, 300)),
    );
    e.retry_after = retry_after(&answer.headers);
    e.may_have_sent = ambiguous(status.as_u16());
    e
}

/// Whether an HTTP status leaves open that the message was taken: a 500,
/// 502 or 504 does not say it was not (a gateway gave up on an upstream
/// that may have), nor does a 408; a 503 and a 429 do.
pub(crate) fn ambiguous(status: u16) -> bool {
    matches!(status, 500 | 502 | 504 | 408)
}

/// `Retry-After` in seconds or as an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    wait.to_std().ok()
}

pub(crate) use crate::providers::truncate;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert("retry-after", later.parse().expect("header"));
        let got = retry_after(&h).expect("a date");
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        h.insert("retry-after", "soon".parse().expect("header"));
        assert_eq!(retry_after(&h), None);
    }
}
