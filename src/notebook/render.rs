//! Outputs that render anywhere: frames as plain text, an HTML table and a
//! Table Schema data resource; KPIs as a small HTML card; charts as PNG and
//! SVG drawn with `plotters` in a font bundled in the binary (no system
//! fonts, no JavaScript, no network), plus the chart's data
//! ([`CHART_MIME`]) for the app to draw interactively.

use std::fmt::Write as _;
use std::sync::Once;

use base64::Engine as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::format::MimeBundle;
use crate::analytics::metrics::MetricFormat;

/// The MIME type of a chart's data (kind, axes and points), which the app
/// draws with egui_plot; other front ends show the PNG or SVG.
pub const CHART_MIME: &str = "application/vnd.salespulse.chart+json";

/// Table Schema data resource (nteract, JupyterLab's data grid).
pub const DATARESOURCE_MIME: &str = "application/vnd.dataresource+json";

/// The MIME type of a KPI's label, value and format (the report and the
/// app draw the card from it).
pub const KPI_MIME: &str = "application/vnd.salespulse.kpi+json";

/// Rows of a frame shown by `display` (and as a cell's value).
pub const PREVIEW_ROWS: usize = 20;

/// Rows `table` shows unless told otherwise; and the most it shows.
pub const TABLE_ROWS: usize = 500;
/// The most rows `table(frame, #{ rows })` may show.
pub const MAX_TABLE_ROWS: usize = 10_000;

/// Escapes text for HTML content and attributes.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A float as a table shows it: at most six decimals, trailing zeros cut.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    if f != 0.0 && f.abs() < 1e-4 {
        return format!("{f:.3e}");
    }
    let s = format!("{f:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_owned()
    }
}

/// One cell as text; `None` for null.
fn cell_text(v: &AnyValue) -> Option<String> {
    Some(match v {
        AnyValue::Null => return None,
        AnyValue::Float64(f) => float_text(*f),
        AnyValue::Float32(f) => float_text(f64::from(*f)),
        AnyValue::String(s) => (*s).to_owned(),
        AnyValue::StringOwned(s) => s.to_string(),
        AnyValue::Boolean(b) => b.to_string(),
        AnyValue::Datetime(v, unit, _) | AnyValue::DatetimeOwned(v, unit, _) => {
            time_text(to_micros(*v, *unit))
        }
        AnyValue::Date(d) => chrono::DateTime::from_timestamp(i64::from(*d) * 86_400, 0)
            .map_or_else(|| d.to_string(), |t| t.format("%Y-%m-%d").to_string()),
        other => other.to_string(),
    })
}

fn to_micros(v: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Nanoseconds => v / 1_000,
        TimeUnit::Microseconds => v,
        TimeUnit::Milliseconds => v.saturating_mul(1_000),
    }
}

/// A time as tables show it (UTC): seconds only when not zero.
fn time_text(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) if us % 86_400_000_000 == 0 => t.format("%Y-%m-%d").to_string(),
        Some(t) if us % 60_000_000 == 0 => t.format("%Y-%m-%d %H:%M").to_string(),
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => us.to_string(),
    }
}

fn is_number(dt: &DataType) -> bool {
    dt.is_primitive_numeric()
}

/// The Table Schema type of a column.
fn schema_type(dt: &DataType) -> &'static str {
    match dt {
        d if d.is_integer() => "integer",
        d if d.is_float() => "number",
        DataType::Boolean => "boolean",
        DataType::Datetime(..) => "datetime",
        DataType::Date => "date",
        _ => "string",
    }
}

/// One cell as JSON (numbers as numbers, times as ISO 8601 text).
fn cell_json(v: &AnyValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(*b),
        AnyValue::Float64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AnyValue::Float32(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AnyValue::Datetime(x, unit, _) | AnyValue::DatetimeOwned(x, unit, _) => {
            chrono::DateTime::from_timestamp_micros(to_micros(*x, *unit)).map_or(Value::Null, |t| {
                Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            })
        }
        other => match other.extract::<i64>() {
            Some(i) if other.dtype().is_integer() => Value::from(i),
            _ => cell_text(other).map_or(Value::Null, Value::String),
        },
    }
}

/// The first `rows` rows of `df`, as text per cell (`None`: null).
fn text_rows(df: &DataFrame, rows: usize) -> Vec<Vec<Option<String>>> {
    let n = df.height().min(rows);
    (0..n)
        .map(|r| {
            df.columns()
                .iter()
                .map(|c| c.get(r).ok().and_then(|v| cell_text(&v)))
                .collect()
        })
        .collect()
}

