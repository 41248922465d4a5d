//! Configuration: defaults, then an optional `salespulse.toml`, then
//! environment variables (each documented in the README), then CLI flags.
//!
//! Secrets never leave this module unredacted: use [`redact_url`] or
//! [`Config::summary`] for anything that is printed or logged.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod secrets;

/// Why the configuration could not be loaded or was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`Config`] (unknown keys included).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error (syntax, a wrong type, an unknown key).
        source: Box<toml::de::Error>,
    },
    /// An environment variable's value does not parse.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// Its value, redacted when the name contains `URL`.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A setting no component can work with ([`Config::check`]); the text
    /// names it and what is accepted.
    #[error("invalid setting {0}")]
    Invalid(String),
}

/// Every setting of salespulse (see the module docs for where each comes
/// from). `Debug` prints [`Config::summary`], secrets redacted.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Kafka bootstrap servers; `None` runs an in-process mock cluster.
    pub kafka_brokers: Option<String>,
    /// PostgreSQL URL; `None` starts a private local cluster.
    pub database_url: Option<String>,
    /// Redis URL of the analytics frame cache.
    pub redis_url: String,
    /// Topic the generator produces to and ingest reads.
    pub topic: String,
    /// Dead-letter topic for records ingest rejects; must differ from `topic`.
    pub dlq_topic: String,
    /// Partitions of the topic when it is created.
    pub partitions: i32,
    /// Replication factor of the topics when they are created (at least 1).
    pub replication_factor: i32,
    /// Consumer group of the ingest workers; their offsets are stored in
    /// PostgreSQL under it.
    pub group_id: String,
    /// Most records per ingest batch.
    pub batch_size: usize,
    /// Longest a batch waits to fill, in ms.
    pub batch_timeout_ms: u64,
    /// Parallel write lanes in each ingest worker (partitions are spread over them).
    pub ingest_lanes: usize,
    /// Which partitions ingest reads: `group` (share them with the other
    /// ingest processes of `group_id`, assigned by the broker), `all`, or a
    /// list such as `0,2,4` (read them itself, without the group
    /// coordinator; see [`Assignment`]).
    pub ingest_partitions: String,
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
    /// Connections in the PostgreSQL pool (at least 1).
    pub pg_pool_size: u32,
    /// PostgreSQL `statement_timeout` of the pool's connections, in ms.
    pub pg_statement_timeout_ms: u64,
    /// Address (`host:port`) the HTTP API binds to unless a flag says otherwise.
    pub http_bind: String,
    /// Where embedded services keep their data.
    pub data_dir: Option<PathBuf>,
    /// Port of the embedded PostgreSQL cluster.
    pub embedded_pg_port: u16,
    /// Analytics frames are cached in Redis this long, in seconds (0 = no cache).
    pub cache_ttl_secs: u64,
    /// The HTTP API reads the data versions at most this often, in ms: a
    /// view over a range that reaches live data is then computed at most
    /// once per interval, and is about this much older than the newest
    /// commit at most (three intervals while a read of them is slow or
    /// failing; 0 = read them for every request). The app is not affected.
    pub api_refresh_ms: u64,
    /// Views the HTTP API computes at once (0 = one per CPU core); the
    /// others wait their turn. Fewer leave more of the
    /// machine to ingest when many dashboards poll; at most the API's
    /// database pool less one. The app is not affected.
    pub api_compute_limit: usize,
    /// The app's scripts folder (generator/ and metrics/); default
    /// `./scripts` when present, else one in the user's data directory.
    pub scripts_dir: Option<PathBuf>,
    /// The notebooks folder whose scheduled notebooks `run` and the app
    /// rerun; default `./notebooks` when present.
    pub notebooks_dir: Option<PathBuf>,
    /// How Kafka clients talk to the brokers: `plaintext` or `ssl` (TLS).
    pub kafka_security_protocol: String,
    /// PEM file of the CA(s) a TLS broker's certificate is checked against
    /// (default: the system's).
    pub kafka_ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one (mutual TLS).
    pub kafka_ssl_certificate_location: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub kafka_ssl_key_location: Option<PathBuf>,
    /// Password of that key: from `SALESPULSE_KAFKA_SSL_KEY_PASSWORD` only,
    /// never from or to a file.
    #[serde(skip)]
    pub kafka_ssl_key_password: Option<String>,
    /// A URL alert notifications are POSTed to (it may carry a token):
    /// from `SALESPULSE_ALERT_WEBHOOK` only, never from or to a file.
    #[serde(skip)]
    pub alert_webhook: Option<String>,
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
            ingest_partitions: "group".into(),
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
            api_refresh_ms: 1_000,
            api_compute_limit: 0,
            scripts_dir: None,
            notebooks_dir: None,
            kafka_security_protocol: "plaintext".into(),
            kafka_ssl_ca_location: None,
            kafka_ssl_certificate_location: None,
            kafka_ssl_key_location: None,
            kafka_ssl_key_password: None,
            alert_webhook: None,
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

    /// Reads the TOML file at `path`, defaults for what it leaves out; unknown
    /// keys are an error. Neither the environment nor [`Config::check`] applies.
    pub(crate) fn from_file(path: &Path) -> Result<Self, ConfigError> {
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
        env!("SALESPULSE_INGEST_PARTITIONS" => ingest_partitions);
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
        env!("SALESPULSE_API_REFRESH_MS" => api_refresh_ms);
        env!("SALESPULSE_API_COMPUTE_LIMIT" => api_compute_limit);
        env!("SALESPULSE_SCRIPTS" => Some scripts_dir);
        env!("SALESPULSE_NOTEBOOKS" => Some notebooks_dir);
        env!("SALESPULSE_KAFKA_SECURITY_PROTOCOL" => kafka_security_protocol);
        env!("SALESPULSE_KAFKA_SSL_CA_LOCATION" => Some kafka_ssl_ca_location);
        env!("SALESPULSE_KAFKA_SSL_CERTIFICATE_LOCATION" => Some kafka_ssl_certificate_location);
        env!("SALESPULSE_KAFKA_SSL_KEY_LOCATION" => Some kafka_ssl_key_location);
        if let Ok(pw) = std::env::var("SALESPULSE_KAFKA_SSL_KEY_PASSWORD") {
            self.kafka_ssl_key_password = Some(pw).filter(|p| !p.is_empty());
        }
        if let Ok(url) = std::env::var("SALESPULSE_ALERT_WEBHOOK") {
            self.alert_webhook = Some(url).filter(|u| !u.trim().is_empty());
        }
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
        if let Err(e) = self.ingest_partitions.parse::<Assignment>() {
            return bad(format!("ingest_partitions = {e}"));
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
        match self.kafka_security_protocol.to_ascii_lowercase().as_str() {
            "plaintext" => {
                if self.kafka_ssl_files().iter().any(|(_, _, f)| f.is_some())
                    || self.kafka_ssl_key_password.is_some()
                {
                    return bad(
                        "kafka_ssl_* settings are given but kafka_security_protocol is \
                         \"plaintext\": set it to \"ssl\" (or remove them)"
                            .into(),
                    );
                }
            }
            "ssl" => {
                if self.kafka_brokers.is_none() {
                    return bad(
                        "kafka_security_protocol = \"ssl\" needs kafka_brokers (the embedded \
                         broker speaks plaintext only)"
                            .into(),
                    );
                }
                for (name, _, file) in self.kafka_ssl_files() {
                    if let Some(f) = file {
                        if let Err(e) = std::fs::File::open(f) {
                            return bad(format!("{name} = {}: {e}", f.display()));
                        }
                    }
                }
                if self.kafka_ssl_key_password.is_some() && self.kafka_ssl_key_location.is_none() {
                    return bad(
                        "SALESPULSE_KAFKA_SSL_KEY_PASSWORD is set but kafka_ssl_key_location is not"
                            .into(),
                    );
                }
                if self.kafka_ssl_certificate_location.is_some()
                    != self.kafka_ssl_key_location.is_some()
                {
                    return bad(
                        "kafka_ssl_certificate_location and kafka_ssl_key_location go together"
                            .into(),
                    );
                }
            }
            other => {
                return bad(format!(
                    "kafka_security_protocol = {other:?} (plaintext or ssl)"
                ))
            }
        }
        Ok(())
    }

    /// The Kafka TLS files: setting name, librdkafka property, value.
    fn kafka_ssl_files(&self) -> [(&'static str, &'static str, &Option<PathBuf>); 3] {
        [
            (
                "kafka_ssl_ca_location",
                "ssl.ca.location",
                &self.kafka_ssl_ca_location,
            ),
            (
                "kafka_ssl_certificate_location",
                "ssl.certificate.location",
                &self.kafka_ssl_certificate_location,
            ),
            (
                "kafka_ssl_key_location",
                "ssl.key.location",
                &self.kafka_ssl_key_location,
            ),
        ]
    }

    /// The librdkafka properties for [`Config::kafka_security_protocol`] and
    /// its files, for [`crate::bus::set_security`].
    pub fn kafka_security(&self) -> Vec<(String, String)> {
        let mut props = vec![(
            "security.protocol".to_owned(),
            self.kafka_security_protocol.to_ascii_lowercase(),
        )];
        if !self.kafka_security_protocol.eq_ignore_ascii_case("ssl") {
            return props;
        }
        for (_, key, file) in self.kafka_ssl_files() {
            if let Some(f) = file {
                props.push((key.to_owned(), f.display().to_string()));
            }
        }
        if let Some(pw) = &self.kafka_ssl_key_password {
            props.push(("ssl.key.password".to_owned(), pw.clone()));
        }
        props
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
             group_id = {}\nbatch = {} records / {} ms\npg_pool_size = {}, statement timeout {} ms\nhttp_bind = {}\n\
             kafka_security_protocol = {}",
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
            self.kafka_security_protocol,
        )
    }
}

