//! Frames to CSV or Parquet files.
//!
//! Types in the files:
//! - timestamps: Parquet `TIMESTAMP(MICROS, isAdjustedToUTC=true)` (pyarrow
//!   `timestamp[us, tz=UTC]`, DuckDB `TIMESTAMP WITH TIME ZONE`); CSV RFC 3339
//!   with offset, `2026-11-24T10:00:00.000000+00:00`;
//! - money and rates: 64-bit floats (Parquet `DOUBLE`), in the shop's currency,
//!   summed exactly in PostgreSQL (numeric) and rounded to the float nearest
//!   the exact value — exact to the cent below 2^53 cents;
//! - counts: 64-bit integers; text: UTF-8 strings.
//!
//! A file is written next to its destination and renamed into place when
//! complete, so a failed export never leaves a truncated file behind. The
//! temporary file has an unpredictable name and is created new
//! (`create_new`: never through a link planted in its place), readable by
//! the user only (0600 on Unix; the exported file keeps that).
//!
//! CSV is written safe for spreadsheets by default: a text cell that starts
//! with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`, so
//! a product name like `=HYPERLINK(…)` is shown, not run
//! ([`ExportFormat::CsvRaw`] writes cells as they are).
//! `transactions` without an explicit limit exports every matching row,
//! streamed in pages (keyset paging), so memory stays flat.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use sqlx::Row;

use super::{sql, Analytics, AnalyticsError, DataVersions, ViewKind, ViewRequest};

/// Rows per page when streaming `transactions`.
pub(crate) const PAGE_ROWS: u64 = 100_000;

/// The file format of an export; parsed from `csv`, `csv-raw` or `parquet`
/// (also a file extension, see [`ExportFormat::from_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// CSV, with formula-like text cells defused.
    Csv,
    /// CSV with every cell as it is (`--raw-csv`).
    CsvRaw,
    /// Parquet, zstd-compressed.
    Parquet,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(ExportFormat::Csv),
            "csv-raw" | "csv_raw" => Ok(ExportFormat::CsvRaw),
            "parquet" | "pq" => Ok(ExportFormat::Parquet),
            _ => Err(format!("format {s:?} is not csv or parquet")),
        }
    }
}

impl ExportFormat {
    /// Guesses the format from a file name's extension.
    pub fn from_path(p: &Path) -> Option<Self> {
        p.extension()?.to_str()?.parse().ok()
    }
}

/// What an export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportReport {
    /// The file written.
    pub path: PathBuf,
    /// Data rows written (the CSV header not counted).
    pub rows: u64,
    /// Size of the finished file, in bytes.
    pub bytes: u64,
}

/// Writes batches of one schema to a file, then moves it into place.
pub(crate) struct FrameSink {
    tmp: PathBuf,
    dest: PathBuf,
    writer: Option<SinkWriter>,
    rows: u64,
    done: bool,
    safe_csv: bool,
}

enum SinkWriter {
    Csv(polars::io::csv::write::BatchedWriter<BufWriter<File>>),
    Parquet(Box<polars::io::parquet::write::BatchedWriter<BufWriter<File>>>),
}

