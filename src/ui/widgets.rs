//! Small drawing pieces shared by the panels.

use egui::{Color32, RichText, Sense, Stroke, Ui, Vec2};

use super::model::{percent, Part, TableData};

/// Status colour: ok, up.
pub(crate) const GREEN: Color32 = Color32::from_rgb(0x3c, 0xb0, 0x5a);
/// Status colour: failed, an error.
pub(crate) const RED: Color32 = Color32::from_rgb(0xe0, 0x4f, 0x4f);
/// Status colour: needs attention, a warning.
pub(crate) const AMBER: Color32 = Color32::from_rgb(0xed, 0xa2, 0x2b);
/// Neutral information (an info toast).
pub(crate) const BLUE: Color32 = Color32::from_rgb(0x4e, 0x79, 0xa7);
/// [`RED`] shading behind an error line in the code editor, on a dark and
/// on a light background.
pub(crate) const ERROR_SHADE: [Color32; 2] = [
    Color32::from_rgba_unmultiplied_const(0xe0, 0x4f, 0x4f, 70),
    Color32::from_rgba_unmultiplied_const(0xe0, 0x4f, 0x4f, 50),
];

/// A qualitative palette that reads on dark and light backgrounds.
pub(crate) const PALETTE: [Color32; 10] = [
    Color32::from_rgb(0x4e, 0x79, 0xa7),
    Color32::from_rgb(0xf2, 0x8e, 0x2b),
    Color32::from_rgb(0xe1, 0x57, 0x59),
    Color32::from_rgb(0x76, 0xb7, 0xb2),
    Color32::from_rgb(0x59, 0xa1, 0x4f),
    Color32::from_rgb(0xed, 0xc9, 0x48),
    Color32::from_rgb(0xb0, 0x7a, 0xa1),
    Color32::from_rgb(0xff, 0x9d, 0xa7),
    Color32::from_rgb(0x9c, 0x75, 0x5f),
    Color32::from_rgb(0xba, 0xb0, 0xac),
];

/// The `i`th colour of the chart palette (it repeats).
pub(crate) fn color(i: usize) -> Color32 {
    PALETTE
        .get(i % PALETTE.len())
        .copied()
        .unwrap_or(Color32::GRAY)
}

/// Whether a rise is good news (revenue) or bad (refund rate).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// A rise is good news.
    Up,
    /// A fall is good news.
    Down,
}

/// One KPI tile: title, value (the exact one on hover when `exact` is
/// given), and the change against the previous period.
pub(crate) fn kpi_card_ui(
    ui: &mut Ui,
    width: f32,
    title: &str,
    value: &str,
    exact: Option<&str>,
    delta: Option<f64>,
    better: Better,
) {
    egui::Frame::group(ui.style())
        .inner_margin(egui::Margin::symmetric(10, 8))
        .show(ui, |ui| {
            ui.set_width(width);
            ui.vertical(|ui| {
                ui.label(RichText::new(title).small().weak());
                let shown =
                    ui.add(egui::Label::new(RichText::new(value).size(22.0).strong()).truncate());
                if let Some(exact) = exact {
                    shown.on_hover_text(exact);
                }
                match delta {
                    Some(d) => {
                        let good = (d >= 0.0) == (better == Better::Up);
                        let c = if d.abs() < 0.0005 {
                            ui.visuals().weak_text_color()
                        } else if good {
                            Color32::from_rgb(0x3c, 0xb0, 0x5a)
                        } else {
                            Color32::from_rgb(0xe0, 0x4f, 0x4f)
                        };
                        let arrow = if d >= 0.0 { "+" } else { "-" };
                        ui.label(
                            RichText::new(format!("{arrow}{} vs previous", percent(d.abs())))
                                .small()
                                .color(c),
                        );
                    }
                    None => {
                        ui.label(RichText::new("no previous period").small().weak());
                    }
                }
            });
        });
}

