//! A Jupyter kernel (`salespulse kernel -f CONNECTION_FILE`): the Jupyter
//! messaging protocol over ZeroMQ (message types from `jupyter-protocol`,
//! sockets from `jupyter-zmq-client`), so that JupyterLab, VS Code,
//! `nbclient` and `papermill` run notebooks with the same cells, sandbox
//! and outputs as `salespulse notebook run`.
//!
//! Shell: `kernel_info`, `execute` (stream, display_data, execute_result,
//! error on IOPub, then the reply), `is_complete`, `complete` (names of the
//! bindings and of the session's variables and functions), `inspect`,
//! `history`, `comm_info`. Control: `kernel_info`, `interrupt` (stops the
//! running cell through the sandbox's cancel flag; `interrupt_mode` is
//! `message`, and SIGINT does the same), `shutdown`. Heartbeat echoes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use jupyter_protocol::{
    CodeMirrorMode, CommInfoReply, CompleteReply, ConnectionInfo, DisplayData, ErrorOutput,
    ExecuteInput, ExecuteReply, ExecuteResult, ExecutionCount, HistoryReply, InspectReply,
    InterruptReply, IsCompleteReply, IsCompleteReplyStatus, JupyterMessage, JupyterMessageContent,
    KernelInfoReply, LanguageInfo, Media, MediaType, ReplyError, ReplyStatus, ShutdownReply,
    Status, Stdio, StreamContent,
};
use jupyter_zmq_client::{
    create_kernel_control_connection, create_kernel_heartbeat_connection,
    create_kernel_iopub_xpub_connection, create_kernel_shell_connection,
    create_kernel_stdin_connection, SubscriptionEvent,
};
use polars::prelude::{DataFrame, Schema};

use super::format::{MimeBundle, Output, KERNEL_NAME};
use super::run::{self, Session};
use crate::script::frames::FrameSource;
use crate::script::pushdown::Pushed;

/// Makes the frame source of a cell (fresh data versions), or says why
/// there is no database; called on a cell's first read of data.
pub type SourceFactory =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn FrameSource>, String>> + Send + Sync>;

/// One cell's frames: the source is made when the cell first reads data
/// (so that a cell that reads none never waits for the database), once.
struct PerCell {
    rt: tokio::runtime::Handle,
    factory: SourceFactory,
    made: OnceLock<Result<Arc<dyn FrameSource>, String>>,
}

impl PerCell {
    fn source(&self) -> Result<&Arc<dyn FrameSource>, String> {
        self.made
            .get_or_init(|| self.rt.block_on((self.factory)()))
            .as_ref()
            .map_err(|why| format!("no database: {why}"))
    }
}

impl FrameSource for PerCell {
    fn view(&self, name: &str, opts: &[(String, String)]) -> Result<DataFrame, String> {
        self.source()?.view(name, opts)
    }
    fn table(
        &self,
        name: &str,
        opts: &[(String, String)],
        columns: Option<&[String]>,
        limit: Option<usize>,
    ) -> Result<DataFrame, String> {
        self.source()?.table(name, opts, columns, limit)
    }
    fn table_schema(&self, name: &str, opts: &[(String, String)]) -> Result<Schema, String> {
        self.source()?.table_schema(name, opts)
    }
    fn table_names(&self) -> Vec<&'static str> {
        vec!["transactions", "sessions", "customers", "products"]
    }
    fn query(&self, q: &Pushed) -> Result<Option<DataFrame>, String> {
        self.source()?.query(q)
    }
}

/// The kernelspec (`kernel.json`) that starts `exe` as this kernel.
pub fn kernelspec(exe: &Path) -> serde_json::Value {
    serde_json::json!({
        "argv": [exe.display().to_string(), "kernel", "-f", "{connection_file}"],
        "display_name": "salespulse (Rhai)",
        "language": "rhai",
        "interrupt_mode": "message",
        "metadata": { "debugger": false },
    })
}

/// Writes the kernelspec into `data_dir/kernels/salespulse/` (a Jupyter
/// data directory: `~/.local/share/jupyter` for a user, `PREFIX/share/
/// jupyter` for an environment); returns the folder.
pub fn install(data_dir: &Path, exe: &Path) -> std::io::Result<PathBuf> {
    let dir = data_dir.join("kernels").join(KERNEL_NAME);
    std::fs::create_dir_all(&dir)?;
    let spec = serde_json::to_string_pretty(&kernelspec(exe)).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("kernel.json"), spec + "\n")?;
    Ok(dir)
}

