//! Script queries pushed down to PostgreSQL: renders a
//! [`Pushed`](crate::script::pushdown::Pushed) tree, built by the script
//! process from a frame's plan, as one read-only statement over the table's
//! rows under the run's filters ([`sql::table_rows`]).
//!
//! The tree comes from a process that runs others' scripts, so nothing in it
//! is trusted: every column it names must exist where it is named, names
//! are quoted, literals escaped, and only the constructs of the tree exist
//! (no function or table can be named). Each construct is written to mean
//! exactly what Polars means by it (see `script::pushdown`).
//!
//! A sales query that only groups and filters by what `sales_metrics`
//! keeps (category, payment method, status, region, channel, the hour or
//! coarser parts of the time) and only counts, sums or averages quantity,
//! amount and discount is answered from the rollup instead
//! ([`from_rollups`]): each rollup row stands for its `orders` raw rows
//! (a weight), the partial hours at the range's edges come from the raw
//! rows, and the answer is the same as over the raw rows.

use crate::script::pushdown::{Agg, Ex, Kind, Lit, Op, Part, Pushed, Rel, SortKey, MAX_OUTPUTS};

use super::load::{ColType, Column};
use super::sql::{self, Query};

/// Output column names of a pushed statement (the frame's own names are
/// put back after loading).
const OUT: [&str; MAX_OUTPUTS] = [
    "c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12", "c13", "c14",
    "c15", "c16", "c17", "c18", "c19", "c20", "c21", "c22", "c23", "c24", "c25", "c26", "c27",
    "c28", "c29", "c30", "c31", "c32", "c33", "c34", "c35", "c36", "c37", "c38", "c39", "c40",
    "c41", "c42", "c43", "c44", "c45", "c46", "c47", "c48", "c49", "c50", "c51", "c52", "c53",
    "c54", "c55", "c56", "c57", "c58", "c59", "c60", "c61", "c62", "c63",
];

type Cols = Vec<(String, Kind)>;

/// The statement of `q` over `base` (the table's rows), returning at most
/// `max_rows` rows; columns `c0`, `c1`, … in the order of `q.outputs`.
pub(crate) fn render(q: &Pushed, base: &Query, max_rows: u64) -> Result<Query, String> {
    render_over(q, base, max_rows, false)
}

/// The dimensions of sales the rollups keep.
const SALES_DIMS: [&str; 5] = ["category", "payment_method", "status", "region", "channel"];
/// The measures they sum.
const SALES_MEASURES: [&str; 3] = ["quantity", "total_amount", "discount"];
/// The weight column of [`sql::weighted_sales`].
const WEIGHT: &str = "__n";

/// `q` answered from the sales rollups, when it can be (see the module
/// docs); `None` to run it over the raw rows.
pub(crate) fn from_rollups(
    q: &Pushed,
    filters: &super::Filters,
    span: Option<sql::Span>,
    max_rows: u64,
) -> Option<Query> {
    if q.table != "transactions" {
        return None;
    }
    let needs = rollup_needs(&q.rel)?;
    let lite = !needs.region_channel && filters.regions.is_empty() && filters.channels.is_empty();
    let grain = if needs.hour || span.is_some() {
        "hour"
    } else {
        "day"
    };
    let base = sql::weighted_sales(filters, span, grain, lite)?;
    render_over(q, &base, max_rows, true).ok()
}

/// Totals the ingest keeps per key of `transactions` in a table of its own,
/// over every row the key ever had (so only for the whole history).
struct Totals {
    /// The key column in `transactions`.
    key: &'static str,
    /// The table holding one row per key, keyed by a column of that name.
    table: &'static str,
    /// Its rows that have at least one raw row; over completed rows only
    /// when `Some` (`None`: not known for completed rows alone).
    rows: (&'static str, Option<&'static str>),
    /// What it keeps: the aggregate, of which column (`""`: of rows), over
    /// completed rows only, and the column that holds it.
    aggs: &'static [(Agg, &'static str, bool, Column)],
}

/// The totals `customers` and `products` keep (`store::write` folds them
/// in the same transaction as the rows they count). Every row of either
/// has an order (schema v6 for `customers`); a count of buyers reads the
/// narrow `customers_buyers` index alone.
const TOTALS: [Totals; 2] = [
    Totals {
        key: "customer_id",
        table: "customers",
        rows: ("orders > 0", Some("completed_orders > 0")),
        aggs: &[
            (Agg::CountAll, "", false, col("orders", ColType::Int)),
            (
                Agg::CountAll,
                "",
                true,
                col("completed_orders", ColType::Int),
            ),
            (Agg::Sum, "quantity", false, col("units", ColType::Int)),
            (
                Agg::Sum,
                "total_amount",
                true,
                col("total_spent", ColType::Float),
            ),
            (
                Agg::Min,
                "occurred_at",
                false,
                col("first_seen", ColType::Time),
            ),
            (
                Agg::Max,
                "occurred_at",
                false,
                col("last_seen", ColType::Time),
            ),
        ],
    },
    Totals {
        key: "product_id",
        table: "products",
        rows: ("orders > 0", None),
        aggs: &[
            (Agg::CountAll, "", false, col("orders", ColType::Int)),
            (Agg::Sum, "quantity", false, col("units", ColType::Int)),
            (
                Agg::Sum,
                "total_amount",
                true,
                col("revenue", ColType::Float),
            ),
            (
                Agg::Min,
                "occurred_at",
                false,
                col("first_seen", ColType::Time),
            ),
            (
                Agg::Max,
                "occurred_at",
                false,
                col("last_seen", ColType::Time),
            ),
        ],
    },
];

const fn col(name: &'static str, ty: ColType) -> Column {
    Column { name, ty }
}