/// A donut of `parts` with a legend giving each share.
pub(crate) fn donut_ui(ui: &mut Ui, parts: &[Part], diameter: f32) {
    ui.horizontal(|ui| {
        let (rect, resp) = ui.allocate_exact_size(Vec2::splat(diameter), Sense::hover());
        let painter = ui.painter_at(rect);
        let center = rect.center();
        let (outer, inner) = (diameter * 0.5 - 2.0, diameter * 0.28);
        let total: f64 = parts.iter().map(|p| p.share.max(0.0)).sum();
        let mut hovered: Option<usize> = None;
        let pointer = resp.hover_pos();
        if total <= 0.0 {
            painter.circle_stroke(
                center,
                (outer + inner) / 2.0,
                Stroke::new(outer - inner, ui.visuals().faint_bg_color),
            );
        } else {
            let mut a0 = -std::f32::consts::FRAC_PI_2;
            for (i, p) in parts.iter().enumerate() {
                let sweep = (p.share.max(0.0) / total) as f32 * std::f32::consts::TAU;
                if sweep <= 0.0 {
                    continue;
                }
                let a1 = a0 + sweep;
                if let Some(pos) = pointer {
                    let v = pos - center;
                    let r = v.length();
                    let mut ang = v.y.atan2(v.x);
                    while ang < a0 {
                        ang += std::f32::consts::TAU;
                    }
                    if r >= inner && r <= outer && ang <= a1 {
                        hovered = Some(i);
                    }
                }
                // A ring segment as a strip of quads.
                let steps = ((sweep / 0.05).ceil() as usize).max(2);
                let mut mesh = egui::Mesh::default();
                let c = color(i);
                for s in 0..=steps {
                    let a = a0 + sweep * s as f32 / steps as f32;
                    let dir = Vec2::new(a.cos(), a.sin());
                    mesh.colored_vertex(center + dir * outer, c);
                    mesh.colored_vertex(center + dir * inner, c);
                    if s > 0 {
                        let b = (2 * s) as u32;
                        mesh.add_triangle(b - 2, b - 1, b);
                        mesh.add_triangle(b - 1, b + 1, b);
                    }
                }
                painter.add(egui::Shape::mesh(mesh));
                a0 = a1;
            }
        }
        if let Some(p) = hovered.and_then(|i| parts.get(i)) {
            resp.on_hover_text(format!(
                "{}: {} ({:.0} orders)",
                p.label,
                percent(p.share),
                p.orders
            ));
        }
        ui.vertical(|ui| {
            for (i, p) in parts.iter().enumerate() {
                ui.horizontal(|ui| {
                    let (r, _) = ui.allocate_exact_size(Vec2::splat(10.0), Sense::hover());
                    ui.painter().rect_filled(r, 2.0, color(i));
                    ui.label(format!("{}  {}", p.label, percent(p.share)));
                });
            }
        });
    });
}

/// A sparkline of `[t, value]` points with its latest value.
pub(crate) fn sparkline_ui(ui: &mut Ui, id: &str, title: &str, points: &[[f64; 2]], c: Color32) {
    let latest = points.last().map_or(0.0, |p| p[1]);
    ui.vertical(|ui| {
        ui.label(RichText::new(format!("{title}: {latest:.0}/s")).small());
        egui_plot::Plot::new(id)
            .height(48.0)
            .width(ui.available_width().clamp(120.0, 260.0))
            .show_axes(false)
            .show_grid(false)
            .allow_drag(false)
            .allow_zoom(false)
            .allow_scroll(false)
            .allow_boxed_zoom(false)
            .allow_double_click_reset(false)
            .show_x(false)
            .include_y(0.0)
            .show(ui, |p| {
                p.line(
                    egui_plot::Line::new(title, points.to_vec())
                        .color(c)
                        .fill(0.0),
                );
            });
    });
}

/// Sorting of a table: column and direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SortBy {
    /// Column index.
    pub column: usize,
    /// Largest first.
    pub descending: bool,
}

/// A table of `data` rows in `order`; clicking a header asks to sort by it
/// (returned). Rows are virtual: only visible ones are laid out.
pub(crate) fn table_ui(
    ui: &mut Ui,
    id: &str,
    data: &TableData,
    order: Option<&[usize]>,
    sort: Option<SortBy>,
    max_height: f32,
) -> Option<SortBy> {
    use egui_extras::{Column, TableBuilder};
    let mut clicked = None;
    let row_h = ui.text_style_height(&egui::TextStyle::Body) + 4.0;
    ui.push_id(id, |ui| {
        let mut tb = TableBuilder::new(ui)
            .striped(true)
            .resizable(true)
            .max_scroll_height(max_height)
            .cell_layout(egui::Layout::left_to_right(egui::Align::Center));
        for (i, _) in data.columns.iter().enumerate() {
            let numeric = data.numeric.get(i).is_some_and(Option::is_some);
            tb = tb.column(
                Column::auto()
                    .at_least(if numeric { 60.0 } else { 80.0 })
                    .clip(true),
            );
        }
        tb.header(row_h + 4.0, |mut h| {
            for (i, name) in data.columns.iter().enumerate() {
                h.col(|ui| {
                    let mark = match sort {
                        Some(s) if s.column == i => {
                            if s.descending {
                                " (desc)"
                            } else {
                                " (asc)"
                            }
                        }
                        _ => "",
                    };
                    if ui
                        .add(
                            egui::Button::new(RichText::new(format!("{name}{mark}")).strong())
                                .frame(false),
                        )
                        .clicked()
                    {
                        let descending = match sort {
                            Some(s) if s.column == i => !s.descending,
                            // Numbers are most interesting largest first.
                            _ => data.numeric.get(i).is_some_and(Option::is_some),
                        };
                        clicked = Some(SortBy {
                            column: i,
                            descending,
                        });
                    }
                });
            }
        })
        .body(|body| {
            body.rows(row_h, data.rows.len(), |mut row| {
                let r = order.map_or(row.index(), |o| o.get(row.index()).copied().unwrap_or(0));
                if let Some(cells) = data.rows.get(r) {
                    for (i, cell) in cells.iter().enumerate() {
                        row.col(|ui| {
                            if data.numeric.get(i).is_some_and(Option::is_some) {
                                ui.with_layout(
                                    egui::Layout::right_to_left(egui::Align::Center),
                                    |ui| {
                                        ui.label(cell);
                                    },
                                );
                            } else {
                                ui.label(cell);
                            }
                        });
                    }
                }
            });
        });
    });
    clicked
}
