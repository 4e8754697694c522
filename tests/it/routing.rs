//! The read/write split against a real Patroni cluster: reads spread over
//! the replicas, writes and plain transactions stay on the primary, rules,
//! hints and fixed-route listeners override, a lagging replica is skipped,
//! read-your-writes holds with a replica's replay paused, and after a
//! switchover the old primary takes reads only once it streams again.
//! The binary's one cluster, shared with patroni.rs and failover.rs: each
//! test has it to itself (its turn), since several pause replicas or move
//! the leader, and the others count where their reads land.

use crate::common;
use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use common::cluster::{self, Cluster};
use pgkeel::topology::Role;
use support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn proxy(c: &'static Cluster, extra: &str) -> pgkeel::ProxyHandle {
    let p = start(&format!(
        "{}\n{extra}",
        c.pgkeel_config(&c.scope, "query_wait_timeout = \"5s\"")
    ))
    .await;
    settle(c, &p).await;
    p
}

/// Waits until pgkeel sees the leader as primary and both others as
/// streaming replicas; returns the leader's name.
async fn settle(c: &'static Cluster, p: &pgkeel::ProxyHandle) -> String {
    c.run_async(&["wait-healthy"]).await;
    let leader = c.leader();
    let ok = wait_until(Duration::from_secs(30), || async {
        let t = p.shared().topology.load();
        t.members.len() == 3
            && t.primary.as_ref().is_some_and(|m| m.name == leader)
            && t.members
                .iter()
                .filter(|m| m.member.name != leader)
                .all(|m| m.serves_reads())
    })
    .await;
    assert!(
        ok,
        "topology did not settle: {:?}",
        p.shared().topology.load()
    );
    leader
}

async fn client(addr: std::net::SocketAddr) -> Client {
    connect(addr, "app", "app_password", "app").await.unwrap()
}

/// The first row of a simple query, as text columns.
async fn row(c: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    Ok(msgs
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default())
}

async fn port(c: &Client, sql: &str) -> u16 {
    row(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))[0]
        .parse()
        .unwrap()
}

/// How many of `n` runs of `sql` landed on each port.
async fn spread(c: &Client, sql: &str, n: usize) -> BTreeMap<u16, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(port(c, sql).await).or_default() += 1;
    }
    seen
}

fn replica_ports(c: &Cluster, leader: &str) -> Vec<u16> {
    ["pg1", "pg2", "pg3"]
        .iter()
        .filter(|n| **n != leader)
        .map(|n| c.port_of(n))
        .collect()
}

async fn superuser(port: u16) -> Client {
    common::pg_client(port, "postgres", "postgres", "app").await
}

/// Runs `patronictl <args>` against the cluster; panics when it fails.
fn patronictl(c: &Cluster, args: &[&str]) {
    let out = std::process::Command::new("patronictl")
        .arg("-c")
        .arg(c.dir.join("pg1/patroni.yml"))
        .args(args)
        .output()
        .expect("patronictl runs");
    assert!(
        out.status.success(),
        "patronictl {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pauses WAL replay on a member; resumes it when dropped, even when a test
/// fails. Patroni (3.0, PostgreSQL 14+) resumes a paused replay on its next
/// HA loop, within `loop_wait` (it takes any pause for one PostgreSQL made
/// itself over too-low settings), except in maintenance mode: so the
/// cluster is in maintenance mode while the replay is paused.
struct Paused {
    cluster: &'static Cluster,
    port: u16,
}

impl Paused {
    async fn new(cluster: &'static Cluster, port: u16) -> Paused {
        // `--wait`: until every member has seen it, so none resumes the
        // replay paused next.
        tokio::task::spawn_blocking(move || patronictl(cluster, &["pause", "--wait"]))
            .await
            .unwrap();
        // Made before the replay pauses: dropping it ends maintenance mode
        // even if pausing fails.
        let paused = Paused { cluster, port };
        superuser(port)
            .await
            .simple_query("SELECT pg_wal_replay_pause()")
            .await
            .unwrap();
        paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "app",
            ])
            .args(["-Atc", "SELECT pg_wal_replay_resume()"])
            .env("PGPASSWORD", "postgres")
            .output();
        // Not asserted: a panic while a failed test unwinds would abort.
        let _ = std::process::Command::new("patronictl")
            .arg("-c")
            .arg(self.cluster.dir.join("pg1/patroni.yml"))
            .args(["resume", "--wait"])
            .output();
    }
}

