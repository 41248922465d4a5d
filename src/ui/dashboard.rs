//! The dashboard: range and filters, KPI tiles, trend, breakdowns, top tables.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use egui::{RichText, Ui};

use super::model::{
    count, count_compact, delta, money, money_compact, percent, Dashboard, Kpis, MetricPanel,
    MetricView, Part,
};
use super::widgets::{self, Better};
use super::App;
use crate::analytics::metrics::{MetricFormat, MetricInfo, MetricKind};
use crate::analytics::{Filters, TimeRange};

/// What the dashboard shows and what it asked the backend to watch.
#[derive(Default)]
pub struct DashboardState {
    /// The dashboard last received.
    pub(super) shown: Option<Arc<Dashboard>>,
    /// Why the last refresh failed.
    pub(super) error: Option<String>,
    /// Dashboards received so far.
    pub(super) received: u64,
    /// The watch whose first dashboard has not arrived yet.
    pub(super) pending: Option<u64>,
    /// What the backend was last asked to watch.
    pub(super) watching: Option<(Filters, Option<Duration>)>,
    /// That watch's seq (dashboards of older watches still in flight are
    /// dropped).
    pub(super) watch_seq: u64,
    /// Send the watch again (a refresh was asked for).
    pub(super) refresh_wanted: bool,
    /// The custom range being typed.
    pub(super) custom_from: String,
    /// The custom range being typed.
    pub(super) custom_to: String,
}

impl DashboardState {
    /// Takes a dashboard of the current watch; older ones are dropped.
    pub(super) fn apply(&mut self, seq: u64, result: Result<Arc<Dashboard>, String>) {
        if seq < self.watch_seq {
            return;
        }
        if self.pending == Some(seq) {
            self.pending = None;
        }
        match result {
            Ok(d) => {
                self.received += 1;
                self.shown = Some(d);
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }
}

/// The range presets: label and minutes (`None` = all data).
pub(crate) const RANGES: [(&str, Option<i64>); 5] = [
    ("15 min", Some(15)),
    ("1 h", Some(60)),
    ("24 h", Some(1_440)),
    ("7 d", Some(10_080)),
    ("All", None),
];

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
                .ok()
                .map(|t| t.and_utc())
        })
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
}

impl App {
    fn range_bar_ui(&mut self, ui: &mut Ui) {
        ui.horizontal_wrapped(|ui| {
            ui.label("Range");
            let mut changed = false;
            for (label, minutes) in RANGES {
                let selected = match (&self.settings.filters.range, minutes) {
                    (TimeRange::All, None) => true,
                    (TimeRange::Last { minutes: m }, Some(x)) => *m == x,
                    _ => false,
                };
                if ui.selectable_label(selected, label).clicked() && !selected {
                    self.settings.filters.range = match minutes {
                        Some(m) => TimeRange::Last { minutes: m },
                        None => TimeRange::All,
                    };
                    changed = true;
                }
            }
            let custom = matches!(self.settings.filters.range, TimeRange::Between { .. });
            let id = ui.make_persistent_id("custom_open");
            let mut open = ui.data(|d| d.get_temp::<bool>(id)).unwrap_or(custom);
            if ui.selectable_label(custom || open, "Custom").clicked() {
                open = !open;
                if open && self.dash.custom_from.is_empty() {
                    if let Some(s) = self.dash.shown.as_ref().and_then(|d| d.span) {
                        self.dash.custom_from = s.from.format("%Y-%m-%d %H:%M").to_string();
                        self.dash.custom_to = s.to.format("%Y-%m-%d %H:%M").to_string();
                    }
                }
            }
            ui.data_mut(|d| d.insert_temp(id, open));
            if open {
                ui.label("from");
                ui.add(
                    egui::TextEdit::singleline(&mut self.dash.custom_from)
                        .hint_text("YYYY-MM-DD HH:MM")
                        .desired_width(130.0),
                );
                ui.label("to");
                ui.add(
                    egui::TextEdit::singleline(&mut self.dash.custom_to)
                        .hint_text("YYYY-MM-DD HH:MM")
                        .desired_width(130.0),
                );
                let parsed = (
                    parse_time(&self.dash.custom_from),
                    parse_time(&self.dash.custom_to),
                );
                let valid = matches!(parsed, (Some(f), Some(t)) if f < t);
                if ui
                    .add_enabled(valid, egui::Button::new("Apply range"))
                    .clicked()
                {
                    if let (Some(from), Some(to)) = parsed {
                        self.settings.filters.range = TimeRange::Between { from, to };
                        changed = true;
                    }
                }
                let untouched = self.dash.custom_from.is_empty() && self.dash.custom_to.is_empty();
                if !(valid || untouched) {
                    ui.label(
                        RichText::new("times as YYYY-MM-DD [HH:MM] UTC, from before to")
                            .small()
                            .weak(),
                    );
                }
            }
            ui.separator();
            ui.checkbox(&mut self.settings.auto_refresh, "Auto-refresh");
            ui.add(
                egui::DragValue::new(&mut self.settings.refresh_secs)
                    .range(1.0..=3600.0)
                    .speed(0.5)
                    .suffix(" s"),
            );
            if ui.button("Refresh now").clicked() {
                changed = true;
            }
            if self.dash.pending.is_some() {
                ui.spinner();
            }
            if changed {
                self.request_refresh();
            }
        });
        ui.horizontal_wrapped(|ui| {
            ui.label("Filters");
            let dims = self.dims.clone();
            let f = &mut self.settings.filters;
            let mut changed = false;
            for (name, values, chosen) in [
                ("Category", &dims.categories, &mut f.categories),
                ("Payment", &dims.payment_methods, &mut f.payment_methods),
                ("Region", &dims.regions, &mut f.regions),
                ("Channel", &dims.channels, &mut f.channels),
                ("Status", &dims.statuses, &mut f.statuses),
            ] {
                changed |= multi_select_ui(ui, name, values, chosen);
            }
            let any = !f.no_dimensions();
            if ui
                .add_enabled(any, egui::Button::new("Clear filters"))
                .clicked()
            {
                f.categories.clear();
                f.payment_methods.clear();
                f.regions.clear();
                f.channels.clear();
                f.statuses.clear();
                changed = true;
            }
            if changed {
                self.request_refresh();
            }
        });
    }

