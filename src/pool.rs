//! Server connection pools, one per (server, database, user).
//!
//! A pool is a semaphore of `pool_size` permits plus a stack of idle
//! connections. A checkout holds a permit for as long as the client holds the
//! connection; waiting clients queue on the semaphore in FIFO order.
//! Invariant: a connection on the idle stack is ReadyForQuery idle, outside
//! any transaction, with nothing unread; anything else is closed instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendError, ServerConn, ServerCredentials};
use crate::metrics::Metrics;

/// ParameterStatus (name, value) pairs a server sent at startup.
pub type ServerParams = Vec<(String, String)>;

/// Idle time after which the admin console calls an idle connection
/// `used` (PgBouncer's sv_used). Every checkout probes the socket anyway.
const STALE_CHECK_AFTER: Duration = Duration::from_millis(50);

/// A connection given back this recently, on which the runtime has seen
/// nothing arrive since, is lent without asking the kernel (one `recv`
/// per transaction saved). Longer idle, the kernel is asked: the runtime's
/// readiness may lag a server's close by a reactor turn.
const TRUST_RUNTIME_FOR: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: u32,
    pub min_size: u32,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    /// TCP keepalive for new server connections (`[proxy] tcp_keepalive`).
    pub keepalive: Option<socket2::TcpKeepalive>,
    /// `server_tls_mode` and `server_auth_allow`, as of the last reload.
    pub server_tls: Arc<crate::tls::ServerTls>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection became free within {0:?} (pool_size reached)")]
    Timeout(Duration),
    #[error(transparent)]
    Connect(#[from] BackendError),
}

pub struct Pool {
    pub key: PoolKey,
    settings: ArcSwap<PoolSettings>,
    creds: ArcSwap<ServerCredentials>,
    idle: Mutex<Vec<ServerConn>>,
    permits: Arc<Semaphore>,
    /// Permits to retire as lent connections come back (the pool shrank
    /// below what is lent).
    shrink_pending: AtomicUsize,
    /// Server ParameterStatus values, learnt from the first connection; sent
    /// to clients at login without a server round trip.
    welcome: ArcSwap<Option<Vec<(String, String)>>>,
    pub stats: PoolStats,
    metrics: Metrics,
    /// The console's RECONNECT: connections opened before it are closed
    /// when they come back instead of being reused.
    reconnect_at: Mutex<Option<Instant>>,
    /// Connections RECONNECT marked that are still open (WAIT_CLOSE).
    stale: AtomicUsize,
}

#[derive(Default)]
pub struct PoolStats {
    pub active: AtomicUsize,
    pub waiting: AtomicUsize,
    pub total_connections: AtomicUsize,
    pub checkouts: AtomicU64,
    pub connects: AtomicU64,
    pub connect_errors: AtomicU64,
}

/// What the admin console shows of an idle connection.
pub struct IdleConn {
    pub id: u64,
    pub key: Arc<crate::cancel::ServerKey>,
    pub created: Instant,
    pub last_used: Instant,
}

/// A connection lent to a client. Dropping it without `release` closes the
/// connection: only a connection known to be clean goes back.
pub struct PooledConn {
    conn: Option<ServerConn>,
    pool: Arc<Pool>,
    permit: Option<OwnedSemaphorePermit>,
    /// When the pool slot was granted (after any wait for it).
    lent_at: Instant,
}

impl PooledConn {
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("connection present until released")
    }

    pub fn server_key(&self) -> &Arc<crate::cancel::ServerKey> {
        &self
            .conn
            .as_ref()
            .expect("connection present until released")
            .key
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// How long this loan has lasted: in transaction mode, the transaction's
    /// time on the server connection (including a connect, if one was needed).
    pub fn lent_for(&self) -> Duration {
        self.lent_at.elapsed()
    }

    /// When the pool slot was granted: the client's state time on attach
    /// reuses it instead of reading the clock again.
    pub fn lent_at(&self) -> Instant {
        self.lent_at
    }

    /// Returns a clean connection to the idle stack (or closes it if it is past its lifetime).
    pub fn release(mut self) {
        let mut conn = self.conn.take().expect("released once");
        if self.pool.retire_permit(&mut self.permit) {
            // The pool shrank while this was lent: the connection goes too.
            self.pool.closed(conn);
            return;
        }
        let s = self.pool.settings.load();
        // One clock read for the idle time's start and the lifetime check.
        let now = Instant::now();
        conn.last_used = now;
        if now.saturating_duration_since(conn.created) >= s.lifetime || self.pool.is_stale(&conn) {
            self.pool.closed(conn);
            return;
        }
        self.pool.idle.lock().expect("pool poisoned").push(conn);
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.pool.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.pool.retire_permit(&mut self.permit);
        if let Some(conn) = self.conn.take() {
            self.pool.closed(conn);
        }
    }
}

