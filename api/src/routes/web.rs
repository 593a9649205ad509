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

/// `GET /assets/{file}`: the page's scripts and stylesheet.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        "tus.min.js" => ("text/javascript; charset=utf-8", TUS_JS),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
