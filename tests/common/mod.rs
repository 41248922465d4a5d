//! Shared helpers for the integration tests: real PostgreSQL databases (one
//! per test), the in-process mock broker, an out-of-process tansu broker, and
//! a consistency check that recomputes every derived table from raw rows.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use salespulse::bus::{EmbeddedBroker, EventProducer, ProducerConfig};
use salespulse::config::Config;
use salespulse::event::Event;
use salespulse::generator::{Clock, Generator, GeneratorParams};
use salespulse::pipeline::produce_loop;
use salespulse::store::{self, Store};
use uuid::Uuid;

/// The server tests create their databases on (`TEST_DATABASE_URL`).
pub fn pg_server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub store: Store,
}

impl TestDb {
    pub async fn new(tag: &str) -> Self {
        let name = format!(
            "sp_test_{tag}_{}",
            &Uuid::new_v4().simple().to_string()[..10]
        );
        store::create_database_if_missing(&pg_server_url(), &name)
            .await
            .expect("create test database (is PostgreSQL running? see README)");
        let url = store::with_database(&pg_server_url(), &name).unwrap();
        let store = Store::connect(&url, 8, Duration::from_secs(30))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Self { name, url, store }
    }

    pub async fn drop(self) {
        self.store.pool().close().await;
        store::drop_database(&pg_server_url(), &self.name)
            .await
            .unwrap();
    }
}

/// Config for a test: the given database and broker, small fast batches.
pub fn test_config(database_url: &str, brokers: Option<&str>) -> Config {
    Config {
        database_url: Some(database_url.to_owned()),
        kafka_brokers: brokers.map(str::to_owned),
        batch_size: 1_000,
        batch_timeout_ms: 100,
        kafka_session_timeout_ms: 3_000,
        redis_url: redis_url(),
        ..Config::default()
    }
}

/// An in-process mock broker with the config's topics created (`partitions` each).
pub fn mock_broker(db_url: &str, partitions: i32) -> (EmbeddedBroker, Config) {
    let broker = EmbeddedBroker::start(1).unwrap();
    let cfg = test_config(db_url, Some(broker.bootstrap_servers()));
    broker.create_topic(&cfg.topic, partitions).unwrap();
    broker.create_topic(&cfg.dlq_topic, partitions).unwrap();
    (broker, cfg)
}

/// Waits until ingest has stored `targets`, then stops and joins the workers.
pub async fn drain_and_stop(
    store: &Store,
    cfg: &Config,
    targets: &[(i32, i64)],
    stop: &std::sync::atomic::AtomicBool,
    workers: Vec<std::thread::JoinHandle<Result<(), salespulse::pipeline::ingest::IngestError>>>,
) {
    salespulse::pipeline::wait_for_offsets(
        store,
        &cfg.group_id,
        &cfg.topic,
        targets,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Release);
    salespulse::pipeline::join_workers(workers).await.unwrap();
}

/// `run` options for `events` seeded events on the tests' simulated clock
/// (the same events [`expected`] and [`assert_exactly`] describe).
pub fn run_options(events: u64, seed: u64) -> salespulse::services::RunOptions {
    salespulse::services::RunOptions {
        events: Some(events),
        rate: None,
        seed,
        workers: 1,
        clock: Clock::Simulated(sim_start()),
        params: GeneratorParams::builtin(),
        scenarios: Vec::new(),
        http: None,
        measure_after: std::time::Duration::ZERO,
        alerts: None,
        replay: None,
    }
}

fn sim_start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()
}

pub fn sim_generator(seed: u64) -> Generator {
    Generator::new(
        GeneratorParams::builtin(),
        seed,
        Clock::Simulated(sim_start()),
    )
    .unwrap()
}

/// What `n` events of `seed` contain.
pub struct Expected {
    pub sales: i64,
    pub sessions: i64,
    pub transaction_ids: HashSet<Uuid>,
}

