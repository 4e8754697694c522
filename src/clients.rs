//! Connected clients, as the admin console sees them: a registry sessions
//! join at login and leave at the end, each client's state (kept in atomics
//! by its own session, so the data path takes no lock per transaction), a
//! per-client kill signal, and PAUSE: which databases hold new transactions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

use crate::cancel::CancelSlot;
use crate::config::ListenerRoute;
use crate::pool::{Pool, PooledConn};

/// What a client is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Between transactions, no server connection.
    Idle = 0,
    /// A server connection is attached (a transaction, or a session-mode session).
    Active = 1,
    /// Asking for a server connection (routing, or waiting for a free one).
    Waiting = 2,
    /// Held: no primary is usable (failover) or its database is paused.
    Held = 3,
}

impl ClientState {
    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            3 => ClientState::Held,
            _ => ClientState::Idle,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
            ClientState::Held => "held",
        }
    }
}

/// Who connected: fixed at login.
pub struct ClientSpec {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub user: String,
    pub database: String,
    /// As sent in the startup packet.
    pub application_name: String,
    pub listener: ListenerRoute,
    /// An admin console session rather than a pooled one.
    pub admin: bool,
    /// The client's cancel slot: it also says which server runs its query.
    pub cancel: Arc<CancelSlot>,
}

/// One connected client.
pub struct ClientInfo {
    pub id: u64,
    pub spec: ClientSpec,
    pub connected_at: SystemTime,
    epoch: Instant,
    state: AtomicU8,
    /// Microseconds after `epoch` when `state` last changed.
    since_us: AtomicU64,
    /// The pool of the attached server, the one waited on, or the last one used.
    pool: ArcSwapOption<Pool>,
    server_id: AtomicU64,
    /// Microseconds after `epoch` when the attached server connection was opened.
    server_created_us: AtomicU64,
    kill: watch::Sender<bool>,
    gone: Notify,
}

impl ClientInfo {
    fn us_since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Changes the state (and its start time) if it differs.
    pub fn set_state(&self, s: ClientState) {
        self.set_state_at(s, None);
    }

    /// The same, with the state's start time when the caller has just read
    /// the clock (`None`: read it here, only if the state changes).
    fn set_state_at(&self, s: ClientState, at: Option<Instant>) {
        if self.state.load(Ordering::Relaxed) != s as u8 {
            let at = at.unwrap_or_else(Instant::now);
            self.since_us
                .store(self.us_since_epoch(at), Ordering::Relaxed);
            // SeqCst pairs with `Pause`: a client either sees the pause, or
            // PAUSE sees it asking for a server and waits for it.
            self.state.store(s as u8, Ordering::SeqCst);
        }
    }

    /// How long the client has been in its current state.
    pub fn in_state_for(&self) -> Duration {
        let since = Duration::from_micros(self.since_us.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(since)
    }

    /// When the current state began, as wall-clock time.
    pub fn state_since(&self) -> SystemTime {
        SystemTime::now() - self.in_state_for()
    }

    fn set_pool(&self, pool: &Arc<Pool>) {
        // Stored only when it changes: a transaction-mode client mostly
        // comes back to the same pool.
        let same = self
            .pool
            .load()
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, pool));
        if !same {
            self.pool.store(Some(pool.clone()));
        }
    }

    /// The client waits for a connection of `pool`.
    pub fn waiting_on(&self, pool: &Arc<Pool>) {
        self.set_pool(pool);
        self.set_state(ClientState::Waiting);
    }

    /// The client got `server`.
    pub fn attached(&self, server: &mut PooledConn) {
        self.set_pool(server.pool());
        let lent_at = server.lent_at();
        let conn = server.conn();
        // A transaction-mode client often gets the same connection again.
        if self.server_id.swap(conn.id, Ordering::Relaxed) != conn.id {
            self.server_created_us
                .store(self.us_since_epoch(conn.created), Ordering::Relaxed);
        }
        // Active since the loan began (the pool read the clock then).
        self.set_state_at(ClientState::Active, Some(lent_at));
    }

    pub fn pool(&self) -> Option<Arc<Pool>> {
        self.pool.load_full()
    }

    /// The attached server connection's id and when it was opened (while active).
    pub fn server(&self) -> Option<(u64, SystemTime)> {
        if self.state() != ClientState::Active {
            return None;
        }
        let created = Duration::from_micros(self.server_created_us.load(Ordering::Relaxed));
        let age = self.epoch.elapsed().saturating_sub(created);
        Some((
            self.server_id.load(Ordering::Relaxed),
            SystemTime::now() - age,
        ))
    }

    /// Tells the client's session to end (KILL).
    pub fn kill(&self) {
        self.kill.send_replace(true);
    }

    /// Resolves when the client is gone. Enable it before asking it to go:
    /// only waiters that exist when it leaves are woken.
    pub fn gone(&self) -> tokio::sync::futures::Notified<'_> {
        self.gone.notified()
    }
}

