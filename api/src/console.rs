//! The web console's built files (`console/dist`, committed; CI checks
//! that a fresh `npm ci && npm run build` reproduces them), embedded in the
//! binary at compile time so every node serves the console at `/` with
//! nothing to fetch or install at run time.
//!
//! `assets/` names carry a content hash and are cached for a year; every
//! other path that is not a file is a page of the console (client-side
//! routing) and gets `index.html`, which is never cached.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../console/dist"]
struct Files;

/// Paths that belong to the API: an unknown one there is a JSON 404, never
/// the console's page.
const API_PREFIXES: [&str; 4] = ["/v1/", "/cluster/", "/trigger/", "/internal/"];

/// Whether `path` is the console's to answer (a GET or HEAD outside the
/// API's prefixes).
pub(crate) fn serves(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && !API_PREFIXES.iter().any(|p| path.starts_with(p))
        && path != "/v1"
}

/// The file for `path`, or the console's page for a client-side route.
pub(crate) fn respond(path: &str, headers: &HeaderMap) -> Option<Response> {
    let rel = path.trim_start_matches('/');
    let (file, name, immutable) = match Files::get(rel) {
        Some(f) if !rel.is_empty() => (f, rel, rel.starts_with("assets/")),
        // A route of the console (`/workflows/x`), not a missing file
        // (`/missing.js`): the page, which routes in the browser.
        _ if !rel.rsplit('/').next().unwrap_or("").contains('.') => {
            (Files::get("index.html")?, "index.html", false)
        }
        _ => return None,
    };
    let hash = file.metadata.sha256_hash();
    let etag = format!("\"{}\"", hex::encode(&hash[..16]));
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, cache)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if name == "index.html" {
        // The console talks only to its own origin.
        builder = builder
            .header(
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                 connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
            )
            .header(header::REFERRER_POLICY, "no-referrer");
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .ok();
    }
    let mime = file.metadata.mimetype();
    builder
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_str(mime)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        )
        .body(match file.data {
            std::borrow::Cow::Borrowed(bytes) => Body::from(axum::body::Bytes::from_static(bytes)),
            std::borrow::Cow::Owned(bytes) => Body::from(bytes),
        })
        .ok()
        .map(IntoResponse::into_response)
}