/// For a failure message: whether the cluster changed under the test (its
/// leader now, the failovers pgkeel lived) and what pgkeel sees now.
fn cluster_now(c: &Cluster, p: &pgkeel::ProxyHandle) -> String {
    format!(
        "leader now {:?}; pgkeel's failovers {:?}; topology {:?}",
        c.leader(),
        p.shared().topology.failovers(),
        p.shared().topology.load()
    )
}

/// The tables, once for the binary: the cluster is the binary's, and a
/// concurrent `CREATE ... IF NOT EXISTS` of one name can fail.
async fn table(p: &pgkeel::ProxyHandle) {
    static TABLES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    TABLES
        .get_or_init(|| async {
            client(p.local_addr())
                .await
                .simple_query("CREATE TABLE IF NOT EXISTS routing_rows (id bigserial PRIMARY KEY, v text); CREATE SEQUENCE IF NOT EXISTS routing_seq; CREATE TABLE IF NOT EXISTS routing_reports (x int)")
                .await
                .unwrap();
        })
        .await;
}

#[tokio::test]
async fn reads_spread_over_replicas_and_writes_stay_on_the_primary() {
    let turn = cluster::turn().await;
    let c = turn.cluster().await;
    let p = proxy(c, "").await;
    let leader = settle(c, &p).await;
    let primary = c.port_of(&leader);
    let replicas = replica_ports(c, &leader);
    table(&p).await;
    let app = client(p.local_addr()).await;

    let reads = spread(&app, "SELECT inet_server_port()", 20).await;
    assert_eq!(
        reads.keys().copied().collect::<Vec<_>>(),
        {
            let mut r = replicas.clone();
            r.sort();
            r
        },
        "reads went to {reads:?}"
    );
    assert!(reads.values().all(|n| *n == 10), "round robin: {reads:?}");

    // Extended protocol (unnamed statement) reads are split too.
    let r = app
        .query_typed("SELECT inet_server_port()::int", &[])
        .await
        .unwrap();
    assert!(replicas.contains(&(r[0].get::<_, i32>(0) as u16)));
    // Named prepared statements too: a Bind routes by its statement's
    // text, and the statement is prepared on each replica as needed.
    let stmt = app.prepare("SELECT inet_server_port()::int").await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let port = app.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0) as u16;
        assert!(replicas.contains(&port), "a prepared read ran on {port}");
        seen.insert(port);
    }
    assert_eq!(seen.len(), 2, "prepared reads spread: {seen:?}");

    // Writes, and reads that need the primary, reach only the primary.
    for sql in [
        "INSERT INTO routing_rows (v) VALUES ('w') RETURNING inet_server_port()",
        "WITH d AS (DELETE FROM routing_rows WHERE false RETURNING 1) SELECT inet_server_port()",
        "SELECT inet_server_port() FROM routing_rows FOR UPDATE",
        "SELECT inet_server_port() FROM routing_rows FOR SHARE",
        "SELECT inet_server_port(), nextval('routing_seq')",
        "SELECT inet_server_port(), set_config('application_name', 'x', true)",
        "SELECT inet_server_port(), txid_current()",
        "SELECT inet_server_port(), pg_current_wal_lsn()",
        "SELECT inet_server_port(), pg_advisory_xact_lock(42)",
        "SELECT inet_server_port(), lower('A') FROM (SELECT 1) s WHERE EXISTS (SELECT pg_try_advisory_xact_lock(7))",
    ] {
        for _ in 0..3 {
            assert_eq!(port(&app, sql).await, primary, "{sql}");
        }
    }

    // A plain transaction never splits, whatever it runs.
    app.simple_query("BEGIN").await.unwrap();
    let a = port(&app, "SELECT inet_server_port()").await;
    let b = port(&app, "SELECT inet_server_port()").await;
    app.simple_query("COMMIT").await.unwrap();
    assert_eq!((a, b), (primary, primary));
    // Declared read-only, it goes to one replica, all of it.
    for begin in ["BEGIN READ ONLY", "START TRANSACTION READ ONLY"] {
        app.simple_query(begin).await.unwrap();
        let a = port(&app, "SELECT inet_server_port()").await;
        let b = port(&app, "SELECT inet_server_port()").await;
        app.simple_query("COMMIT").await.unwrap();
        assert!(replicas.contains(&a) && a == b, "{begin}: {a} then {b}");
    }
    app.simple_query("BEGIN").await.unwrap();
    app.simple_query("SET TRANSACTION READ ONLY").await.unwrap();
    let a = port(&app, "SELECT inet_server_port()").await;
    let ro = row(&app, "SHOW transaction_read_only").await.unwrap();
    app.simple_query("COMMIT").await.unwrap();
    assert!(
        replicas.contains(&a),
        "SET TRANSACTION READ ONLY went to {a}"
    );
    assert_eq!(ro, ["on"]);
    // A deferred BEGIN that ends at once needs no server at all.
    app.simple_query("BEGIN").await.unwrap();
    app.simple_query("ROLLBACK").await.unwrap();
    // And a write after a deferred BEGIN is one transaction on the primary.
    app.simple_query("BEGIN").await.unwrap();
    let a = port(
        &app,
        "INSERT INTO routing_rows (v) VALUES ('t') RETURNING inet_server_port()",
    )
    .await;
    app.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(a, primary);

    let m = &p.shared().metrics;
    assert!(m.queries[1].get() >= 20, "replica queries counted");
    assert!(m.classify_cache_hits_total.get() > m.classify_cache_misses_total.get());
    let (_, text) = http_get(p.admin_addr().unwrap(), "/metrics").await;
    assert!(
        text.contains("pgkeel_routed_total{reason=\"read\",route=\"replica\"}"),
        "{text}"
    );
    assert!(text.contains("pgkeel_replica_lag_bytes{member="));
    p.shutdown().await;
}