/// The user's Jupyter data directory (`$JUPYTER_DATA_DIR`, else the
/// platform's: `~/.local/share/jupyter` on Linux).
pub fn user_data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("JUPYTER_DATA_DIR") {
        return Some(PathBuf::from(d));
    }
    if cfg!(any(target_os = "macos", windows)) {
        return jupyter_zmq_client::dirs::user_data_dir().ok();
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("jupyter"))
}

fn kernel_info() -> KernelInfoReply {
    KernelInfoReply {
        status: ReplyStatus::Ok,
        protocol_version: "5.3".into(),
        implementation: "salespulse".into(),
        implementation_version: env!("CARGO_PKG_VERSION").into(),
        language_info: LanguageInfo {
            name: "rhai".into(),
            version: "1".into(),
            mimetype: Some("text/x-rhai".into()),
            file_extension: Some(".rhai".into()),
            pygments_lexer: Some("rust".into()),
            codemirror_mode: Some(CodeMirrorMode::Simple("rust".into())),
            nbconvert_exporter: None,
        },
        banner: format!(
            "salespulse {} — Rhai over Polars frames (view, transactions, sql, chart, …)",
            env!("CARGO_PKG_VERSION")
        ),
        help_links: Vec::new(),
        debugger: false,
        error: None,
    }
}

/// Our bundle on the wire, every type passed as it is.
fn media(b: &MimeBundle) -> Media {
    Media {
        content: b
            .0
            .iter()
            .map(|(k, v)| MediaType::Other((k.clone(), v.clone())))
            .collect(),
    }
}

fn output_message(o: &Output, parent: &JupyterMessage) -> JupyterMessage {
    match o {
        Output::Stream { name, text } => StreamContent {
            name: if name == "stderr" {
                Stdio::Stderr
            } else {
                Stdio::Stdout
            },
            text: text.clone(),
        }
        .as_child_of(parent),
        Output::DisplayData { data, metadata } => DisplayData {
            data: media(data),
            metadata: metadata.clone(),
            transient: None,
        }
        .as_child_of(parent),
        Output::ExecuteResult {
            execution_count,
            data,
            metadata,
        } => ExecuteResult {
            execution_count: ExecutionCount::new(execution_count.unwrap_or(0).max(0) as usize),
            data: media(data),
            metadata: metadata.clone(),
            // `{}`, not null: clients validate it as an object.
            transient: Some(jupyter_protocol::Transient::default()),
        }
        .as_child_of(parent),
        Output::Error {
            ename,
            evalue,
            traceback,
        } => ErrorOutput {
            ename: ename.clone(),
            evalue: evalue.clone(),
            traceback: traceback.clone(),
        }
        .as_child_of(parent),
    }
}

/// Whether `code` is a whole cell: complete, still open (an unclosed
/// bracket or block, a trailing operator), or invalid.
pub fn completeness(code: &str) -> &'static str {
    if code.trim().is_empty() {
        return "complete";
    }
    match run::sandbox().engine().compile(code) {
        Ok(_) => "complete",
        Err(e) => match e.err_type() {
            rhai::ParseErrorType::UnexpectedEOF => "incomplete",
            rhai::ParseErrorType::MissingToken(..)
            | rhai::ParseErrorType::ExprExpected(_)
            | rhai::ParseErrorType::BadInput(rhai::LexError::UnterminatedString)
                if e.position().line().unwrap_or(0) >= code.lines().count()
                    && !code.ends_with('\n') =>
            {
                "incomplete"
            }
            _ => "invalid",
        },
    }
}

/// Names starting with the word before `cursor` (in characters), and
/// where that word starts and ends.
fn complete(names: &[String], code: &str, cursor: usize) -> (Vec<String>, usize, usize) {
    let chars: Vec<char> = code.chars().collect();
    let end = cursor.min(chars.len());
    let mut start = end;
    while start > 0
        && chars
            .get(start - 1)
            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
    {
        start -= 1;
    }
    let word: String = chars.get(start..end).unwrap_or_default().iter().collect();
    let matches = names
        .iter()
        .filter(|n| n.starts_with(&word) && **n != word)
        .cloned()
        .collect();
    (matches, start, end)
}

struct Kernel {
    session: Arc<Mutex<Session>>,
    cancel: Arc<AtomicBool>,
    sources: SourceFactory,
}

