//! Extractors that answer mistakes in our error format (axum's own answer
//! in plain text): JSON bodies with the offending field named, query
//! strings, and the caller's idempotency key.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// The most a request body may hold.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON object body. An empty body reads as `{}` where the type allows
/// it. Anything but an object is refused: serde would otherwise read a JSON
/// array into a struct field by field, accepting what the documented schema
/// refuses.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_object(&bytes).map(Body)
    }
}

/// A body as bytes, unparsed (what a provider signed), within the same
/// size limit and with the same error as [`Body`].
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(body_rejection)
    }
}

pub(crate) fn body_rejection(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError {
            field: Some("body".into()),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body: larger than the limit of {MAX_BODY_BYTES} bytes"),
            )
        }
    } else {
        ApiError::invalid("body", e.body_text())
    }
}

/// Whether JSON text holds an escaped NUL character (`\u0000` after an
/// even number of backslashes), which PostgreSQL cannot store.
fn has_escaped_nul(bytes: &[u8]) -> bool {
    let mut backslashes = 0usize;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\\' {
            backslashes += 1;
            continue;
        }
        if *b == b'u' && backslashes % 2 == 1 && bytes.get(i + 1..i + 5) == Some(b"0000") {
            return true;
        }
        backslashes = 0;
    }
    false
}

/// Refuses a percent-encoded NUL (`%00`) in a path or query.
pub(crate) fn refuse_nul(field: &str, text: &str) -> Result<(), ApiError> {
    if text.contains("%00") {
        return Err(ApiError::invalid(field, "contains a NUL character (%00)"));
    }
    Ok(())
}

/// JSON's whitespace (RFC 8259: space, tab, line feed, carriage return;
/// not a form feed, which `u8::is_ascii_whitespace` also counts).
pub(crate) fn json_whitespace(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Parses a JSON object (or an empty body), naming the field at fault.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !json_whitespace(b)) {
        None | Some(b'{') => parse_json(bytes),
        Some(_) => Err(ApiError::invalid("body", "must be a JSON object")),
    }
}

/// Parses a JSON body, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if has_escaped_nul(bytes) {
        return Err(ApiError::invalid(
            "body",
            "contains a NUL character (\\u0000), which cannot be stored",
        ));
    }
    let bytes: &[u8] = if bytes.iter().all(json_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut *de) {
        // Nothing but whitespace may follow the value.
        Ok(v) => de
            .end()
            .map(|()| v)
            .map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}"))),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::invalid(
                    "body",
                    format!("not valid JSON: {inner}"),
                ))
            } else if path == "." {
                Err(ApiError::invalid("body", inner))
            } else {
                Err(ApiError::invalid(&path, inner))
            }
        }
    }
}

/// Path parameters. A bad one (text that is not UTF-8 once
/// percent-decoded) is a 400 in our format naming the parameter, instead of
/// axum's plain-text answer.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        refuse_nul("path", parts.uri.path())?;
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(path_rejection)
    }
}

fn path_rejection(e: PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    if e.status().is_server_error() {
        return ApiError::internal(e.body_text());
    }
    let field = match &e {
        PathRejection::FailedToDeserializePathParams(d) => match d.kind() {
            ErrorKind::InvalidUtf8InPathParam { key }
            | ErrorKind::ParseErrorAtKey { key, .. }
            | ErrorKind::DeserializeError { key, .. } => key.clone(),
            _ => "path".to_owned(),
        },
        _ => "path".to_owned(),
    };
    ApiError::invalid(&field, e.body_text())
}

/// Query parameters.
#[derive(Debug)]
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        refuse_nul("query", query)?;
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize::<_, T>(de)
            .map(Q)
            .map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "query".to_owned()
                } else {
                    path
                };
                ApiError::invalid(&field, e.into_inner())
            })
    }
}

/// Idempotency keys the trigger runners make (`schedule:<trigger>:<instant>`,
/// `event:<trigger>:…`, `segment:<trigger>:<change>`).
pub const RESERVED_KEY_PREFIXES: [&str; 3] = ["schedule:", "event:", "segment:"];

/// The `Idempotency-Key` header, if any.
#[derive(Debug)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let v = v
            .to_str()
            .map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))?;
        if v.is_empty() || v.len() > 255 {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                "must be 1 to 255 characters",
            ));
        }
        // The trigger runners' keys: a caller's key must not take (and so
        // suppress) a schedule's or an event's start.
        if let Some(prefix) = RESERVED_KEY_PREFIXES.iter().find(|p| v.starts_with(*p)) {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                format!("must not start with {prefix:?} (kept for triggers)"),
            ));
        }
        Ok(IdempotencyKey(Some(v.to_owned())))
    }
}

/// A path segment parsed as a number, named in the error.
pub fn parse_path_number<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, ApiError> {
    text.parse()
        .map_err(|_| ApiError::invalid(field, format!("{text:?} is not a number")))
}

/// Deserializes a JSON object (any members) as a `Value`: a document or an
/// input that is not an object is refused where it stands, naming its field.
pub(crate) fn json_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    let map = serde_json::Map::<String, Value>::deserialize(d)?;
    Ok(Value::Object(map))
}

/// [`json_object`], optional (`null` is absent).
pub(crate) fn optional_json_object<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Value>, D::Error> {
    let map = Option::<serde_json::Map<String, Value>>::deserialize(d)?;
    Ok(map.map(Value::Object))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_nuls_are_found_and_escaped_backslashes_are_not() {
        assert!(has_escaped_nul(br#"{"a": "x\u0000y"}"#));
        assert!(has_escaped_nul(br#"{"a": "\\\u0000"}"#));
        assert!(!has_escaped_nul(br#"{"a": "\\u0000"}"#));
        assert!(!has_escaped_nul(br#"{"a": "\u0001"}"#));
        let e = parse_json::<serde_json::Value>(br#"{"name": "a\u0000"}"#).expect_err("nul");
        assert_eq!(e.field.as_deref(), Some("body"));
    }

    #[derive(Debug, Deserialize)]
    struct Doc {
        #[serde(default)]
        #[allow(dead_code)]
        definition: Option<Value>,
    }

    #[test]
    fn a_body_must_be_an_object_even_where_serde_reads_an_array_into_a_struct() {
        // serde fills a struct from an array field by field: the API's
        // schema says object, so the extractor refuses it.
        assert!(serde_json::from_str::<Doc>(r#"[{"a": 1}]"#).is_ok());
        let e = parse_object::<Doc>(br#" [{"a": 1}]"#).expect_err("array");
        assert_eq!(e.field.as_deref(), Some("body"));
        assert!(e.message.contains("JSON object"), "{}", e.message);
        assert!(parse_object::<Doc>(b"  ").is_ok());
        assert!(parse_object::<Doc>(br#"{"definition": {}}"#).is_ok());
    }
}