/// `q` answered from the per-customer or per-product totals, when it
/// groups all of history's sales (or all completed ones) by customer or
/// product and only counts rows or sums what those tables sum: the
/// aggregation becomes a read of one row per customer or product.
pub(crate) fn from_totals(
    q: &Pushed,
    filters: &super::Filters,
    span: Option<sql::Span>,
    max_rows: u64,
) -> Option<Query> {
    let no_other = filters.categories.is_empty()
        && filters.payment_methods.is_empty()
        && filters.regions.is_empty()
        && filters.channels.is_empty();
    let completed = match filters.statuses.as_slice() {
        [] => false,
        [s] if s == "completed" => true,
        _ => return None,
    };
    if q.table != "transactions" || span.is_some() || !no_other {
        return None;
    }
    let mut base = None;
    let rel = swap_totals(&q.rel, completed, &mut base)?;
    let base = base?;
    render_over(&Pushed { rel, ..q.clone() }, &base, max_rows, false).ok()
}

/// `rel` with its aggregation by a totals key replaced by a read of the
/// totals (`base` set to that read).
fn swap_totals(rel: &Rel, completed: bool, base: &mut Option<Query>) -> Option<Rel> {
    let boxed = |r: &Rel, base: &mut Option<Query>| swap_totals(r, completed, base).map(Box::new);
    Some(match rel {
        Rel::Table { .. } => return None,
        Rel::Filter { input, predicate } => Rel::Filter {
            input: boxed(input, base)?,
            predicate: predicate.clone(),
        },
        Rel::Project { input, columns } => Rel::Project {
            input: boxed(input, base)?,
            columns: columns.clone(),
        },
        Rel::Distinct { input } => Rel::Distinct {
            input: boxed(input, base)?,
        },
        Rel::Sort {
            input,
            by,
            offset,
            limit,
        } => Rel::Sort {
            input: boxed(input, base)?,
            by: by.clone(),
            offset: *offset,
            limit: *limit,
        },
        Rel::Aggregate { input, keys, aggs } => {
            let totals = match keys.as_slice() {
                [(_, Ex::Col(key))] => TOTALS.iter().find(|t| t.key == key),
                _ => None,
            };
            let (Some(totals), [(key_name, _)]) = (totals, keys.as_slice()) else {
                // An aggregation of an aggregation by a key below.
                return Some(Rel::Aggregate {
                    input: boxed(input, base)?,
                    keys: keys.clone(),
                    aggs: aggs.clone(),
                });
            };
            let completed = completed || completed_rows(input)?;
            let rows = if completed {
                totals.rows.1?
            } else {
                totals.rows.0
            };
            let mut read = vec![col(totals.key, ColType::Text)];
            let mut columns = vec![(key_name.clone(), Ex::Col(totals.key.to_owned()))];
            for (name, a) in aggs {
                let Ex::Agg(f, of, filter) = a else {
                    return None;
                };
                let completed = match filter {
                    None => completed,
                    Some(p) if is_completed(p) => true,
                    Some(_) => return None,
                };
                let of = match (f, of.as_ref()) {
                    (Agg::CountAll, _) => "",
                    // No column of `transactions` is null but the offsets'.
                    (Agg::Count, Ex::Col(c)) if !c.starts_with("kafka_") => "",
                    (_, Ex::Col(c)) => c.as_str(),
                    _ => return None,
                };
                let f = if *f == Agg::Count { Agg::CountAll } else { *f };
                let (.., held) = totals
                    .aggs
                    .iter()
                    .find(|(af, ac, ad, _)| *af == f && *ac == of && *ad == completed)?;
                if !read.iter().any(|c| c.name == held.name) {
                    read.push(*held);
                }
                columns.push((name.clone(), Ex::Col(held.name.to_owned())));
            }
            let list: Vec<String> = read
                .iter()
                .map(|c| match c.ty {
                    ColType::Int => format!("{0}::int8 AS {0}", c.name),
                    ColType::Float => format!("{0}::float8 AS {0}", c.name),
                    ColType::Text | ColType::Time => c.name.to_owned(),
                })
                .collect();
            *base = Some(Query {
                sql: format!(
                    "SELECT {} FROM {} WHERE {rows}",
                    list.join(", "),
                    totals.table
                ),
                columns: read.clone(),
                parts: Vec::new(),
            });
            Rel::Project {
                input: Box::new(Rel::Table {
                    columns: read.iter().map(|c| c.name.to_owned()).collect(),
                }),
                columns,
            }
        }
    })
}

/// Whether the rows below an aggregation are the completed ones only
/// (`Some(false)`: all of them); `None` when they are filtered otherwise.
fn completed_rows(rel: &Rel) -> Option<bool> {
    match rel {
        Rel::Table { .. } => Some(false),
        Rel::Filter { input, predicate } => {
            completed_rows(input)?;
            is_completed(predicate).then_some(true)
        }
        // Only the table's own columns, under their own names.
        Rel::Project { input, columns } => {
            let plain = columns
                .iter()
                .all(|(n, e)| matches!(e, Ex::Col(c) if c == n));
            plain.then(|| completed_rows(input))?
        }
        Rel::Aggregate { .. } | Rel::Distinct { .. } | Rel::Sort { .. } => None,
    }
}

/// Whether `p` is `status == "completed"`.
fn is_completed(p: &Ex) -> bool {
    let done = |c: &str, l: &Lit| c == "status" && *l == Lit::Text("completed".into());
    match p {
        Ex::Bin(a, Op::Eq, b) => match (a.as_ref(), b.as_ref()) {
            (Ex::Col(c), Ex::Lit(l)) | (Ex::Lit(l), Ex::Col(c)) => done(c, l),
            _ => false,
        },
        Ex::IsIn(a, list) => {
            matches!((a.as_ref(), list.as_slice()), (Ex::Col(c), [l]) if done(c, l))
        }
        _ => false,
    }
}

/// What a query needs of the rollups.
#[derive(Default)]
struct Needs {
    /// It reads region or channel (only `sales_metrics` has them).
    region_channel: bool,
    /// It reads a part of the time finer than the day.
    hour: bool,
}

/// The role of a column below the aggregation, over weighted rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The same in every raw row a weighted row stands for.
    Dim,
    /// Summed over them.
    Measure,
    /// The bucket's start: only its parts of an hour or coarser hold.
    Time,
}

