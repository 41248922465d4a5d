//! `salespulse bench readers`: many dashboard clients over HTTP while ingest
//! runs.
//!
//! On a copy of the analytics bench database (10 M transactions by default,
//! loaded once by [`super::analytics`] and reused; copied with `CREATE
//! DATABASE … TEMPLATE`, dropped afterwards) the headless pipeline runs at a
//! set rate on the wall clock (generator → broker → one ingest worker → the
//! copy) with the HTTP API, and N clients each keep a dashboard open: every
//! interval they ask for the dashboard's five views (concurrently, as the
//! app does) under their current filters, sending the `ETag` they hold, and
//! every few refreshes they change filters (ranges over the live data, over
//! the loaded history and over everything; some with a category or region).
//!
//! Reported: latency by how the server answered (from Redis, not
//! modified, joined another's computation, computed), requests per second, errors, and per distinct frame (its
//! `ETag`) how many computations it took: single flight means one. Then the
//! ingest side of the same run: event → commit latency after the warm-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::analytics::{prepare, AnalyticsBenchOptions};
use crate::config::Config;
use crate::generator::{Clock, GeneratorParams};
use crate::pipeline::latency::{LatencyHistogram, LatencySummary};
use crate::services::{self, RunOptions};
use crate::store;

/// What `bench readers` runs.
#[derive(Clone, Debug)]
pub struct ReadersBenchOptions {
    /// Concurrent dashboard clients.
    pub clients: usize,
    /// Seconds the clients run (after the warm-up).
    pub secs: u64,
    /// Seconds of ingest before the clients start.
    pub warmup: u64,
    /// Events per second ingested meanwhile.
    pub rate: f64,
    /// Each client's refresh interval, ms (0: as fast as answers come).
    pub interval_ms: u64,
    /// Refreshes before a client changes its filters.
    pub refreshes_per_filter: u32,
    /// The history the dashboards read (the analytics bench's data).
    pub data: AnalyticsBenchOptions,
}

/// Latency of one kind of answer.
#[derive(Clone, Debug, Serialize)]
pub struct AnswerLatency {
    /// `cached` (`hit` and `not-modified` together), `hit` (from Redis),
    /// `not-modified` (304: the client held it), `joined` (waited for
    /// another request's computation), `computed`.
    pub answer: String,
    /// Their latency, as the client saw it.
    pub latency: LatencySummary,
}

/// What `bench readers` measured.
#[derive(Clone, Debug, Serialize)]
pub struct ReadersBenchReport {
    /// Transactions in the history.
    pub transactions: u64,
    /// Clients.
    pub clients: usize,
    /// Refresh interval, ms.
    pub interval_ms: u64,
    /// The server's `api_refresh_ms`: how often it read the data versions.
    pub api_refresh_ms: u64,
    /// Seconds the clients ran.
    pub secs: u64,
    /// Requests answered, all kinds.
    pub requests: u64,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Answers other than 200 and 304 (and failed connections).
    pub errors: u64,
    /// The first error, verbatim.
    pub first_error: Option<String>,
    /// Latency by kind of answer; `cached` = hits and 304s together.
    pub by_answer: Vec<AnswerLatency>,
    /// Distinct frames (ETags) answered.
    pub frames: u64,
    /// Computations (misses) over all frames.
    pub computations: u64,
    /// The most computations any one frame took (1 = single flight held).
    pub max_computations_per_frame: u64,
    /// Events per second ingested (asked).
    pub ingest_rate: f64,
    /// Events per second ingested, start-up to last commit.
    pub ingest_achieved: f64,
    /// Event → commit after the warm-up, while the clients ran.
    pub ingest_commit: LatencySummary,
}