impl Kernel {
    /// Runs one cell on a blocking thread; returns its outputs and error.
    async fn execute(&self, code: String) -> run::Executed {
        let source: Arc<dyn FrameSource> = Arc::new(PerCell {
            rt: tokio::runtime::Handle::current(),
            factory: Arc::clone(&self.sources),
            made: OnceLock::new(),
        });
        self.cancel.store(false, Ordering::Relaxed);
        let (session, cancel) = (Arc::clone(&self.session), Arc::clone(&self.cancel));
        let done = tokio::task::spawn_blocking(move || {
            let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
            s.set_source(Some(source));
            let name = format!("cell [{}]", s.count() + 1);
            s.execute(&name, &code, Some(&cancel))
        })
        .await;
        match done {
            Ok(d) => d,
            Err(e) => {
                let err = crate::script::ScriptError::new(
                    "cell",
                    format!("the cell's thread failed: {e}"),
                );
                run::Executed {
                    count: 0,
                    outputs: vec![Output::Error {
                        ename: "ScriptError".into(),
                        evalue: err.to_string(),
                        traceback: vec![err.to_string()],
                    }],
                    error: Some(err),
                    elapsed: std::time::Duration::ZERO,
                    frames: Vec::new(),
                }
            }
        }
    }

    fn names(&self) -> Vec<String> {
        // A running cell holds the session: complete from the bindings alone.
        match self.session.try_lock() {
            Ok(s) => s.names(),
            Err(_) => Session::new(None).names(),
        }
    }
}

