//! Custom metrics: Rhai scripts over Polars frames (`scripts/metrics/*.rhai`).
//!
//! A metric script declares what it is in constants at its top and ends with
//! its value:
//!
//! ```rhai
//! const NAME = "Refund rate";
//! const KIND = "kpi";        // kpi | line | bar | table
//! const FORMAT = "percent";  // currency | percent | count | number
//! let k = view("kpis");
//! k.filter(col("period") == "current").value("refund_rate", 0)
//! ```
//!
//! It runs under the dashboard's filters: `view`, `transactions`, `sessions`
//! and `sql` read the dashboard's range and dimension filters unless the
//! script names its own. Results are cached in the frame cache like views,
//! keyed on the script's text, the filters and the data version. A KPI
//! metric also runs over the previous period of the same length, for its
//! delta.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use polars::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use super::script_host::Isolation;
use super::{
    sql, Analytics, AnalyticsError, DataVersions, Filters, TimeRange, ViewKind, ViewRequest,
};
use crate::cache::{frame_key, Outcome};
use crate::script::frames::{self, FrameSource, Value};
use crate::script::pushdown::Pushed;
use crate::script::{Limits, Sandbox, ScriptError};

/// The metric scripts shipped with salespulse: (file name, source).
pub const BUILTIN_METRICS: [(&str, &str); 6] = [
    (
        "basket_size_distribution.rhai",
        include_str!("../../scripts/metrics/basket_size_distribution.rhai"),
    ),
    (
        "refund_rate_by_category.rhai",
        include_str!("../../scripts/metrics/refund_rate_by_category.rhai"),
    ),
    (
        "repeat_customer_rate.rhai",
        include_str!("../../scripts/metrics/repeat_customer_rate.rhai"),
    ),
    (
        "revenue_by_weekday_hour.rhai",
        include_str!("../../scripts/metrics/revenue_by_weekday_hour.rhai"),
    ),
    (
        "revenue_per_session.rhai",
        include_str!("../../scripts/metrics/revenue_per_session.rhai"),
    ),
    (
        "top_customers_ltv.rhai",
        include_str!("../../scripts/metrics/top_customers_ltv.rhai"),
    ),
];

/// Bumped when what a metric run means changes (part of every key).
const METRIC_VERSION: u32 = 1;

/// Most raw rows one script run may load from one table.
pub(crate) const MAX_SCRIPT_ROWS: u64 = 5_000_000;

/// How a metric is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A tile with one number (and its delta against the previous period).
    Kpi,
    /// A line chart: the first column is x, the others are lines.
    Line,
    /// A bar chart: the first column labels the bars, the second is their height.
    Bar,
    /// A table of the frame as it is.
    Table,
}

/// How a metric's numbers are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricFormat {
    /// An amount in the shop's currency, with its symbol and two decimals.
    Currency,
    /// A fraction shown as a percentage with one decimal (0.25 → `25.0 %`).
    Percent,
    /// A whole number with thousands separators.
    Count,
    /// A plain number: three decimals below 100, else one with separators. The
    /// default when a script declares no `FORMAT`.
    Number,
}

impl MetricKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "kpi" => Self::Kpi,
            "line" => Self::Line,
            "bar" => Self::Bar,
            "table" => Self::Table,
            _ => return None,
        })
    }
}

impl MetricFormat {
    /// The format a script names (`currency`, `percent`, `count`, `number`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "currency" => Self::Currency,
            "percent" => Self::Percent,
            "count" => Self::Count,
            "number" => Self::Number,
            _ => return None,
        })
    }

    /// `value` short enough for a KPI tile: a magnitude of 100,000 or more
    /// in three significant digits with a unit (`$ 1.24B`, `12.3M`);
    /// smaller values and percentages as [`MetricFormat::render`] writes them.
    pub fn render_compact(self, value: f64, currency: &str) -> String {
        match (self, compact(value)) {
            (Self::Percent, _) | (_, None) => self.render(value, currency),
            (Self::Currency, Some(c)) => format!("{} {c}", currency_symbol(currency)),
            (_, Some(c)) => c,
        }
    }

    /// `value` written in this format.
    pub fn render(self, value: f64, currency: &str) -> String {
        if !value.is_finite() {
            return "–".into();
        }
        match self {
            Self::Currency => format!("{} {}", currency_symbol(currency), thousands(value, 2)),
            Self::Percent => format!("{:.1} %", value * 100.0),
            Self::Count => thousands(value, 0),
            Self::Number => {
                if value.abs() >= 100.0 {
                    thousands(value, 1)
                } else {
                    format!("{value:.3}")
                }
            }
        }
    }
}

