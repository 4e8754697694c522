//! Transaction replay's record of one attachment. While a transaction may
//! still be run again on a new primary, the client's messages since the
//! attach are kept (in `Buffers::replay`, beside the read-only retry's
//! copy), and every byte the client receives is counted and digested. A
//! replayed attachment swallows that many bytes of the new server's answer
//! and lets the client go on only if their digest is the same: the client
//! then cannot tell the transaction ran twice.
//!
//! Pure bookkeeping: no I/O, no clock.

use bytes::{Buf, BytesMut};
use xxhash_rust::xxh3::Xxh3Default;

use crate::protocol::{frontend, TxStatus};

/// Why an attachment's transaction is not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `replay_transactions` is off, or session state lives on the server
    /// connection (session mode, a pinned client).
    Disabled,
    /// The transaction's messages outgrew `replay_max_size`.
    TooLarge,
    /// COPY data went to the server (not kept).
    Copy,
    /// A transaction ended earlier in the same attachment (a pipeline):
    /// what came before the end is done and must not run twice.
    Completed,
    /// The server died while committing: the outcome is unknown.
    Commit,
    /// No transaction was open: an autocommit statement may have run.
    Autocommit,
    /// The client saw part of a message.
    PartialMessage,
    /// The transaction was replayed `replay_attempts` times already.
    Attempts,
    /// The new server's answer differed from what the client had.
    ResultsDiffer,
    /// No primary took the transaction within `hold_timeout`.
    NoPrimary,
}

impl Refusal {
    /// The `reason` label of `pgkeel_replays_total{result="refused"}`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Disabled => "disabled",
            Refusal::TooLarge => "too_large",
            Refusal::Copy => "copy",
            Refusal::Completed => "completed_in_pipeline",
            Refusal::Commit => "commit_in_flight",
            Refusal::Autocommit => "autocommit",
            Refusal::PartialMessage => "partial_message",
            Refusal::Attempts => "attempts",
            Refusal::ResultsDiffer => "results_differ",
            Refusal::NoPrimary => "no_primary",
        }
    }
}

/// What the client has received of an attachment: how many bytes, and
/// their digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub len: u64,
    pub digest: u128,
}

#[derive(Debug, Clone, Copy)]
struct Verify {
    /// Bytes of the new answer still to compare (and swallow).
    left: u64,
    expect: u128,
}

/// One attachment's replay record (see the module doc).
pub struct Journal {
    /// Why recording stopped; `None` while the transaction may be replayed.
    refused: Option<Refusal>,
    /// Bytes of client messages the journal may hold.
    limit: usize,
    /// The deferred BEGIN the attach sent ahead of the client's messages
    /// (the client was answered for it by pgkeel).
    pub begin: Option<BytesMut>,
    received: u64,
    digest: Xxh3Default,
    verify: Option<Verify>,
    /// Bytes at the head of the client buffer that are the journal being
    /// run again (not new input from the client).
    replay_left: usize,
    diverged: bool,
    verified: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("refused", &self.refused)
            .field("received", &self.received)
            .field("verify", &self.verify)
            .field("replay_left", &self.replay_left)
            .field("diverged", &self.diverged)
            .finish_non_exhaustive()
    }
}

impl Default for Journal {
    fn default() -> Self {
        Journal::off()
    }
}

impl Journal {
    /// No replay for this attachment.
    pub fn off() -> Journal {
        Journal {
            refused: Some(Refusal::Disabled),
            limit: 0,
            begin: None,
            received: 0,
            digest: Xxh3Default::new(),
            verify: None,
            replay_left: 0,
            diverged: false,
            verified: false,
        }
    }

    /// Records up to `limit` bytes of client messages.
    pub fn recording(limit: usize) -> Journal {
        Journal {
            refused: None,
            limit,
            ..Journal::off()
        }
    }

    /// Why the transaction cannot be replayed as recorded, if it cannot.
    pub fn refused(&self) -> Option<Refusal> {
        self.refused
    }

    fn refuse(&mut self, why: Refusal) {
        self.refused.get_or_insert(why);
    }

