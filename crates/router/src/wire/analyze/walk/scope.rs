//! Bindings: the relations a query level names, as its conditions see
//! them.

use std::ops::Range;

use sqlparser::ast::{
    Expr, Ident, JoinConstraint, JoinOperator, ObjectName, TableAlias, TableFactor, TableWithJoins,
};

use super::{fold, idents, Walk};
use crate::wire::analyze::text::is_system;
use crate::wire::analyze::KeyRef;

/// A relation as seen from the conditions of its query.
pub(super) struct Binding {
    /// The name columns are qualified with: the alias, else the table's
    /// own name.
    pub(super) name: String,
    /// The key column, for a sharded table.
    pub(super) key: Option<String>,
    /// The keys that pin it (several: any of them).
    pub(super) pins: Vec<KeyRef>,
    pub(super) pinned: bool,
}

/// The bindings of one query level.
#[derive(Default)]
pub(super) struct Frame {
    pub(super) bindings: Vec<Binding>,
}

/// How pins flow across a `USING` join.
#[derive(Clone, Copy)]
pub(super) struct Flow {
    pub(super) to_right: bool,
    pub(super) to_left: bool,
}

/// A condition whose top-level conjuncts may pin bindings.
pub(super) enum Cond<'a> {
    /// `WHERE` or `ON`: pins only land on bindings in `targets` (the
    /// nullable side of an outer join; everything for an inner one).
    Expr {
        expr: &'a Expr,
        targets: Range<usize>,
        inner: bool,
    },
    /// `USING (column)` between two sides.
    Using {
        column: String,
        left: Range<usize>,
        right: Range<usize>,
        flow: Flow,
    },
}

/// Every target.
pub(super) const ALL: Range<usize> = 0..usize::MAX;

/// A join's constraint.
pub(super) fn constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Semi(c)
        | JoinOperator::LeftSemi(c)
        | JoinOperator::RightSemi(c)
        | JoinOperator::Anti(c)
        | JoinOperator::LeftAnti(c)
        | JoinOperator::RightAnti(c)
        | JoinOperator::StraightJoin(c)
        | JoinOperator::AsOf { constraint: c, .. } => Some(c),
        JoinOperator::CrossApply
        | JoinOperator::OuterApply
        | JoinOperator::ArrayJoin
        | JoinOperator::LeftArrayJoin
        | JoinOperator::InnerArrayJoin => None,
    }
}

