//! The web console's built files (`console/dist`, committed; CI checks
//! that a fresh `npm ci && npm run build` reproduces them), embedded in the
//! binary at compile time so every node serves the console at `/` with
//! nothing to fetch or install at run time.
//!
//! `assets/` names carry a content hash and are cached for a year. The
//! console's own pages (`/workflows/…`, client-side routing) get
//! `index.html`, never cached; any other path is the API's 404, so a
//! mistyped probe (`/readyz/`, `/health`) fails as it should.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../console/dist"]
struct Files;

/// The console's pages (`console/src/App.tsx`): each, and everything under
/// it, is `index.html`. None is a path of the API.
const PAGES: [&str; 7] = [
    "/workflows",
    "/executions",
    "/triggers",
    "/analytics",
    "/registry",
    "/audience",
    "/nodes",
];

/// Whether the console answers `method path` (a GET or HEAD).
pub(crate) fn serves(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// A built file, or the console's page for one of its routes (a workflow
/// key may hold dots: `/workflows/welcome.v2` is a page, not a file).
pub(crate) fn respond(path: &str, headers: &HeaderMap) -> Option<Response> {
    let rel = path.trim_start_matches('/');
    let page = path == "/"
        || PAGES.iter().any(|p| {
            path.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
    let (file, name, immutable) = if page {
        (Files::get("index.html")?, "index.html", false)
    } else {
        (Files::get(rel)?, rel, rel.starts_with("assets/"))
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
