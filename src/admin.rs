//! The admin HTTP endpoint: `/` (the stats page), `/health`, `/ready`,
//! `/metrics`, `/status`.
//!
//! `/health` and `/ready` are always open (load balancers ask them); with
//! `[admin] http_token` set, `/status` and `/metrics` need `Authorization:
//! Bearer <token>` (`/metrics` may be exempted, or served alone on
//! `metrics_listen`). Each connection must send its headers within
//! `http_header_timeout`, and at most `max_http_connections` are open.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shared::Shared;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `[admin] listen`: everything, behind the token if one is set.
    All,
    /// `[admin] metrics_listen`: `/metrics` alone, without a token.
    MetricsOnly,
}

/// Whether a request may see a path: the pure part of the token check.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    Open,
    NeedsToken,
}

fn access(endpoints: Endpoints, path: &str, metrics_open: bool) -> Access {
    match (endpoints, path) {
        (_, "/health" | "/ready") => Access::Open,
        (Endpoints::MetricsOnly, _) => Access::Open,
        (Endpoints::All, "/metrics") if metrics_open => Access::Open,
        _ => Access::NeedsToken,
    }
}

/// The token an `Authorization` header carries, if it is a bearer token.
fn bearer(header: Option<&hyper::header::HeaderValue>) -> Option<&[u8]> {
    let v = header?.as_bytes();
    let scheme = v.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| v[7..].trim_ascii())
}

/// An open HTTP connection, counted against `max_http_connections`.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    endpoints: Endpoints,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let handing_over = shared.handoff.raised();
    tokio::pin!(handing_over);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!(error = %e, "admin HTTP accept failed");
                    tokio::time::sleep(crate::listener::ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
            // An upgrade: the new process answers on this same socket.
            _ = &mut handing_over => return,
        };
        let cfg = shared.config.load();
        let cap = cfg.admin.max_http_connections as usize;
        if open.fetch_add(1, Ordering::Relaxed) >= cap {
            open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%peer, cap, "admin HTTP connection refused: max_http_connections reached");
            continue;
        }
        let guard = Open(open.clone());
        let header_timeout = cfg.admin.http_header_timeout.0;
        drop(cfg);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, endpoints, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn handle(shared: &Shared, endpoints: Endpoints, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let cfg = shared.config.load();
    if let Some(token) = &cfg.admin_token {
        if access(endpoints, path, cfg.admin.metrics_open) == Access::NeedsToken
            && !bearer(req.headers().get(hyper::header::AUTHORIZATION))
                .is_some_and(|t| token.matches(t))
        {
            shared.metrics.http_unauthorized_total.inc();
            let mut r = respond(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "a bearer token is required ([admin] http_token)\n".into(),
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    if endpoints == Endpoints::MetricsOnly && path != "/metrics" {
        return respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    }
    match path {
        "/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::stats_page::PAGE.into(),
        ),
        "/health" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => match &shared.topology.load().primary {
            Some(p) => respond(
                StatusCode::OK,
                "text/plain",
                format!("primary {}\n", p.name),
            ),
            None => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no primary\n".into(),
            ),
        },
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.metrics.render(),
        ),
        "/status" => respond(StatusCode::OK, "application/json", status_json(shared)),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn status_json(shared: &Shared) -> String {
    let topo = shared.topology.load();
    let pools: Vec<serde_json::Value> = shared
        .pools
        .all()
        .iter()
        .map(|p| {
            serde_json::json!({
                "server": format!("{}:{}", p.key.host, p.key.port),
                "database": p.key.database,
                "user": p.key.user,
                "size": p.settings().size,
                "active": p.stats.active.load(Ordering::Relaxed),
                "idle": p.idle_count(),
                "waiting": p.stats.waiting.load(Ordering::Relaxed),
                "connections": p.stats.total_connections.load(Ordering::Relaxed),
            })
        })
        .collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "topology": &**topo,
        "failovers": shared.topology.failovers(),
        "held_clients": shared.metrics.held_clients.get(),
        "paused": shared.pause.current(),
        "pools": pools,
        "clients": shared.cancels.len(),
        "clients_by_state": crate::stats_page::clients_by_state(shared),
        "traffic": crate::stats_page::traffic(shared),
        "config": &**shared.config_info.load(),
        "fleet": {
            "me": shared.fleet.me(),
            "instances": &*shared.fleet.peers(),
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn health_and_ready_stay_open_the_rest_needs_the_token() {
        for p in ["/health", "/ready"] {
            assert_eq!(access(Endpoints::All, p, false), Access::Open);
        }
        for p in ["/status", "/metrics", "/nope"] {
            assert_eq!(access(Endpoints::All, p, false), Access::NeedsToken, "{p}");
        }
        assert_eq!(access(Endpoints::All, "/metrics", true), Access::Open);
        assert_eq!(access(Endpoints::All, "/status", true), Access::NeedsToken);
        assert_eq!(
            access(Endpoints::MetricsOnly, "/metrics", false),
            Access::Open
        );
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(Some(&h("Bearer abc"))), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(&h("bearer  abc "))), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(&h("Basic abc"))), None);
        assert_eq!(bearer(Some(&h("Bear"))), None);
        assert_eq!(bearer(None), None);
    }
}
