//! Live configuration reload: on a change of the config file (watched with
//! `notify`), on SIGHUP, or when asked (`ProxyHandle::reload`).
//!
//! The new file is parsed and validated completely first; an invalid file
//! changes nothing (the error, with key and line, is logged, counted and
//! shown in /status). A valid one is swapped in as a whole: config and
//! router are `ArcSwap`s, so each transaction sees the old or the new one,
//! never a mix. Pools take their new size and timeouts at once (a shrinking
//! pool closes idle connections first and retires busy ones as they come
//! back); a removed user's clients finish their transaction and are then
//! told. Keys that need a restart keep their running value and are named.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use crate::config::{Config, ConfigError};
use crate::shared::{ConfigInfo, Shared};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Reloads from `path`. Returns the keys that need a restart to change.
pub fn reload_file(shared: &Shared, path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: None,
        line: None,
        message: format!("cannot read {}: {e}", path.display()),
    });
    // The certificates are read again too (rotated files are picked up); a
    // file that does not load keeps the running certificates.
    let parsed = text.and_then(|t| {
        let c = Config::from_toml_str(&t)?;
        let tls = crate::tls::Tls::build(&c.tls).map_err(|message| ConfigError {
            key: Some("tls".into()),
            line: None,
            message,
        })?;
        Ok((c, tls))
    });
    let (new, tls) = match parsed {
        Ok(x) => x,
        Err(e) => {
            shared
                .metrics
                .config_reloads_total
                .with_label_values(&["error"])
                .inc();
            shared.metrics.config_last_reload_successful.set(0);
            tracing::error!(path = %path.display(), error = %e, "configuration not reloaded: the file is invalid; the running configuration stays");
            let mut info = (**shared.config_info.load()).clone();
            info.last_error = Some(e.to_string());
            shared.config_info.store(Arc::new(info));
            return Err(e);
        }
    };
    // Before `apply`, so pools take the new server side with their settings.
    shared.tls.store(Arc::new(tls));
    let pending = apply(shared, new);
    let mut info = (**shared.config_info.load()).clone();
    info.version += 1;
    info.path = Some(path.display().to_string());
    info.loaded_at = now();
    info.last_error = None;
    info.pending_restart = pending.clone();
    shared.config_info.store(Arc::new(info));
    shared
        .metrics
        .config_reloads_total
        .with_label_values(&["ok"])
        .inc();
    shared.metrics.config_last_reload_successful.set(1);
    Ok(pending)
}

/// Records the file loaded at start, for /status.
pub fn loaded_at_start(shared: &Shared, path: &Path) {
    shared.config_info.store(Arc::new(ConfigInfo {
        version: 1,
        path: Some(path.display().to_string()),
        loaded_at: now(),
        ..ConfigInfo::default()
    }));
}

/// Keys (and tables) that keep their running value until a restart: the
/// ones `apply` keeps. SHOW CONFIG calls them not changeable.
pub const RESTART_ONLY: [&str; 12] = [
    "proxy.listen",
    "proxy.handover_socket",
    "proxy.worker_threads",
    "listeners",
    "admin.listen",
    "admin.metrics_listen",
    "proxy.max_client_connections",
    // The subscriber is built once; `log.log_queries` is read per transaction.
    "log.level",
    "log.format",
    "health",
    "etcd",
    "servers",
];

/// Whether config key `key` (e.g. `servers[0].host`) needs a restart to change.
pub fn needs_restart(key: &str) -> bool {
    RESTART_ONLY.iter().any(|r| {
        key == *r
            || key
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// Swaps `new` in; returns the keys that changed but need a restart (they
/// keep their running values).
pub fn apply(shared: &Shared, mut new: Config) -> Vec<String> {
    let old = shared.config.load_full();
    let mut pending = Vec::new();
    macro_rules! keep {
        ($name:expr, $($field:tt)+) => {
            // Compared in their serde form: Debug output hides passwords.
            if serde_json::to_value(&new.$($field)+).ok() != serde_json::to_value(&old.$($field)+).ok() {
                pending.push($name.to_string());
                new.$($field)+ = old.$($field)+.clone();
            }
        };
    }
    keep!("proxy.listen", proxy.listen);
    keep!("proxy.listen", listen_addr);
    keep!("proxy.handover_socket", proxy.handover_socket);
    keep!("listeners", listeners);
    keep!("admin.listen", admin.listen);
    keep!("admin.listen", admin_addr);
    keep!("admin.metrics_listen", admin.metrics_listen);
    keep!("admin.metrics_listen", metrics_addr);
    keep!("proxy.max_client_connections", proxy.max_client_connections);
    keep!("log.level", log.level);
    keep!("log.format", log.format);
    keep!("health", health);
    keep!("etcd", etcd);
    keep!("servers", servers);
    pending.dedup();
    if !pending.is_empty() {
        tracing::warn!(keys = ?pending, "configuration reloaded, but these keys only change at a restart");
    }
    let removed: Vec<String> = old
        .users
        .iter()
        .filter(|u| new.user(&u.name).is_none())
        .map(|u| u.name.clone())
        .collect();
    let added: Vec<String> = new
        .users
        .iter()
        .filter(|u| old.user(&u.name).is_none())
        .map(|u| u.name.clone())
        .collect();
    let new = Arc::new(new);
    shared
        .router
        .store(Arc::new(crate::router::Router::new(&new)));
    shared.config.store(new.clone());
    // Pools take their new settings; a removed user's pools close what is idle.
    for pool in shared.pools.all() {
        match new.user(&pool.key.user) {
            Some(user) => {
                pool.apply_settings(shared.pool_settings(&new, user));
                pool.set_credentials(shared.credentials(user));
            }
            None => pool.close_idle(),
        }
    }
    shared
        .config_version
        .fetch_add(1, std::sync::atomic::Ordering::Release);
    tracing::info!(
        ?added,
        ?removed,
        users = new.users.len(),
        "configuration reloaded"
    );
    pending
}

/// Watches `path` and SIGHUP, and reloads on either, until shutdown.
/// The SIGHUP handler is installed before this returns (a SIGHUP arriving
/// without one would end the process).
pub fn spawn(shared: Arc<Shared>, path: PathBuf, shutdown: watch::Receiver<bool>) {
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; reload by editing the file");
            None
        }
    };
    tokio::spawn(run(shared, path, shutdown, hup));
}

async fn run(
    shared: Arc<Shared>,
    path: PathBuf,
    mut shutdown: watch::Receiver<bool>,
    mut hup: Option<tokio::signal::unix::Signal>,
) {
    let (tx, mut rx) = mpsc::channel::<&'static str>(8);
    let _watcher = watch_file(&path, tx.clone());
    loop {
        let why = tokio::select! {
            Some(why) = rx.recv() => why,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = shutdown.changed() => return,
        };
        // Editors write in several steps: let them finish, then read once.
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        tracing::info!(path = %path.display(), trigger = why, "reloading configuration");
        let _ = reload_file(&shared, &path);
    }
}

const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches the file's directory (editors replace files by renaming) and
/// sends a trigger for events on the file.
fn watch_file(path: &Path, tx: mpsc::Sender<&'static str>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name()?.to_owned();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        let relevant = matches!(
            ev.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) && ev
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()));
        if relevant {
            let _ = tx.try_send("file changed");
        }
    })
    .map_err(
        |e| tracing::warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP"),
    )
    .ok()?;
    if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the configuration directory; reload with SIGHUP");
        return None;
    }
    Some(w)
}