fn shape_note(height: usize, width: usize, shown: usize) -> String {
    let rows = crate::analytics::metrics::thousands(height as f64, 0);
    let mut s = format!(
        "{rows} row{} × {width} column{}",
        if height == 1 { "" } else { "s" },
        if width == 1 { "" } else { "s" }
    );
    if shown < height {
        let _ = write!(s, " (first {shown} shown)");
    }
    s
}

/// An HTML table of text cells (`None`: null), every cell escaped.
fn html_table(
    names: &[String],
    numeric: &[bool],
    rows: &[Vec<Option<String>>],
    note: &str,
) -> String {
    let mut html = String::from("<table class=\"dataframe sp-frame\">\n<thead><tr>");
    for (i, n) in names.iter().enumerate() {
        let class = if numeric.get(i).copied().unwrap_or(false) {
            " class=\"num\""
        } else {
            ""
        };
        let _ = write!(html, "<th{class}>{}</th>", escape_html(n));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        html.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let num = numeric.get(i).copied().unwrap_or(false);
            match (cell, num) {
                (None, _) => html.push_str("<td class=\"null\"></td>"),
                (Some(t), true) => {
                    let _ = write!(html, "<td class=\"num\">{}</td>", escape_html(t));
                }
                (Some(t), false) => {
                    let _ = write!(html, "<td>{}</td>", escape_html(t));
                }
            }
        }
        html.push_str("</tr>\n");
    }
    let _ = write!(
        html,
        "</tbody>\n</table>\n<p class=\"sp-shape\">{}</p>",
        escape_html(note)
    );
    html
}

/// A data resource written by [`frame_bundle`] as an HTML table, built
/// from its values alone (no markup of the file is kept); `None` when it
/// is not one.
pub fn html_from_resource(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let fields = v.get("schema")?.get("fields")?.as_array()?;
    let names: Vec<String> = fields
        .iter()
        .map(|f| f.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect::<Option<_>>()?;
    let types: Vec<&str> = fields
        .iter()
        .map(|f| f.get("type").and_then(Value::as_str).unwrap_or("string"))
        .collect();
    let numeric: Vec<bool> = types
        .iter()
        .map(|t| matches!(*t, "integer" | "number"))
        .collect();
    let data = v.get("data")?.as_array()?;
    let rows: Vec<Vec<Option<String>>> = data
        .iter()
        .take(MAX_TABLE_ROWS)
        .map(|row| {
            names
                .iter()
                .zip(&types)
                .map(|(n, t)| match row.get(n) {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(x)) if *t == "integer" => Some(x.to_string()),
                    Some(Value::Number(x)) => x.as_f64().map(float_text),
                    Some(Value::String(s)) if *t == "datetime" => Some(
                        chrono::DateTime::parse_from_rfc3339(s)
                            .map_or_else(|_| s.clone(), |d| time_text(d.timestamp_micros())),
                    ),
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                })
                .collect()
        })
        .collect();
    let total = v
        .get("salespulse")
        .and_then(|s| s.get("rows"))
        .and_then(Value::as_u64)
        .map_or(rows.len(), |n| n as usize);
    Some(html_table(
        &names,
        &numeric,
        &rows,
        &shape_note(total, names.len(), rows.len()),
    ))
}

