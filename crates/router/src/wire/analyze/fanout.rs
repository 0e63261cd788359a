//! The merge shape of a read spread over shards ([`FanOut`]).
//!
//! Only the plainest reads qualify: one `SELECT` with no subquery, CTE,
//! set operation, `DISTINCT`, `HAVING` or window function, whose sharded
//! tables are joined on their keys (so each shard's join is complete),
//! whose aggregates are whole output columns, and whose `GROUP BY` and
//! `ORDER BY` terms are output columns (by position, alias, or the same
//! column or simple call). The caller checks "one `SELECT`, no window
//! calls" from the walk's counts; the rest is read here.

use sqlparser::ast::{
    Distinct, DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, LimitClause, OrderByKind, OrderBySort, Query, Select, SelectItem, SetExpr, Value,
};

use super::walk::{aggregate_name, fold, TopSelect};
use super::{Aggregate, FanOut, OutputAggregate, SortKey};

/// The merge shape of `query`, if it has one.
pub(super) fn shape(query: &Query, top: &TopSelect) -> Option<FanOut> {
    if query.with.is_some() || !query.locks.is_empty() || !top.colocated {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let unmergeable = matches!(select.distinct, Some(Distinct::Distinct | Distinct::On(_)))
        || select.having.is_some()
        || select.qualify.is_some()
        || select.into.is_some()
        || select.top.is_some()
        || select.prewhere.is_some()
        || !select.named_window.is_empty()
        || !select.sort_by.is_empty()
        || !select.cluster_by.is_empty()
        || !select.distribute_by.is_empty();
    if unmergeable {
        return None;
    }

    let mut aggregates = Vec::new();
    let mut wildcard = false;
    for (column, item) in select.projection.iter().enumerate() {
        let calls = top.items.get(column)?;
        if calls.windows > 0 {
            return None;
        }
        let expr = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                wildcard = true;
                continue;
            }
            SelectItem::ExprWithAliases { .. } => return None,
        };
        // The column must be one mergeable aggregate call, or hold none.
        match (aggregate(expr), calls.aggregates) {
            (Some(function), 1) => aggregates.push(OutputAggregate { column, function }),
            (None, 0) => {}
            _ => return None,
        }
    }
    // After `*`, output positions are unknown.
    if wildcard && !aggregates.is_empty() {
        return None;
    }

    let group_by = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) => {
            if !modifiers.is_empty() || (wildcard && !exprs.is_empty()) {
                return None;
            }
            for e in exprs {
                let column = output_column(e, select)?;
                if aggregates.iter().any(|a| a.column == column) {
                    return None;
                }
            }
            !exprs.is_empty()
        }
        GroupByExpr::All(_) => return None,
    };

    let mut order_by = Vec::new();
    if let Some(clause) = &query.order_by {
        let OrderByKind::Expressions(items) = &clause.kind else {
            return None;
        };
        if clause.interpolate.is_some() || (wildcard && !items.is_empty()) {
            return None;
        }
        for item in items {
            if item.with_fill.is_some() {
                return None;
            }
            let column = output_column(&item.expr, select)?;
            let descending = match &item.options.sort {
                None | Some(OrderBySort::Asc) => false,
                Some(OrderBySort::Desc) => true,
                Some(OrderBySort::Using(_)) => return None,
            };
            order_by.push(SortKey {
                column,
                descending,
                nulls_first: item.options.nulls_first.unwrap_or(descending),
            });
        }
    }

    let (mut limit, mut offset) = (None, None);
    match &query.limit_clause {
        Some(LimitClause::LimitOffset {
            limit: count_expr,
            offset: offset_clause,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return None;
            }
            if let Some(e) = count_expr {
                limit = count(e)?;
            }
            if let Some(o) = offset_clause {
                offset = count(&o.value)?;
            }
        }
        Some(LimitClause::OffsetCommaLimit { .. }) => return None,
        None => {}
    }
    if let Some(fetch) = &query.fetch {
        if fetch.with_ties || fetch.percent || limit.is_some() {
            return None;
        }
        limit = match &fetch.quantity {
            Some(e) => count(e)?,
            None => Some(1),
        };
    }

    Some(FanOut {
        aggregates,
        group_by,
        order_by,
        limit,
        offset,
    })
}

/// The mergeable aggregate an output expression is, if it is one.
fn aggregate(expr: &Expr) -> Option<Aggregate> {
    let Expr::Function(function) = expr else {
        return None;
    };
    let name = aggregate_name(&function.name)?;
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    let plain = function.over.is_none()
        && function.within_group.is_empty()
        && function.null_treatment.is_none()
        && matches!(function.parameters, FunctionArguments::None)
        && list.clauses.is_empty()
        && !matches!(list.duplicate_treatment, Some(DuplicateTreatment::Distinct));
    if !plain {
        return None;
    }
    match name.as_str() {
        "count" => Some(Aggregate::Count),
        "sum" => Some(Aggregate::Sum),
        "min" => Some(Aggregate::Min),
        "max" => Some(Aggregate::Max),
        "avg" => Some(Aggregate::Avg),
        _ => None,
    }
}

