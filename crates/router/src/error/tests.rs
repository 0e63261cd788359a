//! Each reason's HTTP body and wire SQLSTATE, pinned.

use std::collections::HashSet;
use std::mem::discriminant;

use super::*;

fn pg(sqlstate: &str) -> Box<PgError> {
    Box::new(PgError {
        sqlstate: sqlstate.into(),
        message: format!("pg says {sqlstate}"),
        detail: Some("the detail".into()),
        hint: Some("the hint".into()),
        position: Some(7),
    })
}

/// One of each reason (checked by `every_reason_is_covered`).
fn samples() -> Vec<Reason> {
    vec![
        Reason::Statement {
            class: StatementClass::Invalid,
            pg: pg("42601"),
        },
        Reason::StaleStatement(pg("26000")),
        Reason::Moved(pg(MOVED_SQLSTATE)),
        Reason::ReadOnly(pg("25006")),
        Reason::ShardDown(pg("57P01")),
        Reason::ShardFault(pg("XX000")),
        Reason::StatementRefused(Refusal::Copy),
        Reason::InvalidParameter {
            message: "$1: expected int4, got string \"x\"".into(),
            hint: None,
        },
        Reason::ResultTooLarge {
            max_rows: 10,
            max_bytes: 100,
            cancelled: true,
        },
        Reason::UnreturnableColumn {
            column: 2,
            name: "Pt".into(),
            type_name: "point".into(),
        },
        Reason::UndecodableValue { column: 3 },
        Reason::InvalidShardKey("shard_key is empty".into()),
        Reason::NoKeyspace {
            keyspace: "ks".into(),
        },
        Reason::NoToken,
        Reason::InvalidToken,
        Reason::TenantDeleting,
        Reason::TenantUnknown,
        Reason::ForbiddenKeyspace {
            allowed: "shared".into(),
        },
        Reason::ForbiddenKeyPrefix {
            prefix: "acme:".into(),
        },
        Reason::ConcurrencyLimited(QuotaHolder::Tenant),
        Reason::RateLimited {
            holder: QuotaHolder::App,
            retry_after: 3,
        },
        Reason::NoShards {
            keyspace: "ks".into(),
        },
        Reason::ShardNotInCatalog { shard: "s9".into() },
        Reason::CutOff,
        Reason::LeaseRanOut,
        Reason::PrimaryFenced {
            shard: "s1".into(),
            primary: "s1-a".into(),
        },
        Reason::PrimaryUnreachable { shard: "s1".into() },
        Reason::FailoverTimedOut {
            shard: "s1".into(),
            hold: Duration::from_secs(10),
        },
        Reason::RangeMoving { shard: "s2".into() },
        Reason::Resharded {
            fence: 8,
            version: 7,
        },
        Reason::ConnectionLost,
        Reason::PoolBusy {
            waited: Duration::from_millis(250),
        },
        Reason::BudgetExhausted {
            waited: Duration::from_millis(300),
        },
        Reason::PoolClosed,
        Reason::ConnectTimeout,
        Reason::CannotConnect {
            sqlstate: Some("53300".into()),
        },
        Reason::LoginRefused,
        Reason::InvalidShardSettings,
    ]
}