/// Whether the rollups can answer `rel`, and what it needs of them: one
/// aggregation over filters and projections of dimensions, the measures
/// only counted, summed or averaged; anything above the aggregation.
fn rollup_needs(rel: &Rel) -> Option<Needs> {
    let mut needs = Needs::default();
    let mut node = rel;
    // Down to the aggregation: what is above reads only its outputs.
    let (input, keys, aggs) = loop {
        match node {
            Rel::Aggregate { input, keys, aggs } => break (input, keys, aggs),
            Rel::Filter { input, .. }
            | Rel::Project { input, .. }
            | Rel::Distinct { input }
            | Rel::Sort { input, .. } => node = input,
            Rel::Table { .. } => return None,
        }
    };
    let cols = rows_roles(input, &mut needs)?;
    for (_, k) in keys {
        dim_only(k, &cols, &mut needs)?;
    }
    for (name, a) in aggs {
        if name == WEIGHT {
            return None;
        }
        agg_answerable(a, &cols, &mut needs)?;
    }
    Some(needs)
}

/// The columns below the aggregation and their roles.
fn rows_roles(rel: &Rel, needs: &mut Needs) -> Option<Vec<(String, Role)>> {
    match rel {
        Rel::Table { columns } => columns
            .iter()
            .map(|c| {
                let role = if SALES_DIMS.contains(&c.as_str()) {
                    if c == "region" || c == "channel" {
                        needs.region_channel = true;
                    }
                    Role::Dim
                } else if SALES_MEASURES.contains(&c.as_str()) {
                    Role::Measure
                } else if c == "occurred_at" {
                    Role::Time
                } else {
                    return None;
                };
                Some((c.clone(), role))
            })
            .collect(),
        Rel::Filter { input, predicate } => {
            let cols = rows_roles(input, needs)?;
            dim_only(predicate, &cols, needs)?;
            Some(cols)
        }
        Rel::Project { input, columns } => {
            let cols = rows_roles(input, needs)?;
            columns
                .iter()
                .map(|(name, e)| {
                    if name == WEIGHT {
                        return None;
                    }
                    // A measure or the time passes through as it is, under its
                    // own name (the weighted sums are known by it); anything
                    // computed is computed from dimensions, under a name no
                    // measure has.
                    if let Ex::Col(c) = e {
                        let role = cols.iter().find(|x| &x.0 == c)?.1;
                        if role != Role::Dim && c != name {
                            return None;
                        }
                        return Some((name.clone(), role));
                    }
                    if SALES_MEASURES.contains(&name.as_str()) {
                        return None;
                    }
                    dim_only(e, &cols, needs)?;
                    Some((name.clone(), Role::Dim))
                })
                .collect()
        }
        Rel::Aggregate { .. } | Rel::Distinct { .. } | Rel::Sort { .. } => None,
    }
}

/// `e` reads only dimensions (and parts of the time an hour or coarser).
fn dim_only(e: &Ex, cols: &[(String, Role)], needs: &mut Needs) -> Option<()> {
    match e {
        Ex::Col(c) => (cols.iter().find(|x| &x.0 == c)?.1 == Role::Dim).then_some(()),
        Ex::Lit(_) => Some(()),
        Ex::Part(p, inner) => {
            if let Ex::Col(c) = inner.as_ref() {
                if cols.iter().find(|x| &x.0 == c)?.1 == Role::Time {
                    match p {
                        Part::Minute => return None,
                        Part::Hour => needs.hour = true,
                        _ => {}
                    }
                    return Some(());
                }
            }
            dim_only(inner, cols, needs)
        }
        Ex::Agg(..) => None,
        other => other
            .children()
            .into_iter()
            .try_for_each(|c| dim_only(c, cols, needs)),
    }
}

/// An aggregate expression the weights can compute.
fn agg_answerable(e: &Ex, cols: &[(String, Role)], needs: &mut Needs) -> Option<()> {
    match e {
        Ex::Agg(f, input, filter) => {
            if let Some(c) = filter {
                dim_only(c, cols, needs)?;
            }
            let measure = matches!(input.as_ref(), Ex::Col(c)
                if cols.iter().any(|x| &x.0 == c && x.1 == Role::Measure));
            match f {
                Agg::CountAll => Some(()),
                Agg::Sum | Agg::Mean | Agg::Count if measure => Some(()),
                Agg::Sum | Agg::Mean | Agg::Count | Agg::Min | Agg::Max | Agg::NUnique => {
                    dim_only(input, cols, needs)
                }
                Agg::Median | Agg::Std(_) | Agg::Var(_) => None,
            }
        }
        Ex::Col(_) => None,
        other => other
            .children()
            .into_iter()
            .try_for_each(|c| agg_answerable(c, cols, needs)),
    }
}

