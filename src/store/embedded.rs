//! A private PostgreSQL cluster for the embedded defaults, made with the
//! machine's own `initdb` and `pg_ctl` under the user's data directory.
//!
//! The cluster is private: its single role `salespulse` authenticates with
//! SCRAM-SHA-256 and a random password kept beside the cluster in
//! `postgres.password` (mode 0600, readable by the user only), TCP listens
//! on 127.0.0.1 only, and the Unix socket lives in the cluster's own 0700
//! folder. Nobody else on the machine can connect, as any role. A cluster
//! made by an older version with trust authentication is converted on its
//! next start. It keeps running after the process exits so that later runs
//! (and other salespulse processes of the same user) share it. Stop it with
//! `pg_ctl stop -D <data dir>`; `salespulse doctor` prints the path.
//!
//! PostgreSQL refuses to run as root; when started by root, its commands run
//! as the `postgres` system user (through `runuser`), and without an explicit
//! data directory the cluster lives in `/var/lib/salespulse/postgres`.
//! Paths with spaces (macOS's `Application Support`) work: no path goes
//! through a shell.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{create_database_if_missing, StoreError};

const ROLE: &str = "salespulse";
const DATABASE: &str = "salespulse";

/// A running private cluster, as made or found by [`EmbeddedPostgres::ensure`].
#[derive(Clone, Debug)]
pub struct EmbeddedPostgres {
    /// URL of database `salespulse` on it, with the role's password in it: redact
    /// before printing.
    pub url: String,
    /// The cluster's data directory (what `pg_ctl -D` takes).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1 the server listens on; that of an already running
    /// cluster when it differs from the one asked for.
    pub port: u16,
}

fn exe(name: &str) -> String {
    if cfg!(windows) {
        format!("{name}.exe")
    } else {
        name.to_owned()
    }
}

fn has_initdb(dir: &Path) -> bool {
    dir.join(exe("initdb")).is_file() && dir.join(exe("pg_ctl")).is_file()
}

fn version_key(p: &Path) -> Vec<u32> {
    p.components()
        .filter_map(|c| c.as_os_str().to_str())
        .flat_map(|s| s.split(|ch: char| !ch.is_ascii_digit()))
        .filter_map(|d| d.parse().ok())
        .collect()
}

/// Finds the directory holding `initdb` and `pg_ctl`: `SALESPULSE_PG_BIN`,
/// then `PATH`, then the usual install locations on Debian/Ubuntu, Fedora,
/// macOS (Homebrew, Postgres.app) and Windows (EDB installer); newest first.
pub(crate) fn find_pg_bin_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SALESPULSE_PG_BIN").map(PathBuf::from) {
        return has_initdb(&p).then_some(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path).find(|d| has_initdb(d)) {
            return Some(p);
        }
    }
    let patterns: &[(&str, &str)] = &[
        ("/usr/lib/postgresql", "bin"),
        ("/usr/pgsql", ""),
        ("/opt/homebrew/opt", "bin"),
        ("/usr/local/opt", "bin"),
        ("/Applications/Postgres.app/Contents/Versions", "bin"),
        ("C:\\Program Files\\PostgreSQL", "bin"),
    ];
    let mut found: Vec<PathBuf> = Vec::new();
    for (root, sub) in patterns {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if root.ends_with("opt") && !name.starts_with("postgresql") {
                continue;
            }
            let dir = if sub.is_empty() {
                e.path().join("bin")
            } else {
                e.path().join(sub)
            };
            if has_initdb(&dir) {
                found.push(dir);
            }
        }
    }
    for fixed in ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"] {
        let p = PathBuf::from(fixed);
        if has_initdb(&p) {
            found.push(p);
        }
    }
    found.sort_by_key(|p| version_key(p));
    found.pop()
}

#[cfg(unix)]
#[allow(unsafe_code)] // geteuid has no preconditions
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root.
fn run(bin: &Path, tool: &str, args: &[&str]) -> Result<std::process::Output, StoreError> {
    let program = bin.join(exe(tool));
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&program);
        c
    } else {
        Command::new(&program)
    };
    cmd.args(args)
        .output()
        .map_err(|e| StoreError::Embedded(format!("cannot run {}: {e}", program.display())))
}