impl Pool {
    pub fn new(
        key: PoolKey,
        settings: PoolSettings,
        creds: ServerCredentials,
        metrics: Metrics,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            key,
            permits: Arc::new(Semaphore::new(settings.size as usize)),
            shrink_pending: AtomicUsize::new(0),
            settings: ArcSwap::from_pointee(settings),
            creds: ArcSwap::from_pointee(creds),
            idle: Mutex::new(Vec::new()),
            welcome: ArcSwap::from_pointee(None),
            stats: PoolStats::default(),
            metrics,
            reconnect_at: Mutex::new(None),
            stale: AtomicUsize::new(0),
        })
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// New size and timeouts (a reload). Growing adds permits at once;
    /// shrinking retires free permits and idle connections first, and the
    /// rest as lent connections come back.
    pub fn apply_settings(&self, s: PoolSettings) {
        let old = self.settings.load().size as usize;
        let new = s.size as usize;
        self.settings.store(Arc::new(s));
        if new > old {
            let mut grow = new - old;
            // Cancel retirements still pending before adding permits.
            let _ = self
                .shrink_pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                    let cancel = p.min(grow);
                    grow -= cancel;
                    Some(p - cancel)
                });
            self.permits.add_permits(grow);
        } else if new < old {
            let excess = old - new;
            let forgotten = self.permits.forget_permits(excess);
            self.shrink_pending
                .fetch_add(excess - forgotten, Ordering::AcqRel);
            // Idle connections beyond the new size close now.
            let surplus: Vec<ServerConn> = {
                let mut idle = self.idle.lock().expect("pool poisoned");
                let total = self.stats.total_connections.load(Ordering::Relaxed);
                let n = total.saturating_sub(new).min(idle.len());
                idle.drain(..n).collect()
            };
            for c in surplus {
                self.closed(c);
            }
        }
    }

    /// Forgets `permit` instead of returning it when the pool has shrunk
    /// below what is lent; true when it did.
    fn retire_permit(&self, permit: &mut Option<OwnedSemaphorePermit>) -> bool {
        if permit.is_none() {
            return false;
        }
        let retire = self
            .shrink_pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
            .is_ok();
        if retire {
            if let Some(p) = permit.take() {
                p.forget();
            }
        }
        retire
    }

    /// New credentials (e.g. SCRAM keys learnt at a client's login) for new connections.
    pub fn set_credentials(&self, creds: ServerCredentials) {
        self.creds.store(Arc::new(creds));
    }

    pub fn credentials(&self) -> Arc<ServerCredentials> {
        self.creds.load_full()
    }

    pub fn welcome(&self) -> Option<Vec<(String, String)>> {
        (**self.welcome.load()).clone()
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool poisoned").len()
    }

    /// The idle connections, for the admin console.
    pub fn idle_conns(&self) -> Vec<IdleConn> {
        self.idle
            .lock()
            .expect("pool poisoned")
            .iter()
            .map(|c| IdleConn {
                id: c.id,
                key: c.key.clone(),
                created: c.created,
                last_used: c.last_used,
            })
            .collect()
    }

    /// Idle connections idle for `STALE_CHECK_AFTER` or more: PgBouncer's
    /// `sv_used`.
    pub fn needs_check(idle_for: Duration) -> bool {
        idle_for >= STALE_CHECK_AFTER
    }

    fn is_stale(&self, conn: &ServerConn) -> bool {
        self.reconnect_at
            .lock()
            .expect("pool poisoned")
            .is_some_and(|at| conn.created <= at)
    }

    /// RECONNECT: closes the idle connections now and every lent one when
    /// it comes back, so that new transactions get fresh connections.
    pub fn reconnect(&self) {
        *self.reconnect_at.lock().expect("pool poisoned") = Some(Instant::now());
        self.close_idle();
        // Every connection still open was opened before the mark.
        self.stale.store(
            self.stats.total_connections.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// Connections RECONNECT marked that are still open.
    pub fn stale(&self) -> usize {
        self.stale.load(Ordering::Relaxed)
    }

    fn closed(&self, conn: ServerConn) {
        if self.is_stale(&conn) {
            let _ = self
                .stale
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        self.stats.total_connections.fetch_sub(1, Ordering::Relaxed);
        self.metrics.server_connections.dec();
        drop(conn);
    }

    /// Lends a connection, waiting up to `wait` for a free slot.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<PooledConn, PoolError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.stats.waiting.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let r = tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await;
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                self.metrics
                    .pool_wait_seconds
                    .observe(started.elapsed().as_secs_f64());
                match r {
                    Ok(Ok(p)) => p,
                    // The semaphore is never closed; treat it like a timeout anyway.
                    _ => return Err(PoolError::Timeout(wait)),
                }
            }
        };
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        // One clock read for the loan and the idle connections' ages.
        let now = Instant::now();
        let mut lent = PooledConn {
            conn: None,
            pool: self.clone(),
            permit: Some(permit),
            lent_at: now,
        };
        let s = self.settings.load();
        loop {
            let Some(conn) = self.idle.lock().expect("pool poisoned").pop() else {
                break;
            };
            let idle_for = now.saturating_duration_since(conn.last_used);
            // Whatever its idle time: a server that crashed a millisecond
            // ago has closed every idle connection to it.
            if now.saturating_duration_since(conn.created) >= s.lifetime
                || idle_for >= s.idle_timeout
                || !lendable(&conn.stream, idle_for)
            {
                self.closed(conn);
                continue;
            }
            lent.conn = Some(conn);
            return Ok(lent);
        }
        // Boxed: a connect's state (~2 KiB) would otherwise be part of
        // every session's task, idle or not, for the rare checkout that
        // opens a connection.
        lent.conn = Some(Box::pin(self.connect()).await?);
        Ok(lent)
    }

    async fn connect(&self) -> Result<ServerConn, BackendError> {
        let s = self.settings.load();
        let creds = self.creds.load();
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        match ServerConn::connect(
            &self.key.host,
            self.key.port,
            &self.key.database,
            &creds,
            &s.server_tls,
            s.connect_timeout,
        )
        .await
        {
            Ok(conn) => {
                if let Some(tcp) = conn.stream.tcp() {
                    crate::system::set_keepalive(tcp, s.keepalive.as_ref());
                }
                self.stats.total_connections.fetch_add(1, Ordering::Relaxed);
                self.metrics.server_connections.inc();
                if self.welcome.load().is_none() {
                    self.welcome.store(Arc::new(Some(conn.params.clone())));
                }
                Ok(conn)
            }
            Err(e) => {
                self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Closes idle connections past their idle timeout or lifetime (keeping
    /// `min_size` open), then opens connections up to `min_size`.
    pub async fn maintain(self: &Arc<Self>) {
        let s = self.settings.load_full();
        let expired: Vec<ServerConn> = {
            let mut idle = self.idle.lock().expect("pool poisoned");
            let total = self.stats.total_connections.load(Ordering::Relaxed);
            let mut removable = total.saturating_sub(s.min_size as usize);
            let mut expired = Vec::new();
            // Oldest-used first: the stack's bottom.
            let mut i = 0;
            while i < idle.len() {
                let c = &idle[i];
                let too_old = c.created.elapsed() >= s.lifetime;
                let too_idle = c.last_used.elapsed() >= s.idle_timeout && removable > 0;
                if too_old || too_idle || c.is_stale() {
                    removable = removable.saturating_sub(1);
                    expired.push(idle.remove(i));
                } else {
                    i += 1;
                }
            }
            expired
        };
        for c in expired {
            self.closed(c);
        }
        while self.stats.total_connections.load(Ordering::Relaxed) < s.min_size as usize {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            match self.connect().await {
                Ok(c) => self.idle.lock().expect("pool poisoned").push(c),
                Err(e) => {
                    tracing::debug!(pool = ?self.key, error = %e, "cannot open min_pool_size connection");
                    break;
                }
            }
            drop(permit);
        }
    }

    /// Closes every idle connection (shutdown, or the server left).
    pub fn close_idle(&self) {
        let drained: Vec<ServerConn> =
            std::mem::take(&mut *self.idle.lock().expect("pool poisoned"));
        for c in drained {
            self.closed(c);
        }
    }
}

/// The connection's socket has nothing to read and is not closed: the
/// server neither ended the connection nor sent anything unasked.
fn quiet(stream: &crate::tls::Stream) -> bool {
    stream.tcp().is_some_and(crate::backend::socket_quiet)
}

/// Quiet, as far as a checkout needs to know: given back within
/// `TRUST_RUNTIME_FOR` with no readiness seen since, or quiet by the
/// kernel's word (`quiet`).
fn lendable(stream: &crate::tls::Stream, idle_for: Duration) -> bool {
    let trusted = idle_for < TRUST_RUNTIME_FOR
        && stream
            .tcp()
            .is_some_and(|t| !crate::backend::readiness_seen(t));
    trusted || quiet(stream)
}

/// All pools. Looked up once per client login and cached by the session.
#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// Welcome parameters of pools since removed, by (database, user).
    welcomes: Mutex<HashMap<(String, String), ServerParams>>,
}

impl Pools {
    pub fn get_or_create(
        &self,
        key: PoolKey,
        make: impl FnOnce(PoolKey) -> Arc<Pool>,
    ) -> Arc<Pool> {
        let mut map = self.map.lock().expect("pools poisoned");
        if let Some(p) = map.get(&key) {
            return p.clone();
        }
        let p = make(key.clone());
        map.insert(key, p.clone());
        p
    }

    /// Forgets pools with no connections, no borrowers and no waiters (a
    /// database that does not exist, a server that left), so probing many
    /// names cannot grow memory. A later login simply makes the pool again.
    pub fn remove_unused(&self) {
        let mut removed = Vec::new();
        self.map.lock().expect("pools poisoned").retain(|_, p| {
            let keep = Arc::strong_count(p) > 1
                || p.stats.total_connections.load(Ordering::Relaxed) > 0
                || p.stats.waiting.load(Ordering::Relaxed) > 0;
            if !keep {
                removed.push(p.clone());
            }
            keep
        });
        let mut welcomes = self.welcomes.lock().expect("pools poisoned");
        for p in removed {
            if let Some(w) = p.welcome() {
                welcomes.insert((p.key.database.clone(), p.key.user.clone()), w);
            }
        }
    }

    /// Server parameters already learnt for `database` and `user`, on any member.
    pub fn welcome_for(&self, database: &str, user: &str) -> Option<Vec<(String, String)>> {
        let live = self
            .map
            .lock()
            .expect("pools poisoned")
            .values()
            .filter(|p| p.key.database == database && p.key.user == user)
            .find_map(|p| p.welcome());
        live.or_else(|| {
            self.welcomes
                .lock()
                .expect("pools poisoned")
                .get(&(database.to_owned(), user.to_owned()))
                .cloned()
        })
    }

    /// Server connections lent out by the pool for (host, port, database, user).
    pub fn active_on(&self, host: &str, port: u16, database: &str, user: &str) -> usize {
        self.map
            .lock()
            .expect("pools poisoned")
            .values()
            .find(|p| {
                p.key.port == port
                    && p.key.host == host
                    && p.key.database == database
                    && p.key.user == user
            })
            .map_or(0, |p| p.stats.active.load(Ordering::Relaxed))
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map
            .lock()
            .expect("pools poisoned")
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{lendable, TRUST_RUNTIME_FOR};
    use crate::backend::socket_quiet as quiet;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        (ours, theirs)
    }

    /// Until the peer's close or bytes reach this socket (the kernel's
    /// loopback delivery is not instantaneous), then what the peek says.
    async fn quiet_once_delivered(s: &TcpStream) -> bool {
        s.readable().await.unwrap();
        quiet(s)
    }

    #[tokio::test]
    async fn a_recent_connection_is_lent_on_the_runtimes_word_until_something_arrives() {
        let recent = Duration::ZERO;
        let (ours, mut theirs) = pair().await;
        let ours = crate::tls::Stream::plain(ours);
        assert!(lendable(&ours, recent), "open and silent");
        theirs.write_all(b"E").await.unwrap();
        ours.readable().await.unwrap();
        assert!(!lendable(&ours, recent), "the runtime saw bytes arrive");
        let (ours, theirs) = pair().await;
        let ours = crate::tls::Stream::plain(ours);
        drop(theirs);
        ours.readable().await.unwrap();
        assert!(!lendable(&ours, recent), "the runtime saw the close");
        assert!(
            !lendable(&ours, TRUST_RUNTIME_FOR),
            "and so does the kernel"
        );
    }

    #[tokio::test]
    async fn checkout_probe_sees_what_the_server_did() {
        let (ours, _theirs) = pair().await;
        assert!(quiet(&ours), "an open, silent connection may be lent");
        assert!(quiet(&ours), "the peek consumes nothing");

        let (ours, theirs) = pair().await;
        drop(theirs);
        assert!(!quiet_once_delivered(&ours).await, "the server closed it");

        let (ours, mut theirs) = pair().await;
        // Like a FATAL sent before the server process exits.
        theirs.write_all(b"E").await.unwrap();
        assert!(
            !quiet_once_delivered(&ours).await,
            "the server sent something unasked"
        );
        assert!(!quiet(&ours), "and it is still there: the peek left it");
    }
}
