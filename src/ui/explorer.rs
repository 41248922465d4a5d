//! The data explorer: any view, or raw transactions, as a sortable table,
//! exportable to CSV or Parquet.

use std::path::PathBuf;
use std::sync::Arc;

use egui::{RichText, Ui};

use super::backend::{Command, Explored};
use super::model::{count, TableData};
use super::widgets::{self, SortBy};
use super::App;
use crate::analytics::export::ExportFormat;
use crate::analytics::{ViewKind, ViewRequest};

/// What the explorer shows and does.
#[derive(Default)]
pub struct ExplorerState {
    /// The view shown (`None` = raw transactions).
    pub view: Option<ViewKind>,
    /// Rows asked for.
    pub limit: u64,
    /// The rows shown.
    pub table: Option<Arc<TableData>>,
    /// Row order when sorted (indices into `table`).
    pub order: Option<Vec<usize>>,
    /// The sort in effect.
    pub sort: Option<SortBy>,
    /// The sort asked of the backend and not answered yet.
    pub sorting: Option<u64>,
    /// The load asked of the backend and not answered yet.
    pub pending: Option<u64>,
    /// Why the last load failed.
    pub error: Option<String>,
    /// Where to export.
    pub export_path: String,
    /// The export format (`None` = from the file's extension).
    pub export_format: Option<ExportFormat>,
    /// Export every row of the view, not only those shown.
    pub export_all: bool,
    /// Rows written and in all, while an export runs.
    pub export_progress: Option<(u64, Option<u64>)>,
    /// The last export: what was written, or why not.
    pub export_result: Option<Result<String, String>>,
}