fn ok_or_explain(
    out: std::process::Output,
    what: &str,
    log: Option<&Path>,
) -> Result<(), StoreError> {
    if out.status.success() {
        return Ok(());
    }
    let mut msg = format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    if let Some(tail) = log.and_then(|l| std::fs::read_to_string(l).ok()) {
        let lines: Vec<&str> = tail.lines().collect();
        let from = lines.len().saturating_sub(8);
        msg.push_str("\nserver log:\n");
        msg.push_str(&lines.get(from..).unwrap_or_default().join("\n"));
    }
    Err(StoreError::Embedded(msg))
}

/// Where the password of a cluster's role is kept: beside the cluster
/// folder (initdb wants an empty folder), `<data root>/postgres.password`.
fn password_path(cluster: &Path) -> PathBuf {
    cluster.with_extension("password")
}

/// The role's password, created (random, 0600) when missing. As root the
/// file belongs to `postgres`, whose `initdb` reads it.
fn ensure_password(cluster: &Path) -> Result<String, StoreError> {
    let path = password_path(cluster);
    let err = |e: std::io::Error| StoreError::Embedded(format!("{}: {e}", path.display()));
    if let Ok(p) = std::fs::read_to_string(&path) {
        let p = p.trim().to_owned();
        if p.len() >= 16 && p.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Ok(p);
        }
        return Err(StoreError::Embedded(format!(
            "{} is not a password this program wrote; delete it to make a new one",
            path.display()
        )));
    }
    use rand::Rng;
    let pw: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    // Written aside, then linked into place: another process starting at
    // the same moment reads a whole password or makes its own first.
    let tmp = path.with_extension(format!("password.{}", rand::random::<u64>()));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    {
        use std::io::Write;
        let mut f = o.open(&tmp).map_err(err)?;
        f.write_all(pw.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    if is_root() {
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&tmp)
            .status()
            .map_err(|e| StoreError::Embedded(format!("chown: {e}")))?;
        if !st.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::Embedded(format!(
                "chown postgres {} failed",
                tmp.display()
            )));
        }
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(pw),
        // Another process was first: use its password.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&path)
            .map(|p| p.trim().to_owned())
            .map_err(err),
        Err(e) => Err(err(e)),
    }
}

/// A setting value quoted for postgresql.conf.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Writes the settings that keep the cluster private into
/// `salespulse.conf`, included from `postgresql.conf`.
fn write_private_conf(dir: &Path) -> Result<(), StoreError> {
    let err = |e: std::io::Error| StoreError::Embedded(format!("{}: {e}", dir.display()));
    let mut conf = String::from(
        "# Written by salespulse on every start; changes here are overwritten.\n\
         listen_addresses = '127.0.0.1'\n\
         password_encryption = 'scram-sha-256'\n",
    );
    if cfg!(unix) {
        conf.push_str(&format!(
            "unix_socket_directories = {}\nunix_socket_permissions = 0700\n",
            conf_quote(&dir.to_string_lossy())
        ));
    }
    std::fs::write(dir.join("salespulse.conf"), conf).map_err(err)?;
    let main = dir.join("postgresql.conf");
    let text = std::fs::read_to_string(&main).map_err(err)?;
    let include = "include_if_exists = 'salespulse.conf'";
    if !text.lines().any(|l| l.trim() == include) {
        std::fs::write(&main, format!("{text}\n{include}\n")).map_err(err)?;
    }
    Ok(())
}

/// Whether `pg_hba.conf` lets anyone in without a password.
fn trusts(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("pg_hba.conf")).is_ok_and(|t| {
        t.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .any(|l| l.split_whitespace().any(|w| w == "trust"))
    })
}

/// pg_hba.conf of a private cluster: the role, by password, locally only.
fn write_hba(dir: &Path) -> Result<(), StoreError> {
    let hba = format!(
        "# Written by salespulse: only the {ROLE} role, with its password.\n\
         local all {ROLE} scram-sha-256\n\
         host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
    );
    std::fs::write(dir.join("pg_hba.conf"), hba)
        .map_err(|e| StoreError::Embedded(format!("{}: {e}", dir.display())))
}

/// The port a running cluster listens on, from its `postmaster.pid`.
fn running_port(data_dir: &Path) -> Option<u16> {
    let pid = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    pid.lines().nth(3)?.trim().parse().ok()
}

