//! The syntax-tree walk: a statement's kind, the relations it names and
//! the shard keys that pin its sharded tables (the rules are in the
//! parent module's docs).
//!
//! Each `SELECT` (and `UPDATE`, `DELETE`, `INSERT`, `MERGE`) opens a
//! frame of bindings, one per relation in its `FROM`; its conditions pin
//! bindings in that frame, and its subqueries, walked while the frame is
//! open, see it as an enclosing scope. The walk recurses into nested
//! expressions and queries but loops along `AND`/`OR`/operator chains
//! and set-operation chains, whose length the parser does not bound.

use sqlparser::ast::{
    CopySource, Cte, DiscardObject, GroupByExpr, Ident, LimitClause, NamedWindowExpr, ObjectName,
    ObjectNamePart, OrderByKind, Query, Reset, SelectItem, SelectItemQualifiedWildcardKind, Set,
    SetExpr, Statement,
};

mod dml;
mod exprs;
mod pins;
mod scope;

use super::{fanout, Analysis, KeyRef, Kind};
use scope::{Cond, Frame, ALL};

/// How deep the walk recurses. The parser's own limit (50 nested
/// expressions or queries) keeps real statements far below; past it, the
/// walk stops descending and the statement counts as touching sharded
/// tables with no key.
const MAX_DEPTH: usize = 256;

/// The most wrappers (casts, parentheses) unwrapped around a key value.
const MAX_UNWRAP: usize = 32;

/// Built-in aggregate functions: calls to them make an output column an
/// aggregate, which a fan-out merge must understand.
const AGGREGATES: [&str; 43] = [
    "any_value",
    "array_agg",
    "avg",
    "bit_and",
    "bit_or",
    "bit_xor",
    "bool_and",
    "bool_or",
    "corr",
    "count",
    "covar_pop",
    "covar_samp",
    "cume_dist",
    "dense_rank",
    "every",
    "json_agg",
    "json_agg_strict",
    "json_arrayagg",
    "json_object_agg",
    "json_objectagg",
    "jsonb_agg",
    "jsonb_object_agg",
    "max",
    "min",
    "mode",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "range_agg",
    "range_intersect_agg",
    "rank",
    "regr_avgx",
    "regr_count",
    "regr_slope",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "sum",
    "var_pop",
    "var_samp",
    "variance",
    "xmlagg",
];

/// The walk's verdict on a statement.
pub(super) enum Outcome {
    /// Complete.
    Done(Analysis),
    /// A statement the walk does not follow (DDL, ...): whether it
    /// touches sharded tables is left to a scan of its tokens.
    Utility(Analysis),
}

/// Aggregate and window calls within one output column.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ItemCalls {
    /// Calls to [`AGGREGATES`].
    pub aggregates: usize,
    /// Calls with `OVER`.
    pub windows: usize,
}

/// What the fan-out shape needs from the statement's top-level `SELECT`.
#[derive(Debug, Clone, Default)]
pub(super) struct TopSelect {
    /// Per output column.
    pub items: Vec<ItemCalls>,
    /// Whether its sharded tables are all joined on their key columns
    /// (or there is at most one), so each shard joins only its own rows.
    pub colocated: bool,
}

/// What the walk gathers.
#[derive(Default)]
struct Facts {
    keys: Vec<KeyRef>,
    insert_row_keys: Vec<KeyRef>,
    unkeyed: bool,
    touches_sharded: bool,
    /// Some relation is not a system catalog.
    non_catalog: bool,
    /// Data changes or row locks anywhere.
    writes: bool,
    updates_shard_key: bool,
    /// Some part was not followed (too deep, or an unknown construct).
    incomplete: bool,
    selects: usize,
    queries: usize,
    aggregate_calls: usize,
    window_calls: usize,
    top: Option<TopSelect>,
}

/// How a statement is judged.
enum Class {
    /// Walked: the facts hold.
    Walked(Kind),
    /// Names no relation.
    Control(Kind),
    /// Not followed; judged by its tokens.
    Utility,
    /// Runs code the text does not show (`CALL`, `EXECUTE`): anything.
    Opaque,
}