/// [`render`], over weighted rows when `weighted` (the weight column
/// carried up to the aggregation, which uses it).
fn render_over(q: &Pushed, base: &Query, max_rows: u64, weighted: bool) -> Result<Query, String> {
    let base_cols: Cols = base
        .columns
        .iter()
        .map(|c| (c.name.to_owned(), kind_of(c.ty)))
        .collect();
    let mut r = Renderer {
        base: &base.sql,
        base_cols,
        next: 0,
        weighted,
        qualify: None,
    };
    // The outer statement converts each column for loading; a sort on top
    // stays in it (an outer SELECT would not keep the order).
    let (from, order, columns, limit, offset) = match &q.rel {
        Rel::Project { input, columns } if matches!(input.as_ref(), Rel::Sort { .. }) => {
            let Rel::Sort {
                input,
                by,
                offset,
                limit,
            } = input.as_ref()
            else {
                return Err("unreachable".into());
            };
            let (from, cols) = r.rel(input)?;
            r.qualify = Some(r.alias());
            let order = r.order(by, &cols)?;
            let out = columns
                .iter()
                .map(|(n, e)| Ok((n.clone(), r.ex(e, &cols)?)))
                .collect::<Result<Vec<_>, String>>()?;
            (from, order, out, *limit, *offset)
        }
        Rel::Sort {
            input,
            by,
            offset,
            limit,
        } => {
            let (from, cols) = r.rel(input)?;
            r.qualify = Some(r.alias());
            let order = r.order(by, &cols)?;
            let out = cols
                .iter()
                .map(|(n, k)| Ok((n.clone(), r.ex(&Ex::Col(n.clone()), &cols)?.0, *k)))
                .map(|x: Result<_, String>| x.map(|(n, e, k)| (n, (e, k))))
                .collect::<Result<Vec<_>, String>>()?;
            (from, order, out, *limit, *offset)
        }
        other => {
            let (from, cols) = r.rel(other)?;
            r.qualify = Some(r.alias());
            let out = cols
                .iter()
                .map(|(n, k)| Ok((n.clone(), r.ex(&Ex::Col(n.clone()), &cols)?.0, *k)))
                .map(|x: Result<_, String>| x.map(|(n, e, k)| (n, (e, k))))
                .collect::<Result<Vec<_>, String>>()?;
            (from, String::new(), out, None, 0)
        }
    };
    if columns.len() != q.outputs.len()
        || columns
            .iter()
            .zip(&q.outputs)
            .any(|((n, (_, k)), (on, ok))| n != on || k != ok)
    {
        return Err("the pushed query's columns do not match its outputs".into());
    }
    let mut list = Vec::with_capacity(columns.len());
    let mut cols = Vec::with_capacity(columns.len());
    for ((_, (e, k)), name) in columns.iter().zip(OUT) {
        let (expr, ty) = match k {
            Kind::Int => (format!("({e})::int8"), ColType::Int),
            Kind::Float => (format!("({e})::float8"), ColType::Float),
            Kind::Text => (format!("({e})::text"), ColType::Text),
            Kind::Bool => (format!("({e})::int4::int8"), ColType::Int),
            Kind::Time => (sql::epoch_us(&format!("({e})")), ColType::Time),
        };
        list.push(format!("{expr} AS {name}"));
        cols.push(Column { name, ty });
    }
    let cap = limit.map_or(max_rows, |l| l.min(max_rows));
    let alias = r.qualify.clone().unwrap_or_default();
    let sql = format!(
        "SELECT {} FROM ({from}) AS {alias}{order} LIMIT {cap} OFFSET {offset}",
        list.join(", ")
    );
    if sql.len() > MAX_SQL {
        return Err(format!(
            "the pushed query is too long ({} bytes)",
            sql.len()
        ));
    }
    Ok(Query {
        sql,
        columns: cols,
        parts: Vec::new(),
    })
}

fn kind_of(ty: ColType) -> Kind {
    match ty {
        ColType::Text => Kind::Text,
        ColType::Int => Kind::Int,
        ColType::Float => Kind::Float,
        ColType::Time => Kind::Time,
    }
}

/// A quoted identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\0', "").replace('"', "\"\""))
}

fn pg_type(k: Kind) -> &'static str {
    match k {
        Kind::Int => "int8",
        Kind::Float => "float8",
        Kind::Text => "text",
        Kind::Bool => "bool",
        Kind::Time => "timestamptz",
    }
}

struct Renderer<'a> {
    base: &'a str,
    base_cols: Cols,
    next: usize,
    /// Rows are weighted (see [`from_rollups`]): below the aggregation every
    /// relation carries the weight column.
    weighted: bool,
    /// The alias column names are qualified with (in the outer statement,
    /// where a bare name would match its output names first).
    qualify: Option<String>,
}

/// Longest pushed statement, and longest operand an expression repeats (a
/// division names its operands more than once: nested, the text would
/// grow without bound).
const MAX_SQL: usize = 1 << 20;
const MAX_REPEATED: usize = 16 << 10;

