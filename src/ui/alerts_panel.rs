//! The Alerts panel: every rule of `scripts/alerts/` with its state, value
//! and condition; silences; the history of state changes and
//! notifications, from PostgreSQL.

use std::sync::Arc;

use egui::{Color32, RichText, Ui};

use super::alert_desk::AlertsSnapshot;
use super::backend::Command;
use super::widgets::{AMBER, BLUE, GREEN, RED};
use super::App;
use crate::alerts::history::Event;
use crate::alerts::{Reason, State};

/// Width of the value column: a value with its condition fits.
const VALUE_WIDTH: f32 = 230.0;

/// What the Alerts panel shows.
#[derive(Default)]
pub struct AlertsState {
    /// The rules and their states, as last sent.
    pub(super) snapshot: Option<Arc<AlertsSnapshot>>,
    /// The rule whose history is shown (`None`: every rule's).
    pub(super) selected: Option<String>,
    /// The history shown, and the rule it is of.
    pub(super) history: Option<(Option<String>, Vec<Event>)>,
    /// A history request is on its way.
    pub(super) history_wanted: bool,
    /// Minutes a new silence lasts.
    pub(super) silence_minutes: u32,
}

/// The colour of a state.
pub(crate) fn state_colour(s: State) -> Color32 {
    match s {
        State::Firing => RED,
        State::Pending => AMBER,
        State::Normal | State::Resolved => GREEN,
        State::NoData => BLUE,
        State::Error => Color32::from_rgb(0xb0, 0x5a, 0xd0),
    }
}

fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

impl AlertsState {
    /// Takes a new snapshot; the history follows it.
    pub(super) fn apply(&mut self, s: Arc<AlertsSnapshot>) {
        let changed = self.snapshot.as_ref().is_none_or(|old| {
            old.rules
                .iter()
                .map(|v| (v.state.state, v.state.since))
                .ne(s.rules.iter().map(|v| (v.state.state, v.state.since)))
        });
        self.history_wanted |= changed;
        self.snapshot = Some(s);
    }

    /// How many rules fire now.
    pub(super) fn firing(&self) -> usize {
        self.snapshot.as_ref().map_or(0, |s| {
            s.rules
                .iter()
                .filter(|v| v.state.state == State::Firing)
                .count()
        })
    }
}

