//! The deployment files in examples/, checked by the tools that will read
//! them: the systemd unit by `systemd-analyze verify` (pointed at the real
//! binary), the Keepalived configuration by `keepalived --config-test`.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;

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
