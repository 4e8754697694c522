//! Many idle clients, for measuring what an idle client costs a proxy:
//! opens `--clients` connections to `--url` (at most `--concurrency`
//! logging in at once), runs one query on each, prints `ready N` (N: the
//! connections that got an answer) and keeps them all open, idle, until
//! its standard input closes. Errors are counted, not fatal: the line says
//! how many. `benches/pgbench-compare.sh` reads the proxy's resident memory
//! before and after.
//!
//!     cargo run --release --example idle_clients -- \
//!         --url "host=127.0.0.1 port=54320 user=app password=app_password dbname=app" \
//!         --clients 1000

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use clap::Parser;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

/// A login not done by then counts as an error (a proxy out of sockets
/// never answers).
const LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Parser)]
struct Args {
    /// libpq-style connection string of the proxy (or server).
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: tokio_postgres::Config = args.url.parse()?;
    let logins = Arc::new(Semaphore::new(args.concurrency));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let (config, logins, errors) = (config.clone(), logins.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let permit = logins.acquire_owned().await.expect("never closed");
            let login = tokio::time::timeout(LOGIN_TIMEOUT, config.connect(tokio_postgres::NoTls));
            let (client, conn) = match login.await {
                Ok(Ok(c)) => c,
                failed => {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        match failed {
                            Ok(Err(e)) => eprintln!("connect: {e}"),
                            _ => eprintln!("connect: no answer in {LOGIN_TIMEOUT:?}"),
                        }
                    }
                    return None;
                }
            };
            let driver = tokio::spawn(conn);
            let answered = client.simple_query("SELECT 1").await;
            drop(permit);
            if let Err(e) = answered {
                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("query: {e}");
                }
                return None;
            }
            Some((client, driver))
        }));
    }
    let mut open = Vec::with_capacity(args.clients);
    for t in tasks {
        if let Some(c) = t.await? {
            open.push(c);
        }
    }
    println!(
        "ready {} errors {}",
        open.len(),
        errors.load(Ordering::Relaxed)
    );
    // Idle until told to go: the caller closes our standard input.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(open);
    Ok(())
}