    pub(super) fn dashboard_ui(&mut self, ui: &mut Ui) {
        self.range_bar_ui(ui);
        ui.separator();
        if let Some(e) = &self.dash.error {
            ui.colored_label(widgets::RED, format!("refresh failed: {e}"));
        }
        let Some(d) = self.dash.shown.clone() else {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("loading the dashboard…");
            });
            return;
        };
        let mut edit = None;
        egui::ScrollArea::vertical()
            .auto_shrink([false, false])
            .show(ui, |ui| {
                span_line_ui(ui, &d);
                kpis_ui(ui, &d.current, d.previous.as_ref());
                ui.add_space(8.0);
                trend_ui(ui, &d);
                ui.add_space(8.0);
                let wide = ui.available_width() >= 1100.0;
                let breakdown = |ui: &mut Ui, which: usize| match which {
                    0 => section_ui(ui, "Revenue by category", |ui| {
                        bars_ui(ui, &d.categories, true)
                    }),
                    1 => section_ui(ui, "Payment methods (orders)", |ui| {
                        widgets::donut_ui(ui, &d.payments, 150.0)
                    }),
                    _ => section_ui(ui, "Order status", |ui| bars_ui(ui, &d.statuses, false)),
                };
                if wide {
                    ui.columns(3, |c| {
                        for (i, col) in c.iter_mut().enumerate() {
                            breakdown(col, i);
                        }
                    });
                } else {
                    for i in 0..3 {
                        breakdown(ui, i);
                    }
                }
                ui.add_space(8.0);
                let tables = |ui: &mut Ui, which: usize| {
                    let (title, t) = if which == 0 {
                        ("Top products", &d.top_products)
                    } else {
                        ("Top customers", &d.top_customers)
                    };
                    section_ui(ui, title, |ui| {
                        widgets::table_ui(ui, title, t, None, None, 300.0);
                    });
                };
                if wide {
                    ui.columns(2, |c| {
                        for (i, col) in c.iter_mut().enumerate() {
                            tables(col, i);
                        }
                    });
                } else {
                    for i in 0..2 {
                        tables(ui, i);
                    }
                }
                if !d.metrics.is_empty() {
                    ui.add_space(8.0);
                    if let Some(file) = custom_metrics_ui(ui, &d.metrics) {
                        edit = Some(file);
                    }
                }
            });
        if let Some(file) = edit {
            let rel = if file.contains('/') {
                file
            } else {
                format!("metrics/{file}")
            };
            self.scripts.open_script(&rel);
            self.tab = super::Tab::Scripts;
        }
    }
}

