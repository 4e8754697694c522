//! Application-like clients for failover tests and the HAProxy comparison:
//! persistent connections doing autocommit `INSERT ... RETURNING` (keys
//! from the table's sequence), short explicit transactions (keys of their
//! own), and read loops, logging every acknowledged write,
//! every error and every broken connection.
#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Writer,
    Transaction,
    Reader,
}

#[derive(Debug)]
pub struct ClientReport {
    pub kind: Kind,
    pub ok: u64,
    /// (seconds since start, SQLSTATE or "closed", message)
    pub errors: Vec<(f64, String, String)>,
    pub disconnects: u64,
    /// Write ids whose statement (or COMMIT) was acknowledged.
    pub acked: Vec<i64>,
    /// Longest time between two successes.
    pub longest_gap: Duration,
    pub last_ok: Option<Instant>,
}

#[derive(Debug)]
pub struct Report {
    pub clients: Vec<ClientReport>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.clients.iter().map(|c| c.errors.len()).sum()
    }
    pub fn clients_with_errors(&self) -> usize {
        self.clients.iter().filter(|c| !c.errors.is_empty()).count()
    }
    pub fn disconnects(&self) -> u64 {
        self.clients.iter().map(|c| c.disconnects).sum()
    }
    pub fn acked(&self) -> Vec<i64> {
        self.clients
            .iter()
            .flat_map(|c| c.acked.iter().copied())
            .collect()
    }
    /// Longest stretch without a successful write, over the writing clients.
    pub fn longest_write_gap(&self) -> Duration {
        self.clients
            .iter()
            .filter(|c| c.kind != Kind::Reader)
            .map(|c| c.longest_gap)
            .max()
            .unwrap_or_default()
    }
    pub fn summary(&self) -> String {
        format!(
            "{} clients, {} ok, {} errors in {} clients, {} broken connections, {} acknowledged writes, longest write gap {:.1}s",
            self.clients.len(),
            self.clients.iter().map(|c| c.ok).sum::<u64>(),
            self.errors(),
            self.clients_with_errors(),
            self.disconnects(),
            self.acked().len(),
            self.longest_write_gap().as_secs_f64()
        )
    }
}

pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS failover_log (id bigserial PRIMARY KEY, client int NOT NULL, at timestamptz NOT NULL DEFAULT now())";

fn first_value(msgs: &[SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// The server's (or pgkeel's) message, else the driver's.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| "closed".into())
}

/// Each client's successes so far (in start order), while the workload
/// runs: tests wait on these instead of for fixed times.
#[derive(Clone)]
pub struct Progress(Arc<Vec<AtomicU64>>);

impl Progress {
    pub fn counts(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// True when every client has succeeded more than `n` times since
    /// `since` (an earlier `counts()`).
    pub fn every_client_beyond(&self, since: &[u64], n: u64) -> bool {
        self.counts()
            .iter()
            .zip(since)
            .all(|(now, then)| now - then > n)
    }
}

/// Keys of the workload's transactions: pairs (odd, odd + 1) above the
/// sequence's numbers, different in every run (the table outlives runs).
pub const KEYED_FROM: i64 = 1_000_000_000_000_000;

/// The first (odd) key of a new pair.
fn next_key_pair() -> i64 {
    static NEXT: std::sync::OnceLock<AtomicI64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // About 10^8 keys a second of a run's start: no run reaches the next's.
        AtomicI64::new(KEYED_FROM + (secs % 1_000_000) * 100_000_000)
    });
    next.fetch_add(2, Ordering::Relaxed) + 1
}

