//! Frames that run where the rows are.
//!
//! A metric over a busy shop's raw rows would otherwise load millions of
//! them to group them into a handful (`transactions().group_by("category")
//! .agg(…)`, `sql("SELECT category, avg(…) … GROUP BY category")`). When
//! every step of a frame's optimized Polars plan has a meaning SQL shares —
//! filters, projections, `with_columns`, group-by aggregations, distinct,
//! a sort with its limit — [`compile`] turns the plan into a [`Pushed`]
//! query: a small relational tree over one raw table, which the frame
//! source runs in the database ([`FrameSource::query`]), so that only the
//! answer travels. A plan with any other step runs as before: Polars over
//! the loaded columns. Both paths give the same frame; `tests/metrics.rs`
//! runs every shipped metric both ways and compares.
//!
//! The tree is data, not SQL text: the source renders it and checks every
//! name against the table, so the script process (which runs scripts from
//! others) cannot send a statement of its own. What is translated keeps
//! Polars' meaning exactly or is not translated: true division by zero
//! gives ±inf/NaN, sums of nothing are 0, text compares byte-wise, times
//! are read in UTC, `n_unique` counts null as a value, and a plan whose
//! answer depends on the order rows were loaded in (a stable sort over raw
//! rows, `unique` keeping first rows, a slice that is not a top-k) stays
//! in Polars.
//!
//! [`FrameSource::query`]: super::frames::FrameSource::query

use polars::prelude::*;
use polars_plan::dsl::FileScanIR;
use polars_plan::plans::expr_ir::ExprIR;
use polars_plan::plans::{
    AExpr, IRAggExpr, IRBooleanFunction, IRFunctionExpr, IRTemporalFunction, LiteralValue, IR,
};
use polars_plan::prelude::{Arena, Node};
use serde::{Deserialize, Serialize};

/// Most output columns of a pushed query.
pub const MAX_OUTPUTS: usize = 64;

/// A frame's plan as a query over one raw table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pushed {
    /// The table (`transactions`, `sessions`, …).
    pub table: String,
    /// The script's options for it (`key=value`, over the run's filters).
    pub opts: Vec<(String, String)>,
    /// The query.
    pub rel: Rel,
    /// The result's columns, in order, and what each holds.
    pub outputs: Vec<(String, Kind)>,
}

/// What a value is, as far as translation cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Any integer (`int8` in the database).
    Int,
    /// A float (`float8`).
    Float,
    /// Text.
    Text,
    /// True, false or null.
    Bool,
    /// A UTC instant (`timestamptz`).
    Time,
}

/// A relation: rows with named columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Rel {
    /// The table's rows under the run's filters; these columns.
    Table {
        /// Column names of the table.
        columns: Vec<String>,
    },
    /// The rows where `predicate` is true.
    Filter {
        /// Rows in.
        input: Box<Rel>,
        /// A boolean expression.
        predicate: Ex,
    },
    /// New columns computed row by row.
    Project {
        /// Rows in.
        input: Box<Rel>,
        /// Output name and expression, in order.
        columns: Vec<(String, Ex)>,
    },
    /// One row per distinct key (one row in all when there are no keys).
    Aggregate {
        /// Rows in.
        input: Box<Rel>,
        /// Output name and key expression.
        keys: Vec<(String, Ex)>,
        /// Output name and aggregate expression.
        aggs: Vec<(String, Ex)>,
    },
    /// Distinct rows.
    Distinct {
        /// Rows in.
        input: Box<Rel>,
    },
    /// Rows in order, optionally only some. Only at the top of a query
    /// (under a projection at most): what is above a sort keeps no order.
    Sort {
        /// Rows in.
        input: Box<Rel>,
        /// Keys, most significant first.
        by: Vec<SortKey>,
        /// Rows skipped.
        offset: u64,
        /// Rows kept at most.
        limit: Option<u64>,
    },
}

/// One key of a sort.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SortKey {
    /// The value sorted on.
    pub expr: Ex,
    /// Largest first.
    pub descending: bool,
    /// Nulls after the values.
    pub nulls_last: bool,
}

/// A literal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Lit {
    /// Null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
}

/// A binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// Float division, by zero giving ±inf or NaN as Polars does.
    Div,
    /// Three-valued `AND`.
    And,
    /// Three-valued `OR`.
    Or,
}

/// A part of a UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    /// Year.
    Year,
    /// Quarter, 1–4.
    Quarter,
    /// Month, 1–12.
    Month,
    /// ISO week, 1–53.
    Week,
    /// Day of the month.
    Day,
    /// ISO weekday, 1 = Monday … 7 = Sunday.
    Weekday,
    /// Day of the year.
    OrdinalDay,
    /// Hour, 0–23.
    Hour,
    /// Minute.
    Minute,
}

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Agg {
    /// Sum; 0 over no values.
    Sum,
    /// Mean of the non-null values.
    Mean,
    /// Median (linear interpolation).
    Median,
    /// Least value (text byte-wise).
    Min,
    /// Greatest value (text byte-wise).
    Max,
    /// Non-null values.
    Count,
    /// Rows.
    CountAll,
    /// Distinct values, null counting as one.
    NUnique,
    /// Standard deviation with this many degrees of freedom removed (0, 1).
    Std(u8),
    /// Variance with this many degrees of freedom removed (0, 1).
    Var(u8),
}

/// An expression over the columns of a relation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Ex {
    /// A column of the input.
    Col(String),
    /// A literal.
    Lit(Lit),
    /// `a op b`.
    Bin(Box<Ex>, Op, Box<Ex>),
    /// Logical not.
    Not(Box<Ex>),
    /// Arithmetic negation.
    Neg(Box<Ex>),
    /// Absolute value.
    Abs(Box<Ex>),
    /// Is null.
    IsNull(Box<Ex>),
    /// Is not null.
    IsNotNull(Box<Ex>),
    /// Equal to one of the (non-null) values.
    IsIn(Box<Ex>, Vec<Lit>),
    /// `CASE WHEN … THEN … ELSE … END`.
    Case(Box<Ex>, Box<Ex>, Box<Ex>),
    /// A conversion (only those whose meaning both sides share).
    Cast(Box<Ex>, Kind),
    /// A part of a time, read in UTC.
    Part(Part, Box<Ex>),
    /// An aggregate of an expression, over the rows where `filter` holds.
    Agg(Agg, Box<Ex>, Option<Box<Ex>>),
}