impl Walk<'_> {
    /// Adds a binding to the innermost frame.
    pub(super) fn bind(&mut self, name: String, key: Option<String>) {
        match self.frames.last_mut() {
            Some(frame) => frame.bindings.push(Binding {
                name,
                key,
                pins: Vec::new(),
                pinned: false,
            }),
            None => self.facts.incomplete = true,
        }
    }

    /// How many bindings the innermost frame holds.
    pub(super) fn bound(&self) -> usize {
        self.frames.last().map_or(0, |f| f.bindings.len())
    }

    /// Binds a named relation (a table, a view, a CTE, a catalog).
    pub(super) fn relation(&mut self, name: &ObjectName, alias: Option<&Ident>) {
        let Some(parts) = idents(name) else {
            self.facts.incomplete = true;
            self.bind(String::new(), None);
            return;
        };
        let Some(last) = parts.last() else {
            self.facts.incomplete = true;
            self.bind(String::new(), None);
            return;
        };
        let table = fold(last);
        let schema = parts.len().checked_sub(2).map(|i| fold(parts[i]));
        let binding = alias.map_or_else(|| table.clone(), fold);
        let cte = schema.is_none() && self.ctes.contains(&table);
        if cte || is_system(schema.as_deref(), &table) {
            self.bind(binding, None);
            return;
        }
        self.facts.non_catalog = true;
        let key = (self.shard_key_of)(&table);
        if key.is_some() {
            self.facts.touches_sharded = true;
        }
        self.bind(binding, key);
    }

    /// A relation read or written whole (`COPY t`, `LOCK t`, `TABLE t`):
    /// a frame of its own, never pinned.
    pub(super) fn lone_relation(&mut self, name: &ObjectName) {
        self.frames.push(Frame::default());
        self.relation(name, None);
        self.finish_frame();
        self.frames.pop();
    }

    /// Records the innermost frame's pins as keys, or that a sharded
    /// binding has none.
    pub(super) fn finish_frame(&mut self) {
        let Some(frame) = self.frames.last() else {
            return;
        };
        for binding in frame.bindings.iter().filter(|b| b.key.is_some()) {
            if binding.pinned {
                for key in &binding.pins {
                    Self::push_key(&mut self.facts.keys, key);
                }
            } else {
                self.facts.unkeyed = true;
            }
        }
    }

    /// Binds a `FROM` item with its joins, and collects their conditions.
    pub(super) fn bind_join_tree<'a>(
        &mut self,
        tree: &'a TableWithJoins,
        conds: &mut Vec<Cond<'a>>,
    ) {
        if !self.enter() {
            return;
        }
        let start = self.bound();
        self.bind_factor(&tree.relation, conds);
        for join in &tree.joins {
            let left = start..self.bound();
            self.bind_factor(&join.relation, conds);
            let right = left.end..self.bound();
            let both = Flow {
                to_right: true,
                to_left: true,
            };
            let (targets, flow) = match &join.join_operator {
                JoinOperator::Join(_)
                | JoinOperator::Inner(_)
                | JoinOperator::CrossJoin(_)
                | JoinOperator::StraightJoin(_) => (ALL, both),
                JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => (
                    right.clone(),
                    Flow {
                        to_right: true,
                        to_left: false,
                    },
                ),
                JoinOperator::Right(_) | JoinOperator::RightOuter(_) => (
                    left.clone(),
                    Flow {
                        to_right: false,
                        to_left: true,
                    },
                ),
                _ => (
                    0..0,
                    Flow {
                        to_right: false,
                        to_left: false,
                    },
                ),
            };
            let inner = flow.to_left && flow.to_right;
            match constraint(&join.join_operator) {
                Some(JoinConstraint::On(expr)) => conds.push(Cond::Expr {
                    expr,
                    targets,
                    inner,
                }),
                Some(JoinConstraint::Using(columns) | JoinConstraint::UsingAlias(columns, _)) => {
                    for name in columns {
                        if let Some(last) = idents(name).and_then(|p| p.last().map(|i| fold(i))) {
                            conds.push(Cond::Using {
                                column: last,
                                left: left.clone(),
                                right: right.clone(),
                                flow,
                            });
                        }
                    }
                }
                Some(JoinConstraint::Natural | JoinConstraint::None) | None => {}
            }
        }
        self.leave();
    }

    /// Binds one `FROM` item.
    pub(super) fn bind_factor<'a>(&mut self, factor: &'a TableFactor, conds: &mut Vec<Cond<'a>>) {
        let alias_or = |alias: &Option<TableAlias>, name: Option<&ObjectName>| {
            alias.as_ref().map(|a| fold(&a.name)).unwrap_or_else(|| {
                name.and_then(idents)
                    .and_then(|p| p.last().map(|i| fold(i)))
                    .unwrap_or_default()
            })
        };
        match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                if args.is_some() {
                    // A set-returning function.
                    self.bind(alias_or(alias, Some(name)), None);
                } else {
                    self.relation(name, alias.as_ref().map(|a| &a.name));
                }
            }
            TableFactor::Function { name, alias, .. } => {
                self.bind(alias_or(alias, Some(name)), None)
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::UNNEST { alias, .. } => self.bind(alias_or(alias, None), None),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.bind_join_tree(table_with_joins, conds),
            _ => {
                self.facts.incomplete = true;
                self.bind(String::new(), None);
            }
        }
    }

    /// Walks the expressions and subqueries of a `FROM` item and its joins.
    pub(super) fn join_tree_exprs(&mut self, tree: &TableWithJoins) {
        if !self.enter() {
            return;
        }
        self.factor_exprs(&tree.relation);
        for join in &tree.joins {
            self.factor_exprs(&join.relation);
            if let Some(JoinConstraint::On(expr)) = constraint(&join.join_operator) {
                self.expr(expr);
            }
        }
        self.leave();
    }

    pub(super) fn factor_exprs(&mut self, factor: &TableFactor) {
        match factor {
            TableFactor::Table {
                args: Some(args), ..
            } => {
                for arg in &args.args {
                    self.function_arg(arg);
                }
            }
            TableFactor::Derived { subquery, .. } => self.query(subquery),
            TableFactor::TableFunction { expr, .. } => self.expr(expr),
            TableFactor::Function { args, .. } => {
                for arg in args {
                    self.function_arg(arg);
                }
            }
            TableFactor::UNNEST { array_exprs, .. } => {
                for e in array_exprs {
                    self.expr(e);
                }
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.join_tree_exprs(table_with_joins),
            _ => {}
        }
    }
}
