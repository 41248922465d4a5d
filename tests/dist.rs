//! Distribution: the container image and compose services (checked by
//! parsing, since no container engine runs here), and the Linux package
//! built from the release binary, unpacked into a scratch root and launched
//! under Xvfb.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn salespulse() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_salespulse"))
}

/// docker-compose.yml as JSON, read by PyYAML (an independent YAML parser
/// that also resolves the `<<` merge keys compose uses).
fn compose() -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(repo().join("docker-compose.yml"))
        .output()
        .expect("python3 runs (scripts/setup --test installs it)");
    assert!(
        out.status.success(),
        "PyYAML could not read docker-compose.yml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Compose's interpolation of `${VAR}`, `${VAR:-default}` and
/// `${VAR:?message}`: variables from `vars`, a required one that is unset
/// is an error (as `docker compose` refuses to start).
fn interpolate(s: &str, vars: &BTreeMap<&str, &str>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find('}')
            .ok_or(format!("unclosed ${{ in {s:?}"))?
            + i;
        let expr = &rest[i + 2..end];
        let (name, value) = if let Some((n, d)) = expr.split_once(":-") {
            (n, Some(vars.get(n).copied().unwrap_or(d).to_owned()))
        } else if let Some((n, m)) = expr.split_once(":?") {
            (
                n,
                Some(
                    vars.get(n)
                        .ok_or(format!("{n} is required: {m}"))?
                        .to_string(),
                ),
            )
        } else {
            (expr, vars.get(expr).map(|v| v.to_string()))
        };
        out.push_str(&value.ok_or(format!("{name} is unset"))?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn env_of(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// The text of the code that reads salespulse's environment: the
/// configuration, the API's token and the binary's log filter.
fn source_text() -> String {
    [
        "src/config.rs",
        "src/api/mod.rs",
        "src/bin/salespulse/main.rs",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(repo().join(f)).unwrap())
    .collect()
}

const SALESPULSE_SERVICES: [&str; 3] = ["shop", "ingest", "api"];

#[test]
fn the_compose_file_runs_api_and_scalable_ingest_beside_the_engines() {
    let doc = compose();
    let services = doc["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["kafka", "postgres", "redis", "shop", "ingest", "api"])
    );

    // Engines: pinned images (a tag, not `latest`).
    for engine in ["kafka", "postgres", "redis"] {
        let image = services[engine]["image"].as_str().unwrap();
        let (_, tag) = image.split_once(':').expect("a tag");
        assert_ne!(tag, "latest", "{engine} image {image} is not pinned");
    }

    // Every service has a healthcheck with a command.
    for (name, s) in services {
        let test = strings(&s["healthcheck"]["test"]);
        assert!(
            test.len() >= 2 && ["CMD", "CMD-SHELL"].contains(&test[0].as_str()),
            "{name}: healthcheck {test:?}"
        );
    }

    // Every published port is on loopback only.
    for (name, s) in services {
        for p in strings(&s["ports"]) {
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name} publishes {p} beyond loopback"
            );
        }
    }

    let kafka = env_of(&services["kafka"]);
    let advertised: Vec<&str> = kafka["KAFKA_ADVERTISED_LISTENERS"].split(',').collect();
    let postgres = env_of(&services["postgres"]);
    let known = source_text();
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();

    // The secrets a user sets in the environment (compose refuses to start
    // without them); the values here stand in for theirs.
    let vars = BTreeMap::from([
        ("POSTGRES_PASSWORD", "pw-from-env"),
        ("SALESPULSE_API_TOKEN", "token-from-env"),
    ]);
    let pg_password = interpolate(&postgres["POSTGRES_PASSWORD"], &vars).unwrap();
    assert_eq!(
        pg_password, "pw-from-env",
        "the PostgreSQL password is not in the file"
    );
    assert!(
        interpolate(&postgres["POSTGRES_PASSWORD"], &BTreeMap::new()).is_err(),
        "without POSTGRES_PASSWORD compose must refuse to start"
    );
    assert!(postgres["POSTGRES_INITDB_ARGS"].contains("--auth-host=scram-sha-256"));

    for name in SALESPULSE_SERVICES {
        let s = &services[name];
        assert_eq!(s["build"]["context"], ".", "{name}");
        assert_eq!(s["build"]["dockerfile"], "Dockerfile", "{name}");
        assert!(
            s["image"].as_str().unwrap().starts_with("salespulse:"),
            "{name}"
        );
        for dep in ["kafka", "postgres", "redis"] {
            assert_eq!(
                s["depends_on"][dep]["condition"], "service_healthy",
                "{name} must wait for a healthy {dep}"
            );
        }

        let env = env_of(s);
        for (k, v) in &env {
            // A variable salespulse reads (the config's names, the log filter).
            assert!(
                known.contains(&format!("\"{k}\"")),
                "{name} sets {k}, which salespulse does not read"
            );
            // No secret written in the file.
            if k.contains("PASSWORD") || k.contains("TOKEN") {
                assert!(
                    v.starts_with("${") && v.ends_with('}') && v.contains(":?"),
                    "{name}: {k} must come from the environment, not the file"
                );
            }
        }
        let brokers = &env["KAFKA_BROKERS"];
        assert!(
            advertised.iter().any(|l| l.ends_with(&format!("://{brokers}"))),
            "{name}: KAFKA_BROKERS={brokers} is none of kafka's advertised listeners {advertised:?}"
        );
        assert!(brokers.starts_with("kafka:"));
        let db = url::Url::parse(&interpolate(&env["DATABASE_URL"], &vars).unwrap()).unwrap();
        assert_eq!(db.host_str(), Some("postgres"), "{name}");
        assert_eq!(db.username(), postgres["POSTGRES_USER"], "{name}");
        assert_eq!(db.password(), Some(pg_password.as_str()), "{name}");
        assert_eq!(db.path(), format!("/{}", postgres["POSTGRES_DB"]), "{name}");
        let redis = url::Url::parse(&env["REDIS_URL"]).unwrap();
        assert_eq!(redis.host_str(), Some("redis"), "{name}");

        // The command is one the binary accepts.
        let command: Vec<String> = strings(&s["command"])
            .iter()
            .map(|a| interpolate(a, &vars).unwrap())
            .collect();
        let help = Command::new(salespulse())
            .args(&command)
            .arg("--help")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(
            help.status.success(),
            "{name}: `salespulse {}` is not a command: {}",
            command.join(" "),
            String::from_utf8_lossy(&help.stderr)
        );

        // The healthcheck's program is in the runtime image.
        let test = strings(&s["healthcheck"]["test"]);
        let program = &test[1];
        assert!(
            program == "salespulse" || runtime.contains(&format!(" {program} ")),
            "{name}: healthcheck runs {program}, which the runtime image lacks"
        );
    }

    // Ingest scales: no fixed container name, no host port.
    let ingest = &services["ingest"];
    assert!(ingest.get("container_name").is_none());
    assert!(ingest.get("ports").is_none());
    assert_eq!(strings(&ingest["command"])[0], "ingest");
    // The topic has room for several workers.
    let partitions: u32 = env_of(ingest)["SALESPULSE_PARTITIONS"].parse().unwrap();
    assert!(partitions >= 4);

    // The API: bound to every interface in its container, so it needs the
    // token (the server refuses otherwise), published on the port it binds,
    // checked on the port it binds.
    let api = &services["api"];
    let command = strings(&api["command"]);
    let bind = command
        .iter()
        .position(|a| a == "--bind")
        .map(|i| command[i + 1].clone())
        .unwrap();
    let port = bind.rsplit_once(':').unwrap().1;
    assert!(bind.starts_with("0.0.0.0:"));
    assert!(env_of(api).contains_key("SALESPULSE_API_TOKEN"));
    assert!(strings(&api["ports"])
        .iter()
        .any(|p| p.ends_with(&format!(":{port}"))));
    assert!(strings(&api["healthcheck"]["test"])
        .iter()
        .any(|a| a.contains(&format!("127.0.0.1:{port}/health"))));
}

/// The package owning a shared library, by `dpkg -S` (trying the `/usr`
/// form of a merged-/usr path too).
fn package_of(lib: &str) -> Option<String> {
    let real = std::fs::canonicalize(lib).map(|p| p.display().to_string());
    let mut candidates = vec![lib.to_owned()];
    if let Some(rest) = lib.strip_prefix("/lib") {
        candidates.push(format!("/usr/lib{rest}"));
    }
    if let Some(rest) = lib.strip_prefix("/usr/lib") {
        candidates.push(format!("/lib{rest}"));
    }
    candidates.extend(real);
    candidates.into_iter().find_map(|p| {
        let out = Command::new("dpkg").args(["-S", &p]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next()?;
        let pkg = line.split(':').next()?.trim();
        (out.status.success() && !pkg.is_empty()).then(|| pkg.to_owned())
    })
}

#[test]
fn the_dockerfile_builds_dist_in_two_stages_and_its_runtime_has_every_linked_library() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(text.starts_with("# syntax=docker/dockerfile:1\n"));
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    let (build_image, stage) = froms[0].split_once(" AS ").unwrap();
    assert_eq!(stage.trim(), "build");
    // The build image's Rust is at least the crate's rust-version.
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let tag = build_image.strip_prefix("rust:").unwrap();
    assert!(
        tag.starts_with(msrv),
        "build image {build_image}, rust-version {msrv}"
    );
    let runtime_image = froms[1].split_whitespace().next().unwrap();
    assert!(runtime_image.ends_with("-slim"), "{runtime_image}");
    // Both stages on the same Debian release (the same OpenSSL).
    let release = runtime_image
        .trim_start_matches("debian:")
        .trim_end_matches("-slim");
    assert!(build_image.ends_with(&format!("-slim-{release}")));
    assert!(text.contains("cargo build --locked --profile dist --bin salespulse"));
    assert!(manifest.contains("[profile.dist]"));
    assert!(text.contains("cp target/dist/salespulse /usr/local/bin/salespulse"));
    assert!(text.contains("COPY --from=build /usr/local/bin/salespulse /usr/local/bin/salespulse"));
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/salespulse\"]"));
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage runs as a user");
    assert_ne!(user.trim(), "root");
    // The build context leaves the build folder and history out.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target/"));
    assert!(ignore.lines().any(|l| l == ".git/"));

    // Every shared library the binary links comes from a package the
    // runtime stage installs, or from one every debian:*-slim image has.
    let installed: BTreeSet<&str> = runtime
        .split("apt-get install -y --no-install-recommends")
        .nth(1)
        .unwrap()
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| *w != "\\")
        .collect();
    let base = BTreeSet::from(["libc6", "libgcc-s1", "libstdc++6", "zlib1g"]);
    let ldd = Command::new("ldd").arg(salespulse()).output().unwrap();
    assert!(ldd.status.success());
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned();
    let mut needed = BTreeSet::new();
    for line in ldd.lines() {
        let Some((_, rest)) = line.split_once("=> ") else {
            continue;
        };
        let path = rest.split_whitespace().next().unwrap();
        if !path.starts_with('/') {
            continue;
        }
        let pkg = package_of(path).unwrap_or_else(|| panic!("no package owns {path}"));
        needed.insert(pkg);
    }
    assert!(
        needed.iter().any(|p| p.starts_with("libssl")),
        "librdkafka links the system OpenSSL: {needed:?}"
    );
    for pkg in &needed {
        assert!(
            installed.contains(pkg.as_str()) || base.contains(pkg.as_str()),
            "the binary links a library of {pkg}, which the runtime stage does not install \
             (installs {installed:?})\n{ldd}"
        );
    }
}

