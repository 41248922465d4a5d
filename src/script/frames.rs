//! Polars for Rhai: frames, expressions and series as script values.
//!
//! A [`Frame`] is a handle to a lazy Polars query: passing it around or
//! assigning it copies nothing, and each operation only extends the plan.
//! The plan runs when a script needs values out of it (its height, a
//! column, a value, or the script's result), once per handle.
//!
//! Where frames come from is up to the caller: a run may install a
//! [`FrameSource`] (the analytics layer's views and raw tables) with
//! [`with_source`]; without one, only frames built in the script exist.
//! The reference of every function is `scripts/README.md`; its examples run
//! as tests.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use polars::prelude::*;
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, Position};

use super::pushdown::{self, Pushed};

type R<T> = Result<T, Box<EvalAltResult>>;

/// A runtime error for the script (Rhai adds the position of the call).
pub fn fail<T>(msg: impl Into<String>) -> R<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(msg.into()),
        Position::NONE,
    )))
}

fn polars_err(e: PolarsError) -> Box<EvalAltResult> {
    // Polars appends hints and plan dumps after the first paragraph.
    let text = e.to_string();
    let first = text.split("\n\n").next().unwrap_or(&text).trim().to_owned();
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(first),
        Position::NONE,
    ))
}

/// Where a script's named frames come from.
pub trait FrameSource: Send + Sync {
    /// A view (`kpis`, `revenue_trend`, …) under `opts`: `key=value` pairs as
    /// the CLI takes them, over the run's own filters.
    fn view(&self, name: &str, opts: &[(String, String)]) -> Result<DataFrame, String>;
    /// Raw rows of a table (`transactions`, `sessions`, …) under `opts`:
    /// only `columns`, in that order, when given; the first `limit` rows
    /// only, when given (a `head(n)` or SQL `LIMIT` pushed into the scan).
    fn table(
        &self,
        name: &str,
        opts: &[(String, String)],
        columns: Option<&[String]>,
        limit: Option<usize>,
    ) -> Result<DataFrame, String>;
    /// The columns of a table and their types; checks `opts`.
    fn table_schema(&self, name: &str, opts: &[(String, String)]) -> Result<Schema, String>;
    /// The tables [`FrameSource::table`] knows (what `sql` may name).
    fn table_names(&self) -> Vec<&'static str>;
    /// Runs a frame's plan where the table's rows are ([`Pushed`]: the
    /// plan as a query, see [`super::pushdown`]); `Ok(None)` when this
    /// source cannot, and the plan runs in Polars over loaded rows. The
    /// frame's columns come back in the order of `q.outputs`, with their
    /// names.
    fn query(&self, q: &Pushed) -> Result<Option<DataFrame>, String> {
        let _ = q;
        Ok(None)
    }
}

#[derive(Default)]
struct RunFrames {
    source: Option<Arc<dyn FrameSource>>,
    registered: HashMap<String, Frame>,
}

thread_local! {
    static RUN: RefCell<RunFrames> = RefCell::new(RunFrames::default());
}

/// Runs `f` with `source` installed for the frame functions on this thread
/// (frames registered with `register` live until `f` returns).
pub(crate) fn with_source<T>(source: Option<Arc<dyn FrameSource>>, f: impl FnOnce() -> T) -> T {
    let previous = RUN.with_borrow_mut(|r| {
        std::mem::replace(
            r,
            RunFrames {
                source,
                registered: HashMap::new(),
            },
        )
    });
    let out = f();
    RUN.with_borrow_mut(|r| *r = previous);
    out
}

/// Frames a script named with `register`, by name.
pub(crate) type Registered = HashMap<String, Frame>;

/// [`with_source`] with `registered` frames in place, and what `f`
/// registers kept in it afterwards (a notebook's cells share them).
pub(crate) fn with_source_keeping<T>(
    source: Option<Arc<dyn FrameSource>>,
    registered: &mut Registered,
    f: impl FnOnce() -> T,
) -> T {
    let previous = RUN.with_borrow_mut(|r| {
        std::mem::replace(
            r,
            RunFrames {
                source,
                registered: std::mem::take(registered),
            },
        )
    });
    let out = f();
    RUN.with_borrow_mut(|r| {
        let mine = std::mem::replace(r, previous);
        *registered = mine.registered;
    });
    out
}

fn source() -> R<Arc<dyn FrameSource>> {
    match RUN.with_borrow(|r| r.source.clone()) {
        Some(s) => Ok(s),
        None => fail("no data here: this run has no database (frames built with `frame` work)"),
    }
}

/// A lazy frame handle.
#[derive(Clone)]
pub struct Frame {
    lf: LazyFrame,
    done: Arc<OnceLock<DataFrame>>,
}

impl Frame {
    /// A handle on rows already at hand: reading it runs nothing.
    pub(crate) fn from_df(df: DataFrame) -> Self {
        let lf = df.clone().lazy();
        let done = OnceLock::new();
        let _ = done.set(df);
        Self {
            lf,
            done: Arc::new(done),
        }
    }

    /// A new plan; checked now, so that a bad column name is reported at the
    /// line that names it rather than where the frame is first read.
    fn plan(lf: LazyFrame) -> R<Self> {
        let mut check = lf.clone();
        check.collect_schema().map_err(polars_err)?;
        Ok(Self {
            lf,
            done: Arc::default(),
        })
    }

    /// The frame's rows (the plan runs once per handle).
    pub fn collect(&self) -> R<DataFrame> {
        if let Some(df) = self.done.get() {
            return Ok(df.clone());
        }
        let df = match pushed(&self.lf)? {
            Some(df) => df,
            None => self.lf.clone().collect().map_err(polars_err)?,
        };
        Ok(self.done.get_or_init(|| df).clone())
    }

    /// How many rows the frame has: counted where its plan runs, so that a
    /// plan that runs in the database sends one number rather than its rows
    /// (which are then not kept: reading them later runs the plan again).
    fn height(&self) -> R<i64> {
        if let Some(df) = self.done.get() {
            return Ok(df.height() as i64);
        }
        if let Some(df) = pushed(&self.lf.clone().select([len()]))? {
            let n = df
                .columns()
                .first()
                .and_then(|c| c.cast(&DataType::Int64).ok())
                .and_then(|c| c.i64().ok().and_then(|a| a.get(0)));
            return match n {
                Some(n) => Ok(n),
                None => fail("the database answered no row count"),
            };
        }
        Ok(self.collect()?.height() as i64)
    }

    /// The plan to extend: the rows themselves once they have been read,
    /// so that a frame built on a read one does not read again.
    fn lazy(&self) -> LazyFrame {
        match self.done.get() {
            Some(df) => df.clone().lazy(),
            None => self.lf.clone(),
        }
    }

    fn schema(&self) -> R<SchemaRef> {
        self.lf.clone().collect_schema().map_err(polars_err)
    }
}

/// The table and options of a raw-table scan.
fn table_leaf(scan: &dyn std::any::Any) -> Option<(String, Vec<(String, String)>)> {
    scan.downcast_ref::<TableScan>()
        .map(|t| (t.name.clone(), t.pairs.clone()))
}

