//! The Notebooks panel: the notebooks folder on the left (with each
//! notebook's schedule and its kept runs), the open notebook's cells on
//! the right: code in the Rhai editor (highlighting, line numbers, the
//! error at its line), markdown rendered, outputs inline (tables sortable
//! and exportable, charts with hover and zoom, KPI cards). Run cell
//! (Shift+Enter runs and moves on, Ctrl+Enter runs in place), run all (in
//! a fresh session, as `notebook run` does), stop, add/move/delete cells,
//! save (Ctrl+S, outputs included), reload on a change on disk and open as
//! an HTML report.
//!
//! Nothing here touches the disk or runs a cell: the backend reads and
//! writes notebooks and runs cells on a blocking thread
//! ([`super::notebook_desk`]); the panel sends commands and shows answers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use egui::{Key, KeyboardShortcut, Modifiers, RichText, Ui};
use polars::prelude::DataFrame;

use super::backend::Command;
use super::code::{self, HighlightCache};
use super::notebook_desk::{CellDone, CellJob, FileStamp, NotebookCatalog, Opened};
use super::notebook_out::{self as out, OutputView};
use super::widgets::{self, SortBy, AMBER, RED};
use super::App;
use crate::analytics::export::ExportFormat;
use crate::notebook::run::cell_name;
use crate::notebook::{Cell, Notebook};

/// Runs the selected cell and selects the next (Shift+Enter).
pub(crate) const RUN_NEXT: KeyboardShortcut = KeyboardShortcut::new(Modifiers::SHIFT, Key::Enter);

/// The new notebook name field's id.
const NEW_NAME_FIELD: &str = "notebook_new_name";
/// The export path field's id.
const EXPORT_PATH_FIELD: &str = "notebook_export_path";

/// Where a cell's run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellStatus {
    /// Not running.
    Idle,
    /// Waiting behind another cell (the run's tag).
    Queued(u64),
    /// Running now.
    Running,
}

/// The panel's state of one cell (parallel to the notebook's cells).
pub struct CellState {
    /// The cell's id.
    pub id: String,
    /// Its outputs, ready to draw.
    pub views: Vec<OutputView>,
    /// The whole frames behind its tables (by output index), from a run
    /// in this app: exports take all the rows, not only those shown.
    pub frames: HashMap<usize, Arc<DataFrame>>,
    /// Where its run stands.
    pub status: CellStatus,
    /// The line of its last error.
    pub error_line: Option<usize>,
    /// How long its last run in the app took.
    pub elapsed: Option<Duration>,
    /// A markdown cell being edited (else rendered).
    pub editing: bool,
    highlight: HighlightCache,
    /// Sorted tables: output index → the sort and the row order.
    sorts: HashMap<usize, (SortBy, Vec<usize>)>,
}

impl CellState {
    fn new(cell: &Cell, views: Vec<OutputView>) -> Self {
        let error_line = views.iter().find_map(|v| match v {
            OutputView::Error(t) => error_line_of(t),
            _ => None,
        });
        Self {
            id: cell.id().to_owned(),
            views,
            frames: HashMap::new(),
            status: CellStatus::Idle,
            error_line,
            elapsed: None,
            editing: matches!(cell, Cell::Markdown(_)) && cell.source().trim().is_empty(),
            highlight: None,
            sorts: HashMap::new(),
        }
    }
}

