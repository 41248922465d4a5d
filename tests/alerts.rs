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
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let g = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let g = Arc::clone(&g);
            async move {
                g.lock().unwrap().push(v);
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook").parse().unwrap(), got)
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
