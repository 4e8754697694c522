//! Admission limits: the login budget (connections still logging in, in
//! total and per source address) and the caps on logged-in clients (in
//! total, per user, per database, with slots kept for the admin console).
//!
//! The decisions are pure functions (`admit_login`, `admit_client`); the
//! tables around them only count. A permit is RAII: dropping it gives its
//! place back. The per-address table holds only addresses with a login in
//! flight, so it never outgrows `max_login_connections`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::ProxyConfig;
use crate::protocol::sqlstate;

/// Why a connection was refused or ended by a limit: the `reason` label of
/// `pgkeel_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_login_connections`.
    Logins,
    /// `max_logins_per_address`.
    LoginsPerAddress,
    /// `max_client_connections` (plus `admin_reserved_connections` for the console).
    Clients,
    /// `max_user_connections`.
    User,
    /// `max_db_connections`.
    Database,
    /// `client_login_timeout`.
    LoginTimeout,
    /// `client_idle_timeout`.
    ClientIdle,
    /// `idle_transaction_timeout`.
    IdleTransaction,
    /// `query_timeout`.
    Query,
}

impl Limit {
    pub const ALL: [Limit; 9] = [
        Limit::Logins,
        Limit::LoginsPerAddress,
        Limit::Clients,
        Limit::User,
        Limit::Database,
        Limit::LoginTimeout,
        Limit::ClientIdle,
        Limit::IdleTransaction,
        Limit::Query,
    ];

    /// The setting's name: the metric label and what messages cite.
    pub fn setting(self) -> &'static str {
        match self {
            Limit::Logins => "max_login_connections",
            Limit::LoginsPerAddress => "max_logins_per_address",
            Limit::Clients => "max_client_connections",
            Limit::User => "max_user_connections",
            Limit::Database => "max_db_connections",
            Limit::LoginTimeout => "client_login_timeout",
            Limit::ClientIdle => "client_idle_timeout",
            Limit::IdleTransaction => "idle_transaction_timeout",
            Limit::Query => "query_timeout",
        }
    }

    /// The SQLSTATE a client gets (PostgreSQL's for the same limit).
    pub fn sqlstate(self) -> &'static str {
        match self {
            Limit::Logins
            | Limit::LoginsPerAddress
            | Limit::Clients
            | Limit::User
            | Limit::Database => sqlstate::TOO_MANY_CONNECTIONS,
            Limit::LoginTimeout => sqlstate::PROTOCOL_VIOLATION,
            Limit::ClientIdle => sqlstate::IDLE_SESSION_TIMEOUT,
            Limit::IdleTransaction => sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
            Limit::Query => sqlstate::QUERY_CANCELED,
        }
    }

    /// The message a client gets, worded as PostgreSQL's where it has one.
    pub fn message(self, user: &str, database: &str) -> String {
        let what = match self {
            Limit::Logins => "sorry, too many connections are logging in".to_owned(),
            Limit::LoginsPerAddress => {
                "sorry, too many connections are logging in from this address".to_owned()
            }
            Limit::Clients => "sorry, too many clients already".to_owned(),
            Limit::User => format!("too many connections for role \"{user}\""),
            Limit::Database => format!("too many connections for database \"{database}\""),
            Limit::LoginTimeout => "canceling authentication due to timeout".to_owned(),
            Limit::ClientIdle => "terminating connection due to idle-session timeout".to_owned(),
            Limit::IdleTransaction => {
                "terminating connection due to idle-in-transaction timeout".to_owned()
            }
            Limit::Query => "canceling statement due to query timeout".to_owned(),
        };
        format!("{what} ({})", self.setting())
    }
}

/// The login budget as configured.
#[derive(Debug, Clone, Copy)]
pub struct LoginCaps {
    pub total: u32,
    pub per_address: u32,
}

/// May one more login start, with `total` logins in flight and `from_address`
/// of them from the same address? A cap of 0 is no cap.
pub fn admit_login(total: u32, from_address: u32, caps: LoginCaps) -> Result<(), Limit> {
    if caps.total > 0 && total >= caps.total {
        return Err(Limit::Logins);
    }
    if caps.per_address > 0 && from_address >= caps.per_address {
        return Err(Limit::LoginsPerAddress);
    }
    Ok(())
}

