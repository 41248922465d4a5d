//! Configuration: defaults, then an optional `salespulse.toml`, then
//! environment variables (each documented in the README), then CLI flags.
//!
//! Secrets never leave this module unredacted: use [`redact_url`] or
//! [`Config::summary`] for anything that is printed or logged.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid setting {0}")]
    Invalid(String),
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Kafka bootstrap servers; `None` runs an in-process mock cluster.
    pub kafka_brokers: Option<String>,
    /// PostgreSQL URL; `None` starts a private local cluster.
    pub database_url: Option<String>,
    pub redis_url: String,
    pub topic: String,
    pub dlq_topic: String,
    /// Partitions of the topic when it is created.
    pub partitions: i32,
    pub replication_factor: i32,
    pub group_id: String,
    /// Most records per ingest batch.
    pub batch_size: usize,
    /// Longest a batch waits to fill, in ms.
    pub batch_timeout_ms: u64,
    /// Parallel write lanes in each ingest worker (partitions are spread over them).
    pub ingest_lanes: usize,
    /// Consumer group session timeout, in ms: how soon a dead worker's
    /// partitions move to the others.
    pub kafka_session_timeout_ms: u32,
    /// Producer linger (batching), in ms.
    pub kafka_linger_ms: u32,
    /// Idempotent producer (needs broker support for InitProducerId).
    pub kafka_idempotence: bool,
    /// How long librdkafka keeps retrying one message before reporting failure, in ms.
    pub kafka_message_timeout_ms: u32,
    /// How far past the wall clock an event may be stamped before ingest
    /// dead-letters it, in seconds (clock skew allowance).
    pub max_future_skew_secs: u64,
    pub pg_pool_size: u32,
    pub pg_statement_timeout_ms: u64,
    pub http_bind: String,
    /// Where embedded services keep their data.
    pub data_dir: Option<PathBuf>,
    /// Port of the embedded PostgreSQL cluster.
    pub embedded_pg_port: u16,
    /// Analytics frames are cached in Redis this long, in seconds (0 = no cache).
    pub cache_ttl_secs: u64,
    /// The app's scripts folder (generator/ and metrics/); default
    /// `./scripts` when present, else one in the user's data directory.
    pub scripts_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka_brokers: None,
            database_url: None,
            redis_url: "redis://127.0.0.1:6379".into(),
            topic: "sales-events".into(),
            dlq_topic: "sales-events-dlq".into(),
            partitions: 6,
            replication_factor: 1,
            group_id: "salespulse-ingest".into(),
            batch_size: 5_000,
            batch_timeout_ms: 250,
            ingest_lanes: 2,
            kafka_session_timeout_ms: 10_000,
            kafka_linger_ms: 5,
            kafka_idempotence: true,
            kafka_message_timeout_ms: 120_000,
            max_future_skew_secs: 300,
            pg_pool_size: 5,
            pg_statement_timeout_ms: 10_000,
            http_bind: "127.0.0.1:8080".into(),
            data_dir: None,
            embedded_pg_port: 54329,
            cache_ttl_secs: 3_600,
            scripts_dir: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

fn env_parse<T: FromStr>(var: &'static str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(var) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: T::Err| ConfigError::Env {
                var,
                value: if var.contains("URL") {
                    redact_url(&v)
                } else {
                    v.clone()
                },
                reason: e.to_string(),
            }),
        Err(_) => Ok(None),
    }
}