/// A dropdown of checkboxes; returns true when the selection changed.
fn multi_select_ui(ui: &mut Ui, name: &str, values: &[String], chosen: &mut Vec<String>) -> bool {
    let mut changed = false;
    let text = match chosen.as_slice() {
        [] => format!("{name}: any"),
        [one] => format!("{name}: {one}"),
        many => format!("{name}: {} selected", many.len()),
    };
    egui::ComboBox::from_id_salt(("filter", name))
        .selected_text(text)
        .close_behavior(egui::PopupCloseBehavior::CloseOnClickOutside)
        .show_ui(ui, |ui| {
            if values.is_empty() {
                ui.label(RichText::new("no data yet").weak());
            }
            for v in values {
                let mut on = chosen.contains(v);
                if ui.checkbox(&mut on, v).changed() {
                    if on {
                        chosen.push(v.clone());
                        chosen.sort();
                    } else {
                        chosen.retain(|c| c != v);
                    }
                    changed = true;
                }
            }
        });
    changed
}

fn section_ui(ui: &mut Ui, title: &str, body: impl FnOnce(&mut Ui)) {
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.label(RichText::new(title).strong());
        ui.add_space(4.0);
        body(ui);
    });
}

fn span_line_ui(ui: &mut Ui, d: &Dashboard) {
    let span = match d.span {
        Some(s) => format!(
            "{} – {} UTC",
            s.from.format("%Y-%m-%d %H:%M"),
            s.to.format("%Y-%m-%d %H:%M")
        ),
        None => "all data".into(),
    };
    ui.label(
        RichText::new(format!(
            "{span} · refreshed in {:.0} ms · {}/{} views from cache",
            d.elapsed.as_secs_f64() * 1e3,
            d.cached,
            d.views
        ))
        .small()
        .weak(),
    );
}

fn kpis_ui(ui: &mut Ui, now: &Kpis, before: Option<&Kpis>) {
    let d =
        |f: fn(&Kpis) -> Option<f64>| before.and_then(|b| Some(delta(f(now)?, f(b)?)).flatten());
    let tile = |title: &'static str,
                v: Option<f64>,
                compact: fn(f64) -> String,
                exact: fn(f64) -> String| Tile {
        title: title.to_owned(),
        value: v.map_or("—".to_owned(), compact),
        exact: v.map(exact),
        delta: None,
        better: Better::Up,
    };
    let tiles = [
        Tile {
            delta: d(|k| Some(k.revenue)),
            ..tile("Revenue", Some(now.revenue), money_compact, money)
        },
        Tile {
            delta: d(|k| Some(k.orders)),
            ..tile("Orders", Some(now.orders), count_compact, count)
        },
        Tile {
            delta: d(|k| k.avg_order_value),
            ..tile(
                "Average order value",
                now.avg_order_value,
                money_compact,
                money,
            )
        },
        Tile {
            delta: d(|k| k.conversion_rate),
            ..tile("Conversion rate", now.conversion_rate, percent, percent)
        },
        Tile {
            delta: d(|k| k.refund_rate),
            better: Better::Down,
            ..tile("Refund rate", now.refund_rate, percent, percent)
        },
        Tile {
            delta: d(|k| Some(k.customers)),
            ..tile("Customers", Some(now.customers), count_compact, count)
        },
    ];
    tiles_ui(ui, &tiles);
}

/// One KPI tile's content.
struct Tile {
    title: String,
    /// What the tile shows (compact units for large values).
    value: String,
    /// The exact value, shown on hover when it differs.
    exact: Option<String>,
    /// Change against the previous period.
    delta: Option<f64>,
    better: Better,
}

