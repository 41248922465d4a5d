//! Settings the app keeps between runs (eframe persistence), and their panel.

use serde::{Deserialize, Serialize};

use crate::analytics::Filters;
use crate::config::{redact_url, Config};

/// Key of the settings in eframe's storage.
pub(crate) const STORAGE_KEY: &str = "salespulse.settings";

/// The colour scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Theme {
    /// Light text on dark.
    Dark,
    /// Dark text on light.
    Light,
}

/// What the user chose; persisted as a whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Empty = embedded.
    pub kafka_brokers: String,
    /// Empty = embedded.
    pub database_url: String,
    /// Redis for the frame cache.
    pub redis_url: String,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Most records an ingest batch holds.
    pub batch_size: usize,
    /// How long cached frames live, seconds.
    pub cache_ttl_secs: u64,
    /// How long one database query may run before it is cancelled, seconds
    /// (the pool's `statement_timeout`; 0: no limit). `None`: as configured
    /// (`salespulse.toml`, `SALESPULSE_PG_STATEMENT_TIMEOUT_MS`, 10 s).
    pub query_timeout_secs: Option<f64>,
    /// Dashboard auto-refresh interval, seconds.
    pub refresh_secs: f64,
    /// Refresh the dashboard on the interval.
    pub auto_refresh: bool,
    /// The colour scheme.
    pub theme: Theme,
    /// Generation rate when started from the app, events/s (0 = as fast as possible).
    pub rate: f64,
    /// The dashboard's filters.
    pub filters: Filters,
    /// Start generating when the app opens.
    pub autostart: bool,
    /// Show frame timings.
    pub debug_overlay: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl Settings {
    /// The settings `cfg` implies.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            kafka_brokers: cfg.kafka_brokers.clone().unwrap_or_default(),
            database_url: cfg.database_url.clone().unwrap_or_default(),
            redis_url: cfg.redis_url.clone(),
            partitions: cfg.partitions,
            batch_size: cfg.batch_size,
            cache_ttl_secs: cfg.cache_ttl_secs,
            query_timeout_secs: None,
            refresh_secs: 5.0,
            auto_refresh: true,
            theme: Theme::Dark,
            rate: 200.0,
            filters: Filters {
                range: crate::analytics::TimeRange::Last { minutes: 60 },
                ..Filters::default()
            },
            autostart: true,
            debug_overlay: false,
        }
    }

    /// `base` with the service settings of these settings applied.
    pub(crate) fn apply_to(&self, base: &Config) -> Result<Config, String> {
        let mut cfg = base.clone();
        let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        cfg.kafka_brokers = opt(&self.kafka_brokers);
        cfg.database_url = opt(&self.database_url);
        cfg.redis_url = self.redis_url.trim().to_owned();
        cfg.partitions = self.partitions;
        cfg.batch_size = self.batch_size;
        cfg.cache_ttl_secs = self.cache_ttl_secs;
        if let Some(secs) = self
            .query_timeout_secs
            .filter(|s| s.is_finite() && *s >= 0.0)
        {
            cfg.pg_statement_timeout_ms = (secs * 1000.0).round() as u64;
        }
        cfg.check().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    /// True when applying `other` needs the services reopened.
    pub(crate) fn services_differ(&self, other: &Settings) -> bool {
        self.kafka_brokers != other.kafka_brokers
            || self.database_url != other.database_url
            || self.redis_url != other.redis_url
            || self.partitions != other.partitions
            || self.batch_size != other.batch_size
            || self.cache_ttl_secs != other.cache_ttl_secs
            || self.query_timeout_secs != other.query_timeout_secs
    }
}

