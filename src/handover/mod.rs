//! Upgrades that keep client connections: a new pgkeel process
//! (`pgkeel --takeover`) takes over the listening sockets and the idle
//! transaction-mode clients of the running one, as file descriptors passed
//! over a Unix socket (`SCM_RIGHTS`) with each client's session state.
//!
//! `wire.rs` is the protocol (messages, framing, descriptors, version);
//! `sender.rs` the old process's side (it listens on the handover socket,
//! gives its sockets, stops accepting, hands over its clients as they
//! become idle, and asks to stop); `receiver.rs` the new process's side.
//! The session's own part (whether it can move, its state, rebuilding it)
//! is `session/handoff.rs`, over the channel in `handoff.rs`.

pub mod receiver;
pub mod sender;
pub mod wire;

use std::path::PathBuf;

use crate::config::Config;

pub use receiver::Takeover;

/// The handover socket's path: `[proxy] handover_socket`, or, when that
/// is empty, `/tmp/pgkeel-<port>.handover` for the configured listen port.
/// `None` (no handover) when it is empty and the port is 0: a port picked
/// at bind time is no name a successor could find.
pub fn socket_path(cfg: &Config) -> Option<PathBuf> {
    let set = cfg.proxy.handover_socket.trim();
    if set == DISABLED {
        return None;
    }
    if !set.is_empty() {
        return Some(PathBuf::from(set));
    }
    let port = cfg.listen_addr.port();
    (port != 0).then(|| PathBuf::from(format!("/tmp/pgkeel-{port}.handover")))
}

/// `handover_socket` set to this turns the handover off.
pub const DISABLED: &str = "off";

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(listen: &str, socket: &str) -> Config {
        let text = format!(
            "[proxy]\nlisten = \"{listen}\"\nhandover_socket = \"{socket}\"\n[[servers]]\nhost = \"127.0.0.1\"\nport = 5432\n[[users]]\nname = \"u\"\npassword = \"p\"\n"
        );
        Config::from_toml_str(&text).unwrap()
    }

    #[test]
    fn the_path_is_set_derived_from_the_port_or_none() {
        assert_eq!(
            socket_path(&cfg("127.0.0.1:6000", "")),
            Some(PathBuf::from("/tmp/pgkeel-6000.handover"))
        );
        assert_eq!(
            socket_path(&cfg("127.0.0.1:6000", "/run/pgkeel/h.sock")),
            Some(PathBuf::from("/run/pgkeel/h.sock"))
        );
        assert_eq!(socket_path(&cfg("127.0.0.1:0", "")), None);
        assert_eq!(socket_path(&cfg("127.0.0.1:6000", "off")), None);
    }
}
