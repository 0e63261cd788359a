//! Data changes: `INSERT`, `UPDATE`, `DELETE`, `MERGE`.

use std::ops::Range;

use sqlparser::ast::{
    Assignment, AssignmentTarget, Expr, FromTable, Insert, Merge, MergeAction, MergeInsertKind,
    MergeUpdateKind, ObjectName, OnConflictAction, OnInsert, Query, SelectItem, SetExpr, Statement,
    TableObject, TableWithJoins, UpdateTableFromKind,
};

use super::pins::key_value;
use super::scope::{Cond, Frame, ALL};
use super::{fold, idents, Walk};
use crate::wire::analyze::KeyRef;

impl Walk<'_> {
    pub(super) fn insert(&mut self, insert: &Insert) {
        self.facts.writes = true;
        self.frames.push(Frame::default());
        match &insert.table {
            TableObject::TableName(name) => {
                self.relation(name, insert.table_alias.as_ref().map(|a| &a.alias))
            }
            TableObject::TableFunction(_) | TableObject::TableQuery(_) => {
                self.facts.incomplete = true;
                self.bind(String::new(), None);
            }
        }
        self.insert_rows(insert);
        self.finish_frame();
        if let Some(source) = &insert.source {
            self.query(source);
        }
        // `excluded` in ON CONFLICT ... DO UPDATE.
        self.bind("excluded".to_string(), None);
        if let Some(OnInsert::OnConflict(on_conflict)) = &insert.on {
            if let OnConflictAction::DoUpdate(update) = &on_conflict.action {
                self.assignments(&update.assignments, 0..1);
                if let Some(selection) = &update.selection {
                    self.expr(selection);
                }
            }
        }
        self.returning(&insert.returning);
        self.frames.pop();
    }

    /// Pins an `INSERT` target by its `VALUES` rows' keys.
    pub(super) fn insert_rows(&mut self, insert: &Insert) {
        let Some(key) = self
            .frames
            .last()
            .and_then(|f| f.bindings.first())
            .and_then(|b| b.key.clone())
        else {
            return;
        };
        let index = insert.columns.iter().position(|name| {
            idents(name).is_some_and(|parts| parts.last().is_some_and(|i| fold(i) == key))
        });
        let rows = match insert.source.as_deref() {
            Some(Query {
                with: None, body, ..
            }) => match body.as_ref() {
                SetExpr::Values(values) => Some(values),
                _ => None,
            },
            _ => None,
        };
        let (Some(index), Some(values)) = (index, rows) else {
            return;
        };
        let keys: Option<Vec<KeyRef>> = values
            .rows
            .iter()
            .map(|row| row.content.get(index).and_then(key_value))
            .collect();
        let Some(keys) = keys else {
            return;
        };
        if let Some(target) = self.frames.last_mut().and_then(|f| f.bindings.first_mut()) {
            for key in &keys {
                Self::push_key(&mut target.pins, key);
            }
            target.pinned = true;
        }
        self.facts.insert_row_keys.extend(keys);
    }

    /// `UPDATE` and `DELETE`: their target and `FROM`/`USING` relations
    /// bound as a `SELECT`'s are, pinned by `WHERE`.
    pub(super) fn dml(&mut self, statement: &Statement, selection: &Option<Expr>) {
        self.facts.writes = true;
        self.frames.push(Frame::default());
        let mut trees: Vec<&TableWithJoins> = Vec::new();
        let mut returning = &None;
        let mut assignments: &[Assignment] = &[];
        match statement {
            Statement::Update(update) => {
                trees.push(&update.table);
                match &update.from {
                    Some(UpdateTableFromKind::BeforeSet(from))
                    | Some(UpdateTableFromKind::AfterSet(from)) => trees.extend(from),
                    None => {}
                }
                returning = &update.returning;
                assignments = &update.assignments;
                for e in update.order_by.iter().map(|o| &o.expr).chain(&update.limit) {
                    self.expr(e);
                }
            }
            Statement::Delete(delete) => {
                match &delete.from {
                    FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from) => {
                        trees.extend(from)
                    }
                }
                trees.extend(delete.using.iter().flatten());
                returning = &delete.returning;
                if !delete.tables.is_empty() {
                    self.facts.incomplete = true;
                }
                for e in delete.order_by.iter().map(|o| &o.expr).chain(&delete.limit) {
                    self.expr(e);
                }
            }
            _ => self.facts.incomplete = true,
        }
        let mut conds = Vec::new();
        let target_end = match trees.first() {
            Some(first) => {
                self.bind_join_tree(first, &mut conds);
                self.bound()
            }
            None => 0,
        };
        for tree in trees.iter().skip(1) {
            self.bind_join_tree(tree, &mut conds);
        }
        if let Some(selection) = selection {
            conds.push(Cond::Expr {
                expr: selection,
                targets: ALL,
                inner: true,
            });
        }
        self.pin(&conds);
        self.finish_frame();
        self.assignments(assignments, 0..target_end);
        for tree in &trees {
            self.join_tree_exprs(tree);
        }
        if let Some(selection) = selection {
            self.expr(selection);
        }
        self.returning(returning);
        self.frames.pop();
    }

    /// `MERGE`: its target is never pinned (`WHEN NOT MATCHED` inserts
    /// rows from any source row).
    pub(super) fn merge(&mut self, merge: &Merge) {
        self.facts.writes = true;
        self.frames.push(Frame::default());
        let mut conds = Vec::new();
        self.bind_factor(&merge.table, &mut conds);
        let target_end = self.bound();
        self.bind_factor(&merge.source, &mut conds);
        self.factor_exprs(&merge.table);
        self.factor_exprs(&merge.source);
        self.expr(&merge.on);
        for clause in &merge.clauses {
            if let Some(predicate) = &clause.predicate {
                self.expr(predicate);
            }
            match &clause.action {
                MergeAction::Update(update) => {
                    if let MergeUpdateKind::Set(assignments) = &update.kind {
                        self.assignments(assignments, 0..target_end);
                    }
                    for e in [&update.update_predicate, &update.delete_predicate]
                        .into_iter()
                        .flatten()
                    {
                        self.expr(e);
                    }
                }
                MergeAction::Insert(insert) => {
                    if let MergeInsertKind::Values(values) = &insert.kind {
                        for row in &values.rows {
                            for e in &row.content {
                                self.expr(e);
                            }
                        }
                    }
                    if let Some(predicate) = &insert.insert_predicate {
                        self.expr(predicate);
                    }
                }
                MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
            }
        }
        self.finish_frame();
        self.frames.pop();
    }

    /// Walks `SET` assignments; one to the key column of a target binding
    /// (in `targets`) moves rows between shards.
    pub(super) fn assignments(&mut self, assignments: &[Assignment], targets: Range<usize>) {
        for assignment in assignments {
            let columns: Vec<&ObjectName> = match &assignment.target {
                AssignmentTarget::ColumnName(name) => vec![name],
                AssignmentTarget::Tuple(names) => names.iter().collect(),
            };
            for name in columns {
                // `col`, `col.field`, `col[1]`: the column is the first part.
                let Some(column) = idents(name).and_then(|p| p.first().map(|i| fold(i))) else {
                    continue;
                };
                let moves = self.frames.last().is_some_and(|frame| {
                    frame.bindings.iter().enumerate().any(|(i, b)| {
                        targets.contains(&i) && b.key.as_deref() == Some(column.as_str())
                    })
                });
                self.facts.updates_shard_key |= moves;
            }
            self.expr(&assignment.value);
        }
    }

    pub(super) fn returning(&mut self, returning: &Option<Vec<SelectItem>>) {
        for item in returning.iter().flatten() {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                self.expr(e);
            }
        }
    }
}