/// Where an expression stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Row by row: no aggregate.
    Row,
    /// Over groups: every column inside an aggregate (SQL's rule; Polars
    /// would broadcast).
    Agg,
}

impl Ex {
    /// The expressions this one is made of (an aggregate's filter included).
    pub fn children(&self) -> Vec<&Ex> {
        match self {
            Ex::Col(_) | Ex::Lit(_) => Vec::new(),
            Ex::Bin(a, _, b) => vec![a, b],
            Ex::Not(a)
            | Ex::Neg(a)
            | Ex::Abs(a)
            | Ex::IsNull(a)
            | Ex::IsNotNull(a)
            | Ex::IsIn(a, _)
            | Ex::Cast(a, _)
            | Ex::Part(_, a) => vec![a],
            Ex::Case(p, t, f) => vec![p, t, f],
            Ex::Agg(_, a, filter) => std::iter::once(a).chain(filter).map(|b| &**b).collect(),
        }
    }
}

/// What one compiled step gives: its rows and whether their order means
/// anything.
struct Step {
    rel: Rel,
    cols: Vec<(String, Kind)>,
    order: Order,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// In the order the rows were loaded (newest first): a pushed query
    /// could not keep it.
    Loaded,
    /// Sorted by the step's own keys.
    Sorted,
    /// No order (after an aggregation).
    Free,
}

/// The column that is unique in each raw table (its primary key): rows
/// sorted by it have no ties, so a stable sort of loaded rows by it does not
/// depend on the order they were loaded in.
fn unique_key(table: &str) -> Option<&'static str> {
    match table {
        "transactions" => Some("transaction_id"),
        "sessions" => Some("session_id"),
        "customers" => Some("customer_id"),
        "products" => Some("product_id"),
        _ => None,
    }
}

/// Whether column `name` of `rel`'s output is the table's own column of
/// that name, passed through filters and projections unchanged.
fn keeps_column(rel: &Rel, name: &str) -> bool {
    match rel {
        Rel::Table { columns } => columns.iter().any(|c| c == name),
        Rel::Filter { input, .. } => keeps_column(input, name),
        Rel::Project { input, columns } => columns
            .iter()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, e)| *e == Ex::Col(name.to_owned()) && keeps_column(input, name)),
        Rel::Aggregate { .. } | Rel::Distinct { .. } | Rel::Sort { .. } => false,
    }
}

/// Recognises a raw table's scan: its table and the script's options.
pub(crate) type Leaf = dyn Fn(&dyn std::any::Any) -> Option<(String, Vec<(String, String)>)>;

/// `lf` as a query over one raw table, when all of it translates and
/// pushing it saves loading rows (it aggregates, keeps distinct rows or is
/// a top-k). `leaf` recognises the plan's scans.
pub(crate) fn compile(lf: &LazyFrame, leaf: &Leaf) -> Result<Pushed, String> {
    let flags = OptFlags::PROJECTION_PUSHDOWN
        | OptFlags::PREDICATE_PUSHDOWN
        | OptFlags::TYPE_COERCION
        | OptFlags::SIMPLIFY_EXPR
        | OptFlags::TYPE_CHECK
        | OptFlags::SLICE_PUSHDOWN;
    let plan = lf
        .clone()
        .with_optimizations(flags)
        .to_alp_optimized()
        .map_err(|e| format!("the plan: {e}"))?;
    let mut c = Compiler {
        lp: &plan.lp_arena,
        ex: &plan.expr_arena,
        leaf,
        table: None,
        why: std::cell::RefCell::new(None),
        input: std::cell::RefCell::new(SchemaRef::default()),
    };
    let top = c.rel(plan.lp_top).ok_or_else(|| c.reason())?;
    if top.order == Order::Loaded || !reduces(&top.rel) {
        return Err("nothing to save: the plan keeps the raw rows as loaded".into());
    }
    if top.cols.is_empty() || top.cols.len() > MAX_OUTPUTS {
        return Err(format!(
            "{} columns (at most {MAX_OUTPUTS})",
            top.cols.len()
        ));
    }
    let (table, opts) = c.table.ok_or("no table")?;
    Ok(Pushed {
        table,
        opts,
        rel: top.rel,
        outputs: top.cols,
    })
}

/// Whether running `rel` in the database loads fewer rows than it reads.
fn reduces(rel: &Rel) -> bool {
    match rel {
        Rel::Table { .. } => false,
        Rel::Aggregate { .. } | Rel::Distinct { .. } => true,
        Rel::Sort { input, limit, .. } => limit.is_some() || reduces(input),
        Rel::Filter { input, .. } | Rel::Project { input, .. } => reduces(input),
    }
}

struct Compiler<'a> {
    lp: &'a Arena<IR>,
    ex: &'a Arena<AExpr>,
    leaf: &'a Leaf,
    /// The one table (and options) the plan reads.
    table: Option<(String, Vec<(String, String)>)>,
    /// The first reason the plan does not translate.
    why: std::cell::RefCell<Option<String>>,
    /// The schema the expressions being translated read.
    input: std::cell::RefCell<SchemaRef>,
}

/// An expression's debug text, cut short.
fn short(e: &AExpr) -> String {
    let text = format!("{e:?}");
    text.chars().take(80).collect()
}

fn kind_of(dt: &DataType) -> Option<Kind> {
    Some(match dt {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Kind::Int,
        DataType::Float32 | DataType::Float64 => Kind::Float,
        DataType::String => Kind::Text,
        DataType::Boolean => Kind::Bool,
        DataType::Datetime(TimeUnit::Microseconds, Some(tz)) if tz.as_str() == "UTC" => Kind::Time,
        _ => return None,
    })
}

fn numeric(k: Kind) -> bool {
    matches!(k, Kind::Int | Kind::Float)
}

