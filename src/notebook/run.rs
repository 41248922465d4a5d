//! Running notebooks: code cells in order in one Rhai scope (variables,
//! functions and registered frames persist from cell to cell), in the
//! metric scripts' sandbox with the same Polars bindings, plus `display`,
//! `table`, `chart`, `kpi` and `markdown` for explicit outputs; a cell's
//! last value is shown. A cell tagged `parameters` holds defaults a run may
//! override (papermill's convention: the values go into a cell tagged
//! `injected-parameters` right after it).

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use polars::prelude::DataFrame;
use rhai::{Dynamic, Map, Scope, AST};

use super::format::{Cell, MimeBundle, Notebook, Output};
use super::render::{self, ChartOptions, ChartSpec};
use crate::analytics::metrics::MetricFormat;
use crate::script::frames::{self, Frame, FrameSource, Registered, ScriptSeries};
use crate::script::{Limits, Sandbox, ScriptError};

/// The tag of the cell whose `let` lines are a notebook's parameters.
pub const PARAMETERS_TAG: &str = "parameters";
/// The tag of the cell a run writes the given parameters into.
pub const INJECTED_TAG: &str = "injected-parameters";

/// Wall-clock limit of one cell (the sandbox's other limits are the
/// metric scripts').
pub const CELL_TIMEOUT: Duration = Duration::from_secs(120);

/// Whole frames behind table outputs, by output index.
type KeptFrames = Vec<(usize, Arc<DataFrame>)>;

thread_local! {
    /// Outputs of the cell running on this thread.
    static CAPTURE: RefCell<Option<Vec<Output>>> = const { RefCell::new(None) };
    /// The whole frames behind the cell's table outputs, by output index,
    /// when the session keeps them (the app exports them).
    static FRAMES: RefCell<Option<KeptFrames>> = const { RefCell::new(None) };
}

fn emit(o: Output) {
    CAPTURE.with_borrow_mut(|c| {
        if let Some(c) = c.as_mut() {
            // Consecutive prints make one stream output, as in Jupyter.
            if let (Some(Output::Stream { name, text }), Output::Stream { name: n2, text: t2 }) =
                (c.last_mut(), &o)
            {
                if name == n2 {
                    text.push_str(t2);
                    return;
                }
            }
            c.push(o);
        }
    });
}

fn display(data: MimeBundle) {
    emit(Output::DisplayData {
        data,
        metadata: serde_json::Map::new(),
    });
}

/// Shows `df`'s first `rows` rows, keeping the whole frame when asked.
fn display_frame(df: DataFrame, rows: usize) {
    let b = render::frame_bundle(&df, rows);
    let at = CAPTURE.with_borrow(|c| c.as_ref().map(Vec::len));
    display(b);
    if let Some(at) = at {
        keep_frame(at, df);
    }
}

fn keep_frame(at: usize, df: DataFrame) {
    FRAMES.with_borrow_mut(|f| {
        if let Some(f) = f.as_mut() {
            f.push((at, Arc::new(df)));
        }
    });
}

type R<T> = Result<T, Box<rhai::EvalAltResult>>;