impl ExplorerState {
    /// Takes the answer to the load asked last; older answers are dropped.
    pub(super) fn apply_explored(&mut self, seq: u64, result: Result<Explored, String>) {
        if self.pending != Some(seq) {
            return;
        }
        self.pending = None;
        match result {
            Ok(e) => {
                self.sort = e.order.as_ref().map(|(s, _)| *s);
                self.order = e.order.map(|(_, o)| o);
                self.table = Some(e.table);
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Takes the row order of the sort asked last.
    pub(super) fn apply_sorted(&mut self, seq: u64, sort: SortBy, order: Vec<usize>) {
        if self.sorting == Some(seq) {
            self.sorting = None;
            self.sort = Some(sort);
            self.order = Some(order);
        }
    }
}

impl App {
    fn explorer_request(&self, view: ViewKind, for_export: bool) -> ViewRequest {
        let mut req = ViewRequest::new(view).with_filters(self.settings.filters.clone());
        if view.limits().is_some()
            && !(for_export && self.explorer.export_all && view == ViewKind::Transactions)
        {
            req.limit = Some(self.explorer.limit);
        }
        req
    }

    /// Asks the backend for the explorer's view with its filters and row
    /// limit (what the Load button does; benches and tests call it too).
    pub(crate) fn load_explorer(&mut self) {
        let Some(view) = self.explorer.view else {
            return;
        };
        let seq = self.seq();
        let req = self.explorer_request(view, false);
        self.explorer.pending = Some(seq);
        self.send(Command::Explore {
            seq,
            req,
            sort: self.explorer.sort,
        });
    }

    pub(super) fn explorer_ui(&mut self, ui: &mut Ui) {
        ui.heading("Explorer");
        ui.horizontal_wrapped(|ui| {
            ui.label("View");
            let current = self.explorer.view;
            let mut chosen = current;
            egui::ComboBox::from_id_salt("explorer_view")
                .selected_text(current.map_or("choose…", |v| v.as_str()))
                .show_ui(ui, |ui| {
                    for v in ViewKind::ALL {
                        ui.selectable_value(&mut chosen, Some(v), v.as_str());
                    }
                });
            let limited = chosen.is_some_and(|v| v.limits().is_some());
            let mut reload = chosen != current;
            if limited {
                ui.label("rows");
                let (lo, hi) = chosen.and_then(ViewKind::limits).unwrap_or((1, 1_000_000));
                reload |= ui
                    .add(
                        egui::DragValue::new(&mut self.explorer.limit)
                            .range(1..=hi.min(100_000).max(lo)),
                    )
                    .lost_focus();
            }
            if ui
                .add_enabled(chosen.is_some(), egui::Button::new("Load"))
                .clicked()
            {
                reload = true;
            }
            if self.explorer.pending.is_some() || self.explorer.sorting.is_some() {
                ui.spinner();
            }
            ui.label(
                RichText::new("uses the dashboard's range and filters")
                    .small()
                    .weak(),
            );
            if reload && chosen.is_some() {
                if chosen != current {
                    self.explorer.sort = None;
                    self.explorer.sorting = None;
                    self.explorer.table = None;
                }
                self.explorer.view = chosen;
                self.load_explorer();
            }
        });
        if let Some(e) = &self.explorer.error {
            ui.colored_label(widgets::RED, e);
        }
        self.export_bar_ui(ui);
        ui.separator();
        let Some(table) = self.explorer.table.clone() else {
            ui.label(RichText::new("choose a view to load it").weak());
            return;
        };
        ui.label(format!(
            "{} rows × {} columns",
            count(table.rows.len() as f64),
            table.columns.len()
        ));
        let h = ui.available_height();
        if let Some(s) = widgets::table_ui(
            ui,
            "explorer_table",
            &table,
            self.explorer.order.as_deref(),
            self.explorer.sort,
            h,
        ) {
            // The backend sorts; the table keeps its order until then.
            let seq = self.seq();
            self.explorer.sorting = Some(seq);
            self.send(Command::Sort {
                seq,
                table: Arc::clone(&table),
                sort: s,
            });
        }
    }

    fn export_bar_ui(&mut self, ui: &mut Ui) {
        let Some(view) = self.explorer.view else {
            return;
        };
        ui.horizontal_wrapped(|ui| {
            ui.label("Export to");
            let fmt = self.explorer.export_format.unwrap_or(ExportFormat::Parquet);
            let mut f = fmt;
            ui.selectable_value(&mut f, ExportFormat::Csv, "CSV");
            ui.selectable_value(&mut f, ExportFormat::Parquet, "Parquet");
            if f != fmt || self.explorer.export_format.is_none() {
                self.explorer.export_format = Some(f);
                let p = PathBuf::from(&self.explorer.export_path);
                if self.explorer.export_path.is_empty() || ExportFormat::from_path(&p).is_some() {
                    self.explorer.export_path = self.default_export_path(f).display().to_string();
                }
            }
            if view == ViewKind::Transactions {
                ui.checkbox(&mut self.explorer.export_all, "all matching rows");
            }
            ui.add(
                egui::TextEdit::singleline(&mut self.explorer.export_path)
                    .hint_text("file path")
                    .desired_width(320.0),
            );
            if ui.button("Browse…").clicked() {
                self.browse_save_path(&self.explorer.export_path.clone());
            }
            let busy = self.explorer.export_progress.is_some();
            let path = self.explorer.export_path.trim().to_owned();
            if ui
                .add_enabled(!busy && !path.is_empty(), egui::Button::new("Export"))
                .clicked()
            {
                let format = ExportFormat::from_path(std::path::Path::new(&path)).unwrap_or(f);
                let req = self.explorer_request(view, true);
                self.explorer.export_result = None;
                self.explorer.export_progress = Some((0, None));
                self.send(Command::Export {
                    req,
                    path: PathBuf::from(path),
                    format,
                });
            }
        });
        if let Some((done, total)) = self.explorer.export_progress {
            let frac = total.map_or(0.0, |t| done as f32 / t.max(1) as f32);
            ui.add(
                egui::ProgressBar::new(frac)
                    .desired_width(320.0)
                    .text(match total {
                        Some(t) => format!("{} / {} rows", count(done as f64), count(t as f64)),
                        None => "exporting…".into(),
                    }),
            );
        }
        match &self.explorer.export_result {
            Some(Ok(m)) => {
                ui.label(RichText::new(m).small());
            }
            Some(Err(e)) => {
                ui.colored_label(widgets::RED, format!("export failed: {e}"));
            }
            None => {}
        }
    }
}
