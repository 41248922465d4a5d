//! A notebook cell's outputs as the Notebooks panel draws them: made from
//! the `.ipynb` MIME bundles in the backend ([`output_views`]: tables
//! formatted, charts and images decoded), drawn here each frame (tables
//! with sorting, charts with egui_plot, hover and zoom, markdown, KPI
//! cards). Markup from the file is never interpreted: tables come from
//! their data resource, links keep their text only.

use std::sync::Arc;

use egui::text::{LayoutJob, TextFormat};
use egui::{Color32, RichText, Ui};

use super::model::TableData;
use super::widgets::{self, AMBER, RED};
use crate::analytics::metrics::MetricFormat;
use crate::notebook::format::{MimeBundle, Output};
use crate::notebook::render::{
    self, AxisKind, ChartKind, ChartSpec, CHART_MIME, DATARESOURCE_MIME,
};

/// One output, ready to draw.
#[derive(Clone, Debug)]
pub enum OutputView {
    /// Printed text (`stderr` in amber) or a plain value.
    Text {
        /// The text.
        text: String,
        /// Written to stderr (`debug`).
        stderr: bool,
    },
    /// A failed cell: where, the line, a caret and the message.
    Error(String),
    /// Markdown (from `markdown(…)`).
    Markdown(String),
    /// A frame.
    Table {
        /// Its rows as kept in the notebook, formatted.
        table: Arc<TableData>,
        /// Rows the whole frame had.
        total: usize,
        /// The data resource (exported when the whole frame is gone).
        resource: Arc<serde_json::Value>,
    },
    /// A chart's data, drawn interactively.
    Chart(Arc<ChartSpec>),
    /// A picture without chart data (decoded PNG).
    Image {
        /// Unique per decoded image (its texture's key).
        id: u64,
        /// The pixels.
        image: Arc<egui::ColorImage>,
        /// Its text.
        alt: String,
    },
    /// A KPI card.
    Kpi {
        /// Label.
        label: String,
        /// Compact value.
        shown: String,
        /// Exact value (on hover).
        exact: String,
    },
}

/// The outputs of a cell as views (CPU work: call it off the UI thread).
pub fn output_views(outputs: &[Output]) -> Vec<OutputView> {
    outputs.iter().map(output_view).collect()
}

fn output_view(o: &Output) -> OutputView {
    match o {
        Output::Stream { name, text } => OutputView::Text {
            text: text.trim_end_matches('\n').to_owned(),
            stderr: name == "stderr",
        },
        Output::Error {
            traceback, evalue, ..
        } => OutputView::Error(if traceback.is_empty() {
            evalue.clone()
        } else {
            traceback.join("\n")
        }),
        Output::DisplayData { data, .. } | Output::ExecuteResult { data, .. } => bundle_view(data),
    }
}

fn bundle_view(b: &MimeBundle) -> OutputView {
    let plain = b.text("text/plain").unwrap_or_default();
    if let Some(spec) = b
        .json(CHART_MIME)
        .and_then(|v| serde_json::from_value::<ChartSpec>(v.clone()).ok())
        // A chart from a file is held to the limit charts are made with.
        .filter(|s| {
            s.series.iter().map(|x| x.points.len()).sum::<usize>() <= render::MAX_CHART_POINTS
        })
    {
        return OutputView::Chart(Arc::new(spec));
    }
    if let Some(v) = b.json(DATARESOURCE_MIME) {
        if let Ok(table) = render::frame_from_resource(v).and_then(|df| TableData::from_frame(&df))
        {
            let total = v
                .get("salespulse")
                .and_then(|s| s.get("rows"))
                .and_then(serde_json::Value::as_u64)
                .map_or(table.rows.len(), |n| n as usize);
            return OutputView::Table {
                table: Arc::new(table),
                total,
                resource: Arc::new(v.clone()),
            };
        }
    }
    if let Some(k) = render::Kpi::of(b) {
        return OutputView::Kpi {
            shown: k.format.render_compact(k.value, &k.currency),
            exact: k.format.render(k.value, &k.currency),
            label: k.label,
        };
    }
    if let Some(image) = b.text("image/png").and_then(|p| decode_png(&p)) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        return OutputView::Image {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            image: Arc::new(image),
            alt: plain,
        };
    }
    if let Some(md) = b.text("text/markdown") {
        return OutputView::Markdown(md);
    }
    OutputView::Text {
        text: plain,
        stderr: false,
    }
}

