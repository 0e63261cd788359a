//! What the router's OpenAPI 3.1 document needs besides the handlers'
//! `#[utoipa::path]` descriptions and the `shardline-api` schemas (both
//! assembled in the parent module, `http`): the bearer scheme of app
//! tokens. A leaf: it uses nothing of the
//! handlers, so the module graph stays one-way. The document is served
//! at `/openapi.json` (no token needed) and checked in as
//! `docs/openapi/router.json`; a test fails when the two differ.

use shardline_http::openapi::bearer;
use utoipa::openapi::OpenApi as Document;
use utoipa::Modify;

/// Adds the app-token bearer scheme the data routes name.
pub struct AppToken;

impl Modify for AppToken {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "app_token",
            bearer("A client app's token (`sl_...`), from `POST /v1/apps` on the manager"),
        );
    }
}