/// `f.explain()`: where the frame's plan runs (and, when not in the
/// database, the first step that keeps it in Polars) and Polars' optimized
/// plan.
fn explain(f: &Frame) -> R<String> {
    if f.done.get().is_some() {
        return Ok("already read: rows in memory".into());
    }
    let runs = match pushdown::compile(&f.lf, &table_leaf) {
        Ok(q) => format!(
            "runs in the database (over {}); only the answer is loaded",
            q.table
        ),
        Err(why) => format!("runs in Polars over loaded rows: {why}"),
    };
    let plan = f.lf.clone().describe_optimized_plan().map_err(polars_err)?;
    Ok(format!("{runs}\n{plan}"))
}

/// `lf`'s rows from the source's database, when the whole plan can run
/// there (see [`super::pushdown`]); `None` to run it in Polars.
fn pushed(lf: &LazyFrame) -> R<Option<DataFrame>> {
    let Some(source) = RUN.with_borrow(|r| r.source.clone()) else {
        return Ok(None);
    };
    let Ok(q) = pushdown::compile(lf, &table_leaf) else {
        return Ok(None);
    };
    let schema = lf.clone().collect_schema().map_err(polars_err)?;
    let df = match source.query(&q) {
        Ok(Some(df)) => df,
        Ok(None) => return Ok(None),
        Err(e) => return fail(format!("{}: {e}", q.table)),
    };
    // The frame Polars would have made: its names and types.
    if df.width() != schema.len() {
        return fail(format!(
            "{}: the database answered {} columns for {}",
            q.table,
            df.width(),
            schema.len()
        ));
    }
    let cols = df
        .columns()
        .iter()
        .zip(schema.iter())
        .map(|(c, (name, dt))| {
            let c = c.cast(dt).map_err(polars_err)?;
            Ok(c.with_name(name.clone()))
        })
        .collect::<R<Vec<_>>>()?;
    DataFrame::new_infer_height(cols)
        .map(Some)
        .map_err(polars_err)
}

/// An expression (`col("x") * 2`, `col("amount").sum()`, …).
#[derive(Clone)]
pub(crate) struct ScriptExpr(pub Expr);

/// One column of values.
#[derive(Clone)]
pub struct ScriptSeries(pub Series);

/// A frame grouped by keys, waiting for `agg`.
#[derive(Clone)]
pub(crate) struct GroupBy {
    lf: LazyFrame,
    by: Vec<Expr>,
}

/// `when(cond).then(a)`, waiting for `otherwise`.
#[derive(Clone)]
pub(crate) struct WhenThen {
    cond: Expr,
    then: Expr,
}

/// `when(cond)`, waiting for `then`.
#[derive(Clone)]
pub struct When(Expr);

/// A literal from a script value.
fn lit_of(v: &Dynamic) -> R<Expr> {
    if let Some(e) = v.read_lock::<ScriptExpr>() {
        return Ok(e.0.clone());
    }
    if let Ok(i) = v.as_int() {
        return Ok(lit(i));
    }
    if let Ok(f) = v.as_float() {
        return Ok(lit(f));
    }
    if let Ok(b) = v.as_bool() {
        return Ok(lit(b));
    }
    if v.is_string() {
        return Ok(lit(v.to_string()));
    }
    if v.is_unit() {
        return Ok(lit(Null {}));
    }
    fail(format!(
        "a {} cannot be used as a value here",
        v.type_name()
    ))
}

/// An expression where a column name may stand for the column (`select`,
/// `group_by`, `sort`, `agg` lists).
fn expr_or_col(v: &Dynamic) -> R<Expr> {
    if v.is_string() {
        return Ok(col(v.to_string()));
    }
    if let Some(e) = v.read_lock::<ScriptExpr>() {
        return Ok(e.0.clone());
    }
    fail(format!(
        "expected a column name or an expression, got a {}",
        v.type_name()
    ))
}

/// `"x"`, `["x", "y"]`, `col("x")` or `[col("x"), "y"]` as expressions.
fn exprs(v: &Dynamic) -> R<Vec<Expr>> {
    match v.read_lock::<Array>() {
        Some(a) => a.iter().map(expr_or_col).collect(),
        None => Ok(vec![expr_or_col(v)?]),
    }
}

fn names(v: &Dynamic) -> R<Vec<String>> {
    let one = |x: &Dynamic| -> R<String> {
        if x.is_string() {
            Ok(x.to_string())
        } else {
            fail(format!("expected a column name, got a {}", x.type_name()))
        }
    };
    match v.read_lock::<Array>() {
        Some(a) => a.iter().map(one).collect(),
        None => Ok(vec![one(v)?]),
    }
}

/// A value out of a frame as a script value: integers as integers, floats
/// as floats, times as ISO-8601 text, null as `()`.
pub(crate) fn any_to_dynamic(v: AnyValue<'_>) -> Dynamic {
    match v {
        AnyValue::Null => Dynamic::UNIT,
        AnyValue::Boolean(b) => b.into(),
        AnyValue::String(s) => s.into(),
        AnyValue::StringOwned(s) => s.as_str().into(),
        AnyValue::Int8(x) => i64::from(x).into(),
        AnyValue::Int16(x) => i64::from(x).into(),
        AnyValue::Int32(x) => i64::from(x).into(),
        AnyValue::Int64(x) => x.into(),
        AnyValue::UInt8(x) => i64::from(x).into(),
        AnyValue::UInt16(x) => i64::from(x).into(),
        AnyValue::UInt32(x) => i64::from(x).into(),
        AnyValue::UInt64(x) => i64::try_from(x).map_or_else(|_| (x as f64).into(), Dynamic::from),
        AnyValue::Float32(x) => f64::from(x).into(),
        AnyValue::Float64(x) => x.into(),
        other => {
            let s = other.to_string();
            s.trim_matches('"').into()
        }
    }
}

fn dynamic_to_any(v: &Dynamic) -> R<AnyValue<'static>> {
    if v.is_unit() {
        return Ok(AnyValue::Null);
    }
    if let Ok(i) = v.as_int() {
        return Ok(AnyValue::Int64(i));
    }
    if let Ok(f) = v.as_float() {
        return Ok(AnyValue::Float64(f));
    }
    if let Ok(b) = v.as_bool() {
        return Ok(AnyValue::Boolean(b));
    }
    if v.is_string() {
        return Ok(AnyValue::StringOwned(v.to_string().into()));
    }
    fail(format!("a {} cannot go into a column", v.type_name()))
}

/// A series from script values (all of one kind; integers mixed with floats
/// become floats).
fn series_of(name: &str, items: &Array) -> R<Series> {
    let floats = items.iter().any(|x| x.is_float());
    let values = items
        .iter()
        .map(|x| match x.as_int() {
            Ok(i) if floats => Ok(AnyValue::Float64(i as f64)),
            _ => dynamic_to_any(x),
        })
        .collect::<R<Vec<_>>>()?;
    Series::from_any_values(name.into(), &values, true).map_err(|e| {
        Box::new(EvalAltResult::ErrorRuntime(
            Dynamic::from(format!("column {name:?}: {e}")),
            Position::NONE,
        ))
    })
}