/// The line of an error's traceback (`cell 3, line 2, column 5:`).
fn error_line_of(traceback: &str) -> Option<usize> {
    let first = traceback.lines().next()?;
    let rest = first.split(", line ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The notebook open in the panel.
pub struct OpenNotebook {
    /// Its file.
    pub path: PathBuf,
    /// The document as edited (outputs included).
    pub nb: Notebook,
    /// The panel's state of each cell.
    pub cells: Vec<CellState>,
    /// The stamp of the file version this was read from or saved as.
    pub stamp: Option<FileStamp>,
    edits: u64,
    saved_edits: u64,
    /// The selected cell.
    pub selected: usize,
    /// Runs in flight (their tags).
    pub runs: Vec<u64>,
    /// The file changed on disk while this had unsaved edits.
    pub disk_changed: bool,
    /// A save in flight (the edit count it writes).
    pub saving: Option<u64>,
    /// A reload asked because the file changed (the edit count then): it
    /// replaces the notebook only if nothing changed here since.
    reload_for: Option<u64>,
    deleted: Option<(usize, Cell, CellState)>,
}

impl OpenNotebook {
    fn from_opened(path: PathBuf, o: Opened) -> Self {
        let Opened { nb, views, stamp } = o;
        let mut views = views.into_iter();
        let cells = nb
            .cells
            .iter()
            .map(|c| CellState::new(c, views.next().unwrap_or_default()))
            .collect();
        Self {
            path,
            nb,
            cells,
            stamp,
            edits: 0,
            saved_edits: 0,
            selected: 0,
            runs: Vec::new(),
            disk_changed: false,
            saving: None,
            reload_for: None,
            deleted: None,
        }
    }

    /// Whether it has edits (or outputs) not saved.
    pub fn dirty(&self) -> bool {
        self.edits != self.saved_edits
    }

    /// Whether cells are running or queued.
    pub fn running(&self) -> bool {
        !self.runs.is_empty()
    }

    fn edited(&mut self) {
        self.edits += 1;
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.cells.iter().position(|c| c.id == id)
    }

    /// The file name.
    pub fn file(&self) -> String {
        self.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn stem(&self) -> String {
        self.path
            .file_stem()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "notebook".into())
    }
}

/// What the Notebooks panel holds.
#[derive(Default)]
pub struct NotebooksState {
    /// The notebooks folder as last read by the backend.
    pub catalog: Option<Arc<NotebookCatalog>>,
    /// The notebook open.
    pub open: Option<OpenNotebook>,
    /// Notebooks with unsaved edits that are not open now.
    parked: BTreeMap<PathBuf, OpenNotebook>,
    /// A notebook asked of the backend and not read yet.
    pub loading: Option<PathBuf>,
    /// The name typed for a new notebook.
    pub new_name: String,
    /// Table sorts asked of the backend: tag → (cell id, output, sort,
    /// the table sorted).
    sorts: HashMap<u64, (String, usize, SortBy, Arc<super::model::TableData>)>,
    /// The table whose export form is open: (cell id, output).
    export_for: Option<(String, usize)>,
    /// Where the export goes.
    pub export_path: String,
    /// CSV or Parquet.
    pub export_format: Option<ExportFormat>,
    /// An export is in flight.
    pub exporting: bool,
    /// The last export: what was written, or why not.
    pub export_result: Option<Result<String, String>>,
    /// The last report written, or why not.
    pub report: Option<Result<PathBuf, String>>,
    /// A file to show in the browser on the next frame.
    open_url: Option<String>,
    /// Run every cell once this notebook is open (`SALESPULSE_NOTEBOOK`).
    pub(crate) startup: Option<(String, bool)>,
    /// Textures of image outputs: image id → texture and the frame it
    /// was last drawn in.
    textures: HashMap<u64, (egui::TextureHandle, u64)>,
    frame: u64,
}

/// Something a click or a key asked for, applied after drawing.
enum Act {
    Select(usize),
    Edited,
    Run(usize, bool),
    RunAll,
    Move(usize, bool),
    Delete(usize),
    Insert(usize, bool),
    Sort(usize, usize, SortBy),
    ExportForm(usize, usize),
    Export(usize, usize),
    Undo,
}

impl NotebooksState {
    /// A new folder from the backend: the open notebook follows its file
    /// unless it has unsaved edits (then the panel says so).
    pub(crate) fn set_catalog(&mut self, c: Arc<NotebookCatalog>) -> Option<PathBuf> {
        self.catalog = Some(Arc::clone(&c));
        let open = self.open.as_mut()?;
        if open.saving.is_some() {
            return None;
        }
        let now = c.get(&open.path).and_then(|e| e.stamp);
        if now.is_none() || now == open.stamp {
            return None;
        }
        if open.dirty() || open.running() {
            open.disk_changed = true;
            None
        } else {
            open.reload_for = Some(open.edits);
            Some(open.path.clone())
        }
    }

    /// A notebook read: opened (parking the one open if it has unsaved
    /// edits or runs), or reloaded keeping the selection (an automatic
    /// reload only if nothing changed here since it was asked).
    pub(crate) fn apply_opened(&mut self, path: PathBuf, o: Opened) {
        let asked = self.loading.as_ref() == Some(&path);
        let reload = self.open.as_ref().is_some_and(|n| n.path == path);
        if !asked && !reload {
            return;
        }
        self.loading = None;
        let mut n = OpenNotebook::from_opened(path, o);
        if let Some(old) = self.open.take() {
            if old.path == n.path {
                if !asked && old.reload_for != Some(old.edits) {
                    // Edited (or a cell ran) since the reload was asked.
                    let mut old = old;
                    old.reload_for = None;
                    old.disk_changed = true;
                    self.open = Some(old);
                    return;
                }
                n.selected = old.selected.min(n.cells.len().saturating_sub(1));
                n.runs = old.runs;
            } else if old.dirty() || old.running() {
                self.parked.insert(old.path.clone(), old);
            }
        }
        self.open = Some(n);
    }

    /// The open or parked notebook of `path`.
    fn notebook_mut(&mut self, path: &Path) -> Option<&mut OpenNotebook> {
        match self.open.as_mut() {
            Some(n) if n.path == path => Some(n),
            _ => self.parked.get_mut(path),
        }
    }

    /// Clears what waited for the backend that went away (reconnect).
    pub(crate) fn reset_in_flight(&mut self) {
        self.loading = None;
        self.exporting = false;
        self.sorts.clear();
        for n in self.open.iter_mut().chain(self.parked.values_mut()) {
            n.runs.clear();
            n.saving = None;
            n.reload_for = None;
            for c in &mut n.cells {
                c.status = CellStatus::Idle;
            }
        }
    }

    /// A cell started running.
    pub(crate) fn apply_started(&mut self, path: &Path, id: &str) {
        if let Some(n) = self.notebook_mut(path) {
            if let Some(c) = n.index_of(id).and_then(|i| n.cells.get_mut(i)) {
                c.status = CellStatus::Running;
            }
        }
    }

    /// A cell ran: its outputs replace the old ones.
    pub(crate) fn apply_cell(&mut self, path: &Path, id: &str, done: CellDone) {
        let Some(n) = self.notebook_mut(path) else {
            return;
        };
        let Some(i) = n.index_of(id) else { return };
        let CellDone { executed, views } = done;
        if let (Some(Cell::Code(c)), Some(s)) = (n.nb.cells.get_mut(i), n.cells.get_mut(i)) {
            c.execution_count = Some(executed.count);
            c.outputs = executed.outputs;
            s.views = views;
            s.frames = executed.frames.into_iter().collect();
            s.sorts.clear();
            s.status = CellStatus::Idle;
            s.error_line = executed.error.as_ref().and_then(|e| e.line);
            s.elapsed = Some(executed.elapsed);
            n.edited();
        }
    }

    /// A run ended: cells it did not reach are no longer queued.
    pub(crate) fn apply_run_ended(&mut self, path: &Path, seq: u64) {
        if let Some(n) = self.notebook_mut(path) {
            n.runs.retain(|s| *s != seq);
            let idle = n.runs.is_empty();
            for c in &mut n.cells {
                if c.status == CellStatus::Queued(seq) || (c.status == CellStatus::Running && idle)
                {
                    c.status = CellStatus::Idle;
                }
            }
        }
        let done = self
            .parked
            .get(path)
            .is_some_and(|n| !n.dirty() && !n.running());
        if done {
            self.parked.remove(path);
        }
    }

    /// A save ended.
    pub(crate) fn apply_saved(&mut self, path: &Path, result: &Result<Option<FileStamp>, String>) {
        let n = match self.open.as_mut() {
            Some(n) if n.path == path => n,
            _ => match self.parked.get_mut(path) {
                Some(n) => n,
                None => return,
            },
        };
        let wrote = n.saving.take();
        if let (Ok(stamp), Some(edits)) = (result, wrote) {
            n.saved_edits = edits;
            n.stamp = *stamp;
            n.disk_changed = false;
        }
        let done = !n.dirty() && !n.running();
        if done {
            self.parked.remove(path);
        }
    }

    /// The answer to a table sort, if it was ours.
    pub(crate) fn apply_sorted(&mut self, seq: u64, order: &[usize]) -> bool {
        let Some((id, k, sort, table)) = self.sorts.remove(&seq) else {
            return false;
        };
        if let Some(n) = self.open.as_mut() {
            if let Some(c) = n.index_of(&id).and_then(|i| n.cells.get_mut(i)) {
                // Only if the cell still shows the table that was sorted.
                let same = matches!(c.views.get(k),
                    Some(OutputView::Table { table: t, .. }) if Arc::ptr_eq(t, &table));
                if same {
                    c.sorts.insert(k, (sort, order.to_vec()));
                }
            }
        }
        true
    }

    /// A report was written: show it.
    pub(crate) fn apply_report(&mut self, r: Result<PathBuf, String>) {
        if let Ok(p) = &r {
            self.open_url = Some(file_url(p));
        }
        self.report = Some(r);
    }
}

/// A `file://` URL of `p` (absolute: the backend makes every path so).
fn file_url(p: &Path) -> String {
    let s = p.to_string_lossy().replace('\\', "/");
    let mut enc = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~:".contains(&b) {
            enc.push(char::from(b));
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    if enc.starts_with('/') {
        format!("file://{enc}")
    } else {
        format!("file:///{enc}")
    }
}

impl App {
    /// The Notebooks panel's state.
    pub fn notebooks(&self) -> &NotebooksState {
        &self.notebooks
    }

    /// The Notebooks panel's state, to change (tests and benches).
    pub fn notebooks_mut(&mut self) -> &mut NotebooksState {
        &mut self.notebooks
    }

    pub(super) fn notebooks_ui(&mut self, ui: &mut Ui) {
        if let Some(url) = self.notebooks.open_url.take() {
            ui.ctx().open_url(egui::OpenUrl::new_tab(url));
        }
        self.notebooks.frame += 1;
        let mut acts = Vec::new();
        // The run keys belong to the cells, not to the panel's own fields.
        let in_field = ui.memory(|m| m.focused()).is_some_and(|f| {
            f == egui::Id::unique(NEW_NAME_FIELD) || f == egui::Id::unique(EXPORT_PATH_FIELD)
        });
        if let (Some(n), false) = (&self.notebooks.open, in_field) {
            let sel = n.selected;
            if ui.input_mut(|i| i.consume_shortcut(&RUN_NEXT)) {
                acts.push(Act::Run(sel, true));
            }
            if ui.input_mut(|i| i.consume_shortcut(&super::editor::RUN)) {
                acts.push(Act::Run(sel, false));
            }
        }
        if self.notebooks.open.is_some()
            && ui.input_mut(|i| i.consume_shortcut(&super::editor::SAVE))
        {
            self.save_notebook();
        }
        egui::Panel::left("notebook_list")
            .resizable(true)
            .default_size(260.0)
            .show(ui, |ui| self.notebook_list_ui(ui));
        egui::CentralPanel::default_margins().show(ui, |ui| {
            if self.notebooks.open.is_none() {
                if self.notebooks.loading.is_some() {
                    ui.spinner();
                } else {
                    ui.label("Pick a notebook on the left, or make a new one.");
                }
                return;
            }
            self.notebook_toolbar_ui(ui, &mut acts);
            ui.separator();
            let Self {
                notebooks: state, ..
            } = self;
            let Some(n) = state.open.as_mut() else { return };
            egui::ScrollArea::vertical()
                .id_salt(("notebook_cells", n.path.clone()))
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    let mut images = Images {
                        textures: &mut state.textures,
                        frame: state.frame,
                    };
                    cells_ui(ui, n, &mut images, state.export_for.as_ref(), &mut acts);
                });
        });
        // Textures of images no longer shown go.
        let frame = self.notebooks.frame;
        self.notebooks
            .textures
            .retain(|_, (_, seen)| *seen == frame);
        for a in acts {
            self.apply_act(a);
        }
    }

    fn notebook_list_ui(&mut self, ui: &mut Ui) {
        ui.set_min_width(220.0);
        let Some(c) = self.notebooks.catalog.clone() else {
            ui.spinner();
            return;
        };
        let Some(dir) = &c.dir else {
            ui.label(
                "No notebooks folder: set SALESPULSE_NOTEBOOKS (or notebooks_dir in the \
                 config), or start the app where a notebooks/ folder is.",
            );
            return;
        };
        ui.label(RichText::new(dir.display().to_string()).small().weak());
        if let Some(e) = &c.error {
            ui.colored_label(RED, e);
        }
        let open_path = self.notebooks.open.as_ref().map(|n| n.path.clone());
        let mut pick = None;
        egui::ScrollArea::vertical()
            .id_salt("notebook_list_scroll")
            .max_height((ui.available_height() - 260.0).max(120.0))
            .show(ui, |ui| {
                if c.entries.is_empty() {
                    ui.label(RichText::new("No notebooks yet.").weak());
                }
                for e in &c.entries {
                    let selected = open_path.as_ref() == Some(&e.path);
                    let edited = self.notebooks.parked.contains_key(&e.path)
                        || (selected && self.notebooks.open.as_ref().is_some_and(|n| n.dirty()));
                    let (title, tip, ok) = match &e.info {
                        Ok(i) => (
                            i.title.clone(),
                            format!(
                                "{}: {} code and {} markdown cells{}",
                                e.file,
                                i.cells.0,
                                i.cells.1,
                                if i.parameters.is_empty() {
                                    String::new()
                                } else {
                                    format!("; parameters {}", i.parameters.join(", "))
                                }
                            ),
                            true,
                        ),
                        Err(why) => (e.file.clone(), why.clone(), false),
                    };
                    let mut text =
                        RichText::new(format!("{title}{}", if edited { " *" } else { "" }));
                    if !ok {
                        text = text.color(RED);
                    }
                    if ui
                        .selectable_label(selected, text)
                        .on_hover_text(tip)
                        .clicked()
                    {
                        pick = Some(e.path.clone());
                    }
                    let mut line = e.file.clone();
                    if let Ok(i) = &e.info {
                        if let Some(s) = &i.schedule {
                            line.push_str(&format!(" · every {s}"));
                        }
                    }
                    if let Some(r) = e.history.first() {
                        line.push_str(&format!(
                            " · last run {} {}",
                            r.started.format("%m-%d %H:%M"),
                            if r.failed_cell.is_some() {
                                "failed"
                            } else {
                                "ok"
                            }
                        ));
                    }
                    ui.label(RichText::new(line).small().weak());
                    ui.add_space(2.0);
                }
            });
        if let Some(p) = pick {
            self.notebooks.startup = None;
            self.open_notebook(p);
        }
        ui.separator();
        ui.add(
            egui::TextEdit::singleline(&mut self.notebooks.new_name)
                .id(egui::Id::unique(NEW_NAME_FIELD))
                .hint_text("new notebook name")
                .desired_width(f32::INFINITY),
        );
        if ui.button("New notebook").clicked() {
            let name = self.notebooks.new_name.trim().to_owned();
            let name = if name.is_empty() {
                "untitled".to_owned()
            } else {
                name
            };
            self.notebooks.new_name.clear();
            self.send(Command::NewNotebook(name));
        }
        if let Some(path) = open_path {
            if let Some(e) = c.get(&path) {
                ui.separator();
                history_ui(ui, e, &mut self.notebooks.open_url);
            }
        }
    }

    /// Opens `path`, keeping the unsaved edits of the one open now.
    pub fn open_notebook(&mut self, path: PathBuf) {
        if self.notebooks.open.as_ref().is_some_and(|n| n.path == path) {
            return;
        }
        if let Some(cur) = self.notebooks.open.take() {
            if cur.dirty() || cur.running() {
                self.notebooks.parked.insert(cur.path.clone(), cur);
            }
        }
        self.notebooks.export_for = None;
        if let Some(mut n) = self.notebooks.parked.remove(&path) {
            // A change on disk while it was parked is said now.
            let now = self
                .notebooks
                .catalog
                .as_ref()
                .and_then(|c| c.get(&path))
                .and_then(|e| e.stamp);
            if now.is_some() && now != n.stamp && n.saving.is_none() {
                n.disk_changed = true;
            }
            self.notebooks.loading = None;
            self.notebooks.open = Some(n);
            return;
        }
        self.notebooks.loading = Some(path.clone());
        self.send(Command::OpenNotebook(path));
    }

    fn notebook_toolbar_ui(&mut self, ui: &mut Ui, acts: &mut Vec<Act>) {
        let Some(n) = &self.notebooks.open else {
            return;
        };
        let (path, file, running, dirty, saving) = (
            n.path.clone(),
            n.file(),
            n.running(),
            n.dirty(),
            n.saving.is_some(),
        );
        let queued = n
            .cells
            .iter()
            .filter(|c| matches!(c.status, CellStatus::Queued(_)))
            .count();
        let at = n
            .cells
            .iter()
            .position(|c| c.status == CellStatus::Running)
            .map(cell_name);
        let mut send = Vec::new();
        let (mut save, mut report) = (false, false);
        ui.horizontal(|ui| {
            ui.label(RichText::new(&file).monospace().strong());
            ui.separator();
            if ui
                .add_enabled(!running, egui::Button::new("Run all"))
                .on_hover_text("Every code cell in order, in a fresh session")
                .clicked()
            {
                acts.push(Act::RunAll);
            }
            if ui
                .add_enabled(running, egui::Button::new("Stop"))
                .on_hover_text("Stop the cell running; the queued ones do not run")
                .clicked()
            {
                send.push(Command::StopCells(path.clone()));
            }
            if ui
                .button("Restart")
                .on_hover_text("A fresh session: the variables go, outputs stay")
                .clicked()
            {
                send.push(Command::RestartNotebook(path.clone()));
            }
            save = ui
                .add_enabled(dirty && !saving, egui::Button::new("Save"))
                .on_hover_text("Ctrl+S: the cells and their outputs")
                .clicked();
            if ui
                .add_enabled(!running, egui::Button::new("Revert"))
                .on_hover_text("Read the file again (unsaved edits are lost)")
                .clicked()
            {
                send.push(Command::OpenNotebook(path.clone()));
            }
            report = ui
                .button("HTML report")
                .on_hover_text("Write a self-contained report of what is shown and open it")
                .clicked();
            if dirty {
                ui.label(RichText::new("modified").weak());
            }
            if running {
                ui.separator();
                ui.spinner();
                ui.label(match at {
                    Some(at) => format!("running {at}, {queued} queued"),
                    None => format!("{queued} queued"),
                });
            }
        });
        for c in send {
            if let Command::OpenNotebook(p) = &c {
                self.notebooks.loading = Some(p.clone());
            }
            self.send(c);
        }
        if save {
            self.save_notebook();
        }
        if report {
            if let Some(n) = &self.notebooks.open {
                let notebook = Box::new(n.nb.clone());
                self.send(Command::NotebookReport {
                    path: path.clone(),
                    notebook,
                });
            }
        }
        if let Some(n) = &self.notebooks.open {
            if n.disk_changed {
                let path = n.path.clone();
                ui.horizontal(|ui| {
                    ui.colored_label(
                        AMBER,
                        "This notebook changed on disk while you were editing it.",
                    );
                    if ui.button("Load the disk version").clicked() {
                        self.notebooks.loading = Some(path.clone());
                        self.send(Command::OpenNotebook(path.clone()));
                    }
                    if ui.button("Keep mine").clicked() {
                        let stamp = self
                            .notebooks
                            .catalog
                            .as_ref()
                            .and_then(|c| c.get(&path))
                            .and_then(|e| e.stamp);
                        if let Some(n) = self.notebooks.open.as_mut() {
                            n.disk_changed = false;
                            n.stamp = stamp;
                        }
                    }
                });
            }
        }
        match &self.notebooks.report {
            Some(Ok(p)) => {
                ui.label(
                    RichText::new(format!("report written to {}", p.display()))
                        .small()
                        .weak(),
                );
            }
            Some(Err(e)) => {
                ui.colored_label(RED, format!("the report could not be written: {e}"));
            }
            None => {}
        }
        if self.notebooks.export_for.is_some() {
            self.notebook_export_ui(ui, acts);
        }
    }

    fn notebook_export_ui(&mut self, ui: &mut Ui, acts: &mut Vec<Act>) {
        let Some((id, k)) = self.notebooks.export_for.clone() else {
            return;
        };
        let Some(n) = &self.notebooks.open else {
            return;
        };
        let Some(i) = n.index_of(&id) else {
            self.notebooks.export_for = None;
            return;
        };
        let whole = n
            .cells
            .get(i)
            .and_then(|c| c.frames.get(&k))
            .map(|f| f.height());
        let (stem, file) = (n.stem(), n.file());
        let kept = n
            .cells
            .get(i)
            .and_then(|c| c.views.get(k))
            .and_then(|v| match v {
                OutputView::Table { table, total, .. } => Some((table.rows.len(), *total)),
                _ => None,
            });
        egui::Frame::group(ui.style()).show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label(format!("Export the table of {} in {file}", cell_name(i)));
                let fmt = self.notebooks.export_format.unwrap_or(ExportFormat::Csv);
                let mut f = fmt;
                ui.selectable_value(&mut f, ExportFormat::Csv, "CSV");
                ui.selectable_value(&mut f, ExportFormat::Parquet, "Parquet");
                if f != fmt || self.notebooks.export_path.is_empty() {
                    self.notebooks.export_format = Some(f);
                    let ext = if f == ExportFormat::Csv {
                        "csv"
                    } else {
                        "parquet"
                    };
                    self.notebooks.export_path = super::dirs_home()
                        .join(format!("salespulse-{stem}-cell{}.{ext}", i + 1))
                        .display()
                        .to_string();
                }
            });
            ui.horizontal(|ui| {
                ui.add(
                    egui::TextEdit::singleline(&mut self.notebooks.export_path)
                        .id(egui::Id::unique(EXPORT_PATH_FIELD))
                        .hint_text("file path")
                        .desired_width(360.0),
                );
                let can =
                    !self.notebooks.exporting && !self.notebooks.export_path.trim().is_empty();
                if ui.add_enabled(can, egui::Button::new("Export")).clicked() {
                    acts.push(Act::Export(i, k));
                }
                if ui.button("Close").clicked() {
                    self.notebooks.export_for = None;
                    self.notebooks.export_result = None;
                }
            });
            let what = match (whole, kept) {
                (Some(rows), _) => format!("all {rows} rows of the frame"),
                (None, Some((kept, total))) if kept < total => format!(
                    "the {kept} rows kept in the notebook (of {total}); run the cell for all"
                ),
                (None, Some((kept, _))) => format!("its {kept} rows"),
                _ => String::new(),
            };
            ui.label(RichText::new(what).small().weak());
            match &self.notebooks.export_result {
                Some(Ok(m)) => {
                    ui.label(RichText::new(m).small());
                }
                Some(Err(e)) => {
                    ui.colored_label(RED, format!("export failed: {e}"));
                }
                None => {}
            }
        });
    }

    /// Saves the open notebook (cells and outputs).
    pub fn save_notebook(&mut self) {
        let Some(n) = self.notebooks.open.as_mut() else {
            return;
        };
        if n.saving.is_some() {
            return;
        }
        n.saving = Some(n.edits);
        let (path, nb) = (n.path.clone(), Box::new(n.nb.clone()));
        self.send(Command::SaveNotebook { path, notebook: nb });
    }

    /// Runs every code cell of the open notebook in a fresh session.
    pub fn run_all_cells(&mut self) {
        self.apply_act(Act::RunAll);
    }

    fn run_cells(&mut self, indices: Vec<usize>, fresh: bool) {
        let seq = self.seq();
        let filters = self.settings.filters.clone();
        let Some(n) = self.notebooks.open.as_mut() else {
            return;
        };
        let mut cells = Vec::new();
        for i in indices {
            if let (Some(Cell::Code(c)), Some(s)) = (n.nb.cells.get(i), n.cells.get_mut(i)) {
                s.status = CellStatus::Queued(seq);
                cells.push(CellJob {
                    id: c.id.clone(),
                    name: cell_name(i),
                    code: c.source.clone(),
                });
            }
        }
        if cells.is_empty() {
            return;
        }
        n.runs.push(seq);
        let path = n.path.clone();
        self.send(Command::RunCells {
            seq,
            path,
            cells,
            fresh,
            filters,
        });
    }

    fn apply_act(&mut self, a: Act) {
        match a {
            Act::Select(i) => {
                if let Some(n) = self.notebooks.open.as_mut() {
                    n.selected = i.min(n.cells.len().saturating_sub(1));
                }
            }
            Act::Edited => {
                if let Some(n) = self.notebooks.open.as_mut() {
                    n.edited();
                }
            }
            Act::Run(i, advance) => {
                let Some(n) = self.notebooks.open.as_mut() else {
                    return;
                };
                let markdown = matches!(n.nb.cells.get(i), Some(Cell::Markdown(_)));
                if let (true, Some(s)) = (markdown, n.cells.get_mut(i)) {
                    s.editing = false;
                }
                if advance && i + 1 < n.cells.len() {
                    n.selected = i + 1;
                }
                if !markdown {
                    self.run_cells(vec![i], false);
                }
            }
            Act::RunAll => {
                let Some(n) = self.notebooks.open.as_mut() else {
                    return;
                };
                for (c, s) in n.nb.cells.iter_mut().zip(n.cells.iter_mut()) {
                    if let Cell::Code(c) = c {
                        c.outputs.clear();
                        c.execution_count = None;
                        s.views.clear();
                        s.frames.clear();
                        s.error_line = None;
                    }
                }
                n.edited();
                let all = (0..n.cells.len()).collect();
                self.notebooks.export_for = None;
                self.run_cells(all, true);
            }
            Act::Move(i, up) => {
                if let Some(n) = self.notebooks.open.as_mut() {
                    let j = if up { i.checked_sub(1) } else { Some(i + 1) };
                    if let Some(j) = j.filter(|j| *j < n.cells.len()) {
                        n.nb.cells.swap(i, j);
                        n.cells.swap(i, j);
                        n.selected = j;
                        n.edited();
                    }
                }
            }
            Act::Delete(i) => {
                if let Some(n) = self.notebooks.open.as_mut() {
                    if i < n.cells.len() {
                        let cell = n.nb.cells.remove(i);
                        let state = n.cells.remove(i);
                        n.deleted = Some((i, cell, state));
                        n.selected = i.min(n.cells.len().saturating_sub(1));
                        n.edited();
                    }
                }
            }
            Act::Insert(i, markdown) => {
                if let Some(n) = self.notebooks.open.as_mut() {
                    let at = (i + 1).min(n.cells.len());
                    let cell = if markdown {
                        Cell::markdown("")
                    } else {
                        Cell::code("")
                    };
                    let mut state = CellState::new(&cell, Vec::new());
                    state.editing = markdown;
                    n.nb.cells.insert(at, cell);
                    n.cells.insert(at, state);
                    n.selected = at;
                    n.edited();
                }
            }
            Act::Sort(i, k, sort) => {
                let Some(n) = self.notebooks.open.as_ref() else {
                    return;
                };
                let Some(c) = n.cells.get(i) else { return };
                if let Some(OutputView::Table { table, .. }) = c.views.get(k) {
                    let (table, id) = (Arc::clone(table), c.id.clone());
                    let seq = self.seq();
                    self.notebooks
                        .sorts
                        .insert(seq, (id, k, sort, Arc::clone(&table)));
                    self.send(Command::Sort { seq, table, sort });
                }
            }
            Act::ExportForm(i, k) => {
                let id = self
                    .notebooks
                    .open
                    .as_ref()
                    .and_then(|n| n.cells.get(i))
                    .map(|c| c.id.clone());
                if let Some(id) = id {
                    let target = Some((id, k));
                    if self.notebooks.export_for == target {
                        self.notebooks.export_for = None;
                    } else {
                        self.notebooks.export_for = target;
                        self.notebooks.export_path.clear();
                        self.notebooks.export_result = None;
                    }
                }
            }
            Act::Undo => self.undo_delete(),
            Act::Export(i, k) => {
                let Some(c) = self.notebooks.open.as_ref().and_then(|n| n.cells.get(i)) else {
                    return;
                };
                let path = PathBuf::from(self.notebooks.export_path.trim());
                let format = ExportFormat::from_path(&path)
                    .unwrap_or(self.notebooks.export_format.unwrap_or(ExportFormat::Csv));
                let cmd = match (c.frames.get(&k), c.views.get(k)) {
                    (Some(frame), _) => Command::ExportFrame {
                        frame: Arc::clone(frame),
                        path,
                        format,
                    },
                    (None, Some(OutputView::Table { resource, .. })) => Command::ExportTable {
                        resource: Arc::clone(resource),
                        path,
                        format,
                    },
                    _ => return,
                };
                self.notebooks.exporting = true;
                self.notebooks.export_result = None;
                self.send(cmd);
            }
        }
    }

    /// Undoes the last cell deletion.
    fn undo_delete(&mut self) {
        if let Some(n) = self.notebooks.open.as_mut() {
            if let Some((i, cell, mut state)) = n.deleted.take() {
                let live = match state.status {
                    CellStatus::Queued(seq) => n.runs.contains(&seq),
                    CellStatus::Running => n.running(),
                    CellStatus::Idle => true,
                };
                if !live {
                    state.status = CellStatus::Idle;
                }
                let at = i.min(n.cells.len());
                n.nb.cells.insert(at, cell);
                n.cells.insert(at, state);
                n.selected = at;
                n.edited();
            }
        }
    }

    /// What the environment asked for at start: open a notebook (and run
    /// it) once the folder is read.
    pub(crate) fn notebooks_startup(&mut self) {
        let Some((file, run)) = self.notebooks.startup.clone() else {
            return;
        };
        let Some(c) = self.notebooks.catalog.clone() else {
            return;
        };
        let Some(e) = c
            .entries
            .iter()
            .find(|e| e.file == file || e.path.ends_with(&file))
        else {
            tracing::warn!("SALESPULSE_NOTEBOOK={file:?}: no such notebook in the folder");
            self.notebooks.startup = None;
            return;
        };
        if self
            .notebooks
            .open
            .as_ref()
            .is_some_and(|n| n.path == e.path)
        {
            self.notebooks.startup = None;
            if run {
                self.run_all_cells();
            }
        } else if self.notebooks.loading.is_none() {
            self.open_notebook(e.path.clone());
        }
    }
}