impl Compiler<'_> {
    /// Gives up, keeping the first reason.
    fn no<T>(&self, why: impl FnOnce() -> String) -> Option<T> {
        self.why.borrow_mut().get_or_insert_with(why);
        None
    }

    fn set_input(&self, node: Node) {
        *self.input.borrow_mut() = self.lp.get(node).schema(self.lp).into_owned();
    }

    /// Whether `node` is an integer of 8 or 16 bits: Polars' arithmetic
    /// on those wraps around where the database's (on 64 bits) does not.
    fn narrow(&self, node: Node) -> bool {
        let small = |dt: &DataType| {
            matches!(
                dt,
                DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
            )
        };
        match self.ex.get(node) {
            AExpr::Column(name) => self.input.borrow().get(name).is_some_and(small),
            AExpr::Literal(LiteralValue::Scalar(s)) => small(s.dtype()),
            // An untyped integer takes the other side's type.
            AExpr::Literal(LiteralValue::Dyn(_)) => true,
            AExpr::Len
            | AExpr::Agg(IRAggExpr::Count { .. })
            | AExpr::Agg(IRAggExpr::NUnique(_)) => true,
            AExpr::Cast { dtype, .. } => small(dtype),
            // Every part of a time is 8 to 32 bits.
            AExpr::Function {
                function: IRFunctionExpr::TemporalExpr(_),
                ..
            } => true,
            // Polars' result is narrow when both sides are.
            AExpr::BinaryExpr { left, right, .. } => self.narrow(*left) && self.narrow(*right),
            AExpr::Ternary { truthy, falsy, .. } => self.narrow(*truthy) || self.narrow(*falsy),
            AExpr::Function {
                function: IRFunctionExpr::Negate | IRFunctionExpr::Abs,
                input,
                ..
            } => input.iter().any(|e| self.narrow(e.node())),
            _ => false,
        }
    }

    fn reason(&self) -> String {
        self.why
            .borrow()
            .clone()
            .unwrap_or_else(|| "a step without an SQL equivalent".into())
    }

    fn rel(&mut self, node: Node) -> Option<Step> {
        match self.lp.get(node) {
            IR::Scan {
                file_info,
                predicate,
                output_schema,
                scan_type,
                unified_scan_args,
                hive_parts,
                ..
            } => {
                let FileScanIR::Anonymous { function, .. } = scan_type.as_ref() else {
                    return self.no(|| "a scan that is not a raw table".into());
                };
                if hive_parts.is_some()
                    || unified_scan_args.pre_slice.is_some()
                    || unified_scan_args.row_index.is_some()
                    || unified_scan_args.include_file_paths.is_some()
                {
                    return self.no(|| "a sliced or indexed scan".into());
                }
                let found = (self.leaf)(function.as_any())
                    .or_else(|| self.no(|| "a scan that is not a raw table".into()))?;
                match &self.table {
                    Some(t) if *t != found => {
                        return self.no(|| "two tables, or one under two sets of filters".into())
                    }
                    _ => self.table = Some(found),
                }
                let schema = output_schema.as_ref().unwrap_or(&file_info.schema);
                let cols = schema
                    .iter()
                    .map(|(n, dt)| Some((n.to_string(), kind_of(dt)?)))
                    .collect::<Option<Vec<_>>>()
                    .or_else(|| self.no(|| "a column of a type not translated".into()))?;
                let mut step = Step {
                    rel: Rel::Table {
                        columns: cols.iter().map(|c| c.0.clone()).collect(),
                    },
                    cols,
                    order: Order::Loaded,
                };
                if let Some(p) = predicate {
                    *self.input.borrow_mut() = std::sync::Arc::clone(&file_info.schema);
                    let (e, k) = self.expr(p.node(), &step.cols, Ctx::Row)?;
                    if k != Kind::Bool {
                        return None;
                    }
                    step.rel = Rel::Filter {
                        input: Box::new(step.rel),
                        predicate: e,
                    };
                }
                Some(step)
            }
            IR::Filter { input, predicate } => {
                let s = self.rel(*input)?;
                self.set_input(*input);
                // Top-k pruning Polars adds below a sorted slice: true for
                // every row the top-k keeps.
                if let AExpr::Function {
                    function: IRFunctionExpr::DynamicPred { .. },
                    ..
                } = self.ex.get(predicate.node())
                {
                    return Some(s);
                }
                if s.order == Order::Sorted {
                    return self.no(|| "a filter after a sort".into());
                }
                let (e, k) = self.expr(predicate.node(), &s.cols, Ctx::Row)?;
                if k != Kind::Bool {
                    return None;
                }
                Some(Step {
                    rel: Rel::Filter {
                        input: Box::new(s.rel),
                        predicate: e,
                    },
                    ..s
                })
            }
            IR::SimpleProjection { input, columns } => {
                let s = self.rel(*input)?;
                self.set_input(*input);
                let mut out = Vec::with_capacity(columns.len());
                for (name, _) in columns.iter() {
                    let k = s.cols.iter().find(|c| c.0 == name.as_str())?.1;
                    out.push((name.to_string(), Ex::Col(name.to_string()), k));
                }
                project(s, out)
            }
            IR::Select { input, expr, .. } => {
                let s = self.rel(*input)?;
                self.set_input(*input);
                let mut out = Vec::with_capacity(expr.len());
                let mut aggs = 0;
                for e in expr {
                    let (x, k, has_agg) = self.expr_agg(e.node(), &s.cols)?;
                    aggs += usize::from(has_agg);
                    out.push((name_of(e)?, x, k));
                }
                if aggs == 0 {
                    return project(s, out);
                }
                // Every expression an aggregate: one row of them.
                if aggs != out.len() {
                    return self.no(|| "aggregates and row values in one select".into());
                }
                let s = whole(s)
                    .or_else(|| self.no(|| "aggregates of a top-k (some sorted rows)".into()))?;
                Some(Step {
                    cols: out.iter().map(|(n, _, k)| (n.clone(), *k)).collect(),
                    rel: Rel::Aggregate {
                        input: Box::new(s.rel),
                        keys: Vec::new(),
                        aggs: out.into_iter().map(|(n, x, _)| (n, x)).collect(),
                    },
                    order: Order::Free,
                })
            }
            IR::HStack { input, exprs, .. } => {
                let s = self.rel(*input)?;
                self.set_input(*input);
                if s.order == Order::Sorted {
                    return self.no(|| "with_columns after a sort".into());
                }
                let mut out: Vec<(String, Ex, Kind)> = s
                    .cols
                    .iter()
                    .map(|(n, k)| (n.clone(), Ex::Col(n.clone()), *k))
                    .collect();
                for e in exprs {
                    let (x, k, has_agg) = self.expr_agg(e.node(), &s.cols)?;
                    if has_agg {
                        return self.no(|| "an aggregate broadcast by with_columns".into());
                    }
                    let name = name_of(e)?;
                    match out.iter_mut().find(|c| c.0 == name) {
                        Some(slot) => *slot = (name, x, k),
                        None => out.push((name, x, k)),
                    }
                }
                project(s, out)
            }
            IR::GroupBy {
                input,
                keys,
                aggs,
                maintain_order,
                options,
                apply,
                ..
            } => {
                if apply.is_some()
                    || options.is_dynamic()
                    || options.is_rolling()
                    || options.slice.is_some()
                {
                    return self.no(|| "a dynamic, rolling or sliced group_by".into());
                }
                let s = self.rel(*input)?;
                self.set_input(*input);
                let s = whole(s)
                    .or_else(|| self.no(|| "a group_by of a top-k (some sorted rows)".into()))?;
                if *maintain_order && s.order == Order::Loaded {
                    return self.no(|| "a group_by keeping load order".into());
                }
                let mut ks = Vec::with_capacity(keys.len());
                let mut cols = Vec::new();
                for k in keys {
                    let (x, kind) = self.expr(k.node(), &s.cols, Ctx::Row)?;
                    cols.push((name_of(k)?, kind));
                    ks.push((name_of(k)?, x));
                }
                let mut ags = Vec::with_capacity(aggs.len());
                for a in aggs {
                    let (x, kind, has_agg) = self.expr_agg(a.node(), &s.cols)?;
                    if !has_agg {
                        return None;
                    }
                    cols.push((name_of(a)?, kind));
                    ags.push((name_of(a)?, x));
                }
                Some(Step {
                    rel: Rel::Aggregate {
                        input: Box::new(s.rel),
                        keys: ks,
                        aggs: ags,
                    },
                    cols,
                    order: Order::Free,
                })
            }
            IR::Distinct { input, options } => {
                let s = self.rel(*input)?;
                self.set_input(*input);
                let keeps_any = matches!(
                    options.keep_strategy,
                    UniqueKeepStrategy::Any | UniqueKeepStrategy::First | UniqueKeepStrategy::Last
                );
                if options.subset.is_some()
                    || s.order == Order::Sorted
                    || options.slice.is_some()
                    || !keeps_any
                    || (s.order != Order::Free
                        && (options.maintain_order
                            || options.keep_strategy != UniqueKeepStrategy::Any))
                {
                    return self.no(|| "unique() keeping load order".into());
                }
                Some(Step {
                    rel: Rel::Distinct {
                        input: Box::new(s.rel),
                    },
                    order: Order::Free,
                    ..s
                })
            }
            IR::Sort {
                input,
                by_column,
                slice,
                sort_options,
            } => {
                let mut s = self.rel(*input)?;
                self.set_input(*input);
                // A sort of sorted rows: one sort, by the new keys and, when
                // stable, the old ones after them (ties keep their order).
                let mut then_by = Vec::new();
                if s.order == Order::Sorted {
                    match s.rel {
                        Rel::Sort {
                            input,
                            by,
                            offset: 0,
                            limit: None,
                        } => {
                            if sort_options.maintain_order {
                                then_by = by;
                            }
                            s.rel = *input;
                            s.order = Order::Free;
                        }
                        _ => {
                            return self
                                .no(|| "a sort of a top-k or of projected sorted rows".into())
                        }
                    }
                }
                let stable_over_loaded = s.order == Order::Loaded && sort_options.maintain_order;
                let mut by = Vec::with_capacity(by_column.len());
                for (i, e) in by_column.iter().enumerate() {
                    let (x, _) = self.expr(e.node(), &s.cols, Ctx::Row)?;
                    by.push(SortKey {
                        expr: x,
                        descending: sort_options
                            .descending
                            .get(i)
                            .or(sort_options.descending.first())
                            .copied()
                            .unwrap_or(false),
                        nulls_last: sort_options
                            .nulls_last
                            .get(i)
                            .or(sort_options.nulls_last.first())
                            .copied()
                            .unwrap_or(false),
                    });
                }
                // A stable sort over loaded rows breaks ties by load order,
                // unless a key is the table's own unique key, untouched: then
                // there are no ties.
                if stable_over_loaded {
                    let key = self.table.as_ref().and_then(|(t, _)| unique_key(t));
                    let total = key.is_some_and(|k| {
                        by.iter().any(|b| b.expr == Ex::Col(k.to_owned()))
                            && keeps_column(&s.rel, k)
                    });
                    if !total {
                        return self.no(|| "a stable sort of raw rows (ties in load order)".into());
                    }
                }
                by.extend(then_by);
                let (offset, limit) = match slice {
                    None => (0, None),
                    Some((off, len, _)) => (u64::try_from(*off).ok()?, Some(*len as u64)),
                };
                Some(Step {
                    rel: Rel::Sort {
                        input: Box::new(s.rel),
                        by,
                        offset,
                        limit,
                    },
                    cols: s.cols,
                    order: Order::Sorted,
                })
            }
            IR::Slice { input, offset, len } => {
                let mut s = self.rel(*input)?;
                self.set_input(*input);
                let Rel::Sort {
                    offset: o,
                    limit: l,
                    ..
                } = &mut s.rel
                else {
                    return self.no(|| "a slice of rows in load order".into());
                };
                let start = u64::try_from(*offset).ok()?;
                let len = u64::from(*len);
                let avail = l.map(|l| l.saturating_sub(start));
                *o = o.checked_add(start)?;
                *l = Some(avail.map_or(len, |a| a.min(len)));
                Some(s)
            }
            IR::DataFrameScan { .. } => {
                self.no(|| "rows already in memory (read before, or made by the script)".into())
            }
            other => self.no(|| format!("the step {}", other.name())),
        }
    }

    /// An expression that may hold aggregates: its translation, kind, and
    /// whether it aggregates (then every column it reads is inside one).
    fn expr_agg(&self, node: Node, cols: &[(String, Kind)]) -> Option<(Ex, Kind, bool)> {
        let has_agg = self.holds_agg(node);
        let ctx = if has_agg { Ctx::Agg } else { Ctx::Row };
        let (e, k) = self.expr(node, cols, ctx)?;
        Some((e, k, has_agg))
    }

    fn holds_agg(&self, node: Node) -> bool {
        match self.ex.get(node) {
            AExpr::Agg(_) | AExpr::Len => true,
            AExpr::BinaryExpr { left, right, .. } => {
                self.holds_agg(*left) || self.holds_agg(*right)
            }
            AExpr::Cast { expr, .. } => self.holds_agg(*expr),
            AExpr::Ternary {
                predicate,
                truthy,
                falsy,
            } => self.holds_agg(*predicate) || self.holds_agg(*truthy) || self.holds_agg(*falsy),
            AExpr::Function {
                function: IRFunctionExpr::NullCount,
                ..
            } => true,
            AExpr::Function { input, .. } => input.iter().any(|e| self.holds_agg(e.node())),
            _ => false,
        }
    }

    /// `node` over `cols`, in `ctx`.
    fn expr(&self, node: Node, cols: &[(String, Kind)], agg: Ctx) -> Option<(Ex, Kind)> {
        match self.ex.get(node) {
            AExpr::Column(name) => {
                if agg == Ctx::Agg {
                    return None;
                }
                let k = cols.iter().find(|c| c.0 == name.as_str())?.1;
                Some((Ex::Col(name.to_string()), k))
            }
            AExpr::Literal(v) => literal(v).map(|(l, k)| match l {
                // A null carries its kind, as SQL's NULL does not.
                Lit::Null => (null_of(k), k),
                l => (Ex::Lit(l), k),
            }),
            AExpr::BinaryExpr { left, op, right } => {
                let arithmetic =
                    matches!(op, Operator::Plus | Operator::Minus | Operator::Multiply);
                if arithmetic && self.narrow(*left) && self.narrow(*right) {
                    return self.no(|| {
                        format!("{op} on integers under 64 bits (Polars wraps them around)")
                    });
                }
                let (a, ka) = self.expr(*left, cols, agg)?;
                let (b, kb) = self.expr(*right, cols, agg)?;
                binary(a, ka, *op, b, kb)
                    .or_else(|| self.no(|| format!("the operator {op} on {ka:?} and {kb:?}")))
            }
            AExpr::Cast { expr, dtype, .. } => {
                let (e, from) = self.expr(*expr, cols, agg)?;
                kind_of(dtype)
                    .and_then(|to| cast(e, from, to))
                    .or_else(|| self.no(|| format!("a cast from {from:?} to {dtype}")))
            }
            AExpr::Ternary {
                predicate,
                truthy,
                falsy,
            } => {
                let (p, kp) = self.expr(*predicate, cols, agg)?;
                let (t, kt) = self.expr(*truthy, cols, agg)?;
                let (f, kf) = self.expr(*falsy, cols, agg)?;
                if kp != Kind::Bool {
                    return None;
                }
                let (t, f, k) = unify(t, kt, f, kf)?;
                Some((Ex::Case(Box::new(p), Box::new(t), Box::new(f)), k))
            }
            AExpr::Len | AExpr::Agg(_) if agg == Ctx::Row => None,
            AExpr::Len => Some((
                Ex::Agg(Agg::CountAll, Box::new(Ex::Lit(Lit::Null)), None),
                Kind::Int,
            )),
            AExpr::Agg(a) => self.aggregate(a, cols),
            AExpr::Function {
                input, function, ..
            } => self.function(input, function, cols, agg),
            other => self.no(|| format!("the expression {}", short(other))),
        }
    }

    fn aggregate(&self, a: &IRAggExpr, cols: &[(String, Kind)]) -> Option<(Ex, Kind)> {
        let (f, input) = match a {
            IRAggExpr::Sum(n) => (Agg::Sum, *n),
            IRAggExpr::Mean(n) => (Agg::Mean, *n),
            IRAggExpr::Median(n) => (Agg::Median, *n),
            IRAggExpr::Min {
                input,
                propagate_nans: false,
            } => (Agg::Min, *input),
            IRAggExpr::Max {
                input,
                propagate_nans: false,
            } => (Agg::Max, *input),
            IRAggExpr::NUnique(n) => (Agg::NUnique, *n),
            IRAggExpr::Count {
                input,
                include_nulls,
            } => (
                if *include_nulls {
                    Agg::CountAll
                } else {
                    Agg::Count
                },
                *input,
            ),
            IRAggExpr::Std(n, ddof) if *ddof <= 1 => (Agg::Std(*ddof), *n),
            IRAggExpr::Var(n, ddof) if *ddof <= 1 => (Agg::Var(*ddof), *n),
            other => return self.no(|| format!("the aggregation {}", <&str>::from(other))),
        };
        // `col(x).filter(cond).sum()` aggregates the rows where cond holds.
        let (value, filter) = match self.ex.get(input) {
            AExpr::Filter { input, by } => {
                let (c, kc) = self.expr(*by, cols, Ctx::Row)?;
                if kc != Kind::Bool {
                    return None;
                }
                (*input, Some(Box::new(c)))
            }
            _ => (input, None),
        };
        let (e, k) = self.expr(value, cols, Ctx::Row)?;
        // Polars aggregates a literal as one value, SQL over every row.
        if !reads_column(&e) {
            return self.no(|| "an aggregate of a literal".into());
        }
        let out = match f {
            Agg::Sum => match k {
                Kind::Int | Kind::Float => k,
                Kind::Bool => Kind::Int,
                _ => return None,
            },
            Agg::Mean | Agg::Median | Agg::Std(_) | Agg::Var(_) => {
                if !numeric(k) {
                    return None;
                }
                Kind::Float
            }
            Agg::Min | Agg::Max => {
                if k == Kind::Bool {
                    return None;
                }
                k
            }
            Agg::Count | Agg::CountAll | Agg::NUnique => Kind::Int,
        };
        let e = if k == Kind::Bool && f == Agg::Sum {
            Ex::Cast(Box::new(e), Kind::Int)
        } else {
            e
        };
        Some((Ex::Agg(f, Box::new(e), filter), out))
    }

    fn function(
        &self,
        input: &[ExprIR],
        function: &IRFunctionExpr,
        cols: &[(String, Kind)],
        agg: Ctx,
    ) -> Option<(Ex, Kind)> {
        let first = |want: Option<Kind>| -> Option<(Ex, Kind)> {
            let [one] = input else { return None };
            let (e, k) = self.expr(one.node(), cols, agg)?;
            match want {
                Some(w) if w != k => None,
                _ => Some((e, k)),
            }
        };
        match function {
            IRFunctionExpr::Boolean(b) => match b {
                IRBooleanFunction::Not => {
                    let (e, _) = first(Some(Kind::Bool))?;
                    Some((Ex::Not(Box::new(e)), Kind::Bool))
                }
                IRBooleanFunction::IsNull => {
                    let (e, _) = first(None)?;
                    Some((Ex::IsNull(Box::new(e)), Kind::Bool))
                }
                IRBooleanFunction::IsNotNull => {
                    let (e, _) = first(None)?;
                    Some((Ex::IsNotNull(Box::new(e)), Kind::Bool))
                }
                IRBooleanFunction::IsIn { .. } => {
                    let [value, set] = input else { return None };
                    let (e, k) = self.expr(value.node(), cols, agg)?;
                    let values = match self.ex.get(set.node()) {
                        AExpr::Literal(LiteralValue::Series(s)) => literal_list(s, k)?,
                        AExpr::Literal(LiteralValue::Scalar(sc)) => match sc.value() {
                            AnyValue::List(s) => literal_list(s, k)?,
                            _ => return None,
                        },
                        _ => return None,
                    };
                    Some((Ex::IsIn(Box::new(e), values), Kind::Bool))
                }
                other => {
                    self.no(|| format!("the function {}", IRFunctionExpr::Boolean(other.clone())))
                }
            },
            // Nulls in the group (Polars SQL's `sum` is null over only
            // nulls, as SQL's is): rows less values.
            IRFunctionExpr::NullCount => {
                if agg != Ctx::Agg {
                    return self.no(|| "null_count outside an aggregation".into());
                }
                let [one] = input else { return None };
                let (e, _) = self.expr(one.node(), cols, Ctx::Row)?;
                let all = Ex::Agg(Agg::CountAll, Box::new(Ex::Lit(Lit::Null)), None);
                let values = Ex::Agg(Agg::Count, Box::new(e), None);
                Some((Ex::Bin(Box::new(all), Op::Sub, Box::new(values)), Kind::Int))
            }
            IRFunctionExpr::Negate => {
                let (e, k) = first(None)?;
                numeric(k).then(|| (Ex::Neg(Box::new(e)), k))
            }
            IRFunctionExpr::Abs => {
                let (e, k) = first(None)?;
                numeric(k).then(|| (Ex::Abs(Box::new(e)), k))
            }
            IRFunctionExpr::TemporalExpr(t) => {
                let part = match t {
                    IRTemporalFunction::Year => Part::Year,
                    IRTemporalFunction::Quarter => Part::Quarter,
                    IRTemporalFunction::Month => Part::Month,
                    IRTemporalFunction::Week => Part::Week,
                    IRTemporalFunction::Day => Part::Day,
                    IRTemporalFunction::WeekDay => Part::Weekday,
                    IRTemporalFunction::OrdinalDay => Part::OrdinalDay,
                    IRTemporalFunction::Hour => Part::Hour,
                    IRTemporalFunction::Minute => Part::Minute,
                    _ => return None,
                };
                let (e, _) = first(Some(Kind::Time))?;
                Some((Ex::Part(part, Box::new(e)), Kind::Int))
            }
            other => self.no(|| format!("the function {other}")),
        }
    }
}