/// `frame(#{ a: [1, 2], b: ["x", "y"] })`.
fn frame_of(m: &Map) -> R<Frame> {
    let cols = m
        .iter()
        .map(|(k, v)| match v.read_lock::<Array>() {
            Some(a) => Ok(series_of(k, &a)?.into_column()),
            None => fail(format!("column {k:?} must be an array of values")),
        })
        .collect::<R<Vec<_>>>()?;
    DataFrame::new_infer_height(cols)
        .map(Frame::from_df)
        .map_err(polars_err)
}

/// Script options (`#{ last: "7d", category: ["Books", "Toys"] }`) as
/// `key=value` pairs; lists join with commas.
pub(crate) fn option_pairs(m: &Map) -> R<Vec<(String, String)>> {
    let text = |v: &Dynamic| -> R<String> {
        if v.is_string() || v.is_int() || v.is_float() || v.is_bool() {
            Ok(v.to_string())
        } else {
            fail(format!("option value: a {} is not text", v.type_name()))
        }
    };
    m.iter()
        .map(|(k, v)| {
            let value = match v.read_lock::<Array>() {
                Some(a) => a.iter().map(text).collect::<R<Vec<_>>>()?.join(","),
                None => text(v)?,
            };
            Ok((k.to_string(), value))
        })
        .collect()
}

fn view_fn(name: &str, opts: &Map) -> R<Frame> {
    let pairs = option_pairs(opts)?;
    match source()?.view(name, &pairs) {
        Ok(df) => Ok(Frame::from_df(df)),
        Err(e) => fail(format!("view({name:?}): {e}")),
    }
}

fn table_fn(name: &str, opts: &Map) -> R<Frame> {
    if let Some(f) = RUN.with_borrow(|r| r.registered.get(name).cloned()) {
        if opts.is_empty() {
            return Ok(f);
        }
    }
    let pairs = option_pairs(opts)?;
    let source = source()?;
    let schema = match source.table_schema(name, &pairs) {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(format!("table({name:?}): {e}")),
    };
    let scan = TableScan {
        source,
        name: name.to_owned(),
        pairs,
        schema,
        loaded: Default::default(),
    };
    let lf = LazyFrame::anonymous_scan(Arc::new(scan), Default::default()).map_err(polars_err)?;
    Frame::plan(lf)
}

/// A raw table as a lazy scan: rows load when the plan runs, and only the
/// columns the plan uses (projection pushdown), so `transactions()` over a
/// week of a busy shop costs the few columns a metric reads, not all 16.
/// Each set of columns loads once per run.
/// What one scan loaded: its columns (all when `None`) and row limit.
type ScanKey = (Option<Vec<String>>, Option<usize>);

struct TableScan {
    source: Arc<dyn FrameSource>,
    name: String,
    pairs: Vec<(String, String)>,
    schema: SchemaRef,
    loaded: std::sync::Mutex<HashMap<ScanKey, DataFrame>>,
}

impl AnonymousScan for TableScan {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn scan(&self, args: AnonymousScanArgs) -> PolarsResult<DataFrame> {
        let columns: Option<Vec<String>> = args
            .with_columns
            .map(|c| c.iter().map(|s| s.to_string()).collect());
        // Polars hands a pushed-down slice to the scan and trusts it: the
        // scan must return at most `n_rows` rows.
        let key = (columns, args.n_rows);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(df) = loaded.get(&key) {
            return Ok(df.clone());
        }
        let mut df = self
            .source
            .table(&self.name, &self.pairs, key.0.as_deref(), key.1)
            .map_err(|e| polars_err!(ComputeError: "table({:?}): {}", self.name, e))?;
        if let Some(n) = key.1 {
            if df.height() > n {
                df = df.head(Some(n));
            }
        }
        loaded.insert(key, df.clone());
        Ok(df)
    }

    fn schema(&self, _infer_schema_length: Option<usize>) -> PolarsResult<SchemaRef> {
        Ok(Arc::clone(&self.schema))
    }

    fn allows_projection_pushdown(&self) -> bool {
        true
    }
}

/// Checks a script's SQL before Polars sees it: one `SELECT` query whose
/// every relation is a name `known` accepts or a CTE of the query itself.
/// Table functions (`read_csv(…)`, `read_parquet(…)`, …), qualified names
/// and every other statement are refused, so `sql()` can read no file and
/// reach no network. Returns the relations named, lowercased.
pub(crate) fn sql_relations(
    query: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, String> {
    use sqlparser::ast::{ObjectNamePart, Query, Statement, TableFactor, Visit, Visitor};
    use std::ops::ControlFlow;

    struct Check<'a> {
        known: &'a dyn Fn(&str) -> bool,
        ctes: Vec<String>,
        used: Vec<String>,
    }
    impl Visitor for Check<'_> {
        type Break = String;
        fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<String> {
            if matches!(s, Statement::Query(_)) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break("sql() runs one SELECT query, nothing else".into())
            }
        }
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<String> {
            if let Some(with) = &q.with {
                self.ctes.extend(
                    with.cte_tables
                        .iter()
                        .map(|c| c.alias.name.value.to_ascii_lowercase()),
                );
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<String> {
            match t {
                TableFactor::Table { name, args, .. } => {
                    if args.is_some() {
                        return ControlFlow::Break(format!(
                            "{name}(…): table functions are not allowed in sql(); it reads only \
                             the script's frames and the raw tables"
                        ));
                    }
                    let [ObjectNamePart::Identifier(id)] = name.0.as_slice() else {
                        return ControlFlow::Break(format!(
                            "{name}: use a plain table name (the script's frames and the raw tables)"
                        ));
                    };
                    let n = id.value.to_ascii_lowercase();
                    if (self.known)(&id.value) || (self.known)(&n) || self.ctes.contains(&n) {
                        if !self.used.contains(&n) {
                            self.used.push(n);
                        }
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(format!(
                            "unknown table {:?} in sql(): it reads only the script's frames and \
                             the raw tables",
                            id.value
                        ))
                    }
                }
                TableFactor::Derived { .. }
                | TableFactor::NestedJoin { .. }
                | TableFactor::UNNEST { .. } => ControlFlow::Continue(()),
                other => ControlFlow::Break(format!(
                    "{other}: not allowed in sql(); use plain tables, joins and subqueries"
                )),
            }
        }
    }

    // Parsed as Polars parses it, so the query checked is the one that runs.
    let statements = sqlparser::parser::Parser::new(&sqlparser::dialect::GenericDialect {})
        .with_options(sqlparser::parser::ParserOptions {
            trailing_commas: true,
            ..Default::default()
        })
        .try_with_sql(query)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| format!("sql(): {e}"))?;
    if statements.len() != 1 {
        return Err("sql() runs exactly one SELECT query".into());
    }
    let mut check = Check {
        known,
        ctes: Vec::new(),
        used: Vec::new(),
    };
    match statements.visit(&mut check) {
        ControlFlow::Break(why) => Err(why),
        ControlFlow::Continue(()) => Ok(check.used),
    }
}

