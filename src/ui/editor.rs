//! The Scripts panel: the scripts folder, an editor with line numbers and
//! highlighting, Run (Ctrl+Enter), Save (Ctrl+S), new from a template, the
//! error at its line, and the result previewed and exportable.
//!
//! Nothing here touches the disk: the backend sends the folder (texts
//! included) and saves what the panel asks it to.

use std::collections::BTreeMap;
use std::sync::Arc;

use egui::{Key, KeyboardShortcut, Modifiers, RichText, Ui};

use super::backend::{Command, ScriptOutput};
use super::scripting::{Catalog, ScriptKind};
use super::widgets::{AMBER, RED};
use super::{code, dashboard, App};
use crate::analytics::export::ExportFormat;
use crate::script::ScriptError;

/// Runs the open script (Ctrl/Cmd+Enter).
pub(crate) const RUN: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter);
/// Saves the open script (Ctrl/Cmd+S).
pub(crate) const SAVE: KeyboardShortcut = KeyboardShortcut::new(Modifiers::COMMAND, Key::S);

/// What the Scripts panel holds.
#[derive(Default)]
pub struct ScriptsState {
    /// The scripts folder as last scanned by the backend.
    pub catalog: Option<Arc<Catalog>>,
    /// The open script (relative path).
    pub open: Option<String>,
    /// Its text in the editor.
    pub text: String,
    /// Unsaved texts of scripts not open now (and of new ones).
    pub drafts: BTreeMap<String, String>,
    /// The open script changed on disk while it had unsaved edits.
    pub disk_changed: bool,
    /// The run asked of the backend and not answered yet.
    pub pending: Option<u64>,
    /// The last run's output, or its error.
    pub result: Option<Result<Arc<ScriptOutput>, ScriptError>>,
    /// The text a save in flight writes.
    pub saving: Option<(String, String)>,
    /// The name typed for a new script.
    pub new_name: String,
    /// Where to export the result.
    pub export_path: String,
    /// The export format (`None` = from the file's extension).
    pub export_format: Option<ExportFormat>,
    /// An export of the result is in flight / a file dialog is open for it.
    pub exporting: bool,
    /// A file dialog is open for the export path.
    pub browsing: bool,
    /// The last export: what was written, or why not.
    pub export_result: Option<Result<String, String>>,
    highlight: code::HighlightCache,
}

impl ScriptsState {
    /// Takes the answer to the run asked last; older answers are dropped.
    pub(super) fn apply_run(&mut self, seq: u64, result: Result<Arc<ScriptOutput>, ScriptError>) {
        if self.pending == Some(seq) {
            self.pending = None;
            self.result = Some(result);
        }
    }

    /// The open script's text on disk (`None`: new, not saved yet).
    pub fn on_disk(&self) -> Option<&str> {
        let rel = self.open.as_deref()?;
        self.catalog.as_ref()?.get(rel).map(|f| f.text.as_str())
    }

    /// Whether the open script has edits not saved.
    pub fn dirty(&self) -> bool {
        self.open.is_some() && self.on_disk() != Some(self.text.as_str())
    }

    /// The error to show at its line: the last run's, else the file's own.
    pub fn error(&self) -> Option<&ScriptError> {
        if let Some(Err(e)) = &self.result {
            return Some(e);
        }
        if self.dirty() {
            return None;
        }
        let rel = self.open.as_deref()?;
        self.catalog.as_ref()?.get(rel)?.error()
    }

    /// Opens `rel`, keeping the unsaved text of the one open now.
    pub(crate) fn open_script(&mut self, rel: &str) {
        if self.open.as_deref() == Some(rel) {
            return;
        }
        if self.dirty() {
            if let Some(cur) = self.open.clone() {
                self.drafts.insert(cur, std::mem::take(&mut self.text));
            }
        }
        self.text = match self.drafts.remove(rel) {
            Some(t) => t,
            None => self
                .catalog
                .as_ref()
                .and_then(|c| c.get(rel))
                .map(|f| f.text.clone())
                .unwrap_or_default(),
        };
        self.open = Some(rel.to_owned());
        self.result = None;
        self.disk_changed = false;
    }

