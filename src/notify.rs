//! `[[notify]]` hooks: a command and/or a webhook run on leader changes and
//! on the start and end of a failover, so operators can page someone or post
//! to a chat. Events go through a bounded channel to one task; hooks run
//! with a timeout in tasks of their own, so a slow hook never delays the
//! topology, let alone the data path.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::config::{parse_http_url, NotifyConfig};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// `leader_change`, `failover_start` or `failover_end`.
    pub event: &'static str,
    /// `planned` or `unplanned` (failover events).
    pub kind: Option<&'static str>,
    pub old_leader: Option<String>,
    pub new_leader: Option<String>,
    pub held_clients: i64,
    pub outage_ms: Option<u64>,
    /// Seconds since the Unix epoch.
    pub at: f64,
}

impl Event {
    pub fn new(event: &'static str) -> Event {
        Event {
            event,
            kind: None,
            old_leader: None,
            new_leader: None,
            held_clients: 0,
            outage_ms: None,
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }
}

/// Starts the notifier; events sent to the returned channel reach the hooks.
pub fn spawn(hooks: Vec<NotifyConfig>) -> mpsc::Sender<Event> {
    let (tx, mut rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            for hook in hooks
                .iter()
                .filter(|h| h.events.iter().any(|e| e == ev.event))
            {
                let (hook, ev) = (hook.clone(), ev.clone());
                tokio::spawn(async move {
                    if let Some(cmd) = &hook.command {
                        run_command(cmd, &ev, hook.timeout.0).await;
                    }
                    if let Some(url) = &hook.webhook {
                        post_webhook(url, &ev, hook.timeout.0).await;
                    }
                });
            }
        }
    });
    tx
}

async fn run_command(cmd: &str, ev: &Event, timeout: Duration) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("PGKEEL_EVENT", ev.event)
        .env("PGKEEL_KIND", ev.kind.unwrap_or(""))
        .env("PGKEEL_OLD_LEADER", opt(&ev.old_leader))
        .env("PGKEEL_NEW_LEADER", opt(&ev.new_leader))
        .env("PGKEEL_HELD_CLIENTS", ev.held_clients.to_string())
        .env(
            "PGKEEL_OUTAGE_MS",
            ev.outage_ms.map(|m| m.to_string()).unwrap_or_default(),
        )
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(command = cmd, error = %e, "notify command could not start");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            tracing::debug!(command = cmd, event = ev.event, "notify command ran")
        }
        Ok(Ok(status)) => tracing::warn!(command = cmd, %status, "notify command failed"),
        Ok(Err(e)) => tracing::warn!(command = cmd, error = %e, "notify command failed"),
        Err(_) => tracing::warn!(
            command = cmd,
            ?timeout,
            "notify command timed out and was killed"
        ),
    }
}

async fn post_webhook(url: &str, ev: &Event, timeout: Duration) {
    let Some((host, port, path)) = parse_http_url(url) else {
        return;
    };
    let body = serde_json::to_vec(ev).expect("events serialize");
    let attempt = || async {
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::post(path.as_str())
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("status {}", resp.status()))
        }
    };
    let retries = async {
        let mut wait = Duration::from_millis(500);
        for n in 1..=3 {
            match attempt().await {
                Ok(()) => return Ok(()),
                Err(e) if n == 3 => return Err(e),
                Err(e) => tracing::debug!(url, error = %e, "webhook failed; retrying"),
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, retries).await {
        Ok(Ok(())) => tracing::debug!(url, event = ev.event, "webhook delivered"),
        Ok(Err(e)) => tracing::warn!(url, error = %e, "webhook failed"),
        Err(_) => tracing::warn!(url, ?timeout, "webhook timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_http_url;

    #[test]
    fn webhook_urls() {
        assert_eq!(
            parse_http_url("http://hooks.local:8080/pg/events"),
            Some(("hooks.local".into(), 8080, "/pg/events".into()))
        );
        assert_eq!(
            parse_http_url("http://127.0.0.1"),
            Some(("127.0.0.1".into(), 80, "/".into()))
        );
        assert_eq!(parse_http_url("https://x/"), None);
        assert_eq!(parse_http_url("http://:80/"), None);
    }
}