fn sql_fn(query: &str) -> R<Frame> {
    let mut ctx = polars::sql::SQLContext::new();
    let registered = RUN.with_borrow(|r| r.registered.clone());
    for (name, f) in &registered {
        ctx.register(name, f.lazy());
    }
    // Raw tables load only when the query names them.
    let known = RUN
        .with_borrow(|r| r.source.clone())
        .map(|s| s.table_names())
        .unwrap_or_default();
    let is_known = |n: &str| registered.contains_key(n) || known.contains(&n);
    let used = match sql_relations(query, &is_known) {
        Ok(u) => u,
        Err(why) => return fail(why),
    };
    for n in &used {
        if let Some(t) = known.iter().find(|t| **t == n.as_str()) {
            if !registered.contains_key(*t) {
                let f = table_fn(t, &Map::new())?;
                ctx.register(t, f.lazy());
            }
        }
    }
    let lf = ctx.execute(query).map_err(polars_err)?;
    Frame::plan(lf)
}

fn join_type(how: &str) -> R<JoinType> {
    Ok(match how {
        "inner" => JoinType::Inner,
        "left" => JoinType::Left,
        "right" => JoinType::Right,
        "full" | "outer" => JoinType::Full,
        other => {
            return fail(format!(
                "join how={other:?}: use inner, left, right or full"
            ))
        }
    })
}

fn agg_named(e: Expr, how: &str) -> R<Expr> {
    Ok(match how {
        "sum" => e.sum(),
        "mean" => e.mean(),
        "min" => e.min(),
        "max" => e.max(),
        "count" => e.count(),
        "n_unique" => e.n_unique(),
        "median" => e.median(),
        "first" => e.first(),
        "last" => e.last(),
        other => {
            return fail(format!(
                "aggregation {other:?}: use sum, mean, min, max, count, n_unique, median, first or last"
            ))
        }
    })
}

/// `rfm(frame, #{ as_of })`: recency, frequency and monetary scores and
/// segments per customer ([`super::rfm`]).
fn rfm_of(f: &Frame, opts: &Map) -> R<Frame> {
    let mut as_of = None;
    for (k, v) in opts {
        match k.as_str() {
            "as_of" => {
                let t = v.to_string();
                let parsed = chrono::DateTime::parse_from_rfc3339(&t)
                    .map(|d| d.with_timezone(&chrono::Utc))
                    .ok()
                    .or_else(|| {
                        chrono::NaiveDate::parse_from_str(&t, "%Y-%m-%d")
                            .ok()
                            .and_then(|d| d.and_hms_opt(0, 0, 0))
                            .map(|d| d.and_utc())
                    });
                match parsed {
                    Some(p) => as_of = Some(p),
                    None => {
                        return fail(format!(
                            "rfm: as_of {t:?} is not a time (2026-03-01 or 2026-03-01T12:00:00Z)"
                        ))
                    }
                }
            }
            other => return fail(format!("rfm: unknown option `{other}` (only `as_of`)")),
        }
    }
    match super::rfm::rfm(&f.collect()?, as_of) {
        Ok(df) => Ok(Frame::from_df(df)),
        Err(e) => fail(e),
    }
}

/// A whole number option as a count.
fn count_opt(what: &str, key: &str, v: &Dynamic) -> R<usize> {
    match v.as_int().ok().and_then(|i| usize::try_from(i).ok()) {
        Some(n) => Ok(n),
        None => fail(format!(
            "{what}: `{key}` must be a whole number ≥ 0, got {v}"
        )),
    }
}

/// A level as 0.95 or 95.
fn level_opt(what: &str, v: &Dynamic) -> R<f64> {
    let x = v
        .as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64));
    match x {
        Some(x) if x > 0.0 && x < 1.0 => Ok(x),
        Some(x) if (1.0..100.0).contains(&x) => Ok(x / 100.0),
        _ => fail(format!(
            "{what}: level {v}; give a level between 0 and 1 (0.95) or a percentage (95)"
        )),
    }
}

/// A step: seconds, or text such as "5m", "1h", "1d", "1w".
fn every_opt(what: &str, v: &Dynamic) -> R<i64> {
    if let Ok(i) = v.as_int() {
        if i > 0 {
            return Ok(i);
        }
    }
    let t = v.to_string();
    let t = t.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_secs = match unit {
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3_600),
        "d" => Some(86_400),
        "w" => Some(604_800),
        _ => None,
    };
    match (num.parse::<i64>().ok(), unit_secs) {
        (Some(n), Some(u)) if n > 0 => Ok(n.saturating_mul(u)),
        _ => fail(format!(
            "{what}: every {t:?}; give seconds or a step such as \"5m\", \"1h\", \"1d\""
        )),
    }
}

/// The options every time-series function takes (`time`, `value`, `every`,
/// `fill`, `season`, `transform`), and the others left for the caller.
fn series_opts(what: &str, opts: &Map) -> R<(super::series::SeriesOpts, Vec<(String, Dynamic)>)> {
    use super::forecast::Transform;
    use super::series::{Fill, SeriesOpts};
    let mut o = SeriesOpts::default();
    let mut rest = Vec::new();
    for (k, v) in opts {
        match k.as_str() {
            "time" => o.time = Some(v.to_string()),
            "value" => o.value = Some(v.to_string()),
            "every" => o.every_secs = Some(every_opt(what, v)?),
            "fill" => {
                o.fill = if v.to_string() == "previous" {
                    Fill::Previous
                } else if let Some(x) = v
                    .as_float()
                    .ok()
                    .or_else(|| v.as_int().ok().map(|i| i as f64))
                {
                    Fill::Value(x)
                } else {
                    return fail(format!(
                        "{what}: fill {v}; give a number (0) or \"previous\""
                    ));
                }
            }
            "season" => {
                let list: Vec<Dynamic> = match v.read_lock::<Array>() {
                    Some(a) => a.iter().cloned().collect(),
                    None => vec![v.clone()],
                };
                let mut periods = Vec::with_capacity(list.len());
                for p in &list {
                    periods.push(count_opt(what, "season", p)?);
                }
                o.periods = Some(periods);
            }
            "transform" => {
                o.transform = match v.to_string().as_str() {
                    "none" => Transform::None,
                    "log" => Transform::Log,
                    "auto" => Transform::Auto,
                    other => {
                        return fail(format!(
                            "{what}: transform {other:?}; give \"auto\", \"none\" or \"log\""
                        ))
                    }
                }
            }
            _ => rest.push((k.to_string(), v.clone())),
        }
    }
    Ok((o, rest))
}

fn unknown<T>(what: &str, key: &str, known: &str) -> R<T> {
    fail(format!(
        "{what}: unknown option `{key}` (time, value, every, fill, season, transform, {known})"
    ))
}

/// `forecast(frame, #{ horizon, level, … })`: the series, its fit and the
/// forecast with bands ([`super::series::forecast_frame`]).
fn forecast_of(f: &Frame, opts: &Map) -> R<Frame> {
    let (o, rest) = series_opts("forecast", opts)?;
    let mut horizon = None;
    let mut levels = super::forecast::DEFAULT_LEVELS.to_vec();
    for (k, v) in &rest {
        match k.as_str() {
            "horizon" => horizon = Some(count_opt("forecast", k, v)?),
            "level" => levels = levels_opt("forecast", v)?,
            other => return unknown("forecast", other, "horizon, level"),
        }
    }
    let s = super::series::series(&f.collect()?, &o).or_else(|e| fail(format!("forecast: {e}")))?;
    let spec = s.spec(&o);
    let horizon = horizon.unwrap_or_else(|| default_horizon(&spec, s.values.len()));
    super::series::forecast_frame(&s, horizon, &levels, &spec)
        .map(Frame::from_df)
        .or_else(fail)
}

