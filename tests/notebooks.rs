//! Notebooks against a real PostgreSQL: every shipped notebook runs
//! headless on a fixed seeded shop and its outputs match the ones
//! committed in `notebooks/` (numbers to 1e-9 relative; charts by their
//! data, which their images are drawn from), the written files validate
//! with Python's `nbformat`, and the HTML reports are offline and show
//! every chart. `salespulse notebook run` and `list` end to end.
//!
//! The committed outputs are the golden files: rewrite them only on
//! purpose, `UPDATE_GOLDEN=1 cargo nextest run --release -E 'binary(notebooks)'`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use salespulse::analytics::{Analytics, Filters, LoadMode};
use salespulse::cache::FrameCache;
use salespulse::event::Event;
use salespulse::generator::{self, Switchboard};
use salespulse::notebook::{self, Cell, Notebook, Output};

use common::*;

/// The shipped notebooks' data: eight weeks of the seeded shop from
/// 2026-03-02 (a Monday), with the flash sale switched on for the four
/// hours from 12:00 UTC on Wednesday 2026-04-22.
async fn seeded(tag: &str) -> TestDb {
    let db = TestDb::new(tag).await;
    let board = Switchboard::new();
    let mut g = sparse_generator(11, 25.0).with_switch(Arc::clone(&board));
    let mut flash = generator::behaviour::load_scenario(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/generator/flash_sale.rhai"),
    )
    .unwrap();
    flash.duration_minutes = Some(240.0);
    let sale = Utc.with_ymd_and_hms(2026, 4, 22, 12, 0, 0).unwrap();
    let end = Utc.with_ymd_and_hms(2026, 4, 27, 0, 0, 0).unwrap();
    let mut events = Vec::new();
    let mut switched = false;
    loop {
        let e = g.next_event();
        let at = match &e {
            Event::Sale(s) => s.occurred_at,
            Event::Session(s) => s.started_at,
        };
        if at >= end {
            break;
        }
        if !switched && at >= sale {
            board.switch_on(flash.clone());
            switched = true;
        }
        events.push(e);
    }
    write_events(&db.store, events, 5_000, &mut HashMap::new()).await;
    db
}

fn shipped() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("notebooks");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ipynb"))
        .collect();
    v.sort();
    v
}

/// Outputs as JSON, images left out (they are drawn from the chart data,
/// which stays in).
fn comparable(outputs: &[Output]) -> serde_json::Value {
    let mut v = serde_json::to_value(outputs).unwrap();
    for o in v.as_array_mut().unwrap() {
        if let Some(d) = o.get_mut("data").and_then(|d| d.as_object_mut()) {
            d.remove("image/png");
            d.remove("image/svg+xml");
        }
    }
    v
}

/// `a` and `b` equal, numbers to 1e-9 relative (sums may differ in their
/// last bits with the order Polars adds in).
fn same(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Result<(), String> {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            if (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0) {
                Ok(())
            } else {
                Err(format!("{at}: {x} != {y}"))
            }
        }
        (V::Array(x), V::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .try_for_each(|(i, (p, q))| same(p, q, &format!("{at}[{i}]"))),
        (V::Object(x), V::Object(y)) if x.len() == y.len() => x.iter().try_for_each(|(k, p)| {
            same(
                p,
                y.get(k).ok_or(format!("{at}.{k} missing"))?,
                &format!("{at}.{k}"),
            )
        }),
        _ if a == b => Ok(()),
        _ => Err(format!(
            "{at}:\n--- got\n{}\n--- committed\n{}",
            serde_json::to_string_pretty(a).unwrap(),
            serde_json::to_string_pretty(b).unwrap()
        )),
    }
}