impl Renderer<'_> {
    fn alias(&mut self) -> String {
        self.next += 1;
        format!("r{}", self.next)
    }

    /// A relation as a statement, and its columns.
    fn rel(&mut self, rel: &Rel) -> Result<(String, Cols), String> {
        Ok(match rel {
            Rel::Table { columns } => {
                let mut cols = Vec::with_capacity(columns.len());
                for c in columns {
                    match self.base_cols.iter().find(|b| &b.0 == c) {
                        Some(b) => cols.push(b.clone()),
                        None => return Err(format!("no column {c:?} in this table")),
                    }
                }
                if cols.is_empty() {
                    return Err("a pushed query reads no column".into());
                }
                if self.weighted {
                    cols.push((WEIGHT.to_owned(), Kind::Int));
                }
                let list: Vec<String> = cols.iter().map(|c| ident(&c.0)).collect();
                let alias = self.alias();
                (
                    format!("SELECT {} FROM ({}) AS {alias}", list.join(", "), self.base),
                    cols,
                )
            }
            Rel::Filter { input, predicate } => {
                let (from, cols) = self.rel(input)?;
                let (p, k) = self.ex(predicate, &cols)?;
                if k != Kind::Bool {
                    return Err("a filter that is not true or false".into());
                }
                let alias = self.alias();
                (format!("SELECT * FROM ({from}) AS {alias} WHERE {p}"), cols)
            }
            Rel::Project { input, columns } => {
                if matches!(input.as_ref(), Rel::Sort { .. }) {
                    return Err("a sort is only allowed at the top of a pushed query".into());
                }
                let (from, cols) = self.rel(input)?;
                let (mut list, mut out) = self.outputs(columns, &cols)?;
                if self.weighted && cols.iter().any(|c| c.0 == WEIGHT) {
                    list.push_str(&format!(", {}", ident(WEIGHT)));
                    out.push((WEIGHT.to_owned(), Kind::Int));
                }
                let alias = self.alias();
                (format!("SELECT {list} FROM ({from}) AS {alias}"), out)
            }
            Rel::Aggregate { input, keys, aggs } => {
                let (from, cols) = self.rel(input)?;
                let all: Vec<(String, Ex)> = keys.iter().chain(aggs).cloned().collect();
                let (list, out) = self.outputs(&all, &cols)?;
                // Above the aggregation rows are rows again.
                self.weighted = false;
                let group = if keys.is_empty() {
                    String::new()
                } else {
                    let n: Vec<String> = (1..=keys.len()).map(|i| i.to_string()).collect();
                    format!(" GROUP BY {}", n.join(", "))
                };
                let alias = self.alias();
                (
                    format!("SELECT {list} FROM ({from}) AS {alias}{group}"),
                    out,
                )
            }
            Rel::Distinct { input } => {
                let (from, cols) = self.rel(input)?;
                let alias = self.alias();
                (format!("SELECT DISTINCT * FROM ({from}) AS {alias}"), cols)
            }
            Rel::Sort { .. } => {
                return Err("a sort is only allowed at the top of a pushed query".into())
            }
        })
    }

    fn outputs(&self, columns: &[(String, Ex)], cols: &Cols) -> Result<(String, Cols), String> {
        let mut list = Vec::with_capacity(columns.len());
        let mut out: Cols = Vec::with_capacity(columns.len());
        for (name, e) in columns {
            if out.iter().any(|o| &o.0 == name) || (self.weighted && name == WEIGHT) {
                return Err(format!("column {name:?} twice"));
            }
            let (x, k) = self.ex(e, cols)?;
            list.push(format!("{x} AS {}", ident(name)));
            out.push((name.clone(), k));
        }
        if list.is_empty() {
            return Err("a pushed query with no column".into());
        }
        Ok((list.join(", "), out))
    }

    fn order(&self, by: &[SortKey], cols: &Cols) -> Result<String, String> {
        let mut keys = Vec::with_capacity(by.len());
        for k in by {
            let (e, kind) = self.ex(&k.expr, cols)?;
            keys.push(format!(
                "{e}{} {} NULLS {}",
                collate(kind),
                if k.descending { "DESC" } else { "ASC" },
                if k.nulls_last { "LAST" } else { "FIRST" }
            ));
        }
        Ok(if keys.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", keys.join(", "))
        })
    }

    /// An expression and its kind.
    fn ex(&self, e: &Ex, cols: &Cols) -> Result<(String, Kind), String> {
        Ok(match e {
            Ex::Col(n) => match cols.iter().find(|c| &c.0 == n) {
                Some(c) => match &self.qualify {
                    Some(q) => (format!("{q}.{}", ident(n)), c.1),
                    None => (ident(n), c.1),
                },
                None => return Err(format!("no column {n:?} here")),
            },
            Ex::Lit(l) => literal(l),
            Ex::Bin(a, op, b) => {
                let (a, ka) = self.ex(a, cols)?;
                let (b, kb) = self.ex(b, cols)?;
                if *op == Op::Div && a.len().max(b.len()) > MAX_REPEATED {
                    return Err("a division of expressions too long to repeat".into());
                }
                binary(&a, ka, *op, &b, kb)?
            }
            Ex::Not(a) => (format!("(NOT {})", self.bool(a, cols)?), Kind::Bool),
            Ex::Neg(a) => {
                let (x, k) = self.number(a, cols)?;
                (format!("(-{x})"), k)
            }
            Ex::Abs(a) => {
                let (x, k) = self.number(a, cols)?;
                (format!("abs({x})"), k)
            }
            Ex::IsNull(a) => (format!("({} IS NULL)", self.ex(a, cols)?.0), Kind::Bool),
            Ex::IsNotNull(a) => (format!("({} IS NOT NULL)", self.ex(a, cols)?.0), Kind::Bool),
            Ex::IsIn(a, values) => {
                let (x, _) = self.ex(a, cols)?;
                if values.is_empty() {
                    (
                        format!("(CASE WHEN {x} IS NULL THEN NULL ELSE FALSE END)"),
                        Kind::Bool,
                    )
                } else {
                    let list: Vec<String> = values.iter().map(|v| literal(v).0).collect();
                    (format!("({x} IN ({}))", list.join(", ")), Kind::Bool)
                }
            }
            Ex::Case(p, t, f) => {
                let p = self.bool(p, cols)?;
                let (t, kt) = self.ex(t, cols)?;
                let (f, kf) = self.ex(f, cols)?;
                if kt != kf {
                    return Err("CASE branches of different kinds".into());
                }
                (format!("(CASE WHEN {p} THEN {t} ELSE {f} END)"), kt)
            }
            Ex::Cast(a, to) => {
                let (x, from) = self.ex(a, cols)?;
                let out = match (from, *to) {
                    _ if matches!(a.as_ref(), Ex::Lit(Lit::Null)) => {
                        format!("CAST(NULL AS {})", pg_type(*to))
                    }
                    (f, t) if f == t => x,
                    (Kind::Int, Kind::Float) => format!("({x})::float8"),
                    (Kind::Bool, Kind::Int) => format!("({x})::int4::int8"),
                    (Kind::Bool, Kind::Float) => format!("({x})::int4::float8"),
                    (Kind::Int | Kind::Bool, Kind::Text) => format!("({x})::text"),
                    // Polars truncates toward zero; PostgreSQL would round.
                    // NaN, ±inf and out of range: null, as Polars' cast gives.
                    (Kind::Float, Kind::Int) => format!(
                        "(CASE WHEN {x} > -9.2e18 AND {x} < 9.2e18 THEN trunc({x})::int8 END)"
                    ),
                    (f, t) => return Err(format!("no conversion from {f:?} to {t:?}")),
                };
                (out, *to)
            }
            Ex::Part(p, a) => {
                let (x, k) = self.ex(a, cols)?;
                if k != Kind::Time {
                    return Err("a part of something that is not a time".into());
                }
                let field = match p {
                    Part::Year => "year",
                    Part::Quarter => "quarter",
                    Part::Month => "month",
                    Part::Week => "week",
                    Part::Day => "day",
                    Part::Weekday => "isodow",
                    Part::OrdinalDay => "doy",
                    Part::Hour => "hour",
                    Part::Minute => "minute",
                };
                // `date_part` (float8) costs a third less than `extract`
                // (numeric) per row; every part is a whole number either way.
                (
                    format!("date_part('{field}', ({x} AT TIME ZONE 'UTC'))::int8"),
                    Kind::Int,
                )
            }
            Ex::Agg(f, a, filter) => {
                let flt = match filter {
                    Some(c) => format!(" FILTER (WHERE {})", self.bool(c, cols)?),
                    None => String::new(),
                };
                let (x, k) = match (f, a.as_ref()) {
                    (Agg::CountAll, _) => ("NULL".to_owned(), Kind::Int),
                    _ => self.ex(a, cols)?,
                };
                // Least, greatest and distinct values are the same over
                // weighted rows as over the rows they stand for.
                if self.weighted && !matches!(f, Agg::Min | Agg::Max | Agg::NUnique) {
                    return self.weighted_agg(*f, a, &x, k, &flt, cols);
                }
                if *f == Agg::CountAll {
                    return Ok((format!("count(*){flt}"), Kind::Int));
                }
                let num = |k: Kind| -> Result<(), String> {
                    if matches!(k, Kind::Int | Kind::Float) {
                        Ok(())
                    } else {
                        Err(format!("{f:?} of {k:?}"))
                    }
                };
                match f {
                    Agg::Sum => {
                        num(k)?;
                        (format!("(COALESCE(sum({x}){flt}, 0))::{}", pg_type(k)), k)
                    }
                    Agg::Mean => {
                        num(k)?;
                        (format!("(avg({x}){flt})::float8"), Kind::Float)
                    }
                    Agg::Median => {
                        num(k)?;
                        (
                            format!(
                                "percentile_cont(0.5) WITHIN GROUP (ORDER BY ({x})::float8){flt}"
                            ),
                            Kind::Float,
                        )
                    }
                    Agg::Std(d) | Agg::Var(d) => {
                        num(k)?;
                        let name = match (f, d) {
                            (Agg::Std(_), 0) => "stddev_pop",
                            (Agg::Std(_), _) => "stddev_samp",
                            (_, 0) => "var_pop",
                            _ => "var_samp",
                        };
                        (format!("{name}(({x})::float8){flt}"), Kind::Float)
                    }
                    Agg::Min | Agg::Max => {
                        if k == Kind::Bool {
                            return Err(format!("{f:?} of a boolean"));
                        }
                        let name = if *f == Agg::Min { "min" } else { "max" };
                        if k == Kind::Float {
                            // Polars skips NaN (PostgreSQL ranks it above all).
                            let cond = match filter {
                                Some(c) => format!("({}) AND ", self.bool(c, cols)?),
                                None => String::new(),
                            };
                            (
                                format!(
                                    "COALESCE({name}({x}) FILTER (WHERE {cond}{x} <> 'NaN'::float8), \
                                     {name}({x}){flt})"
                                ),
                                k,
                            )
                        } else {
                            (format!("{name}({x}{}){flt}", collate(k)), k)
                        }
                    }
                    Agg::Count => (format!("count({x}){flt}"), Kind::Int),
                    Agg::NUnique => (
                        format!(
                            "(count(DISTINCT {x}){flt} + CASE WHEN bool_or({x} IS NULL){flt} \
                             THEN 1 ELSE 0 END)"
                        ),
                        Kind::Int,
                    ),
                    Agg::CountAll => (format!("count(*){flt}"), Kind::Int),
                }
            }
        })
    }

    /// An aggregate over weighted rows: counts are sums of weights, sums of
    /// a measure sum its sums, sums and means of a dimension weigh it.
    fn weighted_agg(
        &self,
        f: Agg,
        a: &Ex,
        x: &str,
        k: Kind,
        flt: &str,
        cols: &Cols,
    ) -> Result<(String, Kind), String> {
        let w = ident(WEIGHT);
        if !cols.iter().any(|c| c.0 == WEIGHT) {
            return Err("weighted rows without their weight".into());
        }
        let measure = matches!(a, Ex::Col(c) if SALES_MEASURES.contains(&c.as_str()));
        let count_of = |x: &str| {
            if measure {
                format!("(COALESCE(sum({w}){flt}, 0))::int8")
            } else {
                format!(
                    "(COALESCE(sum(CASE WHEN {x} IS NOT NULL THEN {w} ELSE 0 END){flt}, 0))::int8"
                )
            }
        };
        Ok(match f {
            Agg::CountAll => (format!("(COALESCE(sum({w}){flt}, 0))::int8"), Kind::Int),
            Agg::Count => (count_of(x), Kind::Int),
            Agg::Sum if measure => (format!("(COALESCE(sum({x}){flt}, 0))::{}", pg_type(k)), k),
            Agg::Sum => (
                format!("(COALESCE(sum({x} * {w}){flt}, 0))::{}", pg_type(k)),
                k,
            ),
            Agg::Mean => {
                let total = if measure {
                    format!("sum({x}){flt}")
                } else {
                    format!("sum(({x})::float8 * {w}){flt}")
                };
                (
                    format!("(({total})::float8 / NULLIF(({}), 0)::float8)", count_of(x)),
                    Kind::Float,
                )
            }
            Agg::Min | Agg::Max | Agg::NUnique => {
                return Err(format!("{f:?} is the same over weighted rows"))
            }
            Agg::Median | Agg::Std(_) | Agg::Var(_) => {
                return Err(format!("{f:?} cannot come from a rollup"))
            }
        })
    }

    fn bool(&self, e: &Ex, cols: &Cols) -> Result<String, String> {
        match self.ex(e, cols)? {
            (x, Kind::Bool) => Ok(x),
            (_, k) => Err(format!("expected true or false, got {k:?}")),
        }
    }

    fn number(&self, e: &Ex, cols: &Cols) -> Result<(String, Kind), String> {
        match self.ex(e, cols)? {
            (x, k @ (Kind::Int | Kind::Float)) => Ok((x, k)),
            (_, k) => Err(format!("expected a number, got {k:?}")),
        }
    }
}