/// A projection step (over a sort: the sort stays on top, the projection
/// is rendered in the same statement).
/// The rows of `s` for an aggregation, in which their order means
/// nothing (no aggregate translated depends on it): a sort of all of them
/// (a grouped frame comes out sorted by its keys) is dropped; `None` for
/// a top-k, whose rows depend on it.
fn whole(s: Step) -> Option<Step> {
    if s.order != Order::Sorted {
        return Some(s);
    }
    fn unsorted(rel: Rel) -> Option<Rel> {
        match rel {
            Rel::Sort {
                input,
                offset: 0,
                limit: None,
                ..
            } => Some(*input),
            // A projection of the sorted rows (as a select keeps them).
            Rel::Project { input, columns } => Some(Rel::Project {
                input: Box::new(unsorted(*input)?),
                columns,
            }),
            _ => None,
        }
    }
    Some(Step {
        rel: unsorted(s.rel)?,
        order: Order::Free,
        cols: s.cols,
    })
}

fn project(s: Step, out: Vec<(String, Ex, Kind)>) -> Option<Step> {
    if s.order == Order::Sorted && !matches!(s.rel, Rel::Sort { .. }) {
        return None;
    }
    Some(Step {
        cols: out.iter().map(|(n, _, k)| (n.clone(), *k)).collect(),
        rel: Rel::Project {
            input: Box::new(s.rel),
            columns: out.into_iter().map(|(n, x, _)| (n, x)).collect(),
        },
        order: s.order,
    })
}