/// The output column a `GROUP BY` or `ORDER BY` term names: a position
/// (`2`), an output alias, or the same column or simple call as an output
/// expression. Only shallow terms are compared, which bounds the
/// recursion of `Expr`'s equality.
fn output_column(e: &Expr, select: &Select) -> Option<usize> {
    if let Expr::Value(value) = e {
        if let Value::Number(n, _) = &value.value {
            let position: usize = n.parse().ok()?;
            return (1..=select.projection.len())
                .contains(&position)
                .then(|| position - 1);
        }
    }
    if let Expr::Identifier(ident) = e {
        let name = fold(ident);
        let aliased = select.projection.iter().position(
            |item| matches!(item, SelectItem::ExprWithAlias { alias, .. } if fold(alias) == name),
        );
        if aliased.is_some() {
            return aliased;
        }
    }
    if !shallow(e) {
        return None;
    }
    select.projection.iter().position(|item| {
        matches!(item, SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } if x == e)
    })
}

/// A column, a constant, or a call on those.
fn shallow(e: &Expr) -> bool {
    let simple = |e: &Expr| {
        matches!(
            e,
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_)
        )
    };
    match e {
        Expr::Function(function) => {
            let args = match &function.args {
                FunctionArguments::None => true,
                FunctionArguments::List(list) => list.args.iter().all(|arg| match arg {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => simple(x),
                    FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => true,
                    _ => false,
                }),
                FunctionArguments::Subquery(_) => false,
            };
            args && function.over.is_none()
                && function.filter.is_none()
                && function.within_group.is_empty()
                && matches!(function.parameters, FunctionArguments::None)
        }
        e => simple(e),
    }
}

/// A `LIMIT`/`OFFSET` count: `Some(Some(n))` for a number, `Some(None)`
/// for `NULL` (no limit), `None` for anything else (a parameter, an
/// expression), which the merge cannot know.
fn count(e: &Expr) -> Option<Option<u64>> {
    let Expr::Value(value) = e else {
        return None;
    };
    match &value.value {
        Value::Number(n, _) => n.parse().ok().map(Some),
        Value::Null => Some(None),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::wire::analyze::tests::an;
    use crate::wire::analyze::{Aggregate, FanOut, OutputAggregate, SortKey};

    #[test]
    fn fanout_shapes() {
        let fan = |sql: &str| an(sql).fanout;
        assert_eq!(fan("SELECT * FROM users"), Some(FanOut::default()));
        assert_eq!(
            fan("SELECT count(*) FROM users"),
            Some(FanOut {
                aggregates: vec![OutputAggregate {
                    column: 0,
                    function: Aggregate::Count
                }],
                ..FanOut::default()
            })
        );
        assert_eq!(
            fan(
                "SELECT age, count(*), sum(score) AS s, avg(score), min(x), max(x) FROM users \
                 GROUP BY age ORDER BY s DESC, 1 LIMIT 10 OFFSET 5"
            ),
            Some(FanOut {
                aggregates: [
                    (1, Aggregate::Count),
                    (2, Aggregate::Sum),
                    (3, Aggregate::Avg),
                    (4, Aggregate::Min),
                    (5, Aggregate::Max)
                ]
                .map(|(column, function)| OutputAggregate { column, function })
                .to_vec(),
                group_by: true,
                order_by: vec![
                    SortKey {
                        column: 2,
                        descending: true,
                        nulls_first: true
                    },
                    SortKey {
                        column: 0,
                        descending: false,
                        nulls_first: false
                    },
                ],
                limit: Some(10),
                offset: Some(5),
            })
        );
        assert_eq!(
            fan("SELECT id, name FROM users ORDER BY lower(name) NULLS FIRST FETCH FIRST 3 ROWS ONLY")
                .map(|f| (f.order_by.len(), f.limit)),
            None,
            "ORDER BY a term that is not an output column"
        );
        assert_eq!(
            fan(
                "SELECT id, lower(name) FROM users ORDER BY lower(name) DESC NULLS LAST \
                 FETCH FIRST 3 ROWS ONLY"
            ),
            Some(FanOut {
                order_by: vec![SortKey {
                    column: 1,
                    descending: true,
                    nulls_first: false
                }],
                limit: Some(3),
                ..FanOut::default()
            })
        );
        // Keyed reads get a shape too (several keys may span shards).
        assert!(fan("SELECT count(*) FROM users WHERE id IN (1, 2)").is_some());
        // Co-located joins merge; others do not.
        assert!(fan("SELECT * FROM orders o JOIN items i USING (customer_id)").is_some());
        for sql in [
            "SELECT * FROM orders o JOIN items i ON o.id = i.order_id",
            "SELECT DISTINCT age FROM users",
            "SELECT count(DISTINCT age) FROM users",
            "SELECT string_agg(name, ',') FROM users",
            "SELECT count(*) + 1 FROM users",
            "SELECT age, count(*) FROM users GROUP BY age HAVING count(*) > 1",
            "SELECT count(*) FROM users GROUP BY age",
            "SELECT id, row_number() OVER () FROM users",
            "SELECT * FROM users LIMIT $1",
            "SELECT * FROM users ORDER BY id",
            "SELECT * FROM users WHERE id IN (SELECT 1)",
            "WITH x AS (SELECT * FROM users) SELECT * FROM x",
            "SELECT * FROM users UNION ALL SELECT * FROM users",
            "SELECT 1",
            "SELECT * FROM users WHERE id = 1 FOR UPDATE",
        ] {
            assert_eq!(fan(sql), None, "{sql}");
        }
    }
}