/// All connected clients. Locked at connect, disconnect and by the console.
pub struct ClientRegistry {
    next_id: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
    epoch: Instant,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        ClientRegistry {
            next_id: AtomicU64::new(1),
            map: Mutex::new(BTreeMap::new()),
            epoch: Instant::now(),
        }
    }
}

/// A client's place in the registry; leaving is dropping it.
pub struct Registered {
    registry: Arc<ClientRegistry>,
    pub info: Arc<ClientInfo>,
    /// Becomes true when an admin KILLs this client.
    pub kill: watch::Receiver<bool>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry
            .map
            .lock()
            .expect("client registry poisoned")
            .remove(&self.info.id);
        self.info.gone.notify_waiters();
    }
}

impl Registered {
    /// Resolves once this client is KILLed (at once if it already was).
    pub async fn killed(&mut self) {
        let _ = self.kill.wait_for(|k| *k).await;
    }

    pub fn is_killed(&self) -> bool {
        *self.kill.borrow()
    }
}

impl ClientRegistry {
    pub fn register(self: &Arc<Self>, spec: ClientSpec) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (kill, kill_rx) = watch::channel(false);
        let info = Arc::new(ClientInfo {
            id,
            spec,
            connected_at: SystemTime::now(),
            epoch: self.epoch,
            state: AtomicU8::new(ClientState::Idle as u8),
            since_us: AtomicU64::new(self.epoch.elapsed().as_micros() as u64),
            pool: ArcSwapOption::empty(),
            server_id: AtomicU64::new(0),
            server_created_us: AtomicU64::new(0),
            kill,
            gone: Notify::new(),
        });
        self.map
            .lock()
            .expect("client registry poisoned")
            .insert(id, info.clone());
        Registered {
            registry: self.clone(),
            info,
            kill: kill_rx,
        }
    }

    /// Every connected client, by id.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        self.map
            .lock()
            .expect("client registry poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<ClientInfo>> {
        self.map
            .lock()
            .expect("client registry poisoned")
            .get(&id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("client registry poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What is paused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Paused {
    /// Every database.
    pub all: bool,
    pub databases: BTreeSet<String>,
}

impl Paused {
    pub fn covers(&self, database: &str) -> bool {
        self.all || self.databases.contains(database)
    }
}

/// DISABLE / ENABLE: databases whose new logins are refused (clients
/// already in stay). One atomic load per login while none is disabled.
#[derive(Default)]
pub struct Disabled {
    any: AtomicBool,
    set: std::sync::Mutex<BTreeSet<String>>,
}

impl Disabled {
    pub fn is_disabled(&self, database: &str) -> bool {
        self.any.load(Ordering::SeqCst)
            && self
                .set
                .lock()
                .expect("disabled poisoned")
                .contains(database)
    }

    /// Disables or enables `database`; false when it already was so.
    pub fn set(&self, database: &str, disabled: bool) -> bool {
        let mut set = self.set.lock().expect("disabled poisoned");
        let changed = if disabled {
            set.insert(database.to_owned())
        } else {
            set.remove(database)
        };
        self.any.store(!set.is_empty(), Ordering::SeqCst);
        changed
    }
}

/// PAUSE / RESUME. Sessions check it before each transaction: one atomic
/// load while nothing is paused.
pub struct Pause {
    any: AtomicBool,
    state: watch::Sender<Paused>,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            any: AtomicBool::new(false),
            state: watch::channel(Paused::default()).0,
        }
    }
}

