//! Rhai scripting: one sandboxed engine for every script the user writes
//! (generator behaviour, scenarios, custom metrics).
//!
//! The sandbox: limits on operations, call depth, expression depth, string,
//! array and map sizes, and wall-clock time per run (checked through
//! `on_progress`, which also honours a cancel flag); no `import` of files and
//! no `eval`; Rhai itself has no file or network functions. Every error is a
//! [`ScriptError`] naming the file, line and column.

pub mod forecast;
pub mod frames;
pub mod kmeans;
pub mod pushdown;
pub mod rfm;
pub mod series;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, ParseError, Position, AST};

/// Limits of one script run.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most Rhai operations one run may perform.
    pub max_operations: u64,
    /// Deepest nesting of function calls.
    pub max_call_levels: usize,
    /// Deepest nesting of expressions, at top level and inside functions.
    pub max_expr_depth: usize,
    /// Longest string, in bytes.
    pub max_string_size: usize,
    /// Most items in one array.
    pub max_array_size: usize,
    /// Most entries in one object map.
    pub max_map_size: usize,
    /// Wall-clock time of one run.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 200_000_000,
            max_call_levels: 64,
            max_expr_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 1_000_000,
            max_map_size: 100_000,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The largest script file read: 1 MiB.
pub const MAX_SOURCE_BYTES: u64 = 1 << 20;

/// The text of script file `path`, at most `max` bytes. Only a regular
/// file is read (a FIFO, a device such as `/dev/zero` or a folder named
/// `*.rhai` is an error, not a hang or an endless read), and never more
/// than `max` bytes of it, even if it grows while read. The error is one
/// readable line without the path.
pub fn read_source(path: &std::path::Path, max: u64) -> Result<String, String> {
    use std::io::Read;
    let regular = |m: &std::fs::Metadata| {
        if !m.is_file() {
            return Err("not a regular file".to_owned());
        }
        if m.len() > max {
            return Err(format!("{} bytes; a script is at most {max}", m.len()));
        }
        Ok(())
    };
    regular(&std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?)?;
    let mut open = std::fs::OpenOptions::new();
    open.read(true);
    #[cfg(unix)]
    {
        // A file swapped for a FIFO after the check does not block the open.
        use std::os::unix::fs::OpenOptionsExt;
        open.custom_flags(libc::O_NONBLOCK);
    }
    let f = open.open(path).map_err(|e| format!("cannot read: {e}"))?;
    regular(&f.metadata().map_err(|e| format!("cannot read: {e}"))?)?;
    let mut bytes = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("over {max} bytes; a script is at most {max}"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())
}

/// The `*.rhai` files of `dir`, sorted by path (metric and alert rule
/// folders); a folder that cannot be read is one error naming it.
pub fn rhai_files(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, ScriptError> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        ScriptError::new(
            &dir.display().to_string(),
            format!("cannot read the folder: {e}"),
        )
    })?;
    let mut files: Vec<std::path::PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .collect();
    files.sort();
    Ok(files)
}

/// A script failed: where, and why (one readable message).
#[derive(Clone, Debug, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{}", self.render())]
pub struct ScriptError {
    /// The script's file name.
    pub file: String,
    /// 1-based; `None` when the error has no position (e.g. a bad result).
    pub line: Option<usize>,
    /// 1-based column on `line`; `None` when unknown.
    pub column: Option<usize>,
    /// What went wrong, readable on its own.
    pub message: String,
}

impl ScriptError {
    /// An error in `file` with no position.
    pub fn new(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    fn at(file: &str, pos: Position, message: String) -> Self {
        Self {
            file: file.to_owned(),
            line: pos.line(),
            column: pos.position(),
            message,
        }
    }

    fn render(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => format!("{}:{l}: {}", self.file, self.message),
            _ => format!("{}: {}", self.file, self.message),
        }
    }

    pub(crate) fn parse(file: &str, e: &ParseError) -> Self {
        Self::at(
            file,
            e.position(),
            format!("syntax error: {}", e.err_type()),
        )
    }

    /// The innermost failure's position (inside the function that failed),
    /// with the call chain appended to the message.
    pub(crate) fn eval(file: &str, limits: &Limits, e: &EvalAltResult) -> Self {
        let mut chain = Vec::new();
        let mut inner = e;
        while let EvalAltResult::ErrorInFunctionCall(name, _, err, _) = inner {
            chain.push(name.clone());
            inner = err;
        }
        let pos = if inner.position().is_none() {
            e.position()
        } else {
            inner.position()
        };
        let mut message = match inner {
            EvalAltResult::ErrorTerminated(reason, _) => reason.to_string(),
            EvalAltResult::ErrorTooManyOperations(_) => format!(
                "stopped after {} operations (the limit per run)",
                limits.max_operations
            ),
            EvalAltResult::ErrorStackOverflow(_) => format!(
                "stopped: calls nested deeper than {} levels (runaway recursion?)",
                limits.max_call_levels
            ),
            EvalAltResult::ErrorDataTooLarge(what, _) => format!(
                "stopped: {what} over the limit (strings {} bytes, arrays {} items, maps {} entries)",
                limits.max_string_size, limits.max_array_size, limits.max_map_size
            ),
            EvalAltResult::ErrorModuleNotFound(m, _) => {
                format!("`import {m:?}`: scripts cannot load files")
            }
            other => {
                // Rhai's own text, without its trailing position.
                let s = other.to_string();
                match s.rfind(" (line ") {
                    Some(i) => s[..i].to_owned(),
                    None => s,
                }
            }
        };
        for f in chain.iter().rev() {
            if !f.starts_with("anon$") {
                message.push_str(&format!(" (in `{f}`)"));
            }
        }
        Self::at(file, pos, message)
    }
}

