//! Shutdown and KILL as seen by one session: each a future made once per
//! session and polled only when it was woken.
//!
//! The session waits on a client read, a server read or write, *or* one of
//! these, on every turn of its loops. A fresh `watch::Receiver::changed()`
//! per turn registers a waiter in the channel's list and removes it again
//! (a lock each time), and polling a registered one takes that lock again:
//! together a tenth of the proxy's instructions per transaction. Made once,
//! and gated by a flag its own waker sets, a signal costs one atomic swap
//! and a waker check per turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use tokio::sync::watch;

/// A flag that goes up once (shutdown, KILL): `watch::Sender<bool>` set to
/// true, or dropped.
pub struct Signal {
    rx: watch::Receiver<bool>,
    gate: Gate,
}

impl Signal {
    pub fn new(rx: watch::Receiver<bool>) -> Signal {
        let mut waiting = rx.clone();
        let gate = Gate::new(Box::pin(async move {
            // A dropped sender counts as raised, as `changed()` erring did.
            let _ = waiting.wait_for(|up| *up).await;
        }));
        Signal { rx, gate }
    }

    /// Whether the flag is up now (no waiting).
    pub fn is_up(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Resolves once the flag is up, and at every poll after that.
impl Future for Signal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.gate).poll(cx)
    }
}

/// A future polled only on its first poll and after its own waker fired;
/// other polls (the task woken by something else) answer `Pending` at the
/// cost of registering the task's waker. Once ready, ready for good.
struct Gate {
    inner: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    flag: Arc<Flag>,
    /// A waker that raises `flag`, made once.
    waker: Waker,
    polled: bool,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    fn new(inner: Pin<Box<dyn Future<Output = ()> + Send>>) -> Gate {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Gate {
            inner: Some(inner),
            waker: Waker::from(flag.clone()),
            flag,
            polled: false,
        }
    }
}

impl Future for Gate {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(());
        };
        // Registered before the flag is read: a wake in between is not lost.
        this.flag.task.register(cx.waker());
        if this.polled && !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.polled = true;
        match inner.as_mut().poll(&mut Context::from_waker(&this.waker)) {
            Poll::Ready(()) => {
                this.inner = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_resolves_when_raised_and_stays_resolved() {
        let (tx, rx) = watch::channel(false);
        let mut s = Signal::new(rx);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut s).poll(&mut cx).is_pending());
        // Woken by something else: not polled through, still pending.
        assert!(Pin::new(&mut s).poll(&mut cx).is_pending());
        assert!(!s.is_up());
        tx.send(true).unwrap();
        assert!(s.is_up());
        assert!(Pin::new(&mut s).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut s).poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken() {
        let (tx, rx) = watch::channel(false);
        let mut s = Signal::new(rx);
        let waiter = tokio::spawn(async move {
            (&mut s).await;
        });
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_sender_counts_as_raised() {
        let (tx, rx) = watch::channel(false);
        let mut s = Signal::new(rx);
        drop(tx);
        (&mut s).await;
    }
}