/// The kept runs of a scheduled notebook, newest first.
fn history_ui(ui: &mut Ui, e: &super::notebook_desk::NotebookEntry, open_url: &mut Option<String>) {
    ui.label(RichText::new("Scheduled runs").strong());
    match e.info.as_ref().ok().and_then(|i| i.schedule.clone()) {
        Some(s) => ui.label(format!("every {s} (UTC), while the app or `run` is up")),
        None => ui.label(
            RichText::new(format!(
                "not scheduled: salespulse notebook schedule {} --every 1h",
                e.file
            ))
            .small()
            .weak(),
        ),
    };
    if e.history.is_empty() {
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("notebook_history")
        .max_height(180.0)
        .show(ui, |ui| {
            for r in e.history.iter().take(crate::notebook::schedule::KEEP_RUNS) {
                ui.horizontal(|ui| {
                    let what = match (&r.failed_cell, &r.error) {
                        (Some(c), _) => RichText::new(format!("cell {c} failed")).color(RED),
                        _ => RichText::new(format!("{} cells", r.executed)),
                    };
                    ui.label(
                        RichText::new(r.started.format("%Y-%m-%d %H:%M").to_string()).monospace(),
                    );
                    let l = ui.label(what);
                    if let Some(err) = &r.error {
                        l.on_hover_text(err);
                    }
                    ui.label(RichText::new(format!("{:.1} s", r.seconds)).small().weak());
                    if ui.small_button("Open").clicked() {
                        let p = crate::notebook::schedule::runs_dir(&e.path).join(&r.report);
                        *open_url = Some(file_url(&p));
                    }
                });
            }
        });
}

/// Every cell of `n`: the gutter (`[3]`, `[*]` running, `[ ]` queued), the
/// selected cell's tools, the code editor or the rendered markdown, and
/// the outputs.
/// Image textures, and the frame being drawn.
struct Images<'a> {
    textures: &'a mut HashMap<u64, (egui::TextureHandle, u64)>,
    frame: u64,
}