thread_local! {
    /// The run on this thread: its deadline and cancel flag.
    static RUN: RefCell<Option<(Instant, Duration, Arc<AtomicBool>)>> = const { RefCell::new(None) };
}

/// The sandboxed engine. Cheap to share (`Arc`); runs on any thread.
pub struct Sandbox {
    engine: Engine,
    limits: Limits,
}

impl Sandbox {
    /// A bare sandbox; callers register their functions on
    /// [`Sandbox::engine_mut`] before sharing it.
    pub fn new(limits: Limits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.disable_symbol("eval");
        engine.on_print(|s| tracing::info!(target: "script", "{s}"));
        engine.on_debug(
            |s, src, pos| tracing::debug!(target: "script", "{}{pos:?}: {s}", src.unwrap_or("")),
        );
        engine.on_progress(|ops| {
            // Every 1024 operations is often enough and keeps the check cheap.
            if ops % 1024 != 0 {
                return None;
            }
            RUN.with_borrow(|run| {
                let (start, timeout, cancel) = run.as_ref()?;
                if cancel.load(Ordering::Relaxed) {
                    Some(Dynamic::from("cancelled".to_owned()))
                } else if start.elapsed() > *timeout {
                    Some(Dynamic::from(format!(
                        "stopped: ran longer than {:.1} s (the limit per run)",
                        timeout.as_secs_f64()
                    )))
                } else {
                    None
                }
            })
        });
        Self { engine, limits }
    }

    /// The engine, to register functions on before the sandbox is shared.
    pub(crate) fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The engine, limits and restrictions applied.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The limits every run gets.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles `source` (named `file` in errors).
    pub fn compile(&self, file: &str, source: &str) -> Result<AST, ScriptError> {
        let mut ast = self
            .engine
            .compile(source)
            .map_err(|e| ScriptError::parse(file, &e))?;
        ast.set_source(file);
        Ok(ast)
    }

    /// Runs `f` (which evaluates on this engine) under the run limits:
    /// `cancel` stops it early. Errors come back positioned in `file`.
    pub fn run<T>(
        &self,
        file: &str,
        cancel: Option<&Arc<AtomicBool>>,
        f: impl FnOnce(&Engine) -> Result<T, Box<EvalAltResult>>,
    ) -> Result<T, ScriptError> {
        let cancel = cancel.cloned().unwrap_or_default();
        let previous =
            RUN.with_borrow_mut(|r| r.replace((Instant::now(), self.limits.timeout, cancel)));
        let out = f(&self.engine);
        RUN.with_borrow_mut(|r| *r = previous);
        out.map_err(|e| ScriptError::eval(file, &self.limits, &e))
    }

    /// Evaluates a compiled script and returns its value.
    pub(crate) fn eval_ast(
        &self,
        file: &str,
        ast: &AST,
        cancel: Option<&Arc<AtomicBool>>,
    ) -> Result<Dynamic, ScriptError> {
        self.run(file, cancel, |e| e.eval_ast::<Dynamic>(ast))
    }
}

/// A script value as JSON: integers stay integers, floats floats, maps
/// objects, arrays arrays, `()` null. Other types are refused by name.
pub fn to_json(file: &str, v: &Dynamic) -> Result<serde_json::Value, ScriptError> {
    to_json_within(file, v, MAX_DATA_DEPTH)
}

/// How deep a script's value may nest to be used as data (arrays and maps
/// in one another): far more than any shop or scenario needs, and shallow
/// enough that converting and dropping it cannot exhaust a thread's stack.
pub(crate) const MAX_DATA_DEPTH: usize = 64;

fn to_json_within(file: &str, v: &Dynamic, depth: usize) -> Result<serde_json::Value, ScriptError> {
    use serde_json::Value;
    let Some(depth) = depth.checked_sub(1) else {
        return Err(ScriptError::new(
            file,
            format!("data nested deeper than {MAX_DATA_DEPTH} levels"),
        ));
    };
    if v.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = v.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = v.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = v.as_float() {
        return Ok(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number));
    }
    if v.is_string() || v.is_char() {
        return Ok(Value::String(v.to_string()));
    }
    if let Some(a) = v.read_lock::<rhai::Array>() {
        return a
            .iter()
            .map(|x| to_json_within(file, x, depth))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if let Some(m) = v.read_lock::<rhai::Map>() {
        let mut out = serde_json::Map::new();
        for (k, x) in m.iter() {
            out.insert(k.to_string(), to_json_within(file, x, depth)?);
        }
        return Ok(Value::Object(out));
    }
    Err(ScriptError::new(
        file,
        format!("a {} cannot be used as data here", v.type_name()),
    ))
}