/// A literal; text with a NUL (which no stored text holds, and SQL text
/// cannot carry) is not translated.
fn literal(v: &LiteralValue) -> Option<(Lit, Kind)> {
    literal_any_text(v).filter(|(l, _)| !matches!(l, Lit::Text(t) if t.contains('\0')))
}

fn literal_any_text(v: &LiteralValue) -> Option<(Lit, Kind)> {
    use polars_plan::plans::DynLiteralValue;
    match v {
        LiteralValue::Dyn(DynLiteralValue::Int(i)) => {
            Some((Lit::Int(i64::try_from(*i).ok()?), Kind::Int))
        }
        LiteralValue::Dyn(DynLiteralValue::Float(f)) => Some((Lit::Float(*f), Kind::Float)),
        LiteralValue::Dyn(DynLiteralValue::Str(s)) => Some((Lit::Text(s.to_string()), Kind::Text)),
        LiteralValue::Scalar(s) => any_lit(s.value(), s.dtype()),
        _ => None,
    }
}

fn any_lit(v: &AnyValue<'_>, dt: &DataType) -> Option<(Lit, Kind)> {
    let l = match v {
        AnyValue::Null => {
            // A typed null keeps its column's kind; an untyped one is text
            // in SQL's eyes until unified.
            let k = if dt.is_null() {
                Kind::Text
            } else {
                kind_of(dt)?
            };
            return Some((Lit::Null, k));
        }
        AnyValue::Boolean(b) => Lit::Bool(*b),
        AnyValue::String(s) => Lit::Text((*s).to_owned()),
        AnyValue::StringOwned(s) => Lit::Text(s.to_string()),
        AnyValue::Int8(x) => Lit::Int(i64::from(*x)),
        AnyValue::Int16(x) => Lit::Int(i64::from(*x)),
        AnyValue::Int32(x) => Lit::Int(i64::from(*x)),
        AnyValue::Int64(x) => Lit::Int(*x),
        AnyValue::UInt8(x) => Lit::Int(i64::from(*x)),
        AnyValue::UInt16(x) => Lit::Int(i64::from(*x)),
        AnyValue::UInt32(x) => Lit::Int(i64::from(*x)),
        AnyValue::Float32(x) => Lit::Float(f64::from(*x)),
        AnyValue::Float64(x) => Lit::Float(*x),
        _ => return None,
    };
    let k = match l {
        Lit::Bool(_) => Kind::Bool,
        Lit::Text(_) => Kind::Text,
        Lit::Int(_) => Kind::Int,
        Lit::Float(_) => Kind::Float,
        Lit::Null => Kind::Text,
    };
    Some((l, k))
}