#[tokio::test]
async fn rules_hints_and_fixed_route_listeners_override_the_sql() {
    let turn = cluster::turn().await;
    let c = turn.cluster().await;
    let p = proxy(
        c,
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nroute = \"replica\"\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\nroute = \"primary\"\n\
         [[query_rules]]\npattern = \"from routing_reports\"\nroute = \"primary\"\nlog = true\n\
         [[query_rules]]\napplication_name = \"reporting\"\nroute = \"replica\"\n",
    )
    .await;
    let leader = settle(c, &p).await;
    let primary = c.port_of(&leader);
    let replicas = replica_ports(c, &leader);
    table(&p).await;
    let app = client(p.local_addr()).await;

    // Hints win over the SQL: a write sent to a replica fails there.
    assert_eq!(
        port(&app, "/* pgkeel: primary */ SELECT inet_server_port()").await,
        primary
    );
    let e = app
        .simple_query("/* pgkeel: replica */ INSERT INTO routing_rows (v) VALUES ('x')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "25006", "{e}");
    // A pattern rule (matched on the normalized text, any case, any literal).
    // The write follows a failed one on a replica: tokio-postgres sends it
    // as soon as the ErrorResponse arrives, before the ReadyForQuery. Should
    // it fail, the message says whether the cluster changed meanwhile.
    app.simple_query("INSERT INTO routing_reports VALUES (5), (6)")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "a plain write (leader {leader}): {} {:?}; {}",
                sqlstate(&e),
                e.as_db_error().map(|d| d.message()),
                cluster_now(c, &p)
            )
        });
    for x in [5, 6, 5, 6] {
        let sql = format!("SELECT inet_server_port() FROM Routing_Reports WHERE x = {x}");
        assert_eq!(port(&app, &sql).await, primary, "{sql}");
    }
    // An application_name rule sends even a transaction to the replicas.
    app.simple_query("SET application_name = 'reporting'")
        .await
        .unwrap();
    app.simple_query("BEGIN").await.unwrap();
    let a = port(&app, "SELECT inet_server_port()").await;
    app.simple_query("COMMIT").await.unwrap();
    assert!(replicas.contains(&a), "reporting transaction on {a}");
    app.simple_query("SET application_name = 'web'")
        .await
        .unwrap();

    // The two-port setup: everything to the replicas, or to the primary.
    let ro = client(
        p.listener_addr(pgkeel::config::ListenerRoute::Replica)
            .unwrap(),
    )
    .await;
    let reads = spread(&ro, "SELECT inet_server_port()", 6).await;
    assert!(reads.keys().all(|p| replicas.contains(p)), "{reads:?}");
    let e = ro
        .simple_query("INSERT INTO routing_rows (v) VALUES ('x')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "25006");
    let rw = client(
        p.listener_addr(pgkeel::config::ListenerRoute::Primary)
            .unwrap(),
    )
    .await;
    let reads = spread(&rw, "SELECT inet_server_port()", 4).await;
    assert_eq!(reads.keys().copied().collect::<Vec<_>>(), [primary]);
    p.shutdown().await;
}