/// Most pixels a decoded image may have (a 4000 × 3000 chart).
const MAX_IMAGE_PIXELS: usize = 12_000_000;
/// Longest side of an image as a texture (larger ones are scaled down).
const MAX_IMAGE_SIDE: usize = 2048;

/// A base64 PNG as pixels (`None`: not one, or too large).
fn decode_png(b64: &str) -> Option<egui::ColorImage> {
    use base64::Engine as _;
    let clean: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(clean)
        .ok()?;
    let mut d = png::Decoder::new(std::io::Cursor::new(bytes));
    d.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = d.read_info().ok()?;
    let (w, h) = (r.info().width as usize, r.info().height as usize);
    if w.saturating_mul(h) > MAX_IMAGE_PIXELS {
        return None;
    }
    let mut buf = vec![0; r.output_buffer_size()?];
    let info = r.next_frame(&mut buf).ok()?;
    let px = buf.get(..info.buffer_size())?;
    let rgba: Vec<u8> = match info.color_type {
        png::ColorType::Rgba => px.to_vec(),
        png::ColorType::Rgb => px
            .chunks_exact(3)
            .flat_map(|c| match c {
                [r, g, b] => [*r, *g, *b, 255],
                _ => [0; 4],
            })
            .collect(),
        png::ColorType::Grayscale => px.iter().flat_map(|&g| [g, g, g, 255]).collect(),
        png::ColorType::GrayscaleAlpha => px
            .chunks_exact(2)
            .flat_map(|c| match c {
                [g, a] => [*g, *g, *g, *a],
                _ => [0; 4],
            })
            .collect(),
        png::ColorType::Indexed => return None,
    };
    if rgba.len() != w * h * 4 || w == 0 || h == 0 {
        return None;
    }
    let step = w.max(h).div_ceil(MAX_IMAGE_SIDE).max(1);
    if step == 1 {
        return Some(egui::ColorImage::from_rgba_unmultiplied([w, h], &rgba));
    }
    // Nearest neighbour: every `step`th pixel of every `step`th row.
    let (nw, nh) = (w.div_ceil(step), h.div_ceil(step));
    let mut small = Vec::with_capacity(nw * nh * 4);
    for y in (0..h).step_by(step) {
        for x in (0..w).step_by(step) {
            let at = (y * w + x) * 4;
            small.extend_from_slice(rgba.get(at..at + 4)?);
        }
    }
    Some(egui::ColorImage::from_rgba_unmultiplied([nw, nh], &small))
}

/// A KPI card (the exact value on hover).
pub(crate) fn kpi_ui(ui: &mut Ui, label: &str, shown: &str, exact: &str) {
    egui::Frame::group(ui.style())
        .inner_margin(egui::Margin::symmetric(12, 6))
        .show(ui, |ui| {
            ui.vertical(|ui| {
                ui.label(RichText::new(label).small().weak());
                ui.label(RichText::new(shown).size(20.0).strong())
                    .on_hover_text(exact);
            });
        });
}

/// Text and errors, selectable for copying.
pub(crate) fn text_ui(ui: &mut Ui, text: &str, color: Option<Color32>) {
    let mut t = RichText::new(text).monospace();
    if let Some(c) = color {
        t = t.color(c);
    }
    ui.add(egui::Label::new(t).selectable(true).wrap());
}

/// An error output.
pub(crate) fn error_ui(ui: &mut Ui, text: &str) {
    text_ui(ui, text, Some(RED));
}

/// A stream output.
pub(crate) fn stream_ui(ui: &mut Ui, text: &str, stderr: bool) {
    text_ui(ui, text, stderr.then_some(AMBER));
}