/// KPI tiles in balanced rows: six, three, two or one per row, each at
/// least 180 points wide (large values are compact: `$1.24B`).
fn tiles_ui(ui: &mut Ui, tiles: &[Tile]) {
    let spacing = ui.spacing().item_spacing.x;
    let avail = ui.available_width();
    let fits = |n: f32| n * (180.0 + 24.0) + (n - 1.0) * spacing <= avail;
    let per_row = [6.0, 3.0, 2.0, 1.0]
        .into_iter()
        .find(|&n| fits(n))
        .unwrap_or(1.0);
    let width = (avail - (per_row - 1.0) * spacing) / per_row - 24.0;
    // Rows laid out explicitly: a wrapping layout cannot wrap a frame whose
    // size is only known after its contents.
    for row in tiles.chunks(per_row as usize) {
        ui.horizontal(|ui| {
            for t in row {
                let exact = t.exact.as_deref().filter(|e| *e != t.value);
                widgets::kpi_card_ui(ui, width, &t.title, &t.value, exact, t.delta, t.better);
            }
        });
    }
}

/// A custom metric's value in its format.
fn metric_value(info: Option<&MetricInfo>, v: f64) -> String {
    info.map_or(MetricFormat::Number, |i| i.format)
        .render(v, "USD")
}

/// The custom metrics: KPI tiles first, then charts and tables, two a row
/// on a wide window. Each has an Edit button that opens its script.
fn custom_metrics_ui(ui: &mut Ui, panels: &[MetricPanel]) -> Option<String> {
    let mut edit = None;
    ui.label(RichText::new("Custom metrics").strong());
    ui.label(
        RichText::new("scripts/metrics/*.rhai · edit them in the Scripts panel")
            .small()
            .weak(),
    );
    let tiles: Vec<Tile> = panels
        .iter()
        .filter(|p| p.info.kind == MetricKind::Kpi && matches!(p.view, Some(Ok(_))))
        .filter_map(|p| match &p.view {
            Some(Ok(MetricView::Kpi { value, previous })) => Some(Tile {
                title: p.info.name.clone(),
                value: value.map_or("—".to_owned(), |v| p.info.format.render_compact(v, "USD")),
                exact: value.map(|v| metric_value(Some(&p.info), v)),
                delta: value.zip(*previous).and_then(|(v, b)| delta(v, b)),
                better: Better::Up,
            }),
            _ => None,
        })
        .collect();
    if !tiles.is_empty() {
        tiles_ui(ui, &tiles);
        ui.add_space(6.0);
    }
    let others: Vec<&MetricPanel> = panels
        .iter()
        .filter(|p| !(p.info.kind == MetricKind::Kpi && matches!(p.view, Some(Ok(_)))))
        .collect();
    let wide = ui.available_width() >= 1100.0;
    let panel = |ui: &mut Ui, p: &MetricPanel, edit: &mut Option<String>| {
        egui::Frame::group(ui.style()).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.horizontal(|ui| {
                ui.label(RichText::new(&p.info.name).strong())
                    .on_hover_text(&p.info.description);
                if ui
                    .small_button("Edit")
                    .on_hover_text("open the script in the Scripts panel")
                    .clicked()
                {
                    *edit = Some(p.info.file.clone());
                }
            });
            match &p.view {
                None => {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("computing…");
                    });
                }
                Some(Err(e)) => {
                    ui.colored_label(widgets::RED, e);
                }
                Some(Ok(v)) => metric_view_ui(ui, &p.info.file, Some(&p.info), v),
            }
        });
    };
    if wide {
        for pair in others.chunks(2) {
            ui.columns(2, |c| {
                for (col, p) in c.iter_mut().zip(pair) {
                    panel(col, p, &mut edit);
                }
            });
        }
    } else {
        for p in others {
            panel(ui, p, &mut edit);
        }
    }
    edit
}

