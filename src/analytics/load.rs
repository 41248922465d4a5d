//! Query results into Polars, column by column.
//!
//! Two loaders, same result:
//! - [`LoadMode::Rows`]: the rows arrive over the extended protocol (binary
//!   values) and each value is pushed into its column's typed vector; the
//!   vectors become Series at the end. No per-row allocation besides strings.
//! - [`LoadMode::Copy`]: `COPY (query) TO STDOUT (FORMAT csv)` and Polars' CSV
//!   reader with the schema given up front (no inference).
//!
//! `salespulse bench analytics` measures both; see the README for which wins.

use std::io::Cursor;
use std::sync::Arc;

use futures::TryStreamExt;
use polars::prelude::*;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::AnalyticsError;

/// The column types views produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColType {
    /// SQL `text`; a Polars `String`.
    Text,
    /// SQL `int8`; a Polars `Int64`.
    Int,
    /// SQL `float8`; a Polars `Float64`.
    Float,
    /// Sent as int8 microseconds since the epoch; a UTC `Datetime` in Polars.
    Time,
}

/// One column of a query's result, in `SELECT` order.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// Its name in the frame.
    pub name: &'static str,
    /// What the query sends and the frame holds.
    pub ty: ColType,
}

/// How query results are read into a frame (see the module docs); parsed
/// from `rows` or `copy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadMode {
    /// Rows over the extended protocol, pushed into typed column vectors.
    #[default]
    Rows,
    /// `COPY (query) TO STDOUT (FORMAT csv)`, read by Polars' CSV reader.
    Copy,
}

impl std::str::FromStr for LoadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rows" => Ok(LoadMode::Rows),
            "copy" => Ok(LoadMode::Copy),
            _ => Err(format!("load mode {s:?} is not rows or copy")),
        }
    }
}

/// The Polars type of a timestamp column.
pub(crate) fn time_dtype() -> DataType {
    DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
}

/// The Polars type of a column type.
pub(crate) fn dtype(ty: ColType) -> DataType {
    match ty {
        ColType::Text => DataType::String,
        ColType::Int => DataType::Int64,
        ColType::Float => DataType::Float64,
        ColType::Time => time_dtype(),
    }
}

/// The empty frame of a column list (a result with no rows).
pub(crate) fn empty_frame(cols: &[Column]) -> Result<DataFrame, AnalyticsError> {
    let series: Vec<polars::prelude::Column> = cols
        .iter()
        .map(|c| Series::new_empty(c.name.into(), &dtype(c.ty)).into())
        .collect();
    Ok(DataFrame::new_infer_height(series)?)
}

/// Runs `sql` and loads its rows into a frame with columns `cols`, which must
/// match the statement's output columns in order and type.
pub async fn load(
    pool: &PgPool,
    sql: &str,
    cols: &[Column],
    mode: LoadMode,
) -> Result<DataFrame, AnalyticsError> {
    match mode {
        LoadMode::Rows => load_rows(pool, sql, cols).await,
        LoadMode::Copy => load_copy(pool, sql, cols).await,
    }
}

enum Builder {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
}

async fn load_rows(pool: &PgPool, sql: &str, cols: &[Column]) -> Result<DataFrame, AnalyticsError> {
    let mut builders: Vec<Builder> = cols
        .iter()
        .map(|c| match c.ty {
            ColType::Text => Builder::Text(Vec::new()),
            ColType::Int | ColType::Time => Builder::Int(Vec::new()),
            ColType::Float => Builder::Float(Vec::new()),
        })
        .collect();
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).fetch(pool);
    while let Some(row) = rows.try_next().await? {
        push_row(&row, &mut builders)?;
    }
    drop(rows);
    let columns: Vec<polars::prelude::Column> = cols
        .iter()
        .zip(builders)
        .map(|(c, b)| {
            let s = match b {
                Builder::Text(v) => Series::new(c.name.into(), v),
                Builder::Int(v) => Series::new(c.name.into(), v),
                Builder::Float(v) => Series::new(c.name.into(), v),
            };
            finish_column(s, c)
        })
        .collect::<Result<_, _>>()?;
    Ok(DataFrame::new_infer_height(columns)?)
}

fn push_row(row: &PgRow, builders: &mut [Builder]) -> Result<(), AnalyticsError> {
    for (i, b) in builders.iter_mut().enumerate() {
        match b {
            Builder::Text(v) => v.push(row.try_get::<Option<String>, _>(i)?),
            Builder::Int(v) => v.push(row.try_get::<Option<i64>, _>(i)?),
            Builder::Float(v) => v.push(row.try_get::<Option<f64>, _>(i)?),
        }
    }
    Ok(())
}

/// Casts int8 microseconds to a UTC datetime; other columns pass through.
fn finish_column(s: Series, c: &Column) -> Result<polars::prelude::Column, AnalyticsError> {
    Ok(match c.ty {
        ColType::Time => s.cast(&time_dtype())?.into(),
        _ => s.into(),
    })
}

async fn load_copy(pool: &PgPool, sql: &str, cols: &[Column]) -> Result<DataFrame, AnalyticsError> {
    let mut conn = pool.acquire().await?;
    let mut stream = conn
        .copy_out_raw(&format!("COPY ({sql}) TO STDOUT (FORMAT csv)"))
        .await?;
    let mut buf = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        buf.extend_from_slice(&chunk);
    }
    drop(stream);
    drop(conn);
    if buf.is_empty() {
        return empty_frame(cols);
    }
    let schema: Schema = cols
        .iter()
        .map(|c| {
            let dt = match c.ty {
                ColType::Time => DataType::Int64,
                t => dtype(t),
            };
            Field::new(c.name.into(), dt)
        })
        .collect();
    let df = CsvReadOptions::default()
        .with_has_header(false)
        .with_schema(Some(Arc::new(schema)))
        .into_reader_with_file_handle(Cursor::new(buf))
        .finish()?;
    let columns: Vec<polars::prelude::Column> = cols
        .iter()
        .map(|c| {
            let s = df.column(c.name)?.as_materialized_series().clone();
            finish_column(s, c)
        })
        .collect::<Result<_, _>>()?;
    Ok(DataFrame::new_infer_height(columns)?)
}
