//! Wiring: builds the shared state, binds the listeners and starts the
//! background tasks. One `Proxy` is one independent instance: nothing here is
//! global, so tests run several side by side in one process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cancel::CancelRegistry;
use crate::config::{Config, ListenerRoute};
use crate::handover::sender::Listening;
use crate::handover::wire::{SocketInfo, SocketKind};
use crate::handover::Takeover;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::shared::{ConfigInfo, Shared};
use crate::topology::fleet::{FleetHandle, FleetSettings, Peer};
use crate::topology::{self, TopologyHandle};

pub struct Proxy;

/// A running instance.
pub struct ProxyHandle {
    local_addr: SocketAddr,
    /// `[[listeners]]`, bound (port 0 becomes a real port).
    extra_addrs: Vec<(SocketAddr, ListenerRoute)>,
    admin_addr: Option<SocketAddr>,
    /// `[admin] metrics_listen`, bound.
    metrics_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    listener: JoinHandle<()>,
    /// Registration in the fleet (etcd mode): awaited at shutdown, so the
    /// instance leaves the list before the process exits.
    fleet: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// Binds `addr` for `kind`, or takes the old process's socket for it at
/// an upgrade; keeps a duplicate for the next upgrade's handover.
async fn listen_on(
    addr: SocketAddr,
    kind: SocketKind,
    what: &str,
    takeover: &mut Option<Takeover>,
    kept: &mut Vec<Listening>,
) -> anyhow::Result<TcpListener> {
    let inherited = takeover.as_mut().and_then(|t| t.take(kind, addr));
    let l = match inherited {
        Some(l) => l.map_err(|e| anyhow::anyhow!("cannot take over {addr} ({what}): {e}"))?,
        None => TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}): {e}"))?,
    };
    kept.push(Listening {
        info: SocketInfo {
            kind,
            configured: addr,
            bound: l.local_addr()?,
        },
        fd: std::os::fd::AsFd::as_fd(&l).try_clone_to_owned()?,
    });
    Ok(l)
}

impl Proxy {
    /// Binds the listeners, starts health checks (waiting for the first
    /// round, so roles are known), and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<ProxyHandle> {
        Proxy::start_with(config, None).await
    }

    /// `start`, taking over the listening sockets and then the idle
    /// clients of a running process (`pgkeel --takeover`) when `takeover`
    /// is given, instead of binding them.
    pub async fn start_with(
        config: Config,
        mut takeover: Option<Takeover>,
    ) -> anyhow::Result<ProxyHandle> {
        let pool_slots: u64 = config
            .users
            .iter()
            .map(|u| u64::from(u.pool_size))
            .sum::<u64>()
            * config.servers.len().max(3) as u64;
        crate::system::raise_open_files(crate::system::files_needed(&config.proxy, pool_slots));
        let kept = &mut Vec::new();
        let t = &mut takeover;
        let listener = listen_on(config.listen_addr, SocketKind::Main, "main", t, kept).await?;
        let local_addr = listener.local_addr()?;
        let mut listeners = vec![(listener, ListenerRoute::Auto)];
        let mut extra_addrs = Vec::new();
        for (addr, route) in &config.listeners {
            let kind = SocketKind::Extra { route: *route };
            let l = listen_on(*addr, kind, &format!("{route:?} listener"), t, kept).await?;
            extra_addrs.push((l.local_addr()?, *route));
            listeners.push((l, *route));
        }
        let admin = match config.admin_addr {
            Some(a) => Some(listen_on(a, SocketKind::Admin, "admin", t, kept).await?),
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let metrics_listener = match config.metrics_addr {
            Some(a) => Some(listen_on(a, SocketKind::Metrics, "metrics", t, kept).await?),
            None => None,
        };
        let handover_sockets = std::mem::take(kept);
        // Without a takeover, this process listens for the next upgrade's
        // at once (with one, after the old process gave up the path).
        let handover_path = crate::handover::socket_path(&config);
        let handover_listener = match (&handover_path, &takeover) {
            (Some(p), None) => match crate::handover::sender::bind(p) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "no handover socket: upgrades cannot take over from this process");
                    None
                }
            },
            _ => None,
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let metrics = Metrics::new();
        let topology = TopologyHandle::new();
        let mut first_round = config.health.timeout.0 + Duration::from_millis(500);
        if let Some(e) = &config.etcd {
            first_round += e.dial_timeout.0;
        }
        let tls = crate::tls::Tls::build(&config.tls).map_err(|e| anyhow::anyhow!("{e}"))?;
        let notify = crate::notify::spawn(config.notify.clone());
        topology::spawn(
            &config,
            topology.clone(),
            metrics.clone(),
            tls.server.clone(),
            notify,
            shutdown_rx.clone(),
            first_round,
        )
        .await;

        let fleet_settings = config
            .etcd
            .as_ref()
            .map(|e| fleet_settings(e, local_addr, admin_addr));
        let fleet = Arc::new(FleetHandle::new(
            fleet_settings.as_ref().map(|s| s.me.name.clone()),
        ));
        let shared = Arc::new(Shared {
            router: ArcSwap::from_pointee(crate::router::Router::new(&config)),
            config_version: std::sync::atomic::AtomicU64::new(1),
            config_info: ArcSwap::from_pointee(ConfigInfo {
                version: 1,
                ..Default::default()
            }),
            config: ArcSwap::from_pointee(config),
            topology,
            pools: Pools::default(),
            cancels: Arc::new(CancelRegistry::default()),
            metrics,
            shutdown: shutdown_rx.clone(),
            scram_keys: Default::default(),
            statements: Arc::default(),
            tls: ArcSwap::from_pointee(tls),
            clients: Arc::default(),
            pause: crate::clients::Pause::default(),
            fleet: fleet.clone(),
            db_stats: Default::default(),
            disabled: Default::default(),
            stop_requested: Default::default(),
            limits: Arc::default(),
            mock_key: Default::default(),
            handoff: Default::default(),
        });
        shared
            .metrics
            .registry
            .register(Box::new(crate::scrape::ScrapeCollector::new(
                Arc::downgrade(&shared),
            )))
            .expect("scrape collector registers once");
        if let Some(l) = admin {
            let ep = crate::admin::Endpoints::All;
            tokio::spawn(crate::admin::run(
                shared.clone(),
                l,
                ep,
                shutdown_rx.clone(),
            ));
        }
        if let Some(l) = metrics_listener {
            let ep = crate::admin::Endpoints::MetricsOnly;
            tokio::spawn(crate::admin::run(
                shared.clone(),
                l,
                ep,
                shutdown_rx.clone(),
            ));
        }
        tokio::spawn(maintain_pools(shared.clone(), shutdown_rx.clone()));
        let fleet = fleet_settings.map(|s| {
            tokio::spawn(topology::fleet::run(
                s,
                fleet,
                shutdown_rx.clone(),
                shared.metrics.clone(),
            ))
        });
        let (bring, brought) = tokio::sync::mpsc::channel(64);
        let listener = tokio::spawn(crate::listener::run(
            shared.clone(),
            listeners,
            brought,
            shutdown_rx,
        ));
        match (takeover, handover_path) {
            (Some(t), _) => {
                tokio::spawn(t.run(shared.clone(), handover_sockets, bring));
            }
            (None, Some(path)) => {
                if let Some(l) = handover_listener {
                    tokio::spawn(crate::handover::sender::listen(
                        shared.clone(),
                        l,
                        path,
                        handover_sockets,
                        bring,
                    ));
                }
            }
            (None, None) => {}
        }
        tracing::info!(listen = %local_addr, extra = ?extra_addrs, admin = ?admin_addr, "pgkeel is ready");
        Ok(ProxyHandle {
            local_addr,
            extra_addrs,
            admin_addr,
            metrics_addr,
            shutdown: shutdown_tx,
            listener,
            fleet,
            shared,
        })
    }
}

