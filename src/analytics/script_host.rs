//! Metric scripts run in a child process (`salespulse script-host`), so that
//! a runaway cannot take the app or the pipeline down: its memory is capped
//! by an rlimit (`RLIMIT_DATA`, Linux and other Unix), an abort (memory
//! exhausted, stack overflowed by data nested very deep) ends only the
//! child, and the parent kills it at the run's wall-clock limit or on
//! cancel.
//!
//! The child holds no connection and no secret. It asks the parent for each
//! view, table or schema it needs over its stdin/stdout; the parent answers
//! through the same [`FrameSource`] an in-process run uses (cache, filters,
//! row limits), and reads the result frame back with the reader that never
//! panics ([`crate::cache::decode`]).
//!
//! Messages are `tag: u8`, `len: u32` (big-endian), then `len` bytes:
//!
//! | from | tag | body |
//! |---|---|---|
//! | parent | `R` | JSON [`RunRequest`] |
//! | child | `V`, `T`, `S` | JSON [`Call`]: a view, a table, a table's schema |
//! | child | `Q` | JSON [`Pushed`]: a frame's plan to run in the database |
//! | parent | `F` / `X` / `N` | an Arrow IPC frame / an error text / `Q` cannot be pushed |
//! | child | `D` / `E` | the result frame / a JSON [`ScriptError`] |

// The child's rlimit and the parent's signals are libc calls: each says
// why it is sound.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::metrics::Metric;
use crate::script::frames::FrameSource;
use crate::script::pushdown::Pushed;
use crate::script::ScriptError;

/// Largest message either side accepts (a result frame, a table).
pub(crate) const MAX_MESSAGE: usize = 1 << 30;

/// Memory a script's process may use by default, in MiB.
pub(crate) const DEFAULT_MEMORY_MB: u64 = 4096;

/// The stack of the thread a script runs on in its process.
const SCRIPT_STACK: usize = 2 << 20;

/// The tables a script may read (what `sql` may name).
const TABLES: [&str; 4] = ["transactions", "sessions", "customers", "products"];

/// How scripts are isolated.
#[derive(Clone, Debug)]
pub struct Isolation {
    /// The `salespulse` binary run as `script-host`; `None`: in this
    /// process (no memory cap; only when no binary can be found).
    pub host: Option<PathBuf>,
    /// The child's data-segment limit, in MiB.
    pub memory_mb: u64,
}

impl Default for Isolation {
    /// The binary from `SALESPULSE_SCRIPT_HOST`, this executable when it is
    /// `salespulse`, or a `salespulse` beside it or one folder up (where
    /// cargo puts it for tests); memory from `SALESPULSE_SCRIPT_MEMORY_MB`.
    fn default() -> Self {
        Self {
            host: find_host(),
            memory_mb: std::env::var("SALESPULSE_SCRIPT_MEMORY_MB")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|m| *m >= 64)
                .unwrap_or(DEFAULT_MEMORY_MB),
        }
    }
}

fn find_host() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SALESPULSE_SCRIPT_HOST") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let name = format!("salespulse{}", std::env::consts::EXE_SUFFIX);
    if exe.file_name().is_some_and(|f| f == name.as_str()) {
        return Some(exe);
    }
    let dir = exe.parent()?;
    [dir.join(&name), dir.parent()?.join(&name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Parent and child must be the same build: the request carries this.
const PROTOCOL: &str = concat!(env!("CARGO_PKG_VERSION"), "/script-host-1");

/// Largest result frame a script may hand back, in memory (the parent
/// decodes it: a script must not be able to exhaust the parent's memory).
pub(crate) const MAX_RESULT_BYTES: usize = 256 << 20;

/// What the parent asks the child to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunRequest {
    /// [`PROTOCOL`] of the parent.
    pub protocol: String,
    /// The script's file name (for errors).
    pub file: String,
    /// Its text.
    pub source: String,
    /// The child's memory cap, MiB.
    pub memory_mb: u64,
}

/// A frame the child asks the parent for.
#[derive(Debug, Serialize, Deserialize)]
pub struct Call {
    /// View or table name.
    pub name: String,
    /// The script's `key=value` options.
    pub opts: Vec<(String, String)>,
    /// Columns to load (tables).
    pub columns: Option<Vec<String>>,
    /// Rows to load at most (tables).
    pub limit: Option<usize>,
}

fn write_msg(w: &mut impl Write, tag: u8, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n as usize <= MAX_MESSAGE)
        .ok_or_else(|| std::io::Error::other("message too large"))?;
    w.write_all(&[tag])?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(body)?;
    w.flush()
}