/// The per-user data directory: `$XDG_DATA_HOME/salespulse` or
/// `~/.local/share/salespulse` on Linux, `~/Library/Application Support/salespulse`
/// on macOS, `%LOCALAPPDATA%\salespulse` on Windows.
pub(crate) fn default_data_dir() -> PathBuf {
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

/// `s` with every password replaced by `***`: the one in a URL's
/// credentials (`postgres://u:***@h/db`) and any `password=` value (libpq
/// keywords, query parameters). Use it for anything printed or logged.
pub(crate) fn redact_url(s: &str) -> String {
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

/// Which partitions an ingest consumer reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assignment {
    /// Shares the topic's partitions with the other members of its consumer
    /// group; the broker's group coordinator assigns them.
    Group,
    /// Reads these partitions itself (`None`: every partition of the topic,
    /// including ones added later), without the group coordinator. Several
    /// processes may be given overlapping sets: the sink's offsets and keys
    /// keep the result exact, at the price of reading twice.
    Static(Option<Vec<i32>>),
}

impl std::str::FromStr for Assignment {
    type Err = String;

    /// `group`, `all`, or a comma-separated list of partitions (`0,2,4`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "group" => Ok(Assignment::Group),
            "all" => Ok(Assignment::Static(None)),
            list => {
                let mut parts = list
                    .split(',')
                    .map(|p| p.trim().parse::<i32>().ok().filter(|p| *p >= 0))
                    .collect::<Option<Vec<i32>>>()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| {
                        format!("{s:?}: expected group, all, or partitions such as 0,2,4")
                    })?;
                parts.sort_unstable();
                parts.dedup();
                Ok(Assignment::Static(Some(parts)))
            }
        }
    }
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
    fn kafka_tls_settings_are_checked_and_turned_into_properties() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked here").unwrap();
        let base = Config {
            kafka_brokers: Some("broker:9093".into()),
            ..Config::default()
        };
        let err = |c: Config| c.check().unwrap_err().to_string();
        // A CA without TLS, TLS with the embedded broker, a file that is not
        // there, a certificate without its key, an unknown protocol.
        assert!(err(Config {
            kafka_ssl_ca_location: Some(ca.clone()),
            ..base.clone()
        })
        .contains("plaintext"));
        assert!(err(Config {
            kafka_brokers: None,
            kafka_security_protocol: "ssl".into(),
            ..base.clone()
        })
        .contains("kafka_brokers"));
        assert!(err(Config {
            kafka_security_protocol: "SSL".into(),
            kafka_ssl_ca_location: Some(dir.path().join("missing.pem")),
            ..base.clone()
        })
        .contains("missing.pem"));
        assert!(err(Config {
            kafka_security_protocol: "ssl".into(),
            kafka_ssl_certificate_location: Some(ca.clone()),
            ..base.clone()
        })
        .contains("go together"));
        assert!(err(Config {
            kafka_security_protocol: "sasl_ssl".into(),
            ..base.clone()
        })
        .contains("plaintext or ssl"));
        let good = Config {
            kafka_security_protocol: "SSL".into(),
            kafka_ssl_ca_location: Some(ca.clone()),
            ..base.clone()
        };
        good.check().unwrap();
        assert_eq!(
            good.kafka_security(),
            [
                ("security.protocol".to_owned(), "ssl".to_owned()),
                ("ssl.ca.location".to_owned(), ca.display().to_string()),
            ]
        );
        assert_eq!(
            base.kafka_security(),
            [("security.protocol".to_owned(), "plaintext".to_owned())]
        );
        // The key password never reaches a file or the summary.
        let with_pw = Config {
            kafka_ssl_key_password: Some("hunter2".into()),
            ..good
        };
        assert!(!serde_json::to_string(&with_pw).unwrap().contains("hunter2"));
        assert!(!with_pw.summary().contains("hunter2"));
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