/// The frame a data resource written by [`frame_bundle`] holds (the rows
/// it kept): integers, numbers, booleans, UTC times and dates by their
/// schema type, everything else as text. For exporting a table output
/// whose whole frame is gone (a notebook read from disk).
pub fn frame_from_resource(v: &serde_json::Value) -> Result<DataFrame, String> {
    use serde_json::Value;
    let bad = || "not a table data resource (schema.fields and data)".to_owned();
    let fields = v
        .get("schema")
        .and_then(|s| s.get("fields"))
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    let data = v.get("data").and_then(Value::as_array).ok_or_else(bad)?;
    let mut columns = Vec::with_capacity(fields.len());
    for f in fields {
        let name = f.get("name").and_then(Value::as_str).ok_or_else(bad)?;
        let ty = f.get("type").and_then(Value::as_str).unwrap_or("string");
        let cells = data
            .iter()
            .map(|row| row.get(name).filter(|x| !x.is_null()));
        let col = match ty {
            "integer" => Column::new(
                name.into(),
                cells.map(|x| x.and_then(Value::as_i64)).collect::<Vec<_>>(),
            ),
            "number" => Column::new(
                name.into(),
                cells.map(|x| x.and_then(Value::as_f64)).collect::<Vec<_>>(),
            ),
            "boolean" => Column::new(
                name.into(),
                cells
                    .map(|x| x.and_then(Value::as_bool))
                    .collect::<Vec<_>>(),
            ),
            "datetime" => Column::new(
                name.into(),
                cells
                    .map(|x| {
                        x.and_then(Value::as_str)
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map(|t| t.timestamp_micros())
                    })
                    .collect::<Vec<_>>(),
            )
            .cast(&DataType::Datetime(
                TimeUnit::Microseconds,
                Some(TimeZone::UTC),
            ))
            .map_err(|e| e.to_string())?,
            "date" => Column::new(
                name.into(),
                cells
                    .map(|x| {
                        x.and_then(Value::as_str)
                            .and_then(|t| chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").ok())
                            .and_then(|d| {
                                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
                                i32::try_from((d - epoch).num_days()).ok()
                            })
                    })
                    .collect::<Vec<_>>(),
            )
            .cast(&DataType::Date)
            .map_err(|e| e.to_string())?,
            _ => Column::new(
                name.into(),
                cells
                    .map(|x| {
                        x.map(|x| match x {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                    })
                    .collect::<Vec<_>>(),
            ),
        };
        columns.push(col);
    }
    DataFrame::new(data.len(), columns).map_err(|e| e.to_string())
}

/// A frame as `text/plain` (aligned columns), `text/html` (a table) and a
/// Table Schema data resource, its first `rows` rows.
pub fn frame_bundle(df: &DataFrame, rows: usize) -> MimeBundle {
    let body = text_rows(df, rows);
    let shown = body.len();
    let numeric: Vec<bool> = df.columns().iter().map(|c| is_number(c.dtype())).collect();
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();

    // Plain text: widths from the header and the shown cells.
    let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count()).collect();
    for row in &body {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.as_deref().unwrap_or("null").chars().count());
        }
    }
    let mut plain = String::new();
    let pad = |out: &mut String, text: &str, width: usize, right: bool| {
        let fill = width.saturating_sub(text.chars().count());
        if right {
            out.push_str(&" ".repeat(fill));
            out.push_str(text);
        } else {
            out.push_str(text);
            out.push_str(&" ".repeat(fill));
        }
    };
    for (i, (n, w)) in names.iter().zip(&widths).enumerate() {
        if i > 0 {
            plain.push_str("  ");
        }
        pad(&mut plain, n, *w, numeric.get(i).copied().unwrap_or(false));
    }
    plain = plain.trim_end().to_owned();
    plain.push('\n');
    for row in &body {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let right = numeric.get(i).copied().unwrap_or(false);
            pad(&mut line, cell.as_deref().unwrap_or("null"), *w, right);
        }
        plain.push_str(line.trim_end());
        plain.push('\n');
    }
    plain.push_str(&shape_note(df.height(), df.width(), shown));

    let html = html_table(
        &names,
        &numeric,
        &body,
        &shape_note(df.height(), df.width(), shown),
    );

    // Data resource.
    let fields: Vec<serde_json::Value> = df
        .columns()
        .iter()
        .map(|c| serde_json::json!({ "name": c.name().as_str(), "type": schema_type(c.dtype()) }))
        .collect();
    let data: Vec<serde_json::Value> = (0..shown)
        .map(|r| {
            let mut m = serde_json::Map::new();
            for c in df.columns() {
                let v = c.get(r).map_or(serde_json::Value::Null, |v| cell_json(&v));
                m.insert(c.name().to_string(), v);
            }
            serde_json::Value::Object(m)
        })
        .collect();

    let mut b = MimeBundle::default();
    b.set_text("text/plain", plain);
    b.set_text("text/html", html);
    b.set_json(
        DATARESOURCE_MIME,
        serde_json::json!({
            "schema": { "fields": fields },
            "data": data,
            "salespulse": { "rows": df.height() },
        }),
    );
    b
}

/// A KPI output's values, read back from its JSON ([`KPI_MIME`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Kpi {
    /// Its label.
    pub label: String,
    /// Its value.
    pub value: f64,
    /// How the value is written.
    pub format: MetricFormat,
    /// The currency of a money value.
    pub currency: String,
}

impl Kpi {
    /// The KPI of `b`, if it has one.
    pub fn of(b: &MimeBundle) -> Option<Self> {
        let k = b.json(KPI_MIME)?;
        Some(Self {
            label: k.get("label")?.as_str()?.to_owned(),
            value: k.get("value")?.as_f64()?,
            format: MetricFormat::parse(k.get("format")?.as_str()?)?,
            currency: k
                .get("currency")
                .and_then(|v| v.as_str())
                .unwrap_or("USD")
                .to_owned(),
        })
    }
}

