//! The notebook file: Jupyter's nbformat 4.5 (`.ipynb`), read and written
//! with our own serde types so that GitHub, VS Code and JupyterLab show a
//! notebook with its outputs. Tests validate written files with Python's
//! `nbformat` (the reference implementation of the schema).
//!
//! Reading is lenient where nbformat is: a `source` or a text output may
//! be one string or a list of lines; notebooks of minor versions before 5
//! get cell ids. Writing is what Jupyter writes: keys sorted, one-space
//! indent, multi-line text as a list of lines, a final newline.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The kernel name notebooks of salespulse declare (`salespulse kernel`).
pub const KERNEL_NAME: &str = "salespulse";

/// A notebook as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notebook {
    /// The cells, in order.
    pub cells: Vec<Cell>,
    /// Notebook metadata (kernelspec, language_info, anything else kept).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Major format version: 4.
    pub nbformat: u32,
    /// Minor format version: written as 5.
    pub nbformat_minor: u32,
}

/// One cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cell_type", rename_all = "lowercase")]
pub enum Cell {
    /// Markdown text.
    Markdown(TextCell),
    /// Rhai code and the outputs of its last run.
    Code(CodeCell),
    /// Text passed through unchanged.
    Raw(TextCell),
}

/// A markdown or raw cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextCell {
    /// The cell's id (nbformat 4.5: 1–64 of `[A-Za-z0-9_-]`).
    #[serde(default)]
    pub id: String,
    /// Cell metadata (tags, …).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The text.
    #[serde(deserialize_with = "multiline", serialize_with = "lines")]
    pub source: String,
    /// Files attached to a markdown cell, kept as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Value>,
}

/// A code cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodeCell {
    /// The cell's id.
    #[serde(default)]
    pub id: String,
    /// Cell metadata (tags such as `parameters`, …).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The Rhai code.
    #[serde(deserialize_with = "multiline", serialize_with = "lines")]
    pub source: String,
    /// Which run of the notebook's session made the outputs; `None` if the
    /// cell has not run.
    pub execution_count: Option<i64>,
    /// What the last run showed.
    #[serde(default)]
    pub outputs: Vec<Output>,
}

/// One output of a code cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "output_type", rename_all = "snake_case")]
pub enum Output {
    /// Printed text.
    Stream {
        /// `stdout` or `stderr`.
        name: String,
        /// The text.
        #[serde(deserialize_with = "multiline", serialize_with = "lines")]
        text: String,
    },
    /// Something shown with `display`, `table`, `chart` or `kpi`.
    DisplayData {
        /// The same thing in several MIME types.
        data: MimeBundle,
        /// Per-type metadata (image sizes, …).
        #[serde(default)]
        metadata: Map<String, Value>,
    },
    /// The cell's last value.
    ExecuteResult {
        /// The run that made it.
        execution_count: Option<i64>,
        /// The value in several MIME types.
        data: MimeBundle,
        /// Per-type metadata.
        #[serde(default)]
        metadata: Map<String, Value>,
    },
    /// The cell failed.
    Error {
        /// The kind of error (`ScriptError`).
        ename: String,
        /// Its message, with the cell, line and column.
        evalue: String,
        /// Lines that locate it.
        traceback: Vec<String>,
    },
}

/// MIME type → content: text types as strings (stored as lists of lines),
/// JSON types as JSON, images as base64 text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MimeBundle(pub Map<String, Value>);

impl MimeBundle {
    /// The content of `mime` as text (lists of lines joined).
    pub fn text(&self, mime: &str) -> Option<String> {
        match self.0.get(mime)? {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) => Some(
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .concat(),
            ),
            _ => None,
        }
    }

    /// Sets `mime` to text.
    pub fn set_text(&mut self, mime: &str, text: impl Into<String>) {
        self.0.insert(mime.to_owned(), Value::String(text.into()));
    }

    /// Sets `mime` to a JSON value.
    pub fn set_json(&mut self, mime: &str, v: Value) {
        self.0.insert(mime.to_owned(), v);
    }

    /// The JSON content of `mime`.
    pub fn json(&self, mime: &str) -> Option<&Value> {
        self.0.get(mime)
    }
}

/// JSON MIME types are stored as JSON; every other type as text.
fn is_json_mime(mime: &str) -> bool {
    mime == "application/json" || mime.ends_with("+json")
}

impl Serialize for MimeBundle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = Map::new();
        for (k, v) in &self.0 {
            let v = match v {
                // Images are one base64 string; other text is a list of lines.
                Value::String(t) if !is_json_mime(k) && !k.starts_with("image/") => {
                    Value::Array(split_lines(t).into_iter().map(Value::String).collect())
                }
                Value::String(t) if k == "image/svg+xml" => {
                    Value::Array(split_lines(t).into_iter().map(Value::String).collect())
                }
                other => other.clone(),
            };
            out.insert(k.clone(), v);
        }
        out.serialize(s)
    }
}

