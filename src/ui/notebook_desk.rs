//! The backend's side of the Notebooks panel: the notebooks folder (polled
//! for changes once a second: a few `stat` calls), reading and writing
//! notebooks, and one session per open notebook whose cells run on a
//! blocking thread, one at a time, each answered as soon as it is done.
//! Stop cancels the cell running and drops those queued.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::backend::Update;
use super::notebook_out::{output_views, OutputView};
use crate::analytics::{Analytics, Filters};
use crate::notebook::schedule::{self, RunRecord};
use crate::notebook::{self, Cell, Notebook, NotebookInfo, Session};

/// A file's size and modification time (what tells a change on disk).
pub type FileStamp = (u64, Option<SystemTime>);

/// The stamp of `path` now (`None`: it cannot be read).
pub fn file_stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()))
}

/// One notebook of the folder.
#[derive(Clone, Debug)]
pub struct NotebookEntry {
    /// The file.
    pub path: PathBuf,
    /// Its file name.
    pub file: String,
    /// What it holds, or why it cannot be read.
    pub info: Result<NotebookInfo, String>,
    /// Its stamp when listed.
    pub stamp: Option<FileStamp>,
    /// Its scheduled runs, newest first.
    pub history: Vec<RunRecord>,
}

/// The notebooks folder as last read.
#[derive(Clone, Debug, Default)]
pub struct NotebookCatalog {
    /// The folder (`None`: no notebooks folder is configured or present).
    pub dir: Option<PathBuf>,
    /// Its notebooks, by file name.
    pub entries: Vec<NotebookEntry>,
    /// Why the folder could not be read.
    pub error: Option<String>,
}

impl NotebookCatalog {
    /// The entry of `path`.
    pub fn get(&self, path: &Path) -> Option<&NotebookEntry> {
        self.entries.iter().find(|e| e.path == path)
    }
}

/// A notebook read for the panel.
#[derive(Clone, Debug)]
pub struct Opened {
    /// The document.
    pub nb: Notebook,
    /// Each cell's outputs, ready to draw (parallel to `nb.cells`).
    pub views: Vec<Vec<OutputView>>,
    /// The file's stamp when read.
    pub stamp: Option<FileStamp>,
}

/// One cell to run.
#[derive(Clone, Debug)]
pub struct CellJob {
    /// The cell's id.
    pub id: String,
    /// Its name in errors (`cell 3`).
    pub name: String,
    /// Its code.
    pub code: String,
}

/// What running one cell gave, ready to show.
#[derive(Clone, Debug)]
pub struct CellDone {
    /// Outputs, count, error and the frames behind tables.
    pub executed: notebook::run::Executed,
    /// The outputs, ready to draw.
    pub views: Vec<OutputView>,
}

/// Scans a folder's `.ipynb` files: a stamp of each (and of its runs
/// folder, so that a scheduled run shows).
type DirStamp = Vec<(PathBuf, Option<FileStamp>, Option<FileStamp>)>;