    /// A new folder from the backend: the open script follows its file
    /// unless it has unsaved edits.
    pub(crate) fn set_catalog(&mut self, c: Arc<Catalog>) {
        let before = self.on_disk().map(str::to_owned);
        let had_edits = self.dirty();
        self.catalog = Some(c);
        let now = self.on_disk().map(str::to_owned);
        if before != now {
            if let Some(t) = now {
                if had_edits && Some(&self.text) != Some(&t) && before.is_some() {
                    self.disk_changed = true;
                } else {
                    self.text = t;
                    self.disk_changed = false;
                }
            }
        }
    }
}

impl App {
    pub(super) fn scripts_ui(&mut self, ui: &mut Ui) {
        if ui.input_mut(|i| i.consume_shortcut(&RUN)) {
            self.run_script();
        }
        if ui.input_mut(|i| i.consume_shortcut(&SAVE)) {
            self.save_script();
        }
        egui::Panel::left("scripts_list")
            .resizable(true)
            .default_size(240.0)
            .show(ui, |ui| self.script_list_ui(ui));
        egui::CentralPanel::default_margins().show(ui, |ui| {
            if self.scripts.open.is_none() {
                ui.label("Pick a script on the left, or make a new one from a template.");
                return;
            }
            self.editor_toolbar_ui(ui);
            let h = (ui.available_height() * 0.55).max(160.0);
            self.editor_ui(ui, h);
            self.script_error_ui(ui);
            ui.separator();
            self.script_result_ui(ui);
        });
    }

    fn script_list_ui(&mut self, ui: &mut Ui) {
        let Some(c) = self.scripts.catalog.clone() else {
            ui.spinner();
            return;
        };
        ui.label(RichText::new(c.dir.display().to_string()).small().weak());
        if let Some(e) = &c.error {
            ui.colored_label(RED, e);
        }
        egui::ScrollArea::vertical()
            .max_height(ui.available_height() - 90.0)
            .show(ui, |ui| {
                for (title, sub) in [("Metrics", "metrics/"), ("Generator", "generator/")] {
                    ui.add_space(4.0);
                    ui.label(RichText::new(title).strong());
                    let mut rels: Vec<String> = c
                        .files
                        .iter()
                        .filter(|f| f.rel.starts_with(sub))
                        .map(|f| f.rel.clone())
                        .collect();
                    rels.extend(
                        self.scripts
                            .drafts
                            .keys()
                            .chain(self.scripts.open.iter())
                            .filter(|r| r.starts_with(sub) && c.get(r).is_none())
                            .cloned(),
                    );
                    rels.sort();
                    rels.dedup();
                    for rel in rels {
                        let f = c.get(&rel);
                        let name = rel.trim_start_matches(sub);
                        let edited = self.scripts.drafts.contains_key(&rel)
                            || (self.scripts.open.as_deref() == Some(rel.as_str())
                                && self.scripts.dirty());
                        let ok = f.is_none_or(|f| f.error().is_none());
                        let mut text =
                            RichText::new(format!("{name}{}", if edited { " *" } else { "" }));
                        if !ok {
                            text = text.color(RED);
                        }
                        let tip = match f {
                            Some(f) => match (&f.kind, f.error()) {
                                (_, Some(e)) => e.to_string(),
                                (ScriptKind::Metric(m), _) => {
                                    format!(
                                        "{} ({:?}, {:?})",
                                        m.info.name, m.info.kind, m.info.format
                                    )
                                }
                                _ => f.title(),
                            },
                            None => "new, not saved yet".into(),
                        };
                        let selected = self.scripts.open.as_deref() == Some(rel.as_str());
                        if ui
                            .selectable_label(selected, text)
                            .on_hover_text(tip)
                            .clicked()
                        {
                            self.scripts.open_script(&rel);
                        }
                    }
                }
            });
        ui.separator();
        ui.add(
            egui::TextEdit::singleline(&mut self.scripts.new_name)
                .hint_text("new script name")
                .desired_width(f32::INFINITY),
        );
        ui.horizontal(|ui| {
            for (label, metric) in [("New metric", true), ("New scenario", false)] {
                if ui.button(label).clicked() {
                    self.new_script(metric);
                }
            }
        });
    }