impl EmbeddedPostgres {
    /// Where the cluster lives: `<data root>/postgres`. As root with no
    /// explicit data root, `/var/lib/salespulse/postgres` (the `postgres`
    /// user cannot enter root's home).
    pub(crate) fn cluster_dir(data_root: Option<&Path>) -> PathBuf {
        match data_root {
            Some(d) => d.join("postgres"),
            None if is_root() => PathBuf::from("/var/lib/salespulse/postgres"),
            None => crate::config::default_data_dir().join("postgres"),
        }
    }

    /// Stops the cluster (fast shutdown). Other processes using it lose
    /// their connections.
    pub fn stop(&self) -> Result<(), StoreError> {
        let bin =
            find_pg_bin_dir().ok_or_else(|| StoreError::Embedded("pg_ctl not found".into()))?;
        let dir = self.data_dir.to_string_lossy().into_owned();
        let out = run(&bin, "pg_ctl", &["stop", "-D", &dir, "-m", "fast", "-w"])?;
        ok_or_explain(out, "pg_ctl stop", None)
    }

    /// Starts the cluster again after [`EmbeddedPostgres::stop`], on the
    /// same port, and waits until it accepts connections.
    pub(crate) fn start_again(&self) -> Result<(), StoreError> {
        let bin =
            find_pg_bin_dir().ok_or_else(|| StoreError::Embedded("pg_ctl not found".into()))?;
        Self::start(&bin, &self.data_dir, self.port)
    }

    /// Restarts the cluster with `pg_ctl restart -m <mode>` (`fast`: clients
    /// are disconnected and the server shuts down cleanly; `immediate`: it
    /// is aborted, and recovers from its WAL on start). Waits until it
    /// accepts connections again.
    pub fn restart(&self, mode: &str) -> Result<(), StoreError> {
        let bin =
            find_pg_bin_dir().ok_or_else(|| StoreError::Embedded("pg_ctl not found".into()))?;
        let dir = self.data_dir.to_string_lossy().into_owned();
        let log = self.data_dir.join("server.log");
        let log_s = log.to_string_lossy().into_owned();
        let out = run(
            &bin,
            "pg_ctl",
            &[
                "restart", "-D", &dir, "-m", mode, "-w", "-t", "60", "-l", &log_s,
            ],
        )?;
        ok_or_explain(out, "pg_ctl restart", Some(&log))
    }

    /// Initializes (first time) and starts (when stopped) the private cluster,
    /// then makes sure database `salespulse` exists.
    pub async fn ensure(data_root: Option<&Path>, port: u16) -> Result<Self, StoreError> {
        let data_root = data_root.map(Path::to_path_buf);
        let (data_dir, port) =
            tokio::task::spawn_blocking(move || Self::ensure_running(data_root.as_deref(), port))
                .await
                .map_err(|e| StoreError::Embedded(e.to_string()))??;
        let pw = ensure_password(&data_dir)?;
        let server = format!("postgres://{ROLE}:{pw}@127.0.0.1:{port}/postgres");
        create_database_if_missing(&server, DATABASE).await?;
        Ok(Self {
            url: format!("postgres://{ROLE}:{pw}@127.0.0.1:{port}/{DATABASE}"),
            data_dir,
            port,
        })
    }

