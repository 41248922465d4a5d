//! The scripts folder as the app sees it: each script's text and what it is
//! (a metric, the shop, a scenario, or broken and why). The backend rescans
//! when a file's size or modification time changes (polled once a second;
//! a few `stat` calls, no watcher thread).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::analytics::metrics::{Metric, BUILTIN_METRICS};
use crate::generator::behaviour::{self, Behaviour, BUILTIN_SCENARIOS, BUILTIN_SHOP};
use crate::generator::Scenario;
use crate::script::ScriptError;

/// What a script file is.
#[derive(Clone, Debug)]
pub enum ScriptKind {
    /// A metric (under `metrics/`), compiled.
    Metric(Arc<Metric>),
    /// The shop's behaviour (`shop.rhai`).
    Shop,
    /// A scenario (under `scenarios/`), run.
    Scenario(Arc<Scenario>),
    /// It does not compile or run; the error says where.
    Broken(ScriptError),
}

/// One script file.
#[derive(Clone, Debug)]
pub struct ScriptFile {
    /// Relative to the scripts folder, with `/` (`metrics/basket.rhai`).
    pub rel: String,
    /// Its full path.
    pub path: PathBuf,
    /// Its text as on disk.
    pub text: String,
    /// What it is, or why it does not run.
    pub kind: ScriptKind,
}

impl ScriptFile {
    /// Whether it lives under `metrics/`.
    pub(crate) fn is_metric_file(&self) -> bool {
        self.rel.starts_with("metrics/")
    }

    /// What the file list shows.
    pub(crate) fn title(&self) -> String {
        match &self.kind {
            ScriptKind::Metric(m) => m.info.name.clone(),
            ScriptKind::Shop => "shop".into(),
            ScriptKind::Scenario(s) => s.scenario.clone(),
            ScriptKind::Broken(_) => "does not run".into(),
        }
    }

    /// Why it does not run, if it does not.
    pub fn error(&self) -> Option<&ScriptError> {
        match &self.kind {
            ScriptKind::Broken(e) => Some(e),
            _ => None,
        }
    }
}

/// Every script of the folder, sorted by relative path.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The scripts folder.
    pub dir: PathBuf,
    /// Its scripts, sorted by relative path.
    pub files: Vec<ScriptFile>,
    /// Why the folder could not be read, if it could not.
    pub error: Option<String>,
}

/// Size and modification time of every script (what a rescan compares).
pub type Stamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

const SUBDIRS: [&str; 2] = ["generator", "metrics"];

fn script_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in SUBDIRS {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            out.extend(
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "rhai")),
            );
        }
    }
    out.sort();
    out
}

/// The folder's current stamp.
pub(crate) fn stamp(dir: &Path) -> Stamp {
    script_paths(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let len = m.as_ref().map_or(0, |m| m.len());
            let modified = m.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

fn classify(rel: &str, text: &str) -> ScriptKind {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    if rel.starts_with("metrics/") {
        return match Metric::compile(file, text) {
            Ok(m) => ScriptKind::Metric(Arc::new(m)),
            Err(e) => ScriptKind::Broken(e),
        };
    }
    match behaviour::from_source(file, text) {
        Ok(Behaviour::Shop(_)) => ScriptKind::Shop,
        Ok(Behaviour::Scenario(s)) => ScriptKind::Scenario(Arc::new(*s)),
        Err(e) => ScriptKind::Broken(e),
    }
}

impl Catalog {
    /// Reads and classifies every script of `dir`.
    pub fn scan(dir: &Path) -> Self {
        if !dir.is_dir() {
            return Self {
                dir: dir.to_owned(),
                files: Vec::new(),
                error: Some(format!("{} is not a folder", dir.display())),
            };
        }
        let files = script_paths(dir)
            .into_iter()
            .map(|path| {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                let read = crate::script::read_source(&path, crate::script::MAX_SOURCE_BYTES);
                let (text, kind) = match read {
                    Ok(t) => {
                        let k = classify(&rel, &t);
                        (t, k)
                    }
                    Err(e) => (String::new(), ScriptKind::Broken(ScriptError::new(&rel, e))),
                };
                ScriptFile {
                    rel,
                    path,
                    text,
                    kind,
                }
            })
            .collect();
        Self {
            dir: dir.to_owned(),
            files,
            error: None,
        }
    }

    /// The script at `rel`, if the folder has it.
    pub fn get(&self, rel: &str) -> Option<&ScriptFile> {
        self.files.iter().find(|f| f.rel == rel)
    }

    /// The metrics that compile, in file order.
    pub fn metrics(&self) -> Vec<Arc<Metric>> {
        self.files
            .iter()
            .filter_map(|f| match &f.kind {
                ScriptKind::Metric(m) => Some(Arc::clone(m)),
                _ => None,
            })
            .collect()
    }

    /// The scenarios that load.
    pub fn scenarios(&self) -> Vec<(&ScriptFile, Arc<Scenario>)> {
        self.files
            .iter()
            .filter_map(|f| match &f.kind {
                ScriptKind::Scenario(s) => Some((f, Arc::clone(s))),
                _ => None,
            })
            .collect()
    }
}

/// Where the app's scripts live: the configured folder, else `./scripts`
/// when it holds scripts (a checkout), else a folder in the user's data
/// directory, filled with the shipped scripts on first use.
pub(crate) fn default_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_owned();
    }
    let local = PathBuf::from("scripts");
    if SUBDIRS.iter().any(|s| local.join(s).is_dir()) {
        return local;
    }
    crate::config::default_data_dir().join("scripts")
}