/// The sandbox notebooks run in: the metric scripts' engine and frame
/// functions, the display functions, and `print` as the cell's output.
pub fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let mut s = Sandbox::new(Limits {
            timeout: CELL_TIMEOUT,
            ..Limits::default()
        });
        let e = s.engine_mut();
        frames::register(e);
        e.on_print(|t| {
            emit(Output::Stream {
                name: "stdout".into(),
                text: format!("{t}\n"),
            })
        });
        e.on_debug(|t, _, _| {
            emit(Output::Stream {
                name: "stderr".into(),
                text: format!("{t}\n"),
            })
        });
        e.register_fn("display", |v: Dynamic| -> R<()> {
            let at = CAPTURE.with_borrow(|c| c.as_ref().map(Vec::len));
            if let Some((b, df)) = bundle_of(&v, render::PREVIEW_ROWS)? {
                display(b);
                if let (Some(at), Some(df)) = (at, df) {
                    keep_frame(at, df);
                }
            }
            Ok(())
        })
        .register_fn("table", |f: Frame| -> R<()> {
            display_frame(f.collect()?, render::TABLE_ROWS);
            Ok(())
        })
        .register_fn("table", |f: Frame, opts: Map| -> R<()> {
            let rows = match opts.get("rows") {
                None => render::TABLE_ROWS,
                Some(v) => match v.as_int() {
                    Ok(n) if n >= 1 && n as usize <= render::MAX_TABLE_ROWS => n as usize,
                    _ => {
                        return frames::fail(format!(
                            "table: `rows` is a whole number from 1 to {}",
                            render::MAX_TABLE_ROWS
                        ))
                    }
                },
            };
            if let Some(k) = opts.keys().find(|k| k.as_str() != "rows") {
                return frames::fail(format!("table: unknown option `{k}` (only `rows`)"));
            }
            display_frame(f.collect()?, rows);
            Ok(())
        })
        .register_fn("chart", |f: Frame| chart(&f, &Map::new()))
        .register_fn("chart", |f: Frame, opts: Map| chart(&f, &opts))
        .register_fn("kpi", |label: &str, v: Dynamic| kpi(label, &v, "number"))
        .register_fn("kpi", |label: &str, v: Dynamic, format: &str| {
            kpi(label, &v, format)
        })
        .register_fn("markdown", |text: &str| {
            let mut b = MimeBundle::default();
            b.set_text("text/markdown", text);
            b.set_text("text/plain", text);
            display(b);
        });
        s
    })
}

fn rt_err(msg: impl Into<String>) -> Box<rhai::EvalAltResult> {
    Box::new(rhai::EvalAltResult::ErrorRuntime(
        Dynamic::from(msg.into()),
        rhai::Position::NONE,
    ))
}

fn chart(f: &Frame, opts: &Map) -> R<()> {
    let file = "chart";
    let json = crate::script::to_json(file, &Dynamic::from_map(opts.clone()))
        .map_err(|e| rt_err(format!("chart: {}", e.message)))?;
    let opts: ChartOptions = crate::script::from_json(file, json)
        .map_err(|e| rt_err(format!("chart: {}", e.message)))?;
    let spec = ChartSpec::of(&f.collect()?, &opts).map_err(|e| rt_err(format!("chart: {e}")))?;
    display(spec.bundle().map_err(|e| rt_err(format!("chart: {e}")))?);
    Ok(())
}

fn kpi(label: &str, v: &Dynamic, format: &str) -> R<()> {
    let value = if let Ok(i) = v.as_int() {
        i as f64
    } else if let Ok(x) = v.as_float() {
        x
    } else {
        return frames::fail(format!(
            "kpi: the value is a {}, not a number",
            v.type_name()
        ));
    };
    let Some(fmt) = MetricFormat::parse(format) else {
        return frames::fail(format!(
            "kpi: format {format:?}: use \"currency\", \"percent\", \"count\" or \"number\""
        ));
    };
    display(render::kpi_bundle(label, value, fmt, "USD"));
    Ok(())
}

/// A script value as outputs: frames and series as tables (their first
/// `rows` rows; the frame comes back too), text and numbers as text,
/// arrays and maps as JSON; nothing for `()`.
fn bundle_of(v: &Dynamic, rows: usize) -> R<Option<(MimeBundle, Option<DataFrame>)>> {
    if v.is_unit() {
        return Ok(None);
    }
    if let Some(f) = v.read_lock::<Frame>() {
        let df = f.collect()?;
        return Ok(Some((render::frame_bundle(&df, rows), Some(df))));
    }
    if let Some(s) = v.read_lock::<ScriptSeries>() {
        let df = polars::prelude::DataFrame::new_infer_height(vec![
            polars::prelude::IntoColumn::into_column(s.0.clone()),
        ])
        .or_else(|e| frames::fail(e.to_string()))?;
        return Ok(Some((render::frame_bundle(&df, rows), Some(df))));
    }
    let mut b = MimeBundle::default();
    if v.is_string() || v.is_char() {
        b.set_text("text/plain", v.to_string());
    } else if v.is_array() || v.is_map() {
        match crate::script::to_json("display", v) {
            Ok(j) => {
                b.set_text(
                    "text/plain",
                    serde_json::to_string_pretty(&j).unwrap_or_default(),
                );
                b.set_json("application/json", j);
            }
            Err(_) => b.set_text("text/plain", v.to_string()),
        }
    } else {
        b.set_text("text/plain", v.to_string());
    }
    Ok(Some((b, None)))
}