/// Analyzes one parsed statement; `select_words` is how many `SELECT`
/// keywords its tokens hold.
pub(super) fn statement(
    statement: &Statement,
    shard_key_of: &dyn Fn(&str) -> Option<String>,
    select_words: usize,
) -> Outcome {
    let mut walk = Walk {
        shard_key_of,
        frames: Vec::new(),
        ctes: Vec::new(),
        depth: 0,
        facts: Facts::default(),
    };
    let mut clears_shard_key = false;
    let class = walk.statement(statement, &mut clears_shard_key);
    let facts = walk.facts;
    let mut analysis = Analysis::control(Kind::Other);
    analysis.clears_shard_key = clears_shard_key;
    match class {
        Class::Walked(kind) => {
            let incomplete = facts.incomplete || facts.selects < select_words;
            analysis.catalog_only = !facts.non_catalog && kind != Kind::Other && !incomplete;
            analysis.touches_sharded = facts.touches_sharded || incomplete;
            analysis.unkeyed = facts.unkeyed || incomplete;
            analysis.updates_shard_key = facts.updates_shard_key;
            analysis.insert_row_keys = facts.insert_row_keys;
            analysis.keys = facts.keys;
            if let (Statement::Query(query), Kind::Read, Some(top)) = (statement, &kind, &facts.top)
            {
                let single = facts.queries == 1 && facts.selects == 1 && facts.window_calls == 0;
                if single && analysis.touches_sharded && !incomplete {
                    analysis.fanout = fanout::shape(query.as_ref(), top);
                }
            }
            analysis.copy = super::copy::spec(statement, shard_key_of);
            if let Statement::Prepare { .. } = statement {
                // The statement runs later, with EXECUTE's parameters.
                analysis.keys.clear();
                analysis.insert_row_keys.clear();
                analysis.unkeyed = false;
            }
            analysis.parts = vec![kind.clone()];
            analysis.kind = kind;
            Outcome::Done(analysis)
        }
        Class::Control(kind) => {
            analysis.catalog_only = kind != Kind::Other;
            analysis.parts = vec![kind.clone()];
            analysis.kind = kind;
            Outcome::Done(analysis)
        }
        Class::Utility => {
            analysis.catalog_only = false;
            Outcome::Utility(analysis)
        }
        Class::Opaque => {
            analysis.catalog_only = false;
            analysis.touches_sharded = true;
            analysis.unkeyed = true;
            Outcome::Done(analysis)
        }
    }
}

/// An identifier as PostgreSQL folds it: unquoted ones in lower case.
pub(super) fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        None => ident.value.to_ascii_lowercase(),
        Some(_) => ident.value.clone(),
    }
}

/// A name's identifiers; `None` for names with function parts.
fn idents(name: &ObjectName) -> Option<Vec<&Ident>> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Some(ident),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// Whether a name is `shardline.shard_key`.
fn is_shard_key_setting(name: &ObjectName) -> bool {
    idents(name).is_some_and(|parts| {
        let folded: Vec<String> = parts.into_iter().map(fold).collect();
        folded.join(".") == "shardline.shard_key"
    })
}

/// Whether a function name is a built-in aggregate (unqualified or in
/// `pg_catalog`).
pub(super) fn aggregate_name(name: &ObjectName) -> Option<String> {
    let parts = idents(name)?;
    let (last, schema) = match parts.as_slice() {
        [last] => (fold(last), None),
        [schema, last] => (fold(last), Some(fold(schema))),
        _ => return None,
    };
    let builtin = schema.is_none_or(|s| s == "pg_catalog");
    (builtin && AGGREGATES.contains(&last.as_str())).then_some(last)
}

/// The walk's state.
struct Walk<'k> {
    shard_key_of: &'k dyn Fn(&str) -> Option<String>,
    /// Open query levels, innermost last.
    frames: Vec<Frame>,
    /// CTE names in scope, which hide tables of the same name.
    ctes: Vec<String>,
    depth: usize,
    facts: Facts,
}

