//! Serving an OpenAPI document, for both servers: the bearer scheme
//! their tokens share, the JSON form checked in (the API's own version,
//! pretty, a final newline), and the answer to `GET /openapi.json`. What
//! each document holds is its server's (`http/openapi.rs` of each).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;

/// A bearer-token security scheme described by `description`.
pub fn bearer(description: &str) -> SecurityScheme {
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(description))
            .build(),
    )
}

/// A generated document as it is checked in: with the API's own version
/// (the crate's would change the document with every release bump; the
/// API's is what clients compare), as pretty JSON with a final newline.
pub fn document_json(mut doc: Document) -> String {
    doc.info.version = "1".into();
    let mut text = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Answers a document's JSON, made once on the first request.
pub fn answer(cell: &'static OnceLock<String>, make: fn() -> String) -> Response {
    let body: &'static str = cell.get_or_init(make);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
