//! Dependency checks, shared by `salespulse doctor` and `GET /health`.

use std::time::Duration;

use serde::Serialize;

use crate::bus;
use crate::config::{redact_url, Config};
use crate::store::{self, find_pg_bin_dir, EmbeddedPostgres};

const TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of checking one service.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Check {
    /// The service: `kafka`, `postgres` or `redis`.
    pub name: &'static str,
    /// Whether the service answered.
    pub ok: bool,
    /// What was checked and what was found.
    pub detail: String,
    /// The error text, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How to fix it, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: String) -> Self {
        Self {
            name,
            ok: true,
            detail,
            error: None,
            hint: None,
        }
    }

    fn fail(name: &'static str, detail: String, error: String, hint: &str) -> Self {
        Self {
            name,
            ok: false,
            detail,
            error: Some(error),
            hint: Some(hint.to_owned()),
        }
    }
}

/// Asks `brokers` for metadata (3 s timeout) and reports how many
/// brokers there are.
pub(crate) async fn check_kafka(brokers: &str) -> Check {
    let b = brokers.to_owned();
    let r = tokio::task::spawn_blocking(move || bus::ping(&b, TIMEOUT)).await;
    match r {
        Ok(Ok(n)) => Check::pass("kafka", format!("{brokers}: {n} broker(s)")),
        Ok(Err(e)) => Check::fail(
            "kafka",
            brokers.to_owned(),
            e.to_string(),
            "start a broker (docker compose up -d kafka, or `salespulse broker`) or unset KAFKA_BROKERS to use the embedded one",
        ),
        Err(e) => Check::fail("kafka", brokers.to_owned(), e.to_string(), "internal error"),
    }
}

/// Connects to `url` and reads the server version, within 3 s; the URL
/// is shown redacted.
pub(crate) async fn check_postgres(url: &str) -> Check {
    let shown = redact_url(url);
    let attempt = async {
        let opts = store::connect_options(url, TIMEOUT)?;
        let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
        let v: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await?;
        Ok::<_, store::StoreError>(v)
    };
    match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(Ok(v)) => Check::pass("postgres", format!("{shown}: PostgreSQL {v}")),
        Ok(Err(e)) => Check::fail(
            "postgres",
            shown,
            e.to_string(),
            "start PostgreSQL (pg_ctlcluster <version> main start) or unset DATABASE_URL to use the embedded cluster",
        ),
        Err(_) => Check::fail("postgres", shown, format!("no answer within {TIMEOUT:?}"), "is the host reachable?"),
    }
}

/// Connects to `url` and sends `PING`, within 3 s; the URL is shown
/// redacted.
pub async fn check_redis(url: &str) -> Check {
    let shown = redact_url(url);
    let attempt = async {
        let client = crate::cache::redis_client(url)?;
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    };
    match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(Ok(pong)) => Check::pass("redis", format!("{shown}: {pong}")),
        Ok(Err(e)) => Check::fail(
            "redis",
            shown,
            e.to_string(),
            "start Redis (redis-server --daemonize yes) or set REDIS_URL",
        ),
        Err(_) => Check::fail(
            "redis",
            shown,
            format!("no answer within {TIMEOUT:?}"),
            "is the host reachable?",
        ),
    }
}

/// Every check `salespulse doctor` runs. Starts the embedded PostgreSQL when
/// no `DATABASE_URL` is set, since that is what `run` would do.
pub async fn diagnose(cfg: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(match &cfg.kafka_brokers {
        Some(b) => check_kafka(b).await,
        None => match bus::EmbeddedBroker::start(1) {
            Ok(b) => {
                let mut c = check_kafka(b.bootstrap_servers()).await;
                c.detail = format!("embedded mock cluster (KAFKA_BROKERS unset): {}", c.detail);
                c
            }
            Err(e) => Check::fail(
                "kafka",
                "embedded mock cluster".into(),
                e.to_string(),
                "librdkafka mock cluster failed to start",
            ),
        },
    });
    checks.push(match &cfg.database_url {
        Some(u) => check_postgres(u).await,
        None => match EmbeddedPostgres::ensure(cfg.data_dir.as_deref(), cfg.embedded_pg_port).await {
            Ok(pg) => {
                let mut c = check_postgres(&pg.url).await;
                c.detail = format!(
                    "embedded cluster in {} (DATABASE_URL unset; stop it with pg_ctl stop -D that directory): {}",
                    pg.data_dir.display(),
                    c.detail
                );
                c
            }
            Err(e) => Check::fail(
                "postgres",
                format!(
                    "embedded cluster (DATABASE_URL unset); server programs: {}",
                    find_pg_bin_dir().map_or("not found".into(), |p| p.display().to_string())
                ),
                e.to_string(),
                "install PostgreSQL (apt-get install postgresql / brew install postgresql@16 / EDB installer) or set DATABASE_URL",
            ),
        },
    });
    checks.push(check_redis(&cfg.redis_url).await);
    checks
}

/// Renders checks for a terminal.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = if c.ok { "ok  " } else { "FAIL" };
        out.push_str(&format!("[{mark}] {:<9} {}\n", c.name, c.detail));
        if let Some(e) = &c.error {
            out.push_str(&format!("           error: {e}\n"));
        }
        if let Some(h) = &c.hint {
            out.push_str(&format!("           fix:   {h}\n"));
        }
    }
    out
}
