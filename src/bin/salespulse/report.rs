//! Printing what commands return: reports as text or JSON, frames as a
//! table, CSV or JSON.

use salespulse::analytics::export;

use crate::UsageError;

/// Prints a report as pretty JSON, or as its text (ending in one newline).
pub fn print_report<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        let text = report.to_string();
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
    Ok(())
}

/// Prints a frame to stdout as a table, CSV or JSON.
pub fn write_frame(
    frame: &mut polars::prelude::DataFrame,
    format: &str,
    raw_csv: bool,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout().lock();
    match format {
        "table" => print_table(frame),
        "csv" => export::write_csv(frame, stdout, raw_csv)?,
        "json" => {
            export::write_json(frame, stdout)?;
            println!();
        }
        f => {
            return Err(UsageError::new(format!("--format {f:?} is not table, csv or json")).into())
        }
    }
    Ok(())
}

/// Polars' table settings (read from the environment) for
/// [`write_frame`]'s tables: every row and column, no shape or types line.
/// Call before any other thread runs; a setting the user made is kept.
pub fn set_table_format() {
    for (k, v) in [
        ("POLARS_FMT_MAX_ROWS", "-1"),
        ("POLARS_FMT_MAX_COLS", "-1"),
        ("POLARS_FMT_STR_LEN", "64"),
        ("POLARS_FMT_TABLE_HIDE_DATAFRAME_SHAPE_INFORMATION", "1"),
        ("POLARS_FMT_TABLE_HIDE_COLUMN_DATA_TYPES", "1"),
    ] {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
}

/// Prints a frame as a table ([`set_table_format`]'s settings).
fn print_table(df: &polars::prelude::DataFrame) {
    println!("{df}");
    println!("{} rows", df.height());
}
