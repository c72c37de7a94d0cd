//! The browser side, served from the binary: the demo chat client at `GET /`, GraphiQL at
//! `GET /playground` (and at `GET /graphql` when a browser asks for a page), the operator
//! console at `GET /admin`, and the files they load from `/assets/`.
//!
//! The console's page is served to anyone, like the others: it holds no data, and asks for an
//! admin token; the figures and actions it shows come from the GraphQL API, which refuses
//! them to anyone but an admin.
//!
//! The pages are built from `playground/` by Vite into `playground/dist/`, which is committed
//! and embedded at compile time, so `cargo run` needs no Node. Embedding is rust-embed's
//! derive, with `debug-embed` so that debug builds (and so the tests) serve the very bytes a
//! release serves rather than reading the folder at run time; listing the files by hand would
//! have to change with every build, since their names carry content hashes.
//!
//! Nothing may load from anywhere else (the pages must work offline): every page carries a
//! Content-Security-Policy that allows this origin only, so a stray CDN URL fails loudly in the
//! browser tests instead of quietly working online.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::Embed;
use tower_http::compression::CompressionLayer;

use super::AppState;

#[derive(Embed)]
#[folder = "playground/dist/"]
struct Dist;

const CHAT_PAGE: &str = "index.html";
const GRAPHIQL_PAGE: &str = "playground.html";
const ADMIN_PAGE: &str = "admin.html";

/// Pages are revalidated on every visit (a cheap 304 with the ETag), so a new binary's pages,
/// and the new asset names in them, are picked up at once.
const PAGE_CACHE: &str = "no-cache";
/// Assets carry a hash of their content in their name: one URL always means the same bytes.
const ASSET_CACHE: &str = "public, max-age=31536000, immutable";

/// This origin only. Styles may be inline (GraphiQL's editor sets them from script); fonts
/// and the favicon come inline as `data:`; `connect-src 'self'` covers this host's `ws:`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'self'; \
     form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(chat))
        .route("/playground", get(graphiql))
        .route("/admin", get(admin))
        .route("/assets/{*path}", get(asset))
        // GraphiQL's editor is megabytes of JavaScript that compress about four to one.
        .layer(CompressionLayer::new())
}

/// Whether a request is a browser asking for a page (a navigation sends `Accept: text/html`),
/// rather than an API client.
pub fn wants_page(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .any(|kind| kind.trim().to_ascii_lowercase().starts_with("text/html"))
        })
}

/// GraphiQL, for `GET /playground` and a browser's `GET /graphql`.
pub async fn graphiql(headers: HeaderMap) -> Response {
    serve(GRAPHIQL_PAGE, PAGE_CACHE, &headers)
}

async fn admin(headers: HeaderMap) -> Response {
    serve(ADMIN_PAGE, PAGE_CACHE, &headers)
}

async fn chat(headers: HeaderMap) -> Response {
    serve(CHAT_PAGE, PAGE_CACHE, &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&format!("assets/{path}"), ASSET_CACHE, &headers)
}

/// One embedded file, with its type, caching and validator; 304 when the client has it.
fn serve(path: &str, cache: &'static str, request: &HeaderMap) -> Response {
    let Some(file) = Dist::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    // Weak: the compression layer may send these bytes gzipped under the same tag.
    let etag = format!("W/\"{}\"", hex(&file.metadata.sha256_hash()[..12]));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == &etag[2..])
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = match file.data {
            Cow::Borrowed(bytes) => Body::from(bytes),
            Cow::Owned(bytes) => Body::from(bytes),
        };
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(path)),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path.ends_with(".html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("ttf") => "font/ttf",
        Some("wasm") => "application/wasm",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_navigation_wants_a_page_and_an_api_client_does_not() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT,
                HeaderValue::from_str(accept).expect("header"),
            );
            h
        };
        assert!(wants_page(&with(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!wants_page(&with("application/json")));
        assert!(!wants_page(&with("*/*")));
        assert!(!wants_page(&HeaderMap::new()));
    }

    #[test]
    fn both_pages_and_their_assets_are_embedded() {
        for page in [CHAT_PAGE, GRAPHIQL_PAGE, ADMIN_PAGE] {
            let html = Dist::get(page).unwrap_or_else(|| panic!("{page} is not embedded"));
            let html = String::from_utf8_lossy(&html.data).into_owned();
            let assets: Vec<&str> = html
                .split('"')
                .filter(|s| s.starts_with("/assets/"))
                .collect();
            assert!(!assets.is_empty(), "{page} loads no assets");
            for asset in assets {
                assert!(
                    Dist::get(&asset[1..]).is_some(),
                    "{page} loads {asset}, which is not embedded"
                );
            }
        }
    }
}