fn time_label(x: f64, with_time: bool) -> String {
    chrono::DateTime::from_timestamp(x.round() as i64, 0)
        .map(|t| {
            if with_time {
                t.format("%Y-%m-%d %H:%M").to_string()
            } else {
                t.format("%m-%d").to_string()
            }
        })
        .unwrap_or_default()
}

/// The x value as text, by the axis's kind.
fn x_text(spec: &ChartSpec, x: f64, long: bool) -> String {
    match spec.x_kind {
        AxisKind::Time => time_label(x, long),
        AxisKind::Category => label_at(&spec.x_labels, x).unwrap_or_default(),
        AxisKind::Number => format_number(x),
    }
}

fn label_at(labels: &[String], x: f64) -> Option<String> {
    let i = x.round();
    if (x - i).abs() > 0.3 || i < 0.0 {
        return None;
    }
    labels.get(i as usize).cloned()
}

/// A value on an axis: compact when large (3.2M), else short.
fn format_number(v: f64) -> String {
    if let Some(c) = crate::analytics::metrics::compact(v) {
        return c;
    }
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// A value under the pointer: whole, with thousands separators.
fn format_exact(v: f64) -> String {
    MetricFormat::Number.render(v, "")
}

/// A colour from low (light) to high (dark blue) for `t` in 0..=1.
fn ramp(t: f64) -> Color32 {
    let t = t.clamp(0.0, 1.0) as f32;
    let lo = [0xde, 0xeb, 0xf7];
    let hi = [0x08, 0x30, 0x6b];
    let mix = |a: u8, b: u8| (f32::from(a) + (f32::from(b) - f32::from(a)) * t).round() as u8;
    Color32::from_rgb(mix(lo[0], hi[0]), mix(lo[1], hi[1]), mix(lo[2], hi[2]))
}

/// A chart from its data: lines, bars, points or a heatmap; hover shows
/// the values, drag and scroll zoom, double-click resets.
pub(crate) fn chart_ui(ui: &mut Ui, id: egui::Id, spec: &Arc<ChartSpec>) {
    if !spec.title.is_empty() {
        ui.label(RichText::new(&spec.title).strong());
    }
    let height = (spec.height as f32 * 0.6).clamp(180.0, 420.0);
    let s = Arc::clone(spec);
    let x_fmt =
        move |m: egui_plot::GridMark, _: &std::ops::RangeInclusive<f64>| x_text(&s, m.value, false);
    let y_spec = Arc::clone(spec);
    let heat = spec.kind == ChartKind::Heatmap;
    let y_fmt = move |m: egui_plot::GridMark, _: &std::ops::RangeInclusive<f64>| {
        if heat {
            label_at(&y_spec.y_labels, m.value).unwrap_or_default()
        } else {
            format_number(m.value)
        }
    };
    let s = Arc::clone(spec);
    let hover = move |h: &egui_plot::HoverPosition<'_>| -> Option<String> {
        let (p, name) = match h {
            egui_plot::HoverPosition::NearDataPoint {
                position,
                plot_name,
                ..
            } => (position, *plot_name),
            egui_plot::HoverPosition::Elsewhere { position } => (position, ""),
        };
        if s.kind == ChartKind::Heatmap {
            let (xi, yi) = (p.x.round(), p.y.round());
            let series = s.series.first()?;
            let at = series
                .points
                .iter()
                .position(|q| q[0] == xi && q[1] == yi)?;
            let v = s.values.get(at)?;
            return Some(format!(
                "{} {}\n{} {}\n{}",
                s.x_name,
                x_text(&s, xi, true),
                s.y_name,
                label_at(&s.y_labels, yi).unwrap_or_default(),
                format_exact(*v)
            ));
        }
        let x = x_text(&s, p.x, true);
        let head = if name.is_empty() {
            String::new()
        } else {
            format!("{name}\n")
        };
        Some(format!(
            "{head}{} {x}\n{} {}",
            s.x_name,
            s.y_name,
            format_exact(p.y)
        ))
    };
    let mut plot = egui_plot::Plot::new(id)
        .height(height)
        .x_axis_formatter(x_fmt)
        .y_axis_formatter(y_fmt)
        .label_formatter(hover)
        .x_axis_label(spec.x_name.clone())
        .y_axis_label(spec.y_name.clone());
    if spec.series.len() > 1 {
        plot = plot.legend(egui_plot::Legend::default());
    }
    if matches!(spec.kind, ChartKind::Bar) {
        plot = plot.include_y(0.0);
    }
    plot.show(ui, |p| match spec.kind {
        ChartKind::Line => {
            for (i, s) in spec.series.iter().enumerate() {
                p.line(
                    egui_plot::Line::new(s.name.as_str(), s.points.clone())
                        .color(widgets::color(i)),
                );
            }
        }
        ChartKind::Scatter => {
            for (i, s) in spec.series.iter().enumerate() {
                p.points(
                    egui_plot::Points::new(s.name.as_str(), s.points.clone())
                        .color(widgets::color(i))
                        .radius(2.5),
                );
            }
        }
        ChartKind::Bar => {
            let n = spec.series.len().max(1) as f64;
            let width = 0.8 / n;
            for (i, s) in spec.series.iter().enumerate() {
                let offset = (i as f64 - (n - 1.0) / 2.0) * width;
                let bars = s
                    .points
                    .iter()
                    .map(|q| egui_plot::Bar::new(q[0] + offset, q[1]).width(width * 0.95))
                    .collect();
                p.bar_chart(
                    egui_plot::BarChart::new(s.name.as_str(), bars).color(widgets::color(i)),
                );
            }
        }
        ChartKind::Heatmap => {
            let (lo, hi) = spec
                .values
                .iter()
                .filter(|v| v.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(*v), b.max(*v))
                });
            let span = if hi > lo { hi - lo } else { 1.0 };
            if let Some(series) = spec.series.first() {
                for (q, v) in series.points.iter().zip(&spec.values) {
                    let (x, y) = (q[0], q[1]);
                    let c = ramp((v - lo) / span);
                    p.polygon(
                        egui_plot::Polygon::new(
                            "cell",
                            vec![
                                [x - 0.5, y - 0.5],
                                [x + 0.5, y - 0.5],
                                [x + 0.5, y + 0.5],
                                [x - 0.5, y + 0.5],
                            ],
                        )
                        .fill_color(c)
                        .stroke(egui::Stroke::new(0.5, c))
                        .allow_hover(false),
                    );
                }
            }
        }
    });
}