fn read_msg(r: &mut impl Read, most: usize) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let [tag, a, b, c, d] = head;
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > most {
        return Err(std::io::Error::other(format!(
            "message of {len} bytes (at most {most})"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((tag, body))
}

fn frame_bytes(df: &DataFrame) -> Result<Vec<u8>, String> {
    crate::cache::encode(df).map_err(|e| e.to_string())
}

/// Runs `metric` in a child process with `source` answering its frame
/// calls. Blocking. `cancel` and the sandbox's time limit kill the child.
pub(crate) fn run_isolated(
    host: &Path,
    memory_mb: u64,
    metric: &Metric,
    source: Option<Arc<dyn FrameSource>>,
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<DataFrame, ScriptError> {
    let file = metric.info.file.clone();
    let fail = |m: String| ScriptError::new(&file, m);
    let mut child = Command::new(host)
        .arg("script-host")
        // Nothing from the user's environment: no URL, no secret.
        .env_clear()
        .env("RUST_BACKTRACE", "0")
        .envs(std::env::var_os("POLARS_MAX_THREADS").map(|v| ("POLARS_MAX_THREADS", v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot start the script process {}: {e}",
                host.display()
            ))
        })?;
    let (Some(mut to_child), Some(mut from_child), Some(mut errs)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail("the script process has no pipes".into()));
    };
    // The last few KiB of the child's stderr, for the reason it died.
    let stderr_tail = std::thread::spawn(move || {
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = errs.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(buf.get(..n).unwrap_or_default());
            if tail.len() > 16 * 1024 {
                tail.drain(..tail.len() - 8 * 1024);
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    });
    // A watchdog kills the child at the deadline or on cancel.
    // The child stops itself at the limit (between operations, and before
    // each frame it asks for); this is for Polars work that never returns.
    let timeout = super::metrics::sandbox().limits().timeout;
    let deadline = Instant::now() + timeout + (timeout / 2).max(Duration::from_secs(2));
    let done = Arc::new(AtomicBool::new(false));
    let why_killed: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let pid = child.id();
    let watchdog = {
        let (done, why, cancel) = (Arc::clone(&done), Arc::clone(&why_killed), cancel.cloned());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let reason = if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                    Some("cancelled".to_owned())
                } else if Instant::now() > deadline {
                    Some(format!(
                        "stopped: ran longer than {:.1} s (the limit per run)",
                        timeout.as_secs_f64()
                    ))
                } else {
                    None
                };
                if let Some(r) = reason {
                    *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                    kill(pid);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let request = RunRequest {
        protocol: PROTOCOL.to_owned(),
        file: file.clone(),
        source: metric.source().to_owned(),
        memory_mb,
    };
    let outcome = (|| -> Result<Result<DataFrame, ScriptError>, String> {
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        write_msg(&mut to_child, b'R', &body).map_err(|e| e.to_string())?;
        loop {
            let (tag, body) =
                read_msg(&mut from_child, MAX_RESULT_BYTES).map_err(|e| e.to_string())?;
            match tag {
                b'D' => {
                    return Ok(crate::cache::decode(&body)
                        .map_err(|e| fail(format!("the script's result could not be read: {e}"))))
                }
                b'E' => {
                    return Ok(Err(serde_json::from_slice::<ScriptError>(&body)
                        .unwrap_or_else(|e| {
                            fail(format!("unreadable error from the script: {e}"))
                        })))
                }
                b'V' | b'T' | b'S' | b'Q' => {
                    if Instant::now() > deadline
                        || cancel.is_some_and(|c| c.load(Ordering::Relaxed))
                    {
                        return Err("the run was stopped".to_owned());
                    }
                    let answer = match (&source, tag) {
                        (None, _) => Err("no database here".to_owned()),
                        (Some(src), b'Q') => match serde_json::from_slice::<Pushed>(&body) {
                            Err(e) => Err(format!("bad query: {e}")),
                            Ok(q) => src
                                .query(&q)
                                .and_then(|df| df.map(|df| frame_bytes(&df)).transpose()),
                        },
                        (Some(src), _) => match serde_json::from_slice::<Call>(&body) {
                            Err(e) => Err(format!("bad call: {e}")),
                            Ok(c) => match tag {
                                b'V' => src.view(&c.name, &c.opts),
                                b'T' => src.table(&c.name, &c.opts, c.columns.as_deref(), c.limit),
                                _ => src
                                    .table_schema(&c.name, &c.opts)
                                    .map(|s| DataFrame::empty_with_schema(&s)),
                            }
                            .and_then(|df| frame_bytes(&df))
                            .map(Some),
                        },
                    };
                    match answer {
                        Ok(None) => write_msg(&mut to_child, b'N', &[]),
                        Ok(Some(bytes)) if bytes.len() <= MAX_MESSAGE => {
                            write_msg(&mut to_child, b'F', &bytes)
                        }
                        Ok(Some(bytes)) => write_msg(
                            &mut to_child,
                            b'X',
                            format!(
                                "a frame of {} bytes is too large to hand to a script",
                                bytes.len()
                            )
                            .as_bytes(),
                        ),
                        Err(e) => write_msg(&mut to_child, b'X', e.as_bytes()),
                    }
                    .map_err(|e| e.to_string())?;
                }
                other => {
                    return Err(format!(
                        "unexpected message {other:?} from the script process"
                    ))
                }
            }
        }
    })();
    done.store(true, Ordering::Release);
    let _ = watchdog.join();
    drop(to_child);
    // It has answered (or died, or misbehaved): make sure it is gone.
    let _ = wait_or_kill(&mut child, Duration::from_secs(2));
    let status = child.wait().ok();
    let tail = stderr_tail.join().unwrap_or_default();
    match outcome {
        Ok(r) => r,
        Err(io) => {
            let killed = why_killed.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Err(fail(explain_death(killed, status, &tail, memory_mb, &io)))
        }
    }
}

/// Why the child ended without an answer, in the user's terms.
fn explain_death(
    killed: Option<String>,
    status: Option<std::process::ExitStatus>,
    stderr: &str,
    memory_mb: u64,
    io: &str,
) -> String {
    if let Some(k) = killed {
        return k;
    }
    if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
        return format!(
            "stopped: the script needed more than {memory_mb} MiB of memory (the limit per run; \
             SALESPULSE_SCRIPT_MEMORY_MB raises it)"
        );
    }
    if stderr.contains("overflowed its stack") {
        return "stopped: data nested too deep (the script's stack overflowed)".to_owned();
    }
    let status = status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(io);
    format!("the script's process ended unexpectedly ({status}): {last}")
}

fn wait_or_kill(child: &mut std::process::Child, grace: Duration) -> std::io::Result<()> {
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()
}

fn kill(pid: u32) {
    #[cfg(unix)]
    // SAFETY: a plain signal to our own child, which has not been reaped
    // yet (the parent waits for it only after this thread is joined).
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    #[cfg(not(unix))]
    {
        let _ = Command::new("taskkill")
            .args(["/F", "/PID", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The child's side of a frame call: asks the parent over stdout, reads the
/// answer on stdin.
struct Remote {
    pipes: Mutex<(std::io::Stdin, std::io::Stdout)>,
    /// When the run started, and its time limit.
    started: Instant,
    timeout: Duration,
}

impl Remote {
    fn call(&self, tag: u8, call: &Call) -> Result<DataFrame, String> {
        let body = serde_json::to_vec(call).map_err(|e| e.to_string())?;
        self.ask(tag, &body)?
            .ok_or_else(|| "unexpected answer: no frame".to_owned())
    }

    /// Sends one request; a frame, `None` (`N`: not pushed) or the error.
    fn ask(&self, tag: u8, body: &[u8]) -> Result<Option<DataFrame>, String> {
        // Checked here too: a loop of few, slow calls meets the clock at
        // the call's line rather than being killed without one.
        if self.started.elapsed() > self.timeout {
            return Err(format!(
                "stopped: ran longer than {:.1} s (the limit per run)",
                self.timeout.as_secs_f64()
            ));
        }
        let mut pipes = self.pipes.lock().unwrap_or_else(|p| p.into_inner());
        let (input, output) = &mut *pipes;
        write_msg(&mut output.lock(), tag, body).map_err(|e| e.to_string())?;
        match read_msg(&mut input.lock(), MAX_MESSAGE).map_err(|e| e.to_string())? {
            (b'F', bytes) => crate::cache::decode(&bytes)
                .map(Some)
                .map_err(|e| e.to_string()),
            (b'N', _) => Ok(None),
            (b'X', text) => Err(String::from_utf8_lossy(&text).into_owned()),
            (other, _) => Err(format!("unexpected answer {other:?}")),
        }
    }
}

impl FrameSource for Remote {
    fn view(&self, name: &str, opts: &[(String, String)]) -> Result<DataFrame, String> {
        self.call(
            b'V',
            &Call {
                name: name.to_owned(),
                opts: opts.to_vec(),
                columns: None,
                limit: None,
            },
        )
    }

    fn table(
        &self,
        name: &str,
        opts: &[(String, String)],
        columns: Option<&[String]>,
        limit: Option<usize>,
    ) -> Result<DataFrame, String> {
        self.call(
            b'T',
            &Call {
                name: name.to_owned(),
                opts: opts.to_vec(),
                columns: columns.map(<[String]>::to_vec),
                limit,
            },
        )
    }

    fn table_schema(&self, name: &str, opts: &[(String, String)]) -> Result<Schema, String> {
        self.call(
            b'S',
            &Call {
                name: name.to_owned(),
                opts: opts.to_vec(),
                columns: None,
                limit: None,
            },
        )
        .map(|df| df.schema().as_ref().clone())
    }

    fn table_names(&self) -> Vec<&'static str> {
        TABLES.to_vec()
    }

    fn query(&self, q: &Pushed) -> Result<Option<DataFrame>, String> {
        let body = serde_json::to_vec(q).map_err(|e| e.to_string())?;
        self.ask(b'Q', &body)
    }
}

/// Caps this process's data segment (heap and anonymous maps, never above
/// the inherited hard limit), turns core dumps off, and (Linux) makes it
/// the first the kernel's OOM killer picks. Unix only; elsewhere the cap is
/// not applied.
fn limit_memory(memory_mb: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read or write the structs we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_DATA, &mut current) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let want = memory_mb.saturating_mul(1 << 20) as libc::rlim_t;
            let bytes = want.min(current.rlim_max);
            let data = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &data) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
        }
        #[cfg(target_os = "linux")]
        let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    }
    #[cfg(not(unix))]
    let _ = memory_mb;
    Ok(())
}

/// The child: reads one [`RunRequest`] on stdin, runs it, answers on
/// stdout. Returns when the run is answered; an abort ends the process,
/// which the parent reports.
pub fn serve_child() -> anyhow::Result<()> {
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let started = Instant::now();
    let (tag, body) = read_msg(&mut stdin.lock(), MAX_MESSAGE)?;
    anyhow::ensure!(tag == b'R', "expected a run request");
    let req: RunRequest = serde_json::from_slice(&body)?;
    let refuse = |why: String| -> anyhow::Result<()> {
        let e = ScriptError::new(&req.file, why);
        write_msg(
            &mut std::io::stdout().lock(),
            b'E',
            &serde_json::to_vec(&e)?,
        )?;
        Ok(())
    };
    if req.protocol != PROTOCOL {
        return refuse(format!(
            "the script process is another build ({}, this app {PROTOCOL}); set SALESPULSE_SCRIPT_HOST to this app's salespulse",
            req.protocol
        ));
    }
    if let Err(e) = limit_memory(req.memory_mb) {
        return refuse(format!("cannot cap the script's memory: {e}"));
    }
    let remote = Arc::new(Remote {
        pipes: Mutex::new((stdin, stdout)),
        started,
        timeout: super::metrics::sandbox().limits().timeout,
    });
    // On a thread with the stack an in-process run has (a blocking task's):
    // data nested too deep overflows it, which ends this process alone.
    let run = {
        let (remote, file, source) = (Arc::clone(&remote), req.file.clone(), req.source.clone());
        std::thread::Builder::new()
            .name("script".into())
            .stack_size(SCRIPT_STACK)
            .spawn(move || {
                Metric::compile(&file, &source).and_then(|m| {
                    let src: Arc<dyn FrameSource> = remote;
                    m.run(Some(src), None)
                })
            })?
    };
    let result = run
        .join()
        .unwrap_or_else(|_| Err(ScriptError::new(&req.file, "the script's thread panicked")));
    let mut pipes = remote.pipes.lock().unwrap_or_else(|p| p.into_inner());
    let out = &mut pipes.1;
    let encoded = result.and_then(|df| {
        let size = df.estimated_size();
        if size > MAX_RESULT_BYTES {
            return Err(ScriptError::new(
                &req.file,
                format!(
                    "the result is {} MiB (at most {} MiB); aggregate it or head() it",
                    size >> 20,
                    MAX_RESULT_BYTES >> 20
                ),
            ));
        }
        frame_bytes(&df).map_err(|e| ScriptError::new(&req.file, format!("the result: {e}")))
    });
    match encoded {
        Ok(bytes) if bytes.len() <= MAX_RESULT_BYTES => write_msg(&mut out.lock(), b'D', &bytes)?,
        Ok(bytes) => {
            let e = ScriptError::new(
                &req.file,
                format!(
                    "the result is {} MiB encoded (at most {} MiB)",
                    bytes.len() >> 20,
                    MAX_RESULT_BYTES >> 20
                ),
            );
            write_msg(&mut out.lock(), b'E', &serde_json::to_vec(&e)?)?;
        }
        Err(e) => write_msg(&mut out.lock(), b'E', &serde_json::to_vec(&e)?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_oversized_lengths_are_refused() {
        let mut buf = Vec::new();
        write_msg(&mut buf, b'T', b"{\"a\":1}").unwrap();
        let (tag, body) = read_msg(&mut buf.as_slice(), 100).unwrap();
        assert_eq!((tag, body.as_slice()), (b'T', &b"{\"a\":1}"[..]));
        let huge = [b'D', 0xff, 0xff, 0xff, 0xff];
        assert!(read_msg(&mut &huge[..], MAX_MESSAGE).is_err());
        assert!(read_msg(&mut &buf[..3], 100).is_err());
        assert!(read_msg(&mut buf.as_slice(), 3).is_err());
    }

    #[test]
    fn deaths_are_explained_in_the_users_terms() {
        let oom = explain_death(
            None,
            None,
            "memory allocation of 8589934592 bytes failed\n",
            512,
            "eof",
        );
        assert!(oom.contains("more than 512 MiB"), "{oom}");
        let deep = explain_death(
            None,
            None,
            "thread 'main' has overflowed its stack\n",
            512,
            "eof",
        );
        assert!(deep.contains("nested too deep"), "{deep}");
        let k = explain_death(Some("cancelled".into()), None, "", 512, "eof");
        assert_eq!(k, "cancelled");
    }
}
