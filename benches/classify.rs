//! What the read/write split costs per statement: the PostgreSQL parser
//! (a cache miss), normalizing the text (every statement), and the whole
//! routing decision for a pgbench -S query with the cache warm (the steady
//! state), the session-effects scan every transaction-mode Query and
//! Parse goes through, and commit detection. `cargo bench --bench classify`.

use criterion::{criterion_group, criterion_main, Criterion};
use pgkeel::classify::{classify, normalize, FunctionPolicy};
use pgkeel::config::{Config, ListenerRoute, PoolMode};
use pgkeel::metrics::Metrics;
use pgkeel::router::{Router, SessionView};

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
const JOIN: &str = "SELECT o.id, c.name, sum(l.amount) FROM orders o JOIN customers c ON c.id = o.customer_id \
    JOIN lines l ON l.order_id = o.id WHERE o.created_at > now() - interval '7 days' AND c.region = 'eu' \
    GROUP BY o.id, c.name ORDER BY 3 DESC LIMIT 50";

fn query(sql: &str) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    pgkeel::protocol::put_query(&mut b, sql);
    b.to_vec()
}

fn bench(c: &mut Criterion) {
    let policy = FunctionPolicy::default();
    c.bench_function("parse+classify pgbench select (cache miss)", |b| {
        b.iter(|| classify(std::hint::black_box(SELECT), &policy))
    });
    c.bench_function("parse+classify 3-way join (cache miss)", |b| {
        b.iter(|| classify(std::hint::black_box(JOIN), &policy))
    });
    let mut out = Vec::new();
    c.bench_function("normalize pgbench select", |b| {
        b.iter(|| normalize(std::hint::black_box(SELECT.as_bytes()), &mut out))
    });
    let cfg = Config::from_toml_str(
        "[[users]]\nname = \"app\"\npassword = \"pw\"\n[[servers]]\nhost = \"127.0.0.1\"\n",
    )
    .unwrap();
    let router = Router::new(&cfg);
    let metrics = Metrics::new();
    let view = SessionView {
        peer: "127.0.0.1:5000".parse().unwrap(),
        user: "app",
        database: "app",
        application_name: "",
        listener: ListenerRoute::Auto,
        pool_mode: PoolMode::Transaction,
        default_read_only: false,
        deferred_begin: false,
        statements: None,
    };
    // What every Query and Parse pays in transaction mode.
    c.bench_function("effects scan pgbench select", |b| {
        b.iter(|| pgkeel::classify::effects::scan(std::hint::black_box(SELECT.as_bytes())))
    });
    c.bench_function("effects scan 3-way join", |b| {
        b.iter(|| pgkeel::classify::effects::scan(std::hint::black_box(JOIN.as_bytes())))
    });
    // Commit detection, on every Query and Parse; and the session's
    // "a lone COMMIT or ROLLBACK?" on every Query it routes.
    c.bench_function("commits? pgbench select", |b| {
        b.iter(|| pgkeel::classify::words::commits(std::hint::black_box(SELECT.as_bytes())))
    });
    c.bench_function("commits? two statements", |b| {
        let two = b"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7; END;";
        b.iter(|| pgkeel::classify::words::commits(std::hint::black_box(two)))
    });
    c.bench_function("lone commit or rollback? pgbench select", |b| {
        b.iter(|| {
            let sql = std::hint::black_box(SELECT.as_bytes());
            pgkeel::classify::words::lone_commit(sql) || pgkeel::classify::words::lone_rollback(sql)
        })
    });
    let frames = query(SELECT);
    let mut scratch = Vec::new();
    router.decide(&view, &frames, &mut scratch, &metrics);
    c.bench_function("route pgbench select (cache hit)", |b| {
        b.iter(|| router.decide(&view, std::hint::black_box(&frames), &mut scratch, &metrics))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