/// The caps on logged-in clients as configured.
#[derive(Debug, Clone, Copy)]
pub struct ClientCaps {
    pub clients: u32,
    pub admin_reserved: u32,
    pub per_user: u32,
    pub per_database: u32,
}

impl ClientCaps {
    pub fn from_config(p: &ProxyConfig) -> ClientCaps {
        ClientCaps {
            clients: p.max_client_connections,
            admin_reserved: p.admin_reserved_connections,
            per_user: p.max_user_connections,
            per_database: p.max_db_connections,
        }
    }
}

/// Logged-in clients now: all of them (admin consoles included), of this
/// user, on this database.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCounts {
    pub clients: u32,
    pub user: u32,
    pub database: u32,
}

/// Who is logging in: a pooled session, or the admin console (which may use
/// the reserved slots and is no database's client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    Admin,
}

/// May one more client log in? A per-user or per-database cap of 0 is no cap.
pub fn admit_client(now: ClientCounts, caps: ClientCaps, kind: Kind) -> Result<(), Limit> {
    match kind {
        Kind::Admin => {
            if now.clients >= caps.clients.saturating_add(caps.admin_reserved) {
                return Err(Limit::Clients);
            }
        }
        Kind::Session => {
            if now.clients >= caps.clients {
                return Err(Limit::Clients);
            }
            if caps.per_user > 0 && now.user >= caps.per_user {
                return Err(Limit::User);
            }
            if caps.per_database > 0 && now.database >= caps.per_database {
                return Err(Limit::Database);
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Logins {
    total: u32,
    by_address: HashMap<IpAddr, u32>,
}

#[derive(Default)]
struct Clients {
    total: u32,
    by_user: HashMap<String, u32>,
    by_database: HashMap<String, u32>,
}

/// The counts behind the limits, shared by one instance's listeners.
/// Locks are held only to count, never across an await.
#[derive(Default)]
pub struct Limits {
    logins: Mutex<Logins>,
    clients: Mutex<Clients>,
}

/// A place in the login budget, given back on drop.
pub struct LoginPermit {
    limits: Arc<Limits>,
    addr: IpAddr,
}

impl Drop for LoginPermit {
    fn drop(&mut self) {
        let mut l = self.limits.logins.lock().expect("login table poisoned");
        l.total = l.total.saturating_sub(1);
        if let Some(n) = l.by_address.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                l.by_address.remove(&self.addr);
            }
        }
    }
}

/// A logged-in client's place, given back on drop.
pub struct ClientPermit {
    limits: Arc<Limits>,
    /// User and database counted (a pooled session), or none (the console).
    counted: Option<(String, String)>,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut c = self.limits.clients.lock().expect("client table poisoned");
        c.total = c.total.saturating_sub(1);
        if let Some((user, db)) = &self.counted {
            decrement(&mut c.by_user, user);
            decrement(&mut c.by_database, db);
        }
    }
}

fn decrement(map: &mut HashMap<String, u32>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Limits {
    /// A place for one more login from `addr`, or the limit it hits.
    pub fn login(self: &Arc<Self>, addr: IpAddr, caps: LoginCaps) -> Result<LoginPermit, Limit> {
        let mut l = self.logins.lock().expect("login table poisoned");
        let from = l.by_address.get(&addr).copied().unwrap_or(0);
        admit_login(l.total, from, caps)?;
        l.total += 1;
        *l.by_address.entry(addr).or_insert(0) += 1;
        Ok(LoginPermit {
            limits: self.clone(),
            addr,
        })
    }

    /// Connections logging in now.
    pub fn logins_in_flight(&self) -> u32 {
        self.logins.lock().expect("login table poisoned").total
    }

    /// Addresses with a login in flight (the per-address table's size).
    pub fn login_addresses(&self) -> usize {
        self.logins
            .lock()
            .expect("login table poisoned")
            .by_address
            .len()
    }

    /// A place for one more logged-in client, or the limit it hits.
    pub fn client(
        self: &Arc<Self>,
        user: &str,
        database: &str,
        kind: Kind,
        caps: ClientCaps,
    ) -> Result<ClientPermit, Limit> {
        let mut c = self.clients.lock().expect("client table poisoned");
        let now = ClientCounts {
            clients: c.total,
            user: c.by_user.get(user).copied().unwrap_or(0),
            database: c.by_database.get(database).copied().unwrap_or(0),
        };
        admit_client(now, caps, kind)?;
        c.total += 1;
        let counted = (kind == Kind::Session).then(|| {
            *c.by_user.entry(user.to_owned()).or_insert(0) += 1;
            *c.by_database.entry(database.to_owned()).or_insert(0) += 1;
            (user.to_owned(), database.to_owned())
        });
        Ok(ClientPermit {
            limits: self.clone(),
            counted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGINS: LoginCaps = LoginCaps {
        total: 3,
        per_address: 2,
    };

    #[test]
    fn login_budget_total_and_per_address() {
        assert_eq!(admit_login(0, 0, LOGINS), Ok(()));
        assert_eq!(admit_login(2, 1, LOGINS), Ok(()));
        assert_eq!(admit_login(3, 0, LOGINS), Err(Limit::Logins));
        assert_eq!(admit_login(1, 2, LOGINS), Err(Limit::LoginsPerAddress));
        let off = LoginCaps {
            total: 0,
            per_address: 0,
        };
        assert_eq!(admit_login(u32::MAX, u32::MAX, off), Ok(()));
    }

    #[test]
    fn login_permits_count_and_give_back() {
        let l = Arc::new(Limits::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.login(a, LOGINS).unwrap();
        let p2 = l.login(a, LOGINS).unwrap();
        assert_eq!(l.login(a, LOGINS).err(), Some(Limit::LoginsPerAddress));
        let p3 = l.login(b, LOGINS).unwrap();
        assert_eq!(l.login(b, LOGINS).err(), Some(Limit::Logins));
        assert_eq!((l.logins_in_flight(), l.login_addresses()), (3, 2));
        drop((p1, p2, p3));
        // Nothing left behind: the table only holds logins in flight.
        assert_eq!((l.logins_in_flight(), l.login_addresses()), (0, 0));
    }

    const CLIENTS: ClientCaps = ClientCaps {
        clients: 2,
        admin_reserved: 1,
        per_user: 1,
        per_database: 0,
    };

    #[test]
    fn client_caps_and_the_admin_reserve() {
        let at = |clients, user, database| ClientCounts {
            clients,
            user,
            database,
        };
        assert_eq!(admit_client(at(0, 0, 0), CLIENTS, Kind::Session), Ok(()));
        assert_eq!(
            admit_client(at(1, 1, 1), CLIENTS, Kind::Session),
            Err(Limit::User)
        );
        assert_eq!(
            admit_client(at(2, 0, 0), CLIENTS, Kind::Session),
            Err(Limit::Clients)
        );
        // At max, the console still gets in, up to the reserve.
        assert_eq!(admit_client(at(2, 5, 5), CLIENTS, Kind::Admin), Ok(()));
        assert_eq!(
            admit_client(at(3, 0, 0), CLIENTS, Kind::Admin),
            Err(Limit::Clients)
        );
        let per_db = ClientCaps {
            per_database: 1,
            per_user: 0,
            ..CLIENTS
        };
        assert_eq!(
            admit_client(at(1, 1, 1), per_db, Kind::Session),
            Err(Limit::Database)
        );
    }

    #[test]
    fn client_permits_count_users_and_databases() {
        let l = Arc::new(Limits::default());
        let a = l.client("u", "d", Kind::Session, CLIENTS).unwrap();
        assert_eq!(
            l.client("u", "e", Kind::Session, CLIENTS).err(),
            Some(Limit::User)
        );
        let b = l.client("v", "d", Kind::Session, CLIENTS).unwrap();
        let admin = l.client("u", "pgkeel", Kind::Admin, CLIENTS).unwrap();
        assert_eq!(
            l.client("w", "d", Kind::Admin, CLIENTS).err(),
            Some(Limit::Clients)
        );
        drop((a, b, admin));
        let c = l.clients.lock().unwrap();
        assert_eq!((c.total, c.by_user.len(), c.by_database.len()), (0, 0, 0));
    }

    #[test]
    fn every_limit_names_its_setting_in_its_message() {
        for l in Limit::ALL {
            assert!(l.message("u", "d").contains(l.setting()), "{l:?}");
            assert_eq!(l.sqlstate().len(), 5);
        }
    }
}