impl std::fmt::Display for ReadersBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} dashboard clients over HTTP, {} transactions of history, refresh every {} ms, {} s",
            self.clients, self.transactions, self.interval_ms, self.secs
        )?;
        writeln!(
            f,
            "server            reads the data versions at most every {} ms (api_refresh_ms)",
            self.api_refresh_ms
        )?;
        writeln!(
            f,
            "requests          {} ({:.0}/s), errors {}",
            self.requests, self.requests_per_sec, self.errors
        )?;
        if let Some(e) = &self.first_error {
            writeln!(f, "first error       {e}")?;
        }
        writeln!(
            f,
            "{:>14} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "answer", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"
        )?;
        for a in &self.by_answer {
            let l = &a.latency;
            writeln!(
                f,
                "{:>14} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                a.answer, l.count, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
            )?;
        }
        writeln!(
            f,
            "single flight     {} distinct frames, {} computations, at most {} per frame",
            self.frames, self.computations, self.max_computations_per_frame
        )?;
        let c = &self.ingest_commit;
        write!(
            f,
            "ingest meanwhile  {:.0} events/s asked, {:.0} achieved; event → commit p50 {:.1} \
             p95 {:.1} p99 {:.1} max {:.1} ms ({} events)",
            self.ingest_rate, self.ingest_achieved, c.p50_ms, c.p95_ms, c.p99_ms, c.max_ms, c.count
        )
    }
}

/// The dashboard's views (as the app's dashboard asks for them).
const VIEWS: [&str; 5] = [
    "kpis",
    "revenue_trend",
    "category_performance",
    "payment_mix",
    "status_breakdown",
];

