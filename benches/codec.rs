//! The relay's per-message cost: scanning client frames into the server
//! buffer and server frames into the client buffer, as a pgbench -S round
//! trip and a large result produce them. No I/O: this is the CPU pgkeel adds
//! per byte on top of the syscalls.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgkeel::session::attachment::{scan_client, scan_server, Buffers, State, Track};
use pgkeel::session::prepared::Prepared;
use pgkeel::statements::ConnStatements;

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![t];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// What pgbench -S -M extended sends per transaction.
fn extended_request() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(msg(
        b'P',
        b"\0SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0\0\0",
    ));
    v.extend(msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x0512345\0\0"));
    v.extend(msg(b'D', b"P\0"));
    v.extend(msg(b'E', b"\0\0\0\0\0"));
    v.extend(msg(b'S', b""));
    v
}

/// What the server answers to it.
fn extended_response() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(msg(b'1', b""));
    v.extend(msg(b'2', b""));
    v.extend(msg(
        b'T',
        b"\0\x01abalance\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    ));
    v.extend(msg(b'D', b"\0\x01\0\0\0\x041234"));
    v.extend(msg(b'C', b"SELECT 1\0"));
    v.extend(msg(b'Z', b"I"));
    v
}

fn bench(c: &mut Criterion) {
    let req = extended_request();
    let resp = extended_response();
    let mut g = c.benchmark_group("relay_scan");
    g.throughput(Throughput::Bytes((req.len() + resp.len()) as u64));
    g.bench_function("pgbench_select_round_trip", |b| {
        let mut bufs = Buffers::default();
        let mut st = State::default();
        b.iter(|| {
            bufs.from_client.extend_from_slice(&req);
            scan_client(&mut bufs, &mut st, 1 << 30, None).unwrap();
            bufs.to_server.clear();
            bufs.from_server.extend_from_slice(&resp);
            scan_server(&mut bufs, &mut st, None).unwrap();
            bufs.to_client.clear();
            assert!(st.is_idle());
        })
    });
    // The same in transaction mode: statement tracking and session-effect
    // scanning on (the unnamed statement passes through unchanged).
    g.bench_function("pgbench_select_round_trip_tracked", |b| {
        let mut bufs = Buffers::default();
        let mut st = State::default();
        let mut prepared = Prepared::new(Default::default());
        let mut conn = ConnStatements::default();
        b.iter(|| {
            let mut track = Track {
                prepared: &mut prepared,
                conn: &mut conn,
                pin_on: &[],
            };
            bufs.from_client.extend_from_slice(&req);
            scan_client(&mut bufs, &mut st, 1 << 30, Some(&mut track)).unwrap();
            bufs.to_server.clear();
            bufs.from_server.extend_from_slice(&resp);
            scan_server(&mut bufs, &mut st, Some(&mut track)).unwrap();
            bufs.to_client.clear();
            assert!(st.is_idle() && prepared.settled());
        })
    });

    // 32 KiB reads of a result made of 200-byte rows, as the relay sees them.
    let row = msg(b'D', &[b'x'; 195]);
    let mut stream = Vec::new();
    while stream.len() < 1 << 20 {
        stream.extend_from_slice(&row);
    }
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("large_result_1MiB", |b| {
        b.iter_batched(
            || {
                (Buffers::default(), {
                    let mut st = State::default();
                    st.pending = 1;
                    st
                })
            },
            |(mut bufs, mut st)| {
                for chunk in stream.chunks(32 * 1024) {
                    bufs.from_server.extend_from_slice(chunk);
                    scan_server(&mut bufs, &mut st, None).unwrap();
                    bufs.to_client.clear();
                }
                bufs
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