/// A KPI card: its label and value written in `format`, the exact value
/// on hover.
pub fn kpi_bundle(label: &str, value: f64, format: MetricFormat, currency: &str) -> MimeBundle {
    let shown = format.render_compact(value, currency);
    let exact = format.render(value, currency);
    let mut b = MimeBundle::default();
    b.set_json(
        KPI_MIME,
        serde_json::json!({ "label": label, "value": value, "format": format, "currency": currency }),
    );
    b.set_text("text/plain", format!("{label}: {exact}"));
    b.set_text(
        "text/html",
        format!(
            "<div class=\"sp-kpi\" title=\"{}\" style=\"display:inline-block;min-width:140px;\
             border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;margin:4px 8px 4px 0;\
             font-family:sans-serif\"><div style=\"font-size:12px;color:#57606a\">{}</div>\
             <div style=\"font-size:22px;font-weight:600\">{}</div></div>",
            escape_html(&exact),
            escape_html(label),
            escape_html(&shown)
        ),
    );
    b
}

/// What kind of chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartKind {
    /// Lines through the points, one per y column.
    Line,
    /// Bars per x label, side by side per y column.
    Bar,
    /// Points only.
    Scatter,
    /// Cells of an x × y grid coloured by a value.
    Heatmap,
}

/// What the x axis holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AxisKind {
    /// Numbers.
    Number,
    /// Times: seconds since the Unix epoch, UTC.
    Time,
    /// Labels: positions 0, 1, … with [`ChartSpec::x_labels`].
    Category,
}

/// One line, bar group or point set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChartSeries {
    /// Its name (the y column).
    pub name: String,
    /// (x, y) points.
    pub points: Vec<[f64; 2]>,
}

/// A chart: everything needed to draw it, anywhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChartSpec {
    /// Kind.
    pub kind: ChartKind,
    /// Title (may be empty).
    pub title: String,
    /// The x axis's name.
    pub x_name: String,
    /// The y axis's name.
    pub y_name: String,
    /// What x holds.
    pub x_kind: AxisKind,
    /// Labels of category positions on x.
    pub x_labels: Vec<String>,
    /// Labels of category positions on y (heatmaps).
    pub y_labels: Vec<String>,
    /// The series (a heatmap has one: its points are (x, y) positions and
    /// [`ChartSpec::values`] their values).
    pub series: Vec<ChartSeries>,
    /// A heatmap's cell values, one per point of its series.
    pub values: Vec<f64>,
    /// Size in pixels.
    pub width: u32,
    /// Size in pixels.
    pub height: u32,
}

/// Most points a chart may have (over all its series).
pub const MAX_CHART_POINTS: usize = 200_000;

/// Options of `chart(frame, #{ … })`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartOptions {
    /// `line` (default), `bar`, `scatter` or `heatmap`.
    pub kind: Option<String>,
    /// The x column (default: the first).
    pub x: Option<String>,
    /// The y column or columns (default: every other numeric column; for
    /// a heatmap, the second column).
    pub y: Option<serde_json::Value>,
    /// A heatmap's value column (default: the third).
    pub value: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// Width in pixels (200–4000; default 800).
    pub width: Option<u32>,
    /// Height in pixels (150–3000; default 400).
    pub height: Option<u32>,
}

/// A column's values as f64 (times as seconds), with their axis kind.
fn numbers_of(c: &Column) -> Result<(Vec<Option<f64>>, AxisKind), String> {
    let dt = c.dtype().clone();
    let (cast, kind, scale) = match dt {
        DataType::Datetime(unit, _) => (
            c.cast(&DataType::Int64),
            AxisKind::Time,
            match unit {
                TimeUnit::Nanoseconds => 1e-9,
                TimeUnit::Microseconds => 1e-6,
                TimeUnit::Milliseconds => 1e-3,
            },
        ),
        DataType::Date => (c.cast(&DataType::Int32), AxisKind::Time, 86_400.0),
        d if is_number(&d) => (c.cast(&DataType::Float64), AxisKind::Number, 1.0),
        other => {
            return Err(format!(
                "column {:?} is {other}: a chart needs numbers or times here",
                c.name().as_str()
            ))
        }
    };
    let cast = cast
        .and_then(|c| c.cast(&DataType::Float64))
        .map_err(|e| e.to_string())?;
    let f = cast.f64().map_err(|e| e.to_string())?;
    Ok((
        (0..f.len())
            .map(|i| f.get(i).filter(|x| x.is_finite()).map(|x| x * scale))
            .collect(),
        kind,
    ))
}

/// Labels of a column and each row's position among them: in order of
/// value for numbers and times, else first seen first.
fn categories_of(c: &Column) -> (Vec<String>, Vec<Option<usize>>) {
    let texts: Vec<Option<String>> = (0..c.len())
        .map(|r| c.get(r).ok().and_then(|v| cell_text(&v)))
        .collect();
    let mut labels: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let keys = numbers_of(c).ok().map(|(k, _)| k);
    let mut keyed: Vec<(f64, String)> = Vec::new();
    for (r, t) in texts.iter().enumerate() {
        if let Some(t) = t {
            if seen.insert(t.clone()) {
                match keys.as_ref().and_then(|k| k.get(r).copied().flatten()) {
                    Some(k) => keyed.push((k, t.clone())),
                    None => labels.push(t.clone()),
                }
            }
        }
    }
    if !keyed.is_empty() {
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        labels = keyed.into_iter().map(|(_, t)| t).chain(labels).collect();
    }
    let index: std::collections::HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let at = texts
        .iter()
        .map(|t| t.as_deref().and_then(|t| index.get(t).copied()))
        .collect();
    (labels, at)
}

