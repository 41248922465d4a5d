//! The pipeline panel: controls, live rates, lag, pool, cache, services, log.

use egui::{RichText, Ui};

use super::backend::{Command, PipelineSample};
use super::model::{count, percent, RateHistory, Sample};
use super::widgets;
use super::App;
use crate::services::live::RunState;

use super::widgets::{AMBER, GREEN, RED};

/// What the pipeline panel shows: the last sample and the rates over time.
#[derive(Default)]
pub struct PipelineState {
    /// The last sample, once one came.
    pub(super) telemetry: Option<Box<PipelineSample>>,
    /// Counter samples for the rate sparklines.
    pub(super) history: RateHistory,
    /// The rate typed in the controls, events/s (0 = as fast as possible).
    pub(super) rate_input: f64,
}

impl PipelineState {
    /// Takes a new sample.
    pub(super) fn apply(&mut self, t: Box<PipelineSample>) {
        self.history.push(Sample {
            t: t.at,
            produced: t.counters.produced,
            ingested: t.counters.ingested,
            dead_lettered: t.counters.dead_lettered,
        });
        self.telemetry = Some(t);
    }
}

impl App {
    fn controls_ui(&mut self, ui: &mut Ui) {
        let state = self.pipeline.telemetry.as_ref().map(|t| t.state.clone());
        ui.horizontal_wrapped(|ui| {
            let running = matches!(state, Some(RunState::Running | RunState::Paused));
            let rate = Some(self.pipeline.rate_input).filter(|r| *r > 0.0);
            if ui
                .add_enabled(!running && state.is_some(), egui::Button::new("Start"))
                .clicked()
            {
                self.settings.rate = self.pipeline.rate_input;
                self.send(Command::Start { rate });
            }
            match state {
                Some(RunState::Paused) => {
                    if ui.button("Resume").clicked() {
                        self.send(Command::SetPaused(false));
                    }
                }
                _ => {
                    if ui
                        .add_enabled(state == Some(RunState::Running), egui::Button::new("Pause"))
                        .clicked()
                    {
                        self.send(Command::SetPaused(true));
                    }
                }
            }
            if ui
                .add_enabled(
                    running || matches!(state, Some(RunState::Failed(_))),
                    egui::Button::new("Stop"),
                )
                .clicked()
            {
                self.send(Command::Stop);
            }
            ui.separator();
            ui.label("Rate (events/s, 0 = max)");
            let r = ui.add(
                egui::DragValue::new(&mut self.pipeline.rate_input)
                    .range(0.0..=1_000_000.0)
                    .speed(10.0),
            );
            for preset in [50.0, 500.0, 5_000.0] {
                if ui.small_button(format!("{preset:.0}")).clicked() {
                    self.pipeline.rate_input = preset;
                    self.send(Command::SetRate(Some(preset)));
                    self.settings.rate = preset;
                }
            }
            if r.changed() {
                self.settings.rate = self.pipeline.rate_input;
                self.send(Command::SetRate(
                    Some(self.pipeline.rate_input).filter(|r| *r > 0.0),
                ));
            }
        });
        if let Some(RunState::Failed(e)) = &state {
            ui.colored_label(RED, format!("pipeline failed: {e}"));
        }
    }