/// Draws a metric's value: a big number, lines, bars or a table.
pub(super) fn metric_view_ui(ui: &mut Ui, id: &str, info: Option<&MetricInfo>, v: &MetricView) {
    match v {
        MetricView::Kpi { value, previous } => {
            let text = value.map_or("—".to_owned(), |x| metric_value(info, x));
            ui.label(RichText::new(text).size(26.0).strong());
            if let (Some(x), Some(b)) = (value, previous) {
                ui.label(
                    RichText::new(format!("previous period {}", metric_value(info, *b)))
                        .small()
                        .weak(),
                );
                let _ = x;
            }
        }
        MetricView::Line {
            x_name,
            x_time,
            series,
        } => {
            let time = *x_time;
            let fmt_x = move |x: f64| {
                if time {
                    DateTime::from_timestamp(x as i64, 0)
                        .map(|t| t.format("%m-%d %H:%M").to_string())
                        .unwrap_or_default()
                } else {
                    format!("{x}")
                }
            };
            let info = info.cloned();
            let x_name = x_name.clone();
            egui_plot::Plot::new(("metric_line", id))
                .height(220.0)
                .legend(egui_plot::Legend::default())
                .x_axis_formatter(move |m, _| fmt_x(m.value))
                .label_formatter(move |hover| {
                    let p = match hover {
                        egui_plot::HoverPosition::NearDataPoint { position, .. } => position,
                        egui_plot::HoverPosition::Elsewhere { position } => position,
                    };
                    Some(format!(
                        "{x_name} {}\n{}",
                        fmt_x(p.x),
                        metric_value(info.as_ref(), p.y)
                    ))
                })
                .show(ui, |p| {
                    for (i, (name, points)) in series.iter().enumerate() {
                        p.line(
                            egui_plot::Line::new(name.as_str(), points.clone())
                                .color(widgets::color(i)),
                        );
                    }
                });
        }
        MetricView::Bar(parts) => metric_bars_ui(ui, parts, info),
        MetricView::Table(t) => {
            widgets::table_ui(ui, id, t, None, None, 280.0);
            ui.label(
                RichText::new(format!("{} rows", t.rows.len()))
                    .small()
                    .weak(),
            );
        }
    }
}

/// Horizontal bars of a metric, values in its format.
fn metric_bars_ui(ui: &mut Ui, parts: &[Part], info: Option<&MetricInfo>) {
    if parts.is_empty() {
        ui.label(RichText::new("no data in this range").weak());
        return;
    }
    let max = parts
        .iter()
        .map(|p| p.value.abs())
        .fold(0.0, f64::max)
        .max(1e-9);
    for (i, p) in parts.iter().enumerate() {
        ui.horizontal(|ui| {
            ui.add_sized([110.0, 18.0], egui::Label::new(&p.label).truncate());
            let avail = (ui.available_width() - 110.0).max(40.0);
            let w = (p.value.abs() / max) as f32 * avail;
            let (rect, resp) =
                ui.allocate_exact_size(egui::vec2(avail, 14.0), egui::Sense::hover());
            let bar = egui::Rect::from_min_size(rect.min, egui::vec2(w.max(1.0), rect.height()));
            ui.painter().rect_filled(bar, 2.0, widgets::color(i));
            let value = metric_value(info, p.value);
            resp.on_hover_text(format!("{}: {value}", p.label));
            ui.label(value);
        });
    }
}

fn trend_ui(ui: &mut Ui, d: &Dashboard) {
    let g = d.granularity.map_or("auto", |g| g.as_str());
    section_ui(ui, &format!("Revenue trend (per {g})"), |ui| {
        let fmt_time = |x: f64| {
            DateTime::from_timestamp(x as i64, 0)
                .map(|t| t.format("%m-%d %H:%M").to_string())
                .unwrap_or_default()
        };
        egui_plot::Plot::new("revenue_trend")
            .height(240.0)
            .legend(egui_plot::Legend::default())
            .x_axis_formatter(move |m, _| fmt_time(m.value))
            .y_axis_formatter(|m, _| money_compact(m.value))
            .label_formatter(|hover| {
                let p = match hover {
                    egui_plot::HoverPosition::NearDataPoint { position, .. } => position,
                    egui_plot::HoverPosition::Elsewhere { position } => position,
                };
                let t = DateTime::from_timestamp(p.x as i64, 0)
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default();
                Some(format!("{t} UTC\n{}", money(p.y)))
            })
            .include_y(0.0)
            .show(ui, |p| {
                p.line(
                    egui_plot::Line::new("revenue", d.trend_revenue.clone())
                        .color(widgets::color(0))
                        .fill(0.0),
                );
                if let Some(f) = &d.trend_forecast {
                    forecast_ui(p, f);
                }
            });
        if let Some(f) = &d.trend_forecast {
            let note = if f.anomalies.is_empty() {
                format!("forecast: {} from the range shown", f.model)
            } else {
                format!(
                    "forecast: {} from the range shown · {} unexpected",
                    f.model,
                    f.anomalies.len()
                )
            };
            ui.label(RichText::new(note).weak().small());
        }
    });
}