/// Adding a reason is a compile error here until `samples` and
/// `REASONS` have it.
fn _exhaustive(r: &Reason) {
    match r {
        Reason::Statement { .. }
        | Reason::StaleStatement(_)
        | Reason::Moved(_)
        | Reason::ReadOnly(_)
        | Reason::ShardDown(_)
        | Reason::ShardFault(_)
        | Reason::StatementRefused(_)
        | Reason::InvalidParameter { .. }
        | Reason::ResultTooLarge { .. }
        | Reason::UnreturnableColumn { .. }
        | Reason::UndecodableValue { .. }
        | Reason::InvalidShardKey(_)
        | Reason::NoKeyspace { .. }
        | Reason::NoToken
        | Reason::InvalidToken
        | Reason::TenantDeleting
        | Reason::TenantUnknown
        | Reason::ForbiddenKeyspace { .. }
        | Reason::ForbiddenKeyPrefix { .. }
        | Reason::ConcurrencyLimited(_)
        | Reason::RateLimited { .. }
        | Reason::NoShards { .. }
        | Reason::ShardNotInCatalog { .. }
        | Reason::CutOff
        | Reason::LeaseRanOut
        | Reason::PrimaryFenced { .. }
        | Reason::PrimaryUnreachable { .. }
        | Reason::FailoverTimedOut { .. }
        | Reason::RangeMoving { .. }
        | Reason::Resharded { .. }
        | Reason::ConnectionLost
        | Reason::PoolBusy { .. }
        | Reason::BudgetExhausted { .. }
        | Reason::PoolClosed
        | Reason::ConnectTimeout
        | Reason::CannotConnect { .. }
        | Reason::LoginRefused
        | Reason::InvalidShardSettings => {}
    }
}

const REASONS: usize = 38;

#[test]
fn every_reason_is_covered() {
    let kinds: HashSet<_> = samples().iter().map(discriminant).collect();
    assert_eq!(kinds.len(), REASONS);
    assert_eq!(samples().len(), REASONS);
}

/// The SQLSTATE the wire front end gave each HTTP code before the
/// router had its own error (`sqlstate_of`).
fn wire_class_before(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidShardKey => "22023",
        ErrorCode::NotFound => "3D000",
        ErrorCode::Forbidden => "42501",
        ErrorCode::Unauthorized => "28000",
        ErrorCode::RateLimited | ErrorCode::ConcurrencyLimited => "53300",
        ErrorCode::Unavailable | ErrorCode::ShardUnavailable => "57P03",
        ErrorCode::InvalidRequest | ErrorCode::InvalidParameter => "22023",
        ErrorCode::StatementFailed => "XX000",
        ErrorCode::ConstraintViolation => "23000",
        ErrorCode::TransactionConflict => "40001",
        ErrorCode::MethodNotAllowed => "0A000",
        ErrorCode::Conflict => "55000",
        ErrorCode::PayloadTooLarge => "54000",
        ErrorCode::QuotaExceeded => "53400",
        ErrorCode::Timeout => "57014",
        ErrorCode::Internal => "XX000",
    }
}