fn currency_symbol(code: &str) -> &str {
    match code {
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        other => other,
    }
}

/// A magnitude of at least 100,000 in three significant digits and a unit:
/// `1_240_608_474.5` → `1.24B`, `-123_456` → `-123K`, `999_999` → `1.00M`;
/// `None` below 100,000 (or not finite), where the exact figure fits.
pub fn compact(v: f64) -> Option<String> {
    const UNITS: [(f64, &str); 4] = [(1e3, "K"), (1e6, "M"), (1e9, "B"), (1e12, "T")];
    let a = v.abs();
    if !a.is_finite() || a < 1e5 {
        return None;
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let mut unit = UNITS.iter().rposition(|(u, _)| a >= *u).unwrap_or(0);
    loop {
        let (scale, name) = UNITS.get(unit).copied().unwrap_or((1e12, "T"));
        let x = a / scale;
        let digits = |x: f64| {
            if x >= 100.0 {
                0
            } else if x >= 10.0 {
                1
            } else {
                2
            }
        };
        let mut decimals = digits(x);
        let mut text = format!("{x:.decimals$}");
        // 9.996 rounds to "10.00": three significant digits are "10.0".
        if let Some(fewer) = text
            .parse::<f64>()
            .ok()
            .map(digits)
            .filter(|d| *d < decimals)
        {
            decimals = fewer;
            text = format!("{x:.decimals$}");
        }
        // 999.6K rounds to "1000": say 1.00M instead.
        if text.parse::<f64>().is_ok_and(|r| r >= 1000.0) && unit + 1 < UNITS.len() {
            unit += 1;
            continue;
        }
        let text = if x >= 1000.0 { thousands(x, 0) } else { text };
        return Some(format!("{sign}{text}{name}"));
    }
}

/// `1234567.891` → `1,234,567.89` (with `decimals` places).
pub(crate) fn thousands(v: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(a, b)| (a, b));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    if v < 0.0 && out.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.insert(0, '-');
    }
    out
}

/// What a metric script declares about itself.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricInfo {
    /// The file name (`repeat_customer_rate.rhai`).
    pub file: String,
    /// The title shown (`const NAME`, required, not blank).
    pub name: String,
    /// How it is shown (`const KIND`, required).
    pub kind: MetricKind,
    /// How its numbers are written (`const FORMAT`; [`MetricFormat::Number`] if absent).
    pub format: MetricFormat,
    /// What it measures (`const DESCRIPTION`; empty if absent).
    pub description: String,
}

/// A compiled metric script.
pub struct Metric {
    /// What the script declares about itself.
    pub info: MetricInfo,
    /// The file it was loaded from; `None` when compiled from text.
    pub path: Option<PathBuf>,
    source_hash: String,
    source: Arc<str>,
    ast: rhai::AST,
}

impl std::fmt::Debug for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metric").field("info", &self.info).finish()
    }
}

/// The sandbox every metric runs in (frames registered).
pub fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let mut s = Sandbox::new(Limits::default());
        frames::register(s.engine_mut());
        s
    })
}

/// The line of `const NAME` in `source` (for errors about it).
fn line_of(source: &str, name: &str) -> Option<usize> {
    let pat = format!("const {name}");
    source
        .lines()
        .position(|l| l.trim_start().starts_with(&pat))
        .map(|i| i + 1)
}

