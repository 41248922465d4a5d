//! TLS to every service, each a real server with a certificate of a private
//! CA made here: PostgreSQL (sqlx with rustls, `sslmode=verify-full`),
//! Redis (`rediss://` with `sslrootcert`) and Kafka (librdkafka with
//! OpenSSL, `security.protocol=ssl`, in front of tansu). Each is also tried
//! with a CA that did not sign the server's certificate, and refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, tansu_bin};
use polars::prelude::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use salespulse::cache::{FlightLost, FrameCache, Outcome};
use salespulse::store::{EmbeddedPostgres, Store};

/// A private CA, a server certificate it signed (for `127.0.0.1` and
/// `localhost`), and a second CA that signed nothing here.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A certificate of our CA for `wrong.example`, and its key.
    wrong_cert: PathBuf,
    wrong_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn self_signed(dir: &Path, key: &str, cert: &str, cn: &str) {
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", key, "-out",
            cert, "-subj", &subject,
        ],
    );
}

/// `<name>.key` and `<name>.pem`: a server certificate for `san` signed by
/// the CA in `ca.pem`/`ca.key`.
fn signed(dir: &Path, name: &str, cn: &str, san: &str) {
    let (key, csr, ext, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
    );
    let subject = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
            &subject,
        ],
    );
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
}

/// A redis-server speaking TLS only, on `port`, with `cert`/`key`, and
/// `requirepass` when a password is given; killed on drop.
fn tls_redis(port: u16, cert: &Path, key: &Path, ca: &Path, password: Option<&str>) -> Killed {
    let mut c = Command::new("redis-server");
    c.args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--tls-cert-file")
        .arg(cert)
        .arg("--tls-key-file")
        .arg(key)
        .arg("--tls-ca-cert-file")
        .arg(ca)
        .args(["--tls-auth-clients", "no"])
        .stdout(Stdio::null());
    if let Some(pw) = password {
        c.args(["--requirepass", pw]);
    }
    let server = Killed(c.spawn().expect("redis-server (scripts/setup installs it)"));
    wait_for_port(port, "redis-server with TLS");
    server
}

fn make_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    self_signed(dir, "ca.key", "ca.pem", "salespulse test CA");
    self_signed(dir, "other.key", "other.pem", "someone else's CA");
    signed(dir, "server", "localhost", "IP:127.0.0.1,DNS:localhost");
    // Signed by our CA, but for another host.
    signed(dir, "wrong", "wrong.example", "DNS:wrong.example");
    Pki {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        wrong_cert: dir.join("wrong.pem"),
        wrong_key: dir.join("wrong.key"),
    }
}

/// A folder another local user (the cluster's `postgres`, when we are
/// root) can traverse.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// Kills the child on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, what: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "{what} did not come up on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_checks_the_server_certificate() {
    let dir = open_tempdir();
    let pki = make_pki(&dir.path().join("pki"));
    let pg = EmbeddedPostgres::ensure(Some(dir.path()), free_port())
        .await
        .unwrap();
    let _stop = StopPg(pg.clone());
    let password = url::Url::parse(&pg.url)
        .unwrap()
        .password()
        .unwrap()
        .to_owned();
    // The server's certificate and key go into its data folder, owned by
    // the user the cluster runs as (the key readable by it only).
    for (from, to) in [(&pki.cert, "server.pem"), (&pki.key, "server.key")] {
        let dest = pg.data_dir.join(to);
        std::fs::copy(from, &dest).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let owner = std::fs::metadata(&pg.data_dir).unwrap();
            std::os::unix::fs::chown(&dest, Some(owner.uid()), Some(owner.gid())).unwrap();
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    {
        let admin = Store::connect(&pg.url, 1, Duration::from_secs(10))
            .await
            .unwrap();
        for sql in [
            "ALTER SYSTEM SET ssl_cert_file = 'server.pem'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
            "ALTER SYSTEM SET ssl = on",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(admin.pool())
                .await
                .unwrap();
        }
        admin.pool().close().await;
    }
    let sep = if pg.url.contains('?') { '&' } else { '?' };
    let verified = format!(
        "{}{sep}sslmode=verify-full&sslrootcert={}",
        pg.url,
        pki.ca.display()
    );
    // The reload is asynchronous: the first TLS connection may come early.
    let until = Instant::now() + Duration::from_secs(20);
    let store = loop {
        match Store::connect(&verified, 2, Duration::from_secs(10)).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < until => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("TLS to PostgreSQL failed: {e}"),
        }
    };
    store.migrate().await.unwrap();
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(ssl, "the connection is not encrypted");
    assert!(
        version.as_deref().unwrap_or("").starts_with("TLS"),
        "{version:?}"
    );
    store.pool().close().await;

    // A certificate that the given CA did not sign is refused, and says why.
    let wrong = format!(
        "{}{sep}sslmode=verify-full&sslrootcert={}",
        pg.url,
        pki.other_ca.display()
    );
    let err = Store::connect(&wrong, 1, Duration::from_secs(10))
        .await
        .expect_err("a server certificate of another CA was accepted")
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains(&password), "the password leaked: {err}");
}

/// Stops the cluster however the test ends.
struct StopPg(EmbeddedPostgres);

