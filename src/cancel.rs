//! CancelRequest routing. Each client gets a key minted by pgkeel; the key's
//! slot points at the server connection running the client's query right
//! now (or nothing between transactions), so a cancel reaches the right
//! backend even though server connections move between clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rand::Rng;

/// A server connection's own cancel key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKey {
    pub addr: SocketAddr,
    pub pid: i32,
    pub secret: i32,
}

/// Where a client's cancel should go at this moment. Written by the
/// client's session on attach/detach, read by the cancel path. A plain
/// mutex: it is never contended (one writer, rare readers), and locking
/// it costs a tenth of an `ArcSwap` store, which settles every reader's
/// debt on each of the two writes per transaction.
#[derive(Default)]
pub struct CancelSlot {
    server: Mutex<Option<Arc<ServerKey>>>,
    /// Wakes the session if it is holding its statement (no server yet).
    held: tokio::sync::Notify,
}

impl CancelSlot {
    pub fn attach(&self, key: &Arc<ServerKey>) {
        *self.lock() = Some(key.clone());
    }
    pub fn detach(&self) {
        // Taken out under the lock, dropped after it.
        let _old = self.lock().take();
    }
    pub fn current(&self) -> Option<Arc<ServerKey>> {
        self.lock().clone()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<ServerKey>>> {
        // A panic while holding it cannot leave the Option half-written.
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Resolves when a cancel arrives for a held statement. Create it before
    /// waiting: only waiters that exist when the cancel arrives are woken.
    pub fn cancelled(&self) -> tokio::sync::futures::Notified<'_> {
        self.held.notified()
    }
    /// Cancels a held statement, if one is waiting.
    pub fn cancel_held(&self) {
        self.held.notify_waiters();
    }
}

/// All live client keys. Touched only at connect, disconnect and cancel.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), Arc<CancelSlot>>>,
}

/// Removes the client's key from the registry when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .map
            .lock()
            .expect("cancel registry poisoned")
            .remove(&(self.pid, self.secret));
    }
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> Registration {
        let slot = Arc::new(CancelSlot::default());
        let mut map = self.map.lock().expect("cancel registry poisoned");
        let mut rng = rand::rng();
        loop {
            let pid = rng.random_range(1..i32::MAX);
            let secret = rng.random::<i32>();
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry((pid, secret)) {
                e.insert(slot.clone());
                return Registration {
                    registry: self.clone(),
                    pid,
                    secret,
                    slot,
                };
            }
        }
    }

    /// Registers a key another pgkeel process gave a client it hands over
    /// (so the client's CancelRequests keep working here); `None` if this
    /// process already uses that key.
    pub fn adopt(self: &Arc<Self>, pid: i32, secret: i32) -> Option<Registration> {
        let slot = Arc::new(CancelSlot::default());
        let mut map = self.map.lock().expect("cancel registry poisoned");
        match map.entry((pid, secret)) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(slot.clone());
                Some(Registration {
                    registry: self.clone(),
                    pid,
                    secret,
                    slot,
                })
            }
        }
    }

    /// Gives `reg` a key with process id `pid` (a session-mode client's
    /// server process) and a new secret, keeping its slot.
    pub fn rekey(&self, reg: &mut Registration, pid: i32) {
        let mut map = self.map.lock().expect("cancel registry poisoned");
        map.remove(&(reg.pid, reg.secret));
        let mut rng = rand::rng();
        loop {
            let secret = rng.random::<i32>();
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry((pid, secret)) {
                e.insert(reg.slot.clone());
                (reg.pid, reg.secret) = (pid, secret);
                return;
            }
        }
    }

    /// The slot of the client with key (`pid`, `secret`), if any.
    pub fn slot(&self, pid: i32, secret: i32) -> Option<Arc<CancelSlot>> {
        self.map
            .lock()
            .expect("cancel registry poisoned")
            .get(&(pid, secret))
            .cloned()
    }

    /// The server key a cancel for (`pid`, `secret`) should go to, if any.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<Arc<ServerKey>> {
        self.slot(pid, secret)?.current()
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("cancel registry poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_to_attached_server_and_vanish_on_drop() {
        let reg = Arc::new(CancelRegistry::default());
        let r = reg.register();
        assert!(reg.lookup(r.pid, r.secret).is_none());
        let k = Arc::new(ServerKey {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 7,
            secret: 9,
        });
        r.slot.attach(&k);
        assert_eq!(reg.lookup(r.pid, r.secret).unwrap().pid, 7);
        assert!(reg.lookup(r.pid, r.secret.wrapping_add(1)).is_none());
        r.slot.detach();
        assert!(reg.lookup(r.pid, r.secret).is_none());
        let (pid, secret) = (r.pid, r.secret);
        drop(r);
        assert!(reg.is_empty());
        assert!(reg.lookup(pid, secret).is_none());
    }

    #[test]
    fn an_adopted_key_routes_and_a_key_in_use_is_not_adopted() {
        let reg = Arc::new(CancelRegistry::default());
        let mine = reg.register();
        assert!(reg.adopt(mine.pid, mine.secret).is_none());
        let a = reg.adopt(12, 34).expect("a free key");
        assert!(reg.slot(12, 34).is_some());
        drop(a);
        assert!(reg.slot(12, 34).is_none());
    }

    #[test]
    fn a_rekeyed_client_keeps_its_slot_under_the_new_key_only() {
        let reg = Arc::new(CancelRegistry::default());
        let mut r = reg.register();
        let old = (r.pid, r.secret);
        let k = Arc::new(ServerKey {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 4242,
            secret: 9,
        });
        r.slot.attach(&k);
        reg.rekey(&mut r, 4242);
        assert_eq!(r.pid, 4242);
        assert!(reg.lookup(old.0, old.1).is_none());
        assert_eq!(reg.lookup(r.pid, r.secret).unwrap().pid, 4242);
        assert_eq!(reg.len(), 1);
        drop(r);
        assert!(reg.is_empty());
    }
}