/// Writes the shipped scripts that `dir` does not have yet (never
/// overwrites). Returns how many were written.
pub fn seed(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    let shipped = std::iter::once(("generator", "default.rhai", BUILTIN_SHOP))
        .chain(BUILTIN_SCENARIOS.iter().map(|(f, s)| ("generator", *f, *s)))
        .chain(BUILTIN_METRICS.iter().map(|(f, s)| ("metrics", *f, *s)));
    for (sub, file, text) in shipped {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d)?;
        let p = d.join(file);
        if !p.exists() {
            std::fs::write(&p, text)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Writes `text` to `path` through a temporary file, so that a reader (or a
/// crash) never sees half a script.
pub fn save(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("rhai.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// A new script's text: a metric or a scenario template.
pub fn template(metric: bool, name: &str) -> String {
    if metric {
        format!(
            "const NAME = \"{name}\";\n\
             const KIND = \"kpi\";       // kpi | line | bar | table\n\
             const FORMAT = \"number\";  // currency | percent | count | number\n\
             const DESCRIPTION = \"\";\n\n\
             // The dashboard's range and filters apply to view(), transactions(),\n\
             // sessions() and sql(); the last value is the metric.\n\
             let t = transactions(#{{ status: \"completed\" }});\n\
             if t.height == 0 {{\n    return 0.0;\n}}\n\
             t.select([col(\"total_amount\").mean()]).item()\n"
        )
    } else {
        format!(
            "// A scenario: switched on and off from the pipeline panel.\n\
             #{{\n    scenario: \"{name}\",\n    description: \"\",\n    duration_minutes: 30.0,\n\
             \x20   effects: #{{\n        traffic: 1.0,\n        conversion: 1.0,\n        \
             // categories: #{{ Books: 2.0 }},\n        \
             // discount: #{{ categories: [\"Books\"], probability: 0.5, min_fraction: 0.1, max_fraction: 0.3 }},\n        \
             // payment_outage: #{{ method: \"paypal\", failure_rate: 1.0, retry_probability: 0.5 }},\n        \
             // launch: #{{ category: \"Books\", name: \"New book\", price: 19.99, share: 0.1 }},\n    \
             }},\n}}\n"
        )
    }
}

/// A file name from what the user typed: lower case, `_` for spaces,
/// `.rhai` added; `None` when nothing usable is left.
pub fn file_name(typed: &str) -> Option<String> {
    let stem: String = typed
        .trim()
        .trim_end_matches(".rhai")
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!stem.is_empty()).then(|| format!("{stem}.rhai"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_scripts_seed_a_folder_and_all_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(seed(dir.path()).unwrap(), 12);
        assert_eq!(seed(dir.path()).unwrap(), 0, "never overwrites");
        let c = Catalog::scan(dir.path());
        assert_eq!(c.files.len(), 12);
        for f in &c.files {
            assert!(f.error().is_none(), "{}: {:?}", f.rel, f.error());
        }
        assert_eq!(c.metrics().len(), 6);
        assert_eq!(c.scenarios().len(), 5);
        assert!(matches!(
            c.get("generator/default.rhai").map(|f| &f.kind),
            Some(ScriptKind::Shop)
        ));
    }

    #[test]
    fn templates_load_and_names_are_cleaned() {
        assert!(matches!(
            classify("metrics/x.rhai", &template(true, "Mine")),
            ScriptKind::Metric(_)
        ));
        assert!(matches!(
            classify("generator/x.rhai", &template(false, "Mine")),
            ScriptKind::Scenario(_)
        ));
        assert_eq!(
            file_name("Big Spenders").as_deref(),
            Some("big_spenders.rhai")
        );
        assert_eq!(file_name("x.rhai").as_deref(), Some("x.rhai"));
        assert_eq!(file_name("../..").as_deref(), None);
    }

    #[test]
    fn a_changed_file_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        seed(dir.path()).unwrap();
        let a = stamp(dir.path());
        let p = dir.path().join("metrics/revenue_per_session.rhai");
        std::fs::write(&p, "const NAME = \"x\";\nconst KIND = \"kpi\";\n1 +").unwrap();
        assert_ne!(a, stamp(dir.path()));
        let c = Catalog::scan(dir.path());
        let e = c
            .get("metrics/revenue_per_session.rhai")
            .unwrap()
            .error()
            .unwrap();
        assert_eq!(e.line, Some(3), "{e}");
    }
}
