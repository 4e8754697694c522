//! Each request's time, from going to the server to its ReadyForQuery.
//! Kept out of the attachment core, which has no clock: the relay feeds it
//! what the core counted.

use std::time::{Duration, Instant};

use prometheus::Histogram;

use super::attachment::State;

/// Requests whose send times are kept; deeper pipelines are answered untimed.
const CLOCKED: usize = 16;

/// Each request's time, from going to the server to its ReadyForQuery.
///
/// A request is what earns one ReadyForQuery (`State::pending`): a simple
/// Query, or extended-protocol messages up to their Sync, whose clock starts
/// at the first of them. Send times wait in a small ring, oldest first, and
/// each ReadyForQuery takes the oldest: exact for pipelines too, and for a
/// client that sends its next request as soon as an ErrorResponse arrives
/// (tokio-postgres does), which timing a whole busy period at once would
/// merge with the failed one. One `Instant::now()` per request, no
/// allocation. A PREPARE pgkeel sends ahead of a client's EXECUTE earns a
/// ReadyForQuery and so counts as a request of its own.
#[derive(Default)]
pub struct RequestClock {
    ring: [Option<Instant>; CLOCKED],
    head: usize,
    len: usize,
    /// Owed beyond the ring (newer than all in it): answered without a time.
    untimed: u32,
    /// When the extended-protocol messages not yet followed by a Sync began.
    batch: Option<Instant>,
}

impl RequestClock {
    fn owed(&self) -> u32 {
        self.len as u32 + self.untimed
    }

    /// After client messages were scanned: clocks the requests sent.
    pub fn sent(&mut self, st: &State) {
        let owed = self.owed();
        let mut now = None;
        if st.pending > owed {
            let at = self
                .batch
                .take()
                .unwrap_or_else(|| *now.get_or_insert_with(Instant::now));
            for _ in owed..st.pending {
                if self.untimed > 0 || self.len == CLOCKED {
                    self.untimed += 1;
                } else {
                    self.ring[(self.head + self.len) % CLOCKED] = Some(at);
                    self.len += 1;
                }
            }
        } else {
            self.forget(owed - st.pending);
        }
        if st.unsynced && self.batch.is_none() {
            self.batch = Some(now.unwrap_or_else(Instant::now));
        }
    }

    /// Requests that earn nothing after all (Syncs the server read as COPY
    /// input): the newest go, and the request (the COPY) keeps its start.
    pub fn forget(&mut self, n: u32) {
        for _ in 0..n.min(self.owed()) {
            if self.untimed > 0 {
                self.untimed -= 1;
            } else {
                self.len -= 1;
                let at = self.ring[(self.head + self.len) % CLOCKED].take();
                self.batch = self.batch.or(at);
            }
        }
    }

    /// After server messages were scanned: times the requests answered.
    /// Call `forget` with the Syncs the scan found ignored first. Returns
    /// the time of the requests answered, added up.
    pub fn answered(&mut self, st: &State, histogram: &Histogram) -> Duration {
        let mut total = Duration::ZERO;
        for _ in st.pending..self.owed() {
            if self.len > 0 {
                if let Some(at) = self.ring[self.head].take() {
                    let took = at.elapsed();
                    histogram.observe(took.as_secs_f64());
                    total += took;
                }
                self.head = (self.head + 1) % CLOCKED;
                self.len -= 1;
            } else {
                self.untimed -= 1;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{backend, frontend};
    use crate::session::attachment::{scan_client, scan_server, Buffers};

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn each_request_is_timed_from_sending_to_its_ready_for_query() {
        let histogram = Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
        let mut clock = RequestClock::default();
        let mut b = Buffers::default();
        let mut st = State::default();
        let send = |clock: &mut RequestClock, b: &mut Buffers, st: &mut State, req: &[u8]| {
            b.from_client.extend_from_slice(req);
            scan_client(b, st, 1 << 20, None).unwrap();
            clock.sent(st);
            b.to_server.clear();
        };
        let answer = |clock: &mut RequestClock, b: &mut Buffers, st: &mut State, resp: &[u8]| {
            b.from_server.extend_from_slice(resp);
            scan_server(b, st, None).unwrap();
            clock.answered(st, &histogram);
            b.to_client.clear();
        };
        let ready = msg(backend::READY_FOR_QUERY, b"I");
        let query = msg(frontend::QUERY, b"SELECT 1\0");
        send(&mut clock, &mut b, &mut st, &query);
        assert_eq!(clock.owed(), 1);
        answer(&mut clock, &mut b, &mut st, &ready);
        assert_eq!(histogram.get_sample_count(), 1);
        // Pipelined, or sent right after an error before its ReadyForQuery
        // came: each request is timed on its own.
        send(
            &mut clock,
            &mut b,
            &mut st,
            &[query.clone(), query.clone()].concat(),
        );
        answer(&mut clock, &mut b, &mut st, &ready);
        assert_eq!(histogram.get_sample_count(), 2);
        send(&mut clock, &mut b, &mut st, &query);
        assert_eq!(clock.owed(), 2);
        answer(
            &mut clock,
            &mut b,
            &mut st,
            &[ready.clone(), ready.clone()].concat(),
        );
        assert_eq!(histogram.get_sample_count(), 4);
        // Extended protocol: the clock starts at the Parse, before any Sync,
        // and a ParseComplete does not stop it.
        send(
            &mut clock,
            &mut b,
            &mut st,
            &msg(frontend::PARSE, b"\0SELECT 1\0\0\0"),
        );
        let parsed = clock.batch.expect("the batch is clocked");
        assert_eq!(clock.owed(), 0);
        answer(
            &mut clock,
            &mut b,
            &mut st,
            &msg(backend::PARSE_COMPLETE, b""),
        );
        send(&mut clock, &mut b, &mut st, &msg(frontend::SYNC, b""));
        assert_eq!(clock.ring[clock.head], Some(parsed));
        answer(&mut clock, &mut b, &mut st, &ready);
        assert_eq!(histogram.get_sample_count(), 5);
        // Deeper than the ring: the overflow is answered untimed, in order.
        let many: Vec<u8> = (0..CLOCKED + 4).flat_map(|_| query.clone()).collect();
        send(&mut clock, &mut b, &mut st, &many);
        assert_eq!((clock.len, clock.untimed), (CLOCKED, 4));
        let readies: Vec<u8> = (0..CLOCKED + 4).flat_map(|_| ready.clone()).collect();
        answer(&mut clock, &mut b, &mut st, &readies);
        assert_eq!(histogram.get_sample_count(), 5 + CLOCKED as u64);
        assert_eq!(clock.owed(), 0);
        // Syncs sent into COPY FROM STDIN earn nothing: forgotten.
        send(
            &mut clock,
            &mut b,
            &mut st,
            &[
                msg(frontend::EXECUTE, b"\0\0\0\0\0"),
                msg(frontend::SYNC, b""),
            ]
            .concat(),
        );
        assert_eq!(clock.owed(), 1);
        let executed = clock.ring[clock.head];
        // The server's CopyInResponse says the Sync was read as COPY input.
        b.from_server
            .extend_from_slice(&msg(backend::COPY_IN_RESPONSE, b"\0\0\0"));
        scan_server(&mut b, &mut st, None).unwrap();
        clock.forget(st.take_ignored_syncs());
        clock.answered(&st, &histogram);
        b.to_client.clear();
        assert_eq!(clock.owed(), 0);
        assert_eq!(clock.batch, executed, "the copy is still the request");
    }
}
