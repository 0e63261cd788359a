//! Client apps: a tenant is required, fields are validated, tokens rotate
//! with a grace period for the old one, and each token has a SCRAM
//! verifier sharing its app's salt.

mod common;

use common::{Harness, TIMEOUT};
use shardline_api::manager::{
    CreateAppRequest, CreateTenantRequest, RotateTokenRequest, UpdateAppRequest,
};
use shardline_core::auth::token_hash;
use shardline_core::catalog::{keys, App, Limits};
use shardline_core::scram::{Verifier, DEFAULT_ITERATIONS, DEFAULT_SALT_LEN};
use shardline_manager::apps::{self, now_ms, DEFAULT_GRACE_SECONDS, MAX_GRACE_SECONDS};
use shardline_manager::error::ServiceError;
use shardline_manager::tenants;

fn app(name: &str, tenant: Option<&str>) -> CreateAppRequest {
    CreateAppRequest {
        name: name.into(),
        tenant: tenant.map(str::to_string),
        ..Default::default()
    }
}

/// A catalog with keyspace `default` (no shards) and tenant `default`.
async fn with_default_tenant() -> Harness {
    let h = Harness::start(0).await;
    h.keyspace("default", &[]).await;
    h.shared_tenant("default", "default").await;
    h
}

#[tokio::test]
async fn apps_need_an_existing_tenant() {
    let h = Harness::start(0).await;
    h.keyspace("default", &[]).await;
    let e = apps::create_app(&h.svc, &app("web", None))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("default"), "{e}");
    let e = apps::create_app(&h.svc, &app("web", Some("Bad Id")))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    tenants::create_tenant(
        &h.svc,
        &CreateTenantRequest {
            id: "acme".into(),
            ..Default::default()
        },
        TIMEOUT,
    )
    .await
    .unwrap();
    let (created, token) = apps::create_app(&h.svc, &app("web", Some("acme")))
        .await
        .unwrap();
    assert_eq!(created.tenant, "acme");
    assert!(token.starts_with("sl_") && token.len() == 67, "{token}");
    let stored = &h.svc.current().catalog.apps["web"];
    assert_eq!(stored.token_hash, token_hash(&token));
    // App ids are unique across tenants.
    h.shared_tenant("other", "default").await;
    let e = apps::create_app(&h.svc, &app("web", Some("other")))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Conflict(_)), "{e}");
}