    /// A client message of type `typ` and `len` bytes goes to the server,
    /// `kept` bytes being kept already: whether to keep it too.
    pub fn keep(&mut self, typ: u8, len: usize, kept: usize) -> bool {
        if self.refused.is_some() {
            return false;
        }
        match typ {
            frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {
                self.refuse(Refusal::Copy)
            }
            frontend::TERMINATE => self.refuse(Refusal::Disabled),
            _ if kept + len > self.limit => self.refuse(Refusal::TooLarge),
            _ => return true,
        }
        false
    }

    /// A ReadyForQuery with `status` arrived, `pending` more are owed. An
    /// idle server with more owed ended a transaction (or an autocommit
    /// statement) inside this attachment: that part is done for good, so
    /// the attachment as a whole can no longer run again.
    pub fn ready(&mut self, status: TxStatus, pending: u32) {
        if status == TxStatus::Idle && pending > 0 {
            self.refuse(Refusal::Completed);
        }
    }

    /// Whether the bytes for the client need digesting.
    fn digesting(&self) -> bool {
        self.refused.is_none() || self.verify.is_some()
    }

    /// New bytes for the client at `to_client[from..]` (scanned from the
    /// server, or pgkeel's own answers): counted and digested. While a
    /// replay is verified, the ones the client already has are compared
    /// and removed.
    pub fn delivered(&mut self, to_client: &mut BytesMut, from: usize) {
        if self.diverged {
            // Nothing of a diverged answer reaches the client.
            to_client.truncate(from);
            return;
        }
        if !self.digesting() || to_client.len() <= from {
            return;
        }
        if let Some(v) = &mut self.verify {
            let new = (to_client.len() - from) as u64;
            let n = v.left.min(new) as usize;
            self.digest.update(&to_client[from..from + n]);
            self.received += n as u64;
            v.left -= n as u64;
            if v.left == 0 {
                let expect = v.expect;
                self.verify = None;
                if self.digest.digest128() == expect {
                    self.verified = true;
                } else {
                    self.diverged = true;
                }
            }
            if from == 0 {
                to_client.advance(n);
            } else {
                let tail = to_client.split_off(from + n);
                to_client.truncate(from);
                to_client.extend_from_slice(&tail);
            }
            if self.diverged {
                // Nothing of a diverged answer reaches the client.
                to_client.truncate(from);
                return;
            }
        }
        if to_client.len() > from {
            self.digest.update(&to_client[from..]);
            self.received += (to_client.len() - from) as u64;
        }
    }

    /// What the client has received so far.
    pub fn received(&self) -> Received {
        Received {
            len: self.received,
            digest: self.digest.digest128(),
        }
    }

    /// This attachment runs a journal of `journal_len` bytes (at the head
    /// of the client buffer) again, for a client that has `had`.
    pub fn replaying(&mut self, had: Received, journal_len: usize) {
        self.replay_left = journal_len;
        if had.len == 0 {
            self.verified = true;
        } else {
            self.verify = Some(Verify {
                left: had.len,
                expect: had.digest,
            });
        }
    }

    /// A client message of `len` bytes was scanned.
    pub fn consumed(&mut self, len: usize) {
        self.replay_left = self.replay_left.saturating_sub(len);
    }

    /// Journal bytes still at the head of the client buffer.
    pub fn replay_left(&self) -> usize {
        self.replay_left
    }

    /// The client's own new messages wait: the journal is all sent, and
    /// the answer not yet verified.
    pub fn holds_input(&self) -> bool {
        self.verify.is_some() && self.replay_left == 0
    }

    /// Verifying, the whole journal sent, and the server owes nothing more
    /// (`pending` ReadyForQuery, `unsynced` messages): the new answer came
    /// out shorter than the old one.
    pub fn check_short(&mut self, pending: u32, unsynced: bool) {
        if self.verify.is_some() && self.replay_left == 0 && pending == 0 && !unsynced {
            self.verify = None;
            self.diverged = true;
        }
    }