    fn new_script(&mut self, metric: bool) {
        let typed = self.scripts.new_name.trim().to_owned();
        let Some(file) = super::scripting::file_name(if typed.is_empty() {
            if metric {
                "my_metric"
            } else {
                "my_scenario"
            }
        } else {
            &typed
        }) else {
            self.toast(
                tracing::Level::WARN,
                format!("{typed:?} is not a usable file name"),
            );
            return;
        };
        let rel = format!("{}/{file}", if metric { "metrics" } else { "generator" });
        let exists = self
            .scripts
            .catalog
            .as_ref()
            .is_some_and(|c| c.get(&rel).is_some())
            || self.scripts.drafts.contains_key(&rel);
        if exists {
            self.toast(tracing::Level::WARN, format!("{rel} exists already"));
            return;
        }
        let title = if typed.is_empty() {
            file.trim_end_matches(".rhai").replace('_', " ")
        } else {
            typed
        };
        self.scripts.open_script(&rel);
        self.scripts.text = super::scripting::template(metric, &title);
        self.scripts.new_name.clear();
    }

    fn editor_toolbar_ui(&mut self, ui: &mut Ui) {
        let rel = self.scripts.open.clone().unwrap_or_default();
        // Buttons first and in fixed places, so they do not move while the
        // text is being edited; the state of the file comes after them.
        ui.horizontal(|ui| {
            ui.label(RichText::new(&rel).monospace().strong());
            ui.separator();
            let running = self.scripts.pending.is_some();
            if ui
                .add_enabled(!running, egui::Button::new("Run"))
                .on_hover_text("Ctrl+Enter: run the text as it is in the editor")
                .clicked()
            {
                self.run_script();
            }
            if ui
                .add_enabled(self.scripts.dirty(), egui::Button::new("Save"))
                .on_hover_text("Ctrl+S")
                .clicked()
            {
                self.save_script();
            }
            if ui
                .add_enabled(
                    self.scripts.dirty() && self.scripts.on_disk().is_some(),
                    egui::Button::new("Revert"),
                )
                .clicked()
            {
                if let Some(t) = self.scripts.on_disk().map(str::to_owned) {
                    self.scripts.text = t;
                    self.scripts.disk_changed = false;
                    self.scripts.result = None;
                }
            }
            if self.scripts.on_disk().is_none() {
                ui.label(RichText::new("new").weak());
            } else if self.scripts.dirty() {
                ui.label(RichText::new("modified").weak());
            }
            if running {
                ui.separator();
                ui.spinner();
                if ui.button("Stop").clicked() {
                    self.send(Command::CancelScript);
                }
            }
        });
        if self.scripts.disk_changed {
            ui.horizontal(|ui| {
                ui.colored_label(
                    AMBER,
                    "This script changed on disk while you were editing it.",
                );
                if ui.button("Load the disk version").clicked() {
                    if let Some(t) = self.scripts.on_disk().map(str::to_owned) {
                        self.scripts.text = t;
                    }
                    self.scripts.disk_changed = false;
                }
                if ui.button("Keep mine").clicked() {
                    self.scripts.disk_changed = false;
                }
            });
        }
    }

    fn editor_ui(&mut self, ui: &mut Ui, height: f32) {
        let error_line = self.scripts.error().and_then(|e| e.line);
        let state = &mut self.scripts;
        code::editor_ui(
            ui,
            egui::Id::unique("script_text"),
            &mut state.text,
            error_line,
            &mut state.highlight,
            Some(height),
        );
    }