impl<'k> Walk<'k> {
    /// Enters a recursion level; false (and the statement incomplete)
    /// past [`MAX_DEPTH`]. Each true must be followed by [`Walk::leave`].
    fn enter(&mut self) -> bool {
        if self.depth >= MAX_DEPTH {
            self.facts.incomplete = true;
            return false;
        }
        self.depth += 1;
        true
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn statement(&mut self, statement: &Statement, clears_shard_key: &mut bool) -> Class {
        match statement {
            Statement::Query(query) => {
                self.query(query);
                Class::Walked(self.read_or_write())
            }
            Statement::Insert(insert) => {
                self.insert(insert);
                Class::Walked(Kind::Write)
            }
            Statement::Update(update) => {
                self.dml(statement, &update.selection);
                Class::Walked(Kind::Write)
            }
            Statement::Delete(delete) => {
                self.dml(statement, &delete.selection);
                Class::Walked(Kind::Write)
            }
            Statement::Merge(merge) => {
                self.merge(merge);
                Class::Walked(Kind::Write)
            }
            Statement::Explain { statement, .. } => {
                if !self.enter() {
                    return Class::Walked(Kind::Other);
                }
                let inner = self.statement(statement, clears_shard_key);
                self.leave();
                match inner {
                    Class::Walked(kind @ (Kind::Read | Kind::Write)) => Class::Walked(kind),
                    Class::Walked(_) | Class::Control(_) => Class::Walked(Kind::Other),
                    other => other,
                }
            }
            Statement::Prepare { statement, .. } => {
                if !self.enter() {
                    return Class::Walked(Kind::Session);
                }
                let inner = self.statement(statement, clears_shard_key);
                self.leave();
                match inner {
                    Class::Walked(_) | Class::Control(_) => Class::Walked(Kind::Session),
                    other => other,
                }
            }
            Statement::Declare { stmts, .. } => {
                for declare in stmts {
                    if let Some(query) = &declare.for_query {
                        self.query(query);
                    }
                }
                Class::Walked(Kind::Session)
            }
            Statement::Copy { source, .. } => {
                match source {
                    CopySource::Table { table_name, .. } => self.lone_relation(table_name),
                    CopySource::Query(query) => self.query(query),
                }
                Class::Walked(Kind::Other)
            }
            Statement::Lock(lock) => {
                for target in &lock.tables {
                    self.lone_relation(&target.name);
                }
                Class::Walked(Kind::Other)
            }
            Statement::Truncate(truncate) => {
                for target in &truncate.table_names {
                    self.lone_relation(&target.name);
                }
                Class::Walked(Kind::Other)
            }
            Statement::Set(set) => Class::Control(match set {
                Set::SingleAssignment { variable, .. } if is_shard_key_setting(variable) => {
                    // Spellings PostgreSQL accepts were recognised from the
                    // tokens already; what is left, it rejects.
                    Kind::Other
                }
                _ => Kind::Session,
            }),
            Statement::Reset(reset) => Class::Control(match &reset.reset {
                Reset::ConfigurationParameter(name) if is_shard_key_setting(name) => {
                    Kind::SetShardKey {
                        value: None,
                        local: false,
                    }
                }
                Reset::ALL => {
                    *clears_shard_key = true;
                    Kind::Session
                }
                Reset::ConfigurationParameter(_) | Reset::SessionAuthorization => Kind::Session,
            }),
            Statement::Discard { object_type } => {
                *clears_shard_key = matches!(object_type, DiscardObject::ALL);
                Class::Control(Kind::Session)
            }
            Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => {
                Class::Control(Kind::Read)
            }
            Statement::StartTransaction {
                statements,
                exception,
                ..
            } => Class::Control(if statements.is_empty() && exception.is_none() {
                Kind::Begin
            } else {
                Kind::Other
            }),
            Statement::Commit { chain, .. } => {
                Class::Control(if *chain { Kind::Other } else { Kind::Commit })
            }
            Statement::Rollback { chain, savepoint } => {
                Class::Control(if *chain || savepoint.is_some() {
                    Kind::Other
                } else {
                    Kind::Rollback
                })
            }
            Statement::Savepoint { .. } | Statement::ReleaseSavepoint { .. } => {
                Class::Control(Kind::Other)
            }
            Statement::NOTIFY { .. } => Class::Control(Kind::Other),
            Statement::LISTEN { .. }
            | Statement::UNLISTEN { .. }
            | Statement::Deallocate { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Load { .. } => Class::Control(Kind::Session),
            Statement::Call(_) | Statement::Execute { .. } => Class::Opaque,
            _ => Class::Utility,
        }
    }

    /// The kind of a walked query: a write if it changes data or locks
    /// rows anywhere.
    fn read_or_write(&self) -> Kind {
        if self.facts.writes {
            Kind::Write
        } else {
            Kind::Read
        }
    }

    /// Records a key once.
    fn push_key(keys: &mut Vec<KeyRef>, key: &KeyRef) {
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }

    fn query(&mut self, query: &Query) {
        if !self.enter() {
            return;
        }
        self.facts.queries += 1;
        let ctes_before = self.ctes.len();
        if let Some(with) = &query.with {
            if with.recursive {
                self.ctes
                    .extend(with.cte_tables.iter().map(|c| fold(&c.alias.name)));
                for cte in &with.cte_tables {
                    self.query(&cte.query);
                }
            } else {
                // A CTE sees those before it, not itself or later ones.
                for cte in &with.cte_tables {
                    self.cte(cte);
                }
            }
        }
        self.set_expr(&query.body);
        if let Some(order_by) = &query.order_by {
            if let OrderByKind::Expressions(items) = &order_by.kind {
                for item in items {
                    self.expr(&item.expr);
                }
            }
        }
        match &query.limit_clause {
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                if let Some(limit) = limit {
                    self.expr(limit);
                }
                if let Some(offset) = offset {
                    self.expr(&offset.value);
                }
                for e in limit_by {
                    self.expr(e);
                }
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.expr(offset);
                self.expr(limit);
            }
            None => {}
        }
        if let Some(quantity) = query.fetch.as_ref().and_then(|f| f.quantity.as_ref()) {
            self.expr(quantity);
        }
        if !query.locks.is_empty() {
            // A locking read must run on a primary.
            self.facts.writes = true;
        }
        if !query.pipe_operators.is_empty() || query.for_clause.is_some() {
            self.facts.incomplete = true;
        }
        self.ctes.truncate(ctes_before);
        self.leave();
    }

    fn cte(&mut self, cte: &Cte) {
        self.query(&cte.query);
        self.ctes.push(fold(&cte.alias.name));
    }

    /// Walks a query body, looping down the left of set operations.
    fn set_expr(&mut self, body: &SetExpr) {
        if !self.enter() {
            return;
        }
        let mut body = body;
        loop {
            match body {
                SetExpr::SetOperation { left, right, .. } => {
                    self.set_expr(right);
                    body = left;
                    continue;
                }
                SetExpr::Select(select) => self.select(select),
                SetExpr::Query(query) => self.query(query),
                SetExpr::Values(values) => {
                    for row in &values.rows {
                        for e in &row.content {
                            self.expr(e);
                        }
                    }
                }
                SetExpr::Insert(statement)
                | SetExpr::Update(statement)
                | SetExpr::Delete(statement)
                | SetExpr::Merge(statement) => {
                    self.facts.writes = true;
                    let mut ignored = false;
                    if let Class::Utility | Class::Opaque = self.statement(statement, &mut ignored)
                    {
                        self.facts.incomplete = true;
                    }
                }
                SetExpr::Table(table) => {
                    let parts: Vec<Ident> = [&table.schema_name, &table.table_name]
                        .into_iter()
                        .flatten()
                        .cloned()
                        .collect();
                    if parts.is_empty() {
                        self.facts.incomplete = true;
                    } else {
                        self.lone_relation(&ObjectName::from(parts));
                    }
                }
            }
            break;
        }
        self.leave();
    }

    fn select(&mut self, select: &sqlparser::ast::Select) {
        if !self.enter() {
            return;
        }
        self.facts.selects += 1;
        let top = self.frames.is_empty() && self.facts.selects == 1;
        if select.into.is_some() {
            // SELECT ... INTO creates a table.
            self.facts.writes = true;
        }
        self.frames.push(Frame::default());
        let mut conds = Vec::new();
        for tree in &select.from {
            self.bind_join_tree(tree, &mut conds);
        }
        if let Some(selection) = &select.selection {
            conds.push(Cond::Expr {
                expr: selection,
                targets: ALL,
                inner: true,
            });
        }
        let colocated = self.pin(&conds);
        // Pins are final now: record them before the subqueries' own.
        self.finish_frame();
        for tree in &select.from {
            self.join_tree_exprs(tree);
        }
        let mut items = Vec::with_capacity(select.projection.len());
        for item in &select.projection {
            let (aggregates, windows) = (self.facts.aggregate_calls, self.facts.window_calls);
            match item {
                SelectItem::UnnamedExpr(e)
                | SelectItem::ExprWithAlias { expr: e, .. }
                | SelectItem::ExprWithAliases { expr: e, .. }
                | SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                    self.expr(e)
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(_),
                    _,
                )
                | SelectItem::Wildcard(_) => {}
            }
            items.push(ItemCalls {
                aggregates: self.facts.aggregate_calls - aggregates,
                windows: self.facts.window_calls - windows,
            });
        }
        for e in [
            &select.selection,
            &select.having,
            &select.qualify,
            &select.prewhere,
        ]
        .into_iter()
        .flatten()
        {
            self.expr(e);
        }
        if let GroupByExpr::Expressions(exprs, _) = &select.group_by {
            for e in exprs {
                self.expr(e);
            }
        }
        if let Some(sqlparser::ast::Distinct::On(exprs)) = &select.distinct {
            for e in exprs {
                self.expr(e);
            }
        }
        for window in &select.named_window {
            if let NamedWindowExpr::WindowSpec(spec) = &window.1 {
                self.window_spec(spec);
            }
        }
        for e in select.cluster_by.iter().chain(&select.distribute_by) {
            self.expr(e);
        }
        for item in &select.sort_by {
            self.expr(&item.expr);
        }
        if !select.lateral_views.is_empty() || !select.connect_by.is_empty() {
            self.facts.incomplete = true;
        }
        if top {
            self.facts.top = Some(TopSelect { items, colocated });
        }
        self.frames.pop();
        self.leave();
    }
}