/// Each reason's HTTP body (status, code, message, retryable,
/// retry_after, sqlstate, hint) and wire SQLSTATE, as answered before
/// the router had its own error.
#[test]
fn http_and_wire_mapping() {
    type Row<'a> = (
        u16,
        &'a str,
        &'a str,
        bool,
        Option<u64>,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
    );
    #[rustfmt::skip]
    let expected: [Row<'_>; REASONS] = [
        (400, "statement_failed", "pg says 42601", false, None, Some("42601"), Some("the hint"), "42601"),
        (400, "statement_failed", "pg says 26000", false, None, Some("26000"), Some("the hint"), "26000"),
        (503, "shard_unavailable", "pg says SLM01", true, Some(1), Some("SLM01"), Some("the hint"), "SLM01"),
        (503, "shard_unavailable", "pg says 25006", true, Some(1), Some("25006"), Some("the hint"), "25006"),
        (503, "shard_unavailable", "pg says 57P01", true, Some(1), Some("57P01"), Some("the hint"), "57P01"),
        (503, "shard_unavailable", "pg says XX000", false, None, Some("XX000"), Some("the hint"), "XX000"),
        (400, "invalid_request", "COPY is not supported over this API", false, None, None, Some("use INSERT with parameters, or SELECT"), "22023"),
        (400, "invalid_parameter", "$1: expected int4, got string \"x\"", false, None, None, None, "22023"),
        (400, "invalid_request", "the result is larger than 10 rows or 100 bytes; the statement was cancelled", false, None, None, Some("add LIMIT and fetch the rows in pages"), "22023"),
        (400, "invalid_request", "column 2 (\"Pt\") has type point, which cannot be returned as JSON", false, None, None, Some("cast it in SQL, e.g. \"Pt\"::text"), "22023"),
        (400, "invalid_request", "the value of column 3 cannot be returned as JSON", false, None, None, Some("cast the column to text in SQL, e.g. col::text"), "22023"),
        (400, "invalid_shard_key", "shard_key is empty", false, None, None, None, "22023"),
        (404, "not_found", "no keyspace \"ks\"", false, None, None, None, "3D000"),
        (401, "unauthorized", "missing bearer token (Authorization: Bearer <app token>)", false, None, None, None, "28000"),
        (401, "unauthorized", "invalid token", false, None, None, None, "28000"),
        (403, "forbidden", "this app's tenant is being deleted", false, None, None, None, "42501"),
        (403, "forbidden", "this app's tenant is unknown", false, None, None, None, "42501"),
        (403, "forbidden", "this app may only use keyspace \"shared\" (or leave keyspace out)", false, None, None, None, "42501"),
        (403, "forbidden", "this app's shard keys must start with \"acme:\"", false, None, None, None, "42501"),
        (429, "concurrency_limited", "too many requests of this tenant in flight", true, Some(1), None, None, "53300"),
        (429, "rate_limited", "over this app's request rate", true, Some(3), None, None, "53300"),
        (503, "unavailable", "keyspace \"ks\" has no shards yet", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "shard s9 is not in the catalog", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", CUT_OFF, true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "this router's lease ran out while the write ran (it has not heard from the manager); the statement was cancelled and may or may not have taken effect", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "shard s1's primary s1-a is being replaced by a failover; the statement was cancelled and may or may not have taken effect", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "shard s1 is unavailable: its primary is failing over or cannot be reached", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "shard s1 is failing over; it did not end within 10s", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "the key's range on shard s2 is moving to another shard; retry shortly", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "the shard was resharded at catalog version 8, after this router's routing table (7); retry shortly", true, Some(1), Some("SLM01"), None, "57P03"),
        (503, "shard_unavailable", "lost the connection to the shard", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "all connections to the shard are busy (waited 250 ms)", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "this router's connections to the shard are all in use (waited 300 ms)", true, Some(1), None, None, "57P03"),
        (503, "unavailable", "the shard's connection pool is closed", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "timed out connecting to the shard", true, Some(1), None, None, "57P03"),
        (503, "shard_unavailable", "cannot connect to the shard", true, Some(1), Some("53300"), None, "57P03"),
        (503, "unavailable", "the router cannot log in to the shard", true, Some(5), None, None, "57P03"),
        (503, "unavailable", "the shard's connection settings are invalid", true, Some(5), None, None, "57P03"),
    ];
    for (reason, want) in samples().into_iter().zip(expected) {
        let e = RouterError::from(reason);
        let (wire, wire_message, wire_hint) = (
            e.wire_sqlstate(),
            e.message(),
            e.hint().map(|h| h.into_owned()),
        );
        let pg_fields = e.postgres().is_some();
        if !pg_fields {
            // Our own reasons keep the SQLSTATE they had on the wire.
            assert_eq!(wire, wire_class_before(e.code()), "{e:?}");
        }
        let api = ApiError::from(e);
        let got: Row<'_> = (
            api.http_status(),
            api.code.as_str(),
            &api.message,
            api.retryable,
            api.retry_after,
            api.sqlstate.as_deref(),
            api.hint.as_deref(),
            wire.as_ref(),
        );
        assert_eq!(got, want);
        assert_eq!(wire_message, api.message);
        assert_eq!(wire_hint, api.hint);
        let (detail, position) = if pg_fields {
            (Some("the detail"), Some(7))
        } else {
            (None, None)
        };
        assert_eq!((api.detail.as_deref(), api.position), (detail, position));
        assert_eq!((api.statement_index, api.shard), (None, None));
    }
}