impl Config {
    /// Loads defaults, then `path` (or `SALESPULSE_CONFIG`, or `./salespulse.toml`
    /// when present), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SALESPULSE_CONFIG").map(PathBuf::from));
        let file = explicit.clone().or_else(|| {
            let p = PathBuf::from("salespulse.toml");
            p.exists().then_some(p)
        });
        let mut cfg = match file {
            Some(p) => Self::from_file(&p)?,
            None => Self::default(),
        };
        cfg.apply_env()?;
        cfg.check()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    fn apply_env(&mut self) -> Result<(), ConfigError> {
        macro_rules! env {
            ($var:literal => $field:ident) => {
                if let Some(v) = env_parse($var)? {
                    self.$field = v;
                }
            };
            ($var:literal => Some $field:ident) => {
                if let Some(v) = env_parse($var)? {
                    self.$field = Some(v);
                }
            };
        }
        env!("KAFKA_BROKERS" => Some kafka_brokers);
        env!("DATABASE_URL" => Some database_url);
        env!("REDIS_URL" => redis_url);
        env!("SALESPULSE_TOPIC" => topic);
        env!("SALESPULSE_DLQ_TOPIC" => dlq_topic);
        env!("SALESPULSE_PARTITIONS" => partitions);
        env!("SALESPULSE_REPLICATION_FACTOR" => replication_factor);
        env!("SALESPULSE_GROUP_ID" => group_id);
        env!("SALESPULSE_BATCH_SIZE" => batch_size);
        env!("SALESPULSE_BATCH_TIMEOUT_MS" => batch_timeout_ms);
        env!("SALESPULSE_INGEST_LANES" => ingest_lanes);
        env!("SALESPULSE_KAFKA_SESSION_TIMEOUT_MS" => kafka_session_timeout_ms);
        env!("SALESPULSE_KAFKA_LINGER_MS" => kafka_linger_ms);
        env!("SALESPULSE_KAFKA_IDEMPOTENCE" => kafka_idempotence);
        env!("SALESPULSE_KAFKA_MESSAGE_TIMEOUT_MS" => kafka_message_timeout_ms);
        env!("SALESPULSE_MAX_FUTURE_SKEW_SECS" => max_future_skew_secs);
        env!("SALESPULSE_PG_POOL_SIZE" => pg_pool_size);
        env!("SALESPULSE_PG_STATEMENT_TIMEOUT_MS" => pg_statement_timeout_ms);
        env!("SALESPULSE_HTTP_BIND" => http_bind);
        env!("SALESPULSE_DATA_DIR" => Some data_dir);
        env!("SALESPULSE_PG_PORT" => embedded_pg_port);
        env!("SALESPULSE_CACHE_TTL_SECS" => cache_ttl_secs);
        env!("SALESPULSE_SCRIPTS" => Some scripts_dir);
        Ok(())
    }

    /// Rejects settings no component can work with.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=10_000).contains(&self.partitions) {
            return bad(format!("partitions = {} (1..=10000)", self.partitions));
        }
        if self.replication_factor < 1 {
            return bad(format!("replication_factor = {}", self.replication_factor));
        }
        if !(1..=100_000).contains(&self.batch_size) {
            return bad(format!("batch_size = {} (1..=100000)", self.batch_size));
        }
        if !(1..=64).contains(&self.ingest_lanes) {
            return bad(format!("ingest_lanes = {} (1..=64)", self.ingest_lanes));
        }
        if self.batch_timeout_ms == 0 {
            return bad("batch_timeout_ms = 0".into());
        }
        if self.max_future_skew_secs > 7 * 86_400 {
            return bad(format!(
                "max_future_skew_secs = {} (at most 604800, a week)",
                self.max_future_skew_secs
            ));
        }
        if self.pg_pool_size == 0 {
            return bad("pg_pool_size = 0".into());
        }
        if self.kafka_session_timeout_ms < 1_000 {
            return bad(format!(
                "kafka_session_timeout_ms = {} (at least 1000)",
                self.kafka_session_timeout_ms
            ));
        }
        for (name, topic) in [("topic", &self.topic), ("dlq_topic", &self.dlq_topic)] {
            let ok = !topic.is_empty()
                && topic.len() <= 249
                && topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return bad(format!(
                    "{name} = {topic:?} is not a valid Kafka topic name"
                ));
            }
        }
        if self.topic == self.dlq_topic {
            return bad("topic and dlq_topic must differ".into());
        }
        Ok(())
    }

    /// One line per setting, secrets redacted.
    pub fn summary(&self) -> String {
        let or_embedded = |v: &Option<String>| {
            v.as_deref()
                .map(redact_url)
                .unwrap_or_else(|| "(embedded)".into())
        };
        format!(
            "kafka_brokers = {}\ndatabase_url = {}\nredis_url = {}\ntopic = {} (dlq {}), {} partitions\n\
             group_id = {}\nbatch = {} records / {} ms\npg_pool_size = {}, statement timeout {} ms\nhttp_bind = {}",
            or_embedded(&self.kafka_brokers),
            or_embedded(&self.database_url),
            redact_url(&self.redis_url),
            self.topic,
            self.dlq_topic,
            self.partitions,
            self.group_id,
            self.batch_size,
            self.batch_timeout_ms,
            self.pg_pool_size,
            self.pg_statement_timeout_ms,
            self.http_bind,
        )
    }
}

/// The per-user data directory: `$XDG_DATA_HOME/salespulse` or
/// `~/.local/share/salespulse` on Linux, `~/Library/Application Support/salespulse`
/// on macOS, `%LOCALAPPDATA%\salespulse` on Windows.
pub fn default_data_dir() -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    let base = if cfg!(windows) {
        std::env::var_os("LOCALAPPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        home().map(|h| h.join("Library").join("Application Support"))
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| home().map(|h| h.join(".local").join("share")))
    };
    base.unwrap_or_else(std::env::temp_dir).join("salespulse")
}