    fn ensure_running(data_root: Option<&Path>, port: u16) -> Result<(PathBuf, u16), StoreError> {
        let bin = find_pg_bin_dir().ok_or_else(|| {
            StoreError::Embedded(
                "PostgreSQL server programs (initdb, pg_ctl) not found. Install PostgreSQL \
                 (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16; \
                 Windows: the EDB installer), set SALESPULSE_PG_BIN to its bin directory, \
                 or set DATABASE_URL to use an existing server."
                    .into(),
            )
        })?;
        let dir = Self::cluster_dir(data_root);
        let dir_s = dir.to_string_lossy().into_owned();
        if !dir.join("PG_VERSION").is_file() {
            std::fs::create_dir_all(&dir).map_err(|e| {
                StoreError::Embedded(format!("cannot create {}: {e}", dir.display()))
            })?;
            if is_root() {
                // The postgres user must also be able to traverse every parent
                // directory; we do not loosen permissions on them.
                let st = Command::new("chown")
                    .args(["-R", "postgres:postgres", &dir_s])
                    .status()
                    .map_err(|e| StoreError::Embedded(format!("chown: {e}")))?;
                if !st.success() {
                    return Err(StoreError::Embedded(format!(
                        "chown postgres {dir_s} failed"
                    )));
                }
            }
            tracing::info!(dir = %dir.display(), "initializing embedded PostgreSQL cluster");
            ensure_password(&dir)?;
            let pwfile = password_path(&dir).to_string_lossy().into_owned();
            let out = run(
                &bin,
                "initdb",
                &[
                    "-D",
                    &dir_s,
                    "-U",
                    ROLE,
                    "-A",
                    "scram-sha-256",
                    "--pwfile",
                    &pwfile,
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
            )?;
            ok_or_explain(out, "initdb", None)?;
            write_hba(&dir)?;
        }
        write_private_conf(&dir)?;
        let status = run(&bin, "pg_ctl", &["status", "-D", &dir_s])?;
        if status.status.success() && trusts(&dir) {
            // Made by an older version and running: set the password while
            // trust still lets us in, then close the door.
            Self::convert_from_trust(&bin, &dir, running_port(&dir).unwrap_or(port))?;
        }
        if !status.status.success() {
            if trusts(&dir) {
                // Stopped, made by an older version: start it first (trust),
                // then convert.
                Self::start(&bin, &dir, port)?;
                Self::convert_from_trust(&bin, &dir, running_port(&dir).unwrap_or(port))?;
            } else {
                Self::start(&bin, &dir, port)?;
            }
        }
        let port = running_port(&dir).unwrap_or(port);
        Ok((dir, port))
    }

    /// Sets the role's password through a trust connection, rewrites
    /// pg_hba.conf for passwords only, and reloads.
    fn convert_from_trust(bin: &Path, dir: &Path, port: u16) -> Result<(), StoreError> {
        tracing::info!(dir = %dir.display(), "embedded PostgreSQL: replacing trust with a password");
        let pw = ensure_password(dir)?;
        // Through the driver, not psql: an error must never echo the
        // statement with the password in it. (We run on a blocking thread
        // of the runtime.)
        let url = format!("postgres://{ROLE}@127.0.0.1:{port}/postgres");
        // The password is alphanumeric: safe inside the literal.
        let sql =
            format!("SET password_encryption = 'scram-sha-256'; ALTER ROLE {ROLE} PASSWORD '{pw}'");
        let set = async {
            use sqlx::{ConnectOptions, Connection};
            // No statement logging: the statement holds the password.
            let opts = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&url)?
                .disable_statement_logging();
            let mut c = sqlx::PgConnection::connect_with(&opts).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await?;
            c.close().await
        };
        tokio::runtime::Handle::current()
            .block_on(set)
            .map_err(|e| {
                StoreError::Embedded(format!(
                    "setting the embedded role's password: {}",
                    crate::config::redact_url(&e.to_string())
                ))
            })?;
        write_hba(dir)?;
        let dir_s = dir.to_string_lossy().into_owned();
        let out = run(bin, "pg_ctl", &["reload", "-D", &dir_s])?;
        ok_or_explain(out, "pg_ctl reload", None)
    }

    fn start(bin: &Path, dir: &Path, port: u16) -> Result<(), StoreError> {
        let dir_s = dir.to_string_lossy().into_owned();
        {
            let log = dir.join("server.log");
            let log_s = log.to_string_lossy().into_owned();
            // Only the port here: pg_ctl hands -o to a shell. Everything
            // with a path is in salespulse.conf.
            let opts = format!("-p {port}");
            tracing::info!(dir = %dir.display(), port, "starting embedded PostgreSQL");
            let out = run(
                bin,
                "pg_ctl",
                &[
                    "start", "-D", &dir_s, "-w", "-t", "60", "-l", &log_s, "-o", &opts,
                ],
            )?;
            ok_or_explain(out, "pg_ctl start", Some(&log)).map_err(|e| {
                StoreError::Embedded(format!(
                    "{e}\n(is port {port} taken? set SALESPULSE_PG_PORT to another port)"
                ))
            })?;
        }
        Ok(())
    }
}
