//! The Segments panel: customers by RFM segment (Champions … Hibernating),
//! each segment's size and share of revenue, how many customers moved in
//! and out since a period earlier, and any segment's customers exported.

use std::sync::Arc;

use egui::{RichText, Ui};

use super::backend::Command;
use super::model::{count, percent};
use super::widgets;
use super::App;
use crate::analytics::export::ExportFormat;
use crate::analytics::segments::SegmentReport;

/// What the Segments panel shows.
#[derive(Default)]
pub struct SegmentsState {
    /// The last report, or why there is none.
    pub(super) report: Option<Result<Arc<SegmentReport>, String>>,
    /// The request on its way (its tag).
    pub(super) waiting: Option<u64>,
    /// Days movement is measured over.
    pub(super) period_days: u32,
    /// The segment picked for export.
    pub(super) pick: String,
    /// Where the export goes.
    pub(super) export_path: String,
    /// An export is running.
    pub(super) exporting: bool,
    /// The last export's outcome.
    pub(super) export_result: Option<Result<String, String>>,
}

impl SegmentsState {
    /// Takes an answer, if it is the newest request's.
    pub(super) fn apply(&mut self, seq: u64, result: Result<Arc<SegmentReport>, String>) {
        if self.waiting == Some(seq) {
            self.waiting = None;
            self.report = Some(result);
        }
    }
}

