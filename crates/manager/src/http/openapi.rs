//! What the manager's OpenAPI 3.1 document needs besides the handlers'
//! `#[utoipa::path]` descriptions and the `shardline-api` schemas (both
//! assembled in the parent module, `http`): the two
//! bearer schemes (the admin token; the router token of the catalog
//! watch, heartbeats and the health feed).
//! A leaf: it uses nothing of the handlers, so the module graph stays
//! one-way. The document is served at `/openapi.json` (no token needed)
//! and checked in as `docs/openapi/manager.json`; a test fails when the
//! two differ.

use shardline_http::openapi::bearer;
use utoipa::openapi::OpenApi as Document;
use utoipa::Modify;

/// Adds the bearer schemes the routes name.
pub struct Tokens;

impl Modify for Tokens {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            bearer("The manager's `admin_token` (or `$SHARDLINE_ADMIN_TOKEN`)"),
        );
        components.add_security_scheme(
            "router_token",
            bearer("The routers' `router_token` (or `$SHARDLINE_ROUTER_TOKEN`)"),
        );
    }
}