    /// Still comparing the new answer with what the client had.
    pub fn verifying(&self) -> bool {
        self.verify.is_some()
    }

    /// The new answer differed: the replay failed.
    pub fn diverged(&self) -> bool {
        self.diverged
    }

    /// The replay reached everything the client had, identical.
    pub fn verified(&self) -> bool {
        self.verified
    }
}

/// Whether an attachment lost in this state may run its transaction again
/// (`Ok`), or why not. `status`: the last ReadyForQuery's; `commit`: a
/// commit was in flight; `partial`: the client saw part of a message.
pub fn replayable(
    journal: &Journal,
    status: TxStatus,
    commit: bool,
    partial: bool,
) -> Result<(), Refusal> {
    if let Some(r) = journal.refused() {
        return Err(r);
    }
    if partial {
        return Err(Refusal::PartialMessage);
    }
    if commit {
        return Err(Refusal::Commit);
    }
    if status == TxStatus::Idle {
        return Err(Refusal::Autocommit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(parts: &[&[u8]]) -> Received {
        let mut j = Journal::recording(1 << 20);
        for p in parts {
            let mut b = BytesMut::from(*p);
            j.delivered(&mut b, 0);
            assert_eq!(&b[..], *p, "recording changes nothing");
        }
        j.received()
    }

    #[test]
    fn the_digest_does_not_depend_on_how_bytes_arrive() {
        assert_eq!(received(&[b"abc", b"def"]), received(&[b"ab", b"cdef"]));
        assert_ne!(received(&[b"abc", b"def"]), received(&[b"abc", b"deg"]));
        assert_eq!(received(&[b"abcdef"]).len, 6);
    }

    #[test]
    fn a_replay_swallows_what_the_client_has_and_passes_the_rest() {
        let had = received(&[b"hello ", b"wor"]);
        let mut j = Journal::recording(1 << 20);
        j.replaying(had, 10);
        let mut out = BytesMut::from(&b"hel"[..]);
        j.delivered(&mut out, 0);
        assert!(out.is_empty() && j.verifying());
        // After bytes already accounted for (kept), the rest of the old
        // answer and the start of the new.
        let mut out = BytesMut::from(&b"XYlo world"[..]);
        j.delivered(&mut out, 2);
        assert_eq!(&out[..], b"XYld");
        assert!(j.verified() && !j.diverged() && !j.verifying());
        // The record goes on over everything the client has.
        assert_eq!(j.received().len, "hello world".len() as u64);
    }

    #[test]
    fn a_different_answer_diverges_and_reaches_nobody() {
        let had = received(&[b"id=41;"]);
        let mut j = Journal::recording(1 << 20);
        j.replaying(had, 10);
        let mut out = BytesMut::from(&b"id=42;more"[..]);
        j.delivered(&mut out, 0);
        assert!(j.diverged() && !j.verified());
        assert!(out.is_empty());
    }

    #[test]
    fn a_shorter_answer_diverges_once_nothing_more_is_owed() {
        let had = received(&[b"long answer"]);
        let mut j = Journal::recording(1 << 20);
        j.replaying(had, 4);
        let mut out = BytesMut::from(&b"long"[..]);
        j.delivered(&mut out, 0);
        j.check_short(0, false);
        assert!(!j.diverged(), "the journal is not all sent yet");
        j.consumed(4);
        assert!(j.holds_input());
        j.check_short(1, false);
        assert!(!j.diverged(), "more is owed");
        j.check_short(0, false);
        assert!(j.diverged());
        assert!(!j.holds_input());
    }

    #[test]
    fn nothing_received_is_verified_at_once() {
        let mut j = Journal::recording(1 << 20);
        j.replaying(Received { len: 0, digest: 0 }, 8);
        assert!(j.verified() && !j.verifying() && !j.holds_input());
    }

    #[test]
    fn recording_stops_at_copy_the_limit_and_a_completed_transaction() {
        let mut j = Journal::recording(100);
        assert!(j.keep(frontend::QUERY, 60, 0));
        assert!(!j.keep(frontend::QUERY, 60, 60));
        assert_eq!(j.refused(), Some(Refusal::TooLarge));
        let mut j = Journal::recording(100);
        assert!(!j.keep(frontend::COPY_DATA, 10, 0));
        assert_eq!(j.refused(), Some(Refusal::Copy));
        let mut j = Journal::recording(100);
        j.ready(TxStatus::InTransaction, 1);
        j.ready(TxStatus::Idle, 0);
        assert_eq!(j.refused(), None, "the attachment's own end");
        j.ready(TxStatus::Idle, 1);
        assert_eq!(j.refused(), Some(Refusal::Completed));
        // Refused and not verifying: nothing is digested.
        let mut out = BytesMut::from(&b"x"[..]);
        j.delivered(&mut out, 0);
        assert_eq!(j.received().len, 0);
    }

    /// Feeds `stream` to `j` in pieces cut at `cuts`; returns what reaches
    /// the client.
    fn feed(j: &mut Journal, stream: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        for p in points {
            let mut b = BytesMut::from(&stream[at..p]);
            j.delivered(&mut b, 0);
            out.extend_from_slice(&b);
            at = p;
        }
        out
    }

    proptest::proptest! {
        /// Whatever the pieces, a replay whose answer is the same passes
        /// exactly what the client did not have yet; one that differs
        /// anywhere in what it had passes nothing.
        #[test]
        fn a_replay_passes_exactly_the_new_part(
            stream in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..300),
            had in 0usize..300,
            first_cuts in proptest::collection::vec(0usize..300, 0..6),
            replay_cuts in proptest::collection::vec(0usize..300, 0..6),
            flip in proptest::option::of(0usize..300),
        ) {
            let had = had % (stream.len() + 1);
            let mut first = Journal::recording(1 << 20);
            let seen = feed(&mut first, &stream[..had], &first_cuts);
            proptest::prop_assert_eq!(&seen[..], &stream[..had]);
            let mut again = stream.clone();
            let flipped = flip.map(|f| f % stream.len()).filter(|f| *f < had);
            if let Some(f) = flipped {
                again[f] ^= 0x55;
            }
            let mut j = Journal::recording(1 << 20);
            j.replaying(first.received(), 1);
            j.consumed(1);
            let out = feed(&mut j, &again, &replay_cuts);
            if flipped.is_some() {
                proptest::prop_assert!(j.diverged());
                proptest::prop_assert!(out.is_empty());
            } else {
                proptest::prop_assert!(j.verified() && !j.diverged());
                proptest::prop_assert_eq!(&out[..], &stream[had..]);
                proptest::prop_assert_eq!(j.received().len, stream.len() as u64);
            }
        }
    }

    #[test]
    fn every_refusal_has_its_metric_label() {
        for r in [
            Refusal::Disabled,
            Refusal::TooLarge,
            Refusal::Copy,
            Refusal::Completed,
            Refusal::Commit,
            Refusal::Autocommit,
            Refusal::PartialMessage,
            Refusal::Attempts,
            Refusal::ResultsDiffer,
            Refusal::NoPrimary,
        ] {
            assert!(crate::metrics::REPLAY_REFUSAL_REASONS.contains(&r.label()));
        }
    }

    #[test]
    fn only_an_open_transaction_without_a_commit_in_flight_replays() {
        let j = Journal::recording(100);
        assert_eq!(
            replayable(&j, TxStatus::InTransaction, false, false),
            Ok(())
        );
        assert_eq!(replayable(&j, TxStatus::Failed, false, false), Ok(()));
        assert_eq!(
            replayable(&j, TxStatus::Idle, false, false),
            Err(Refusal::Autocommit)
        );
        assert_eq!(
            replayable(&j, TxStatus::InTransaction, true, false),
            Err(Refusal::Commit)
        );
        assert_eq!(
            replayable(&j, TxStatus::InTransaction, false, true),
            Err(Refusal::PartialMessage)
        );
        assert_eq!(
            replayable(&Journal::off(), TxStatus::InTransaction, false, false),
            Err(Refusal::Disabled)
        );
    }
}