fn python(code: &str, arg: &Path) -> Result<String, String> {
    let out = Command::new("python3")
        .args(["-c", code])
        .arg(arg)
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const VALIDATE: &str = "import sys, nbformat\n\
nb = nbformat.read(sys.argv[1], as_version=nbformat.NO_CONVERT)\n\
nbformat.validate(nb)\n\
print(nb.nbformat, nb.nbformat_minor, len(nb.cells))";

#[test]
fn every_shipped_notebook_runs_and_matches_its_committed_outputs() {
    let rt = runtime();
    let files = shipped();
    assert!(files.len() >= 4, "{files:?}");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let out_dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let db = seeded("notebooks").await;
        let analytics = Analytics::new(
            db.store.pool().clone(),
            Arc::new(FrameCache::disabled()),
            LoadMode::Rows,
        );
        for path in &files {
            let committed = Notebook::load(path).unwrap();
            let source = analytics.frame_source(&Filters::default()).await.unwrap();
            let (p, target) = (
                path.clone(),
                notebook::RunTarget {
                    out_dir: Some(out_dir.path().to_owned()),
                    html: true,
                },
            );
            let done = tokio::task::spawn_blocking(move || {
                notebook::run_file(&p, &[], Some(source), &target, None)
            })
            .await
            .unwrap()
            .unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(done.run.failed, None, "{name}");
            let ran = Notebook::load(&done.notebook).unwrap();

            // Python's reference implementation reads and validates it.
            let v = python(VALIDATE, &done.notebook).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(v.starts_with("4 5 "), "{name}: {v}");

            // Every code cell ran and showed something.
            let mut charts = 0;
            for (i, c) in ran.cells.iter().enumerate() {
                if let Cell::Code(c) = c {
                    assert!(c.execution_count.is_some(), "{name} cell {}", i + 1);
                    if c.metadata.get("tags").is_none() {
                        assert!(!c.outputs.is_empty(), "{name} cell {} shows nothing", i + 1);
                    }
                    for o in &c.outputs {
                        assert!(!matches!(o, Output::Error { .. }), "{name}: {o:?}");
                        if let Output::DisplayData { data, .. } = o {
                            if data.text("image/png").is_some() {
                                charts += 1;
                            }
                        }
                    }
                }
            }
            assert!(charts >= 1, "{name} draws no chart");

            // The report: offline, every chart in it.
            let html = std::fs::read_to_string(done.report.as_ref().unwrap()).unwrap();
            assert!(!html.contains("http://") && !html.contains("https://"), "{name}: a URL in the report");
            assert!(!html.contains("<script"), "{name}");
            assert_eq!(html.matches("<img ").count(), charts, "{name}: charts in the report");

            // The figures, against an independent computation in SQL.
            match name.as_str() {
                "cohort_retention.ipynb" => check_retention(&db, &ran).await,
                "conversion_funnel.ipynb" => check_funnel(&db, &ran).await,
                _ => {}
            }

            if update {
                ran.save(path).unwrap();
                continue;
            }
            assert_eq!(ran.cells.len(), committed.cells.len(), "{name}");
            for (i, (a, b)) in ran.cells.iter().zip(&committed.cells).enumerate() {
                assert_eq!(a.source(), b.source(), "{name} cell {}", i + 1);
                if let (Cell::Code(a), Cell::Code(b)) = (a, b) {
                    if let Err(e) = same(
                        &comparable(&a.outputs),
                        &comparable(&b.outputs),
                        &format!("{name} cell {}", i + 1),
                    ) {
                        panic!("{e}\n(UPDATE_GOLDEN=1 rewrites the committed outputs: only on purpose)");
                    }
                }
            }
        }
        db.drop().await;
    });
}