/// The functions and methods a cell may call, for completion (Rhai's
/// own and the frame and display functions).
pub const BUILTIN_NAMES: &[&str] = &[
    "abs",
    "agg",
    "alias",
    "anomalies",
    "backtest",
    "cast",
    "changepoints",
    "chart",
    "col",
    "column",
    "columns",
    "count",
    "day",
    "decompose",
    "display",
    "drop",
    "explain",
    "fill_null",
    "filter",
    "forecast",
    "frame",
    "group_by",
    "head",
    "height",
    "hour",
    "is_in",
    "is_null",
    "item",
    "join",
    "kmeans",
    "kpi",
    "len",
    "lit",
    "markdown",
    "max",
    "mean",
    "median",
    "min",
    "month",
    "n_unique",
    "over",
    "pivot",
    "print",
    "quantile",
    "register",
    "rename",
    "rfm",
    "round",
    "rows",
    "select",
    "sessions",
    "sort",
    "sql",
    "std",
    "sum",
    "table",
    "tail",
    "then",
    "otherwise",
    "transactions",
    "truncate",
    "unique",
    "value",
    "view",
    "weekday",
    "when",
    "width",
    "with_column",
    "with_columns",
    "year",
];

/// What running one cell gave.
#[derive(Clone, Debug)]
pub struct Executed {
    /// The session's run counter for this cell.
    pub count: i64,
    /// What it showed, in order (its value last; an error output on failure).
    pub outputs: Vec<Output>,
    /// Why it failed.
    pub error: Option<ScriptError>,
    /// How long it ran.
    pub elapsed: Duration,
    /// The whole frame behind each table output, by its index in
    /// `outputs`, when the session keeps frames ([`Session::keep_frames`]).
    pub frames: KeptFrames,
}

/// One notebook's running state: the scope its cells share.
pub struct Session {
    scope: Scope<'static>,
    functions: AST,
    registered: Registered,
    count: i64,
    source: Option<Arc<dyn FrameSource>>,
    keep_frames: bool,
}

impl Session {
    /// A fresh session reading frames from `source` (`None`: only frames
    /// built in the notebook exist).
    pub fn new(source: Option<Arc<dyn FrameSource>>) -> Self {
        Self {
            scope: Scope::new(),
            functions: AST::empty(),
            registered: Registered::new(),
            count: 0,
            source,
            keep_frames: false,
        }
    }

    /// Keeps the whole frame behind each table a cell shows (in
    /// [`Executed::frames`]), for a front end that exports them; off by
    /// default, as they can be large.
    pub fn keep_frames(&mut self, keep: bool) {
        self.keep_frames = keep;
    }

    /// Where later cells read frames from (a kernel reads the data
    /// versions again before each cell).
    pub fn set_source(&mut self, source: Option<Arc<dyn FrameSource>>) {
        self.source = source;
    }

    /// How many cells this session has run.
    pub fn count(&self) -> i64 {
        self.count
    }

