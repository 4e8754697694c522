//! The shared test harness itself (tests/common): the roles, passwords and
//! pg_hba methods every other test relies on, and that the PostgreSQL a test
//! binary starts goes away with the test process, however it ends.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

/// Every test role, its password, and how the server stores it.
const ROLES: &[(&str, &str, &str)] = &[
    ("app", "app_password", "SCRAM-SHA-256$"),
    ("md5user", "md5_password", "md5"),
    ("scramuser", "scram_password", "SCRAM-SHA-256$"),
    ("other", "other_password", "SCRAM-SHA-256$"),
    ("trustuser", "trust_password", "SCRAM-SHA-256$"),
    ("clearuser", "clear_password", "SCRAM-SHA-256$"),
];

fn url(user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname=appdb connect_timeout=10",
        common::shared_pg().port
    )
}

#[tokio::test]
async fn every_test_role_logs_in_to_appdb_over_tcp() {
    let port = common::shared_pg().port;
    for (user, password, _) in ROLES {
        let c = common::pg_client(port, user, password, "appdb").await;
        let row = c
            .query_one("SELECT current_user::text, 1::int", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), *user);
        assert_eq!(row.get::<_, i32>(1), 1);
    }
    let su = common::pg_client(port, "postgres", "postgres", "postgres").await;
    su.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_28p01_except_under_trust() {
    for (user, _, _) in ROLES {
        let r = tokio_postgres::connect(&url(user, "wrong"), tokio_postgres::NoTls).await;
        if *user == "trustuser" {
            assert!(r.is_ok(), "trustuser logs in whatever the password");
            continue;
        }
        let e = match r {
            Ok(_) => panic!("{user} logged in with a wrong password"),
            Err(e) => e,
        };
        assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{user}: {e}");
    }
}

#[tokio::test]
async fn passwords_are_stored_as_md5_or_scram_as_named() {
    let su = common::pg_client(common::shared_pg().port, "postgres", "postgres", "postgres").await;
    for (user, _, prefix) in ROLES {
        let secret: String = su
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[user],
            )
            .await
            .unwrap()
            .get(0);
        assert!(secret.starts_with(prefix), "{user}: {secret}");
    }
}

// --- The server goes away with its test process ---------------------------
//
// The parent test runs this same binary again, filtered to this module's
// `child_server` alone, with PGKEEL_HARNESS_CHILD naming a file: the child starts its shared
// PostgreSQL, writes the server's directory there, and then either returns
// (a normal exit) or sleeps until the parent SIGKILLs it (a crash, a timeout).

const CHILD_ENV: &str = "PGKEEL_HARNESS_CHILD";

#[test]
fn child_server() {
    let Ok(out) = std::env::var(CHILD_ENV) else {
        return; // Only does something when run by the tests below.
    };
    let pg = common::shared_pg();
    std::fs::write(format!("{out}.tmp"), pg.dir.to_string_lossy().as_bytes()).unwrap();
    std::fs::rename(format!("{out}.tmp"), &out).unwrap();
    if std::env::var("PGKEEL_HARNESS_CHILD_HANG").is_ok() {
        // Until the parent kills it.
        loop {
            std::thread::park();
        }
    }
}

/// Pids whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn server_dies_with_its_process(hang: bool) {
    let out = std::env::temp_dir().join(format!(
        "pgkeel-harness-child-{}-{}",
        std::process::id(),
        hang
    ));
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    // The test's name in the binary: its module path without the crate's.
    let (_crate, module) = module_path!().split_once("::").unwrap();
    cmd.args([
        &format!("{module}::child_server"),
        "--exact",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, &out)
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    if hang {
        cmd.env("PGKEEL_HARNESS_CHILD_HANG", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let dir: PathBuf = loop {
        if let Ok(d) = std::fs::read_to_string(&out) {
            break d.into();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited ({status}) before its server was up");
        }
        assert!(
            Instant::now() < deadline,
            "the child's server never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_file(&out);
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    if hang {
        // (A child that returns may be gone, its server with it, by now.)
        assert!(
            !processes_mentioning(data).is_empty(),
            "the child's postgres runs while the child lives"
        );
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    assert!(hang || status.success(), "child: {status}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_mentioning(data).is_empty() {
        assert!(
            Instant::now() < deadline,
            "postgres for {data} still runs 20 s after its test process ended: {:?}",
            processes_mentioning(data)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The directory stays until a later test process cleans up after the dead one.
    common::remove_stale_dirs();
    assert!(
        !Path::new(&dir).exists(),
        "{} was not removed",
        dir.display()
    );
}

#[test]
fn the_server_stops_when_its_test_process_exits() {
    server_dies_with_its_process(false);
}

#[test]
fn the_server_stops_when_its_test_process_is_killed() {
    server_dies_with_its_process(true);
}
