//! Alert rules evaluated by the engine against a real PostgreSQL, with a
//! driven clock: pending → firing after `for`, repeat, silence, restart
//! without a second announcement, resolve, no data and a broken metric;
//! notifications POSTed to a local webhook receiver; the history kept.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use salespulse::alerts::{self, history, rule, Engine, Notifier, Reason, State};
use salespulse::analytics::{Analytics, LoadMode};
use salespulse::cache::FrameCache;

use common::*;

fn rules() -> Vec<alerts::Rule> {
    let orders = r#"#{
        alert: "Orders",
        description: "rows stored",
        severity: "warning",
        every: "60s",
        pending: "120s",
        repeat: "300s",
        no_data: "ok",
        format: "count",
        metric: "transactions(#{ last: \"all\" }).height",
        condition: #{ above: 100 },
    }"#;
    let broken = r#"#{
        alert: "Broken",
        every: "60s",
        metric: "let x = ;",
        condition: #{ above: 1 },
    }"#;
    let empty = r#"#{
        alert: "Empty",
        every: "60s",
        metric: "NO_DATA",
        condition: #{ above: 1 },
    }"#;
    [
        ("orders.rhai", orders),
        ("broken.rhai", broken),
        ("empty.rhai", empty),
    ]
    .iter()
    .map(|(f, s)| rule::from_source(f, s).unwrap())
    .collect()
}

/// A local receiver of webhook POSTs: its URL and what it got.
async fn receiver() -> (url::Url, Arc<Mutex<Vec<serde_json::Value>>>) {
    let (addr, got) = slow_receiver(Duration::ZERO).await;
    (format!("http://{addr}/hook").parse().unwrap(), got)
}

/// A webhook receiver on `/hook` that answers OK after `delay`, keeping
/// what it was sent.
async fn slow_receiver(
    delay: Duration,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let g = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let g = Arc::clone(&g);
            async move {
                tokio::time::sleep(delay).await;
                g.lock().unwrap().push(v);
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, got)
}

