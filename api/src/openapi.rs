//! The OpenAPI 3.1 document, generated from the handlers' annotations, and Swagger UI (its
//! assets vendored into the binary at build time, so `/docs` works with no internet access).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// What the API's document says beyond its paths: title, security scheme, tags. The paths (and
/// the schemas they use) come from the router itself (`routes::api_routes`, `routes!`), so no
/// route is listed twice.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "MD5 service",
        description = "Upload a file, get a promise id at once, fetch its MD5 when a worker has hashed it. \
                       Once the server has an API key (`md5-api keys create`, or `API_KEY`), every `/api/` and `/hashes` \
                       route needs `Authorization: Bearer <key>`, and each key sees only the tasks and uploads it created \
                       (another key's are 404, as ids that never existed). A client past one of its quotas gets 429 with \
                       `Retry-After`, the problem's `quota` naming it. `POST /hashes` (no trailing slash) is an alias of `POST /hashes/`."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "v1", description = "The API the web page and new clients use"),
        (name = "uploads", description = "Resumable uploads: tus 1.0.0 or the IETF draft -05 (interop version 6) on one resource; \
            the upload's id is its task's id"),
        (name = "compatibility", description = "The older Python service's interface (see the README for where it differs)"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The compatibility form skips parts other than `file`, but their names must still be readable
/// in a `Content-Disposition` header: plain identifiers.
fn restrict_compat_part_names(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    let components = openapi.components.get_or_insert_with(Default::default);
    if let Some(RefOr::T(Schema::Object(form))) = components.schemas.get_mut("CompatUploadForm") {
        let names = ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[A-Za-z0-9_.-]{1,100}$"));
        form.property_names = Some(Box::new(names.build().into()));
    }
}

/// The router's OpenAPI document, finished: the compatibility form's part names restricted, the
/// longest `?wait=` the configured `max_wait_seconds` (`MAX_WAIT_SECONDS`) instead of the
/// annotations' 60, and the largest `Upload-Length` the configured `max_upload_bytes`.
pub fn document(
    mut openapi: utoipa::openapi::OpenApi,
    max_wait_seconds: u64,
    max_upload_bytes: u64,
) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    let waits = openapi
        .paths
        .paths
        .values_mut()
        .filter_map(|item| item.get.as_mut()?.parameters.as_mut())
        .flatten()
        .filter_map(|parameter| match parameter {
            RefOr::T(parameter) if parameter.name == "wait" => Some(parameter),
            _ => None,
        });
    for wait in waits {
        wait.description = Some(format!(
            "Seconds (0–{max_wait_seconds}, decimals allowed) to hold the request until the task is finished."
        ));
        if let Some(RefOr::T(Schema::Object(schema))) = wait.schema.as_mut() {
            schema.maximum = Some(utoipa::Number::UInt(max_wait_seconds as usize));
        }
    }
    // A declared length is at most MAX_UPLOAD_BYTES.
    let lengths = openapi
        .paths
        .paths
        .values_mut()
        .filter_map(|item| item.post.as_mut()?.parameters.as_mut())
        .flatten()
        .filter_map(|parameter| match parameter {
            RefOr::T(parameter) if parameter.name == "Upload-Length" => Some(parameter),
            _ => None,
        });
    for length in lengths {
        if let Some(RefOr::T(Schema::Object(schema))) = length.schema.as_mut() {
            schema.maximum =
                Some(utoipa::Number::UInt(usize::try_from(max_upload_bytes).unwrap_or(usize::MAX)));
        }
    }
    restrict_compat_part_names(&mut openapi);
    openapi
}

/// `/docs` (vendored Swagger UI, no internet needed) and `/openapi.json`, which is serialized
/// once: every request gets the same shared bytes, so a client that requests it many times and
/// never reads the answers holds no copy of its own.
pub fn docs_router(openapi: &utoipa::openapi::OpenApi) -> axum::Router {
    let json = bytes::Bytes::from(serde_json::to_vec(openapi).expect("the OpenAPI document serializes"));
    let document = axum::routing::get(move || {
        let json = json.clone();
        async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], json) }
    });
    let ui =
        utoipa_swagger_ui::SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json"));
    axum::Router::new().route("/openapi.json", document).merge(axum::Router::from(ui))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_describes_the_shared_refusals_in_the_same_words() {
        let doc = serde_json::to_value(document(crate::routes::api_document(), 60, 1000)).unwrap();
        let operation = |path: &str, method: &str| doc["paths"][path][method]["responses"].clone();
        let uploads = [operation("/api/v1/hashes", "post"), operation("/hashes/", "post")];
        let reads = [operation("/api/v1/hashes/{id}", "get"), operation("/hashes/{task_id}", "get")];
        for status in ["401", "503"] {
            let first = &uploads[0][status];
            assert!(first["description"].is_string(), "{status} is documented");
            for responses in uploads.iter().chain(&reads) {
                assert_eq!(&responses[status], first, "{status}");
            }
        }
        assert!(uploads[0]["503"]["headers"]["Retry-After"].is_object());
        for status in ["408", "413", "507"] {
            assert!(uploads[0][status]["description"].is_string(), "{status} is documented");
            assert_eq!(uploads[0][status], uploads[1][status], "{status}");
        }
    }

    #[test]
    fn the_documented_longest_wait_is_the_configured_one() {
        let doc = serde_json::to_value(document(crate::routes::api_document(), 7, 1000)).unwrap();
        let parameters = doc["paths"]["/api/v1/hashes/{id}"]["get"]["parameters"].as_array().unwrap();
        let wait = parameters.iter().find(|p| p["name"] == "wait").expect("a wait parameter");
        assert_eq!(wait["schema"]["maximum"], 7, "{wait}");
        assert!(wait["description"].as_str().unwrap().contains("0–7"), "{wait}");
        let form = &doc["components"]["schemas"]["CompatUploadForm"];
        assert!(form["propertyNames"]["pattern"].is_string(), "compat part names restricted: {form}");
    }
}