impl<'de> Deserialize<'de> for MimeBundle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Map::<String, Value>::deserialize(d)?;
        let mut out = Map::new();
        for (k, v) in raw {
            let v = match v {
                Value::Array(a) if !is_json_mime(&k) => Value::String(
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .concat(),
                ),
                other => other,
            };
            out.insert(k, v);
        }
        Ok(Self(out))
    }
}

/// `"a\nb"` → `["a\n", "b"]`, as Jupyter stores multi-line text.
fn split_lines(s: &str) -> Vec<String> {
    s.split_inclusive('\n').map(str::to_owned).collect()
}

fn multiline<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        One(String),
        Lines(Vec<String>),
    }
    Ok(match Text::deserialize(d)? {
        Text::One(s) => s,
        Text::Lines(l) => l.concat(),
    })
}

fn lines<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    split_lines(text).serialize(s)
}

/// A notebook could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a notebook this version reads.
    #[error("{path}: not a Jupyter notebook salespulse can read: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A fresh random cell id (8 hex digits, as JupyterLab makes them).
pub fn new_cell_id() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(8)
        .collect()
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Notebook {
    /// An empty notebook of salespulse's kernel.
    pub fn new() -> Self {
        let mut nb = Self {
            cells: Vec::new(),
            metadata: Map::new(),
            nbformat: 4,
            nbformat_minor: 5,
        };
        nb.set_kernel();
        nb
    }

    /// Parses a notebook's JSON (`name` for errors). Gives cells without a
    /// valid, unique id a new one, as nbformat does when it upgrades.
    pub fn parse(name: &str, text: &str) -> Result<Self, FormatError> {
        let invalid = |reason: String| FormatError::Invalid {
            path: name.to_owned(),
            reason,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        match v.get("nbformat").and_then(Value::as_u64) {
            Some(4) => {}
            Some(n) => {
                return Err(invalid(format!(
                    "nbformat {n}; only version 4 is read (open and save it in Jupyter to upgrade)"
                )))
            }
            None => return Err(invalid("no `nbformat` version".into())),
        }
        let mut nb: Notebook = serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            invalid(format!("at `{path}`: {}", e.into_inner()))
        })?;
        let mut seen = std::collections::HashSet::new();
        for c in &mut nb.cells {
            let id = c.id_mut();
            if !valid_id(id) || !seen.insert(id.clone()) {
                *id = new_cell_id();
                seen.insert(id.clone());
            }
        }
        nb.nbformat_minor = nb.nbformat_minor.max(5);
        Ok(nb)
    }

    /// Reads a notebook file.
    pub fn load(path: &Path) -> Result<Self, FormatError> {
        let text = std::fs::read_to_string(path).map_err(|source| FormatError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The notebook as Jupyter writes it: keys sorted, one-space indent,
    /// non-ASCII as is, a final newline.
    pub fn to_json(&self) -> String {
        // Through `Value`, whose maps sort their keys.
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        let v = sorted(v);
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        if v.serialize(&mut ser).is_err() {
            return String::new();
        }
        let mut s = String::from_utf8(out).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Writes the notebook to `path` (through a temporary file beside it,
    /// so that a crash never leaves half a notebook).
    pub fn save(&self, path: &Path) -> Result<(), FormatError> {
        let io = |source| FormatError::Io {
            path: path.display().to_string(),
            source,
        };
        // A new file of our own beside it (never one planted in advance,
        // nor another writer's), then renamed over the notebook.
        let name = path.file_name().map_or_else(
            || "notebook".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        let tmp = path.with_file_name(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| {
                use std::io::Write as _;
                f.write_all(self.to_json().as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io)
    }

    /// Declares salespulse's Rhai kernel in the metadata (kept otherwise).
    pub fn set_kernel(&mut self) {
        self.metadata.insert(
            "kernelspec".into(),
            serde_json::json!({
                "name": KERNEL_NAME,
                "display_name": "salespulse (Rhai)",
                "language": "rhai",
            }),
        );
        self.metadata.insert(
            "language_info".into(),
            serde_json::json!({
                "name": "rhai",
                "file_extension": ".rhai",
                "mimetype": "text/x-rhai",
                "codemirror_mode": "rust",
                "pygments_lexer": "rust",
            }),
        );
    }

    /// What salespulse keeps in the metadata (`salespulse`: the last
    /// run's parameters, a schedule), made an object if it is not one.
    pub fn salespulse_meta(&mut self) -> Option<&mut Map<String, Value>> {
        if !matches!(self.metadata.get("salespulse"), Some(Value::Object(_))) {
            self.metadata
                .insert("salespulse".into(), Value::Object(Map::new()));
        }
        self.metadata
            .get_mut("salespulse")
            .and_then(Value::as_object_mut)
    }

    /// The notebook's title: its first markdown heading, else `fallback`.
    pub fn title(&self, fallback: &str) -> String {
        self.cells
            .iter()
            .filter_map(|c| match c {
                Cell::Markdown(m) => Some(m.source.as_str()),
                _ => None,
            })
            .flat_map(str::lines)
            .find_map(|l| l.strip_prefix("# "))
            .map_or_else(|| fallback.to_owned(), |t| t.trim().to_owned())
    }
}

impl Default for Notebook {
    fn default() -> Self {
        Self::new()
    }
}

/// `v` with every map's keys in order (serde_json may keep insertion
/// order when a dependency turns on `preserve_order`).
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

impl Cell {
    /// A new code cell.
    pub fn code(source: impl Into<String>) -> Self {
        Cell::Code(CodeCell {
            id: new_cell_id(),
            metadata: Map::new(),
            source: source.into(),
            execution_count: None,
            outputs: Vec::new(),
        })
    }

    /// A new markdown cell.
    pub fn markdown(source: impl Into<String>) -> Self {
        Cell::Markdown(TextCell {
            id: new_cell_id(),
            metadata: Map::new(),
            source: source.into(),
            attachments: None,
        })
    }

    /// The cell's id.
    pub fn id(&self) -> &str {
        match self {
            Cell::Markdown(c) | Cell::Raw(c) => &c.id,
            Cell::Code(c) => &c.id,
        }
    }

    fn id_mut(&mut self) -> &mut String {
        match self {
            Cell::Markdown(c) | Cell::Raw(c) => &mut c.id,
            Cell::Code(c) => &mut c.id,
        }
    }

    /// The cell's text.
    pub fn source(&self) -> &str {
        match self {
            Cell::Markdown(c) | Cell::Raw(c) => &c.source,
            Cell::Code(c) => &c.source,
        }
    }

    /// The cell's text, to edit.
    pub fn source_mut(&mut self) -> &mut String {
        match self {
            Cell::Markdown(c) | Cell::Raw(c) => &mut c.source,
            Cell::Code(c) => &mut c.source,
        }
    }

    /// The cell's metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        match self {
            Cell::Markdown(c) | Cell::Raw(c) => &c.metadata,
            Cell::Code(c) => &c.metadata,
        }
    }

    /// Whether the cell's metadata tags it `tag` (`parameters`, …).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.metadata()
            .get("tags")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|x| x.as_str() == Some(tag)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_texts_read_as_string_or_lines_and_write_as_lines() {
        let text = r##"{"nbformat": 4, "nbformat_minor": 2, "metadata": {},
          "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["# Title\n", "more"]},
            {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "let a = 1;\na",
             "execution_count": 3,
             "outputs": [{"output_type": "execute_result", "execution_count": 3,
                          "data": {"text/plain": ["1\n", "2"], "application/json": {"a": [1]}},
                          "metadata": {}}]}
          ]}"##;
        let nb = Notebook::parse("t.ipynb", text).unwrap();
        assert_eq!(nb.nbformat_minor, 5);
        assert_eq!(nb.cells[0].source(), "# Title\nmore");
        assert_eq!(nb.title("x"), "Title");
        assert!(nb.cells[1].has_tag("parameters"));
        // Ids were given, valid and distinct.
        assert!(valid_id(nb.cells[0].id()) && valid_id(nb.cells[1].id()));
        assert_ne!(nb.cells[0].id(), nb.cells[1].id());
        let Cell::Code(c) = &nb.cells[1] else {
            panic!()
        };
        let Output::ExecuteResult { data, .. } = &c.outputs[0] else {
            panic!()
        };
        assert_eq!(data.text("text/plain").as_deref(), Some("1\n2"));
        assert_eq!(
            data.json("application/json"),
            Some(&serde_json::json!({"a": [1]}))
        );
        let written = nb.to_json();
        assert!(
            written.contains("\"let a = 1;\\n\",\n    \"a\""),
            "{written}"
        );
        assert!(written.ends_with("}\n"));
        // Round trip.
        assert_eq!(Notebook::parse("t.ipynb", &written).unwrap(), nb);
    }

    #[test]
    fn other_versions_and_broken_files_are_refused_clearly() {
        let e = Notebook::parse("old.ipynb", r#"{"nbformat": 3, "worksheets": []}"#).unwrap_err();
        assert!(e.to_string().contains("nbformat 3"), "{e}");
        let e = Notebook::parse("x.ipynb", "{").unwrap_err();
        assert!(
            e.to_string().starts_with("x.ipynb: not a Jupyter notebook"),
            "{e}"
        );
        let e = Notebook::parse(
            "x.ipynb",
            r#"{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code", "source": 5}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("cells[0]"), "{e}");
    }
}