/// Markdown as egui text: headings, paragraphs, emphasis, inline and
/// block code, lists, quotes and rules; tables as aligned text. Links
/// show their text, images their description; raw HTML shows as text.
pub(crate) fn markdown_ui(ui: &mut Ui, text: &str) {
    use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
    let mut opts = Options::empty();
    opts.insert(Options::ENABLE_TABLES);
    opts.insert(Options::ENABLE_STRIKETHROUGH);
    let body = egui::TextStyle::Body.resolve(ui.style());
    let mono = egui::TextStyle::Monospace.resolve(ui.style());
    let strong_color = ui.visuals().strong_text_color();
    let text_color = ui.visuals().text_color();
    let code_bg = ui.visuals().code_bg_color;
    let mut job = LayoutJob::default();
    let (mut bold, mut italic, mut strike, mut code_block) = (0u32, 0u32, 0u32, false);
    let mut heading: Option<HeadingLevel> = None;
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut quote = 0u32;
    let flush = |ui: &mut Ui, job: &mut LayoutJob| {
        if !job.text.is_empty() {
            let mut j = std::mem::take(job);
            j.wrap.max_width = ui.available_width();
            ui.label(j);
        }
    };
    for ev in Parser::new_ext(text, opts) {
        match ev {
            Event::Start(Tag::Heading { level, .. }) => {
                flush(ui, &mut job);
                heading = Some(level);
            }
            Event::End(TagEnd::Heading(_)) => {
                flush(ui, &mut job);
                heading = None;
                ui.add_space(2.0);
            }
            Event::Start(Tag::Paragraph) => {}
            Event::End(TagEnd::Paragraph) => {
                flush(ui, &mut job);
                ui.add_space(4.0);
            }
            Event::Start(Tag::Strong) => bold += 1,
            Event::End(TagEnd::Strong) => bold = bold.saturating_sub(1),
            Event::Start(Tag::Emphasis) => italic += 1,
            Event::End(TagEnd::Emphasis) => italic = italic.saturating_sub(1),
            Event::Start(Tag::Strikethrough) => strike += 1,
            Event::End(TagEnd::Strikethrough) => strike = strike.saturating_sub(1),
            Event::Start(Tag::BlockQuote(_)) => quote += 1,
            Event::End(TagEnd::BlockQuote(_)) => quote = quote.saturating_sub(1),
            Event::Start(Tag::CodeBlock(_)) => {
                flush(ui, &mut job);
                code_block = true;
            }
            Event::End(TagEnd::CodeBlock) => {
                code_block = false;
                let t = std::mem::take(&mut job.text);
                job = LayoutJob::default();
                egui::Frame::new()
                    .fill(code_bg)
                    .inner_margin(6)
                    .show(ui, |ui| {
                        ui.label(RichText::new(t.trim_end()).monospace());
                    });
            }
            Event::Start(Tag::List(start)) => {
                flush(ui, &mut job);
                lists.push(start);
            }
            Event::End(TagEnd::List(_)) => {
                flush(ui, &mut job);
                lists.pop();
            }
            Event::Start(Tag::Item) => {
                flush(ui, &mut job);
                let depth = lists.len().saturating_sub(1);
                let bullet = match lists.last_mut() {
                    Some(Some(n)) => {
                        let b = format!("{n}. ");
                        *n += 1;
                        b
                    }
                    _ => "• ".to_owned(),
                };
                job.append(
                    &format!("{}{bullet}", "    ".repeat(depth + 1)),
                    0.0,
                    TextFormat::simple(body.clone(), text_color),
                );
            }
            Event::End(TagEnd::Item) => flush(ui, &mut job),
            Event::Start(Tag::TableRow | Tag::TableHead) => flush(ui, &mut job),
            Event::End(TagEnd::TableRow | TagEnd::TableHead) => {
                let mut j = std::mem::take(&mut job);
                j.wrap.max_width = ui.available_width();
                ui.label(j);
            }
            Event::End(TagEnd::TableCell) => job.append(
                "  │  ",
                0.0,
                TextFormat::simple(body.clone(), ui.visuals().weak_text_color()),
            ),
            Event::Rule => {
                flush(ui, &mut job);
                ui.separator();
            }
            Event::SoftBreak => job.append(" ", 0.0, TextFormat::simple(body.clone(), text_color)),
            Event::HardBreak => job.append("\n", 0.0, TextFormat::simple(body.clone(), text_color)),
            Event::Code(t) => job.append(
                &t,
                0.0,
                TextFormat {
                    font_id: mono.clone(),
                    color: text_color,
                    background: code_bg,
                    ..Default::default()
                },
            ),
            Event::Text(t) | Event::Html(t) | Event::InlineHtml(t) => {
                if code_block {
                    job.append(&t, 0.0, TextFormat::simple(mono.clone(), text_color));
                    continue;
                }
                let size = match heading {
                    Some(HeadingLevel::H1) => body.size * 1.6,
                    Some(HeadingLevel::H2) => body.size * 1.35,
                    Some(HeadingLevel::H3) => body.size * 1.15,
                    Some(_) => body.size * 1.05,
                    None => body.size,
                };
                let mut f = TextFormat::simple(
                    egui::FontId::new(size, body.family.clone()),
                    if heading.is_some() || bold > 0 {
                        strong_color
                    } else if quote > 0 {
                        ui.visuals().weak_text_color()
                    } else {
                        text_color
                    },
                );
                f.italics = italic > 0 || quote > 0;
                if strike > 0 {
                    f.strikethrough = egui::Stroke::new(1.0, text_color);
                }
                job.append(&t, 0.0, f);
            }
            _ => {}
        }
    }
    flush(ui, &mut job);
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui_kittest::kittest::Queryable;

    #[test]
    fn frames_charts_and_kpis_become_views_from_their_data() {
        let df = polars::df!("category" => ["Books", "Toys"], "revenue" => [10.5, 20.25]).unwrap();
        let mut b = render::frame_bundle(&df, 1);
        // Markup in the HTML is never what the panel shows.
        b.set_text("text/html", "<script>alert(1)</script>");
        match bundle_view(&b) {
            OutputView::Table { table, total, .. } => {
                assert_eq!(total, 2);
                assert_eq!(table.columns, vec!["category", "revenue"]);
                assert_eq!(
                    table.rows,
                    vec![vec!["Books".to_owned(), "10.50".to_owned()]]
                );
            }
            other => panic!("{other:?}"),
        }
        let k = render::kpi_bundle("Revenue", 1_240_608_474.55, MetricFormat::Currency, "USD");
        match bundle_view(&k) {
            OutputView::Kpi { shown, exact, .. } => {
                assert_eq!(shown, "$ 1.24B");
                assert_eq!(exact, "$ 1,240,608,474.55");
            }
            other => panic!("{other:?}"),
        }
        let spec = ChartSpec::of(&df, &Default::default()).unwrap();
        let c = spec.bundle().unwrap();
        match bundle_view(&c) {
            OutputView::Chart(s) => assert_eq!(*s, spec),
            other => panic!("{other:?}"),
        }
        // Without chart data, the PNG itself.
        let mut png_only = MimeBundle::default();
        png_only.set_text("image/png", c.text("image/png").unwrap());
        match bundle_view(&png_only) {
            OutputView::Image { image, .. } => {
                assert_eq!(
                    [image.size[0] as u32, image.size[1] as u32],
                    [spec.width, spec.height]
                );
            }
            other => panic!("{other:?}"),
        }
        let mut garbage = MimeBundle::default();
        garbage.set_text("image/png", "bm90IGEgcG5n");
        garbage.set_text("text/plain", "a picture");
        assert!(
            matches!(bundle_view(&garbage), OutputView::Text { text, .. } if text == "a picture")
        );
    }

    fn png_b64(w: u32, h: u32) -> String {
        use base64::Engine as _;
        let mut bytes = Vec::new();
        {
            let mut e = png::Encoder::new(&mut bytes, w, h);
            e.set_color(png::ColorType::Rgb);
            e.set_depth(png::BitDepth::Eight);
            let mut wr = e.write_header().unwrap();
            wr.write_image_data(&vec![200u8; (w * h * 3) as usize])
                .unwrap();
        }
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn large_pictures_are_scaled_down_and_huge_ones_refused() {
        // Wider than a texture may be: scaled to fit 2048 px.
        let img = decode_png(&png_b64(5000, 10)).unwrap();
        assert!(
            img.size[0] <= MAX_IMAGE_SIDE && img.size[0] >= 1667,
            "{:?}",
            img.size
        );
        assert_eq!(img.size[1], 4);
        // More pixels than any chart has: not decoded at all.
        assert!(decode_png(&png_b64(4000, 3001)).is_none());
        assert!(decode_png(&png_b64(3, 2)).is_some());
    }

    #[test]
    fn markdown_shows_its_text_without_markup_or_link_targets() {
        let md = "# Title\n\nSome **bold** and `code`, a [link](https://example.com).\n\n- one\n- two\n\n<b>raw</b>";
        let mut h = egui_kittest::Harness::builder()
            .with_size(egui::vec2(600.0, 400.0))
            .build_ui(move |ui| markdown_ui(ui, md));
        h.run();
        assert!(h.query_by_label("Title").is_some());
        assert!(h.query_by_label("Some bold and code, a link.").is_some());
        assert!(h.query_by_label_contains("one").is_some());
        assert!(h.query_by_label_contains("<b>raw</b>").is_some());
        assert!(h.query_by_label_contains("example.com").is_none());
    }
}