/// Runs the bench on a copy of the analytics bench database.
pub async fn run(cfg: &Config, opts: &ReadersBenchOptions) -> anyhow::Result<ReadersBenchReport> {
    anyhow::ensure!(opts.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(opts.secs >= 1, "--secs must be at least 1");
    anyhow::ensure!(
        opts.rate.is_finite() && opts.rate >= 1.0,
        "--rate: at least 1 event per second"
    );
    let data = prepare(cfg, &opts.data).await?;
    data.store.pool().close().await;
    let tag = format!("{}_{}", std::process::id(), chrono::Utc::now().timestamp());
    let db = format!("salespulse_readers_{tag}");
    eprintln!("copying database {} to {db} ...", data.database);
    copy_database(&data.base_url, &data.database, &db).await?;
    let mut run_cfg = cfg.clone();
    run_cfg.database_url = Some(store::with_database(&data.base_url, &db)?);
    run_cfg.topic = format!("bench-readers-{tag}");
    run_cfg.dlq_topic = format!("bench-readers-dlq-{tag}");
    run_cfg.group_id = format!("bench-readers-{tag}");
    if run_cfg.cache_ttl_secs == 0 {
        run_cfg.cache_ttl_secs = 3_600;
    }
    let result = run_on(&run_cfg, opts).await;
    if let Err(e) = store::drop_database(&data.base_url, &db).await {
        tracing::warn!(error = %e, "could not drop bench database {db}");
    }
    result
}

/// `CREATE DATABASE to TEMPLATE from` (the source must have no sessions).
async fn copy_database(base_url: &str, from: &str, to: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut conn = sqlx::PgConnection::connect(base_url).await?;
    let sql = format!("CREATE DATABASE {} TEMPLATE {}", quote(to), quote(from));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .with_context(|| format!("copying database {from} (is another session using it?)"))?;
    conn.close().await?;
    Ok(())
}

async fn run_on(cfg: &Config, opts: &ReadersBenchOptions) -> anyhow::Result<ReadersBenchReport> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("a free port")?;
        l.local_addr()?.port()
    };
    let bind = format!("127.0.0.1:{port}");
    let total = opts.warmup + opts.secs;
    let events = (opts.rate * total as f64).ceil() as u64;
    let run_cfg = cfg.clone();
    let http = bind.clone();
    let (rate, warmup) = (opts.rate, opts.warmup);
    let pipeline = tokio::spawn(async move {
        services::run(
            &run_cfg,
            RunOptions {
                events: Some(events),
                rate: Some(rate),
                seed: 7,
                workers: 1,
                clock: Clock::Wall,
                params: GeneratorParams::builtin(),
                scenarios: Vec::new(),
                http: Some(http),
                measure_after: Duration::from_secs(warmup),
                alerts: None,
                replay: None,
            },
        )
        .await
    });
    let token = crate::api::token_from_env();
    // The server is up once it answers; then the warm-up runs.
    let up_by = Instant::now() + Duration::from_secs(120);
    loop {
        if pipeline.is_finished() {
            break;
        }
        if let Ok(mut c) = Client::connect(&bind, token.clone()).await {
            if c.get("/health", None).await.is_ok() {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < up_by,
            "the HTTP API did not answer within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "ingesting {:.0} events/s; {} clients start in {} s ...",
        opts.rate, opts.clients, opts.warmup
    );
    tokio::time::sleep(Duration::from_secs(opts.warmup)).await;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(opts.secs);
    let params = GeneratorParams::builtin();
    let filters = Arc::new(filter_mix(&params));
    let mut clients = Vec::new();
    for i in 0..opts.clients {
        let (bind, token, tally, filters) = (
            bind.clone(),
            token.clone(),
            Arc::clone(&tally),
            Arc::clone(&filters),
        );
        let (interval, per_filter) = (
            Duration::from_millis(opts.interval_ms),
            opts.refreshes_per_filter.max(1),
        );
        clients.push(tokio::spawn(async move {
            dashboard_client(
                i, &bind, token, &filters, interval, per_filter, until, &tally,
            )
            .await;
        }));
    }
    for c in clients {
        c.await.context("a client task")?;
    }
    let ran = started.elapsed().as_secs_f64();
    let report = pipeline
        .await
        .context("the pipeline task")?
        .context("the pipeline")?;
    tally.report(opts, cfg.api_refresh_ms, ran, &report)
}

/// The filters clients pick from (query strings, without the view): ranges
/// over the live data, over the loaded history (fixed dates) and over
/// everything, some with one dimension.
fn filter_mix(params: &GeneratorParams) -> Vec<String> {
    let mut out: Vec<String> = [
        "last=1h",
        "last=24h",
        "last=7d",
        "",
        "from=2026-02-01T00:00:00Z&to=2026-02-08T00:00:00Z",
        "from=2026-03-10T00:00:00Z&to=2026-03-11T00:00:00Z",
        "from=2026-01-05T00:00:00Z&to=2026-04-01T00:00:00Z",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    if let Some(c) = params.categories.first() {
        out.push(format!("last=24h&category={}", enc(&c.name)));
        out.push(format!(
            "from=2026-02-01T00:00:00Z&to=2026-02-08T00:00:00Z&category={}",
            enc(&c.name)
        ));
    }
    if let Some(r) = params.regions.first() {
        out.push(format!("region={}", enc(&r.name)));
        out.push(format!(
            "from=2026-03-01T00:00:00Z&to=2026-04-01T00:00:00Z&region={}",
            enc(&r.name)
        ));
    }
    out
}

/// What every client saw.
#[derive(Default)]
struct Tally {
    inner: std::sync::Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    hit: Vec<u64>,
    joined: Vec<u64>,
    miss: Vec<u64>,
    not_modified: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// Computations per ETag (0 when only ever served from the cache).
    frames: HashMap<String, u64>,
}

impl Tally {
    fn record(&self, answer: Result<Answer, String>, us: u64) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Ok(a) => {
                let computed = a.cache == "miss" || a.cache == "bypass";
                let n = t.frames.entry(a.etag).or_default();
                if computed {
                    *n += 1;
                }
                if a.status == 304 {
                    t.not_modified.push(us);
                } else if computed {
                    t.miss.push(us);
                } else if a.cache == "joined" {
                    t.joined.push(us);
                } else {
                    t.hit.push(us);
                }
            }
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert(e);
            }
        }
    }

    fn report(
        &self,
        opts: &ReadersBenchOptions,
        api_refresh_ms: u64,
        ran: f64,
        run: &services::RunReport,
    ) -> anyhow::Result<ReadersBenchReport> {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let summary = |v: &[&[u64]]| {
            let h = LatencyHistogram::default();
            for us in v.iter().flat_map(|x| x.iter()) {
                h.record_us(*us);
            }
            h.summary()
        };
        let requests =
            (t.hit.len() + t.joined.len() + t.miss.len() + t.not_modified.len()) as u64 + t.errors;
        let by_answer = vec![
            AnswerLatency {
                answer: "cached".into(),
                latency: summary(&[&t.hit, &t.not_modified]),
            },
            AnswerLatency {
                answer: "hit".into(),
                latency: summary(&[&t.hit]),
            },
            AnswerLatency {
                answer: "not-modified".into(),
                latency: summary(&[&t.not_modified]),
            },
            AnswerLatency {
                answer: "joined".into(),
                latency: summary(&[&t.joined]),
            },
            AnswerLatency {
                answer: "computed".into(),
                latency: summary(&[&t.miss]),
            },
        ];
        Ok(ReadersBenchReport {
            transactions: opts.data.transactions,
            clients: opts.clients,
            interval_ms: opts.interval_ms,
            api_refresh_ms,
            secs: opts.secs,
            requests,
            requests_per_sec: requests as f64 / ran.max(1e-9),
            errors: t.errors,
            first_error: t.first_error.clone(),
            by_answer,
            frames: t.frames.len() as u64,
            computations: t.frames.values().sum(),
            max_computations_per_frame: t.frames.values().copied().max().unwrap_or(0),
            ingest_rate: opts.rate,
            ingest_achieved: run.events_per_sec(),
            ingest_commit: run.latency.unwrap_or_default(),
        })
    }
}