/// A column of the summary as numbers (missing: NaN).
fn numbers(df: &polars::prelude::DataFrame, c: &str) -> Vec<f64> {
    df.column(c)
        .and_then(|c| c.cast(&polars::prelude::DataType::Float64))
        .ok()
        .and_then(|c| {
            c.f64()
                .ok()
                .map(|a| a.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
        })
        .unwrap_or_default()
}

impl App {
    fn request_segments(&mut self) {
        let seq = self.seq();
        self.segments.waiting = Some(seq);
        self.send(Command::Segments {
            seq,
            period_days: self.segments.period_days,
        });
    }

    pub(super) fn segments_ui(&mut self, ui: &mut Ui) {
        if self.segments.period_days == 0 {
            self.segments.period_days = 30;
        }
        if self.segments.report.is_none() && self.segments.waiting.is_none() {
            self.request_segments();
        }
        ui.heading("Customer segments");
        let mut refresh = false;
        ui.horizontal_wrapped(|ui| {
            ui.label("Movement over the last");
            for d in [7u32, 30, 90] {
                if ui
                    .selectable_label(self.segments.period_days == d, format!("{d} days"))
                    .clicked()
                    && self.segments.period_days != d
                {
                    self.segments.period_days = d;
                    refresh = true;
                }
            }
            if ui.button("Refresh").clicked() {
                refresh = true;
            }
            if self.segments.waiting.is_some() {
                ui.spinner();
            }
        });
        if refresh {
            self.request_segments();
        }
        let report = match &self.segments.report {
            None => return,
            Some(Err(e)) => {
                ui.colored_label(widgets::RED, e);
                return;
            }
            Some(Ok(r)) => Arc::clone(r),
        };
        ui.label(
            RichText::new(format!(
                "RFM scores as of {} (quintiles of recency, orders and spend over completed orders); movement since {}",
                report.as_of.format("%Y-%m-%d %H:%M UTC"),
                report.previous.format("%Y-%m-%d %H:%M UTC")
            ))
            .weak(),
        );
        ui.separator();
        self.segment_table_ui(ui, &report);
        ui.separator();
        self.segment_export_ui(ui, &report);
    }

    fn segment_table_ui(&mut self, ui: &mut Ui, r: &SegmentReport) {
        let s = &r.summary;
        let names: Vec<String> = s
            .column("segment")
            .ok()
            .and_then(|c| {
                c.str()
                    .ok()
                    .map(|a| a.iter().map(|v| v.unwrap_or("").to_owned()).collect())
            })
            .unwrap_or_default();
        let [customers, c_share, revenue, r_share, recency, orders, before, moved_in, new, moved_out] =
            [
                "customers",
                "customer_share",
                "revenue",
                "revenue_share",
                "avg_recency_days",
                "avg_orders",
                "before",
                "moved_in",
                "new",
                "moved_out",
            ]
            .map(|c| numbers(s, c));
        let at = |v: &Vec<f64>, i: usize| v.get(i).copied().unwrap_or(f64::NAN);
        egui::ScrollArea::horizontal().id_salt("segments table").show(ui, |ui| {
            egui::Grid::new("segments grid")
                .striped(true)
                .num_columns(9)
                .show(ui, |ui| {
                    for h in [
                        "segment",
                        "customers",
                        "share of customers",
                        "revenue",
                        "share of revenue",
                        "days since last order",
                        "orders each",
                        "moved in / new",
                        "moved out",
                    ] {
                        ui.label(RichText::new(h).strong());
                    }
                    ui.end_row();
                    for (i, name) in names.iter().enumerate() {
                        let picked = &self.segments.pick == name;
                        if ui.selectable_label(picked, name).clicked() {
                            self.segments.pick = name.clone();
                        }
                        ui.label(count(at(&customers, i)));
                        share_bar_ui(ui, at(&c_share, i), widgets::color(i));
                        ui.label(super::model::money(at(&revenue, i)));
                        share_bar_ui(ui, at(&r_share, i), widgets::color(i));
                        let fmt1 = |v: f64| if v.is_finite() { format!("{v:.1}") } else { "–".into() };
                        ui.label(fmt1(at(&recency, i)));
                        ui.label(fmt1(at(&orders, i)));
                        ui.label(format!("+{} / +{}", count(at(&moved_in, i)), count(at(&new, i))))
                            .on_hover_text(format!(
                                "{} were here {} days ago; {} moved in from another segment, {} had not ordered before",
                                count(at(&before, i)),
                                self.segments.period_days,
                                count(at(&moved_in, i)),
                                count(at(&new, i))
                            ));
                        ui.label(format!("-{}", count(at(&moved_out, i))));
                        ui.end_row();
                    }
                });
        });
    }

    fn segment_export_ui(&mut self, ui: &mut Ui, r: &SegmentReport) {
        ui.horizontal_wrapped(|ui| {
            if self.segments.pick.is_empty() {
                ui.label("Pick a segment above to export its customers.");
                return;
            }
            ui.label(format!("Export the customers of {} to", self.segments.pick));
            if self.segments.export_path.is_empty() {
                self.segments.export_path = format!(
                    "{}_customers.csv",
                    self.segments.pick.to_lowercase().replace(' ', "_")
                );
            }
            ui.add(egui::TextEdit::singleline(&mut self.segments.export_path).desired_width(280.0));
            let path = std::path::PathBuf::from(self.segments.export_path.trim());
            let format = ExportFormat::from_path(&path);
            if ui
                .add_enabled(
                    format.is_some() && !self.segments.exporting,
                    egui::Button::new("Export"),
                )
                .on_disabled_hover_text("the file name must end in .csv or .parquet")
                .clicked()
            {
                if let Some(format) = format {
                    self.segments.exporting = true;
                    self.segments.export_result = None;
                    self.send(Command::ExportSegment {
                        customers: Arc::new(r.customers.clone()),
                        segment: self.segments.pick.clone(),
                        path,
                        format,
                    });
                }
            }
            if self.segments.exporting {
                ui.spinner();
            }
        });
        match &self.segments.export_result {
            Some(Ok(m)) => {
                ui.label(m);
            }
            Some(Err(e)) => {
                ui.colored_label(widgets::RED, e);
            }
            None => {}
        }
    }
}

/// A share as a short bar and its percentage.
fn share_bar_ui(ui: &mut Ui, share: f64, colour: egui::Color32) {
    ui.horizontal(|ui| {
        let (rect, _) = ui.allocate_exact_size(egui::vec2(80.0, 10.0), egui::Sense::hover());
        ui.painter()
            .rect_filled(rect, 2.0, ui.visuals().faint_bg_color);
        let w = (share.clamp(0.0, 1.0) as f32) * rect.width();
        let bar = egui::Rect::from_min_size(rect.min, egui::vec2(w, rect.height()));
        ui.painter().rect_filled(bar, 2.0, colour);
        ui.label(percent(share));
    });
}