impl Pause {
    pub fn is_paused(&self, database: &str) -> bool {
        self.any.load(Ordering::SeqCst) && self.state.borrow().covers(database)
    }

    pub fn current(&self) -> Paused {
        self.state.borrow().clone()
    }

    /// Wakes on every PAUSE and RESUME.
    pub fn subscribe(&self) -> watch::Receiver<Paused> {
        self.state.subscribe()
    }

    /// Pauses `database`, or everything. Err when it already is.
    pub fn pause(&self, database: Option<&str>) -> Result<(), String> {
        let mut err = None;
        self.state.send_if_modified(|p| {
            match database {
                None if p.all => err = Some("everything is already paused".to_owned()),
                None => p.all = true,
                Some(db) if p.covers(db) => {
                    err = Some(format!("database \"{db}\" is already paused"))
                }
                Some(db) => {
                    p.databases.insert(db.to_owned());
                }
            }
            // Set while the channel is locked, so concurrent PAUSE/RESUME agree.
            self.any
                .store(p.all || !p.databases.is_empty(), Ordering::SeqCst);
            err.is_none()
        });
        err.map_or(Ok(()), Err)
    }

    /// Resumes `database`, or everything. Err when it is not paused.
    pub fn resume(&self, database: Option<&str>) -> Result<(), String> {
        let mut err = None;
        self.state.send_if_modified(|p| {
            match database {
                None if !p.all && p.databases.is_empty() => {
                    err = Some("nothing is paused".to_owned())
                }
                None => *p = Paused::default(),
                Some(db) if p.databases.remove(db) => {}
                Some(db) if p.all => {
                    err = Some(format!(
                        "every database is paused; RESUME without a name resumes them, \"{db}\" included"
                    ))
                }
                Some(db) => err = Some(format!("database \"{db}\" is not paused")),
            }
            self.any
                .store(p.all || !p.databases.is_empty(), Ordering::SeqCst);
            err.is_none()
        });
        err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ClientSpec {
        ClientSpec {
            peer: "127.0.0.1:5000".parse().unwrap(),
            local: None,
            user: "app".into(),
            database: "appdb".into(),
            application_name: String::new(),
            listener: ListenerRoute::Auto,
            admin: false,
            cancel: Arc::new(CancelSlot::default()),
        }
    }

    #[tokio::test]
    async fn registration_lasts_as_long_as_the_handle() {
        let reg = Arc::new(ClientRegistry::default());
        let a = reg.register(spec());
        let b = reg.register(spec());
        assert!(b.info.id > a.info.id);
        assert_eq!(reg.len(), 2);
        let info = a.info.clone();
        let gone = info.gone();
        tokio::pin!(gone);
        gone.as_mut().enable();
        let mut kill = a.kill.clone();
        info.kill();
        assert!(*kill.wait_for(|k| *k).await.unwrap());
        drop(a);
        gone.await;
        assert!(reg.get(info.id).is_none());
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn states_and_their_start() {
        let reg = Arc::new(ClientRegistry::default());
        let c = reg.register(spec());
        assert_eq!(c.info.state(), ClientState::Idle);
        c.info.set_state(ClientState::Held);
        assert_eq!(c.info.state().as_str(), "held");
        assert!(c.info.in_state_for() < Duration::from_secs(5));
        assert!(c.info.server().is_none(), "no server while held");
    }

    #[test]
    fn pause_and_resume_by_database_and_all() {
        let p = Pause::default();
        assert!(!p.is_paused("a"));
        p.pause(Some("a")).unwrap();
        assert!(p.is_paused("a") && !p.is_paused("b"));
        assert!(p.pause(Some("a")).is_err());
        p.pause(None).unwrap();
        assert!(p.is_paused("b"));
        assert!(p.pause(None).is_err());
        // "a" was paused on its own too: resuming it leaves the global pause.
        p.resume(Some("a")).unwrap();
        assert!(p.is_paused("a"), "everything is still paused");
        assert!(p.resume(Some("b")).is_err());
        p.resume(None).unwrap();
        assert!(!p.is_paused("a") && !p.is_paused("b"));
        assert!(p.resume(None).is_err());
        assert!(p.resume(Some("a")).is_err());
        assert_eq!(p.current(), Paused::default());
    }
}