#[tokio::test]
async fn fields_are_validated() {
    let h = with_default_tenant().await;
    let mut req = app("web", None);
    for (prefix, ok) in [
        (String::new(), false),
        ("x".repeat(256), false),
        ("x".repeat(255), true),
        ("tenant-7:".into(), true),
    ] {
        req.key_prefix = Some(prefix.clone());
        req.name = format!("app-{}", prefix.len());
        let res = apps::create_app(&h.svc, &req).await;
        assert_eq!(res.is_ok(), ok, "key_prefix of {} bytes", prefix.len());
        if let Err(e) = res {
            assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
        }
    }
    let bad_limits = [
        Limits {
            max_shards: Some(1),
            ..Limits::default()
        },
        Limits {
            requests_per_second: Some(0),
            ..Limits::default()
        },
        Limits {
            burst: Some(0),
            ..Limits::default()
        },
        Limits {
            max_concurrent: Some(0),
            ..Limits::default()
        },
    ];
    for limits in bad_limits {
        let req = CreateAppRequest {
            name: "limited".into(),
            limits,
            ..Default::default()
        };
        let e = apps::create_app(&h.svc, &req).await.unwrap_err();
        assert!(matches!(e, ServiceError::Invalid(_)), "{limits:?}: {e}");
    }
    let good = Limits {
        requests_per_second: Some(100),
        burst: Some(20),
        max_concurrent: Some(5),
        max_shards: None,
    };
    let (a, _) = apps::create_app(
        &h.svc,
        &CreateAppRequest {
            name: "limited".into(),
            description: "billing service".into(),
            key_prefix: Some("acct:".into()),
            limits: good,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(a.limits, good);

    // Update: "" removes the prefix, limits are replaced, bad ones refused.
    let upd = apps::update_app(
        &h.svc,
        "limited",
        &UpdateAppRequest {
            name: Some("Billing".into()),
            description: Some("moved".into()),
            key_prefix: Some(String::new()),
            limits: Some(Limits {
                max_concurrent: Some(1),
                ..Limits::default()
            }),
        },
    )
    .await
    .unwrap();
    assert_eq!(upd.id, "limited");
    assert_eq!(upd.name, "Billing");
    assert_eq!(upd.description, "moved");
    assert_eq!(upd.key_prefix, None);
    assert_eq!(upd.limits.max_concurrent, Some(1));
    assert_eq!(upd.limits.requests_per_second, None);
    assert_eq!(upd.token_hash, a.token_hash, "the token stays");
    let e = apps::update_app(
        &h.svc,
        "limited",
        &UpdateAppRequest {
            limits: Some(Limits {
                max_shards: Some(2),
                ..Limits::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    let e = apps::update_app(&h.svc, "nope", &UpdateAppRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
}

/// The verifier `stored` is the one of `token`.
fn verifies(stored: Option<&str>, token: &str) -> Verifier {
    let v = Verifier::parse(stored.expect("a SCRAM verifier")).unwrap();
    assert_eq!(Verifier::new(token, &v.salt, v.iterations), v, "{token}");
    v
}

#[tokio::test]
async fn tokens_carry_scram_verifiers_with_one_salt_per_app() {
    let h = with_default_tenant().await;
    let (a, first) = apps::create_app(&h.svc, &app("web", None)).await.unwrap();
    let created = verifies(a.token_scram.as_deref(), &first);
    assert_eq!(created.iterations, DEFAULT_ITERATIONS);
    assert_eq!(created.salt.len(), DEFAULT_SALT_LEN);
    let (b, b_token) = apps::create_app(&h.svc, &app("api", None)).await.unwrap();
    let other = verifies(b.token_scram.as_deref(), &b_token).salt;
    assert_ne!(other, created.salt, "a fresh salt per app");

    // The new token keeps the salt; the old verifier moves along with
    // the old token.
    let (rotated, second) = apps::rotate_token(&h.svc, "web", &RotateTokenRequest::default())
        .await
        .unwrap();
    let new = verifies(rotated.token_scram.as_deref(), &second);
    let prev = rotated.previous_token.as_ref().unwrap();
    let old = verifies(prev.token_scram.as_deref(), &first);
    assert_eq!(old, created);
    assert_eq!(
        (new.salt, new.iterations),
        (created.salt.clone(), created.iterations)
    );
    assert_eq!(h.svc.current().catalog.apps["web"], rotated);

    // An app from before verifiers: its first rotation gives the new
    // token one with a fresh salt; the old token has none.
    let legacy = App {
        token_scram: None,
        previous_token: None,
        ..h.svc.current().catalog.apps["api"].clone()
    };
    h.svc
        .update(&[keys::app("api")], |_| {
            Ok(vec![shardline_manager::service::put(
                keys::app("api"),
                &legacy,
            )])
        })
        .await
        .unwrap();
    let (rotated, token) = apps::rotate_token(&h.svc, "api", &RotateTokenRequest::default())
        .await
        .unwrap();
    verifies(rotated.token_scram.as_deref(), &token);
    assert_eq!(rotated.previous_token.unwrap().token_scram, None);
}

#[tokio::test]
async fn rotation_keeps_the_old_token_for_the_grace_period() {
    let h = with_default_tenant().await;
    let (a, first) = apps::create_app(&h.svc, &app("web", None)).await.unwrap();
    assert_eq!(a.token_hash, token_hash(&first));

    let before = now_ms();
    let (rotated, second) = apps::rotate_token(&h.svc, "web", &RotateTokenRequest::default())
        .await
        .unwrap();
    let after = now_ms();
    assert_ne!(second, first);
    assert_eq!(rotated.token_hash, token_hash(&second));
    let prev = rotated.previous_token.clone().expect("old token kept");
    assert_eq!(prev.token_hash, token_hash(&first));
    let grace_ms = DEFAULT_GRACE_SECONDS * 1000;
    assert!(prev.expires_at_ms >= before + grace_ms && prev.expires_at_ms <= after + grace_ms);
    assert_eq!(h.svc.current().catalog.apps["web"], rotated);

    // Rotating again: the token just replaced is the one kept.
    let (again, third) = apps::rotate_token(
        &h.svc,
        "web",
        &RotateTokenRequest {
            grace_seconds: Some(60),
        },
    )
    .await
    .unwrap();
    assert_eq!(again.token_hash, token_hash(&third));
    assert_eq!(
        again.previous_token.as_ref().unwrap().token_hash,
        token_hash(&second)
    );

    // No grace: only the new token works.
    let (no_grace, _) = apps::rotate_token(
        &h.svc,
        "web",
        &RotateTokenRequest {
            grace_seconds: Some(0),
        },
    )
    .await
    .unwrap();
    assert_eq!(no_grace.previous_token, None);

    let e = apps::rotate_token(
        &h.svc,
        "web",
        &RotateTokenRequest {
            grace_seconds: Some(MAX_GRACE_SECONDS + 1),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ServiceError::Invalid(_)), "{e}");
    apps::rotate_token(
        &h.svc,
        "web",
        &RotateTokenRequest {
            grace_seconds: Some(MAX_GRACE_SECONDS),
        },
    )
    .await
    .unwrap();
    let e = apps::rotate_token(&h.svc, "nope", &RotateTokenRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e}");
}