fn column<'a>(df: &'a DataFrame, name: &str) -> Result<&'a Column, String> {
    df.column(name).map_err(|_| {
        format!(
            "no column {name:?}; columns: {}",
            df.get_column_names()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

impl ChartSpec {
    /// The chart of `df` under `opts`, or why it cannot be drawn.
    pub fn of(df: &DataFrame, opts: &ChartOptions) -> Result<Self, String> {
        let kind = match opts.kind.as_deref().unwrap_or("line") {
            "line" => ChartKind::Line,
            "bar" => ChartKind::Bar,
            "scatter" => ChartKind::Scatter,
            "heatmap" => ChartKind::Heatmap,
            other => {
                return Err(format!(
                    "kind {other:?}: use \"line\", \"bar\", \"scatter\" or \"heatmap\""
                ))
            }
        };
        let width = opts.width.unwrap_or(800);
        let height = opts.height.unwrap_or(400);
        if !(200..=4000).contains(&width) || !(150..=3000).contains(&height) {
            return Err(format!(
                "size {width} × {height}: width 200–4000, height 150–3000 pixels"
            ));
        }
        if df.height() == 0 {
            return Err("nothing to draw: the frame has no rows".into());
        }
        let names: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let x_name = match &opts.x {
            Some(x) => x.clone(),
            None => names
                .first()
                .cloned()
                .ok_or("nothing to draw: the frame has no columns")?,
        };
        let xcol = column(df, &x_name)?;
        let y_names: Vec<String> = match &opts.y {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or("`y`: a column name or a list of names")
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("`y`: a column name or a list of names".into()),
            None if kind == ChartKind::Heatmap => {
                vec![names
                    .get(1)
                    .cloned()
                    .ok_or("a heatmap needs x, y and value columns")?]
            }
            None => names
                .iter()
                .filter(|n| **n != x_name)
                .filter(|n| df.column(n).is_ok_and(|c| is_number(c.dtype())))
                .cloned()
                .collect(),
        };
        if y_names.is_empty() {
            return Err(format!(
                "nothing to draw: no numeric column besides {x_name:?} (say which with `y`)"
            ));
        }
        let mut spec = ChartSpec {
            kind,
            title: opts.title.clone().unwrap_or_default(),
            x_name: x_name.clone(),
            y_name: y_names.join(", "),
            x_kind: AxisKind::Number,
            x_labels: Vec::new(),
            y_labels: Vec::new(),
            series: Vec::new(),
            values: Vec::new(),
            width,
            height,
        };
        if kind == ChartKind::Heatmap {
            let y_name = y_names.first().cloned().unwrap_or_default();
            let value_name = match &opts.value {
                Some(v) => v.clone(),
                None => names
                    .iter()
                    .find(|n| **n != x_name && **n != y_name)
                    .cloned()
                    .ok_or("a heatmap needs x, y and value columns")?,
            };
            let (xl, xi) = categories_of(xcol);
            let (yl, yi) = categories_of(column(df, &y_name)?);
            let (vals, _) = numbers_of(column(df, &value_name)?)?;
            let mut points = Vec::new();
            for ((x, y), v) in xi.iter().zip(&yi).zip(&vals) {
                if let (Some(x), Some(y), Some(v)) = (x, y, v) {
                    points.push([*x as f64, *y as f64]);
                    spec.values.push(*v);
                }
            }
            spec.x_kind = AxisKind::Category;
            spec.x_labels = xl;
            spec.y_labels = yl;
            spec.y_name = y_name;
            spec.series.push(ChartSeries {
                name: value_name,
                points,
            });
        } else {
            let categorical = kind == ChartKind::Bar
                || !is_number(xcol.dtype())
                    && !matches!(xcol.dtype(), DataType::Datetime(..) | DataType::Date);
            let xs: Vec<Option<f64>> = if categorical {
                let (labels, at) = categories_of(xcol);
                spec.x_kind = AxisKind::Category;
                spec.x_labels = labels;
                at.into_iter().map(|i| i.map(|i| i as f64)).collect()
            } else {
                let (xs, k) = numbers_of(xcol)?;
                spec.x_kind = k;
                xs
            };
            for y in &y_names {
                let (ys, _) = numbers_of(column(df, y)?)?;
                let points = xs
                    .iter()
                    .zip(&ys)
                    .filter_map(|(x, y)| Some([(*x)?, (*y)?]))
                    .collect();
                spec.series.push(ChartSeries {
                    name: y.clone(),
                    points,
                });
            }
        }
        let total: usize = spec.series.iter().map(|s| s.points.len()).sum();
        if total > MAX_CHART_POINTS {
            return Err(format!(
                "{total} points: a chart draws at most {MAX_CHART_POINTS} (aggregate first)"
            ));
        }
        if total == 0 {
            return Err("nothing to draw: every value is null".into());
        }
        Ok(spec)
    }

    /// The chart as PNG, SVG, its data and a line of text.
    pub fn bundle(&self) -> Result<MimeBundle, String> {
        let png = self.png()?;
        let svg = self.svg()?;
        let mut b = MimeBundle::default();
        b.set_text(
            "image/png",
            base64::engine::general_purpose::STANDARD.encode(png),
        );
        b.set_text("image/svg+xml", svg);
        b.set_json(
            CHART_MIME,
            serde_json::to_value(self).map_err(|e| e.to_string())?,
        );
        let title = if self.title.is_empty() {
            format!("{} by {}", self.y_name, self.x_name)
        } else {
            self.title.clone()
        };
        b.set_text(
            "text/plain",
            format!("<{:?} chart: {title}>", self.kind).to_lowercase(),
        );
        Ok(b)
    }

    /// The chart as a PNG image.
    pub fn png(&self) -> Result<Vec<u8>, String> {
        let (w, h) = (self.width, self.height);
        let mut rgb = vec![255u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            guarded(|| self.draw(&root))?;
        }
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(&rgb).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// The chart as SVG text.
    pub fn svg(&self) -> Result<String, String> {
        let mut out = String::new();
        {
            let root =
                SVGBackend::with_string(&mut out, (self.width, self.height)).into_drawing_area();
            guarded(|| self.draw(&root))?;
        }
        Ok(out)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        fonts();
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(err)?;
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in self.series.iter().flat_map(|s| &s.points) {
            x0 = x0.min(p[0]);
            x1 = x1.max(p[0]);
            y0 = y0.min(p[1]);
            y1 = y1.max(p[1]);
        }
        let category_x = self.x_kind == AxisKind::Category;
        // Times are drawn in days, hours or minutes, so that the axis'
        // round numbers fall on whole days, hours or minutes.
        let unit = if self.x_kind == AxisKind::Time {
            match x1 - x0 {
                s if s > 3.0 * 86_400.0 => 86_400.0,
                s if s > 3.0 * 3_600.0 => 3_600.0,
                _ => 60.0,
            }
        } else {
            1.0
        };
        x0 /= unit;
        x1 /= unit;
        match self.kind {
            ChartKind::Heatmap => {
                (x0, x1) = (-0.5, self.x_labels.len() as f64 - 0.5);
                (y0, y1) = (-0.5, self.y_labels.len() as f64 - 0.5);
            }
            ChartKind::Bar => {
                (x0, x1) = (-0.5, self.x_labels.len() as f64 - 0.5);
                // Bars start at zero.
                y0 = y0.min(0.0);
                y1 = y1.max(0.0);
                // Room above the bars for the legend when there is one.
                let pad = (y1 - y0) * if self.series.len() > 1 { 0.2 } else { 0.05 };
                y1 += if y1 > 0.0 { pad } else { 0.0 };
                y0 -= if y0 < 0.0 { pad } else { 0.0 };
            }
            _ => {
                if category_x {
                    (x0, x1) = (-0.5, self.x_labels.len() as f64 - 0.5);
                }
                let pad = (y1 - y0) * 0.05;
                y0 -= pad;
                y1 += pad;
            }
        }
        if x1 - x0 <= f64::EPSILON {
            x0 -= 1.0;
            x1 += 1.0;
        }
        if y1 - y0 <= f64::EPSILON {
            y0 -= 1.0;
            y1 += 1.0;
        }
        let mut builder = ChartBuilder::on(root);
        builder
            .margin(12)
            // Room for the last x label, centred on the axis' end.
            .margin_right(32)
            .x_label_area_size(if category_x { 60 } else { 40 })
            .y_label_area_size(if self.kind == ChartKind::Heatmap {
                90
            } else {
                70
            });
        if !self.title.is_empty() {
            builder.caption(&self.title, ("sans-serif", 20));
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
        let x_labels = &self.x_labels;
        let y_labels = &self.y_labels;
        let x_kind = self.x_kind;
        let span = x1 - x0;
        let x_fmt = move |x: &f64| -> String {
            match x_kind {
                AxisKind::Category => label_at(x_labels, *x),
                AxisKind::Time => time_label(*x * unit, span * unit),
                AxisKind::Number => axis_number(*x),
            }
        };
        let y_fmt = move |y: &f64| -> String {
            if self.kind == ChartKind::Heatmap {
                label_at(y_labels, y_labels.len() as f64 - 1.0 - *y)
            } else {
                axis_number(*y)
            }
        };
        let n_x = if category_x {
            self.x_labels.len().clamp(1, 24)
        } else {
            8
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(n_x)
            .y_labels(if self.kind == ChartKind::Heatmap {
                self.y_labels.len().clamp(1, 24)
            } else {
                8
            })
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .x_desc(self.x_name.as_str())
            .y_desc(self.y_name.as_str())
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(230, 230, 230));
        mesh.disable_x_mesh();
        if self.kind == ChartKind::Heatmap {
            mesh.disable_y_mesh();
        }
        mesh.draw().map_err(err)?;
        let n = self.series.len().max(1) as f64;
        for (i, s) in self.series.iter().enumerate() {
            let color = palette(i);
            match self.kind {
                ChartKind::Line => {
                    let mut pts = s.points.clone();
                    pts.sort_by(|a, b| a[0].total_cmp(&b[0]));
                    chart
                        .draw_series(LineSeries::new(
                            pts.into_iter().map(|p| (p[0] / unit, p[1])),
                            color.stroke_width(2),
                        ))
                        .map_err(err)?
                        .label(s.name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                        });
                }
                ChartKind::Scatter => {
                    chart
                        .draw_series(
                            s.points
                                .iter()
                                .map(|p| Circle::new((p[0] / unit, p[1]), 3, color.filled())),
                        )
                        .map_err(err)?
                        .label(s.name.as_str())
                        .legend(move |(x, y)| Circle::new((x + 9, y), 3, color.filled()));
                }
                ChartKind::Bar => {
                    let w = 0.8 / n;
                    let off = -0.4 + w * i as f64;
                    chart
                        .draw_series(s.points.iter().map(|p| {
                            Rectangle::new(
                                [(p[0] + off, 0.0), (p[0] + off + w * 0.95, p[1])],
                                color.filled(),
                            )
                        }))
                        .map_err(err)?
                        .label(s.name.as_str())
                        .legend(move |(x, y)| {
                            Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                        });
                }
                ChartKind::Heatmap => {
                    let (lo, hi) = self
                        .values
                        .iter()
                        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
                    let range = (hi - lo).max(f64::EPSILON);
                    let rows = self.y_labels.len() as f64;
                    // The first label on top, as cohort tables read.
                    let flip = |y: f64| rows - 1.0 - y;
                    chart
                        .draw_series(s.points.iter().zip(&self.values).map(|(p, v)| {
                            let t = ((v - lo) / range).clamp(0.0, 1.0);
                            let y = flip(p[1]);
                            Rectangle::new(
                                [(p[0] - 0.5, y - 0.5), (p[0] + 0.5, y + 0.5)],
                                heat(t).filled(),
                            )
                        }))
                        .map_err(err)?;
                    // Values in the cells while they fit.
                    let (cw, ch) = (
                        f64::from(self.width) / (self.x_labels.len().max(1) as f64),
                        f64::from(self.height) / rows.max(1.0),
                    );
                    if cw >= 36.0 && ch >= 16.0 {
                        let share = lo >= 0.0 && hi <= 1.0;
                        let style = TextStyle::from(("sans-serif", 12).into_font())
                            .pos(Pos::new(HPos::Center, VPos::Center));
                        chart
                            .draw_series(s.points.iter().zip(&self.values).map(|(p, v)| {
                                let t = ((v - lo) / range).clamp(0.0, 1.0);
                                let text = if share {
                                    format!("{:.0}%", v * 100.0)
                                } else {
                                    axis_number(*v)
                                };
                                let color: &'static RGBColor =
                                    if t > 0.55 { &WHITE } else { &BLACK };
                                Text::new(text, (p[0], flip(p[1])), style.color(color))
                            }))
                            .map_err(err)?;
                    }
                }
            }
        }
        if self.series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)
    }
}

/// Runs a drawing, turning a panic inside the plotting library into an
/// error (a chart must never take the caller down).
fn guarded(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err("the chart could not be drawn".into()),
    }
}

/// The bundled font, registered once for every chart.
fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        )
        .is_err()
        {
            tracing::warn!("the bundled chart font could not be read");
        }
    });
}