#[test]
fn statement_classes_and_refusals() {
    let class = |class| {
        ApiError::from(RouterError::from(Reason::Statement {
            class,
            pg: pg("57014"),
        }))
    };
    let t = class(StatementClass::Timeout);
    assert_eq!(
        (t.http_status(), t.code, t.retryable, t.retry_after),
        (504, ErrorCode::Timeout, true, None)
    );
    assert_eq!(
        t.message,
        "pg says 57014 (the statement ran past its time limit)"
    );
    for (c, status, code, retryable) in [
        (
            StatementClass::Invalid,
            400,
            ErrorCode::StatementFailed,
            false,
        ),
        (
            StatementClass::Constraint,
            409,
            ErrorCode::ConstraintViolation,
            false,
        ),
        (
            StatementClass::Conflict,
            409,
            ErrorCode::TransactionConflict,
            true,
        ),
        (StatementClass::Forbidden, 403, ErrorCode::Forbidden, false),
    ] {
        let e = class(c);
        assert_eq!(
            (e.http_status(), e.code, e.retryable),
            (status, code, retryable)
        );
        assert_eq!(e.message, "pg says 57014");
    }
    for (r, message, hint) in [
        (
            Refusal::TransactionControl,
            "transaction control statements are not accepted",
            TX_HINT,
        ),
        (
            Refusal::SavepointOutsideTransaction,
            "savepoints are only accepted inside a transaction",
            TX_HINT,
        ),
        (
            Refusal::TwoPhaseCommit,
            "two-phase commit is not accepted",
            TX_HINT,
        ),
        (
            Refusal::SessionState("SET".into()),
            "SET statements change session state and are not accepted",
            SESSION_HINT,
        ),
    ] {
        let e = ApiError::from(RouterError::from(Reason::StatementRefused(r)));
        assert_eq!(
            (e.code, e.message.as_str(), e.hint.as_deref()),
            (ErrorCode::InvalidRequest, message, Some(hint))
        );
    }
    let e = RouterError::from(Reason::ResultTooLarge {
        max_rows: 1,
        max_bytes: 2,
        cancelled: false,
    });
    assert_eq!(
        e.message(),
        "the result is larger than 1 rows or 2 bytes; the statement ran, its rows are not returned"
    );
    let e = RouterError::from(Reason::UnreturnableColumn {
        column: 1,
        name: "pt".into(),
        type_name: "point".into(),
    });
    assert_eq!(e.hint().as_deref(), Some("cast it in SQL, e.g. pt::text"));
}

#[test]
fn where_it_happened_reaches_the_body() {
    let e = RouterError::from(Reason::Statement {
        class: StatementClass::Constraint,
        pg: pg("23505"),
    })
    .at_statement(2)
    .or_shard("s1")
    .or_shard("s2");
    assert_eq!((e.shard(), e.statement_index()), (Some("s1"), Some(2)));
    let body = serde_json::to_value(ApiError::from(e)).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "code": "constraint_violation",
            "message": "pg says 23505",
            "retryable": false,
            "sqlstate": "23505",
            "detail": "the detail",
            "hint": "the hint",
            "position": 7,
            "statement_index": 2,
            "shard": "s1",
        })
    );
    let body = serde_json::to_value(ApiError::from(RouterError::from(Reason::CutOff))).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "code": "shard_unavailable",
            "message": CUT_OFF,
            "retryable": true,
            "retry_after": 1,
        })
    );
}

#[test]
fn decisions_are_typed() {
    let e = |r| RouterError::from(r);
    assert!(e(Reason::Moved(pg(MOVED_SQLSTATE))).is_moved());
    assert!(e(Reason::Resharded {
        fence: 2,
        version: 1
    })
    .is_moved());
    assert!(!e(Reason::ReadOnly(pg("25006"))).is_moved());
    assert!(e(Reason::ReadOnly(pg("25006"))).is_read_only());
    assert!(!e(Reason::ShardDown(pg("57P01"))).is_read_only());
    assert!(e(Reason::StaleStatement(pg("0A000"))).is_stale_statement());
    assert!(!e(Reason::Statement {
        class: StatementClass::Invalid,
        pg: pg("0A000")
    })
    .is_stale_statement());
}
