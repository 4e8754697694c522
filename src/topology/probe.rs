//! pgkeel's own view of a member: is it up, and is it writable?
//! One task per member keeps a control connection and runs
//! `PROBE_SQL` (role, WAL position, replay lag) on an interval the publisher can change
//! (fast while a new leader is being confirmed). Dropping the handle stops it.
//! A suspected member also gets one-off probes on a fresh connection
//! (`Prober::probe_now`): only a postmaster that still accepts connections
//! clears a suspicion.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::Role;

/// Health-check credentials and limits.
#[derive(Clone)]
pub struct ProbeSettings {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub timeout: Duration,
    /// `server_tls_mode` (as at start: `[health]` needs a restart too).
    pub tls: crate::tls::postgres::MakeRustls,
}

/// What one health check saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub role: Role,
    /// WAL position as a byte offset: the primary's current write position,
    /// or what a replica has replayed.
    pub lsn: Option<u64>,
    /// A replica has received WAL by streaming since it started (a restarted
    /// old primary has not, until it follows the new leader).
    pub streaming: bool,
    /// Seconds since the last transaction a replica replayed, while it has
    /// received WAL it has not replayed yet; 0 when caught up.
    pub replay_lag: Option<f64>,
}

pub struct ProbeResult {
    pub name: String,
    /// Which prober (a member re-added with another address gets a new one).
    pub id: u64,
    pub result: Result<Probe, String>,
    /// When the probe began: one that began before a suspicion says
    /// nothing about the member after it.
    pub started: Instant,
    /// The suspicion a one-off probe answers (`None`: the regular probe).
    pub token: Option<u64>,
}

/// One round trip tells role, WAL position and replay lag.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::int8, \
    pg_last_wal_receive_lsn() IS NOT NULL, \
    CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8 \
    ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END";

/// Controls one running prober.
/// Where and how a probe connects.
#[derive(Clone)]
struct Target {
    pg: tokio_postgres::Config,
    tls: crate::tls::postgres::MakeRustls,
}

pub struct Prober {
    pub id: u64,
    interval: watch::Sender<Duration>,
    name: String,
    pg: Target,
    results: mpsc::Sender<ProbeResult>,
}

impl Prober {
    /// Probes once now, on a new connection, within `timeout`, apart from
    /// the regular loop (which may be waiting on a hung connection); the
    /// result carries `token`.
    pub fn probe_now(&self, token: u64, timeout: Duration) {
        let (name, id, pg, results) = (
            self.name.clone(),
            self.id,
            self.pg.clone(),
            self.results.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let mut fresh = None;
            let result = tokio::time::timeout(timeout, probe_once(&pg, &mut fresh))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
            let _ = results
                .send(ProbeResult {
                    name,
                    id,
                    result,
                    started,
                    token: Some(token),
                })
                .await;
        });
    }

    pub fn set_interval(&self, d: Duration) {
        self.interval.send_if_modified(|cur| {
            let changed = *cur != d;
            *cur = d;
            changed
        });
    }
}

pub fn spawn(
    name: String,
    id: u64,
    host: &str,
    port: u16,
    settings: &ProbeSettings,
    interval: Duration,
    results: mpsc::Sender<ProbeResult>,
) -> Prober {
    let mut pg = tokio_postgres::Config::new();
    pg.host(host)
        .port(port)
        .user(&settings.user)
        .dbname(&settings.database)
        .application_name("pgkeel health check")
        .connect_timeout(settings.timeout);
    if let Some(p) = &settings.password {
        pg.password(p);
    }
    pg.ssl_mode(settings.tls.ssl_mode());
    let pg = Target {
        pg,
        tls: settings.tls.clone(),
    };
    let (tx, rx) = watch::channel(interval);
    tokio::spawn(run(
        name.clone(),
        id,
        pg.clone(),
        settings.timeout,
        rx,
        results.clone(),
    ));
    Prober {
        id,
        interval: tx,
        name,
        pg,
        results,
    }
}

async fn run(
    name: String,
    id: u64,
    pg: Target,
    timeout: Duration,
    mut interval: watch::Receiver<Duration>,
    results: mpsc::Sender<ProbeResult>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, probe_once(&pg, &mut client))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        if result.is_err() {
            client = None;
        }
        if results
            .send(ProbeResult {
                name: name.clone(),
                id,
                result,
                started,
                token: None,
            })
            .await
            .is_err()
        {
            return;
        }
        let wait = *interval.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = interval.changed() => {
                // The handle was dropped: the member left.
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn probe_once(
    pg: &Target,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Probe, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let (c, conn) = pg
            .pg
            .connect(pg.tls.clone())
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *client = Some(c);
    }
    let c = client.as_ref().expect("connected above");
    let row = c
        .query_one(PROBE_SQL, &[])
        .await
        .map_err(|e| e.to_string())?;
    let in_recovery: bool = row.get(0);
    let lsn: Option<i64> = row.get(1);
    Ok(Probe {
        role: if in_recovery {
            Role::Replica
        } else {
            Role::Primary
        },
        lsn: lsn.and_then(|l| u64::try_from(l).ok()),
        streaming: row.get(2),
        replay_lag: row.get(3),
    })
}