    /// The names a cell may use here: variables, the notebook's functions
    /// and every registered function, sorted, without duplicates.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.scope.iter().map(|(n, _, _)| n.to_owned()).collect();
        out.extend(self.functions.iter_functions().map(|f| f.name.to_owned()));
        out.extend(BUILTIN_NAMES.iter().map(|n| (*n).to_owned()));
        out.sort();
        out.dedup();
        out
    }

    /// Runs `code` as the cell named `name` (errors say `name:line:col`).
    /// `cancel` stops it, as does the cell time limit.
    pub fn execute(
        &mut self,
        name: &str,
        code: &str,
        cancel: Option<&Arc<AtomicBool>>,
    ) -> Executed {
        let started = Instant::now();
        self.count += 1;
        let count = self.count;
        let previous = CAPTURE.with_borrow_mut(|c| c.replace(Vec::new()));
        let previous_frames =
            FRAMES.with_borrow_mut(|f| std::mem::replace(f, self.keep_frames.then(Vec::new)));
        let result = self.run_code(name, code, cancel);
        let mut outputs = CAPTURE
            .with_borrow_mut(|c| std::mem::replace(c, previous))
            .unwrap_or_default();
        let mut frames = FRAMES
            .with_borrow_mut(|f| std::mem::replace(f, previous_frames))
            .unwrap_or_default();
        let error = match result {
            Ok(Some((data, df))) => {
                if let (Some(df), true) = (df, self.keep_frames) {
                    frames.push((outputs.len(), Arc::new(df)));
                }
                outputs.push(Output::ExecuteResult {
                    execution_count: Some(count),
                    data,
                    metadata: serde_json::Map::new(),
                });
                None
            }
            Ok(None) => None,
            Err(e) => {
                outputs.push(error_output(&e, code));
                Some(e)
            }
        };
        Executed {
            count,
            outputs,
            error,
            elapsed: started.elapsed(),
            frames,
        }
    }

    fn run_code(
        &mut self,
        name: &str,
        code: &str,
        cancel: Option<&Arc<AtomicBool>>,
    ) -> Result<Option<(MimeBundle, Option<DataFrame>)>, ScriptError> {
        let sb = sandbox();
        let ast = sb.compile(name, code)?;
        let program = self.functions.merge(&ast);
        // Functions a cell defines are there for the cells after it, even
        // when the cell fails later on.
        self.functions = self.functions.merge(&ast.clone_functions_only());
        let scope = &mut self.scope;
        frames::with_source_keeping(self.source.clone(), &mut self.registered, || {
            let value = sb.run(name, cancel, |e| {
                e.eval_ast_with_scope::<Dynamic>(scope, &program)
            })?;
            // The value is read where frames can be: a frame runs its plan now.
            sb.run(name, cancel, |_| bundle_of(&value, render::PREVIEW_ROWS))
        })
    }
}

/// A failed cell as Jupyter's `error` output: the message, and where.
fn error_output(e: &ScriptError, code: &str) -> Output {
    let mut traceback = Vec::new();
    match (e.line, e.column) {
        (Some(l), c) => {
            traceback.push(match c {
                Some(c) => format!("{}, line {l}, column {c}:", e.file),
                None => format!("{}, line {l}:", e.file),
            });
            if let Some(text) = code.lines().nth(l.saturating_sub(1)) {
                traceback.push(format!("    {text}"));
                if let Some(c) = c {
                    traceback.push(format!("    {}^", " ".repeat(c.saturating_sub(1))));
                }
            }
        }
        (None, _) => traceback.push(format!("{}:", e.file)),
    }
    traceback.push(e.message.clone());
    Output::Error {
        ename: "ScriptError".into(),
        evalue: e.to_string(),
        traceback,
    }
}