fn dir_stamp(dir: &Path) -> DirStamp {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: DirStamp = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ipynb"))
        .map(|p| {
            let runs = file_stamp(&schedule::runs_dir(&p));
            let s = file_stamp(&p);
            (p, s, runs)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn read_catalog(dir: Option<PathBuf>) -> NotebookCatalog {
    let Some(dir) = dir else {
        return NotebookCatalog::default();
    };
    if !dir.is_dir() {
        return NotebookCatalog {
            dir: Some(dir),
            ..Default::default()
        };
    }
    match notebook::list(&dir) {
        Ok(listed) => NotebookCatalog {
            entries: listed
                .into_iter()
                .map(|l| NotebookEntry {
                    file: l
                        .path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    stamp: file_stamp(&l.path),
                    history: schedule::history(&l.path),
                    path: l.path,
                    info: l.info,
                })
                .collect(),
            dir: Some(dir),
            error: None,
        },
        Err(e) => NotebookCatalog {
            dir: Some(dir),
            entries: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    }
}

/// Reads a notebook and makes its outputs' views (blocking).
pub fn open(path: &Path) -> Result<Opened, String> {
    let stamp = file_stamp(path);
    let nb = Notebook::load(path).map_err(|e| e.to_string())?;
    let views = nb
        .cells
        .iter()
        .map(|c| match c {
            Cell::Code(c) => output_views(&c.outputs),
            _ => Vec::new(),
        })
        .collect();
    Ok(Opened { nb, views, stamp })
}

/// A file name for a new notebook typed as `typed` (letters, digits, `_`).
pub fn notebook_file_name(typed: &str) -> Option<String> {
    let stem = super::scripting::file_name(typed.trim().trim_end_matches(".ipynb"))?;
    Some(format!("{}.ipynb", stem.trim_end_matches(".rhai")))
}

/// The backend's notebook state.
pub(crate) struct NotebookDesk {
    dir: Option<PathBuf>,
    stamp: DirStamp,
    catalog: Arc<NotebookCatalog>,
    sessions: HashMap<PathBuf, Arc<Mutex<Session>>>,
    /// Per notebook: cancel flags of its runs in flight, and the last run
    /// (the next waits for it, so that cells run in the order asked).
    running: HashMap<PathBuf, Runs>,
}

/// A notebook's runs in flight.
#[derive(Default)]
struct Runs {
    cancels: Vec<Arc<AtomicBool>>,
    last: Option<tokio::task::JoinHandle<()>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("the worker thread failed: {e}")))
}

impl NotebookDesk {
    /// The desk over `dir`; sends the folder as read.
    pub(crate) async fn open(dir: Option<PathBuf>, out: &impl Fn(Update)) -> Self {
        // Absolute, so that every path the panel holds is (reports open
        // by a file:// URL).
        let dir = dir.map(|d| std::path::absolute(&d).unwrap_or(d));
        let mut desk = Self {
            dir,
            stamp: Vec::new(),
            catalog: Arc::new(NotebookCatalog::default()),
            sessions: HashMap::new(),
            running: HashMap::new(),
        };
        desk.rescan(out).await;
        desk
    }

    /// Whether the folder changed since it was last read.
    pub(crate) fn changed_on_disk(&self) -> bool {
        self.dir.as_deref().map(dir_stamp).unwrap_or_default() != self.stamp
    }

    /// Rereads the folder and sends it.
    pub(crate) async fn rescan(&mut self, out: &impl Fn(Update)) {
        let dir = self.dir.clone();
        let (stamp, catalog) = tokio::task::spawn_blocking(move || {
            let stamp = dir.as_deref().map(dir_stamp).unwrap_or_default();
            (stamp, read_catalog(dir))
        })
        .await
        .unwrap_or_else(|e| {
            (
                Vec::new(),
                NotebookCatalog {
                    dir: self.dir.clone(),
                    entries: Vec::new(),
                    error: Some(format!("reading the folder failed: {e}")),
                },
            )
        });
        self.stamp = stamp;
        self.catalog = Arc::new(catalog);
        out(Update::Notebooks(Arc::clone(&self.catalog)));
    }

    /// `path` if it is a notebook file directly in the folder.
    fn inside(&self, path: &Path) -> Result<PathBuf, String> {
        let dir = self
            .dir
            .as_deref()
            .ok_or_else(|| "no notebooks folder (set SALESPULSE_NOTEBOOKS)".to_owned())?;
        let plain = path
            .file_name()
            .is_some_and(|f| Path::new(f).components().count() == 1);
        if path.parent() != Some(dir) || !plain || path.extension().is_none_or(|x| x != "ipynb") {
            return Err(format!(
                "{}: notebooks are NAME.ipynb files in {}",
                path.display(),
                dir.display()
            ));
        }
        Ok(path.to_owned())
    }

    /// Reads a notebook for the panel.
    pub(crate) async fn load(&self, path: PathBuf, out: &impl Fn(Update)) {
        let result = match self.inside(&path) {
            Ok(p) => blocking(move || open(&p).map(Box::new)).await,
            Err(e) => Err(e),
        };
        out(Update::NotebookOpened { path, result });
    }

    /// Writes a notebook (outputs included) and rescans.
    pub(crate) async fn save(
        &mut self,
        path: PathBuf,
        mut nb: Box<Notebook>,
        out: &impl Fn(Update),
    ) {
        let result = match self.inside(&path) {
            Ok(p) => {
                blocking(move || {
                    nb.set_kernel();
                    nb.save(&p).map_err(|e| e.to_string())?;
                    Ok(file_stamp(&p))
                })
                .await
            }
            Err(e) => Err(e),
        };
        out(Update::NotebookSaved { path, result });
        self.rescan(out).await;
    }

    /// Makes a new notebook named `typed` (never over an existing file).
    pub(crate) async fn create(&mut self, typed: String, out: &impl Fn(Update)) {
        let result = match (&self.dir, notebook_file_name(&typed)) {
            (None, _) => Err("no notebooks folder (set SALESPULSE_NOTEBOOKS)".to_owned()),
            (_, None) => Err(format!("{typed:?} is not a usable file name")),
            (Some(dir), Some(file)) => {
                let path = dir.join(&file);
                let title = typed.trim().trim_end_matches(".ipynb").to_owned();
                let dir = dir.clone();
                blocking(move || {
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    if path.exists() {
                        return Err(format!("{file} exists already"));
                    }
                    let mut nb = Notebook::new();
                    nb.cells.push(Cell::markdown(format!("# {title}")));
                    nb.cells
                        .push(Cell::code("let k = view(\"kpis\", #{ last: \"7d\" });\nk"));
                    nb.set_kernel();
                    nb.save(&path).map_err(|e| e.to_string())?;
                    Ok(path)
                })
                .await
            }
        };
        out(Update::NotebookCreated(result));
        self.rescan(out).await;
    }

    /// Writes the report of `nb` to `.reports/NAME.html` in the folder.
    pub(crate) async fn report(&self, path: PathBuf, nb: Box<Notebook>, out: &impl Fn(Update)) {
        let result = match self.inside(&path) {
            Ok(p) => {
                blocking(move || {
                    let dir = p
                        .parent()
                        .unwrap_or_else(|| Path::new("."))
                        .join(".reports");
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    let stem = p.file_stem().map_or_else(
                        || "notebook".to_owned(),
                        |s| s.to_string_lossy().into_owned(),
                    );
                    let sub = format!(
                        "{stem}.ipynb · from the app, {} UTC",
                        chrono::Utc::now().format("%Y-%m-%d %H:%M")
                    );
                    let html = notebook::report::html_report(&nb, &nb.title(&stem), &sub);
                    let file = dir.join(format!("{stem}.html"));
                    write_private(&file, html.as_bytes())?;
                    Ok(file)
                })
                .await
            }
            Err(e) => Err(e),
        };
        out(Update::NotebookReport(result));
    }

    /// Runs `cells` in order in the session of `path` (a new one when
    /// `fresh`), each answered as done; stops at the first failure or when
    /// stopped.
    pub(crate) async fn run(
        &mut self,
        seq: u64,
        path: PathBuf,
        cells: Vec<CellJob>,
        fresh: bool,
        source: Result<Arc<dyn crate::script::frames::FrameSource>, String>,
        out: impl Fn(Update) + Send + 'static,
    ) {
        let runs = self.running.entry(path.clone()).or_default();
        runs.cancels.retain(|c| Arc::strong_count(c) > 1);
        let cancel = Arc::new(AtomicBool::new(false));
        runs.cancels.push(Arc::clone(&cancel));
        let before = runs.last.take();
        if fresh {
            self.sessions.remove(&path);
        }
        let session = Arc::clone(
            self.sessions
                .entry(path.clone())
                .or_insert_with(|| Arc::new(Mutex::new(Session::new(None)))),
        );
        let source = match source {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("notebook cells run without data: {e}");
                None
            }
        };
        let work = move || {
            let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
            s.keep_frames(true);
            s.set_source(source);
            let mut stopped = false;
            for job in cells {
                if cancel.load(Ordering::Relaxed) {
                    stopped = true;
                    break;
                }
                out(Update::NotebookCellStarted {
                    seq,
                    path: path.clone(),
                    id: job.id.clone(),
                });
                let executed = s.execute(&job.name, &job.code, Some(&cancel));
                let failed = executed.error.is_some();
                let views = output_views(&executed.outputs);
                out(Update::NotebookCell {
                    seq,
                    path: path.clone(),
                    id: job.id,
                    done: Box::new(CellDone { executed, views }),
                });
                if failed {
                    stopped = cancel.load(Ordering::Relaxed);
                    break;
                }
            }
            out(Update::NotebookRunEnded { seq, path, stopped });
        };
        let handle = tokio::spawn(async move {
            // Runs of one notebook go one after the other, in the order asked.
            if let Some(b) = before {
                let _ = b.await;
            }
            if let Err(e) = tokio::task::spawn_blocking(work).await {
                tracing::error!("a notebook run failed: {e}");
            }
        });
        runs.last = Some(handle);
    }

    /// Stops the cell of `path` running and drops its queued ones.
    pub(crate) fn stop(&mut self, path: &Path) {
        if let Some(r) = self.running.get_mut(path) {
            for c in r.cancels.drain(..) {
                c.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Stops every notebook's cells (the backend is ending).
    pub(crate) fn stop_all(&mut self) {
        for r in self.running.values_mut() {
            for c in r.cancels.drain(..) {
                c.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Forgets the session of `path` (its variables go).
    pub(crate) fn restart(&mut self, path: &Path) {
        self.stop(path);
        self.sessions.remove(path);
    }
}

impl Drop for NotebookDesk {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Writes `bytes` to `path` readable by its owner only, through a
/// temporary file beside it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    tmp.1
        .write_all(bytes)
        .and_then(|()| tmp.1.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.0.display()))?;
    std::fs::rename(&tmp.0, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        format!("{}: {e}", path.display())
    })
}

fn tempfile_in(dir: &Path) -> Result<(PathBuf, std::fs::File), String> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let p = dir.join(format!(".report-{}.tmp", uuid::Uuid::new_v4().simple()));
    let f = o.open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok((p, f))
}

/// The frame source for a run under `filters` (or why there is none).
pub(crate) async fn source_for(
    a: &Analytics,
    filters: &Filters,
) -> Result<Arc<dyn crate::script::frames::FrameSource>, String> {
    a.frame_source(filters).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn reports_are_written_for_their_owner_only_and_replace_the_old_one() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.html");
        std::fs::write(&file, "old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn new_notebook_names_are_plain_file_names() {
        assert_eq!(
            notebook_file_name("Weekly review").as_deref(),
            Some("weekly_review.ipynb")
        );
        assert_eq!(notebook_file_name("q3.ipynb").as_deref(), Some("q3.ipynb"));
        assert_eq!(
            notebook_file_name("../../etc/passwd").as_deref(),
            Some("etcpasswd.ipynb")
        );
        assert_eq!(notebook_file_name("  "), None);
    }
}