/// Runs one client until `stop` turns true.
async fn client(
    url: String,
    id: i32,
    kind: Kind,
    started: Instant,
    think: Duration,
    mut stop: watch::Receiver<bool>,
    progress: Progress,
) -> ClientReport {
    let mut r = ClientReport {
        kind,
        ok: 0,
        errors: Vec::new(),
        disconnects: 0,
        acked: Vec::new(),
        longest_gap: Duration::ZERO,
        last_ok: None,
    };
    let mut conn: Option<tokio_postgres::Client> = None;
    // Odd readers use a named prepared statement (prepared once per
    // connection), as JDBC and psycopg do; even ones the unnamed one.
    let mut stmt: Option<tokio_postgres::Statement> = None;
    let read = "SELECT count(*) FROM failover_log WHERE client = $1";
    let insert = format!("INSERT INTO failover_log (client) VALUES ({id}) RETURNING id");
    // Transactions write keys of their own (as applications with UUID keys
    // do): a transaction replayed on a new primary gets the same answers,
    // where a sequence there would hand out other numbers.
    let keyed = || {
        let k = next_key_pair();
        [k, k + 1].map(|key| {
            format!("INSERT INTO failover_log (id, client) VALUES ({key}, {id}) RETURNING id")
        })
    };
    while !*stop.borrow() {
        let c = match &conn {
            Some(c) if !c.is_closed() => c,
            Some(_) => {
                r.disconnects += 1;
                conn = None;
                continue;
            }
            None => match tokio_postgres::connect(&url, NoTls).await {
                Ok((c, task)) => {
                    tokio::spawn(task);
                    conn = Some(c);
                    stmt = None;
                    continue;
                }
                Err(e) => {
                    r.errors.push((
                        started.elapsed().as_secs_f64(),
                        code(&e),
                        format!("connect: {e}"),
                    ));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let result: Result<Vec<i64>, tokio_postgres::Error> = match kind {
            Kind::Writer => c.simple_query(&insert).await.map(|m| {
                first_value(&m)
                    .and_then(|v| v.parse().ok())
                    .into_iter()
                    .collect()
            }),
            Kind::Transaction => {
                async {
                    let [first, second] = keyed();
                    c.simple_query("BEGIN").await?;
                    let a = first_value(&c.simple_query(&first).await?);
                    let b = first_value(&c.simple_query(&second).await?);
                    c.simple_query("COMMIT").await?;
                    Ok([a, b]
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.parse().ok())
                        .collect())
                }
                .await
            }
            Kind::Reader if id % 2 == 1 => async {
                if stmt.is_none() {
                    stmt = Some(c.prepare(read).await?);
                }
                c.query(stmt.as_ref().expect("prepared"), &[&id]).await
            }
            .await
            .map(|_| Vec::new()),
            Kind::Reader => c
                .query_typed(read, &[(&id, tokio_postgres::types::Type::INT4)])
                .await
                .map(|_| Vec::new()),
        };
        match result {
            Ok(ids) => {
                let now = Instant::now();
                if let Some(last) = r.last_ok {
                    r.longest_gap = r.longest_gap.max(now - last);
                }
                r.last_ok = Some(now);
                r.ok += 1;
                r.acked.extend(ids);
                progress.0[id as usize].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                r.errors
                    .push((started.elapsed().as_secs_f64(), code(&e), message(&e)));
                if kind == Kind::Transaction && !c.is_closed() {
                    // Leave no transaction open behind an error.
                    let _ = c.simple_query("ROLLBACK").await;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(think) => {}
            _ = stop.changed() => {}
        }
    }
    r
}

/// Starts the clients (20 ms between requests); `stop` ends them; the
/// handle yields the report.
pub fn start(
    url: &str,
    writers: usize,
    transactions: usize,
    readers: usize,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Report> {
    start_with(
        url,
        writers,
        transactions,
        readers,
        Duration::from_millis(20),
        stop,
    )
    .0
}

/// `start`, and each client's successes as they happen.
pub fn start_with_progress(
    url: &str,
    writers: usize,
    transactions: usize,
    readers: usize,
    stop: watch::Receiver<bool>,
) -> (tokio::task::JoinHandle<Report>, Progress) {
    start_with(
        url,
        writers,
        transactions,
        readers,
        Duration::from_millis(20),
        stop,
    )
}

/// `start_with_progress`, with `think` between a client's requests.
pub fn start_with(
    url: &str,
    writers: usize,
    transactions: usize,
    readers: usize,
    think: Duration,
    stop: watch::Receiver<bool>,
) -> (tokio::task::JoinHandle<Report>, Progress) {
    let started = Instant::now();
    let n = writers + transactions + readers;
    let progress = Progress(Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()));
    let mut tasks = Vec::new();
    let kinds = std::iter::repeat_n(Kind::Writer, writers)
        .chain(std::iter::repeat_n(Kind::Transaction, transactions))
        .chain(std::iter::repeat_n(Kind::Reader, readers));
    for (i, kind) in kinds.enumerate() {
        tasks.push(tokio::spawn(client(
            url.to_owned(),
            i as i32,
            kind,
            started,
            think,
            stop.clone(),
            progress.clone(),
        )));
    }
    let report = tokio::spawn(async move {
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await.expect("client task"));
        }
        Report { clients }
    });
    (report, progress)
}
