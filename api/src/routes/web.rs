//! The web page, embedded in the binary so it runs from any directory.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const APP_JS: &str = include_str!("../../../web/app.js");
const STYLE_CSS: &str = include_str!("../../../web/style.css");
/// tus-js-client's browser bundle, vendored (see `web/vendor/README.md`).
const TUS_JS: &str = include_str!("../../../web/vendor/tus.min.js");

/// `GET /`: the page.
pub async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// The page's icon: a hash sign.
const ICON_SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
    <rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#1f4e79\"/>\
    <path d=\"M6 3 5 13M11 3l-1 10M3 6.5h10M3 10h10\" stroke=\"#fff\" stroke-width=\"1.5\"/></svg>";

/// The algorithms the page offers, read from the registry (`shared::digest::REGISTRY`): each
/// one's name, aliases, label, tag and digest length, in the order answers list them.
static ALGORITHMS_JSON: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    serde_json::to_string(&shared::digest::REGISTRY).expect("the registry serializes")
});

/// `GET /assets/{file}`: the page's scripts, stylesheet, icon and the list of algorithms.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        "tus.min.js" => ("text/javascript; charset=utf-8", TUS_JS),
        "icon.svg" => ("image/svg+xml", ICON_SVG),
        "algorithms.json" => ("application/json", ALGORITHMS_JSON.as_str()),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// `GET /favicon.ico`, which browsers ask for whatever the page says: the page's icon.
pub async fn favicon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "max-age=86400")], ICON_SVG)
        .into_response()
}
