//! Application-like clients through a failover, for comparing proxies:
//! nine persistent connections (5 autocommit writers, 2 short transactions,
//! 2 readers) against `--url`; after `--after` seconds `--action` runs (e.g.
//! `scripts/cluster.sh kill-leader`); the clients keep going for `--for`
//! seconds more. Prints one JSON line: errors, broken connections, the
//! longest stretch without a successful write, and acknowledged writes that
//! are missing afterwards.
//!
//!     cargo run --release --example failover_workload -- \
//!         --url "host=127.0.0.1 port=54320 user=app password=app_password dbname=app" \
//!         --action "scripts/cluster.sh switchover" --for 20

#[path = "../tests/it/support/workload.rs"]
mod workload;

use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;

#[derive(Parser)]
struct Args {
    /// libpq-style connection string of the proxy (or server) to test.
    #[arg(long)]
    url: String,
    /// Shell command that causes the event.
    #[arg(long)]
    action: String,
    /// Seconds of traffic before the event.
    #[arg(long, default_value_t = 3)]
    after: u64,
    /// Seconds of traffic after the event.
    #[arg(long = "for", default_value_t = 20)]
    duration: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (setup, conn) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    setup.simple_query(workload::SCHEMA).await?;
    drop(setup);

    let (stop_tx, stop_rx) = watch::channel(false);
    let clients = workload::start(&args.url, 5, 2, 2, stop_rx);
    tokio::time::sleep(Duration::from_secs(args.after)).await;
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&args.action)
        .status()
        .await?;
    anyhow::ensure!(status.success(), "the action failed: {status}");
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop_tx.send_replace(true);
    let report = clients.await?;

    // Acknowledged writes that are not there afterwards (read through the
    // same endpoint, retrying while it recovers).
    let acked = report.acked();
    let mut missing = None;
    for _ in 0..60 {
        if let Ok((c, conn)) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            if let Ok(row) = c
                .query_one(
                    "SELECT count(*) FROM failover_log WHERE id = ANY($1)",
                    &[&acked],
                )
                .await
            {
                missing = Some(acked.len() as i64 - row.get::<_, i64>(0));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let line = serde_json::json!({
        "clients": report.clients.len(),
        "clients_with_errors": report.clients_with_errors(),
        "errors": report.errors(),
        "broken_connections": report.disconnects(),
        "seconds_without_a_write": (report.longest_write_gap().as_secs_f64() * 10.0).round() / 10.0,
        "acknowledged_writes": acked.len(),
        "acknowledged_writes_missing": missing,
    });
    println!("{line}");
    Ok(())
}
