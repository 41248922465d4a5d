//! Notebooks: Rhai cells over the analytics layer's Polars frames, kept as
//! Jupyter `.ipynb` files (`notebooks/`), run headless, in the app and
//! through Jupyter clients, and shared as offline HTML reports.
//!
//! - [`format`]: the file (nbformat 4.5).
//! - [`run`]: executing cells in one shared scope, parameters.
//! - [`render`]: outputs (tables, charts, KPIs) in MIME types any front
//!   end shows.
//! - [`report`]: one self-contained HTML page per notebook.
//! - [`kernel`]: the same cells through the Jupyter protocol.
//! - [`schedule`]: reruns at an interval or a cron time, with history.

pub mod format;
pub mod kernel;
pub mod render;
pub mod report;
pub mod run;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use format::{Cell, Notebook, Output};
pub use run::{run_notebook, RunReport, Session};

use crate::script::frames::FrameSource;

/// Where a run writes what it made.
#[derive(Clone, Debug, Default)]
pub struct RunTarget {
    /// Folder for the executed notebook (and report); `None`: the notebook
    /// is rewritten in place and the report goes beside it.
    pub out_dir: Option<PathBuf>,
    /// Also write `NAME.html`.
    pub html: bool,
}

/// What [`run_file`] did.
#[derive(Clone, Debug)]
pub struct FileRun {
    /// The notebook written, with its outputs.
    pub notebook: PathBuf,
    /// The report written, if asked for.
    pub report: Option<PathBuf>,
    /// The run.
    pub run: RunReport,
}

/// Reads, runs and writes one notebook file (and its report). A failing
/// cell still writes the notebook, with the error at that cell; the
/// caller tells the user from [`RunReport::failed`]. Blocking.
pub fn run_file(
    path: &Path,
    params: &[(String, String)],
    source: Option<Arc<dyn FrameSource>>,
    target: &RunTarget,
    cancel: Option<&Arc<AtomicBool>>,
) -> anyhow::Result<FileRun> {
    let mut nb = Notebook::load(path)?;
    let started = chrono::Utc::now();
    let run = run_notebook(&mut nb, params, source, cancel)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let out = match &target.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            dir.join(path.file_name().unwrap_or(path.as_os_str()))
        }
        None => path.to_owned(),
    };
    nb.save(&out)?;
    let report = if target.html {
        let name = out.file_stem().map_or_else(
            || "notebook".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        let html = report_of(&nb, &name, path, started, params, &run);
        let file = out.with_extension("html");
        std::fs::write(&file, html).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        Some(file)
    } else {
        None
    };
    Ok(FileRun {
        notebook: out,
        report,
        run,
    })
}

/// The report of a run of the notebook at `path`.
fn report_of(
    nb: &Notebook,
    name: &str,
    path: &Path,
    started: chrono::DateTime<chrono::Utc>,
    params: &[(String, String)],
    run: &RunReport,
) -> String {
    let title = nb.title(name);
    let mut sub = format!(
        "{} · run {} UTC · {} code cells in {:.1} s",
        path.file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        started.format("%Y-%m-%d %H:%M"),
        run.executed,
        run.elapsed.as_secs_f64()
    );
    if !params.is_empty() {
        let p: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        sub.push_str(&format!(" · parameters {}", p.join(", ")));
    }
    if let Some(f) = &run.failed {
        sub.push_str(&format!(" · stopped at cell {}", f.cell));
    }
    report::html_report(nb, &title, &sub)
}

/// A scheduled run of the notebook at `path`: runs it with its defaults
/// and keeps the report and a record in its history; the notebook file
/// is left as it is. Blocking.
pub fn run_scheduled(
    path: &Path,
    source: Option<Arc<dyn FrameSource>>,
    cancel: Option<&Arc<AtomicBool>>,
) -> anyhow::Result<schedule::RunRecord> {
    let mut nb = Notebook::load(path)?;
    let started = chrono::Utc::now();
    let run = run_notebook(&mut nb, &[], source, cancel)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let name = path.file_stem().map_or_else(
        || "notebook".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    let html = report_of(&nb, &name, path, started, &[], &run);
    schedule::keep_run(path, started, &html, &run).map_err(|e| {
        anyhow::anyhow!(
            "{}: keeping the run: {e}",
            schedule::runs_dir(path).display()
        )
    })
}

/// A notebook in a folder, as `notebook list` shows it.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The file.
    pub path: PathBuf,
    /// Its title, cells and parameters; or why it cannot be read.
    pub info: Result<NotebookInfo, String>,
}

/// What a notebook holds.
#[derive(Clone, Debug)]
pub struct NotebookInfo {
    /// Its first heading (else the file name).
    pub title: String,
    /// Cells of each kind: (code, markdown).
    pub cells: (usize, usize),
    /// The parameters cell's names.
    pub parameters: Vec<String>,
    /// Whether its code cells all have outputs of a run.
    pub has_outputs: bool,
    /// Its schedule (`1h`, a cron expression), if it has one.
    pub schedule: Option<String>,
    /// When its last scheduled run started, and whether it failed.
    pub last_run: Option<(chrono::DateTime<chrono::Utc>, bool)>,
}

/// The `.ipynb` files of `dir`, sorted by name.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Listed>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ipynb"))
        .collect();
    files.sort();
    Ok(files
        .into_iter()
        .map(|path| {
            let info = Notebook::load(&path).map_err(|e| e.to_string()).map(|nb| {
                let code = nb
                    .cells
                    .iter()
                    .filter(|c| matches!(c, Cell::Code(_)))
                    .count();
                let parameters = nb
                    .cells
                    .iter()
                    .find(|c| c.has_tag(run::PARAMETERS_TAG))
                    .map(|c| run::parameter_names(c.source()))
                    .unwrap_or_default();
                NotebookInfo {
                    title: nb.title(
                        &path
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ),
                    cells: (code, nb.cells.len() - code),
                    parameters,
                    has_outputs: nb.cells.iter().all(|c| match c {
                        Cell::Code(c) => c.execution_count.is_some(),
                        _ => true,
                    }),
                    schedule: schedule::schedule_of(&nb).map(|e| match e {
                        Ok(e) => e.to_string(),
                        Err(why) => format!("invalid: {why}"),
                    }),
                    last_run: schedule::history(&path)
                        .first()
                        .map(|r| (r.started, r.failed_cell.is_some())),
                }
            });
            Listed { path, info }
        })
        .collect())
}