/// `decompose(frame, #{ … })`: trend, seasons and remainder
/// ([`super::series::decompose_frame`]).
fn decompose_of(f: &Frame, opts: &Map) -> R<Frame> {
    let (o, rest) = series_opts("decompose", opts)?;
    if let Some((k, _)) = rest.first() {
        return unknown("decompose", k, "nothing else");
    }
    let s =
        super::series::series(&f.collect()?, &o).or_else(|e| fail(format!("decompose: {e}")))?;
    super::series::decompose_frame(&s, &s.spec(&o))
        .map(Frame::from_df)
        .or_else(fail)
}

/// `level`: one level or a list of them.
fn levels_opt(what: &str, v: &Dynamic) -> R<Vec<f64>> {
    match v.read_lock::<Array>() {
        Some(a) => a.iter().map(|x| level_opt(what, x)).collect(),
        None => Ok(vec![level_opt(what, v)?]),
    }
}

/// A season of the model, or 10 steps without one.
fn default_horizon(spec: &super::forecast::Spec, n: usize) -> usize {
    super::forecast::usable_periods(spec, n)
        .first()
        .copied()
        .unwrap_or(10)
}

/// `backtest(frame, #{ horizon, folds, level, … })`: one row per fold
/// ([`super::series::backtest_frame`]).
fn backtest_of(f: &Frame, opts: &Map) -> R<Frame> {
    let (o, rest) = series_opts("backtest", opts)?;
    let (mut horizon, mut folds) = (None, 3);
    let mut levels = super::forecast::DEFAULT_LEVELS.to_vec();
    for (k, v) in &rest {
        match k.as_str() {
            "horizon" => horizon = Some(count_opt("backtest", k, v)?),
            "folds" => folds = count_opt("backtest", k, v)?,
            "level" => levels = levels_opt("backtest", v)?,
            other => return unknown("backtest", other, "horizon, folds, level"),
        }
    }
    let s = super::series::series(&f.collect()?, &o).or_else(|e| fail(format!("backtest: {e}")))?;
    let spec = s.spec(&o);
    // By default a window is the longest season the folds leave history for.
    let horizon = horizon.unwrap_or_else(|| {
        let n = s.values.len();
        spec.periods
            .iter()
            .copied()
            .filter(|p| *p >= 2 && p.saturating_mul(folds + 2) <= n)
            .max()
            .unwrap_or(10)
    });
    super::series::backtest_frame(&s, horizon, folds, &levels, &spec)
        .map(Frame::from_df)
        .or_else(fail)
}

/// `anomalies(frame, #{ last, level, … })`: the last points checked
/// against the band forecast from the ones before
/// ([`super::series::anomalies_frame`]).
fn anomalies_of(f: &Frame, opts: &Map) -> R<Frame> {
    let (o, rest) = series_opts("anomalies", opts)?;
    let (mut last, mut level, mut total) = (None, 0.99, None);
    for (k, v) in &rest {
        match k.as_str() {
            "last" => last = Some(count_opt("anomalies", k, v)?),
            "level" => level = level_opt("anomalies", v)?,
            "total" => total = Some(v.to_string()),
            other => return unknown("anomalies", other, "last, level, total"),
        }
    }
    let df = f.collect()?;
    let s = super::series::series(&df, &o).or_else(|e| fail(format!("anomalies: {e}")))?;
    let spec = s.spec(&o);
    let last = last.unwrap_or_else(|| default_horizon(&spec, s.values.len()));
    let out = match total {
        // A share: `value` hits out of `total` trials per step.
        Some(total) => {
            let t = super::series::SeriesOpts {
                value: Some(total),
                time: Some(s.time_name.clone()),
                every_secs: Some(s.step_us / 1_000_000),
                ..o.clone()
            };
            let totals =
                super::series::series(&df, &t).or_else(|e| fail(format!("anomalies: {e}")))?;
            super::series::rate_anomalies_frame(&s, &totals, last, level, &spec)
        }
        None => super::series::anomalies_frame(&s, last, level, &spec),
    };
    out.map(Frame::from_df).or_else(fail)
}

/// `changepoints(frame, #{ penalty, min_size, deseason, … })`: one row per
/// lasting change in level ([`super::series::changepoints_frame`]).
fn changepoints_of(f: &Frame, opts: &Map) -> R<Frame> {
    let (o, rest) = series_opts("changepoints", opts)?;
    let (mut penalty, mut min_size, mut deseason) = (None, 6, true);
    for (k, v) in &rest {
        match k.as_str() {
            "penalty" => {
                penalty = Some(
                    v.as_float()
                        .ok()
                        .or_else(|| v.as_int().ok().map(|i| i as f64))
                        .filter(|p| p.is_finite() && *p >= 0.0)
                        .map_or_else(
                            || {
                                fail(format!(
                                    "changepoints: penalty {v}; give a number, 0 or more"
                                ))
                            },
                            Ok,
                        )?,
                )
            }
            "min_size" => min_size = count_opt("changepoints", k, v)?,
            "deseason" => {
                deseason = v
                    .as_bool()
                    .or_else(|_| fail(format!("changepoints: deseason {v}; give true or false")))?
            }
            other => return unknown("changepoints", other, "penalty, min_size, deseason"),
        }
    }
    let s =
        super::series::series(&f.collect()?, &o).or_else(|e| fail(format!("changepoints: {e}")))?;
    super::series::changepoints_frame(&s, &s.spec(&o), penalty, min_size, deseason)
        .map(Frame::from_df)
        .or_else(fail)
}

/// `kmeans(frame, k, #{ seed, columns })`: the rows with `cluster` and
/// `distance` ([`super::series::kmeans_frame`]).
fn kmeans_of(f: &Frame, k: i64, opts: &Map) -> R<Frame> {
    let mut seed = 0u64;
    let mut columns = None;
    for (key, v) in opts {
        match key.as_str() {
            "seed" => seed = count_opt("kmeans", key, v)? as u64,
            "columns" => columns = Some(names(v)?),
            other => return fail(format!("kmeans: unknown option `{other}` (seed, columns)")),
        }
    }
    let k = usize::try_from(k).unwrap_or(0);
    super::series::kmeans_frame(&f.collect()?, k, seed, columns.as_deref())
        .map(Frame::from_df)
        .or_else(fail)
}