/// `dpkg-deb --field` of a package.
fn deb_field(deb: &Path, field: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .arg(field)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A child process killed (and reaped) on drop, a failed assertion too.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private X server on a free display; killed on drop.
struct Xvfb(std::process::Child, String);

impl Xvfb {
    fn start() -> Self {
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb runs (scripts/setup --test installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let n: u32 = line.trim().parse().expect("Xvfb prints its display");
        Self(child, format!(":{n}"))
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linux_package_installs_into_a_scratch_root_and_opens_its_window() {
    let tmp = tempfile::tempdir().unwrap();
    // The release build this test runs beside: <target>/release/salespulse.
    let target = salespulse()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    let out = Command::new("cargo")
        .args(["deb", "--no-build", "--fast", "--output"])
        .arg(tmp.path())
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo deb failed (scripts/setup --test installs cargo-deb): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");

    assert_eq!(deb_field(&deb, "Package"), "salespulse");
    let depends = deb_field(&deb, "Depends");
    assert!(
        depends.contains("libc6") && depends.contains("libssl3"),
        "Depends from the binary's libraries: {depends}"
    );
    // And the window's, which the binary loads at run time.
    for lib in ["libxkbcommon-x11-0", "libegl1", "libgl1", "libx11-6"] {
        assert!(depends.contains(lib), "Depends lacks {lib}: {depends}");
    }
    assert!(deb_field(&deb, "Recommends").contains("postgresql"));

    // Install into a scratch root.
    let root = tmp.path().join("root");
    let x = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .unwrap();
    assert!(x.success());
    let bin = root.join("usr/bin/salespulse");
    let desktop = root.join("usr/share/applications/salespulse.desktop");
    for f in [
        &bin,
        &desktop,
        &root.join("usr/share/icons/hicolor/scalable/apps/salespulse.svg"),
        &root.join("usr/share/icons/hicolor/256x256/apps/salespulse.png"),
    ] {
        assert!(f.is_file(), "{} is not in the package", f.display());
    }
    let validate = Command::new("desktop-file-validate")
        .arg(&desktop)
        .output()
        .expect("desktop-file-validate runs (scripts/setup --test installs it)");
    assert!(
        validate.status.success() && validate.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&validate.stdout)
    );
    let entry = std::fs::read_to_string(&desktop).unwrap();
    assert!(entry.lines().any(|l| l == "Exec=salespulse app"));
    assert!(entry.lines().any(|l| l == "Icon=salespulse"));
    assert!(entry.lines().any(|l| l == "StartupWMClass=salespulse"));
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));

    // Launch the installed app on a private X server, on a real database.
    let db = common::TestDb::new("deb").await;
    let xvfb = Xvfb::start();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let log = std::fs::File::create(tmp.path().join("app.log")).unwrap();
    let mut app = KillOnDrop(
        Command::new(&bin)
            .arg("app")
            .current_dir(&home)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_RUNTIME_DIR", &home)
            .env("DISPLAY", &xvfb.1)
            .env("LIBGL_ALWAYS_SOFTWARE", "1")
            .env("DATABASE_URL", &db.url)
            .env("REDIS_URL", common::redis_url())
            .env("SALESPULSE_AUTOSTART", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // The window appears with the desktop entry's class (StartupWMClass).
    let deadline = Instant::now() + Duration::from_secs(60);
    let window = loop {
        if let Some(status) = app.0.try_wait().unwrap() {
            panic!(
                "the app exited ({status}) before opening its window:\n{}",
                std::fs::read_to_string(tmp.path().join("app.log")).unwrap_or_default()
            );
        }
        let tree = Command::new("xwininfo")
            .args(["-root", "-tree"])
            .env("DISPLAY", &xvfb.1)
            .output()
            .expect("xwininfo runs (scripts/setup --test installs x11-utils)");
        let tree = String::from_utf8_lossy(&tree.stdout).into_owned();
        if let Some(line) = tree
            .lines()
            .find(|l| l.contains("\"salespulse\": (") && l.contains(" \"salespulse\")"))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no salespulse window after 60 s:\n{tree}\n{}",
            std::fs::read_to_string(tmp.path().join("app.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // At least the window's minimum size (1024x640).
    let (w, h) = window
        .split_whitespace()
        .filter(|t| !t.starts_with("0x"))
        .find_map(|t| {
            let size = t.split('+').next()?;
            let (w, h) = size.split_once('x')?;
            Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?))
        })
        .unwrap_or_else(|| panic!("no size in {window:?}"));
    assert!(w >= 1024 && h >= 640, "window {w}x{h}: {window}");
    // It keeps running (the backend connected behind it).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        app.0.try_wait().unwrap().is_none(),
        "the app exited after opening its window:\n{}",
        std::fs::read_to_string(tmp.path().join("app.log")).unwrap_or_default()
    );
    drop(app);
    drop(xvfb);
    db.drop().await;
}
