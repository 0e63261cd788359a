//! What the router's OpenAPI 3.1 document needs besides the handlers'
//! `#[utoipa::path]` descriptions and the `shardline-api` schemas (both
//! assembled in the parent module, `http`): the bearer scheme of app
//! tokens, the version, the JSON form. A leaf: it uses nothing of the
//! handlers, so the module graph stays one-way. The document is served
//! at `/openapi.json` (no token needed) and checked in as
//! `docs/openapi/router.json`; a test fails when the two differ.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::Modify;

/// Adds the app-token bearer scheme the data routes name.
pub struct AppToken;

impl Modify for AppToken {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "app_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A client app's token (`sl_...`), from `POST /v1/apps` on the manager",
                    ))
                    .build(),
            ),
        );
    }
}

/// Finishes a generated document: the API's own version (the crate's
/// would change the document with every release bump; the API's is what
/// clients compare).
pub fn finish(mut doc: Document) -> Document {
    doc.info.version = "1".into();
    doc
}

/// A document as pretty JSON with a final newline (the checked-in form).
pub fn to_json(doc: &Document) -> String {
    let mut text = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Answers a document's JSON, made once.
pub fn answer(cell: &'static OnceLock<String>, make: fn() -> String) -> Response {
    let body = cell.get_or_init(make).clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