/// How long a channel waits after a refused message (a broken socket
/// must not spin).
const BAD_MESSAGE_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Serves the kernel on the sockets of `conn` until a shutdown request
/// (or a socket fails).
pub async fn serve(conn: ConnectionInfo, sources: SourceFactory) -> anyhow::Result<()> {
    // Without a key no message is signed, and any local user could run
    // code in this kernel by writing to its ports.
    anyhow::ensure!(
        !conn.key.trim().is_empty(),
        "the connection file has no key: the kernel would run code from any local user \
         (Jupyter writes a key unless told not to)"
    );
    let session_id = uuid::Uuid::new_v4().to_string();
    let mut heartbeat = create_kernel_heartbeat_connection(&conn).await?;
    let (mut shell_tx, mut shell_rx) = create_kernel_shell_connection(&conn, &session_id)
        .await?
        .split();
    let mut control = create_kernel_control_connection(&conn, &session_id).await?;
    let _stdin = create_kernel_stdin_connection(&conn, &session_id).await?;
    let mut iopub = create_kernel_iopub_xpub_connection(&conn, &session_id).await?;

    let kernel = Kernel {
        session: Arc::new(Mutex::new(Session::new(None))),
        cancel: Arc::new(AtomicBool::new(false)),
        sources,
    };

    let beat = tokio::spawn(async move {
        loop {
            if heartbeat.single_heartbeat().await.is_err() {
                tokio::time::sleep(BAD_MESSAGE_PAUSE).await;
            }
        }
    });

    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cancel = Arc::clone(&kernel.cancel);
    let control_task = tokio::spawn(async move {
        let mut stop_tx = Some(stop_tx);
        loop {
            // A message that is not signed with the key (or not a message)
            // is dropped; the channel goes on.
            let msg = match control.read().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("kernel: control message refused: {e}");
                    tokio::time::sleep(BAD_MESSAGE_PAUSE).await;
                    continue;
                }
            };
            let reply: Option<JupyterMessage> = match &msg.content {
                JupyterMessageContent::KernelInfoRequest(_) => {
                    Some(kernel_info().as_child_of(&msg))
                }
                JupyterMessageContent::InterruptRequest(_) => {
                    cancel.store(true, Ordering::Relaxed);
                    Some(InterruptReply::new().as_child_of(&msg))
                }
                JupyterMessageContent::ShutdownRequest(req) => {
                    let r = ShutdownReply {
                        restart: req.restart,
                        status: ReplyStatus::Ok,
                        error: None,
                    }
                    .as_child_of(&msg);
                    cancel.store(true, Ordering::Relaxed);
                    let _ = control.send(r).await;
                    if let Some(tx) = stop_tx.take() {
                        let _ = tx.send(());
                    }
                    return;
                }
                _ => None,
            };
            if let Some(r) = reply {
                if control.send(r).await.is_err() {
                    return;
                }
            }
        }
    });

    // SIGINT (interrupt_mode "signal" clients) stops the running cell too.
    let cancel = Arc::clone(&kernel.cancel);
    let sigint = tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            cancel.store(true, Ordering::Relaxed);
        }
    });

    loop {
        tokio::select! {
            _ = &mut stop_rx => break,
            sub = iopub.recv_subscription() => {
                if let Ok(SubscriptionEvent::Subscribe(topic)) = sub {
                    let welcome: JupyterMessage = jupyter_protocol::IoPubWelcome::new(topic).into();
                    let _ = iopub.send(welcome).await;
                }
            }
            msg = shell_rx.read() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!("kernel: shell message refused: {e}");
                        tokio::time::sleep(BAD_MESSAGE_PAUSE).await;
                        continue;
                    }
                };
                iopub.send(Status::busy().as_child_of(&msg)).await?;
                match &msg.content {
                    JupyterMessageContent::KernelInfoRequest(_) => {
                        shell_tx.send(kernel_info().as_child_of(&msg)).await?;
                    }
                    JupyterMessageContent::ExecuteRequest(req) => {
                        let code = req.code.clone();
                        let done = kernel.execute(code.clone()).await;
                        let count = ExecutionCount::new(done.count.max(0) as usize);
                        if !req.silent {
                            iopub.send(ExecuteInput { code, execution_count: count }.as_child_of(&msg)).await?;
                            for o in &done.outputs {
                                iopub.send(output_message(o, &msg)).await?;
                            }
                        }
                        let reply = match &done.error {
                            None => ExecuteReply {
                                status: ReplyStatus::Ok,
                                execution_count: count,
                                payload: Vec::new(),
                                user_expressions: Some(Default::default()),
                                error: None,
                            },
                            Some(e) => ExecuteReply {
                                status: ReplyStatus::Error,
                                execution_count: count,
                                payload: Vec::new(),
                                user_expressions: Some(Default::default()),
                                error: Some(Box::new(ReplyError {
                                    ename: "ScriptError".into(),
                                    evalue: e.to_string(),
                                    traceback: done.outputs.iter().find_map(|o| match o {
                                        Output::Error { traceback, .. } => Some(traceback.clone()),
                                        _ => None,
                                    }).unwrap_or_default(),
                                })),
                            },
                        };
                        shell_tx.send(reply.as_child_of(&msg)).await?;
                    }
                    JupyterMessageContent::IsCompleteRequest(req) => {
                        let status = match completeness(&req.code) {
                            "complete" => IsCompleteReplyStatus::Complete,
                            "incomplete" => IsCompleteReplyStatus::Incomplete,
                            _ => IsCompleteReplyStatus::Invalid,
                        };
                        let indent = if matches!(status, IsCompleteReplyStatus::Incomplete) { "    " } else { "" };
                        shell_tx.send(IsCompleteReply { status, indent: indent.into() }.as_child_of(&msg)).await?;
                    }
                    JupyterMessageContent::CompleteRequest(req) => {
                        let (matches, start, end) = complete(&kernel.names(), &req.code, req.cursor_pos);
                        shell_tx.send(CompleteReply {
                            matches,
                            cursor_start: start,
                            cursor_end: end,
                            metadata: serde_json::Map::new(),
                            status: ReplyStatus::Ok,
                            error: None,
                        }.as_child_of(&msg)).await?;
                    }
                    JupyterMessageContent::InspectRequest(_) => {
                        shell_tx.send(InspectReply::default().as_child_of(&msg)).await?;
                    }
                    JupyterMessageContent::HistoryRequest(_) => {
                        shell_tx.send(HistoryReply::default().as_child_of(&msg)).await?;
                    }
                    JupyterMessageContent::CommInfoRequest(_) => {
                        shell_tx.send(CommInfoReply::default().as_child_of(&msg)).await?;
                    }
                    JupyterMessageContent::ShutdownRequest(req) => {
                        shell_tx.send(ShutdownReply { restart: req.restart, status: ReplyStatus::Ok, error: None }.as_child_of(&msg)).await?;
                        iopub.send(Status::idle().as_child_of(&msg)).await?;
                        break;
                    }
                    _ => {}
                }
                iopub.send(Status::idle().as_child_of(&msg)).await?;
            }
        }
    }
    beat.abort();
    control_task.abort();
    sigint.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completeness_tells_open_cells_from_broken_ones() {
        assert_eq!(completeness("let a = 1;"), "complete");
        assert_eq!(completeness("fn f(x) {\n  x + 1"), "incomplete");
        assert_eq!(completeness("let a = [1, 2,"), "incomplete");
        assert_eq!(completeness("let = = 3;"), "invalid");
        assert_eq!(completeness(""), "complete");
    }

    #[test]
    fn completion_offers_names_that_start_with_the_word() {
        let names: Vec<String> = ["transactions", "table", "total", "view"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (m, s, e) = complete(&names, "let x = ta", 10);
        assert_eq!((m, s, e), (vec!["table".to_owned()], 8, 10));
        let (m, _, _) = complete(&names, "t", 1);
        assert_eq!(m.len(), 3);
    }
}