    pub(super) fn pipeline_ui(&mut self, ui: &mut Ui) {
        ui.heading("Pipeline");
        self.controls_ui(ui);
        ui.separator();
        let Some(t) = self.pipeline.telemetry.clone() else {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("waiting for the services…");
            });
            return;
        };
        egui::ScrollArea::vertical()
            .auto_shrink([false, false])
            .show(ui, |ui| {
                ui.horizontal_wrapped(|ui| {
                    let c = &t.counters;
                    ui.label(format!("state: {}", t.state.label()));
                    ui.separator();
                    ui.label(format!(
                        "rate setting: {}",
                        match t.rate {
                            Some(Some(r)) => format!("{r:.0}/s"),
                            Some(None) => "max".into(),
                            None => "—".into(),
                        }
                    ));
                    ui.separator();
                    ui.label(format!("produced {}", count(c.produced as f64)));
                    ui.label(format!("ingested {}", count(c.ingested as f64)));
                    ui.label(format!("dead-lettered {}", count(c.dead_lettered as f64)));
                    ui.label(format!("duplicates {}", count(c.duplicates as f64)));
                    if c.produce_failed > 0 {
                        ui.colored_label(RED, format!("failed {}", count(c.produce_failed as f64)));
                    }
                });
                if let crate::pipeline::ingest::IngestHealth::Degraded { for_secs, reason } =
                    &t.ingest
                {
                    ui.colored_label(
                        AMBER,
                        format!("ingest degraded for {for_secs} s, retrying on its own: {reason}"),
                    );
                }
                ui.add_space(6.0);
                ui.horizontal_wrapped(|ui| {
                    type Get = fn(&super::model::Sample) -> u64;
                    let series: [(&str, &str, Get, usize); 3] = [
                        ("spark_produced", "produced", |s| s.produced, 0),
                        ("spark_ingested", "ingested", |s| s.ingested, 4),
                        ("spark_dlq", "dead-lettered", |s| s.dead_lettered, 2),
                    ];
                    for (id, title, get, color) in series {
                        let points = self.pipeline.history.rates(get);
                        widgets::sparkline_ui(ui, id, title, &points, widgets::color(color));
                    }
                });
                ui.add_space(6.0);
                self.behaviour_ui(ui, &t);
                ui.add_space(6.0);
                ui.columns_const(|[left, right]| {
                    lag_ui(left, &t.lag);
                    resources_ui(right, &t);
                });
                ui.add_space(6.0);
                services_ui(ui, &t);
                ui.add_space(6.0);
                self.log_ui(ui);
            });
    }

    /// The shop script and the scenarios, switched on and off here.
    fn behaviour_ui(&mut self, ui: &mut Ui, t: &super::backend::PipelineSample) {
        let Some(catalog) = self.scripts.catalog.clone() else {
            return;
        };
        egui::Frame::group(ui.style()).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.horizontal(|ui| {
                ui.label(RichText::new("Behaviour").strong());
                ui.separator();
                ui.label("shop script");
                let shops: Vec<String> = catalog
                    .files
                    .iter()
                    .filter(|f| matches!(f.kind, super::scripting::ScriptKind::Shop))
                    .map(|f| f.rel.clone())
                    .collect();
                egui::ComboBox::from_id_salt("shop_script")
                    .selected_text(&t.shop)
                    .show_ui(ui, |ui| {
                        for rel in shops {
                            if ui.selectable_label(rel == t.shop, &rel).clicked() && rel != t.shop {
                                self.send(Command::UseShop(rel));
                            }
                        }
                    });
                if let Some(e) = catalog.get(&t.shop).and_then(|f| f.error()) {
                    ui.colored_label(RED, e.to_string());
                }
            });
            ui.label(RichText::new("Scenarios").small().weak());
            let scenarios = catalog.scenarios();
            if scenarios.is_empty() {
                ui.label(RichText::new("no scenario scripts in generator/").weak());
            }
            for (f, s) in scenarios {
                let on = t
                    .scenarios
                    .iter()
                    .find(|x| x.rel == f.rel || x.name == s.scenario);
                ui.horizontal(|ui| {
                    let mut checked = on.is_some();
                    if ui
                        .checkbox(&mut checked, RichText::new(&s.scenario).strong())
                        .on_hover_text(&f.rel)
                        .changed()
                    {
                        self.send(Command::Scenario {
                            rel: f.rel.clone(),
                            on: checked,
                        });
                    }
                    match on.map(|o| o.remaining_secs) {
                        Some(Some(0)) => {
                            ui.colored_label(AMBER, "ended");
                        }
                        Some(Some(secs)) => {
                            ui.colored_label(
                                GREEN,
                                format!("on · {}:{:02} left", secs / 60, secs % 60),
                            );
                        }
                        Some(None) => {
                            ui.colored_label(GREEN, "on");
                        }
                        None => {}
                    }
                    ui.label(RichText::new(&s.description).weak());
                });
            }
        });
    }

    fn log_ui(&mut self, ui: &mut Ui) {
        ui.label(RichText::new("Log").strong());
        let id = ui.make_persistent_id("log_level");
        let mut warn_only = ui.data(|d| d.get_temp::<bool>(id)).unwrap_or(false);
        ui.checkbox(&mut warn_only, "warnings and errors only");
        ui.data_mut(|d| d.insert_temp(id, warn_only));
        let shown = |l: &&super::log::LogLine| !warn_only || l.level <= tracing::Level::WARN;
        // Only the visible rows are copied out of the buffer, not all 2,000.
        let n = self.logs.with_lines(|l| l.iter().filter(shown).count());
        let row_h = ui.text_style_height(&egui::TextStyle::Monospace);
        egui::ScrollArea::vertical()
            .id_salt("log_scroll")
            .max_height(220.0)
            .stick_to_bottom(true)
            .auto_shrink([false, true])
            .show_rows(ui, row_h, n, |ui, range| {
                let rows: Vec<_> = self.logs.with_lines(|l| {
                    l.iter()
                        .filter(shown)
                        .skip(range.start)
                        .take(range.len())
                        .cloned()
                        .collect()
                });
                for l in &rows {
                    let c = match l.level {
                        tracing::Level::ERROR => RED,
                        tracing::Level::WARN => AMBER,
                        _ => ui.visuals().text_color(),
                    };
                    ui.label(
                        RichText::new(format!(
                            "{} {:5} {}",
                            l.time.format("%H:%M:%S"),
                            l.level.as_str(),
                            l.text
                        ))
                        .monospace()
                        .color(c),
                    );
                }
            });
    }
}

