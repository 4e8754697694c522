//! The admin HTTP endpoint: `/` (the stats page), `/health`, `/ready`,
//! `/metrics`, `/status`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shared::Shared;

pub async fn run(shared: Arc<Shared>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
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

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
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
