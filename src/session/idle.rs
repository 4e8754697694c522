//! What an idle client holds: between transactions a plain-TCP client with
//! nothing buffered gives its four relay buffers back and waits for
//! readability with none, so ten thousand idle clients cost their sockets
//! and tasks, not their buffers (each touches at least a page).
//!
//! The buffers go to a small per-thread stock, and the next request of any
//! client on that thread takes them from it: a thread-local pop and push
//! where a fresh allocation and free of each buffer cost ~15% of a pgbench
//! `-S` transaction's instructions. The stock is bounded (`STOCK`), so what
//! idle clients hand back beyond it is freed.

use std::cell::RefCell;
use std::future::Future;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::attachment::{ensure_room, Buffers, SHRINK_TO};
use crate::tls::Stream;

/// The first read of a request: room for this much.
pub const FIRST_READ: usize = 8192;

/// Buffers kept per thread for the next requests (four per active client).
const STOCK: usize = 64;

/// A buffer larger than this is freed rather than stocked (a large result
/// left it so; the stock holds ordinary ones).
const STOCK_MAX_CAPACITY: usize = 64 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Whether the session may give its buffers back while it waits: nothing is
/// buffered in either direction, and the stream shows readability on its
/// socket (plain TCP). (`replay` and `rewrite` stay: sized by the last
/// request, small, and the attachment's to manage.)
pub fn can_release(bufs: &Buffers, client: &Stream) -> bool {
    !client.is_tls()
        && bufs.from_client.is_empty()
        && bufs.to_server.is_empty()
        && bufs.from_server.is_empty()
        && bufs.to_client.is_empty()
}

fn relay_buffers(bufs: &mut Buffers) -> [&mut BytesMut; 4] {
    [
        &mut bufs.from_client,
        &mut bufs.to_server,
        &mut bufs.from_server,
        &mut bufs.to_client,
    ]
}

/// Hands the four relay buffers (all empty: `can_release`) to the stock.
/// The last transaction's replay journal is of no more use: a large one
/// goes too.
pub fn release(bufs: &mut Buffers) {
    bufs.replay.clear();
    if bufs.replay.capacity() > SHRINK_TO {
        bufs.replay = BytesMut::new();
    }
    SPARE.with_borrow_mut(|spare| {
        for buf in relay_buffers(bufs) {
            let buf = std::mem::take(buf);
            if buf.capacity() > 0 && buf.capacity() <= STOCK_MAX_CAPACITY && spare.len() < STOCK {
                spare.push(buf);
            }
        }
    });
}

/// Gives the relay buffers that have no memory some from the stock.
fn refill(bufs: &mut Buffers) {
    SPARE.with_borrow_mut(|spare| {
        for buf in relay_buffers(bufs) {
            if buf.capacity() == 0 {
                if let Some(mut b) = spare.pop() {
                    b.clear();
                    *buf = b;
                }
            }
        }
    });
}

/// Reads what the client sends next into `from_client`; with `idle`, only
/// once the socket is readable do the buffers get their memory back.
pub async fn read(client: &mut Stream, bufs: &mut Buffers, idle: bool) -> std::io::Result<usize> {
    if idle {
        loop {
            // Readiness is remembered from before and may be stale: a read
            // that finds nothing gives the buffers back and waits again.
            client.readable().await?;
            refill(bufs);
            ensure_room(&mut bufs.from_client, FIRST_READ.max(SHRINK_TO));
            // One poll of an ordinary read (not `try_read`): a short read
            // clears the socket's readiness, so the relay's next read of
            // this client waits instead of finding EAGAIN first.
            let once = {
                let mut read = std::pin::pin!(client.read_buf(&mut bufs.from_client));
                std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
            };
            match once {
                Poll::Ready(r) => return r,
                Poll::Pending => release(bufs),
            }
        }
    }
    ensure_room(&mut bufs.from_client, FIRST_READ.max(SHRINK_TO));
    client.read_buf(&mut bufs.from_client).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_buffers_come_back_empty_and_the_stock_is_bounded() {
        let mut bufs = Buffers::default();
        bufs.from_client.reserve(100);
        bufs.to_client.reserve(STOCK_MAX_CAPACITY * 2);
        bufs.to_client.extend_from_slice(b"old answer");
        bufs.to_client.clear();
        release(&mut bufs);
        assert_eq!(bufs.from_client.capacity(), 0);
        assert_eq!(bufs.to_client.capacity(), 0);
        refill(&mut bufs);
        assert!(bufs.from_client.capacity() >= 100, "from the stock");
        assert!(bufs.from_client.is_empty());
        for _ in 0..STOCK * 2 {
            let mut b = Buffers::default();
            b.from_server.reserve(10);
            release(&mut b);
        }
        assert_eq!(SPARE.with_borrow(Vec::len), STOCK);
    }
}