fn lag_ui(ui: &mut Ui, lag: &Result<Vec<(i32, i64)>, String>) {
    ui.label(RichText::new("Consumer lag").strong());
    match lag {
        Err(e) => {
            ui.colored_label(AMBER, format!("unavailable: {e}"));
        }
        Ok(parts) => {
            let total: i64 = parts.iter().map(|p| p.1).sum();
            ui.label(format!("{} records behind in total", count(total as f64)));
            egui::Grid::new("lag_grid").striped(true).show(ui, |ui| {
                ui.label("partition");
                ui.label("lag");
                ui.end_row();
                for (p, n) in parts {
                    ui.label(p.to_string());
                    ui.label(count(*n as f64));
                    ui.end_row();
                }
            });
        }
    }
}

fn resources_ui(ui: &mut Ui, t: &super::backend::PipelineSample) {
    ui.label(RichText::new("PostgreSQL pool and cache").strong());
    let used = t.pool_open.saturating_sub(t.pool_idle);
    ui.label(format!(
        "pool: {used} in use, {} idle, {} open of {} max",
        t.pool_idle, t.pool_open, t.pool_max
    ));
    let frac = if t.pool_max > 0 {
        used as f32 / t.pool_max as f32
    } else {
        0.0
    };
    ui.add(
        egui::ProgressBar::new(frac)
            .desired_width(220.0)
            .text(format!("{used}/{}", t.pool_max)),
    );
    let total = t.cache_hits + t.cache_misses;
    let rate = if total > 0 {
        percent(t.cache_hits as f64 / total as f64)
    } else {
        "—".into()
    };
    match (&t.cache.error, t.cache.enabled) {
        (None, true) => ui.label(format!(
            "cache: up, hit rate {rate} ({} hits, {} misses), TTL {} s",
            t.cache_hits, t.cache_misses, t.cache.ttl_secs
        )),
        (Some(e), _) => ui.colored_label(
            AMBER,
            format!("cache bypassed (Redis: {e}); hit rate {rate}"),
        ),
        (None, false) => ui.label("cache: off"),
    };
}

fn services_ui(ui: &mut Ui, t: &super::backend::PipelineSample) {
    ui.label(RichText::new("Services").strong());
    let Some(h) = &t.health else {
        ui.label(RichText::new("checking…").weak());
        return;
    };
    egui::Grid::new("services_grid")
        .striped(true)
        .show(ui, |ui| {
            for c in &h.checks {
                let (mark, color) = if c.ok { ("up", GREEN) } else { ("down", RED) };
                ui.colored_label(color, mark);
                ui.label(c.name);
                ui.label(&c.detail);
                if let Some(e) = &c.error {
                    ui.colored_label(RED, e);
                }
                ui.end_row();
            }
        });
    ui.label(
        RichText::new(format!(
            "checked every 5 s · unchanged since {}",
            h.checked_at.format("%H:%M:%S UTC")
        ))
        .small()
        .weak(),
    );
}