impl Drop for StopPg {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

#[derive(Clone, Debug)]
struct Failed;

impl From<FlightLost> for Failed {
    fn from(_: FlightLost) -> Self {
        Failed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca_and_a_password() {
    let dir = open_tempdir();
    let pki = make_pki(&dir.path().join("pki"));
    let port = free_port();
    let server = tls_redis(port, &pki.cert, &pki.key, &pki.ca, Some("s3cret/?#"));
    let url = format!(
        "rediss://:s3cret%2F%3F%23@127.0.0.1:{port}/0?sslrootcert={}",
        pki.ca.display()
    );
    let check = salespulse::pipeline::doctor::check_redis(&url).await;
    assert!(check.ok, "{check:?}");

    // The cache over it: computed and stored once, then served from Redis.
    let cache =
        Arc::new(FrameCache::new_in(&url, Duration::from_secs(60), Some(dir.path())).unwrap());
    let frame = df!("x" => [1i64, 2, 3]).unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let f = frame.clone();
        let (got, outcome) = cache
            .get_or_compute("tls", "salespulse:frame:tls:k", move || async move {
                Ok::<_, Failed>(f)
            })
            .await
            .unwrap();
        assert!(got.equals(&frame));
        outcomes.push(outcome);
    }
    assert_eq!(
        outcomes,
        [Outcome::Miss, Outcome::Hit],
        "{:?}",
        cache.status()
    );

    // Another CA, no CA (the system's roots do not know ours), and
    // plaintext against the TLS port: each refused with a clear error.
    for (bad, expect) in [
        (
            format!(
                "rediss://:s3cret%2F%3F%23@127.0.0.1:{port}/0?sslrootcert={}",
                pki.other_ca.display()
            ),
            "certificate",
        ),
        (
            format!("rediss://:s3cret%2F%3F%23@127.0.0.1:{port}/0"),
            "certificate",
        ),
        (format!("redis://:s3cret%2F%3F%23@127.0.0.1:{port}/0"), ""),
    ] {
        let check = salespulse::pipeline::doctor::check_redis(&bad).await;
        assert!(!check.ok, "{bad} was let in");
        let error = check.error.unwrap_or_default();
        assert!(error.to_lowercase().contains(expect), "{bad}: {error}");
        assert!(!error.contains("s3cret"), "the password leaked: {error}");
    }
    // A certificate of our CA, but for another host name.
    let wrong_port = free_port();
    let _wrong = tls_redis(wrong_port, &pki.wrong_cert, &pki.wrong_key, &pki.ca, None);
    let check = salespulse::pipeline::doctor::check_redis(&format!(
        "rediss://127.0.0.1:{wrong_port}/0?sslrootcert={}",
        pki.ca.display()
    ))
    .await;
    assert!(!check.ok, "a certificate for another host was accepted");
    let error = check.error.unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "{error}");

    // sslrootcert needs TLS.
    let err = salespulse::cache::redis_client(&format!(
        "redis://127.0.0.1:{port}/0?sslrootcert={}",
        pki.ca.display()
    ))
    .expect_err("sslrootcert on a plaintext URL was accepted");
    assert!(err.to_string().contains("rediss://"), "{err}");
    drop(server);
}

#[test]
fn kafka_over_tls_in_front_of_tansu() {
    let dir = open_tempdir();
    let pki = make_pki(&dir.path().join("pki"));
    // tansu speaks plaintext on `inner` and advertises `outer`, where socat
    // terminates TLS with our certificate: every connection a client makes
    // after bootstrap goes over TLS too.
    let (inner, outer) = (free_port(), free_port());
    let inner_url = format!("tcp://127.0.0.1:{inner}");
    let outer_url = format!("tcp://127.0.0.1:{outer}");
    let _tansu = Killed(
        Command::new(tansu_bin())
            .args(["broker", "--listener-url", &inner_url])
            .args(["--advertised-listener-url", &outer_url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu (scripts/setup installs it)"),
    );
    let listen = format!(
        "OPENSSL-LISTEN:{outer},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
        pki.cert.display(),
        pki.key.display()
    );
    let _front = Killed(
        Command::new("socat")
            .arg(listen)
            .arg(format!("TCP:127.0.0.1:{inner}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (scripts/setup --test installs it)"),
    );
    wait_for_port(inner, "tansu");
    wait_for_port(outer, "socat");
    let brokers = format!("127.0.0.1:{outer}");
    let tls = |ca: &Path| {
        let cfg = salespulse::config::Config {
            kafka_brokers: Some(brokers.clone()),
            kafka_security_protocol: "ssl".into(),
            kafka_ssl_ca_location: Some(ca.to_owned()),
            ..salespulse::config::Config::default()
        };
        cfg.check().unwrap();
        salespulse::bus::set_security(cfg.kafka_security());
    };

    tls(&pki.ca);
    let until = Instant::now() + Duration::from_secs(30);
    while let Err(e) = salespulse::bus::ping(&brokers, Duration::from_secs(3)) {
        assert!(Instant::now() < until, "TLS to the broker failed: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let topic = "tls-events";
    let rt = common::runtime();
    rt.block_on(salespulse::bus::ensure_topics(&brokers, &[(topic, 1)], 1))
        .unwrap();
    let ends = common::produce(&brokers, topic, 7, 500);
    assert_eq!(ends, [(0, 500)]);
    // Read back over TLS.
    let consumer: BaseConsumer = salespulse::bus::base_config(&brokers)
        .set("group.id", "tls-check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut read = 0;
    let until = Instant::now() + Duration::from_secs(60);
    while read < 500 && Instant::now() < until {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            m.unwrap();
            read += 1;
        }
    }
    assert_eq!(read, 500);
    drop(consumer);

    // With the broker known to answer over TLS: plaintext against the TLS
    // port does not get through, nor TLS with a CA that did not sign the
    // broker's certificate.
    salespulse::bus::set_security(Vec::new());
    assert!(salespulse::bus::ping(&brokers, Duration::from_secs(3)).is_err());
    tls(&pki.other_ca);
    assert!(salespulse::bus::ping(&brokers, Duration::from_secs(3)).is_err());
    tls(&pki.ca);
    assert!(salespulse::bus::ping(&brokers, Duration::from_secs(5)).is_ok());
    salespulse::bus::set_security(Vec::new());
}