/// Hides passwords in URLs and connection strings:
/// `postgres://u:secret@h/db` → `postgres://u:***@h/db`,
/// `host=h password=secret` → `host=h password=***`, `?password=x` → `?password=***`.
/// `url` without the password of its credentials (`scheme://user@host…`);
/// other text as it is.
pub fn strip_password(url: &str) -> String {
    // A URL that parses is rewritten by the parser (query strings may hold
    // `@`); only one that does not falls back to "up to the last `@`".
    if let Ok(mut u) = url::Url::parse(url) {
        if u.has_host() {
            if u.password().is_none() {
                return url.to_owned();
            }
            if u.set_password(None).is_ok() {
                return u.to_string();
            }
        }
    }
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = url.get(rest_start..).unwrap_or_default();
    match rest.rfind('@') {
        Some(at) => {
            let userinfo = rest.get(..at).unwrap_or_default();
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}{}",
                    url.get(..rest_start).unwrap_or_default(),
                    userinfo.get(..colon).unwrap_or_default(),
                    rest.get(at..).unwrap_or_default()
                ),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

pub fn redact_url(s: &str) -> String {
    let mut out = s.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        // The credentials end at the *last* `@`: a password may hold `/`,
        // `?`, `#` or `@` (unencoded, as people type them). When in doubt
        // this hides too much, never too little.
        let rest = out.get(rest_start..).unwrap_or_default();
        if let Some(at) = rest.rfind('@') {
            let userinfo = rest.get(..at).unwrap_or_default();
            if let Some(colon) = userinfo.find(':') {
                let from = rest_start + colon + 1;
                out.replace_range(from..rest_start + at, "***");
            }
        }
    }
    // key=value forms (libpq keyword strings, query parameters)
    let lower = out.to_ascii_lowercase();
    let mut result = String::with_capacity(out.len());
    let mut i = 0;
    while let Some(pos) = lower[i..].find("password=") {
        let start = i + pos + "password=".len();
        result.push_str(&out[i..start]);
        result.push_str("***");
        let end = out[start..]
            .find(['&', ' ', ';'])
            .map_or(out.len(), |e| start + e);
        i = end;
    }
    result.push_str(&out[i..]);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://alice:s3cr%40t@db:5432/x?sslmode=require"),
            "postgres://alice:***@db:5432/x?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(
            strip_password("postgres://carol:x/y?z#w@v@db:5432/x"),
            "postgres://carol@db:5432/x"
        );
        assert_eq!(strip_password("redis://:pw@h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            strip_password("postgres://u@h:5432/db?application_name=a@b"),
            "postgres://u@h:5432/db?application_name=a@b"
        );
        assert_eq!(
            strip_password("postgres://u:p@h:5432/db?application_name=a@b"),
            "postgres://u@h:5432/db?application_name=a@b"
        );
        assert_eq!(strip_password("redis://h:6379/0"), "redis://h:6379/0");
        // Unencoded / ? # @ in a password.
        for pw in ["a/b", "a?b", "a#b", "a@b", "x/y?z#w@v"] {
            let url = format!("postgres://carol:{pw}@db:5432/x");
            let r = redact_url(&url);
            assert_eq!(r, "postgres://carol:***@db:5432/x", "{pw}");
        }
        assert_eq!(
            redact_url("host=db password=hunter2 user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(
            redact_url("postgres://db/x?user=a&password=zz&sslmode=disable"),
            "postgres://db/x?user=a&password=***&sslmode=disable"
        );
        let cfg = Config {
            database_url: Some("postgres://u:topsecret@h/d".into()),
            ..Config::default()
        };
        assert!(!format!("{cfg:?}").contains("topsecret"));
    }

    #[test]
    fn rejects_bad_settings() {
        let cfg = Config {
            partitions: 0,
            ..Config::default()
        };
        assert!(cfg.check().is_err());
        let cfg = Config {
            topic: "bad topic!".into(),
            ..Config::default()
        };
        assert!(cfg.check().is_err());
        assert!(Config::default().check().is_ok());
    }

    #[test]
    fn reads_toml_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("salespulse.toml");
        std::fs::write(&p, "partitions = 12\nbatch_size = 100\n").unwrap();
        let cfg = Config::from_file(&p).unwrap();
        assert_eq!((cfg.partitions, cfg.batch_size), (12, 100));
        std::fs::write(&p, "partitons = 12\n").unwrap();
        let err = Config::from_file(&p).unwrap_err().to_string();
        assert!(err.contains("partitons"), "{err}");
    }
}