impl ProxyHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reloads the configuration from `path` now (as SIGHUP does).
    pub fn reload(
        &self,
        path: &std::path::Path,
    ) -> Result<Vec<String>, crate::config::ConfigError> {
        crate::reload::reload_file(&self.shared, path)
    }

    /// Records the file the configuration came from, for /status and the
    /// admin console's RELOAD, without watching it (`watch_config` does both).
    pub fn config_file(&self, path: &std::path::Path) {
        crate::reload::loaded_at_start(&self.shared, path);
    }

    /// Reloads from `path` whenever it changes or SIGHUP arrives, until shutdown.
    pub fn watch_config(&self, path: std::path::PathBuf) {
        crate::reload::loaded_at_start(&self.shared, &path);
        crate::reload::spawn(self.shared.clone(), path, self.shared.shutdown.clone());
    }

    /// The bound address of the first `[[listeners]]` entry with `route`.
    pub fn listener_addr(&self, route: ListenerRoute) -> Option<SocketAddr> {
        self.extra_addrs
            .iter()
            .find(|(_, r)| *r == route)
            .map(|(a, _)| *a)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The `[admin] metrics_listen` address, bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Resolves when the admin console's SHUTDOWN asks for a stop.
    pub async fn stop_requested(&self) {
        self.shared.stop_requested.notified().await;
    }

    /// Graceful shutdown: stop accepting, let transactions finish (up to
    /// `shutdown_timeout`), close the rest, close idle server connections.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let _ = self.listener.await;
        if let Some(f) = self.fleet {
            let _ = f.await;
        }
        for p in self.shared.pools.all() {
            p.close_idle();
        }
        tracing::info!("pgkeel stopped");
    }
}

/// This instance's registration: its name and addresses as its peers see
/// them (an unspecified listen address is replaced by the hostname).
fn fleet_settings(
    e: &crate::config::EtcdConfig,
    local: SocketAddr,
    admin: Option<SocketAddr>,
) -> FleetSettings {
    let host = topology::fleet::hostname();
    let reachable = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            format!("{host}:{}", a.port())
        } else {
            a.to_string()
        }
    };
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    FleetSettings {
        etcd: topology::etcd::EtcdSettings {
            endpoints: e.endpoints.clone(),
            prefix: e.instances_prefix(),
            user: e
                .username
                .clone()
                .map(|u| (u, e.password.clone().unwrap_or_default())),
            dial_timeout: e.dial_timeout.0,
        },
        me: Peer {
            name: e
                .instance_name
                .clone()
                .unwrap_or_else(|| format!("{host}:{}", local.port())),
            address: e.advertise.clone().unwrap_or_else(|| reachable(local)),
            admin: admin.map(reachable),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at,
            pid: std::process::id(),
        },
        ttl: e.instance_ttl.0,
    }
}

async fn maintain_pools(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let topo = shared.topology.load();
        for p in shared.pools.all() {
            let member_left = !topo
                .members
                .iter()
                .any(|m| m.member.host == p.key.host && m.member.port == p.key.port);
            if member_left {
                // Its clients finish their transactions; nothing new goes there.
                p.close_idle();
            } else {
                p.maintain().await;
            }
        }
        shared.pools.remove_unused();
    }
}