/// A URL field that shows the password masked unless being edited.
fn url_field_ui(ui: &mut egui::Ui, label: &str, value: &mut String, hint: &str) {
    ui.label(label);
    let id = ui.make_persistent_id(("url", label));
    let editing = ui.data(|d| d.get_temp::<bool>(id)).unwrap_or(false);
    if editing {
        let r = ui.add(
            egui::TextEdit::singleline(value)
                .hint_text(hint)
                .desired_width(f32::INFINITY),
        );
        if r.lost_focus() {
            ui.data_mut(|d| d.insert_temp(id, false));
        }
    } else {
        let shown = if value.is_empty() {
            hint.to_owned()
        } else {
            redact_url(value)
        };
        ui.horizontal(|ui| {
            ui.monospace(shown);
            if ui.small_button("Edit").clicked() {
                ui.data_mut(|d| d.insert_temp(id, true));
            }
        });
    }
    ui.end_row();
}

/// The settings panel; edits `draft` and returns true when the user applies it.
pub(crate) fn settings_ui(ui: &mut egui::Ui, draft: &mut Settings, current: &Settings) -> bool {
    let mut apply = false;
    ui.heading("Settings");
    ui.add_space(4.0);
    egui::Grid::new("settings_grid")
        .num_columns(2)
        .spacing([16.0, 8.0])
        .striped(true)
        .show(ui, |ui| {
            url_field_ui(
                ui,
                "Kafka brokers",
                &mut draft.kafka_brokers,
                "embedded (in-process mock cluster)",
            );
            url_field_ui(
                ui,
                "PostgreSQL URL",
                &mut draft.database_url,
                "embedded (private local cluster)",
            );
            url_field_ui(
                ui,
                "Redis URL",
                &mut draft.redis_url,
                "redis://127.0.0.1:6379",
            );
            ui.label("Partitions (new topics)");
            ui.add(egui::DragValue::new(&mut draft.partitions).range(1..=1024));
            ui.end_row();
            ui.label("Ingest batch size");
            ui.add(egui::DragValue::new(&mut draft.batch_size).range(1..=100_000));
            ui.end_row();
            ui.label("Cache TTL (s)");
            ui.add(egui::DragValue::new(&mut draft.cache_ttl_secs).range(0..=86_400));
            ui.end_row();
            ui.label("Query timeout (s)").on_hover_text(
                "how long one database query may run (a view, a metric's load, an export page) \
                 before PostgreSQL cancels it; 0: no limit",
            );
            ui.horizontal(|ui| {
                let mut own = draft.query_timeout_secs.is_some();
                if ui
                    .checkbox(&mut own, "set here")
                    .on_hover_text(
                        "unchecked: as configured (salespulse.toml, \
                         SALESPULSE_PG_STATEMENT_TIMEOUT_MS; 10 s by default)",
                    )
                    .changed()
                {
                    draft.query_timeout_secs = own.then_some(60.0);
                }
                match &mut draft.query_timeout_secs {
                    Some(v) => {
                        ui.add(
                            egui::DragValue::new(v)
                                .range(0.0..=86_400.0)
                                .clamp_existing_to_range(false)
                                .speed(1.0),
                        );
                    }
                    None => {
                        ui.weak("as configured");
                    }
                }
            });
            ui.end_row();
            ui.label("Refresh interval (s)");
            ui.add(
                egui::DragValue::new(&mut draft.refresh_secs)
                    .range(1.0..=3600.0)
                    .speed(0.5),
            );
            ui.end_row();
            ui.label("Theme");
            ui.horizontal(|ui| {
                ui.selectable_value(&mut draft.theme, Theme::Dark, "Dark");
                ui.selectable_value(&mut draft.theme, Theme::Light, "Light");
            });
            ui.end_row();
            ui.label("Behaviour");
            ui.vertical(|ui| {
                ui.checkbox(&mut draft.autostart, "Start generating on open");
                ui.checkbox(&mut draft.debug_overlay, "Frame-time overlay");
            });
            ui.end_row();
        });
    ui.add_space(8.0);
    let changed = draft != current;
    ui.horizontal(|ui| {
        let label = if draft.services_differ(current) {
            "Apply and reconnect"
        } else {
            "Apply"
        };
        if ui.add_enabled(changed, egui::Button::new(label)).clicked() {
            apply = true;
        }
        if ui
            .add_enabled(changed, egui::Button::new("Revert"))
            .clicked()
        {
            *draft = current.clone();
        }
        if ui.button("Defaults").clicked() {
            *draft = Settings::default();
        }
    });
    ui.label(
        egui::RichText::new(
            "Settings are saved between runs; a password typed into a URL goes to the OS \
             keyring, never to the settings file. Empty service URLs use the embedded services.",
        )
        .weak(),
    );
    apply
}