impl Metric {
    /// Compiles `source` (named `file`) and reads its declarations.
    pub fn compile(file: &str, source: &str) -> Result<Self, ScriptError> {
        let ast = sandbox().compile(file, source)?;
        let mut name = None;
        let mut kind = None;
        let mut format = None;
        let mut description = String::new();
        for (var, is_const, v) in ast.iter_literal_variables(true, false) {
            if !is_const {
                continue;
            }
            let text = v.clone().into_string().ok();
            let bad = |what: &str, allowed: &str| {
                let mut e = ScriptError::new(
                    file,
                    format!("const {var} = {v}: {what}; use one of {allowed}"),
                );
                e.line = line_of(source, var);
                e
            };
            match var {
                "NAME" => name = text,
                "DESCRIPTION" => description = text.unwrap_or_default(),
                "KIND" => {
                    kind = Some(text.as_deref().and_then(MetricKind::parse).ok_or_else(|| {
                        bad("unknown kind", "\"kpi\", \"line\", \"bar\", \"table\"")
                    })?)
                }
                "FORMAT" => {
                    format = Some(text.as_deref().and_then(MetricFormat::parse).ok_or_else(
                        || {
                            bad(
                                "unknown format",
                                "\"currency\", \"percent\", \"count\", \"number\"",
                            )
                        },
                    )?)
                }
                _ => {}
            }
        }
        let missing = |what: &str, example: &str| {
            let mut e = ScriptError::new(
                file,
                format!("a metric script declares its {what}: add `{example}` at the top"),
            );
            e.line = Some(1);
            e
        };
        let name = name
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| missing("name", "const NAME = \"My metric\";"))?;
        let kind = kind.ok_or_else(|| missing("kind", "const KIND = \"kpi\";"))?;
        let format = format.unwrap_or(MetricFormat::Number);
        let source_hash = format!("{:x}", Sha256::digest(source.as_bytes()));
        Ok(Self {
            info: MetricInfo {
                file: file.to_owned(),
                name,
                kind,
                format,
                description,
            },
            path: None,
            source_hash,
            source: Arc::from(source),
            ast,
        })
    }

    /// The script's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Reads and compiles a metric file.
    pub fn load(path: &Path) -> Result<Self, ScriptError> {
        let file = path.file_name().map_or_else(
            || path.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        );
        let source = crate::script::read_source(path, crate::script::MAX_SOURCE_BYTES)
            .map_err(|e| ScriptError::new(&file, e))?;
        let mut m = Self::compile(&file, &source)?;
        m.path = Some(path.to_owned());
        Ok(m)
    }

    /// Runs the script on this thread with `source` for its frames and
    /// checks that its value fits its kind. Blocking.
    pub fn run(
        &self,
        source: Option<Arc<dyn FrameSource>>,
        cancel: Option<&Arc<AtomicBool>>,
    ) -> Result<DataFrame, ScriptError> {
        let file = &self.info.file;
        // The value is read with the source still there: a frame it ends
        // with may run in the database.
        let value = frames::with_source(source, || {
            let v = sandbox().eval_ast(file, &self.ast, cancel)?;
            Value::from_dynamic(v).map_err(|e| ScriptError::new(file, e))
        })?;
        self.shape(value).map_err(|e| {
            ScriptError::new(
                file,
                format!("a {:?} metric: {e}", self.info.kind).to_lowercase(),
            )
        })
    }

    /// The value as the frame its kind is drawn from.
    fn shape(&self, value: Value) -> Result<DataFrame, String> {
        let numeric = |s: &Column| s.dtype().is_primitive_numeric();
        match (self.info.kind, value) {
            (MetricKind::Kpi, Value::Scalar(x)) => df!("value" => [x]).map_err(|e| e.to_string()),
            (MetricKind::Kpi, v) => {
                let df = v.into_frame().map_err(|e| e.to_string())?;
                match df.columns() {
                    [c] if df.height() == 1 && numeric(c) => {
                        let x = c
                            .cast(&DataType::Float64)
                            .map_err(|e| e.to_string())?
                            .f64()
                            .map_err(|e| e.to_string())?
                            .get(0);
                        df!("value" => [x]).map_err(|e| e.to_string())
                    }
                    _ => Err(format!(
                        "returns one number, not a {} × {} frame",
                        df.height(),
                        df.width()
                    )),
                }
            }
            (MetricKind::Line | MetricKind::Bar, Value::Scalar(_)) => {
                Err("returns a Series or a Frame, not one number".into())
            }
            (MetricKind::Line | MetricKind::Bar, v) => {
                let df = v.into_frame().map_err(|e| e.to_string())?;
                let cols = df.columns();
                // No column at all is an error below, not a panic here.
                let ys = if cols.len() == 1 {
                    cols
                } else {
                    cols.get(1..).unwrap_or_default()
                };
                if ys.is_empty() || !ys.iter().all(numeric) {
                    return Err(format!(
                        "needs numbers to draw: the first column is the {}, the others numbers (got {})",
                        if self.info.kind == MetricKind::Line { "x axis" } else { "labels" },
                        df.schema()
                            .iter()
                            .map(|(n, t)| format!("{n}: {t}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                Ok(df)
            }
            (MetricKind::Table, v) => v.into_frame().map_err(|e| e.to_string()),
        }
    }
}

/// The metric scripts of a folder, sorted by file name: each compiled, or
/// the error that stopped it.
pub fn load_dir(dir: &Path) -> Vec<Result<Arc<Metric>, ScriptError>> {
    let files = match crate::script::rhai_files(dir) {
        Ok(f) => f,
        Err(e) => return vec![Err(e)],
    };
    files
        .iter()
        .map(|p| Metric::load(p).map(Arc::new))
        .collect()
}

/// A metric's result.
#[derive(Clone, Debug)]
pub struct MetricResult {
    /// The metric that ran.
    pub info: MetricInfo,
    /// Its value, shaped for its kind: a KPI's is one row with column `value`.
    pub frame: DataFrame,
    /// A KPI's value over the previous period of the same length.
    pub previous: Option<f64>,
    /// How the cache answered for the current period (hit, miss or bypass).
    pub outcome: Outcome,
    /// Wall time of the whole request, previous period included.
    pub elapsed: Duration,
}

impl MetricResult {
    /// A KPI's value.
    pub fn value(&self) -> Option<f64> {
        kpi_value(&self.frame)
    }
}

fn kpi_value(df: &DataFrame) -> Option<f64> {
    df.column("value").ok()?.f64().ok()?.get(0)
}

/// A script's frames from the analytics layer, under one run's filters and
/// one read of the data versions.
struct AnalyticsSource {
    analytics: Analytics,
    filters: Filters,
    versions: DataVersions,
    rt: Handle,
}

impl AnalyticsSource {
    /// The run's filters with the script's own options over them.
    fn request(
        &self,
        view: ViewKind,
        opts: &[(String, String)],
    ) -> Result<ViewRequest, AnalyticsError> {
        let given = |keys: &[&str]| opts.iter().any(|(k, _)| keys.contains(&k.as_str()));
        let mut req = ViewRequest::parse(view, opts.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let (f, base) = (&mut req.filters, &self.filters);
        if !given(&["last", "from", "to"]) {
            f.range = base.range.clone();
        }
        if !given(&["category"]) {
            f.categories = base.categories.clone();
        }
        if !given(&["payment_method", "payment"]) {
            f.payment_methods = base.payment_methods.clone();
        }
        if !given(&["region"]) {
            f.regions = base.regions.clone();
        }
        if !given(&["channel"]) {
            f.channels = base.channels.clone();
        }
        if !given(&["status"]) {
            f.statuses = base.statuses.clone();
        }
        req.check()?;
        Ok(req)
    }

    /// The filters and range of a raw table under `opts` (filters only:
    /// `kpis` takes every filter and no limit).
    fn table_scope(
        &self,
        opts: &[(String, String)],
    ) -> Result<(Filters, Option<sql::Span>), String> {
        let req = self
            .request(ViewKind::Kpis, opts)
            .map_err(|e| e.to_string())?;
        let (span, _) = Analytics::resolve(&req, &self.versions);
        Ok((req.filters, span))
    }

    /// The rows of `q`, at most [`MAX_SCRIPT_ROWS`] of them (`what`: where
    /// more were, for the error).
    fn load_capped(&self, q: &sql::Query, what: &str) -> Result<DataFrame, String> {
        let df = self
            .rt
            .block_on(super::load::load(
                self.analytics.pool(),
                &q.sql,
                &q.columns,
                self.analytics.load_mode(),
            ))
            .map_err(|e| e.to_string())?;
        if df.height() as u64 > MAX_SCRIPT_ROWS {
            return Err(format!(
                "more than {MAX_SCRIPT_ROWS} rows {what} (the limit of one script run); \
                 narrow the range or filter"
            ));
        }
        Ok(df)
    }

    /// The query for a raw table under `opts`.
    fn table_query(&self, name: &str, opts: &[(String, String)]) -> Result<sql::Query, String> {
        let (filters, span) = self.table_scope(opts)?;
        Ok(match name {
            "transactions" => sql::transactions(&filters, span, MAX_SCRIPT_ROWS + 1, 0, None),
            "sessions" => sql::sessions(&filters, span, MAX_SCRIPT_ROWS + 1),
            "customers" => sql::customers(&filters, MAX_SCRIPT_ROWS + 1),
            "products" => sql::products(&filters, MAX_SCRIPT_ROWS + 1),
            other => {
                return Err(format!(
                    "no table {other:?}; tables: {}",
                    self.table_names().join(", ")
                ))
            }
        })
    }
}

impl FrameSource for AnalyticsSource {
    fn view(&self, name: &str, opts: &[(String, String)]) -> Result<DataFrame, String> {
        let kind: ViewKind = name.parse().map_err(|e: AnalyticsError| e.to_string())?;
        let req = self.request(kind, opts).map_err(|e| e.to_string())?;
        self.rt
            .block_on(self.analytics.view_at(&req, &self.versions))
            .map(|r| r.frame)
            .map_err(|e| e.to_string())
    }

    fn table(
        &self,
        name: &str,
        opts: &[(String, String)],
        columns: Option<&[String]>,
        limit: Option<usize>,
    ) -> Result<DataFrame, String> {
        let mut q = self.table_query(name, opts)?;
        if let Some(want) = columns {
            let mut picked = Vec::with_capacity(want.len());
            for w in want {
                match q.columns.iter().find(|c| c.name == w.as_str()) {
                    Some(c) => picked.push(*c),
                    None => return Err(format!("no column {w:?} in {name}")),
                }
            }
            let list = picked
                .iter()
                .map(|c| format!("t.\"{}\"", c.name))
                .collect::<Vec<_>>()
                .join(", ");
            // A plain projection of the ordered, limited query keeps its order.
            q.sql = format!("SELECT {list} FROM ({}) AS t", q.sql);
            q.columns = picked;
        }
        if let Some(n) = limit {
            // The inner query's order is kept: the first n rows of it.
            q.sql = format!("SELECT * FROM ({}) AS l LIMIT {n}", q.sql);
        }
        let df = self.load_capped(&q, "in this range")?;
        self.analytics.count_read(false, false, df.height());
        Ok(df)
    }

    fn table_schema(&self, name: &str, opts: &[(String, String)]) -> Result<Schema, String> {
        let q = self.table_query(name, opts)?;
        Ok(q.columns
            .iter()
            .map(|c| Field::new(c.name.into(), super::load::dtype(c.ty)))
            .collect())
    }

    fn table_names(&self) -> Vec<&'static str> {
        vec!["transactions", "sessions", "customers", "products"]
    }

    fn query(&self, q: &Pushed) -> Result<Option<DataFrame>, String> {
        if !self.analytics.pushdown() {
            return Ok(None);
        }
        let (filters, span) = self.table_scope(&q.opts)?;
        // Kept aggregates first: rollups, then per-customer and -product totals.
        let rollup = super::pushdown::from_rollups(q, &filters, span, MAX_SCRIPT_ROWS + 1)
            .or_else(|| super::pushdown::from_totals(q, &filters, span, MAX_SCRIPT_ROWS + 1));
        let stmt = match &rollup {
            Some(stmt) => stmt.clone(),
            None => {
                let Some(base) = sql::table_rows(&q.table, &filters, span) else {
                    return Err(format!(
                        "no table {:?}; tables: {}",
                        q.table,
                        self.table_names().join(", ")
                    ));
                };
                match super::pushdown::render(q, &base, MAX_SCRIPT_ROWS + 1) {
                    Ok(stmt) => stmt,
                    // Not renderable: Polars runs the plan over loaded rows.
                    Err(why) => {
                        tracing::debug!("script frame not pushed down: {why}");
                        return Ok(None);
                    }
                }
            }
        };
        let mut df = self.load_capped(&stmt, "in this answer")?;
        let names: Vec<&str> = q.outputs.iter().map(|o| o.0.as_str()).collect();
        df.set_column_names(&names).map_err(|e| e.to_string())?;
        self.analytics
            .count_read(true, rollup.is_some(), df.height());
        Ok(Some(df))
    }
}

impl Analytics {
    /// Runs `metric` under `filters`, from the frame cache when it holds
    /// the result.
    pub async fn metric(
        &self,
        metric: &Arc<Metric>,
        filters: &Filters,
    ) -> Result<MetricResult, AnalyticsError> {
        let v = self.versions().await?;
        self.metric_at(metric, filters, &v).await
    }

    /// [`Analytics::metric`] under versions already read.
    pub(crate) async fn metric_at(
        &self,
        metric: &Arc<Metric>,
        filters: &Filters,
        v: &DataVersions,
    ) -> Result<MetricResult, AnalyticsError> {
        let started = Instant::now();
        let mut req = ViewRequest::new(ViewKind::Kpis).with_filters(filters.clone());
        req.check()?;
        let (span, _) = Self::resolve(&req, v);
        let current = self.metric_once(metric, &req.filters, span, v);
        let (frame, outcome, previous) = match (metric.info.kind, span) {
            (MetricKind::Kpi, Some(s)) => {
                let len = s.to - s.from;
                let mut prev = req.filters.clone();
                prev.range = TimeRange::Between {
                    from: s.from - len,
                    to: s.from,
                };
                let prev_span = Some(sql::Span {
                    from: s.from - len,
                    to: s.from,
                });
                let (cur, prev) =
                    futures::future::join(current, self.metric_once(metric, &prev, prev_span, v))
                        .await;
                let (frame, outcome) = cur?;
                (frame, outcome, prev.ok().and_then(|(f, _)| kpi_value(&f)))
            }
            _ => {
                let (frame, outcome) = current.await?;
                (frame, outcome, None)
            }
        };
        Ok(MetricResult {
            info: metric.info.clone(),
            frame,
            previous,
            outcome,
            elapsed: started.elapsed(),
        })
    }

    async fn metric_once(
        &self,
        metric: &Arc<Metric>,
        filters: &Filters,
        span: Option<sql::Span>,
        v: &DataVersions,
    ) -> Result<(DataFrame, Outcome), AnalyticsError> {
        let material = serde_json::json!({
            "database": v.database,
            "schema": super::schema_version(),
            "metrics": METRIC_VERSION,
            "script": metric.source_hash,
            "filters": super::filters_key(filters),
            "span": span.map(|s| (s.from.timestamp(), s.to.timestamp())),
            "version": Self::data_version_key(span, v),
        })
        .to_string();
        let name = format!("metric:{}", metric.info.file);
        let key = frame_key(&name, &material);
        let source = AnalyticsSource {
            analytics: self.clone(),
            filters: filters.clone(),
            versions: v.clone(),
            rt: Handle::current(),
        };
        let m = Arc::clone(metric);
        let isolation = self.isolation().clone();
        let result = self
            .cache()
            .get_or_compute(&name, &key, move || async move {
                let out = tokio::task::spawn_blocking(move || {
                    let src: Arc<dyn FrameSource> = Arc::new(source);
                    run_metric(&isolation, &m, src, None)
                })
                .await;
                match out {
                    Ok(Ok(df)) => Ok(df),
                    Ok(Err(e)) => Err(Arc::new(AnalyticsError::Script(e))),
                    Err(e) => Err(Arc::new(AnalyticsError::BadRequest(format!(
                        "the script's thread failed: {e}"
                    )))),
                }
            })
            .await;
        result.map_err(|e| match Arc::try_unwrap(e) {
            Ok(e) => e,
            Err(shared) => AnalyticsError::Shared(shared),
        })
    }

    /// Runs a script's text once, uncached, under `filters` (the editor's
    /// Run): returns its frame or the error at its line. `cancel` stops it.
    pub async fn run_script(
        &self,
        metric: Arc<Metric>,
        filters: &Filters,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Result<DataFrame, AnalyticsError> {
        let v = self.versions().await?;
        let source = AnalyticsSource {
            analytics: self.clone(),
            filters: filters.clone(),
            versions: v,
            rt: Handle::current(),
        };
        let isolation = self.isolation().clone();
        tokio::task::spawn_blocking(move || {
            let src: Arc<dyn FrameSource> = Arc::new(source);
            run_metric(&isolation, &metric, src, cancel.as_ref())
        })
        .await
        .map_err(|e| AnalyticsError::BadRequest(format!("the script's thread failed: {e}")))?
        .map_err(AnalyticsError::Script)
    }
}

/// Runs `metric` in a script process when there is a host binary, else on
/// this thread (logged once: memory is then not capped).
fn run_metric(
    isolation: &Isolation,
    metric: &Metric,
    source: Arc<dyn FrameSource>,
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<DataFrame, ScriptError> {
    match &isolation.host {
        Some(host) => super::script_host::run_isolated(
            host,
            isolation.memory_mb,
            metric,
            Some(source),
            cancel,
        ),
        None => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("no salespulse binary to run scripts in (set SALESPULSE_SCRIPT_HOST): scripts run in this process, without a memory cap");
            });
            metric.run(Some(source), cancel)
        }
    }
}

impl Analytics {
    /// The frames of this database for a script run outside a metric (a
    /// notebook), under `filters` and the data versions read now. Its
    /// calls block: use it on a blocking thread.
    pub async fn frame_source(
        &self,
        filters: &Filters,
    ) -> Result<Arc<dyn FrameSource>, AnalyticsError> {
        let v = self.versions().await?;
        Ok(Arc::new(AnalyticsSource {
            analytics: self.clone(),
            filters: filters.clone(),
            versions: v,
            rt: Handle::current(),
        }))
    }

    /// Evaluates any script text (not only a metric) with the frame
    /// functions over this database, under `filters`; returns its value.
    pub async fn eval_script(
        &self,
        file: &str,
        source: &str,
        filters: &Filters,
    ) -> Result<rhai::Dynamic, AnalyticsError> {
        let v = self.versions().await?;
        let ast = sandbox()
            .compile(file, source)
            .map_err(AnalyticsError::Script)?;
        let src = AnalyticsSource {
            analytics: self.clone(),
            filters: filters.clone(),
            versions: v,
            rt: Handle::current(),
        };
        let file = file.to_owned();
        tokio::task::spawn_blocking(move || {
            let src: Arc<dyn FrameSource> = Arc::new(src);
            frames::with_source(Some(src), || sandbox().eval_ast(&file, &ast, None))
        })
        .await
        .map_err(|e| AnalyticsError::BadRequest(format!("the script's thread failed: {e}")))?
        .map_err(AnalyticsError::Script)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_are_compact_with_three_significant_digits() {
        let c = |v: f64| compact(v);
        assert_eq!(c(99_999.99), None);
        assert_eq!(c(f64::NAN), None);
        assert_eq!(c(100_000.0).as_deref(), Some("100K"));
        assert_eq!(c(123_456.0).as_deref(), Some("123K"));
        assert_eq!(c(-123_456.0).as_deref(), Some("-123K"));
        assert_eq!(c(999_499.0).as_deref(), Some("999K"));
        assert_eq!(c(999_999.0).as_deref(), Some("1.00M"));
        assert_eq!(c(1_240_608_474.55).as_deref(), Some("1.24B"));
        assert_eq!(c(12_345_678.0).as_deref(), Some("12.3M"));
        assert_eq!(c(999_960_000_000.0).as_deref(), Some("1.00T"));
        assert_eq!(c(9_996_000.0).as_deref(), Some("10.0M"));
        assert_eq!(c(99_960_000.0).as_deref(), Some("100M"));
        assert_eq!(c(9_994_000.0).as_deref(), Some("9.99M"));
        assert_eq!(c(-9_996_000.0).as_deref(), Some("-10.0M"));
        assert_eq!(c(4.2e15).as_deref(), Some("4,200T"));
        let f = MetricFormat::Currency;
        assert_eq!(f.render_compact(1_240_608_474.55, "USD"), "$ 1.24B");
        assert_eq!(f.render_compact(1_234.5, "USD"), "$ 1,234.50");
        assert_eq!(MetricFormat::Percent.render_compact(0.25, "USD"), "25.0 %");
        assert_eq!(
            MetricFormat::Count.render_compact(5_000_000.0, "USD"),
            "5.00M"
        );
    }

    fn run(src: &str) -> Result<DataFrame, ScriptError> {
        Metric::compile("t.rhai", src)?.run(None, None)
    }

    #[test]
    fn declarations_are_read_without_running() {
        let m = Metric::compile(
            "t.rhai",
            "const NAME = \"Basket\";\nconst KIND = \"bar\";\nconst FORMAT = \"count\";\nloop {}",
        )
        .unwrap();
        assert_eq!(m.info.name, "Basket");
        assert_eq!(m.info.kind, MetricKind::Bar);
        assert_eq!(m.info.format, MetricFormat::Count);
    }

    #[test]
    fn missing_or_bad_declarations_say_what_to_write() {
        let e = Metric::compile("t.rhai", "1").unwrap_err();
        assert!(e.message.contains("const NAME"), "{e}");
        let e =
            Metric::compile("t.rhai", "const NAME = \"x\";\nconst KIND = \"pie\";\n1").unwrap_err();
        assert!(e.message.contains("unknown kind"), "{e}");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn results_must_fit_the_kind() {
        let head = "const NAME = \"x\";\nconst KIND = \"kpi\";\n";
        let df = run(&format!("{head}0.25")).unwrap();
        assert_eq!(kpi_value(&df), Some(0.25));
        let e = run(&format!("{head}frame(#{{ a: [1, 2] }})")).unwrap_err();
        assert!(e.message.contains("one number"), "{e}");
        let e = run(&format!("{head}\"text\"")).unwrap_err();
        assert!(e.message.contains("returned a string"), "{e}");
        let bar = "const NAME = \"x\";\nconst KIND = \"bar\";\n";
        let e = run(&format!("{bar}frame(#{{ a: [\"x\"], b: [\"y\"] }})")).unwrap_err();
        assert!(e.message.contains("needs numbers"), "{e}");
        // A frame without columns: an error, not a panic.
        let e = run(&format!("{bar}frame(#{{ a: [1] }}).select([])")).unwrap_err();
        assert!(e.message.contains("needs numbers"), "{e}");
        let df = run(&format!(
            "{bar}frame(#{{ label: [\"x\", \"y\"], n: [1, 2] }})"
        ))
        .unwrap();
        assert_eq!(df.shape(), (2, 2));
    }

    #[test]
    fn without_a_database_data_functions_say_so() {
        let e = run("const NAME = \"x\";\nconst KIND = \"table\";\n\nview(\"kpis\")").unwrap_err();
        assert!(e.message.contains("no database"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn formats_render() {
        assert_eq!(
            MetricFormat::Currency.render(1234567.891, "USD"),
            "$ 1,234,567.89"
        );
        assert_eq!(MetricFormat::Percent.render(0.1234, "USD"), "12.3 %");
        assert_eq!(MetricFormat::Count.render(999.0, "USD"), "999");
        assert_eq!(MetricFormat::Count.render(-1000.0, "USD"), "-1,000");
        assert_eq!(MetricFormat::Number.render(f64::NAN, "USD"), "–");
    }
}