/// The values of an `is_in` list, all of kind `k` and none null.
fn literal_list(s: &Series, k: Kind) -> Option<Vec<Lit>> {
    let s = match s.dtype() {
        DataType::List(_) => s
            .explode(ExplodeOptions {
                empty_as_null: false,
                keep_nulls: true,
            })
            .ok()?,
        _ => s.clone(),
    };
    if s.len() > 10_000 {
        return None;
    }
    let dt = s.dtype().clone();
    s.iter()
        .map(|v| match any_lit(&v, &dt)? {
            (Lit::Null, _) => None,
            (Lit::Text(t), _) if t.contains('\0') => None,
            (l, lk) if lk == k => Some(l),
            (Lit::Int(i), Kind::Int) if k == Kind::Float => Some(Lit::Float(i as f64)),
            _ => None,
        })
        .collect()
}

/// The name an expression's column gets.
fn name_of(e: &ExprIR) -> Option<String> {
    e.output_name_inner().get().map(|n| n.to_string())
}

/// Whether `e` reads a column.
fn reads_column(e: &Ex) -> bool {
    matches!(e, Ex::Col(_)) || e.children().into_iter().any(reads_column)
}

/// A null of kind `k`.
fn null_of(k: Kind) -> Ex {
    Ex::Cast(Box::new(Ex::Lit(Lit::Null)), k)
}

