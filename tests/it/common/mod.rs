//! One real PostgreSQL 15 per test binary, started on a free loopback port
//! in a temporary directory, as the `postgres` user when running as root.
//!
//! Statics are never dropped, so the server is tied to the test process with
//! PR_SET_PDEATHSIG: it gets SIGINT (fast shutdown) when the process exits.
//! It is spawned from a thread that never ends, because the death signal
//! follows the spawning *thread*.
#![allow(dead_code)]

pub mod cluster;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
}

impl PgServer {
    pub fn superuser_url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password=postgres dbname=postgres",
            self.port
        )
    }
}

/// The `postgres` account's uid/gid when we must drop root, else `None`.
fn postgres_ids() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root needs a `postgres` user (apt-get install postgresql-15)"
    );
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

pub fn as_postgres(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = postgres_ids() {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    cmd
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn chown(path: &Path) {
    if let Some((uid, gid)) = postgres_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

pub fn shared_pg() -> &'static PgServer {
    static PG: OnceLock<PgServer> = OnceLock::new();
    // Its own thread: tests call this from inside a tokio runtime, and the
    // setup below runs one of its own.
    PG.get_or_init(|| {
        std::thread::spawn(start_pg)
            .join()
            .expect("PostgreSQL starts")
    })
}

/// Removes data directories left by earlier test processes that are gone.
/// A process's own directory stays after it exits (statics are never
/// dropped, and its server may still be shutting down); the next test
/// process to start a server removes it here.
pub fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pgkeel-test-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // ESRCH: no such process (EPERM would mean alive, but not ours).
        if unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A new cluster in `dir/data`, superuser `postgres` with password
/// `postgres`, `auth_host` for TCP logins (the caller writes its own
/// pg_hba.conf after); returns the data directory.
pub fn initdb(dir: &Path, auth_host: &str) -> PathBuf {
    let data = dir.join("data");
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, "postgres\n").unwrap();
    chown(&pwfile);
    let out = as_postgres(
        Command::new(format!("{BIN}/initdb"))
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C"])
            .arg(format!("--auth-host={auth_host}"))
            .arg("--auth-local=trust")
            .arg("--pwfile")
            .arg(&pwfile)
            .arg("-D")
            .arg(&data),
    )
    .output()
    .expect("initdb runs (apt-get install postgresql-15)");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    data
}

fn start_pg() -> PgServer {
    remove_stale_dirs();
    let dir = std::env::temp_dir().join(format!(
        "pgkeel-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    chown(&dir);
    let data = initdb(&dir, "md5");
    // Specific methods first so tests cover every server auth pgkeel must answer.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhost all trustuser 127.0.0.1/32 trust\nhost all clearuser 127.0.0.1/32 password\nhost all all 127.0.0.1/32 md5\n",
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
    chown(&dir.join("postgres.log"));
    let (tx, rx) = std::sync::mpsc::channel();
    let (d, sock) = (data.clone(), dir.clone());
    std::thread::spawn(move || {
        let mut cmd = Command::new(format!("{BIN}/postgres"));
        as_postgres(&mut cmd)
            .arg("-D")
            .arg(&d)
            .args([
                "-c",
                &format!("port={port}"),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
            ])
            .arg(format!("unix_socket_directories={}", sock.display()))
            .args([
                "-c",
                "max_connections=300",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "shared_buffers=64MB",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        unsafe {
            cmd.pre_exec(|| {
                // Runs after the uid switch, so the signal survives it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("postgres starts");
        tx.send(child.id()).unwrap();
        // This thread is the parent PDEATHSIG watches: it stays alive as long
        // as the server runs.
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    let _pid = rx.recv().unwrap();
    let server = PgServer { port, dir };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(&server.superuser_url(), tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    setup_roles(&c).await;
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!(
                    "PostgreSQL did not come up: {e}; see {}/postgres.log",
                    server.dir.display()
                ),
            }
        }
    });
    server
}

async fn setup_roles(c: &tokio_postgres::Client) {
    c.batch_execute(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE app LOGIN PASSWORD 'app_password';
         CREATE ROLE scramuser LOGIN PASSWORD 'scram_password';
         CREATE ROLE other LOGIN PASSWORD 'other_password';
         CREATE ROLE trustuser LOGIN PASSWORD 'trust_password';
         CREATE ROLE clearuser LOGIN PASSWORD 'clear_password';
         SET password_encryption = 'md5';
         CREATE ROLE md5user LOGIN PASSWORD 'md5_password';",
    )
    .await
    .expect("test roles");
    c.batch_execute("CREATE DATABASE appdb OWNER app")
        .await
        .expect("test database");
    c.batch_execute(
        "GRANT ALL ON DATABASE appdb TO scramuser, other, trustuser, clearuser, md5user",
    )
    .await
    .unwrap();
    let (c2, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres password=postgres dbname=appdb",
            c_port(c).await
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    c2.batch_execute("GRANT ALL ON SCHEMA public TO PUBLIC")
        .await
        .unwrap();
}

async fn c_port(c: &tokio_postgres::Client) -> u16 {
    let r = c
        .query_one("SELECT current_setting('port')::int", &[])
        .await
        .unwrap();
    r.get::<_, i32>(0) as u16
}

/// A direct connection to PostgreSQL (no proxy).
pub async fn pg_client(port: u16, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} password={password} dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("direct connection as {user}: {e}"));
    tokio::spawn(conn);
    c
}

/// A server process a test starts and stops. It is spawned from a thread
/// that waits for it, with PR_SET_PDEATHSIG: if the test process dies
/// without dropping it, the process still goes (the signal follows the
/// spawning thread, which lives exactly as long as the process).
pub struct TiedProcess {
    pid: i32,
    stop_signal: i32,
    exited: std::sync::Arc<std::sync::atomic::AtomicBool>,
    waiter: Option<std::thread::JoinHandle<()>>,
}

impl TiedProcess {
    /// Spawns `cmd`; `stop_signal` asks it to stop (SIGINT: PostgreSQL's fast
    /// shutdown; SIGTERM for etcd).
    pub fn spawn(mut cmd: Command, stop_signal: i32) -> TiedProcess {
        let name = cmd.get_program().to_string_lossy().into_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = exited.clone();
        let waiter = std::thread::spawn(move || {
            unsafe {
                cmd.pre_exec(move || {
                    // Runs after any uid switch, so the signal survives it.
                    libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal);
                    Ok(())
                });
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tx.send(Err(e)).unwrap();
                    return;
                }
            };
            tx.send(Ok(child.id())).unwrap();
            let _ = child.wait();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let pid = rx
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        TiedProcess {
            pid: pid as i32,
            stop_signal,
            exited,
            waiter: Some(waiter),
        }
    }

    pub fn running(&self) -> bool {
        !self.exited.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Asks the process to stop and waits until it has exited.
    pub fn stop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        // Only while unreaped: the pid cannot have been reused before that.
        if self.running() {
            unsafe { libc::kill(self.pid, self.stop_signal) };
        }
        let _ = waiter.join();
    }
}

impl Drop for TiedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A streaming replica of a `PgServer`, in its own temporary directory.
/// Dropping it stops the server and removes the directory.
pub struct Replica {
    pub port: u16,
    pub dir: PathBuf,
    process: TiedProcess,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Lets the `postgres` user open replication connections from loopback
/// without a password (once per server), and reloads the server.
fn allow_replication(primary: &PgServer) {
    const LINE: &str = "host replication all 127.0.0.1/32 trust\n";
    // Tests of one binary may start replicas at the same time.
    static EDIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = EDIT.lock().unwrap_or_else(|e| e.into_inner());
    let hba = primary.dir.join("data/pg_hba.conf");
    let text = std::fs::read_to_string(&hba).unwrap();
    if text.contains(LINE) {
        return;
    }
    std::fs::write(&hba, format!("{text}{LINE}")).unwrap();
    let out = as_postgres(
        Command::new(format!("{BIN}/pg_ctl"))
            .arg("reload")
            .arg("-D")
            .arg(primary.dir.join("data")),
    )
    .output()
    .expect("pg_ctl runs");
    assert!(
        out.status.success(),
        "pg_ctl reload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a streaming replica of `primary` (pg_basebackup -R) on a free
/// port; returns once it streams. Blocking: call it outside a runtime or
/// from a multi-thread runtime's worker.
pub fn start_replica(primary: &PgServer) -> Replica {
    allow_replication(primary);
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("pgkeel-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    chown(&dir);
    let data = dir.join("data");
    // The reload above is asynchronous: until the server has read the new
    // pg_hba.conf, the base backup is refused. Retry until it is not.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = std::fs::remove_dir_all(&data);
        let out = as_postgres(
            Command::new(format!("{BIN}/pg_basebackup"))
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
                .args(["-U", "postgres", "-R", "-X", "stream", "-c", "fast", "-N"])
                .arg("-D")
                .arg(&data),
        )
        .output()
        .expect("pg_basebackup runs");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
    chown(&dir.join("postgres.log"));
    let mut cmd = Command::new(format!("{BIN}/postgres"));
    as_postgres(&mut cmd)
        .arg("-D")
        .arg(&data)
        .args([
            "-c",
            &format!("port={port}"),
            "-c",
            "listen_addresses=127.0.0.1",
        ])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        // A hot standby needs at least the primary's max_connections.
        .args(["-c", "max_connections=300", "-c", "fsync=off"])
        .args(["-c", "shared_buffers=32MB"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let replica = Replica {
        port,
        dir,
        process: TiedProcess::spawn(cmd, libc::SIGINT),
    };
    let url = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=postgres connect_timeout=2"
    );
    // A runtime of its own, on a thread of its own: the caller may be
    // inside a runtime already.
    let streaming = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let status = c
                        .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
                        .await
                        .ok()
                        .flatten()
                        .map(|r| r.get::<_, String>(0));
                    if status.as_deref() == Some("streaming") {
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
    })
    .join()
    .unwrap();
    assert!(
        streaming,
        "the replica did not stream within 30 s; see {}/postgres.log",
        replica.dir.display()
    );
    replica
}

/// A single-node etcd on free loopback ports, in a temporary directory.
/// Dropping it stops it and removes the directory.
pub struct Etcd {
    pub port: u16,
    dir: PathBuf,
    process: TiedProcess,
}

impl Etcd {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops etcd now (the directory goes when it is dropped).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts etcd; returns once it answers a health check. Blocking.
pub fn start_etcd() -> Etcd {
    let (port, peer) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("pgkeel-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", "etcd1", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("etcd1={peer_url}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let etcd = Etcd {
        port,
        dir,
        process: TiedProcess::spawn(cmd, libc::SIGTERM),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &url, "endpoint", "health"])
            .output()
            .is_ok_and(|o| o.status.success());
        if healthy {
            return etcd;
        }
        assert!(
            etcd.process.running() && Instant::now() < deadline,
            "etcd did not start; see {}/etcd.log",
            etcd.dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A PostgreSQL of a test's own (for what the shared one must not see:
/// killed backends, crash restarts), in its own temporary directory, with
/// the shared server's superuser and an `app` role owning `appdb`.
/// Dropping it stops the server and removes the directory.
pub struct OwnPg {
    pub port: u16,
    pub dir: PathBuf,
    process: TiedProcess,
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts an `OwnPg` (md5 for TCP logins); returns once it takes queries.
/// Blocking, as `start_replica`.
pub fn start_own_pg() -> OwnPg {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("pgkeel-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    chown(&dir);
    let data = initdb(&dir, "md5");
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 md5\n",
    )
    .unwrap();
    let process = spawn_postgres(&dir, &data, port, &["fsync=off", "shared_buffers=16MB"]);
    let server = OwnPg {
        port,
        dir: dir.clone(),
        process,
    };
    psql_until_up(
        &dir,
        port,
        &[
            "CREATE ROLE app LOGIN PASSWORD 'app_password'",
            "CREATE DATABASE appdb OWNER app",
        ],
    );
    server
}

/// Starts PostgreSQL on `data`, listening on 127.0.0.1:`port` and on a Unix
/// socket in `dir` (its log: `dir/postgres.log`), with `settings`
/// (`name=value`), tied to this process.
pub fn spawn_postgres(dir: &Path, data: &Path, port: u16, settings: &[&str]) -> TiedProcess {
    let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
    chown(&dir.join("postgres.log"));
    let mut cmd = Command::new(format!("{BIN}/postgres"));
    as_postgres(&mut cmd)
        .arg("-D")
        .arg(data)
        .args([
            "-c",
            &format!("port={port}"),
            "-c",
            "listen_addresses=127.0.0.1",
        ])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()));
    for s in settings {
        cmd.args(["-c", s]);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    TiedProcess::spawn(cmd, libc::SIGINT)
}

/// Runs `sqls` as `postgres` over the Unix socket in `dir` once the server
/// there takes them (30 s at most): the server is up, and set up.
pub fn psql_until_up(dir: &Path, port: u16, sqls: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-At", "-h"]).arg(dir).args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ]);
        for sql in sqls {
            cmd.args(["-c", sql]);
        }
        let out = cmd.output().unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server did not start: {}; see {}/postgres.log",
            String::from_utf8_lossy(&out.stderr),
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