    fn script_error_ui(&mut self, ui: &mut Ui) {
        if let Some(e) = self.scripts.error() {
            let place = match (e.line, e.column) {
                (Some(l), Some(c)) => format!("line {l}, column {c}"),
                (Some(l), None) => format!("line {l}"),
                _ => "the script".into(),
            };
            ui.colored_label(
                RED,
                RichText::new(format!("{place}: {}", e.message)).monospace(),
            );
        }
    }

    fn script_result_ui(&mut self, ui: &mut Ui) {
        let Some(Ok(out)) = self.scripts.result.clone() else {
            if self.scripts.result.is_none() && self.scripts.pending.is_none() {
                ui.label(
                    RichText::new("Run the script (Ctrl+Enter) to see its result here.").weak(),
                );
            }
            return;
        };
        ui.label(RichText::new(&out.summary).strong());
        ui.horizontal(|ui| self.script_export_ui(ui, &out));
        egui::ScrollArea::vertical()
            .id_salt("script_result")
            .auto_shrink([false, false])
            .show(ui, |ui| {
                let info = out.info.clone();
                dashboard::metric_view_ui(ui, "script_preview", info.as_ref(), &out.view);
            });
    }

    fn script_export_ui(&mut self, ui: &mut Ui, out: &ScriptOutput) {
        let fmt = self.scripts.export_format.unwrap_or(ExportFormat::Csv);
        let mut f = fmt;
        ui.label("Export to");
        ui.selectable_value(&mut f, ExportFormat::Csv, "CSV");
        ui.selectable_value(&mut f, ExportFormat::Parquet, "Parquet");
        if f != fmt || self.scripts.export_path.is_empty() {
            self.scripts.export_format = Some(f);
            let stem = self
                .scripts
                .open
                .as_deref()
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or("script")
                .trim_end_matches(".rhai")
                .to_owned();
            let ext = if f == ExportFormat::Csv {
                "csv"
            } else {
                "parquet"
            };
            self.scripts.export_path = super::dirs_home()
                .join(format!("salespulse-{stem}.{ext}"))
                .display()
                .to_string();
        }
        ui.add(
            egui::TextEdit::singleline(&mut self.scripts.export_path)
                .hint_text("file path")
                .desired_width(300.0),
        );
        if ui.button("Browse…").clicked() {
            self.scripts.browsing = true;
            self.browse_save_path(&self.scripts.export_path.clone());
        }
        let path = self.scripts.export_path.trim().to_owned();
        if ui
            .add_enabled(
                !self.scripts.exporting && !path.is_empty(),
                egui::Button::new("Export"),
            )
            .clicked()
        {
            let path = std::path::PathBuf::from(path);
            let format = ExportFormat::from_path(&path).unwrap_or(f);
            self.scripts.exporting = true;
            self.scripts.export_result = None;
            self.send(Command::ExportFrame {
                frame: Arc::clone(&out.frame),
                path,
                format,
            });
        }
        match &self.scripts.export_result {
            Some(Ok(m)) => {
                ui.label(RichText::new(m).small());
            }
            Some(Err(e)) => {
                ui.colored_label(RED, format!("export failed: {e}"));
            }
            None => {}
        }
    }

    /// Runs the editor's text under the dashboard's filters.
    pub fn run_script(&mut self) {
        let Some(rel) = self.scripts.open.clone() else {
            return;
        };
        let seq = self.seq();
        self.scripts.pending = Some(seq);
        self.scripts.result = None;
        let text = self.scripts.text.clone();
        let filters = self.settings.filters.clone();
        self.send(Command::RunScript {
            seq,
            rel,
            text,
            filters,
        });
    }

    /// Saves the editor's text to its file.
    pub(crate) fn save_script(&mut self) {
        let Some(rel) = self.scripts.open.clone() else {
            return;
        };
        let text = self.scripts.text.clone();
        self.scripts.saving = Some((rel.clone(), text.clone()));
        self.send(Command::SaveScript { rel, text });
    }
}