/// One dashboard: refreshes its five views every `interval`, changing its
/// filters every `per_filter` refreshes, until `until`.
#[expect(
    clippy::too_many_arguments,
    reason = "one client's whole setup, spawned once"
)]
async fn dashboard_client(
    id: usize,
    bind: &str,
    token: Option<String>,
    filters: &[String],
    interval: Duration,
    per_filter: u32,
    until: Instant,
    tally: &Tally,
) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(id as u64);
    // One connection per view, kept alive, as a browser's would be.
    let mut conns: Vec<Option<Client>> = VIEWS.iter().map(|_| None).collect();
    let mut etags: HashMap<String, String> = HashMap::new();
    let mut filter = String::new();
    let mut refresh = 0u32;
    while Instant::now() < until {
        if refresh.is_multiple_of(per_filter) {
            filter = filters
                .get(rng.random_range(0..filters.len().max(1)))
                .cloned()
                .unwrap_or_default();
        }
        refresh += 1;
        let began = Instant::now();
        let asks = conns.iter_mut().zip(VIEWS).map(|(conn, view)| {
            let path = if filter.is_empty() {
                format!("/view/{view}")
            } else {
                format!("/view/{view}?{filter}")
            };
            let held = etags.get(&path).cloned();
            let token = token.clone();
            async move {
                let t = Instant::now();
                let answer = ask(conn, bind, token, &path, held.as_deref()).await;
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                (path, answer, us)
            }
        });
        for (path, answer, us) in futures::future::join_all(asks).await {
            if let Ok(a) = &answer {
                etags.insert(path, a.etag.clone());
            }
            tally.record(answer, us);
        }
        let next = began + interval;
        if next > Instant::now() {
            tokio::time::sleep_until(next.into()).await;
        }
    }
}

/// One request on a kept-alive connection (opened again after a failure).
async fn ask(
    conn: &mut Option<Client>,
    bind: &str,
    token: Option<String>,
    path: &str,
    etag: Option<&str>,
) -> Result<Answer, String> {
    if conn.is_none() {
        *conn = Some(
            Client::connect(bind, token)
                .await
                .map_err(|e| format!("connecting: {e}"))?,
        );
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    match c.get(path, etag).await {
        Ok(a) if a.status == 200 || a.status == 304 => Ok(a),
        Ok(a) => Err(format!("{path}: HTTP {} {}", a.status, a.body)),
        Err(e) => {
            *conn = None;
            Err(format!("{path}: {e}"))
        }
    }
}

/// An answer of the API.
struct Answer {
    status: u16,
    etag: String,
    cache: String,
    body: String,
}

/// A minimal HTTP/1.1 client on one kept-alive connection (the bench's
/// only HTTP need; the server is ours and always sends Content-Length).
struct Client {
    stream: BufReader<TcpStream>,
    token: Option<String>,
}

impl Client {
    async fn connect(bind: &str, token: Option<String>) -> std::io::Result<Self> {
        let s = TcpStream::connect(bind).await?;
        s.set_nodelay(true)?;
        Ok(Client {
            stream: BufReader::new(s),
            token,
        })
    }

    async fn get(&mut self, path: &str, etag: Option<&str>) -> std::io::Result<Answer> {
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(e) = etag {
            req.push_str(&format!("If-None-Match: {e}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let (mut length, mut etag, mut cache) = (0usize, String::new(), String::new());
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(bad("connection closed in the headers".into()));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => {
                        length = value
                            .parse()
                            .map_err(|_| bad(format!("bad content-length {value:?}")))?;
                    }
                    "etag" => etag = value.to_owned(),
                    "x-salespulse-cache" => cache = value.to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok(Answer {
            status,
            etag,
            cache,
            body: if status >= 400 {
                String::from_utf8_lossy(&body).into_owned()
            } else {
                String::new()
            },
        })
    }
}