fn tmp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    dest.with_file_name(format!(
        ".{name}.{}.{:08x}.partial",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// A new file at `path`: fails if anything (a file, a symlink) is there.
fn create_new(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Whether a CSV cell would be taken for a formula by a spreadsheet.
fn formula_like(s: &str) -> bool {
    s.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// A column name safe for a CSV header.
fn safe_name(name: &str) -> PlSmallStr {
    if formula_like(name) {
        format!("'{name}").into()
    } else {
        name.into()
    }
}

/// `df` with every formula-like text cell, and column name (a pivot makes
/// names of data), prefixed with `'`.
pub(crate) fn csv_safe(df: &DataFrame) -> PolarsResult<DataFrame> {
    let mut out = df.clone();
    for name in df.get_column_names_owned() {
        let c = df.column(&name)?;
        if c.dtype() != &DataType::String {
            continue;
        }
        let ca = c.str()?;
        if !ca.iter().flatten().any(formula_like) {
            continue;
        }
        let safe: StringChunked = ca
            .iter()
            .map(|o| {
                o.map(|s| {
                    if formula_like(s) {
                        std::borrow::Cow::Owned(format!("'{s}"))
                    } else {
                        std::borrow::Cow::Borrowed(s)
                    }
                })
            })
            .collect();
        out.with_column(safe.with_name(name.clone()).into_column())?;
    }
    let names: Vec<PlSmallStr> = out.get_column_names_owned();
    if names.iter().any(|n| formula_like(n)) {
        let safe: Vec<PlSmallStr> = names.iter().map(|n| safe_name(n)).collect();
        out.set_column_names(&safe)?;
    }
    Ok(out)
}

/// CSV timestamps: RFC 3339 with microseconds and offset.
const CSV_DATETIME: &str = "%Y-%m-%dT%H:%M:%S%.6f%:z";

impl FrameSink {
    /// Starts a file for `dest` in `format`, with columns `schema`: a new 0600
    /// temporary file beside `dest`, removed if the sink is dropped unfinished.
    pub fn create(
        dest: &Path,
        format: ExportFormat,
        schema: &Schema,
    ) -> Result<Self, AnalyticsError> {
        let tmp = tmp_path(dest);
        let safe_schema: Schema;
        let schema = if format == ExportFormat::Csv {
            safe_schema = schema
                .iter()
                .map(|(n, t)| Field::new(safe_name(n), t.clone()))
                .collect();
            &safe_schema
        } else {
            schema
        };
        let file = BufWriter::with_capacity(1 << 20, create_new(&tmp)?);
        let writer = match format {
            ExportFormat::Csv | ExportFormat::CsvRaw => SinkWriter::Csv(
                CsvWriter::new(file)
                    .include_header(true)
                    .with_datetime_format(Some(CSV_DATETIME.into()))
                    .batched(schema)?,
            ),
            ExportFormat::Parquet => SinkWriter::Parquet(Box::new(
                ParquetWriter::new(file)
                    .with_compression(ParquetCompression::Zstd(None))
                    .batched(schema)?,
            )),
        };
        Ok(Self {
            tmp,
            dest: dest.to_owned(),
            writer: Some(writer),
            rows: 0,
            done: false,
            safe_csv: format == ExportFormat::Csv,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends the rows of `df`, which must have the schema given to
    /// [`FrameSink::create`]; CSV text cells are defused unless the format is raw.
    pub fn write(&mut self, df: &DataFrame) -> Result<(), AnalyticsError> {
        match &mut self.writer {
            Some(SinkWriter::Csv(w)) if self.safe_csv => w.write_batch(&csv_safe(df)?)?,
            Some(SinkWriter::Csv(w)) => w.write_batch(df)?,
            Some(SinkWriter::Parquet(w)) => w.write_batch(df)?,
            None => {}
        }
        self.rows += df.height() as u64;
        Ok(())
    }

    /// Closes the file and renames it to its destination, replacing any file there.
    pub fn finish(mut self) -> Result<ExportReport, AnalyticsError> {
        match self.writer.take() {
            Some(SinkWriter::Csv(mut w)) => w.finish()?,
            Some(SinkWriter::Parquet(w)) => {
                w.finish()?;
            }
            None => {}
        }
        // The writer (and its file) is closed here: move it into place.
        std::fs::rename(&self.tmp, &self.dest)?;
        self.done = true;
        let bytes = std::fs::metadata(&self.dest)?.len();
        Ok(ExportReport {
            path: self.dest.clone(),
            rows: self.rows,
            bytes,
        })
    }
}

impl Drop for FrameSink {
    fn drop(&mut self) {
        if !self.done {
            self.writer.take();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes one frame to `dest`.
pub fn write_frame(
    df: &DataFrame,
    dest: &Path,
    format: ExportFormat,
) -> Result<ExportReport, AnalyticsError> {
    let mut sink = FrameSink::create(dest, format, df.schema())?;
    sink.write(df)?;
    sink.finish()
}

/// Exports a view. `progress(done, total)` is called as rows are written
/// (`total` is known for `transactions`).
pub async fn export_view(
    analytics: &Analytics,
    req: &ViewRequest,
    dest: &Path,
    format: ExportFormat,
    progress: impl FnMut(u64, Option<u64>),
) -> Result<ExportReport, AnalyticsError> {
    export_view_paged(analytics, req, dest, format, PAGE_ROWS, progress).await
}

/// [`export_view`] with `page_rows` rows per page of `transactions`.
pub async fn export_view_paged(
    analytics: &Analytics,
    req: &ViewRequest,
    dest: &Path,
    format: ExportFormat,
    page_rows: u64,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<ExportReport, AnalyticsError> {
    let page_rows = page_rows.max(1);
    let mut req = req.clone();
    req.check()?;
    if req.view != ViewKind::Transactions || req.limit.is_some() {
        let r = analytics.view(&req).await?;
        progress(0, Some(r.frame.height() as u64));
        let report = write_frame(&r.frame, dest, format)?;
        progress(report.rows, Some(report.rows));
        return Ok(report);
    }
    // Every matching transaction, page by page.
    let versions: DataVersions = analytics.versions().await?;
    let (span, _) = Analytics::resolve(&req, &versions);
    let count_sql = sql::transactions(&req.filters, span, u64::MAX >> 2, 0, None)
        .sql
        .replace(
            "ORDER BY transactions.occurred_at DESC, transaction_id DESC",
            "",
        );
    let total: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM ({count_sql}) x"
    )))
    .fetch_one(analytics.pool())
    .await?
    .try_get(0)?;
    let total = total.max(0) as u64;
    progress(0, Some(total));
    let first = sql::transactions(&req.filters, span, page_rows, 0, None);
    let schema: Schema = first
        .columns
        .iter()
        .map(|c| Field::new(c.name.into(), super::load::dtype(c.ty)))
        .collect();
    let mut sink = FrameSink::create(dest, format, &schema)?;
    let mut after: Option<(i64, String)> = None;
    loop {
        let q = sql::transactions(
            &req.filters,
            span,
            page_rows,
            0,
            after.as_ref().map(|(t, id)| (*t, id.as_str())),
        );
        let page =
            super::load::load(analytics.pool(), &q.sql, &q.columns, analytics.load_mode()).await?;
        if page.height() == 0 {
            break;
        }
        sink.write(&page)?;
        progress(sink.rows(), Some(total));
        let last = page.height() - 1;
        let t = page
            .column("occurred_at")?
            .cast(&DataType::Int64)?
            .i64()?
            .get(last);
        let id = page
            .column("transaction_id")?
            .str()?
            .get(last)
            .map(str::to_owned);
        match (t, id) {
            (Some(t), Some(id)) => after = Some((t, id)),
            _ => break,
        }
        if (page.height() as u64) < page_rows {
            break;
        }
    }
    sink.finish()
}

/// Writes `df` as CSV to `out` (for `query --format csv`), formula-like
/// text cells defused unless `raw`.
pub fn write_csv(df: &mut DataFrame, out: impl Write, raw: bool) -> Result<(), AnalyticsError> {
    let mut safe;
    let df = if raw {
        df
    } else {
        safe = csv_safe(df)?;
        &mut safe
    };
    CsvWriter::new(out)
        .include_header(true)
        .with_datetime_format(Some(CSV_DATETIME.into()))
        .finish(df)?;
    Ok(())
}

/// Writes `df` as a JSON array of row objects (for `query --format json`).
pub fn write_json(df: &mut DataFrame, out: impl Write) -> Result<(), AnalyticsError> {
    JsonWriter::new(out)
        .with_json_format(JsonFormat::Json)
        .finish(df)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_like_cells_are_defused_unless_raw() {
        let df = df!(
            "=cmd" => ["a", "b", "c", "d", "e", "f", "g", "h"],
            "name" => ["=HYPERLINK(\"http://x\",\"y\")", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "plain", "a=b"],
            "amount" => [-1.5f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        )
        .unwrap();
        let mut out = Vec::new();
        write_csv(&mut df.clone(), &mut out, false).unwrap();
        let mut r = csv::Reader::from_reader(out.as_slice());
        let names: Vec<String> = r
            .records()
            .map(|x| x.unwrap().get(1).unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "'=HYPERLINK(\"http://x\",\"y\")",
                "'+1",
                "'-2",
                "'@SUM(A1)",
                "'\tx",
                "'\rx",
                "plain",
                "a=b"
            ]
        );
        // Numbers are numbers: a negative amount keeps its sign; a
        // formula-like header is defused too.
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("'=cmd,name,amount"), "{text}");
        assert!(text.contains(",-1.5"), "{text}");
        let mut raw = Vec::new();
        write_csv(&mut df.clone(), &mut raw, true).unwrap();
        assert!(String::from_utf8(raw).unwrap().contains("\nb,+1,"));
    }

    #[cfg(unix)]
    #[test]
    fn the_temporary_file_never_follows_a_planted_link() {
        let dir = std::env::temp_dir().join(format!("sp-export-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("victim");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_new(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        // Two temporary names for one destination differ.
        assert_ne!(tmp_path(&dir.join("x.csv")), tmp_path(&dir.join("x.csv")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
