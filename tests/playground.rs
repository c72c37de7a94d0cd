//! The pages over HTTP: the chat at `/`, GraphiQL at `/playground` and for a browser's
//! `GET /graphql`, and their assets, all from the binary, with their types and cache headers.
//! (tests/browser.rs runs them in a real browser.)

mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::header::{
    ACCEPT, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY,
    CONTENT_TYPE, ETAG, IF_NONE_MATCH,
};
use reqwest::StatusCode;

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

async fn get(server: &TestServer, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut request = http().get(server.url(path));
    if let Some(accept) = accept {
        request = request.header(ACCEPT, accept);
    }
    request.send().await.expect("GET")
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response
        .headers()
        .get(&name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header on {}", response.url()))
        .to_owned()
}

/// The `/assets/...` paths a page or an asset refers to.
fn asset_paths(text: &str) -> BTreeSet<String> {
    text.match_indices("/assets/")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_'))
                .collect::<String>()
        })
        .filter(|p| p.len() > "/assets/".len() && p.contains('.'))
        .collect()
}

#[tokio::test]
async fn the_chat_page_is_served_at_the_root() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let response = get(&server, "/", Some(BROWSER_ACCEPT)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header(&response, CACHE_CONTROL), "no-cache");
    let html = response.text().await.expect("body");
    for hook in [
        "connection-status",
        "message-input",
        "send-button",
        "message-list",
        "presence-list",
        "typing-indicator",
        "notification-list",
        "leaderboard",
    ] {
        assert!(
            html.contains(&format!("data-testid=\"{hook}\"")),
            "the chat page has no data-testid {hook}"
        );
    }
}

#[tokio::test]
async fn graphiql_is_served_at_playground_and_to_a_browser_at_graphql() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let playground = get(&server, "/playground", None).await;
    assert_eq!(playground.status(), StatusCode::OK);
    assert_eq!(
        header(&playground, CONTENT_TYPE),
        "text/html; charset=utf-8"
    );
    let page = playground.text().await.expect("body");
    assert!(
        page.contains("graphiql-root"),
        "not the GraphiQL page: {page}"
    );

    let from_graphql = get(&server, "/graphql", Some(BROWSER_ACCEPT)).await;
    assert_eq!(from_graphql.status(), StatusCode::OK);
    assert_eq!(from_graphql.text().await.expect("body"), page);

    // An API client that neither upgrades nor asks for a page still gets the 400 that says how
    // to talk to the endpoint.
    let api = get(&server, "/graphql", Some("application/json")).await;
    assert_eq!(api.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn every_asset_the_pages_load_is_served_with_its_type_and_cached_for_a_year() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let mut pending: Vec<String> = Vec::new();
    for page in ["/", "/playground"] {
        let html = get(&server, page, None).await.text().await.expect("page");
        let assets = asset_paths(&html);
        assert!(!assets.is_empty(), "{page} loads no assets");
        pending.extend(assets);
    }
    // Follow what scripts and styles load in turn (chunks, workers, fonts).
    let mut seen = BTreeSet::new();
    while let Some(path) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let response = get(&server, &path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let expected = match path.rsplit_once('.').map(|(_, ext)| ext) {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("ttf") => "font/ttf",
            Some("woff2") => "font/woff2",
            other => panic!("an asset of an unexpected kind: {path} ({other:?})"),
        };
        assert_eq!(header(&response, CONTENT_TYPE), expected, "{path}");
        assert_eq!(
            header(&response, CACHE_CONTROL),
            "public, max-age=31536000, immutable",
            "{path}"
        );
        if expected.starts_with("text/") {
            pending.extend(asset_paths(&response.text().await.expect("asset")));
        }
    }
    assert!(
        seen.iter().any(|p| p.contains("worker")),
        "GraphiQL's editor workers are not among the assets: {seen:?}"
    );
}

#[tokio::test]
async fn unknown_assets_are_not_found() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    for path in [
        "/assets/nope.js",
        "/assets/../index.html",
        "/assets/%2e%2e/index.html",
        "/assets/",
    ] {
        let response = get(&server, path, None).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn a_page_the_browser_has_is_answered_not_modified() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let first = get(&server, "/", None).await;
    let etag = header(&first, ETAG);
    let again = http()
        .get(server.url("/"))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&again, ETAG), etag);
    assert!(again.bytes().await.expect("body").is_empty());

    let other = http()
        .get(server.url("/playground"))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "another page's tag is not this page's"
    );
}

#[tokio::test]
async fn pages_may_load_from_their_own_origin_only() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    for page in ["/", "/playground"] {
        let response = get(&server, page, None).await;
        let policy = header(&response, CONTENT_SECURITY_POLICY);
        assert!(policy.contains("default-src 'self'"), "{page}: {policy}");
        assert!(policy.contains("script-src 'self';"), "{page}: {policy}");
        assert!(policy.contains("connect-src 'self';"), "{page}: {policy}");
        let html = response.text().await.expect("page");
        for scheme in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
            assert!(
                !html.contains(scheme),
                "{page} loads from elsewhere: {scheme}"
            );
        }
    }
}

#[tokio::test]
async fn assets_are_compressed_for_clients_that_accept_gzip() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let html = get(&server, "/playground", None)
        .await
        .text()
        .await
        .expect("page");
    let script = asset_paths(&html)
        .into_iter()
        .find(|p| p.ends_with(".js"))
        .expect("a script");
    let plain = get(&server, &script, None)
        .await
        .bytes()
        .await
        .expect("asset");
    // reqwest here has no gzip support, so the body comes back as sent.
    let gzipped = http()
        .get(server.url(&script))
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("GET");
    assert_eq!(header(&gzipped, CONTENT_ENCODING), "gzip");
    let compressed = gzipped.bytes().await.expect("asset");
    assert!(
        compressed.len() * 2 < plain.len(),
        "{script}: {} bytes gzipped, {} plain",
        compressed.len(),
        plain.len()
    );
}