fn is_null_lit(e: &Ex) -> bool {
    match e {
        Ex::Lit(Lit::Null) => true,
        Ex::Cast(inner, _) => matches!(inner.as_ref(), Ex::Lit(Lit::Null)),
        _ => false,
    }
}

/// Two branches of one kind (integers widen to floats; a null takes the
/// other's kind).
fn unify(a: Ex, ka: Kind, b: Ex, kb: Kind) -> Option<(Ex, Ex, Kind)> {
    if ka == kb {
        return Some((a, b, ka));
    }
    if is_null_lit(&a) {
        return Some((null_of(kb), b, kb));
    }
    if is_null_lit(&b) {
        return Some((a, null_of(ka), ka));
    }
    match (ka, kb) {
        (Kind::Int, Kind::Float) => Some((Ex::Cast(Box::new(a), Kind::Float), b, Kind::Float)),
        (Kind::Float, Kind::Int) => Some((a, Ex::Cast(Box::new(b), Kind::Float), Kind::Float)),
        _ => None,
    }
}

fn binary(a: Ex, ka: Kind, op: Operator, b: Ex, kb: Kind) -> Option<(Ex, Kind)> {
    let o = match op {
        Operator::Eq => Op::Eq,
        Operator::NotEq => Op::NotEq,
        Operator::Lt => Op::Lt,
        Operator::LtEq => Op::LtEq,
        Operator::Gt => Op::Gt,
        Operator::GtEq => Op::GtEq,
        Operator::Plus => Op::Add,
        Operator::Minus => Op::Sub,
        Operator::Multiply => Op::Mul,
        Operator::TrueDivide => Op::Div,
        // Rust division is float division only between floats.
        Operator::RustDivide if ka == Kind::Float && kb == Kind::Float => Op::Div,
        Operator::And | Operator::LogicalAnd if ka == Kind::Bool && kb == Kind::Bool => Op::And,
        Operator::Or | Operator::LogicalOr if ka == Kind::Bool && kb == Kind::Bool => Op::Or,
        _ => return None,
    };
    match o {
        Op::And | Op::Or => Some((Ex::Bin(Box::new(a), o, Box::new(b)), Kind::Bool)),
        Op::Eq | Op::NotEq | Op::Lt | Op::LtEq | Op::Gt | Op::GtEq => {
            let (a, b, k) = unify(a, ka, b, kb)?;
            if k == Kind::Bool && !matches!(o, Op::Eq | Op::NotEq) {
                return None;
            }
            Some((Ex::Bin(Box::new(a), o, Box::new(b)), Kind::Bool))
        }
        Op::Div => {
            if !numeric(ka) || !numeric(kb) {
                return None;
            }
            let a = if ka == Kind::Int {
                Ex::Cast(Box::new(a), Kind::Float)
            } else {
                a
            };
            let b = if kb == Kind::Int {
                Ex::Cast(Box::new(b), Kind::Float)
            } else {
                b
            };
            Some((Ex::Bin(Box::new(a), o, Box::new(b)), Kind::Float))
        }
        Op::Add | Op::Sub | Op::Mul => {
            if !numeric(ka) || !numeric(kb) {
                return None;
            }
            let (a, b, k) = unify(a, ka, b, kb)?;
            Some((Ex::Bin(Box::new(a), o, Box::new(b)), k))
        }
    }
}

