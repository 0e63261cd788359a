//! The tenant and app verbs of the manager client against a real HTTP
//! server on loopback (axum) that decodes the requests with the API types
//! and records what it was sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shardline_api::manager::{
    AppInfo, CreateAppResponse, CreateTenantRequest, Limits, RotateTokenRequest, TenantConfig,
    TenantInfo, TenantState, UpdateAppRequest, UpdateTenantRequest,
};
use shardline_api::{ApiError, ErrorBody, ErrorCode};
use shardline_client::ManagerClient;
use shardline_core::KeyType;

/// What the server saw: one `METHOD path?query` line per request.
type Seen = Arc<Mutex<Vec<String>>>;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn tenant(id: &str, config: TenantConfig) -> TenantInfo {
    TenantInfo {
        id: id.to_string(),
        name: id.to_uppercase(),
        keyspace: "default".into(),
        dedicated: false,
        shards: vec!["shard-0".into()],
        pg_name: "t_0123456789abcdef01234567".into(),
        config,
        state: TenantState::Active,
        apps: 1,
        created_at: "2024-01-01T00:00:00Z".into(),
    }
}

fn app(id: &str, tenant: &str) -> AppInfo {
    AppInfo {
        id: id.to_string(),
        name: id.to_string(),
        tenant: tenant.to_string(),
        description: String::new(),
        key_prefix: None,
        limits: Limits::default(),
        previous_token_expires_at: None,
        created_at: "2024-01-01T00:00:00Z".into(),
    }
}

fn record(seen: &Seen, method: &Method, uri: &Uri) {
    seen.lock().unwrap().push(format!("{method} {uri}"));
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            error: ApiError::new(ErrorCode::NotFound, "no such tenant"),
        }),
    )
        .into_response()
}