fn cells_ui(
    ui: &mut Ui,
    n: &mut OpenNotebook,
    textures: &mut Images<'_>,
    export_for: Option<&(String, usize)>,
    acts: &mut Vec<Act>,
) {
    let count = n.cells.len();
    if count == 0 {
        ui.label(RichText::new("This notebook has no cells.").weak());
    }
    for i in 0..count {
        let selected = n.selected == i;
        let stroke = if selected {
            ui.visuals().selection.stroke
        } else {
            ui.visuals().widgets.noninteractive.bg_stroke
        };
        let (Some(cell), Some(state)) = (n.nb.cells.get_mut(i), n.cells.get_mut(i)) else {
            continue;
        };
        egui::Frame::group(ui.style())
            .stroke(stroke)
            .show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.horizontal_top(|ui| {
                    let gutter = match (&*cell, state.status) {
                        (Cell::Code(_), CellStatus::Running) => "[*]".to_owned(),
                        (Cell::Code(_), CellStatus::Queued(_)) => "[…]".to_owned(),
                        (Cell::Code(c), CellStatus::Idle) => match c.execution_count {
                            Some(k) => format!("[{k}]"),
                            None => "[ ]".to_owned(),
                        },
                        _ => "   ".to_owned(),
                    };
                    if ui
                        .add(
                            egui::Button::new(RichText::new(format!("{gutter:>5}")).monospace())
                                .frame(false),
                        )
                        .on_hover_text(cell_name(i))
                        .clicked()
                    {
                        acts.push(Act::Select(i));
                    }
                    ui.vertical(|ui| {
                        if selected {
                            cell_tools_ui(ui, i, count, cell, state, acts);
                        }
                        match cell {
                            Cell::Code(c) => {
                                let r = code::editor_ui(
                                    ui,
                                    egui::Id::unique(("notebook_cell", &state.id)),
                                    &mut c.source,
                                    state.error_line,
                                    &mut state.highlight,
                                    None,
                                );
                                if r.changed() {
                                    acts.push(Act::Edited);
                                    acts.push(Act::Select(i));
                                }
                                if r.gained_focus() {
                                    acts.push(Act::Select(i));
                                }
                                if let Some(d) = state.elapsed {
                                    if d >= Duration::from_millis(500) {
                                        ui.label(
                                            RichText::new(format!("{:.1} s", d.as_secs_f64()))
                                                .small()
                                                .weak(),
                                        );
                                    }
                                }
                                outputs_ui(ui, i, state, textures, export_for, acts);
                            }
                            Cell::Markdown(t) | Cell::Raw(t) => {
                                if state.editing {
                                    let r = ui.add(
                                        egui::TextEdit::multiline(&mut t.source)
                                            .id(egui::Id::unique(("notebook_md", &state.id)))
                                            .desired_rows(2)
                                            .desired_width(f32::INFINITY)
                                            .hint_text("Markdown; Shift+Enter shows it"),
                                    );
                                    if r.changed() {
                                        acts.push(Act::Edited);
                                        acts.push(Act::Select(i));
                                    }
                                    if r.gained_focus() {
                                        acts.push(Act::Select(i));
                                    }
                                } else {
                                    let r = ui
                                        .scope(|ui| out::markdown_ui(ui, &t.source))
                                        .response
                                        .interact(egui::Sense::click());
                                    if r.double_clicked() {
                                        state.editing = true;
                                    } else if r.clicked() {
                                        acts.push(Act::Select(i));
                                    }
                                }
                            }
                        }
                    });
                });
            });
    }
    ui.horizontal(|ui| {
        if ui.button("+ Code").clicked() {
            acts.push(Act::Insert(count.saturating_sub(1), false));
        }
        if ui.button("+ Markdown").clicked() {
            acts.push(Act::Insert(count.saturating_sub(1), true));
        }
        if n.deleted.is_some() && ui.button("Undo delete").clicked() {
            acts.push(Act::Undo);
        }
    });
}