#[tokio::test]
async fn a_lagging_replica_takes_no_reads_until_it_catches_up() {
    let turn = cluster::turn().await;
    let c = turn.cluster().await;
    let p = proxy(c, "[routing]\nmax_replica_lag_bytes = \"256KB\"\n").await;
    let leader = settle(c, &p).await;
    let replicas = replica_ports(c, &leader);
    let (lagging, other) = (replicas[0], replicas[1]);
    table(&p).await;
    let app = client(p.local_addr()).await;
    let lag_of = |port: u16| {
        let t = p.shared().topology.load();
        t.members
            .iter()
            .find(|m| m.member.port == port)
            .and_then(|m| m.lag_bytes)
    };

    let paused = Paused::new(c, lagging).await;
    // About 1 MB of WAL the paused replica receives but does not replay.
    app.simple_query(
        "INSERT INTO routing_rows (v) SELECT repeat('x', 100) FROM generate_series(1, 5000)",
    )
    .await
    .unwrap();
    assert!(
        // 30 s: on a busy machine (other tests of the binary run pgbench) a
        // health probe can miss its 1 s timeout, and until the next one
        // pgkeel shows Patroni's coarser lag instead of its own.
        wait_until(Duration::from_secs(30), || async {
            // The live replica replays the same WAL at once; wait until
            // pgkeel has measured it caught up, and the paused one behind.
            lag_of(lagging).is_some_and(|l| l > 256 << 10)
                && lag_of(other).is_some_and(|l| l <= 256 << 10)
        })
        .await,
        "lag never showed: {:?} (paused), {:?} (live); {:?}",
        lag_of(lagging),
        lag_of(other),
        p.shared().topology.load()
    );
    let reads = spread(&app, "SELECT inet_server_port()", 10).await;
    assert_eq!(
        reads.keys().copied().collect::<Vec<_>>(),
        [other],
        "{reads:?}"
    );

    drop(paused);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            port(&app, "SELECT inet_server_port()").await == lagging
        })
        .await,
        "the replica never took reads again"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn read_your_writes_holds_with_a_replica_paused() {
    let turn = cluster::turn().await;
    let c = turn.cluster().await;
    let p = proxy(c, "[routing]\nread_your_writes = true\n").await;
    let plain = proxy(c, "").await;
    let leader = settle(c, &p).await;
    let replicas = replica_ports(c, &leader);
    table(&p).await;
    // Both replicas have the table before one stops replaying.
    for port in &replicas {
        let su = superuser(*port).await;
        assert!(
            wait_until(Duration::from_secs(10), || async {
                row(&su, "SELECT to_regclass('routing_rows') IS NOT NULL")
                    .await
                    .is_ok_and(|r| r[0] == "t")
            })
            .await,
            "routing_rows never reached the replica on {port}"
        );
    }
    let _paused = Paused::new(c, replicas[0]).await;
    let ryw = client(p.local_addr()).await;
    let other = client(plain.local_addr()).await;

    let insert = "INSERT INTO routing_rows (v) VALUES ('ryw') RETURNING id";
    // Read-your-writes is only shown to hold if the paused replica really
    // serves stale reads meanwhile: plain pgkeel, reading from both
    // replicas, must be seen doing so at least 20 times. On a busy machine
    // a missed health probe can take the paused replica out of rotation for
    // a while, so go on until it has been seen (at least 20 rounds, bounded
    // by a generous deadline) instead of a fixed number of rounds; and as
    // many read-your-writes reads must have fallen back to the primary.
    let fallbacks = || p.shared().metrics.replica_reads_on_primary_total.get();
    let mut stale_without = 0;
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while rounds < 20 || stale_without < 20 || fallbacks() < 10 {
        assert!(
            Instant::now() < deadline,
            "in {rounds} rounds, without read-your-writes the paused replica served {stale_without} stale reads and {} read-your-writes reads fell back to the primary; plain pgkeel's topology: {:?}",
            fallbacks(),
            plain.shared().topology.load()
        );
        rounds += 1;
        let id = &row(&ryw, insert).await.unwrap()[0];
        let seen = row(
            &ryw,
            &format!("SELECT count(*), inet_server_port() FROM routing_rows WHERE id = {id}"),
        )
        .await
        .unwrap();
        assert_eq!(
            seen[0], "1",
            "read-your-writes: row {id} not seen on port {}",
            seen[1]
        );

        // The same without read-your-writes: the paused replica misses it.
        let id = &row(&other, insert).await.unwrap()[0];
        for _ in 0..2 {
            let seen = row(
                &other,
                &format!("SELECT count(*) FROM routing_rows WHERE id = {id}"),
            )
            .await
            .unwrap();
            stale_without += usize::from(seen[0] == "0");
        }
    }
    // Once the live replica has replayed the write, reads go there again
    // (never to the paused one).
    let id = &row(&ryw, insert).await.unwrap()[0];
    let sql = format!("SELECT count(*), inet_server_port() FROM routing_rows WHERE id = {id}");
    let mut ports = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ports.last() != Some(&replicas[1]) {
        assert!(
            Instant::now() < deadline,
            "reads never returned to the live replica: {ports:?}"
        );
        let r = row(&ryw, &sql).await.unwrap();
        assert_eq!(r[0], "1");
        ports.push(r[1].parse::<u16>().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!ports.contains(&replicas[0]));
    p.shutdown().await;
    plain.shutdown().await;
}

#[tokio::test]
async fn after_a_switchover_the_old_primary_takes_reads_once_it_streams() {
    let turn = cluster::turn().await;
    let c = turn.cluster().await;
    let p = proxy(c, "").await;
    let old = settle(c, &p).await;
    let old_port = c.port_of(&old);
    let app = client(p.local_addr()).await;
    let sql =
        "SELECT inet_server_port(), pg_is_in_recovery(), pg_last_wal_receive_lsn() IS NOT NULL";

    // Reads so far, so that the switchover starts under a running reader.
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let stop = Instant::now() + Duration::from_secs(40);
        let reads = reads.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while Instant::now() < stop {
                match row(&app, sql).await {
                    Ok(r) => {
                        seen.push((Instant::now(), r));
                        reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => panic!("read failed during the switchover: {e}"),
                }
                let back = seen
                    .last()
                    .is_some_and(|(_, r)| r[0] == old_port.to_string());
                if back && seen.len() > 20 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let reading = wait_until(Duration::from_secs(10), || async {
        reads.load(std::sync::atomic::Ordering::Relaxed) >= 10
    })
    .await;
    assert!(reading, "the reader never read before the switchover");
    let switched_at = Instant::now();
    c.run_async(&["switchover"]).await;
    let seen = reader.await.unwrap();
    let on_old: Vec<_> = seen
        .iter()
        .filter(|(t, r)| *t > switched_at && r[0] == old_port.to_string())
        .collect();
    assert!(!on_old.is_empty(), "the old primary never took reads again");
    for (_, r) in &on_old {
        assert_eq!(
            (r[1].as_str(), r[2].as_str()),
            ("t", "t"),
            "read on the old primary before it streamed: {r:?}"
        );
    }
    let t = p.shared().topology.load();
    let m = t.members.iter().find(|m| m.member.name == old).unwrap();
    assert_eq!(m.role, Role::Replica);
    drop(t);
    p.shutdown().await;
}

/// A write pipelined behind a read (sent before the read's ReadyForQuery,
/// as tokio-postgres does after an error) is routed on its own: attached to
/// a replica for the read, the session must not forward the write there.
#[tokio::test]
async fn a_write_pipelined_behind_a_replica_read_goes_to_the_primary() {
    let turn = cluster::turn().await;
    let c = turn.cluster().await;
    let p = proxy(c, "").await;
    table(&p).await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "app").await;
    for round in 0..20 {
        // Both in one write: the read lands on a replica, the write must not.
        let mut both = BytesMut::new();
        for sql in [
            "SELECT inet_server_port()",
            "INSERT INTO routing_rows (v) VALUES ('pipelined') RETURNING inet_server_port()",
        ] {
            both.put_u8(b'Q');
            both.put_i32((4 + sql.len() + 1) as i32);
            both.put_slice(sql.as_bytes());
            both.put_u8(0);
        }
        raw.send(&both).await;
        for what in ["read", "write"] {
            let (msgs, status) = raw.until_ready().await;
            assert_eq!(status, b'I');
            if let Some((_, body)) = msgs.iter().find(|(t, _)| *t == b'E') {
                panic!(
                    "round {round}: the pipelined {what} failed: {:?}",
                    pgkeel::protocol::parse_error_fields(body)
                );
            }
        }
    }
}
