//! Traffic counters per database, as PgBouncer's `SHOW STATS` keeps them:
//! transactions, requests, bytes, and the microseconds spent in
//! transactions, in requests and waiting for a server connection.
//!
//! A session looks its database's counters up once at login and adds to
//! them with relaxed atomics (per transaction, per request, per read), so
//! the data path takes no lock. Entries outlive pools and clients: totals
//! since start never go down. One entry per database a client logged in to.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an averaging period lasts (PgBouncer's `stats_period` default).
pub const STATS_PERIOD: Duration = Duration::from_secs(60);

/// One database's counters.
#[derive(Default, Debug)]
pub struct DbCounters {
    pub xact_count: AtomicU64,
    pub query_count: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub xact_us: AtomicU64,
    pub query_us: AtomicU64,
    pub wait_us: AtomicU64,
    /// When old commit tokens were last forgotten in this database (Unix
    /// seconds; not a statistic, a schedule).
    pub tokens_expired_at: AtomicU64,
}

impl DbCounters {
    pub fn add(field: &AtomicU64, n: u64) {
        field.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_time(field: &AtomicU64, d: Duration) {
        field.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            xact_count: l(&self.xact_count),
            query_count: l(&self.query_count),
            received: l(&self.received),
            sent: l(&self.sent),
            xact_us: l(&self.xact_us),
            query_us: l(&self.query_us),
            wait_us: l(&self.wait_us),
        }
    }
}

/// A copy of one database's counters at one moment.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub xact_count: u64,
    pub query_count: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
}

/// PgBouncer's averages over one period: counts and bytes per second,
/// times per transaction or request (µs).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Averages {
    pub xact_count: u64,
    pub query_count: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
}

/// The averages of what happened between `before` and `after`, `period` apart.
pub fn averages(before: &Totals, after: &Totals, period: Duration) -> Averages {
    let secs = period.as_secs_f64().max(1e-3);
    let d = |a: u64, b: u64| a.saturating_sub(b);
    let per_sec = |a: u64, b: u64| (d(a, b) as f64 / secs).round() as u64;
    let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
    let xacts = d(after.xact_count, before.xact_count);
    let queries = d(after.query_count, before.query_count);
    Averages {
        xact_count: per_sec(after.xact_count, before.xact_count),
        query_count: per_sec(after.query_count, before.query_count),
        received: per_sec(after.received, before.received),
        sent: per_sec(after.sent, before.sent),
        xact_us: per(d(after.xact_us, before.xact_us), xacts),
        query_us: per(d(after.query_us, before.query_us), queries),
        // PgBouncer divides the wait by the requests too.
        wait_us: per(d(after.wait_us, before.wait_us), queries),
    }
}

struct Period {
    started: Instant,
    base: BTreeMap<String, Totals>,
    last: BTreeMap<String, Averages>,
}

/// All databases' counters.
pub struct DbStats {
    dbs: Mutex<BTreeMap<String, Arc<DbCounters>>>,
    period: Mutex<Period>,
}

impl Default for DbStats {
    fn default() -> Self {
        DbStats {
            dbs: Mutex::default(),
            period: Mutex::new(Period {
                started: Instant::now(),
                base: BTreeMap::new(),
                last: BTreeMap::new(),
            }),
        }
    }
}

impl DbStats {
    /// `database`'s counters (created on first use).
    pub fn get(&self, database: &str) -> Arc<DbCounters> {
        self.dbs
            .lock()
            .expect("db stats poisoned")
            .entry(database.to_owned())
            .or_default()
            .clone()
    }

    /// Every database's totals, by name.
    pub fn totals(&self) -> BTreeMap<String, Totals> {
        self.dbs
            .lock()
            .expect("db stats poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.totals()))
            .collect()
    }

    /// The averages of the last whole period (zeros until one has passed,
    /// as in PgBouncer). Periods are closed when they are read: a period
    /// that nobody read for longer is averaged over its real length.
    pub fn averages(&self) -> BTreeMap<String, Averages> {
        let now = self.totals();
        let mut p = self.period.lock().expect("db stats poisoned");
        let elapsed = p.started.elapsed();
        if elapsed >= STATS_PERIOD {
            let zero = Totals::default();
            p.last = now
                .iter()
                .map(|(db, t)| {
                    let before = p.base.get(db).unwrap_or(&zero);
                    (db.clone(), averages(before, t, elapsed))
                })
                .collect();
            p.base = now.clone();
            p.started = Instant::now();
        }
        now.keys()
            .map(|db| (db.clone(), p.last.get(db).copied().unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_means() {
        let before = Totals {
            xact_count: 10,
            query_count: 20,
            received: 1000,
            sent: 2000,
            xact_us: 500,
            query_us: 400,
            wait_us: 100,
        };
        let after = Totals {
            xact_count: 70,
            query_count: 140,
            received: 7000,
            sent: 8000,
            xact_us: 6500,
            query_us: 2800,
            wait_us: 1300,
        };
        let a = averages(&before, &after, Duration::from_secs(60));
        assert_eq!(a.xact_count, 1);
        assert_eq!(a.query_count, 2);
        assert_eq!(a.received, 100);
        assert_eq!(a.sent, 100);
        assert_eq!(a.xact_us, 100);
        assert_eq!(a.query_us, 20);
        assert_eq!(a.wait_us, 10);
        // Nothing happened: zeros, no division by zero.
        assert_eq!(
            averages(&after, &after, Duration::ZERO),
            Averages::default()
        );
    }

    #[test]
    fn counters_are_per_database_and_shared() {
        let s = DbStats::default();
        let a = s.get("a");
        DbCounters::add(&a.xact_count, 2);
        DbCounters::add(&s.get("a").xact_count, 1);
        DbCounters::add_time(&s.get("b").wait_us, Duration::from_millis(3));
        let t = s.totals();
        assert_eq!(t["a"].xact_count, 3);
        assert_eq!(t["b"].wait_us, 3000);
        assert_eq!(s.averages()["a"], Averages::default());
    }
}