impl App {
    pub(super) fn alerts_ui(&mut self, ui: &mut Ui) {
        if self.alerts.silence_minutes == 0 {
            self.alerts.silence_minutes = 60;
        }
        if std::mem::take(&mut self.alerts.history_wanted) {
            self.send(Command::AlertHistory(self.alerts.selected.clone()));
        }
        ui.heading("Alerts");
        let Some(snap) = self.alerts.snapshot.clone() else {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("waiting for the first evaluation…");
            });
            return;
        };
        let count = |s: State| snap.rules.iter().filter(|v| v.state.state == s).count();
        ui.horizontal_wrapped(|ui| {
            ui.label(format!(
                "{} rules in {}",
                snap.rules.len(),
                snap.dir.display()
            ));
            for s in [State::Firing, State::Pending, State::NoData, State::Error] {
                let n = count(s);
                if n > 0 {
                    ui.label(
                        RichText::new(format!("{n} {}", s.as_str()))
                            .color(state_colour(s))
                            .strong(),
                    );
                }
            }
            ui.separator();
            ui.label("Silence for");
            ui.add(
                egui::DragValue::new(&mut self.alerts.silence_minutes)
                    .range(1..=10_080)
                    .suffix(" min"),
            );
        });
        for e in &snap.errors {
            ui.colored_label(RED, format!("does not load: {e}"));
        }
        ui.separator();
        let mut acts: Vec<Command> = Vec::new();
        let mut select: Option<Option<String>> = None;
        egui::ScrollArea::vertical()
            .id_salt("alert rules")
            .max_height(ui.available_height() * 0.55)
            .show(ui, |ui| {
                egui::Grid::new("alert rules grid")
                    .striped(true)
                    .num_columns(6)
                    .show(ui, |ui| {
                        for h in ["state", "rule", "severity", "value", "condition", ""] {
                            ui.label(RichText::new(h).strong());
                        }
                        ui.end_row();
                        for v in &snap.rules {
                            let s = v.state.state;
                            ui.label(RichText::new(s.as_str()).color(state_colour(s)).strong())
                                .on_hover_text(format!("since {}", when(v.state.since)));
                            let chosen = self.alerts.selected.as_deref() == Some(&v.rule.name);
                            if ui
                                .selectable_label(chosen, &v.rule.name)
                                .on_hover_text(format!("{}\n{}", v.rule.description, v.rule.file))
                                .clicked()
                            {
                                select = Some((!chosen).then(|| v.rule.name.clone()));
                            }
                            ui.label(v.rule.severity.as_str());
                            let detail = match (&v.state.error, v.detail.is_empty()) {
                                (Some(e), _) => e.clone(),
                                (None, true) => "–".into(),
                                (None, false) => v.detail.clone(),
                            };
                            // Wide enough for a value and its condition
                            // ("15.4 % (above 10.0 % breaches)"); a longer
                            // error is cut, and whole on hover.
                            let evaluated = v.state.evaluated_at.map_or_else(
                                || "not evaluated yet".to_owned(),
                                |t| format!("evaluated {}", when(t)),
                            );
                            ui.scope(|ui| {
                                ui.set_min_width(VALUE_WIDTH);
                                ui.set_max_width(VALUE_WIDTH);
                                ui.add(egui::Label::new(detail.as_str()).truncate())
                                    .on_hover_text(format!("{detail}\n{evaluated}"));
                            });
                            ui.label(format!(
                                "{}, every {}s, for {}s",
                                v.rule.condition.describe(),
                                v.rule.every.as_secs(),
                                v.rule.for_.as_secs()
                            ));
                            if v.silenced {
                                ui.label(RichText::new("silenced").italics());
                            } else if ui
                                .button("Silence")
                                .on_hover_text(format!(
                                    "no notifications for {} minutes (the state is still kept)",
                                    self.alerts.silence_minutes
                                ))
                                .clicked()
                            {
                                acts.push(Command::SilenceAlert {
                                    rule: v.rule.name.clone(),
                                    minutes: self.alerts.silence_minutes,
                                });
                            }
                            ui.end_row();
                        }
                    });
                if !snap.silences.is_empty() {
                    ui.separator();
                    ui.label(RichText::new("Silences").strong());
                    for s in &snap.silences {
                        ui.horizontal(|ui| {
                            ui.label(format!(
                                "{} until {}{}",
                                if s.rule == "*" { "every rule" } else { &s.rule },
                                when(s.until),
                                if s.reason.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({})", s.reason)
                                }
                            ));
                            if ui.small_button("End").clicked() {
                                acts.push(Command::UnsilenceAlert(s.id));
                            }
                        });
                    }
                }
            });
        for a in acts {
            self.send(a);
        }
        if let Some(s) = select {
            self.alerts.selected = s;
            self.send(Command::AlertHistory(self.alerts.selected.clone()));
        }
        ui.separator();
        self.alert_history_ui(ui);
    }

    fn alert_history_ui(&mut self, ui: &mut Ui) {
        let title = match &self.alerts.selected {
            Some(r) => format!("History of {r}"),
            None => "History".into(),
        };
        ui.label(RichText::new(title).strong());
        let Some((_, rows)) = &self.alerts.history else {
            ui.spinner();
            return;
        };
        if rows.is_empty() {
            ui.label("nothing yet");
            return;
        }
        egui::ScrollArea::vertical()
            .id_salt("alert history")
            .show(ui, |ui| {
                egui::Grid::new("alert history grid")
                    .striped(true)
                    .num_columns(4)
                    .show(ui, |ui| {
                        for e in rows {
                            ui.label(when(e.at));
                            ui.label(&e.rule);
                            ui.label(
                                RichText::new(format!(
                                    "{}{}",
                                    e.previous.map_or_else(String::new, |p| format!(
                                        "{} -> ",
                                        p.as_str()
                                    )),
                                    e.state.as_str()
                                ))
                                .color(state_colour(e.state)),
                            );
                            let note = match (e.notified, e.silenced) {
                                (Some(r), true) => format!("{} (silenced) ", reason_text(r)),
                                (Some(r), false) => format!("{} ", reason_text(r)),
                                (None, _) => String::new(),
                            };
                            ui.add(egui::Label::new(format!("{note}{}", e.message)).truncate());
                            ui.end_row();
                        }
                    });
            });
    }
}

fn reason_text(r: Reason) -> &'static str {
    match r {
        Reason::Firing => "notified: firing",
        Reason::Repeat => "notified again",
        Reason::Resolved => "notified: resolved",
        Reason::NoData => "notified: no data",
        Reason::Error => "notified: error",
    }
}
