//! Pins: which keys a query level's conditions give its bindings, and
//! how equal key columns carry them from one binding to another.

use std::ops::Range;

use sqlparser::ast::{Array, BinaryOperator, Expr, InTarget, UnaryOperator, Value};

use super::scope::Cond;
use super::{fold, Walk, MAX_UNWRAP};
use crate::wire::analyze::KeyRef;

/// A pin flowing from a binding (frame, index) to one of the current
/// frame's.
struct Edge {
    from: (usize, usize),
    to: usize,
}

/// What a frame's conditions link: pins flowing between bindings, and
/// pairs of its own bindings joined on their keys by an inner equality.
#[derive(Default)]
struct Links {
    edges: Vec<Edge>,
    pairs: Vec<(usize, usize)>,
}

/// A column reference in a condition.
enum Column {
    Bare(String),
    Qualified { table: String, name: String },
}

/// `e` without enclosing parentheses.
fn strip(mut e: &Expr) -> &Expr {
    for _ in 0..MAX_UNWRAP {
        match e {
            Expr::Nested(inner) => e = inner,
            _ => return e,
        }
    }
    e
}

/// A column reference.
fn column(e: &Expr) -> Option<Column> {
    match strip(e) {
        Expr::Identifier(ident) => Some(Column::Bare(fold(ident))),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let n = parts.len();
            Some(Column::Qualified {
                table: fold(&parts[n - 2]),
                name: fold(&parts[n - 1]),
            })
        }
        _ => None,
    }
}

/// A literal or parameter, under casts, parentheses and a sign.
pub(super) fn key_value(mut e: &Expr) -> Option<KeyRef> {
    for _ in 0..MAX_UNWRAP {
        match e {
            Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => e = inner,
            Expr::Value(value) => return literal(&value.value),
            Expr::TypedString(typed) => {
                return match literal(&typed.value.value)? {
                    KeyRef::Literal(s) => Some(KeyRef::Literal(s)),
                    KeyRef::Param(_) => None,
                };
            }
            Expr::UnaryOp { op, expr } => {
                let Expr::Value(value) = strip(expr) else {
                    return None;
                };
                let Value::Number(n, _) = &value.value else {
                    return None;
                };
                return match op {
                    UnaryOperator::Minus => Some(KeyRef::Literal(format!("-{n}"))),
                    UnaryOperator::Plus => Some(KeyRef::Literal(n.clone())),
                    _ => None,
                };
            }
            _ => return None,
        }
    }
    None
}

/// A constant's text, or a parameter.
fn literal(value: &Value) -> Option<KeyRef> {
    match value {
        Value::Number(n, _) => Some(KeyRef::Literal(n.clone())),
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s) => Some(KeyRef::Literal(s.clone())),
        Value::DollarQuotedString(s) => Some(KeyRef::Literal(s.value.clone())),
        Value::Boolean(b) => Some(KeyRef::Literal(b.to_string())),
        Value::Placeholder(p) => p
            .strip_prefix('$')?
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .map(KeyRef::Param),
        _ => None,
    }
}

/// The top-level `AND` conjuncts of a condition.
fn conjuncts(e: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                stack.push(right);
                stack.push(left);
            }
            Expr::Nested(inner) => stack.push(inner),
            _ => out.push(e),
        }
    }
    out
}