/// The data resources a notebook's cells showed (tables), in order.
fn tables(nb: &Notebook) -> Vec<serde_json::Value> {
    nb.cells
        .iter()
        .filter_map(|c| match c {
            Cell::Code(c) => Some(c.outputs.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|o| match o {
            Output::DisplayData { data, .. } | Output::ExecuteResult { data, .. } => {
                data.json(notebook::render::DATARESOURCE_MIME).cloned()
            }
            _ => None,
        })
        .collect()
}

/// Weekly cohorts (weeks from Monday, UTC) × weeks since the first order,
/// in PostgreSQL, against the notebook's pivot.
async fn check_retention(db: &TestDb, nb: &Notebook) {
    let rows: Vec<(chrono::DateTime<Utc>, i32, f64)> = sqlx::query_as(
        "WITH o AS (SELECT customer_id, date_trunc('week', occurred_at AT TIME ZONE 'UTC') AS w
                    FROM transactions),
              f AS (SELECT customer_id, min(w) AS c FROM o GROUP BY 1),
              a AS (SELECT f.c, (extract(epoch FROM o.w - f.c) / 604800)::int AS age,
                           count(DISTINCT o.customer_id) AS n
                    FROM o JOIN f USING (customer_id) GROUP BY 1, 2)
         SELECT a.c AT TIME ZONE 'UTC', a.age, a.n::float8 / z.n
         FROM a JOIN a z ON z.c = a.c AND z.age = 0
         WHERE a.age < 6 ORDER BY 1, 2",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let pivot = tables(nb)
        .into_iter()
        .find(|t| t["schema"]["fields"][0]["name"] == "cohort")
        .expect("the retention pivot");
    let data = pivot["data"].as_array().unwrap();
    let mut checked = 0;
    for (cohort, age, share) in rows {
        let label = cohort.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        let row = data
            .iter()
            .find(|r| r["cohort"].as_str() == Some(label.as_str()))
            .unwrap_or_else(|| panic!("cohort {label} missing from {pivot}"));
        let got = row[age.to_string()].as_f64().unwrap();
        assert!(
            (got - share).abs() < 1e-12,
            "cohort {label} week {age}: {got} vs SQL {share}"
        );
        checked += 1;
    }
    assert!(checked >= 30, "{checked} cells checked");
}

/// Sessions, sessions with an order, sessions with a completed order, in
/// PostgreSQL, against the notebook's funnel.
async fn check_funnel(db: &TestDb, nb: &Notebook) {
    let (sessions, ordered, completed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.orders > 0), count(c.session_id)
         FROM sessions s
         LEFT JOIN (SELECT DISTINCT session_id FROM transactions WHERE status = 'completed') c
           USING (session_id)",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    let funnel = tables(nb)
        .into_iter()
        .find(|t| t["schema"]["fields"][0]["name"] == "stage")
        .expect("the funnel table");
    let n: Vec<i64> = funnel["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sessions"].as_i64().unwrap())
        .collect();
    assert_eq!(n, vec![sessions, ordered, completed]);
}

fn salespulse(args: &[&str], db_url: &str, dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .args(args)
        .current_dir(dir)
        .env_remove("KAFKA_BROKERS")
        .env_remove("SALESPULSE_CONFIG")
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", redis_url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run salespulse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notebook_run_takes_parameters_writes_reports_and_names_a_failing_cell() {
    let db = TestDb::new("nbcli").await;
    let mut g = sparse_generator(3, 300.0);
    let events: Vec<Event> = (0..3_000).map(|_| g.next_event()).collect();
    write_events(&db.store, events, 1_000, &mut HashMap::new()).await;
    let orders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transactions WHERE status = 'completed'")
            .fetch_one(db.store.pool())
            .await
            .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let nb_dir = dir.path().join("notebooks");
    std::fs::create_dir(&nb_dir).unwrap();
    let mut nb = Notebook::new();
    nb.cells
        .push(Cell::markdown("# Completed orders\n\nA *small* check."));
    let mut p = Cell::code("let status = \"refunded\";\nlet scale = 1;");
    if let Cell::Code(c) = &mut p {
        c.metadata
            .insert("tags".into(), serde_json::json!(["parameters"]));
    }
    nb.cells.push(p);
    nb.cells.push(Cell::code(
        "let t = transactions(#{ status: status });\nprint(`rows: ${t.height}`);\nt.height * scale",
    ));
    nb.cells.push(Cell::code(
        "chart(view(\"revenue_trend\", #{ granularity: \"hour\" }), #{ y: \"revenue\", title: \"Revenue\" })",
    ));
    nb.save(&nb_dir.join("check.ipynb")).unwrap();
    let mut bad = Notebook::new();
    bad.cells.push(Cell::code("let a = 1;"));
    bad.cells.push(Cell::code("let b = a +\n  nope();"));
    bad.save(&nb_dir.join("broken.ipynb")).unwrap();

    let out = salespulse(
        &[
            "notebook",
            "run",
            "notebooks/check.ipynb",
            "-p",
            "status=completed",
            "-p",
            "scale=2",
            "--out",
            "out",
            "--html",
        ],
        &db.url,
        dir.path(),
    );
    let says = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{says}");
    let ran = Notebook::load(&dir.path().join("out/check.ipynb")).unwrap();
    // The parameters went into a cell after the parameters cell.
    assert!(
        ran.cells[2].has_tag("injected-parameters"),
        "{:?}",
        ran.cells[2]
    );
    let Cell::Code(c) = &ran.cells[3] else {
        panic!()
    };
    let Output::Stream { text, .. } = &c.outputs[0] else {
        panic!("{:?}", c.outputs)
    };
    assert_eq!(text, &format!("rows: {orders}\n"));
    let Output::ExecuteResult { data, .. } = &c.outputs[1] else {
        panic!()
    };
    assert_eq!(data.text("text/plain").unwrap(), (orders * 2).to_string());
    let html = std::fs::read_to_string(dir.path().join("out/check.html")).unwrap();
    assert!(html.contains("<title>Completed orders</title>"));
    assert!(html.contains("<em>small</em>"));
    assert!(
        html.contains("parameters status=completed, scale=2"),
        "{html}"
    );
    assert_eq!(html.matches("<img ").count(), 1);
    // The original is untouched with --out.
    assert_eq!(Notebook::load(&nb_dir.join("check.ipynb")).unwrap(), nb);

    // An unknown parameter is refused before anything runs.
    let out = salespulse(
        &["notebook", "run", "notebooks/check.ipynb", "-p", "stauts=x"],
        &db.url,
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no parameter `stauts`") && err.contains("status, scale"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "{err}"
    );

    // A failing cell: exit code, the cell named, the notebook written with the error.
    let out = salespulse(
        &["notebook", "run", "notebooks/broken.ipynb"],
        &db.url,
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cell 2 failed: cell 2:2:"), "{err}");
    let written = Notebook::load(&nb_dir.join("broken.ipynb")).unwrap();
    let Cell::Code(c) = &written.cells[1] else {
        panic!()
    };
    assert!(
        matches!(c.outputs.last(), Some(Output::Error { .. })),
        "{:?}",
        c.outputs
    );

    let out = salespulse(&["notebook", "list"], &db.url, dir.path());
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listed}");
    assert!(
        listed.contains("check.ipynb")
            && listed.contains("status,scale")
            && listed.contains("Completed orders"),
        "{listed}"
    );
    db.drop().await;
}

/// A Jupyter data directory with the kernelspec of the binary under test.
fn kernelspec_prefix(dir: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .args(["kernel", "install", "--prefix"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("share/jupyter/kernels/salespulse/kernel.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(spec["language"], "rhai");
    assert_eq!(spec["interrupt_mode"], "message");
    dir.join("share/jupyter")
}

fn python_with_kernel(
    code: &str,
    jupyter_path: &Path,
    db_url: &str,
    args: &[&Path],
) -> Result<String, String> {
    let out = Command::new("python3")
        .args(["-c", code])
        .args(args)
        .env("JUPYTER_PATH", jupyter_path)
        .env("JUPYTER_PLATFORM_DIRS", "1")
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", redis_url())
        .env_remove("KAFKA_BROKERS")
        .env_remove("SALESPULSE_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

const NBCLIENT: &str = "import sys, nbformat\n\
from nbclient import NotebookClient\n\
src, dst = sys.argv[1], sys.argv[2]\n\
nb = nbformat.read(src, as_version=4)\n\
NotebookClient(nb, kernel_name='salespulse', timeout=300).execute()\n\
nbformat.validate(nb)\n\
nbformat.write(nb, dst)\n";

#[test]
fn nbclient_runs_every_shipped_notebook_through_the_kernel_with_the_same_outputs() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let jupyter = kernelspec_prefix(tmp.path());
    rt.block_on(async {
        let db = seeded("nbkernel").await;
        for path in shipped() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let out = tmp.path().join(&name);
            python_with_kernel(NBCLIENT, &jupyter, &db.url, &[&path, &out])
                .unwrap_or_else(|e| panic!("{name} through nbclient: {e}"));
            let ran = Notebook::load(&out).unwrap();
            let committed = Notebook::load(&path).unwrap();
            assert_eq!(ran.cells.len(), committed.cells.len(), "{name}");
            for (i, (a, b)) in ran.cells.iter().zip(&committed.cells).enumerate() {
                if let (Cell::Code(a), Cell::Code(b)) = (a, b) {
                    let (ca, cb) = (comparable(&a.outputs), comparable(&b.outputs));
                    if let Err(e) = same(&ca, &cb, &format!("{name} cell {} (kernel)", i + 1)) {
                        panic!("{e}");
                    }
                    // The images are there too.
                    let imgs = |o: &[Output]| {
                        o.iter()
                            .filter(|o| matches!(o, Output::DisplayData { data, .. } if data.text("image/png").is_some()))
                            .count()
                    };
                    assert_eq!(imgs(&a.outputs), imgs(&b.outputs), "{name} cell {}", i + 1);
                }
            }
        }
        db.drop().await;
    });
}

const KERNEL_TESTS: &str = r#"
import sys, unittest
import jupyter_kernel_test as jkt

class SalespulseKernel(jkt.KernelTests):
    kernel_name = "salespulse"
    language_name = "rhai"
    file_extension = ".rhai"
    code_hello_world = 'print("hello, world")'
    code_stderr = 'debug("to stderr")'
    completion_samples = [{"text": "transac", "matches": {"transactions"}}]
    complete_code_samples = ["1", "let a = 1;", "fn f(x) { x }"]
    incomplete_code_samples = ["fn f(x) {", "let a = [1,"]
    invalid_code_samples = ["let = = 1;"]
    code_execute_result = [{"code": "6 * 7", "result": "42"}]
    code_display_data = [
        {"code": "display(frame(#{ a: [1, 2] }))", "mime": "text/html"},
        {"code": "chart(frame(#{ x: [1, 2], y: [3, 4] }))", "mime": "image/png"},
    ]
    code_generate_error = "let x = nope();"

r = unittest.main(argv=["kernel-tests", "-v"], exit=False).result
sys.exit(0 if r.wasSuccessful() and r.testsRun > 5 else 1)
"#;

const INTERRUPT: &str = r#"
import time
from jupyter_client.manager import start_new_kernel

km, kc = start_new_kernel(kernel_name="salespulse")
try:
    msg_id = kc.execute("let n = 0; loop { n += 1; }")
    time.sleep(1.5)
    t = time.time()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=20)
    assert reply["parent_header"]["msg_id"] == msg_id
    c = reply["content"]
    assert c["status"] == "error", c
    assert "cancelled" in c["evalue"], c
    print("stopped in %.2f s" % (time.time() - t))
    # The session goes on: n kept counting until the interrupt.
    r = kc.execute_interactive("n > 0", timeout=20)
    assert r["content"]["status"] == "ok", r
    assert km.is_alive()
    # A client without the key: its request is dropped unanswered and does
    # not run; the kernel goes on.
    import queue
    from jupyter_client import BlockingKernelClient
    info = km.get_connection_info(session=False)
    info["key"] = b"not-the-key"
    bad = BlockingKernelClient()
    bad.load_connection_info(info)
    bad.start_channels()
    bad.execute("let forged = 1;")
    try:
        bad.get_shell_msg(timeout=3)
        raise AssertionError("a request signed with the wrong key was answered")
    except queue.Empty:
        pass
    bad.stop_channels()
    r = kc.execute_interactive("forged", timeout=20)
    assert r["content"]["status"] == "error", r
    print("forged request refused")
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=False)
"#;

#[test]
fn the_kernel_passes_jupyter_kernel_test_and_interrupt_stops_a_runaway_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let jupyter = kernelspec_prefix(tmp.path());
    // No database here: the kernel runs, cells that read data say why not.
    let db = "postgres://nobody@127.0.0.1:1/none";
    let out = python_with_kernel(KERNEL_TESTS, &jupyter, db, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("OK"), "{out}");
    let out = python_with_kernel(INTERRUPT, &jupyter, db, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.contains("stopped in") && out.contains("forged request refused"),
        "{out}"
    );

    // A connection file without a key is refused: the kernel would run code
    // from any local user.
    let conn = tmp.path().join("nokey.json");
    std::fs::write(
        &conn,
        r#"{"ip": "127.0.0.1", "transport": "tcp", "shell_port": 1, "iopub_port": 2,
            "stdin_port": 3, "control_port": 4, "hb_port": 5, "key": "",
            "signature_scheme": "hmac-sha256"}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_salespulse"))
        .args(["kernel", "-f"])
        .arg(&conn)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_notebook_reruns_under_run_and_keeps_its_history() {
    let db = TestDb::new("nbsched").await;
    let dir = tempfile::tempdir().unwrap();
    let nb_dir = dir.path().join("notebooks");
    std::fs::create_dir(&nb_dir).unwrap();
    let mut nb = Notebook::new();
    nb.cells.push(Cell::markdown("# Orders so far"));
    nb.cells.push(Cell::code(
        "kpi(\"Orders\", transactions().height, \"count\")",
    ));
    let file = nb_dir.join("orders.ipynb");
    nb.save(&file).unwrap();
    let before = std::fs::read_to_string(&file).unwrap();

    let say = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let bad = salespulse(
        &[
            "notebook",
            "schedule",
            "notebooks/orders.ipynb",
            "--every",
            "0 25 * * *",
        ],
        &db.url,
        dir.path(),
    );
    assert_eq!(bad.status.code(), Some(2), "{}", say(&bad));
    assert!(say(&bad).contains("hour field"), "{}", say(&bad));
    let set = salespulse(
        &[
            "notebook",
            "schedule",
            "notebooks/orders.ipynb",
            "--every",
            "1h",
        ],
        &db.url,
        dir.path(),
    );
    assert!(set.status.success(), "{}", say(&set));
    assert!(say(&set).contains("every 1h"), "{}", say(&set));

    // `run` honours it: due now (never run), run once, kept with its report.
    // At 100 events/s the run outlasts the scheduler's first check (at
    // start) and its run, even on a busy machine.
    let run = |n: &str| {
        salespulse(
            &["run", "--events", n, "--rate", "100", "--seed", "5"],
            &db.url,
            dir.path(),
        )
    };
    let r = run("600");
    assert!(r.status.success(), "{}", say(&r));
    let runs = notebook::schedule::history(&file);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].failed_cell, None, "{runs:?}");
    let report = notebook::schedule::runs_dir(&file).join(&runs[0].report);
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("Orders so far") && html.contains("sp-kpi"),
        "{html}"
    );
    // The notebook file is not rewritten by a scheduled run (only its schedule was).
    let after = Notebook::load(&file).unwrap();
    assert_eq!(after.cells, Notebook::parse("x", &before).unwrap().cells);

    // Not due again within the hour.
    let r = run("300");
    assert!(r.status.success(), "{}", say(&r));
    assert_eq!(notebook::schedule::history(&file).len(), 1);
    let h = salespulse(
        &["notebook", "history", "notebooks/orders.ipynb"],
        &db.url,
        dir.path(),
    );
    assert!(say(&h).contains("ok, 1 code cells"), "{}", say(&h));
    let l = salespulse(&["notebook", "list"], &db.url, dir.path());
    assert!(say(&l).contains(" 1h "), "{}", say(&l));

    let off = salespulse(
        &["notebook", "schedule", "notebooks/orders.ipynb", "--off"],
        &db.url,
        dir.path(),
    );
    assert!(off.status.success(), "{}", say(&off));
    assert!(notebook::schedule::schedule_of(&Notebook::load(&file).unwrap()).is_none());
    db.drop().await;
}