/// Text compares byte-wise, as in Polars.
fn collate(k: Kind) -> &'static str {
    if k == Kind::Text {
        " COLLATE \"C\""
    } else {
        ""
    }
}

fn literal(l: &Lit) -> (String, Kind) {
    match l {
        Lit::Null => ("NULL".into(), Kind::Text),
        Lit::Bool(b) => (if *b { "TRUE" } else { "FALSE" }.into(), Kind::Bool),
        Lit::Int(i) => (format!("({i}::int8)"), Kind::Int),
        Lit::Float(f) if f.is_nan() => ("'NaN'::float8".into(), Kind::Float),
        Lit::Float(f) if f.is_infinite() => (
            if *f > 0.0 {
                "'Infinity'::float8"
            } else {
                "'-Infinity'::float8"
            }
            .into(),
            Kind::Float,
        ),
        Lit::Float(f) => (format!("({f:?}::float8)"), Kind::Float),
        Lit::Text(s) => (sql::text(s), Kind::Text),
    }
}

fn binary(a: &str, ka: Kind, op: Op, b: &str, kb: Kind) -> Result<(String, Kind), String> {
    let same = |what: &str| -> Result<Kind, String> {
        match (ka, kb) {
            (x, y) if x == y => Ok(x),
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Ok(Kind::Float),
            _ => Err(format!("{what} of {ka:?} and {kb:?}")),
        }
    };
    Ok(match op {
        Op::And | Op::Or => {
            if ka != Kind::Bool || kb != Kind::Bool {
                return Err("AND/OR of something not true or false".into());
            }
            let o = if op == Op::And { "AND" } else { "OR" };
            (format!("({a} {o} {b})"), Kind::Bool)
        }
        Op::Eq | Op::NotEq | Op::Lt | Op::LtEq | Op::Gt | Op::GtEq => {
            let k = same("a comparison")?;
            let o = match op {
                Op::Eq => "=",
                Op::NotEq => "<>",
                Op::Lt => "<",
                Op::LtEq => "<=",
                Op::Gt => ">",
                _ => ">=",
            };
            (format!("({a}{} {o} {b})", collate(k)), Kind::Bool)
        }
        Op::Add | Op::Sub | Op::Mul => {
            let k = same("arithmetic")?;
            if !matches!(k, Kind::Int | Kind::Float) {
                return Err(format!("arithmetic on {k:?}"));
            }
            let o = match op {
                Op::Add => "+",
                Op::Sub => "-",
                _ => "*",
            };
            (format!("({a} {o} {b})"), k)
        }
        Op::Div => {
            if ka != Kind::Float || kb != Kind::Float {
                return Err("division of values that are not floats".into());
            }
            // Polars: x / 0 is ±inf, 0 / 0 and NaN / 0 are NaN, null stays null.
            (
                format!(
                    "(CASE WHEN {b} = 0 THEN (CASE WHEN {a} = 'NaN'::float8 OR {a} = 0 \
                     THEN 'NaN'::float8 WHEN {a} > 0 THEN 'Infinity'::float8 \
                     WHEN {a} < 0 THEN '-Infinity'::float8 END) ELSE {a} / {b} END)"
                ),
                Kind::Float,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::Filters;

    fn base() -> Query {
        sql::table_rows("transactions", &Filters::default(), None).unwrap()
    }

    fn count_by(key: &str, name: &str) -> Pushed {
        Pushed {
            table: "transactions".into(),
            opts: Vec::new(),
            rel: Rel::Aggregate {
                input: Box::new(Rel::Table {
                    columns: vec![key.into()],
                }),
                keys: vec![(name.into(), Ex::Col(key.into()))],
                aggs: vec![(
                    "n".into(),
                    Ex::Agg(Agg::CountAll, Box::new(Ex::Lit(Lit::Null)), None),
                )],
            },
            outputs: vec![(name.into(), Kind::Text), ("n".into(), Kind::Int)],
        }
    }

    #[test]
    fn names_from_the_script_process_are_checked_and_quoted() {
        let evil = "a\"; DROP TABLE customers; --";
        let q = render(&count_by("category", evil), &base(), 10).unwrap();
        assert!(
            q.sql.contains("AS \"a\"\"; DROP TABLE customers; --\""),
            "{}",
            q.sql
        );
        assert!(q.sql.ends_with("LIMIT 10 OFFSET 0"), "{}", q.sql);
        // A column the table does not have, under any spelling.
        for name in ["secret", "category\"", "transactions.category"] {
            let e = render(&count_by(name, "k"), &base(), 10).unwrap_err();
            assert!(e.contains("no column"), "{name}: {e}");
        }
        // Outputs that do not match the tree.
        let mut q = count_by("category", "k");
        q.outputs.swap(0, 1);
        assert!(render(&q, &base(), 10).is_err());
    }

    #[test]
    fn nested_divisions_are_refused_before_their_text_grows() {
        // x / x / x / … : each level names its left side five times.
        let x = || Ex::Col("total_amount".into());
        let mut e = x();
        for _ in 0..40 {
            e = Ex::Bin(Box::new(e), Op::Div, Box::new(x()));
        }
        let mut q = count_by("total_amount", "k");
        let Rel::Aggregate { aggs, .. } = &mut q.rel else {
            unreachable!()
        };
        aggs[0].1 = Ex::Agg(Agg::Max, Box::new(e), None);
        q.outputs[1].1 = Kind::Float;
        let started = std::time::Instant::now();
        let err = render(&q, &base(), 10).unwrap_err();
        assert!(err.contains("too long"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn literals_are_escaped_and_kinds_checked() {
        let mut q = count_by("category", "k");
        let Rel::Aggregate { input, .. } = &mut q.rel else {
            unreachable!()
        };
        **input = Rel::Filter {
            input: Box::new(Rel::Table {
                columns: vec!["category".into()],
            }),
            predicate: Ex::Bin(
                Box::new(Ex::Col("category".into())),
                Op::Eq,
                Box::new(Ex::Lit(Lit::Text("x'); DROP TABLE t; --".into()))),
            ),
        };
        let s = render(&q, &base(), 10).unwrap().sql;
        assert!(s.contains(r"E'x\'); DROP TABLE t; --'"), "{s}");
        // A filter that is not true or false is refused, not sent.
        let Rel::Aggregate { input, .. } = &mut q.rel else {
            unreachable!()
        };
        **input = Rel::Filter {
            input: Box::new(Rel::Table {
                columns: vec!["category".into()],
            }),
            predicate: Ex::Col("category".into()),
        };
        assert!(render(&q, &base(), 10).is_err());
        // A sort below the top would lose its order.
        let Rel::Aggregate { input, .. } = &mut q.rel else {
            unreachable!()
        };
        **input = Rel::Sort {
            input: Box::new(Rel::Table {
                columns: vec!["category".into()],
            }),
            by: Vec::new(),
            offset: 0,
            limit: Some(1),
        };
        assert!(render(&q, &base(), 10).is_err());
    }

    /// Buyers with two or more completed orders, counted: the shape of
    /// `repeat_customer_rate.rhai` once `height` is counted in the database.
    fn repeat_buyers(filter: Option<Ex>) -> Pushed {
        let table = Rel::Table {
            columns: vec!["customer_id".into(), "status".into()],
        };
        let rows = match filter {
            Some(predicate) => Rel::Filter {
                input: Box::new(table),
                predicate,
            },
            None => table,
        };
        let count = || Ex::Agg(Agg::CountAll, Box::new(Ex::Lit(Lit::Null)), None);
        let by_buyer = Rel::Aggregate {
            input: Box::new(rows),
            keys: vec![("customer_id".into(), Ex::Col("customer_id".into()))],
            aggs: vec![("orders".into(), count())],
        };
        Pushed {
            table: "transactions".into(),
            opts: Vec::new(),
            rel: Rel::Aggregate {
                input: Box::new(Rel::Filter {
                    input: Box::new(by_buyer),
                    predicate: Ex::Bin(
                        Box::new(Ex::Col("orders".into())),
                        Op::GtEq,
                        Box::new(Ex::Lit(Lit::Int(2))),
                    ),
                }),
                keys: Vec::new(),
                aggs: vec![("len".into(), count())],
            },
            outputs: vec![("len".into(), Kind::Int)],
        }
    }

    #[test]
    fn whole_history_groups_by_customer_read_the_customer_totals() {
        let completed = Ex::Bin(
            Box::new(Ex::Col("status".into())),
            Op::Eq,
            Box::new(Ex::Lit(Lit::Text("completed".into()))),
        );
        let all = Filters::default();
        let only_completed = Filters {
            statuses: vec!["completed".into()],
            ..Filters::default()
        };
        // Completed rows, by a filter in the plan or by the run's filters.
        for (q, f) in [
            (repeat_buyers(Some(completed.clone())), &all),
            (repeat_buyers(None), &only_completed),
        ] {
            let s = from_totals(&q, f, None, 10).unwrap().sql;
            assert!(
                s.contains("FROM customers WHERE completed_orders > 0"),
                "{s}"
            );
            assert!(!s.contains("transactions"), "{s}");
        }
        // All rows: customers who ever ordered, and their orders.
        let s = from_totals(&repeat_buyers(None), &all, None, 10)
            .unwrap()
            .sql;
        assert!(
            s.contains("orders::int8 AS orders FROM customers WHERE orders > 0"),
            "{s}"
        );
        // Not the whole history, another filter, another status: raw rows.
        let span = sql::minute_span(chrono::Utc::now(), chrono::Utc::now());
        assert!(from_totals(&repeat_buyers(None), &all, Some(span), 10).is_none());
        let by_region = Filters {
            regions: vec!["Europe".into()],
            ..Filters::default()
        };
        assert!(from_totals(&repeat_buyers(None), &by_region, None, 10).is_none());
        let refunded = Ex::Bin(
            Box::new(Ex::Col("status".into())),
            Op::Eq,
            Box::new(Ex::Lit(Lit::Text("refunded".into()))),
        );
        assert!(from_totals(&repeat_buyers(Some(refunded)), &all, None, 10).is_none());
        // What the totals do not keep: a mean, a sum of completed
        // quantities, a completed count per product.
        let inner = |key: Ex, column: &str, agg: Ex| {
            let mut q = repeat_buyers(None);
            if let Rel::Aggregate { input, .. } = &mut q.rel {
                if let Rel::Filter { input, .. } = input.as_mut() {
                    if let Rel::Aggregate { aggs, input, keys } = input.as_mut() {
                        aggs[0].1 = agg;
                        keys[0].1 = key;
                        **input = Rel::Table {
                            columns: vec![column.into(), "quantity".into()],
                        };
                    }
                }
            }
            q
        };
        let by = |c: &str| Ex::Col(c.into());
        let mean = Ex::Agg(Agg::Mean, Box::new(by("quantity")), None);
        let sum = Ex::Agg(Agg::Sum, Box::new(by("quantity")), None);
        let q = inner(by("customer_id"), "customer_id", mean);
        assert!(from_totals(&q, &all, None, 10).is_none());
        let q = inner(by("customer_id"), "customer_id", sum.clone());
        assert!(from_totals(&q, &only_completed, None, 10).is_none());
        assert!(from_totals(&q, &all, None, 10).is_some());
        let q = inner(by("product_id"), "product_id", sum.clone());
        let s = from_totals(&q, &all, None, 10).unwrap().sql;
        assert!(s.contains("FROM products WHERE orders > 0"), "{s}");
        assert!(from_totals(&q, &only_completed, None, 10).is_none());
        // A key computed from the row is not the customer.
        let day = Ex::Part(Part::Day, Box::new(by("occurred_at")));
        let q = inner(day, "occurred_at", sum);
        assert!(from_totals(&q, &all, None, 10).is_none());
    }
}