fn label_at(labels: &[String], x: f64) -> String {
    let r = x.round();
    if (x - r).abs() > 1e-6 || r < 0.0 {
        return String::new();
    }
    labels.get(r as usize).cloned().unwrap_or_default()
}

fn time_label(secs: f64, span: f64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp(secs.round() as i64, 0) else {
        return String::new();
    };
    if span > 3.0 * 86_400.0 {
        t.format("%b %d").to_string()
    } else if span > 86_400.0 {
        t.format("%d %H:%M").to_string()
    } else {
        t.format("%H:%M").to_string()
    }
}

fn axis_number(v: f64) -> String {
    match crate::analytics::metrics::compact(v) {
        Some(c) => c,
        None if v.fract() == 0.0 => format!("{v:.0}"),
        None => float_text((v * 1e4).round() / 1e4),
    }
}

fn palette(i: usize) -> RGBColor {
    const P: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    P.get(i % P.len()).copied().unwrap_or(BLACK)
}

/// White → dark blue.
fn heat(t: f64) -> RGBColor {
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round().clamp(0.0, 255.0) as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_render_as_text_html_and_data_resource() {
        let df = df!(
            "category" => ["a<b", "c"],
            "revenue" => [1234.5, 0.000012],
            "n" => [Some(3i64), None],
        )
        .unwrap();
        let b = frame_bundle(&df, 20);
        let plain = b.text("text/plain").unwrap();
        assert_eq!(
            plain,
            "category   revenue     n\na<b         1234.5     3\nc         1.200e-5  null\n2 rows × 3 columns"
        );
        let html = b.text("text/html").unwrap();
        assert!(html.contains("<td>a&lt;b</td>"), "{html}");
        assert!(html.contains("<td class=\"null\"></td>"), "{html}");
        let res = b.json(DATARESOURCE_MIME).unwrap();
        assert_eq!(res["schema"]["fields"][2]["type"], "integer");
        assert_eq!(res["data"][0]["n"], 3);
        assert!(res["data"][1]["n"].is_null());
        let b = frame_bundle(&df, 1);
        assert!(b.text("text/plain").unwrap().ends_with("(first 1 shown)"));
    }

    #[test]
    fn charts_draw_to_png_and_svg_and_refuse_what_cannot_be_drawn() {
        let df = df!("day" => ["mon", "tue", "wed"], "orders" => [3.0, 5.0, 4.0], "refunds" => [1i64, 0, 2]).unwrap();
        for kind in ["line", "bar", "scatter"] {
            let spec = ChartSpec::of(
                &df,
                &ChartOptions {
                    kind: Some(kind.into()),
                    title: Some("Orders".into()),
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(spec.series.len(), 2, "{kind}");
            let png = spec.png().unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            let svg = spec.svg().unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("Orders"), "{kind}");
        }
        let grid =
            df!("week" => ["w1", "w1", "w2"], "age" => [0i64, 1, 0], "share" => [1.0, 0.4, 1.0])
                .unwrap();
        let spec = ChartSpec::of(
            &grid,
            &ChartOptions {
                kind: Some("heatmap".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(spec.values, vec![1.0, 0.4, 1.0]);
        assert!(spec.bundle().unwrap().text("image/png").is_some());
        let bad = |o: ChartOptions| ChartSpec::of(&df, &o).unwrap_err();
        assert!(bad(ChartOptions {
            kind: Some("pie".into()),
            ..Default::default()
        })
        .contains("\"pie\""));
        assert!(bad(ChartOptions {
            y: Some("nope".into()),
            ..Default::default()
        })
        .contains("no column \"nope\""));
        assert!(bad(ChartOptions {
            width: Some(100_000),
            ..Default::default()
        })
        .contains("width"));
        let empty = df.head(Some(0));
        assert!(ChartSpec::of(&empty, &ChartOptions::default())
            .unwrap_err()
            .contains("no rows"));
        // A single point and a constant series still draw.
        let one = df!("x" => [1.0], "y" => [2.0]).unwrap();
        assert!(ChartSpec::of(&one, &ChartOptions::default())
            .unwrap()
            .png()
            .is_ok());
    }

    #[test]
    fn a_data_resource_reads_back_as_the_frame_it_kept() {
        let df = polars::df!(
            "category" => [Some("Books"), None, Some("Toys")],
            "orders" => [3i64, 0, 12],
            "revenue" => [Some(10.5), Some(0.25), None],
            "ok" => [true, false, true],
        )
        .unwrap()
        .lazy()
        .with_column(
            lit(1_772_409_600_000_000i64)
                .cast(DataType::Datetime(
                    TimeUnit::Microseconds,
                    Some(TimeZone::UTC),
                ))
                .alias("at"),
        )
        .collect()
        .unwrap();
        let b = frame_bundle(&df, 2);
        let back = frame_from_resource(b.json(DATARESOURCE_MIME).unwrap()).unwrap();
        assert!(back.equals_missing(&df.head(Some(2))), "{back}\n{df}");
        assert!(frame_from_resource(&serde_json::json!({ "data": [] })).is_err());
    }
}
