//! pgkeel's own view of a member: is it up, and is it writable?
//! One task per member keeps a control connection and runs
//! `SELECT pg_is_in_recovery()` on an interval the publisher can change
//! (fast while a new leader is being confirmed). Dropping the handle stops it.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::Role;

/// Health-check credentials and limits.
#[derive(Clone)]
pub struct ProbeSettings {
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub timeout: Duration,
}

pub struct ProbeResult {
    pub name: String,
    /// Which prober (a member re-added with another address gets a new one).
    pub id: u64,
    pub result: Result<Role, String>,
}

/// Controls one running prober.
pub struct Prober {
    pub id: u64,
    interval: watch::Sender<Duration>,
}

impl Prober {
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
    let (tx, rx) = watch::channel(interval);
    tokio::spawn(run(name, id, pg, settings.timeout, rx, results));
    Prober { id, interval: tx }
}

async fn run(
    name: String,
    id: u64,
    pg: tokio_postgres::Config,
    timeout: Duration,
    mut interval: watch::Receiver<Duration>,
    results: mpsc::Sender<ProbeResult>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
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
    pg: &tokio_postgres::Config,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Role, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let (c, conn) = pg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *client = Some(c);
    }
    let c = client.as_ref().expect("connected above");
    let row = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| e.to_string())?;
    let in_recovery: bool = row.get(0);
    Ok(if in_recovery {
        Role::Replica
    } else {
        Role::Primary
    })
}