pub fn expected(seed: u64, n: u64) -> Expected {
    let mut g = sim_generator(seed);
    let mut e = Expected {
        sales: 0,
        sessions: 0,
        transaction_ids: HashSet::new(),
    };
    for _ in 0..n {
        match g.next_event() {
            Event::Sale(s) => {
                e.sales += 1;
                e.transaction_ids.insert(s.transaction_id);
            }
            Event::Session(_) => e.sessions += 1,
        }
    }
    e
}

pub fn producer_config(brokers: &str) -> ProducerConfig {
    ProducerConfig {
        brokers: brokers.to_owned(),
        linger_ms: 5,
        idempotence: true,
        message_timeout_ms: 60_000,
        max_attempts: 5,
    }
}

/// Produces `n` seeded events; returns the end offsets (partition, next).
pub fn produce(brokers: &str, topic: &str, seed: u64, n: u64) -> Vec<(i32, i64)> {
    let p = EventProducer::new(&producer_config(brokers), topic).unwrap();
    let mut g = sim_generator(seed);
    produce_loop(&mut g, &p, Some(n), None, &AtomicBool::new(false), None).unwrap();
    p.stats().delivered_end_offsets()
}

/// Sum of the stored next offsets of a group and topic.
pub async fn stored_total(store: &Store, group: &str, topic: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum(next_offset)::int8 FROM ingest_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_one(store.pool())
    .await
    .unwrap()
    .unwrap_or(0)
}