/// The selected cell's tools.
fn cell_tools_ui(
    ui: &mut Ui,
    i: usize,
    count: usize,
    cell: &Cell,
    state: &mut CellState,
    acts: &mut Vec<Act>,
) {
    ui.horizontal(|ui| {
        match cell {
            Cell::Code(_) => {
                if ui
                    .small_button("Run cell")
                    .on_hover_text("Shift+Enter: run and go to the next cell; Ctrl+Enter: run here")
                    .clicked()
                {
                    acts.push(Act::Run(i, false));
                }
            }
            _ => {
                let label = if state.editing { "Done" } else { "Edit" };
                if ui.small_button(label).clicked() {
                    state.editing = !state.editing;
                }
            }
        }
        if ui
            .add_enabled(i > 0, egui::Button::new("Move up").small())
            .clicked()
        {
            acts.push(Act::Move(i, true));
        }
        if ui
            .add_enabled(i + 1 < count, egui::Button::new("Move down").small())
            .clicked()
        {
            acts.push(Act::Move(i, false));
        }
        if ui.small_button("Add code below").clicked() {
            acts.push(Act::Insert(i, false));
        }
        if ui.small_button("Add markdown below").clicked() {
            acts.push(Act::Insert(i, true));
        }
        if ui.small_button("Delete cell").clicked() {
            acts.push(Act::Delete(i));
        }
    });
}