/// The forecast past the last complete bucket: the 95 % and 80 % bands,
/// the expected revenue dashed, and unexpected buckets as red points.
fn forecast_ui(p: &mut egui_plot::PlotUi<'_>, f: &super::model::TrendForecast) {
    let colour = widgets::color(0);
    for (name, band, alpha) in [("95 % band", &f.band95, 40u8), ("80 % band", &f.band80, 70)] {
        if band.is_empty() {
            continue;
        }
        let mut ring: Vec<[f64; 2]> = band.iter().map(|b| [b[0], b[2]]).collect();
        ring.extend(band.iter().rev().map(|b| [b[0], b[1]]));
        p.polygon(
            egui_plot::Polygon::new(name, ring)
                .fill_color(egui::Color32::from_rgba_unmultiplied(
                    colour.r(),
                    colour.g(),
                    colour.b(),
                    alpha,
                ))
                .stroke(egui::Stroke::NONE),
        );
    }
    p.line(
        egui_plot::Line::new("forecast", f.point.clone())
            .color(colour)
            .style(egui_plot::LineStyle::dashed_loose()),
    );
    if !f.anomalies.is_empty() {
        p.points(
            egui_plot::Points::new("unexpected", f.anomalies.clone())
                .color(widgets::RED)
                .radius(4.0),
        );
    }
}

/// Horizontal bars with labels and values.
fn bars_ui(ui: &mut Ui, parts: &[Part], as_money: bool) {
    if parts.is_empty() {
        ui.label(RichText::new("no data in this range").weak());
        return;
    }
    let max = parts.iter().map(|p| p.value).fold(0.0, f64::max).max(1e-9);
    let label_w = 110.0;
    for (i, p) in parts.iter().enumerate() {
        ui.horizontal(|ui| {
            ui.add_sized([label_w, 18.0], egui::Label::new(&p.label).truncate());
            let avail = (ui.available_width() - 150.0).max(40.0);
            let w = (p.value / max) as f32 * avail;
            let (rect, resp) =
                ui.allocate_exact_size(egui::vec2(avail, 14.0), egui::Sense::hover());
            let bar = egui::Rect::from_min_size(rect.min, egui::vec2(w.max(1.0), rect.height()));
            ui.painter().rect_filled(bar, 2.0, widgets::color(i));
            let value = if as_money {
                money(p.value)
            } else {
                count(p.value)
            };
            resp.on_hover_text(format!("{}: {value} ({})", p.label, percent(p.share)));
            ui.label(format!("{value} · {}", percent(p.share)));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui_kittest::kittest::Queryable;

    #[test]
    fn a_revenue_in_the_billions_fits_its_tile_and_shows_exactly_on_hover() {
        let now = Kpis {
            revenue: 1_240_608_474.55,
            orders: 5_012_345.0,
            avg_order_value: Some(247.51),
            conversion_rate: Some(0.0312),
            refund_rate: Some(0.021),
            customers: 48_210.0,
        };
        let mut h = egui_kittest::Harness::builder()
            .with_size(egui::vec2(1024.0, 300.0))
            .build_ui(move |ui| kpis_ui(ui, &now, None));
        h.run();
        for shown in ["$1.24B", "5.01M", "$247.51", "3.1%", "2.1%", "48,210"] {
            assert!(h.query_by_label(shown).is_some(), "tile {shown:?} missing");
        }
        assert!(h.query_by_label("$1,240,608,474.55").is_none());
        h.get_by_label("$1.24B").hover();
        h.run();
        assert!(
            h.query_by_label("$1,240,608,474.55").is_some(),
            "the exact revenue on hover"
        );
    }

    #[test]
    fn custom_times_parse_in_three_forms() {
        let t = |s| parse_time(s).map(|t| t.to_rfc3339());
        assert_eq!(t("2026-11-01"), Some("2026-11-01T00:00:00+00:00".into()));
        assert_eq!(
            t("2026-11-01 13:05"),
            Some("2026-11-01T13:05:00+00:00".into())
        );
        assert_eq!(
            t("2026-11-01T13:05:00Z"),
            Some("2026-11-01T13:05:00+00:00".into())
        );
        assert_eq!(t("yesterday"), None);
    }
}