pub async fn count(store: &Store, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Asserts every derived table equals the same aggregates recomputed from the
/// raw `transactions` and `sessions` rows (both directions of EXCEPT).
pub async fn assert_consistent(store: &Store) {
    let mismatches = salespulse::store::rollups::verify(store).await.unwrap();
    assert!(
        mismatches.is_empty(),
        "{}",
        mismatches
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// Asserts the database holds exactly the `n` events of `seed`, once each.
pub async fn assert_exactly(store: &Store, seed: u64, n: u64) {
    let e = expected(seed, n);
    let tx = count(store, "SELECT count(*) FROM transactions").await;
    let tx_distinct = count(
        store,
        "SELECT count(DISTINCT transaction_id) FROM transactions",
    )
    .await;
    let sessions = count(store, "SELECT count(*) FROM sessions").await;
    let sessions_distinct = count(store, "SELECT count(DISTINCT session_id) FROM sessions").await;
    assert_eq!(
        (tx, tx_distinct),
        (e.sales, e.sales),
        "transactions: count, distinct vs generated"
    );
    assert_eq!(
        (sessions, sessions_distinct),
        (e.sessions, e.sessions),
        "sessions: count, distinct vs generated"
    );
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT transaction_id FROM transactions")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let ids: HashSet<Uuid> = ids.into_iter().collect();
    assert!(
        ids == e.transaction_ids,
        "stored transaction ids differ from the generated ones"
    );
    assert_consistent(store).await;
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `f` returns true, or panics after `timeout` naming `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An out-of-process tansu broker on a free loopback port, with durable
/// SQLite storage in `dir`. Killed (SIGKILL) on drop.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin/tansu");
    if cargo_bin.is_file() {
        return cargo_bin;
    }
    PathBuf::from("tansu")
}

impl Tansu {
    pub fn start(dir: &Path) -> Self {
        let mut t = Self {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
        };
        t.restart();
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and storage.
    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(
            self.dir
                .join(format!("tansu-{}.log", Uuid::new_v4().simple())),
        )
        .unwrap();
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // tansu resolves absolute sqlite paths wrongly: run it in its
            // directory with a relative path.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu ({}): {e}. Install it with .ci/run or \
                     `cargo install tansu --locked --features dynostore,postgres,libsql`",
                    tansu_bin().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while salespulse::bus::ping(&self.brokers(), Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not come up on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes events straight into the store (no broker) as ingest would, in
/// batches of `batch`, spread over 3 partitions by customer. `offsets` keeps
/// each partition's next offset across calls.
pub async fn write_events(
    store: &Store,
    events: Vec<Event>,
    batch: usize,
    offsets: &mut std::collections::HashMap<i32, i64>,
) {
    let partition = |id: &str| {
        (id.bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 3) as i32
    };
    for chunk in events.chunks(batch.max(1)) {
        let mut b = store::Batch::default();
        for e in chunk {
            let p = partition(match e {
                Event::Sale(s) => &s.customer_id,
                Event::Session(s) => &s.customer_id,
            });
            let o = offsets.entry(p).or_insert(0);
            match e {
                Event::Sale(s) => b.sales.push((s.clone(), p, *o)),
                Event::Session(s) => b.sessions.push((s.clone(), p, *o)),
            }
            *o += 1;
        }
        b.offsets = offsets.iter().map(|(p, o)| (*p, *o)).collect();
        b.offsets.sort_unstable();
        store
            .write_batch("test-group", "test-topic", &b)
            .await
            .unwrap();
    }
}

/// A generator on the tests' simulated clock with `sessions_per_hour`.
pub fn sparse_generator(seed: u64, sessions_per_hour: f64) -> Generator {
    let params = GeneratorParams {
        sessions_per_hour,
        ..GeneratorParams::builtin()
    };
    Generator::new(params, seed, Clock::Simulated(sim_start())).unwrap()
}

/// A two-worker runtime for tests that drive async code from a plain
/// `#[test]` (the app, scripts run on blocking threads).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A redis-server of a test's own on `port`, to stop and start again there;
/// killed on drop.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
}

impl PrivateRedis {
    pub fn start(port: u16) -> Self {
        let mut r = Self { child: None, port };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup installs it)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL): clients see it vanish.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Secret Service: GNOME Keyring on a D-Bus session bus of its
/// own, its login collection created and unlocked, in a throwaway home.
/// Point this process at it with [`SecretService::use_here`].
pub struct SecretService {
    bus: Child,
    keyring: Child,
    pub address: String,
    _home: tempfile::TempDir,
}

impl SecretService {
    pub fn start() -> Self {
        use std::io::{BufRead, Write};
        let home = tempfile::tempdir().unwrap();
        let run = home.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (scripts/setup --test installs it)");
        let mut address = String::new();
        std::io::BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let address = address.trim().to_owned();
        assert!(address.starts_with("unix:"), "bus address {address:?}");
        let mut keyring = Command::new("gnome-keyring-daemon")
            .args(["--unlock", "--components=secrets", "--foreground"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", &run)
            .env("XDG_DATA_HOME", home.path().join("data"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon (scripts/setup --test installs it)");
        // The login collection's password, then EOF.
        keyring
            .stdin
            .take()
            .unwrap()
            .write_all(b"test-keyring-password")
            .unwrap();
        let s = Self {
            bus,
            keyring,
            address,
            _home: home,
        };
        // Up when the service owns its name and the default collection answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if s.python("col = secretstorage.get_default_collection(c); print(col.is_locked())")
                .is_ok_and(|out| out.trim() == "False")
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the Secret Service did not come up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Makes this process's keyring clients use this service. Call before
    /// anything opens the OS keyring (it is set up once per process).
    pub fn use_here(&self) {
        std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &self.address);
    }

    /// Runs Python code with `secretstorage` imported and `c` a connection
    /// to this bus (an independent client of the service).
    pub fn python(&self, code: &str) -> Result<String, String> {
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import secretstorage\nc = secretstorage.dbus_init()\n{code}"
            ))
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The secrets stored for `service`: (username attribute, secret) pairs.
    pub fn items(&self, service: &str) -> Vec<(String, String)> {
        let out = self
            .python(&format!(
                "import json\ncol = secretstorage.get_default_collection(c)\n\
                 print(json.dumps([[i.get_attributes().get('username', ''), \
                 i.get_secret().decode()] for i in col.search_items({{'service': {service:?}}})]))"
            ))
            .unwrap();
        serde_json::from_str::<Vec<(String, String)>>(out.trim()).unwrap()
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        for c in [&mut self.keyring, &mut self.bus] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