/// A cell's outputs: KPI cards side by side, then the rest in order.
fn outputs_ui(
    ui: &mut Ui,
    i: usize,
    state: &CellState,
    textures: &mut Images<'_>,
    export_for: Option<&(String, usize)>,
    acts: &mut Vec<Act>,
) {
    let views = &state.views;
    let mut k = 0;
    while let Some(v) = views.get(k) {
        if matches!(v, OutputView::Kpi { .. }) {
            ui.horizontal_wrapped(|ui| {
                while let Some(OutputView::Kpi {
                    label,
                    shown,
                    exact,
                }) = views.get(k)
                {
                    out::kpi_ui(ui, label, shown, exact);
                    k += 1;
                }
            });
            continue;
        }
        match v {
            OutputView::Text { text, stderr } => out::stream_ui(ui, text, *stderr),
            OutputView::Error(t) => out::error_ui(ui, t),
            OutputView::Markdown(t) => out::markdown_ui(ui, t),
            OutputView::Chart(spec) => {
                out::chart_ui(ui, egui::Id::unique(("notebook_chart", &state.id, k)), spec)
            }
            OutputView::Image { id, image, alt } => {
                let frame = textures.frame;
                let (tex, seen) = textures.textures.entry(*id).or_insert_with(|| {
                    let t = ui.ctx().load_texture(
                        format!("notebook_image_{id}"),
                        (**image).clone(),
                        egui::TextureOptions::LINEAR,
                    );
                    (t, frame)
                });
                *seen = frame;
                let size = tex.size_vec2();
                let w = size.x.min(ui.available_width());
                let scale = if size.x > 0.0 { w / size.x } else { 1.0 };
                ui.add(egui::Image::new((tex.id(), size * scale)))
                    .on_hover_text(alt);
            }
            OutputView::Table { table, total, .. } => {
                let sorted = state.sorts.get(&k);
                let clicked = widgets::table_ui(
                    ui,
                    &format!("notebook_table_{}_{k}", state.id),
                    table,
                    sorted.map(|(_, o)| o.as_slice()),
                    sorted.map(|(s, _)| *s),
                    300.0,
                );
                if let Some(s) = clicked {
                    acts.push(Act::Sort(i, k, s));
                }
                ui.horizontal(|ui| {
                    let shown = table.rows.len();
                    let cols = table.columns.len();
                    let kept = if shown < *total {
                        format!("{shown} of {total} rows × {cols} columns")
                    } else {
                        format!("{total} rows × {cols} columns")
                    };
                    ui.label(RichText::new(kept).small().weak());
                    let open = export_for.is_some_and(|(id, kk)| *id == state.id && *kk == k);
                    let label = if open {
                        "Export (open above)"
                    } else {
                        "Export…"
                    };
                    if ui.small_button(label).clicked() {
                        acts.push(Act::ExportForm(i, k));
                    }
                });
            }
            OutputView::Kpi { .. } => {}
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_traceback_gives_its_line() {
        assert_eq!(
            error_line_of("cell 3, line 2, column 5:\n    x\n    ^\nboom"),
            Some(2)
        );
        assert_eq!(error_line_of("cell 3, line 14:\nboom"), Some(14));
        assert_eq!(error_line_of("cell 3:\nboom"), None);
    }
}