async fn settle() {
    // Webhook deliveries run in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[test]
fn rules_step_through_their_states_notify_a_webhook_and_keep_their_history() {
    let rt = runtime();
    rt.block_on(async {
        let db = TestDb::new("alerts_engine").await;
        let analytics = Analytics::new(
            db.store.pool().clone(),
            Arc::new(FrameCache::disabled()),
            LoadMode::Rows,
        );
        let (url, got) = receiver().await;
        let notifier = Notifier::new(None, Some(url.clone()), false).unwrap();
        let t0 = Utc::now();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let mut engine = Engine::new(analytics.clone(), rules(), notifier, None, t0)
            .await
            .unwrap();
        let reasons = |made: &[(alerts::Notification, bool)]| {
            made.iter()
                .map(|(n, silenced)| (n.rule.clone(), n.reason, *silenced))
                .collect::<Vec<_>>()
        };

        // Nothing stored: Orders normal; the broken metric is an error and
        // the empty one has no data, each said once.
        let made = engine.tick(at(0)).await;
        let mut r = reasons(&made);
        r.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            r,
            vec![
                ("Broken".to_owned(), Reason::Error, false),
                ("Empty".to_owned(), Reason::NoData, false),
            ]
        );
        let views = engine.views(at(0));
        let broken = views.iter().find(|v| v.rule.name == "Broken").unwrap();
        assert_eq!(broken.state.state, State::Error);
        let err = broken.state.error.clone().unwrap();
        assert!(
            err.starts_with("broken.rhai:1:"),
            "the rule's own line: {err}"
        );
        // Not due yet: nothing is evaluated.
        assert!(engine.tick(at(30)).await.is_empty());

        // Rows arrive: pending, then firing once it held for 120 s.
        let mut g = sparse_generator(3, 400.0);
        let events: Vec<_> = (0..2_000).map(|_| g.next_event()).collect();
        write_events(&db.store, events, 500, &mut HashMap::new()).await;
        assert!(engine.tick(at(60)).await.is_empty());
        let state = |e: &Engine, t| {
            e.views(t)
                .into_iter()
                .find(|v| v.rule.name == "Orders")
                .unwrap()
                .state
        };
        assert_eq!(state(&engine, at(60)).state, State::Pending);
        assert!(engine.tick(at(120)).await.is_empty());
        let made = engine.tick(at(180)).await;
        assert_eq!(
            reasons(&made),
            vec![("Orders".to_owned(), Reason::Firing, false)]
        );
        assert_eq!(state(&engine, at(180)).state, State::Firing);
        assert!(engine.tick(at(240)).await.is_empty());
        // Repeated 300 s after the first notification.
        assert!(engine.tick(at(420)).await.is_empty());
        let made = engine.tick(at(480)).await;
        assert_eq!(
            reasons(&made),
            vec![("Orders".to_owned(), Reason::Repeat, false)]
        );

        // Silenced: the repeat is due and held back.
        let id = history::silence(db.store.pool(), "Orders", at(3_600), "maintenance")
            .await
            .unwrap();
        let made = engine.tick(at(780)).await;
        assert_eq!(
            reasons(&made),
            vec![("Orders".to_owned(), Reason::Repeat, true)]
        );
        settle().await;
        let posted = got.lock().unwrap().len();
        assert_eq!(
            posted, 4,
            "error, no data, firing, repeat; the silenced one not"
        );

        // A restart restores the state from the history: firing, and not
        // announced again.
        let notifier = Notifier::new(None, Some(url.clone()), false).unwrap();
        let mut engine = Engine::new(analytics.clone(), rules(), notifier, None, at(790))
            .await
            .unwrap();
        assert_eq!(state(&engine, at(790)).state, State::Firing);
        assert!(reasons(&engine.tick(at(800)).await)
            .iter()
            .all(|(r, _, _)| r != "Orders"));

        // The silence ends; the rows go: resolved, then normal.
        assert!(history::unsilence(db.store.pool(), id).await.unwrap());
        sqlx::query("DELETE FROM transactions")
            .execute(db.store.pool())
            .await
            .unwrap();
        let made = engine.tick(at(860)).await;
        assert_eq!(
            reasons(&made),
            vec![("Orders".to_owned(), Reason::Resolved, false)]
        );
        engine.tick(at(920)).await;
        assert_eq!(state(&engine, at(920)).state, State::Normal);
        settle().await;

        let posted = got.lock().unwrap().clone();
        let seq: Vec<(String, String)> = posted
            .iter()
            .map(|v| {
                (
                    v["rule"].as_str().unwrap().to_owned(),
                    v["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(seq.len(), 5, "{seq:?}");
        assert_eq!(
            seq[2..],
            [
                ("Orders".to_owned(), "firing".to_owned()),
                ("Orders".to_owned(), "repeat".to_owned()),
                ("Orders".to_owned(), "resolved".to_owned()),
            ]
        );
        let firing = posted.iter().find(|v| v["reason"] == "firing").unwrap();
        assert_eq!(firing["severity"], "warning");
        assert!(firing["value"].as_f64().unwrap() > 100.0);
        assert!(firing["summary"]
            .as_str()
            .unwrap()
            .starts_with("Orders is firing"));

        // The history, oldest first: every change and notification.
        let mut h = history::history(db.store.pool(), Some("Orders"), 100)
            .await
            .unwrap();
        h.reverse();
        let steps: Vec<(State, Option<State>, Option<Reason>, bool)> = h
            .iter()
            .map(|e| (e.state, e.previous, e.notified, e.silenced))
            .collect();
        assert_eq!(
            steps,
            vec![
                (State::Pending, Some(State::Normal), None, false),
                (
                    State::Firing,
                    Some(State::Pending),
                    Some(Reason::Firing),
                    false
                ),
                (State::Firing, None, Some(Reason::Repeat), false),
                (State::Firing, None, Some(Reason::Repeat), true),
                (
                    State::Resolved,
                    Some(State::Firing),
                    Some(Reason::Resolved),
                    false
                ),
                (State::Normal, Some(State::Resolved), None, false),
            ]
        );
        db.drop().await;
    });
}

#[test]
fn a_webhook_that_fails_is_retried_and_a_client_error_is_not() {
    let rt = runtime();
    rt.block_on(async {
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let c = Arc::clone(&calls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(
                "/flaky",
                axum::routing::post(move || {
                    let c = Arc::clone(&c);
                    async move {
                        // Two failures, then accepted.
                        if c.fetch_add(1, Ordering::SeqCst) < 2 {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            axum::http::StatusCode::OK
                        }
                    }
                }),
            )
            .route(
                "/gone",
                axum::routing::post(|| async { axum::http::StatusCode::NOT_FOUND }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let n = alerts::Notification {
            rule: "r".into(),
            file: "r.rhai".into(),
            severity: rule::Severity::Info,
            reason: Reason::Firing,
            state: State::Firing,
            value: Some(1.0),
            value_text: "1".into(),
            summary: "r is firing".into(),
            at: Utc::now(),
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let flaky: url::Url = format!("http://{addr}/flaky").parse().unwrap();
        alerts::notify::post(&client, &flaky, &n).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let gone: url::Url = format!("http://{addr}/gone").parse().unwrap();
        let e = alerts::notify::post(&client, &gone, &n).await.unwrap_err();
        assert!(e.contains("404"), "{e}");
        // Nobody listening: given up after every try, without a panic.
        let dead: url::Url = "http://127.0.0.1:9/hook".parse().unwrap();
        let e = alerts::notify::post(&client, &dead, &n).await.unwrap_err();
        assert!(e.contains("gave up after 4 tries"), "{e}");
        // Only http(s) webhooks.
        assert!(Notifier::new(None, Some("file:///etc/passwd".parse().unwrap()), false).is_err());
    });
}

/// `salespulse alerts run --once` over a rule that fires: the webhook is
/// read from the environment only (no flag: a command line is visible to
/// every local user), the process waits for the delivery (the receiver
/// answers after 1.5 s) or for its retries to end, and neither the output
/// nor an error ever shows the URL's password or token.
#[test]
fn the_headless_evaluator_delivers_before_exiting_and_never_shows_the_webhooks_token() {
    use std::process::Command;
    let rt = runtime();
    let db = rt.block_on(TestDb::new("alerts_cli"));
    let (addr, got) = rt.block_on(slow_receiver(Duration::from_millis(1500)));
    let secret = "s3cr3t-7f1e";
    // Each run's rule has a name of its own: a rule already firing in the
    // history is not announced again.
    let runs = std::sync::atomic::AtomicU32::new(0);
    let run = |webhook: &str, extra: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let n = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = if n == 0 {
            "Always".to_owned()
        } else {
            format!("Always {n}")
        };
        std::fs::write(
            dir.path().join("always.rhai"),
            format!(
                r#"#{{ alert: "{name}", every: "1m", metric: "2.0", condition: #{{ above: 1 }} }}"#
            ),
        )
        .unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_salespulse"));
        c.args(["alerts", "run", "--once", "--dir"])
            .arg(dir.path())
            .args(extra)
            .env_remove("KAFKA_BROKERS")
            .env_remove("SALESPULSE_CONFIG")
            .env("DATABASE_URL", &db.url)
            .env("SALESPULSE_ALERT_WEBHOOK", webhook)
            .env("RUST_LOG", "info");
        let o = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!text.contains(secret), "the secret shows:\n{text}");
        (o.status, text)
    };

    // Delivered, although the receiver takes 1.5 s to answer.
    let url = format!("http://hook:{secret}@{addr}/hook?token={secret}");
    let (status, text) = run(&url, &[]);
    assert!(status.success(), "{text}");
    assert!(text.contains("Always") && text.contains("firing"), "{text}");
    let posted = got.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "{text}");
    assert_eq!(posted[0]["rule"], "Always");
    assert_eq!(posted[0]["reason"], "firing");

    // Nobody listening: the process ends after the retries, saying so.
    let dead = format!(
        "http://hook:{secret}@127.0.0.1:{}/hook?token={secret}",
        free_port()
    );
    let t = std::time::Instant::now();
    let (status, text) = run(&dead, &[]);
    assert!(status.success(), "{text}");
    assert!(text.contains("gave up after 4 tries"), "{text}");
    assert!(t.elapsed() >= Duration::from_secs(7), "{:?}", t.elapsed());

    // Not http(s), or not a URL: refused before anything runs.
    for bad in [
        format!("ftp://hook:{secret}@{addr}/"),
        format!("{secret} not a url"),
    ] {
        let (status, text) = run(&bad, &[]);
        assert!(!status.success(), "{bad}: {text}");
        assert!(
            text.contains("SALESPULSE_ALERT_WEBHOOK") || text.contains("http://"),
            "{text}"
        );
    }
    // The URL is not taken on the command line at all.
    let (status, _) = run("", &["--webhook", &url]);
    assert!(!status.success());
    assert_eq!(got.lock().unwrap().len(), 1);
    rt.block_on(db.drop());
}

/// A rules folder holding files meant to hang, exhaust or confuse the
/// loader: each is an error naming its file and why, quickly, and the good
/// rule beside them loads.
#[test]
fn hostile_rule_files_are_errors_and_the_good_rule_loads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = r#"#{ alert: "Good", every: "1m", metric: "1.0", condition: #{ above: 2 } }"#;
    std::fs::write(d.join("good.rhai"), good).unwrap();
    // A FIFO would block a plain read until someone writes to it.
    let fifo = d.join("fifo.rhai");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // An endless device, and a folder with a script's name.
    std::os::unix::fs::symlink("/dev/zero", d.join("zero.rhai")).unwrap();
    std::fs::create_dir(d.join("folder.rhai")).unwrap();
    std::fs::write(d.join("binary.rhai"), [0xff_u8, 0xfe, 0x00, 0x80]).unwrap();
    std::fs::write(d.join("huge.rhai"), " ".repeat(300 * 1024) + good).unwrap();
    // Rule files are evaluated in the sandbox, with tight limits.
    std::fs::write(d.join("spin.rhai"), "loop {}").unwrap();
    std::fs::write(
        d.join("reads.rhai"),
        r#"import "std/fs" as fs; fs::read("/etc/passwd")"#,
    )
    .unwrap();
    std::fs::write(d.join("dup.rhai"), good).unwrap();

    let t = std::time::Instant::now();
    let loaded = rule::load_dir(d);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let mut ok = Vec::new();
    let mut errors = HashMap::new();
    for r in loaded {
        match r {
            Ok(r) => ok.push(r.name),
            Err(e) => {
                errors.insert(e.file.clone(), e.to_string());
            }
        }
    }
    assert_eq!(ok, vec!["Good".to_owned()], "{errors:#?}");
    let says = |file: &str, what: &[&str]| {
        let e = errors
            .get(file)
            .unwrap_or_else(|| panic!("{file}: {errors:#?}"));
        assert!(
            what.iter().any(|w| e.contains(w)),
            "{file}: {e} (expected one of {what:?})"
        );
    };
    says("fifo.rhai", &["not a regular file"]);
    says("zero.rhai", &["not a regular file"]);
    says("folder.rhai", &["not a regular file"]);
    says("binary.rhai", &["not UTF-8"]);
    says("huge.rhai", &["at most"]);
    says(
        "spin.rhai",
        &["operations", "too long", "timed out", "time"],
    );
    says("reads.rhai", &["import", "module", "not found", "fs"]);
    says("good.rhai", &["already named"]);
    assert_eq!(errors.len(), 8, "{errors:#?}");
}