#[cfg(test)]
/// Deserializes a script's value into `T`, naming the field that is wrong.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(
    file: &str,
    v: &Dynamic,
) -> Result<T, ScriptError> {
    from_json(file, to_json(file, v)?)
}

/// Deserializes a script's value (as JSON) into `T`, naming the field that
/// is wrong.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    file: &str,
    json: serde_json::Value,
) -> Result<T, ScriptError> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ScriptError::new(
            file,
            if path == "." {
                format!("the script's result: {inner}")
            } else {
                format!("`{path}`: {inner}")
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(timeout_ms: u64) -> Sandbox {
        Sandbox::new(Limits {
            timeout: Duration::from_millis(timeout_ms),
            ..Limits::default()
        })
    }

    fn run(s: &Sandbox, src: &str) -> Result<Dynamic, ScriptError> {
        let ast = s.compile("t.rhai", src)?;
        s.eval_ast("t.rhai", &ast, None)
    }

    #[test]
    fn values_come_back() {
        let s = sandbox(1_000);
        assert_eq!(run(&s, "let x = 40; x + 2").unwrap().as_int(), Ok(42));
    }

    #[test]
    fn infinite_loop_is_stopped_by_the_clock() {
        let s = sandbox(300);
        let t = Instant::now();
        let e = run(&s, "let x = 0;\nloop { x += 1; }").unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(e.message.contains("ran longer than 0.3 s"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
        // The engine still works afterwards.
        assert_eq!(run(&s, "1 + 1").unwrap().as_int(), Ok(2));
    }

    #[test]
    fn deep_recursion_is_stopped() {
        let s = sandbox(5_000);
        let e = run(&s, "fn f(n) { f(n + 1) }\nf(0)").unwrap_err();
        assert!(e.message.contains("nested deeper than 64"), "{e}");
        // Where the runaway recursion was entered.
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn huge_string_is_stopped() {
        let s = sandbox(5_000);
        let e = run(&s, "let s = \"x\";\nwhile true { s += s; }").unwrap_err();
        assert!(e.message.contains("over the limit"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn files_cannot_be_reached() {
        let s = sandbox(1_000);
        let e = run(&s, "import \"/etc/passwd\" as p;\np").unwrap_err();
        assert!(e.message.contains("cannot load files"), "{e}");
        let e = run(&s, "eval(\"1\")").unwrap_err();
        assert!(e.to_string().starts_with("t.rhai:1:"), "{e}");
        for f in ["open_file(\"/etc/passwd\")", "read_file(\"x\")"] {
            let e = run(&s, f).unwrap_err();
            assert!(e.message.contains("Function not found"), "{e}");
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let s = sandbox(1_000);
        let e = run(&s, "let a = 1;\nlet b = ;").unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(9)), "{e}");
        assert!(e.to_string().starts_with("t.rhai:2:9: syntax error"), "{e}");
    }

    #[test]
    fn errors_inside_functions_point_inside_them() {
        let s = sandbox(1_000);
        let e = run(&s, "fn g(x) {\n  x.nope()\n}\ng(1)").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("(in `g`)"), "{e}");
    }

    #[test]
    fn cancel_flag_stops_a_run() {
        let s = Arc::new(sandbox(60_000));
        let cancel = Arc::new(AtomicBool::new(false));
        let (s2, c2) = (s.clone(), cancel.clone());
        let h = std::thread::spawn(move || {
            let ast = s2.compile("t.rhai", "loop {}").unwrap();
            s2.eval_ast("t.rhai", &ast, Some(&c2))
        });
        std::thread::sleep(Duration::from_millis(100));
        cancel.store(true, Ordering::Relaxed);
        let e = h.join().unwrap().unwrap_err();
        assert_eq!(e.message, "cancelled");
    }

    #[test]
    fn data_converts_with_field_paths_in_errors() {
        #[derive(serde::Deserialize, Debug)]
        struct P {
            #[allow(dead_code)]
            weight: f64,
            #[allow(dead_code)]
            items: Vec<String>,
        }
        let s = sandbox(1_000);
        let v = run(&s, "#{ weight: 1, items: [\"a\"] }").unwrap();
        assert!(from_value::<P>("t.rhai", &v).is_ok());
        let v = run(&s, "#{ weight: \"heavy\", items: [] }").unwrap();
        let e = from_value::<P>("t.rhai", &v).unwrap_err();
        assert!(e.message.starts_with("`weight`"), "{e}");
    }
}