/// Wide from long: one row per `index`, one column per value of `on`
/// (in sorted order), cells `agg` of `values`; missing cells are null.
fn pivot(f: &Frame, on: &str, index: &Dynamic, values: &str, agg: &str) -> R<Frame> {
    let index = names(index)?;
    let index_exprs: Vec<Expr> = index.iter().map(|n| col(n.as_str())).collect();
    let mut by = index_exprs.clone();
    by.push(col(on));
    // The long form is small (one row per index and key): read it once,
    // where the rows are when the plan allows, and pivot it here.
    let long = Frame::plan(
        f.lazy()
            .group_by(by)
            .agg([agg_named(col(values), agg)?.alias("__value")]),
    )?
    .collect()?
    .lazy();
    let keys = long
        .clone()
        .select([col(on)
            .unique()
            .sort(SortOptions::default())
            .cast(DataType::String)])
        .collect()
        .map_err(polars_err)?;
    let keys: Vec<String> = keys
        .column(on)
        .and_then(|c| {
            c.str()
                .map(|ca| ca.iter().map(|k| k.unwrap_or("null").to_owned()).collect())
        })
        .map_err(polars_err)?;
    if keys.len() > 1_000 {
        return fail(format!(
            "pivot: {} has {} values; at most 1000 columns",
            on,
            keys.len()
        ));
    }
    let sort_opts = SortMultipleOptions::default();
    let mut wide = long
        .clone()
        .select(index_exprs.clone())
        .unique_stable(None, UniqueKeepStrategy::First)
        .sort(index.clone(), sort_opts.clone());
    for k in &keys {
        let part = long
            .clone()
            .filter(col(on).cast(DataType::String).eq(lit(k.as_str())))
            .select(
                index_exprs
                    .iter()
                    .cloned()
                    .chain([col("__value").alias(k.as_str())])
                    .collect::<Vec<_>>(),
            );
        wide = wide.join(
            part,
            index_exprs.clone(),
            index_exprs.clone(),
            JoinArgs::new(JoinType::Left),
        );
    }
    Frame::plan(wide.sort(index, sort_opts))
}

fn sort_frame(f: &Frame, by: &Dynamic, descending: &Dynamic) -> R<Frame> {
    let by = names(by)?;
    let desc: Vec<bool> = match descending.read_lock::<Array>() {
        Some(a) => a
            .iter()
            .map(|d| {
                d.as_bool()
                    .or_else(|_| fail("descending: true or false per column"))
            })
            .collect::<R<Vec<_>>>()?,
        None => vec![
            descending
                .as_bool()
                .or_else(|_| fail("descending: true or false"))?;
            by.len()
        ],
    };
    if desc.len() != by.len() {
        return fail(format!(
            "sort: {} columns but {} descending flags",
            by.len(),
            desc.len()
        ));
    }
    let opts = SortMultipleOptions::default()
        .with_order_descending_multi(desc)
        .with_nulls_last(true)
        .with_maintain_order(true);
    Frame::plan(f.lazy().sort(by, opts))
}