impl Walk<'_> {
    /// Applies the conditions of the innermost frame: pins, then pins
    /// carried along equal key columns. Returns whether the frame's
    /// sharded bindings are all joined on their keys.
    pub(super) fn pin(&mut self, conds: &[Cond<'_>]) -> bool {
        let mut links = Links::default();
        let Some(current) = self.frames.len().checked_sub(1) else {
            return false;
        };
        for cond in conds {
            match cond {
                Cond::Expr {
                    expr,
                    targets,
                    inner,
                } => {
                    for conjunct in conjuncts(expr) {
                        self.conjunct(conjunct, targets, *inner, &mut links);
                    }
                }
                Cond::Using {
                    column,
                    left,
                    right,
                    flow,
                } => {
                    let frame = &self.frames[current];
                    let keyed = |range: &Range<usize>| -> Vec<usize> {
                        range
                            .clone()
                            .filter(|&i| {
                                frame
                                    .bindings
                                    .get(i)
                                    .is_some_and(|b| b.key.as_deref() == Some(column.as_str()))
                            })
                            .collect()
                    };
                    let (lefts, rights) = (keyed(left), keyed(right));
                    for &l in &lefts {
                        for &r in &rights {
                            if flow.to_right {
                                links.edges.push(Edge {
                                    from: (current, l),
                                    to: r,
                                });
                            }
                            if flow.to_left {
                                links.edges.push(Edge {
                                    from: (current, r),
                                    to: l,
                                });
                            }
                            if flow.to_right && flow.to_left {
                                links.pairs.push((l, r));
                            }
                        }
                    }
                }
            }
        }
        self.propagate(current, &links.edges);
        self.colocated(current, &links.pairs)
    }

    /// Reads one conjunct for pins and key equalities.
    fn conjunct(&mut self, e: &Expr, targets: &Range<usize>, inner: bool, links: &mut Links) {
        match strip(e) {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => self.equality(left, right, targets, inner, links, 0),
            Expr::In {
                expr,
                target: InTarget::List(items),
                negated: false,
                ..
            } => {
                let keys: Option<Vec<KeyRef>> = items.iter().map(key_value).collect();
                if let (Some(keys), Some(col)) = (keys, column(expr)) {
                    let refs = self.resolve(&col);
                    self.pin_refs(&refs, &keys, targets);
                }
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => {
                let Expr::Array(Array { elem, .. }) = strip(right) else {
                    return;
                };
                let keys: Option<Vec<KeyRef>> = elem.iter().map(key_value).collect();
                if let (Some(keys), Some(col)) = (keys, column(left)) {
                    let refs = self.resolve(&col);
                    self.pin_refs(&refs, &keys, targets);
                }
            }
            _ => {}
        }
    }

    /// Reads `l = r`: a pin, a key equality, or tuples of those.
    fn equality(
        &mut self,
        l: &Expr,
        r: &Expr,
        targets: &Range<usize>,
        inner: bool,
        links: &mut Links,
        depth: usize,
    ) {
        let (l, r) = (strip(l), strip(r));
        if let (Expr::Tuple(ls), Expr::Tuple(rs)) = (l, r) {
            if ls.len() == rs.len() && depth < MAX_UNWRAP {
                for (a, b) in ls.iter().zip(rs) {
                    self.equality(a, b, targets, inner, links, depth + 1);
                }
            }
            return;
        }
        match (column(l), column(r)) {
            (Some(lc), Some(rc)) => {
                let current = self.frames.len().saturating_sub(1);
                let (lrefs, rrefs) = (self.resolve(&lc), self.resolve(&rc));
                for &a in &lrefs {
                    for &b in &rrefs {
                        if b.0 == current && targets.contains(&b.1) {
                            links.edges.push(Edge { from: a, to: b.1 });
                        }
                        if a.0 == current && targets.contains(&a.1) {
                            links.edges.push(Edge { from: b, to: a.1 });
                        }
                        if inner && a.0 == current && b.0 == current {
                            links.pairs.push((a.1, b.1));
                        }
                    }
                }
            }
            (Some(col), None) => {
                if let Some(key) = key_value(r) {
                    let refs = self.resolve(&col);
                    self.pin_refs(&refs, &[key], targets);
                }
            }
            (None, Some(col)) => {
                if let Some(key) = key_value(l) {
                    let refs = self.resolve(&col);
                    self.pin_refs(&refs, &[key], targets);
                }
            }
            (None, None) => {}
        }
    }

    /// The sharded bindings whose key column a reference names: for a
    /// bare column, those of the innermost frame; for a qualified one,
    /// the binding its qualifier names, innermost frame first.
    fn resolve(&self, col: &Column) -> Vec<(usize, usize)> {
        match col {
            Column::Bare(name) => {
                let Some(current) = self.frames.len().checked_sub(1) else {
                    return Vec::new();
                };
                self.frames[current]
                    .bindings
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.key.as_deref() == Some(name.as_str()))
                    .map(|(i, _)| (current, i))
                    .collect()
            }
            Column::Qualified { table, name } => {
                for (f, frame) in self.frames.iter().enumerate().rev() {
                    if let Some(i) = frame.bindings.iter().position(|b| &b.name == table) {
                        let keyed = frame.bindings[i].key.as_deref() == Some(name.as_str());
                        return if keyed { vec![(f, i)] } else { Vec::new() };
                    }
                }
                Vec::new()
            }
        }
    }

    /// Pins the innermost frame's bindings among `refs` that `targets`
    /// admits.
    fn pin_refs(&mut self, refs: &[(usize, usize)], keys: &[KeyRef], targets: &Range<usize>) {
        let current = self.frames.len().saturating_sub(1);
        for &(f, i) in refs {
            if f != current || !targets.contains(&i) {
                continue;
            }
            if let Some(binding) = self.frames.get_mut(f).and_then(|fr| fr.bindings.get_mut(i)) {
                binding.pins.extend(keys.iter().cloned());
                binding.pinned = true;
            }
        }
    }

    /// Carries pins along edges until nothing changes.
    fn propagate(&mut self, current: usize, edges: &[Edge]) {
        loop {
            let mut changed = false;
            for edge in edges {
                let (f, i) = edge.from;
                let Some(from) = self.frames.get(f).and_then(|fr| fr.bindings.get(i)) else {
                    continue;
                };
                if !from.pinned {
                    continue;
                }
                let pins = from.pins.clone();
                if let Some(to) = self
                    .frames
                    .get_mut(current)
                    .and_then(|fr| fr.bindings.get_mut(edge.to))
                {
                    if !to.pinned {
                        to.pins = pins;
                        to.pinned = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Whether the frame's sharded bindings are one group under inner
    /// key equalities.
    fn colocated(&self, current: usize, pairs: &[(usize, usize)]) -> bool {
        let Some(frame) = self.frames.get(current) else {
            return false;
        };
        let sharded: Vec<usize> = (0..frame.bindings.len())
            .filter(|&i| frame.bindings[i].key.is_some())
            .collect();
        if sharded.len() <= 1 {
            return true;
        }
        let mut parent: Vec<usize> = (0..frame.bindings.len()).collect();
        fn root(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        for &(a, b) in pairs {
            if a < parent.len() && b < parent.len() {
                let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                parent[ra] = rb;
            }
        }
        let first = root(&mut parent, sharded[0]);
        sharded.iter().all(|&s| root(&mut parent, s) == first)
    }
}
