//! The state every session and background task of one pgkeel instance
//! shares: config and router snapshots, topology, pools, clients, metrics.
//! `proxy.rs` builds it; everything on the data path reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::auth::scram::ScramKeys;
use crate::auth::Secret;
use crate::backend::ServerCredentials;
use crate::cancel::CancelRegistry;
use crate::config::{Config, User};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolKey, PoolSettings, Pools};
use crate::topology::{Member, TopologyHandle};

/// State every session and background task shares.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub topology: Arc<TopologyHandle>,
    pub pools: Pools,
    pub cancels: Arc<CancelRegistry>,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
    /// Routing built from the current config; swapped with it on reload.
    pub router: ArcSwap<crate::router::Router>,
    /// Bumped by every reload, so sessions notice cheaply.
    pub config_version: std::sync::atomic::AtomicU64,
    /// Version, reload time and last reload error, for /status (no hash of
    /// the file: it may hold passwords, and a hash is a guessing oracle).
    pub config_info: ArcSwap<ConfigInfo>,
    /// Connected clients (SHOW CLIENTS, KILL).
    pub clients: Arc<crate::clients::ClientRegistry>,
    /// PAUSE / RESUME.
    pub pause: crate::clients::Pause,
    /// SCRAM keys recovered from client logins, per user, for users whose
    /// server password pgkeel does not know.
    pub(crate) scram_keys: Mutex<HashMap<String, ScramKeys>>,
    /// Named prepared statements of all clients, by content.
    pub statements: Arc<crate::statements::StatementCache>,
    /// The pgkeel instances serving this scope (etcd mode).
    pub fleet: Arc<crate::topology::fleet::FleetHandle>,
    /// Traffic per database (the console's SHOW STATS).
    pub db_stats: crate::dbstats::DbStats,
    /// DISABLE / ENABLE: databases that refuse new logins.
    pub disabled: crate::clients::Disabled,
    /// The console's SHUTDOWN asks whoever runs the proxy to stop it.
    pub stop_requested: tokio::sync::Notify,
    /// Logins in flight and logged-in clients, for the connection limits.
    pub limits: Arc<crate::limits::Limits>,
    /// The secret unknown roles' mock SCRAM exchanges are derived from.
    pub mock_key: crate::auth::mock::MockKey,
    /// TLS built from `[tls]`: swapped by a reload whose certificates load.
    pub tls: ArcSwap<crate::tls::Tls>,
    /// An upgrade's handover of idle clients to a new process (`handover/`).
    pub handoff: crate::handoff::Handoff,
}

impl Shared {
    pub fn remember_scram_keys(&self, user: &str, keys: ScramKeys) {
        self.scram_keys
            .lock()
            .expect("scram keys poisoned")
            .insert(user.to_owned(), keys);
    }

    /// Pool settings for `user` under `cfg`.
    pub fn pool_settings(&self, cfg: &Config, user: &User) -> PoolSettings {
        PoolSettings {
            size: user.pool_size,
            min_size: cfg.proxy.min_pool_size.min(user.pool_size),
            connect_timeout: cfg.proxy.connect_timeout.0,
            idle_timeout: cfg.proxy.server_idle_timeout.0,
            lifetime: cfg.proxy.server_lifetime.0,
            keepalive: crate::system::keepalive_settings(&cfg.proxy),
            server_tls: self.tls.load().server.clone(),
        }
    }

    pub fn credentials(&self, user: &User) -> ServerCredentials {
        ServerCredentials {
            user: user.server_user.clone(),
            password: user.server_password.clone(),
            md5_hash: match &user.secret {
                Secret::Md5(h) if user.server_user == user.name => Some(h.clone()),
                _ => None,
            },
            scram_keys: self
                .scram_keys
                .lock()
                .expect("scram keys poisoned")
                .get(&user.name)
                .cloned(),
        }
    }

    /// The pool for `user` on `database` at `member`.
    pub fn pool_for(&self, member: &Member, database: &str, user: &User) -> Arc<Pool> {
        let key = PoolKey {
            host: member.host.clone(),
            port: member.port,
            database: database.to_owned(),
            user: user.name.clone(),
        };
        let pool = self.pools.get_or_create(key, |key| {
            // The user as configured now (a reload may have changed it).
            let cfg = self.config.load();
            let user = cfg.user(&user.name).unwrap_or(user);
            let settings = self.pool_settings(&cfg, user);
            Pool::new(key, settings, self.credentials(user), self.metrics.clone())
        });
        if user.server_password.is_none() {
            let creds = self.credentials(user);
            if creds.scram_keys.is_some() && pool.credentials().scram_keys != creds.scram_keys {
                pool.set_credentials(creds);
            }
        }
        pool
    }
}

/// What /status says about the configuration.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigInfo {
    /// Bumped by every successful reload (1 at start).
    pub version: u64,
    pub path: Option<String>,
    /// Seconds since the Unix epoch.
    pub loaded_at: f64,
    pub last_error: Option<String>,
    /// Changed keys that keep their running value until a restart.
    pub pending_restart: Vec<String>,
}
