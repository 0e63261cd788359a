//! Expressions: walked for subqueries and aggregate and window calls.

use sqlparser::ast::{
    AccessExpr, Array, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArguments, InTarget, Subscript, WindowSpec, WindowType,
};

use super::{aggregate_name, Walk};

impl Walk<'_> {
    /// Walks an expression for subqueries and aggregate and window calls,
    /// looping down the left of binary operators.
    pub(super) fn expr(&mut self, e: &Expr) {
        if !self.enter() {
            return;
        }
        let mut e = e;
        loop {
            match e {
                Expr::BinaryOp { left, right, .. } => {
                    self.expr(right);
                    e = left;
                    continue;
                }
                Expr::Identifier(_)
                | Expr::CompoundIdentifier(_)
                | Expr::Value(_)
                | Expr::TypedString(_)
                | Expr::Wildcard(_)
                | Expr::QualifiedWildcard(..)
                | Expr::MatchAgainst { .. } => {}
                Expr::CompoundFieldAccess { root, access_chain } => {
                    self.expr(root);
                    for access in access_chain {
                        match access {
                            AccessExpr::Dot(e) => self.expr(e),
                            AccessExpr::Subscript(Subscript::Index { index }) => self.expr(index),
                            AccessExpr::Subscript(Subscript::Slice {
                                lower_bound,
                                upper_bound,
                                stride,
                            }) => {
                                for e in [lower_bound, upper_bound, stride].into_iter().flatten() {
                                    self.expr(e);
                                }
                            }
                        }
                    }
                }
                Expr::JsonAccess { value, .. } => self.expr(value),
                Expr::IsFalse(x)
                | Expr::IsNotFalse(x)
                | Expr::IsTrue(x)
                | Expr::IsNotTrue(x)
                | Expr::IsNull(x)
                | Expr::IsNotNull(x)
                | Expr::IsUnknown(x)
                | Expr::IsNotUnknown(x)
                | Expr::IsJson { expr: x, .. }
                | Expr::IsNormalized { expr: x, .. }
                | Expr::UnaryOp { expr: x, .. }
                | Expr::Cast { expr: x, .. }
                | Expr::Extract { expr: x, .. }
                | Expr::Ceil { expr: x, .. }
                | Expr::Floor { expr: x, .. }
                | Expr::Collate { expr: x, .. }
                | Expr::Nested(x)
                | Expr::Prefixed { value: x, .. }
                | Expr::Named { expr: x, .. }
                | Expr::OuterJoin(x)
                | Expr::Prior(x) => self.expr(x),
                Expr::IsDistinctFrom(a, b)
                | Expr::IsNotDistinctFrom(a, b)
                | Expr::AnyOp {
                    left: a, right: b, ..
                }
                | Expr::AllOp {
                    left: a, right: b, ..
                }
                | Expr::AtTimeZone {
                    timestamp: a,
                    time_zone: b,
                }
                | Expr::Position { expr: a, r#in: b }
                | Expr::RLike {
                    expr: a,
                    pattern: b,
                    ..
                } => {
                    self.expr(a);
                    self.expr(b);
                }
                Expr::MemberOf(member) => {
                    self.expr(&member.value);
                    self.expr(&member.array);
                }
                Expr::Like {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::ILike {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::SimilarTo {
                    expr,
                    pattern,
                    escape_char,
                    ..
                } => {
                    self.expr(expr);
                    self.expr(pattern);
                    if let Some(escape) = escape_char {
                        self.expr(escape);
                    }
                }
                Expr::In { expr, target, .. } => {
                    self.expr(expr);
                    match target {
                        InTarget::List(items) => {
                            for item in items {
                                self.expr(item);
                            }
                        }
                        InTarget::Subquery(query) => self.query(query),
                        InTarget::Unnest(array) => self.expr(array),
                        InTarget::Table { .. } => self.facts.incomplete = true,
                    }
                }
                Expr::Between {
                    expr, low, high, ..
                } => {
                    self.expr(expr);
                    self.expr(low);
                    self.expr(high);
                }
                Expr::Convert { expr, styles, .. } => {
                    self.expr(expr);
                    for e in styles {
                        self.expr(e);
                    }
                }
                Expr::Substring {
                    expr,
                    substring_from,
                    substring_for,
                    ..
                } => {
                    self.expr(expr);
                    for e in [substring_from, substring_for].into_iter().flatten() {
                        self.expr(e);
                    }
                }
                Expr::Trim {
                    expr,
                    trim_what,
                    trim_characters,
                    ..
                } => {
                    self.expr(expr);
                    if let Some(what) = trim_what {
                        self.expr(what);
                    }
                    for e in trim_characters.iter().flatten() {
                        self.expr(e);
                    }
                }
                Expr::Overlay {
                    expr,
                    overlay_what,
                    overlay_from,
                    overlay_for,
                } => {
                    self.expr(expr);
                    self.expr(overlay_what);
                    self.expr(overlay_from);
                    if let Some(e) = overlay_for {
                        self.expr(e);
                    }
                }
                Expr::Function(function) => self.function(function),
                Expr::Case {
                    operand,
                    conditions,
                    else_result,
                    ..
                } => {
                    for e in [operand, else_result].into_iter().flatten() {
                        self.expr(e);
                    }
                    for when in conditions {
                        self.expr(&when.condition);
                        self.expr(&when.result);
                    }
                }
                Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => self.query(subquery),
                Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
                    for e in sets.iter().flatten() {
                        self.expr(e);
                    }
                }
                Expr::Tuple(items)
                | Expr::Struct { values: items, .. }
                | Expr::Array(Array { elem: items, .. }) => {
                    for e in items {
                        self.expr(e);
                    }
                }
                Expr::Dictionary(fields) => {
                    for field in fields {
                        self.expr(&field.value);
                    }
                }
                Expr::Map(map) => {
                    for entry in &map.entries {
                        self.expr(&entry.key);
                        self.expr(&entry.value);
                    }
                }
                Expr::Interval(interval) => self.expr(&interval.value),
                Expr::Lambda(lambda) => self.expr(&lambda.body),
            }
            break;
        }
        self.leave();
    }

    pub(super) fn function(&mut self, function: &Function) {
        if aggregate_name(&function.name).is_some() {
            self.facts.aggregate_calls += 1;
        }
        if function.over.is_some() {
            self.facts.window_calls += 1;
        }
        self.function_arguments(&function.parameters);
        self.function_arguments(&function.args);
        for item in &function.within_group {
            self.expr(&item.expr);
        }
        if let Some(filter) = &function.filter {
            self.expr(filter);
        }
        if let Some(WindowType::WindowSpec(spec)) = &function.over {
            self.window_spec(spec);
        }
    }

    pub(super) fn function_arguments(&mut self, arguments: &FunctionArguments) {
        match arguments {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(query) => self.query(query),
            FunctionArguments::List(list) => {
                for arg in &list.args {
                    self.function_arg(arg);
                }
                for clause in &list.clauses {
                    match clause {
                        FunctionArgumentClause::Where(e) | FunctionArgumentClause::Limit(e) => {
                            self.expr(e)
                        }
                        FunctionArgumentClause::OrderBy(items) => {
                            for item in items {
                                self.expr(&item.expr);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    pub(super) fn function_arg(&mut self, arg: &FunctionArg) {
        let value = match arg {
            FunctionArg::Named { arg, .. } | FunctionArg::Unnamed(arg) => arg,
            FunctionArg::ExprNamed { name, arg, .. } => {
                self.expr(name);
                arg
            }
        };
        if let FunctionArgExpr::Expr(e) = value {
            self.expr(e);
        }
    }

    pub(super) fn window_spec(&mut self, spec: &WindowSpec) {
        for e in &spec.partition_by {
            self.expr(e);
        }
        for item in &spec.order_by {
            self.expr(&item.expr);
        }
    }
}