/// The settings saved in eframe's storage (or the config's defaults when
/// none were saved); services named in the environment (`env`) win over
/// saved ones.
pub fn load(
    storage: Option<&dyn eframe::Storage>,
    base: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> Settings {
    let mut settings = storage
        .and_then(|s| eframe::get_value::<Settings>(s, STORAGE_KEY))
        .unwrap_or_else(|| Settings::from_config(base));
    for (var, field) in [
        ("KAFKA_BROKERS", &mut settings.kafka_brokers),
        ("DATABASE_URL", &mut settings.database_url),
        ("REDIS_URL", &mut settings.redis_url),
    ] {
        if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
            *field = v;
        }
    }
    settings
}

/// The service URLs of `draft` that the user typed with a password (they
/// differ from `current` and do not come from the environment): the ones
/// whose password goes to the OS keyring.
pub(crate) fn typed_passwords(
    draft: &Settings,
    current: &Settings,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    [
        ("DATABASE_URL", &draft.database_url, &current.database_url),
        ("REDIS_URL", &draft.redis_url, &current.redis_url),
    ]
    .into_iter()
    .filter(|(var, url, before)| {
        url != before
            && crate::config::strip_password(url) != url.as_str()
            && env(var).as_deref() != Some(url.as_str())
    })
    .map(|(_, url, _)| url.trim().to_owned())
    .collect()
}

/// Saves the settings into eframe's storage (written to disk by eframe, in
/// plain text): no secret goes there. A service URL that came from the
/// environment (`env` holds it) is not saved — the one saved before stays —
/// and a password in a URL is dropped: the app keeps a typed one in the OS
/// keyring ([`crate::config::secrets`]) and fills it in on the next start;
/// without a keyring it asks again, or the environment gives it.
pub fn save(
    storage: &mut dyn eframe::Storage,
    settings: &Settings,
    env: impl Fn(&str) -> Option<String>,
) {
    let saved = eframe::get_value::<Settings>(storage, STORAGE_KEY);
    let mut out = settings.clone();
    for (var, field, before) in [
        (
            "KAFKA_BROKERS",
            &mut out.kafka_brokers,
            saved.as_ref().map(|s| s.kafka_brokers.clone()),
        ),
        (
            "DATABASE_URL",
            &mut out.database_url,
            saved.as_ref().map(|s| s.database_url.clone()),
        ),
        (
            "REDIS_URL",
            &mut out.redis_url,
            saved.as_ref().map(|s| s.redis_url.clone()),
        ),
    ] {
        if env(var).is_some_and(|v| v == *field) {
            *field = before.unwrap_or_default();
        }
        *field = crate::config::strip_password(field);
    }
    eframe::set_value(storage, STORAGE_KEY, &out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_timeout_overrides_the_configured_one_only_when_set_here() {
        let base = Config {
            pg_statement_timeout_ms: 45_000,
            ..Config::default()
        };
        let mut s = Settings::from_config(&base);
        assert_eq!(s.query_timeout_secs, None);
        assert_eq!(s.apply_to(&base).unwrap().pg_statement_timeout_ms, 45_000);
        let before = s.clone();
        s.query_timeout_secs = Some(120.0);
        assert_eq!(s.apply_to(&base).unwrap().pg_statement_timeout_ms, 120_000);
        // The pools are made again with the new timeout.
        assert!(s.services_differ(&before));
        s.query_timeout_secs = Some(0.0);
        assert_eq!(s.apply_to(&base).unwrap().pg_statement_timeout_ms, 0);
        // Settings saved before the field existed keep the configured one.
        let old: Settings = serde_json::from_str(r#"{"partitions": 3}"#).unwrap();
        assert_eq!(old.apply_to(&base).unwrap().pg_statement_timeout_ms, 45_000);
    }
}