/// Conversions whose meaning both sides share.
fn cast(e: Ex, from: Kind, to: Kind) -> Option<(Ex, Kind)> {
    if from == to {
        return Some((e, to));
    }
    if is_null_lit(&e) {
        return Some((null_of(to), to));
    }
    match (from, to) {
        (Kind::Int, Kind::Float)
        | (Kind::Bool, Kind::Int)
        | (Kind::Bool, Kind::Float)
        | (Kind::Int, Kind::Text)
        | (Kind::Bool, Kind::Text)
        | (Kind::Float, Kind::Int) => Some((Ex::Cast(Box::new(e), to), to)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Fake(SchemaRef);

    impl AnonymousScan for Fake {
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn scan(&self, _: AnonymousScanArgs) -> PolarsResult<DataFrame> {
            polars_bail!(ComputeError: "not loaded in these tests")
        }
        fn schema(&self, _: Option<usize>) -> PolarsResult<SchemaRef> {
            Ok(Arc::clone(&self.0))
        }
        fn allows_projection_pushdown(&self) -> bool {
            true
        }
    }

    fn scan() -> LazyFrame {
        let schema: Schema = [
            Field::new("transaction_id".into(), DataType::String),
            Field::new("product_id".into(), DataType::String),
            Field::new("category".into(), DataType::String),
            Field::new("quantity".into(), DataType::Int64),
            Field::new("total_amount".into(), DataType::Float64),
            Field::new(
                "occurred_at".into(),
                DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)),
            ),
        ]
        .into_iter()
        .collect();
        LazyFrame::anonymous_scan(Arc::new(Fake(Arc::new(schema))), Default::default()).unwrap()
    }

    fn leaf(a: &dyn std::any::Any) -> Option<(String, Vec<(String, String)>)> {
        a.downcast_ref::<Fake>().map(|_| {
            (
                "transactions".to_owned(),
                vec![("last".into(), "7d".into())],
            )
        })
    }

    #[test]
    fn a_count_of_grouped_rows_is_pushed() {
        // Grouped frames come out sorted by their keys (`script::frames`).
        let sorted = SortMultipleOptions::default().with_nulls_last(true);
        let by = scan()
            .filter(col("category").eq(lit("Books")))
            .group_by([col("product_id")])
            .agg([
                len().alias("orders"),
                col("total_amount").sum().alias("spent"),
            ])
            .sort(["product_id"], sorted.clone());
        let counted = by
            .clone()
            .filter(col("orders").gt_eq(lit(2)))
            .select([len()]);
        let bare = scan()
            .group_by([col("product_id")])
            .agg([len().alias("orders")])
            .sort(["product_id"], sorted.clone())
            .select([len()]);
        if let Err(why) = compile(&bare, &leaf) {
            panic!("{why}\n{}", bare.describe_optimized_plan().unwrap());
        }
        if let Err(why) = compile(&counted, &leaf) {
            panic!("{why}\n{}", counted.describe_optimized_plan().unwrap());
        }
        let summed = by.select([
            len().alias("n"),
            col("spent").sum(),
            col("orders").max().alias("most"),
        ]);
        if let Err(why) = compile(&summed, &leaf) {
            panic!("{why}\n{}", summed.describe_optimized_plan().unwrap());
        }
        // A top-k's rows depend on the order: not aggregated in SQL.
        let top = scan()
            .sort(["total_amount"], sorted)
            .limit(5)
            .select([col("quantity").sum()]);
        assert!(compile(&top, &leaf).is_err());
    }

    #[test]
    fn a_grouped_aggregation_is_pushed_whole_reading_only_its_columns() {
        let lf = scan()
            .with_column((col("quantity") * lit(2)).alias("double"))
            .group_by([col("category")])
            .agg([
                col("total_amount").sum().alias("revenue"),
                len().alias("n"),
                col("double").mean().alias("m"),
            ]);
        let q = compile(&lf, &leaf).unwrap();
        assert_eq!(q.table, "transactions");
        assert_eq!(q.opts, vec![("last".to_owned(), "7d".to_owned())]);
        assert_eq!(
            q.outputs,
            vec![
                ("category".to_owned(), Kind::Text),
                ("revenue".to_owned(), Kind::Float),
                ("n".to_owned(), Kind::Int),
                ("m".to_owned(), Kind::Float),
            ]
        );
        fn table_columns(r: &Rel) -> Vec<String> {
            match r {
                Rel::Table { columns } => columns.clone(),
                Rel::Filter { input, .. }
                | Rel::Project { input, .. }
                | Rel::Aggregate { input, .. }
                | Rel::Distinct { input }
                | Rel::Sort { input, .. } => table_columns(input),
            }
        }
        let mut read = table_columns(&q.rel);
        read.sort();
        assert_eq!(read, ["category", "quantity", "total_amount"]);
        // The tree travels as JSON between the processes.
        let back: Pushed = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(back, q);
    }

    #[test]
    fn an_unstable_top_k_is_pushed_with_its_limit() {
        let lf = scan()
            .sort(
                ["total_amount"],
                SortMultipleOptions::default().with_order_descending(true),
            )
            .limit(3);
        let q = compile(&lf, &leaf)
            .unwrap_or_else(|e| panic!("{e}\n{}", lf.describe_optimized_plan().unwrap()));
        assert!(
            matches!(
                &q.rel,
                Rel::Sort {
                    limit: Some(3),
                    offset: 0,
                    ..
                }
            ),
            "{:?}",
            q.rel
        );
    }

    #[test]
    fn plans_that_save_no_rows_or_depend_on_load_order_stay_in_polars() {
        let why = |lf: LazyFrame| compile(&lf, &leaf).unwrap_err();
        // Raw rows in load order: nothing to save, an order to keep.
        assert!(why(scan().filter(col("quantity").gt(lit(2)))).contains("nothing to save"));
        assert!(why(scan().limit(5)).contains("sliced"));
        // A stable sort breaks ties by load order.
        let stable = SortMultipleOptions::default().with_maintain_order(true);
        assert!(why(scan().sort(["total_amount"], stable.clone()).limit(3)).contains("stable sort"));
        // ... unless a key is the table's unique key, as loaded: no ties.
        let by_key = scan()
            .sort(["total_amount", "transaction_id"], stable.clone())
            .limit(3);
        assert!(compile(&by_key, &leaf).is_ok());
        let renamed = scan()
            .with_column(col("product_id").alias("transaction_id"))
            .sort(["total_amount", "transaction_id"], stable.clone())
            .limit(3);
        assert!(why(renamed).contains("stable sort"));
        // A function with no translation, anywhere in the plan.
        let rounded = scan().group_by([col("category")]).agg([col("total_amount")
            .round(1, RoundMode::HalfAwayFromZero)
            .sum()]);
        assert!(why(rounded).contains("round"));
        // Integer remainders differ in sign between the two.
        let rem = scan().group_by([col("quantity") % lit(3)]).agg([len()]);
        assert!(why(rem).contains("operator"));
        // A scan that is not a table.
        assert!(why(DataFrame::empty().lazy().select([len()])).contains("in memory"));
    }
}