/// The names a parameters cell declares (`let name = …;` or `const name =
/// …;` at the start of a line), in order.
pub fn parameter_names(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let t = line.trim_start();
        let rest = t.strip_prefix("let ").or_else(|| t.strip_prefix("const "));
        if let Some(rest) = rest {
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// A parameter's value as Rhai: a whole number, a decimal, `true`/`false`,
/// else a string (as papermill reads `-p`).
pub fn parameter_literal(value: &str) -> String {
    let v = value.trim();
    if v.parse::<i64>().is_ok() {
        return v.to_owned();
    }
    if v.parse::<f64>().is_ok_and(f64::is_finite) && v.chars().any(|c| c.is_ascii_digit()) {
        // Rhai reads `1e3` only with a decimal point before the exponent.
        return if v.contains('.') {
            v.to_owned()
        } else {
            // `1e20`: Rhai's float literal with a point (`1.0e20`), which
            // an integer could not hold.
            let e = format!("{:e}", v.parse::<f64>().unwrap_or(0.0));
            match e.split_once('e') {
                Some((m, x)) if !m.contains('.') => format!("{m}.0e{x}"),
                _ => e,
            }
        };
    }
    if v == "true" || v == "false" {
        return v.to_owned();
    }
    let mut s = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            // Rhai reads `\uXXXX` with exactly four digits (controls are ≤ U+009F).
            c if c.is_control() => s.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// A run's failure: which cell, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct CellFailure {
    /// The cell's position in the notebook, from 1 (markdown counted).
    pub cell: usize,
    /// Its error.
    pub error: ScriptError,
}

/// What a whole run did.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    /// Code cells run (the failed one included).
    pub executed: usize,
    /// The cell that stopped the run.
    pub failed: Option<CellFailure>,
    /// Wall time.
    pub elapsed: Duration,
}

/// A run could not start (bad parameters).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

/// The name a cell has in errors: `cell N` (its position, from 1).
pub fn cell_name(index: usize) -> String {
    format!("cell {}", index + 1)
}

/// Runs every code cell of `nb` in order in a fresh session, with
/// `params` over the parameters cell's defaults, writing each cell's
/// outputs into it; stops at the first failing cell (the cells after it
/// keep no outputs). Blocking.
pub fn run_notebook(
    nb: &mut Notebook,
    params: &[(String, String)],
    source: Option<Arc<dyn FrameSource>>,
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    nb.cells.retain(|c| !c.has_tag(INJECTED_TAG));
    if !params.is_empty() {
        let Some(at) = nb.cells.iter().position(|c| c.has_tag(PARAMETERS_TAG)) else {
            return Err(RunError(
                "parameters given, but no cell is tagged `parameters` (tag the cell whose \
                 `let` lines hold the defaults)"
                    .into(),
            ));
        };
        let declared = nb
            .cells
            .get(at)
            .map(|c| parameter_names(c.source()))
            .unwrap_or_default();
        let mut code = String::from("// Parameters of this run\n");
        for (k, v) in params {
            if !declared.contains(k) {
                return Err(RunError(format!(
                    "no parameter `{k}` in the parameters cell (it declares: {})",
                    if declared.is_empty() {
                        "nothing".to_owned()
                    } else {
                        declared.join(", ")
                    }
                )));
            }
            code.push_str(&format!("let {k} = {};\n", parameter_literal(v)));
        }
        let mut cell = Cell::code(code.trim_end().to_owned());
        if let Cell::Code(c) = &mut cell {
            c.metadata
                .insert("tags".into(), serde_json::json!([INJECTED_TAG]));
        }
        nb.cells.insert(at + 1, cell);
    }
    for c in &mut nb.cells {
        if let Cell::Code(c) = c {
            c.outputs.clear();
            c.execution_count = None;
        }
    }
    let mut session = Session::new(source);
    let mut report = RunReport {
        executed: 0,
        failed: None,
        elapsed: Duration::ZERO,
    };
    for (i, cell) in nb.cells.iter_mut().enumerate() {
        let Cell::Code(c) = cell else { continue };
        let done = session.execute(&cell_name(i), &c.source, cancel);
        report.executed += 1;
        c.execution_count = Some(done.count);
        c.outputs = done.outputs;
        if let Some(error) = done.error {
            report.failed = Some(CellFailure { cell: i + 1, error });
            break;
        }
    }
    nb.set_kernel();
    // The run's parameters beside what else salespulse keeps (a schedule).
    if let Some(meta) = nb.salespulse_meta() {
        meta.insert(
            "parameters".into(),
            serde_json::Value::Object(
                params
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(o: &Output) -> String {
        match o {
            Output::Stream { text, .. } => text.clone(),
            Output::DisplayData { data, .. } | Output::ExecuteResult { data, .. } => {
                data.text("text/plain").unwrap_or_default()
            }
            Output::Error { evalue, .. } => evalue.clone(),
        }
    }

    #[test]
    fn cells_share_one_scope_and_show_their_last_value() {
        let mut s = Session::new(None);
        let a = s.execute(
            "cell 1",
            "let x = 40;\nfn twice(v) { v * 2 }\nprint(\"hi\");\nprint(\"there\");",
            None,
        );
        assert_eq!(a.error, None);
        assert_eq!(a.outputs.len(), 1, "{:?}", a.outputs);
        assert_eq!(text(&a.outputs[0]), "hi\nthere\n");
        let b = s.execute("cell 2", "twice(x) + 2", None);
        assert_eq!(b.count, 2);
        assert!(matches!(
            b.outputs[0],
            Output::ExecuteResult {
                execution_count: Some(2),
                ..
            }
        ));
        assert_eq!(text(&b.outputs[0]), "82");
        let c = s.execute(
            "cell 3",
            "let f = frame(#{ a: [1, 2, 3], b: [\"x\", \"y\", \"z\"] });\nregister(\"t\", f);\ndisplay(f);\nkpi(\"Revenue\", 1234567.5, \"currency\");\nf.filter(col(\"a\") > 1)",
            None,
        );
        assert_eq!(c.error, None, "{:?}", c.outputs);
        assert_eq!(c.outputs.len(), 3);
        assert!(text(&c.outputs[0]).ends_with("3 rows × 2 columns"));
        assert_eq!(text(&c.outputs[1]), "Revenue: $ 1,234,567.50");
        assert!(text(&c.outputs[2]).ends_with("2 rows × 2 columns"));
        // A registered frame is there for SQL in later cells.
        let d = s.execute("cell 4", "sql(\"SELECT sum(a) AS s FROM t\")", None);
        assert_eq!(d.error, None, "{:?}", d.outputs);
        assert!(text(&d.outputs[0]).contains('6'), "{:?}", d.outputs);
        assert!(s.names().contains(&"twice".to_owned()));
        assert!(s.names().contains(&"chart".to_owned()));
        assert!(s.names().contains(&"x".to_owned()));
    }

    #[test]
    fn errors_name_the_cell_line_and_column_and_the_session_goes_on() {
        let mut s = Session::new(None);
        let e = s.execute("cell 3", "let a = 1;\nlet b = a.nope();", None);
        let err = e.error.unwrap();
        assert_eq!(
            (err.file.as_str(), err.line, err.column),
            ("cell 3", Some(2), Some(11))
        );
        let Output::Error {
            ename, traceback, ..
        } = e.outputs.last().unwrap()
        else {
            panic!("{:?}", e.outputs)
        };
        assert_eq!(ename, "ScriptError");
        assert_eq!(traceback[0], "cell 3, line 2, column 11:");
        assert_eq!(traceback[1], "    let b = a.nope();");
        assert_eq!(traceback[2], "              ^");
        // Variables set before the failure stay.
        assert_eq!(text(&s.execute("cell 4", "a + 1", None).outputs[0]), "2");
        // Bad options are errors of the call, not panics.
        let e = s.execute(
            "cell 5",
            "chart(frame(#{ a: [1] }), #{ kind: \"pie\" })",
            None,
        );
        assert!(e.error.unwrap().message.contains("\"pie\""));
        let e = s.execute("cell 6", "chart(frame(#{ a: [1] }), #{ colour: 1 })", None);
        assert!(e.error.unwrap().message.contains("colour"));
        let e = s.execute("cell 7", "loop {}", None);
        assert!(e.error.is_some());
    }

    #[test]
    fn parameters_are_read_typed_and_injected_after_their_cell() {
        assert_eq!(
            parameter_names("let last = \"7d\";\n  const top = 10; // n\nx = 1;"),
            ["last", "top"]
        );
        assert_eq!(parameter_literal("42"), "42");
        assert_eq!(parameter_literal("2.5"), "2.5");
        assert_eq!(parameter_literal("1e3"), "1.0e3");
        assert_eq!(parameter_literal("1e20"), "1.0e20");
        assert_eq!(parameter_literal("a\u{1b}"), "\"a\\u001b\"");
        for v in ["a\u{1b}\u{7f}", "1e20", "5E-2", "x\"\\\n"] {
            let code = format!("let p = {};", parameter_literal(v));
            assert!(sandbox().compile("p", &code).is_ok(), "{v:?}: {code}");
        }
        assert_eq!(parameter_literal("true"), "true");
        assert_eq!(parameter_literal("7d"), "\"7d\"");
        assert_eq!(parameter_literal("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        let mut nb = Notebook::new();
        nb.cells.push(Cell::markdown("# T"));
        let mut p = Cell::code("let top = 3;\nlet label = \"x\";");
        if let Cell::Code(c) = &mut p {
            c.metadata
                .insert("tags".into(), serde_json::json!(["parameters"]));
        }
        nb.cells.push(p);
        nb.cells.push(Cell::code("label + \":\" + top"));
        let params = vec![
            ("top".to_owned(), "5".to_owned()),
            ("label".to_owned(), "say \"hi\"".to_owned()),
        ];
        let r = run_notebook(&mut nb, &params, None, None).unwrap();
        assert_eq!(r.failed, None);
        assert_eq!(nb.cells.len(), 4);
        assert!(nb.cells[2].has_tag(INJECTED_TAG));
        let Cell::Code(last) = &nb.cells[3] else {
            panic!()
        };
        assert_eq!(text(&last.outputs[0]), "say \"hi\":5");
        // Run again with other values: the injected cell is replaced.
        run_notebook(&mut nb, &[("top".into(), "9".into())], None, None).unwrap();
        assert_eq!(nb.cells.len(), 4);
        let Cell::Code(last) = &nb.cells[3] else {
            panic!()
        };
        assert_eq!(text(&last.outputs[0]), "x:9");
        let e = run_notebook(&mut nb, &[("tpo".into(), "1".into())], None, None).unwrap_err();
        assert!(
            e.0.contains("no parameter `tpo`") && e.0.contains("top, label"),
            "{e}"
        );
    }

    #[test]
    fn a_failing_cell_stops_the_run_and_later_cells_keep_no_outputs() {
        let mut nb = Notebook::new();
        nb.cells.push(Cell::code("1"));
        nb.cells.push(Cell::markdown("text"));
        nb.cells.push(Cell::code("undefined_thing"));
        nb.cells.push(Cell::code("2"));
        let r = run_notebook(&mut nb, &[], None, None).unwrap();
        let f = r.failed.unwrap();
        assert_eq!(f.cell, 3);
        assert_eq!(f.error.file, "cell 3");
        assert_eq!(r.executed, 2);
        let Cell::Code(c) = &nb.cells[3] else {
            panic!()
        };
        assert!(c.outputs.is_empty() && c.execution_count.is_none());
    }

    #[test]
    fn a_session_keeps_the_whole_frames_behind_its_tables_when_asked() {
        let code = "let f = frame(#{ n: [1, 2, 3, 4, 5] });\nprint(\"x\");\ntable(f, #{ rows: 2 });\ndisplay(42);\nf";
        let mut s = Session::new(None);
        let plain = s.execute("cell 1", code, None);
        assert_eq!(plain.error, None);
        assert!(plain.frames.is_empty());
        s.keep_frames(true);
        let kept = s.execute("cell 2", code, None);
        assert_eq!(kept.error, None);
        assert_eq!(kept.outputs.len(), 4, "{:?}", kept.outputs);
        let at: Vec<(usize, usize)> = kept.frames.iter().map(|(i, f)| (*i, f.height())).collect();
        // The table (2 of 5 rows shown) and the cell's value, whole.
        assert_eq!(at, vec![(1, 5), (3, 5)]);
    }
}