fn server(seen: Seen) -> Router {
    Router::new()
        .route(
            "/v1/tenants",
            post(
                |State(seen): State<Seen>,
                 method: Method,
                 uri: Uri,
                 Json(req): Json<CreateTenantRequest>| async move {
                    record(&seen, &method, &uri);
                    let mut t = tenant(&req.id, req.config);
                    t.dedicated = req.dedicated;
                    if req.dedicated {
                        t.keyspace = req.id.clone();
                        t.shards = (0..req.shards.unwrap_or(0))
                            .map(|i| format!("spare-{i}"))
                            .collect();
                    }
                    if let Some(n) = req.name {
                        t.name = n;
                    }
                    (StatusCode::CREATED, Json(t))
                },
            )
            .get(
                |State(seen): State<Seen>, method: Method, uri: Uri| async move {
                    record(&seen, &method, &uri);
                    Json(vec![
                        tenant("a", TenantConfig::default()),
                        tenant("b", TenantConfig::default()),
                    ])
                },
            ),
        )
        .route(
            "/v1/tenants/{id}",
            get(
                |State(seen): State<Seen>, method: Method, uri: Uri, Path(id): Path<String>| async move {
                    record(&seen, &method, &uri);
                    if id == "missing" {
                        return not_found();
                    }
                    Json(tenant(&id, TenantConfig::default())).into_response()
                },
            )
            .patch(
                |State(seen): State<Seen>,
                 method: Method,
                 uri: Uri,
                 Path(id): Path<String>,
                 Json(req): Json<UpdateTenantRequest>| async move {
                    record(&seen, &method, &uri);
                    let mut t = tenant(&id, req.config.unwrap_or_default());
                    if let Some(n) = req.name {
                        t.name = n;
                    }
                    Json(t)
                },
            )
            .delete(
                |State(seen): State<Seen>, method: Method, uri: Uri| async move {
                    record(&seen, &method, &uri);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/v1/apps",
            get(
                |State(seen): State<Seen>,
                 method: Method,
                 uri: Uri,
                 Query(q): Query<HashMap<String, String>>| async move {
                    record(&seen, &method, &uri);
                    let tenant = q.get("tenant").cloned().unwrap_or_else(|| "all".into());
                    Json(vec![app("app-1", &tenant)])
                },
            ),
        )
        .route(
            "/v1/apps/{id}",
            get(
                |State(seen): State<Seen>, method: Method, uri: Uri, Path(id): Path<String>| async move {
                    record(&seen, &method, &uri);
                    Json(app(&id, "acme"))
                },
            )
            .patch(
                |State(seen): State<Seen>,
                 method: Method,
                 uri: Uri,
                 Path(id): Path<String>,
                 Json(req): Json<UpdateAppRequest>| async move {
                    record(&seen, &method, &uri);
                    let mut a = app(&id, "acme");
                    a.description = req.description.unwrap_or_default();
                    a.key_prefix = req.key_prefix.filter(|p| !p.is_empty());
                    a.limits = req.limits.unwrap_or_default();
                    Json(a)
                },
            ),
        )
        .route(
            "/v1/apps/{id}/rotate",
            post(
                |State(seen): State<Seen>,
                 method: Method,
                 uri: Uri,
                 Path(id): Path<String>,
                 Json(req): Json<RotateTokenRequest>| async move {
                    record(&seen, &method, &uri);
                    let mut a = app(&id, "acme");
                    a.previous_token_expires_at = req
                        .grace_seconds
                        .map(|s| format!("in {s}s"));
                    Json(CreateAppResponse {
                        app: a,
                        token: "slt_new".into(),
                    })
                },
            ),
        )
        .with_state(seen)
}

#[tokio::test]
async fn tenant_verbs_send_the_api_bodies() {
    let seen: Seen = Arc::default();
    let base = serve(server(seen.clone())).await;
    let client = ManagerClient::new(&base, Some("adm".into())).unwrap();

    let config = TenantConfig {
        limits: Limits {
            requests_per_second: Some(100),
            burst: Some(200),
            max_concurrent: Some(8),
            max_shards: Some(4),
        },
        max_connections_per_shard: Some(5),
    };
    let created = client
        .create_tenant(&CreateTenantRequest {
            id: "acme".into(),
            name: Some("Acme Inc".into()),
            dedicated: true,
            shards: Some(2),
            key_type: KeyType::Bigint,
            config,
            ..CreateTenantRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(created.name, "Acme Inc");
    assert_eq!(created.keyspace, "acme");
    assert!(created.dedicated);
    assert_eq!(created.shards, vec!["spare-0", "spare-1"]);
    assert_eq!(created.config, config);

    let list = client.list_tenants().await.unwrap();
    let ids: Vec<&str> = list.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);

    // The id travels as one path segment, decoded back exactly.
    assert_eq!(client.get_tenant("x/y z").await.unwrap().id, "x/y z");
    let err = client.get_tenant("missing").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.api().unwrap().code, ErrorCode::NotFound);

    let updated = client
        .update_tenant(
            "acme",
            &UpdateTenantRequest {
                name: None,
                config: Some(config),
            },
        )
        .await
        .unwrap();
    // The name was not sent, so the server kept its own.
    assert_eq!(updated.name, "ACME");
    assert_eq!(updated.config, config);

    client.delete_tenant("acme", false).await.unwrap();
    client.delete_tenant("acme", true).await.unwrap();

    assert_eq!(
        *seen.lock().unwrap(),
        [
            "POST /v1/tenants",
            "GET /v1/tenants",
            "GET /v1/tenants/x%2Fy%20z",
            "GET /v1/tenants/missing",
            "PATCH /v1/tenants/acme",
            "DELETE /v1/tenants/acme",
            "DELETE /v1/tenants/acme?drop_data=true",
        ]
    );
}

#[tokio::test]
async fn app_verbs_send_the_api_bodies() {
    let seen: Seen = Arc::default();
    let base = serve(server(seen.clone())).await;
    let client = ManagerClient::new(&base, Some("adm".into())).unwrap();

    assert_eq!(client.list_apps(None).await.unwrap()[0].tenant, "all");
    assert_eq!(
        client.list_apps(Some("a&b c")).await.unwrap()[0].tenant,
        "a&b c"
    );
    let got = client.get_app("app-1").await.unwrap();
    assert_eq!((got.id.as_str(), got.tenant.as_str()), ("app-1", "acme"));

    let limits = Limits {
        requests_per_second: Some(10),
        ..Limits::default()
    };
    let updated = client
        .update_app(
            "app-1",
            &UpdateAppRequest {
                description: Some("billing".into()),
                key_prefix: Some("acme:".into()),
                limits: Some(limits),
                ..UpdateAppRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.description, "billing");
    assert_eq!(updated.key_prefix.as_deref(), Some("acme:"));
    assert_eq!(updated.limits, limits);

    let rotated = client
        .rotate_app_token(
            "app-1",
            &RotateTokenRequest {
                grace_seconds: Some(60),
            },
        )
        .await
        .unwrap();
    assert_eq!(rotated.token, "slt_new");
    assert_eq!(rotated.app.id, "app-1");
    assert_eq!(
        rotated.app.previous_token_expires_at.as_deref(),
        Some("in 60s")
    );
    // No grace given: the field is left out (not sent as null) and the
    // server picks its default.
    assert_eq!(
        serde_json::to_value(RotateTokenRequest::default()).unwrap(),
        serde_json::json!({})
    );
    let rotated = client
        .rotate_app_token("app-1", &RotateTokenRequest::default())
        .await
        .unwrap();
    assert_eq!(rotated.app.previous_token_expires_at, None);

    assert_eq!(
        *seen.lock().unwrap(),
        [
            "GET /v1/apps",
            "GET /v1/apps?tenant=a%26b%20c",
            "GET /v1/apps/app-1",
            "PATCH /v1/apps/app-1",
            "POST /v1/apps/app-1/rotate",
            "POST /v1/apps/app-1/rotate",
        ]
    );
}