fn column(f: &Frame, name: &str) -> R<ScriptSeries> {
    let df = f.collect()?;
    match df.column(name) {
        Ok(c) => Ok(ScriptSeries(c.as_materialized_series().clone())),
        Err(_) => fail(format!(
            "no column {name:?}; columns: {}",
            df.get_column_names()
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn value_at(s: &Series, i: i64) -> R<Dynamic> {
    let n = s.len() as i64;
    let idx = if i < 0 { n + i } else { i };
    if !(0..n).contains(&idx) {
        return fail(format!("row {i} is out of range (the column has {n} rows)"));
    }
    s.get(idx as usize).map(any_to_dynamic).map_err(polars_err)
}

fn scalar(s: &Series, what: &str) -> R<Dynamic> {
    let r = match what {
        "sum" => s.sum_reduce(),
        "mean" => s.mean_reduce(),
        "min" => s.min_reduce(),
        "max" => s.max_reduce(),
        "median" => s.median_reduce(),
        _ => return fail(format!("{what}: unknown")),
    }
    .map_err(polars_err)?;
    Ok(any_to_dynamic(r.value().clone()))
}

fn dtype_named(name: &str) -> R<DataType> {
    Ok(match name {
        "int" | "i64" => DataType::Int64,
        "float" | "f64" => DataType::Float64,
        "str" | "string" => DataType::String,
        "bool" => DataType::Boolean,
        "date" => DataType::Date,
        other => {
            return fail(format!(
                "cast to {other:?}: use int, float, str, bool or date"
            ))
        }
    })
}

macro_rules! binary_ops {
    ($engine:expr, $($op:literal => $f:expr),* $(,)?) => {$(
        $engine.register_fn($op, |a: ScriptExpr, b: ScriptExpr| ScriptExpr($f(a.0, b.0)));
        $engine.register_fn($op, |a: ScriptExpr, b: Dynamic| -> R<ScriptExpr> {
            Ok(ScriptExpr($f(a.0, lit_of(&b)?)))
        });
        $engine.register_fn($op, |a: Dynamic, b: ScriptExpr| -> R<ScriptExpr> {
            Ok(ScriptExpr($f(lit_of(&a)?, b.0)))
        });
    )*};
}

macro_rules! expr_methods {
    ($engine:expr, $($name:literal => $f:expr),* $(,)?) => {$(
        $engine.register_fn($name, |e: ScriptExpr| ScriptExpr($f(e.0)));
    )*};
}

/// Registers the frame types and functions on `engine`.
pub(crate) fn register(engine: &mut Engine) {
    engine
        .register_type_with_name::<Frame>("Frame")
        .register_type_with_name::<ScriptExpr>("Expr")
        .register_type_with_name::<ScriptSeries>("Series")
        .register_type_with_name::<GroupBy>("GroupBy")
        .register_type_with_name::<When>("When")
        .register_type_with_name::<WhenThen>("WhenThen");

    // Sources.
    engine
        .register_fn("view", |name: &str| view_fn(name, &Map::new()))
        .register_fn("view", |name: &str, opts: Map| view_fn(name, &opts))
        .register_fn("table", |name: &str| table_fn(name, &Map::new()))
        .register_fn("table", |name: &str, opts: Map| table_fn(name, &opts))
        .register_fn("transactions", || table_fn("transactions", &Map::new()))
        .register_fn("transactions", |opts: Map| table_fn("transactions", &opts))
        .register_fn("sessions", || table_fn("sessions", &Map::new()))
        .register_fn("sessions", |opts: Map| table_fn("sessions", &opts))
        .register_fn("sql", sql_fn)
        .register_fn("register", |name: &str, f: Frame| {
            RUN.with_borrow_mut(|r| r.registered.insert(name.to_owned(), f));
        })
        .register_fn("frame", |m: Map| frame_of(&m));

    // Expressions.
    engine
        .register_fn("col", |name: &str| ScriptExpr(col(name)))
        .register_fn("lit", |v: Dynamic| -> R<ScriptExpr> {
            Ok(ScriptExpr(lit_of(&v)?))
        })
        .register_fn("len", || ScriptExpr(len()))
        .register_fn("when", |c: ScriptExpr| When(c.0))
        .register_fn("then", |w: When, v: Dynamic| -> R<WhenThen> {
            Ok(WhenThen {
                cond: w.0,
                then: lit_of(&v)?,
            })
        })
        .register_fn("otherwise", |w: WhenThen, v: Dynamic| -> R<ScriptExpr> {
            Ok(ScriptExpr(when(w.cond).then(w.then).otherwise(lit_of(&v)?)))
        });
    binary_ops!(engine,
        "+" => |a: Expr, b: Expr| a + b,
        "-" => |a: Expr, b: Expr| a - b,
        "*" => |a: Expr, b: Expr| a * b,
        "/" => |a: Expr, b: Expr| a.cast(DataType::Float64) / b.cast(DataType::Float64),
        "%" => |a: Expr, b: Expr| a % b,
        "==" => |a: Expr, b: Expr| a.eq(b),
        "!=" => |a: Expr, b: Expr| a.neq(b),
        "<" => |a: Expr, b: Expr| a.lt(b),
        "<=" => |a: Expr, b: Expr| a.lt_eq(b),
        ">" => |a: Expr, b: Expr| a.gt(b),
        ">=" => |a: Expr, b: Expr| a.gt_eq(b),
        "&" => |a: Expr, b: Expr| a.and(b),
        "|" => |a: Expr, b: Expr| a.or(b),
    );
    engine
        .register_fn("-", |e: ScriptExpr| ScriptExpr(lit(0) - e.0))
        .register_fn("!", |e: ScriptExpr| ScriptExpr(e.0.not()));
    expr_methods!(engine,
        "sum" => Expr::sum,
        "mean" => Expr::mean,
        "min" => Expr::min,
        "max" => Expr::max,
        "median" => Expr::median,
        "count" => Expr::count,
        "n_unique" => Expr::n_unique,
        "first" => Expr::first,
        "last" => Expr::last,
        "abs" => Expr::abs,
        "is_null" => Expr::is_null,
        "is_not_null" => Expr::is_not_null,
        "cum_sum" => |e: Expr| e.cum_sum(false),
        "hour" => |e: Expr| e.dt().hour(),
        "minute" => |e: Expr| e.dt().minute(),
        "weekday" => |e: Expr| e.dt().weekday(),
        "day" => |e: Expr| e.dt().day(),
        "month" => |e: Expr| e.dt().month(),
        "year" => |e: Expr| e.dt().year(),
        "date" => |e: Expr| e.dt().date(),
    );
    engine
        .register_fn("std", |e: ScriptExpr| ScriptExpr(e.0.std(1)))
        .register_fn("alias", |e: ScriptExpr, name: &str| {
            ScriptExpr(e.0.alias(name))
        })
        .register_fn("quantile", |e: ScriptExpr, q: f64| -> R<ScriptExpr> {
            if !(0.0..=1.0).contains(&q) {
                return fail(format!("quantile {q} is not between 0 and 1"));
            }
            Ok(ScriptExpr(e.0.quantile(lit(q), QuantileMethod::Linear)))
        })
        .register_fn("round", |e: ScriptExpr, decimals: i64| -> R<ScriptExpr> {
            let d = u32::try_from(decimals).or_else(|_| fail("round: decimals 0 or more"))?;
            Ok(ScriptExpr(e.0.round(d, RoundMode::HalfAwayFromZero)))
        })
        .register_fn("cast", |e: ScriptExpr, to: &str| -> R<ScriptExpr> {
            Ok(ScriptExpr(e.0.cast(dtype_named(to)?)))
        })
        .register_fn("fill_null", |e: ScriptExpr, v: Dynamic| -> R<ScriptExpr> {
            Ok(ScriptExpr(e.0.fill_null(lit_of(&v)?)))
        })
        .register_fn("is_in", |e: ScriptExpr, values: Array| -> R<ScriptExpr> {
            let s = series_of("values", &values)?;
            Ok(ScriptExpr(e.0.is_in(lit(s).implode(false), false)))
        })
        .register_fn("truncate", |e: ScriptExpr, every: &str| -> R<ScriptExpr> {
            check_every(every)?;
            Ok(ScriptExpr(e.0.dt().truncate(lit(every))))
        })
        .register_fn("over", |e: ScriptExpr, by: Dynamic| -> R<ScriptExpr> {
            Ok(ScriptExpr(e.0.over(exprs(&by)?).map_err(polars_err)?))
        })
        .register_fn("to_string", |_e: &mut ScriptExpr| "Expr".to_owned());

    // Frames.
    engine
        .register_fn("filter", |f: &mut Frame, e: ScriptExpr| {
            Frame::plan(f.lazy().filter(e.0))
        })
        .register_fn("select", |f: &mut Frame, cols: Dynamic| {
            Frame::plan(f.lazy().select(exprs(&cols)?))
        })
        .register_fn("with_columns", |f: &mut Frame, cols: Array| {
            let e = cols
                .iter()
                .map(|c| {
                    c.read_lock::<ScriptExpr>()
                        .map(|e| e.0.clone())
                        .map_or_else(|| fail("with_columns takes expressions"), Ok)
                })
                .collect::<R<Vec<_>>>()?;
            Frame::plan(f.lazy().with_columns(e))
        })
        .register_fn("with_column", |f: &mut Frame, e: ScriptExpr| {
            Frame::plan(f.lazy().with_column(e.0))
        })
        .register_fn("group_by", |f: &mut Frame, by: Dynamic| -> R<GroupBy> {
            let by = exprs(&by)?;
            Ok(GroupBy { lf: f.lazy(), by })
        })
        .register_fn("agg", |g: &mut GroupBy, aggs: Dynamic| {
            let aggs = exprs(&aggs)?;
            let names: Vec<String> =
                g.by.iter()
                    .filter_map(|e| match e {
                        Expr::Column(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect();
            let grouped = g.lf.clone().group_by(g.by.clone()).agg(aggs);
            // Groups come out in key order: results are the same every run.
            let lf = if names.len() == g.by.len() {
                grouped.sort(names, SortMultipleOptions::default().with_nulls_last(true))
            } else {
                grouped
            };
            Frame::plan(lf)
        })
        .register_fn("sort", |f: &mut Frame, by: Dynamic| {
            sort_frame(f, &by, &Dynamic::FALSE)
        })
        .register_fn("sort", |f: &mut Frame, by: Dynamic, desc: Dynamic| {
            sort_frame(f, &by, &desc)
        })
        .register_fn("head", |f: &mut Frame, n: i64| {
            Frame::plan(f.lazy().limit(n.clamp(0, u32::MAX as i64) as IdxSize))
        })
        .register_fn("tail", |f: &mut Frame, n: i64| {
            Frame::plan(f.lazy().tail(n.clamp(0, u32::MAX as i64) as IdxSize))
        })
        .register_fn("rfm", |f: &mut Frame| rfm_of(f, &Map::new()))
        .register_fn("rfm", |f: &mut Frame, opts: Map| rfm_of(f, &opts))
        .register_fn("forecast", |f: &mut Frame| forecast_of(f, &Map::new()))
        .register_fn("forecast", |f: &mut Frame, opts: Map| forecast_of(f, &opts))
        .register_fn("decompose", |f: &mut Frame| decompose_of(f, &Map::new()))
        .register_fn("decompose", |f: &mut Frame, opts: Map| {
            decompose_of(f, &opts)
        })
        .register_fn("backtest", |f: &mut Frame| backtest_of(f, &Map::new()))
        .register_fn("backtest", |f: &mut Frame, opts: Map| backtest_of(f, &opts))
        .register_fn("anomalies", |f: &mut Frame| anomalies_of(f, &Map::new()))
        .register_fn("anomalies", |f: &mut Frame, opts: Map| {
            anomalies_of(f, &opts)
        })
        .register_fn("changepoints", |f: &mut Frame| {
            changepoints_of(f, &Map::new())
        })
        .register_fn("changepoints", |f: &mut Frame, opts: Map| {
            changepoints_of(f, &opts)
        })
        .register_fn("kmeans", |f: &mut Frame, k: i64| {
            kmeans_of(f, k, &Map::new())
        })
        .register_fn("kmeans", |f: &mut Frame, k: i64, opts: Map| {
            kmeans_of(f, k, &opts)
        })
        .register_fn("join", |f: &mut Frame, other: Frame, on: Dynamic| {
            let on = exprs(&on)?;
            Frame::plan(
                f.lazy()
                    .join(other.lazy(), on.clone(), on, JoinArgs::new(JoinType::Inner)),
            )
        })
        .register_fn(
            "join",
            |f: &mut Frame, other: Frame, on: Dynamic, how: &str| {
                let on = exprs(&on)?;
                let args =
                    JoinArgs::new(join_type(how)?).with_coalesce(JoinCoalesce::CoalesceColumns);
                Frame::plan(f.lazy().join(other.lazy(), on.clone(), on, args))
            },
        )
        .register_fn(
            "pivot",
            |f: &mut Frame, on: &str, index: Dynamic, values: &str, agg: &str| {
                pivot(f, on, &index, values, agg)
            },
        )
        .register_fn("explain", |f: &mut Frame| explain(f))
        .register_fn("unique", |f: &mut Frame| {
            Frame::plan(f.lazy().unique_stable(None, UniqueKeepStrategy::First))
        })
        .register_fn("rename", |f: &mut Frame, from: &str, to: &str| {
            Frame::plan(f.lazy().rename([from], [to], true))
        })
        .register_fn("drop", |f: &mut Frame, cols: Dynamic| {
            Frame::plan(f.lazy().drop(by_name(names(&cols)?, true, false)))
        })
        .register_get("height", |f: &mut Frame| f.height())
        .register_get("width", |f: &mut Frame| -> R<i64> {
            Ok(f.schema()?.len() as i64)
        })
        .register_get("columns", |f: &mut Frame| -> R<Array> {
            Ok(f.schema()?
                .iter_names()
                .map(|n| Dynamic::from(n.to_string()))
                .collect())
        })
        .register_fn("column", |f: &mut Frame, name: &str| column(f, name))
        .register_indexer_get(|f: &mut Frame, name: &str| column(f, name))
        .register_fn("value", |f: &mut Frame, name: &str, row: i64| {
            value_at(&column(f, name)?.0, row)
        })
        .register_fn("item", |f: &mut Frame| -> R<Dynamic> {
            let df = f.collect()?;
            if df.shape() != (1, 1) {
                return fail(format!(
                    "item() needs a 1 × 1 frame, this one is {} × {}",
                    df.height(),
                    df.width()
                ));
            }
            match df.columns().first() {
                Some(c) => value_at(c.as_materialized_series(), 0),
                None => fail("item() needs a 1 × 1 frame, this one has no column".to_owned()),
            }
        })
        .register_fn("rows", |f: &mut Frame| -> R<Array> {
            let df = f.collect()?;
            if df.height() > 100_000 {
                return fail(format!(
                    "rows(): {} rows is too many to loop over; aggregate first",
                    df.height()
                ));
            }
            let names: Vec<String> = df
                .get_column_names()
                .iter()
                .map(|s| s.to_string())
                .collect();
            let mut out = Array::with_capacity(df.height());
            for i in 0..df.height() {
                let mut m = Map::new();
                for (c, n) in df.columns().iter().zip(&names) {
                    let v = c.get(i).map_err(polars_err)?;
                    m.insert(n.as_str().into(), any_to_dynamic(v));
                }
                out.push(m.into());
            }
            Ok(out)
        })
        .register_fn("to_string", |f: &mut Frame| -> R<String> {
            Ok(f.collect()?.to_string())
        });

    // Series.
    for what in ["sum", "mean", "min", "max", "median"] {
        engine.register_fn(what, move |s: &mut ScriptSeries| scalar(&s.0, what));
    }
    engine
        .register_fn("len", |s: &mut ScriptSeries| s.0.len() as i64)
        .register_fn("n_unique", |s: &mut ScriptSeries| -> R<i64> {
            Ok(s.0.n_unique().map_err(polars_err)? as i64)
        })
        .register_fn("quantile", |s: &mut ScriptSeries, q: f64| -> R<Dynamic> {
            if !(0.0..=1.0).contains(&q) {
                return fail(format!("quantile {q} is not between 0 and 1"));
            }
            let r =
                s.0.quantile_reduce(q, QuantileMethod::Linear)
                    .map_err(polars_err)?;
            Ok(any_to_dynamic(r.value().clone()))
        })
        .register_get("name", |s: &mut ScriptSeries| s.0.name().to_string())
        .register_indexer_get(|s: &mut ScriptSeries, i: i64| value_at(&s.0, i))
        .register_fn("to_array", |s: &mut ScriptSeries| -> R<Array> {
            (0..s.0.len())
                .map(|i| s.0.get(i).map(any_to_dynamic).map_err(polars_err))
                .collect()
        })
        .register_fn("to_string", |s: &mut ScriptSeries| format!("{}", s.0));
}

/// Checks a bucket width such as `15m`, `1h`, `1d`, `1w`, `1mo`.
fn check_every(every: &str) -> R<()> {
    let digits = every.chars().take_while(char::is_ascii_digit).count();
    match &every[digits..] {
        "s" | "m" | "h" | "d" | "w" | "mo" | "y" if digits > 0 => Ok(()),
        _ => fail(format!(
            "bucket {every:?}: use a count and a unit, as 15m, 1h, 1d, 1w, 1mo"
        )),
    }
}

/// What a script gave back, as data.
#[derive(Clone, Debug)]
pub enum Value {
    /// A number (an integer is converted to a float).
    Scalar(f64),
    /// One column of values.
    Series(Series),
    /// A frame, its plan already run.
    Frame(DataFrame),
}

impl Value {
    /// From a script's result.
    pub(crate) fn from_dynamic(v: Dynamic) -> Result<Self, String> {
        if let Ok(i) = v.as_int() {
            return Ok(Value::Scalar(i as f64));
        }
        if let Ok(f) = v.as_float() {
            return Ok(Value::Scalar(f));
        }
        if let Some(s) = v.read_lock::<ScriptSeries>() {
            return Ok(Value::Series(s.0.clone()));
        }
        if let Some(f) = v.read_lock::<Frame>() {
            return f.collect().map(Value::Frame).map_err(|e| e.to_string());
        }
        if v.is_unit() {
            return Err("the script returned nothing: end it with the value to show".into());
        }
        Err(format!(
            "the script returned a {}: return a number, a Series or a Frame",
            v.type_name()
        ))
    }

    /// As a frame (a scalar is a 1 × 1 frame named `value`).
    pub(crate) fn into_frame(self) -> Result<DataFrame, PolarsError> {
        match self {
            Value::Scalar(x) => df!("value" => [x]),
            Value::Series(s) => DataFrame::new_infer_height(vec![s.into_column()]),
            Value::Frame(f) => Ok(f),
        }
    }
}
