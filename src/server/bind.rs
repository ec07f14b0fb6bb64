//! Where the listeners really are. A configured port 0 asks the kernel for a free port:
//! nxgate reserves one with a socket bound (never listening) with `SO_REUSEPORT`, hands
//! that exact address to Pingora's listener (which binds it with `SO_REUSEPORT` too), and
//! closes the reservation once Pingora accepts there. No other process can take the port
//! in between, unlike "bind, read the port, close, bind again". The bound addresses are
//! reported in the `--ready-file` once every listener accepts.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;

/// Why a listen address cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address cannot be bound (in use, not local, not permitted).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// A graceful upgrade matches listeners by address, which port 0 does not fix.
    #[error("{0}: port 0 cannot be used with --upgrade (the listeners are handed over by address)")]
    PortZeroUpgrade(SocketAddr),
}

/// The addresses the listeners are on, with port 0 resolved.
#[derive(Debug)]
pub struct Bound {
    /// Proxy listeners, in config order.
    pub listen: Vec<SocketAddr>,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    /// Callback listeners, in config order.
    pub callbacks: Vec<SocketAddr>,
    /// Which of the addresses above were reserved (configured as port 0).
    pub reserved: Vec<SocketAddr>,
    reservations: Mutex<Vec<socket2::Socket>>,
}

impl Bound {
    /// Resolves `listen` and `admin`. Fixed ports are checked to be bindable now (Pingora
    /// binds inside a task and only logs a failure); port 0 is reserved. With `upgrade`,
    /// fixed ports belong to the running instance and are not checked, and port 0 is
    /// refused (the handover matches listeners by address).
    pub fn resolve(
        listen: &[SocketAddr],
        admin: Option<SocketAddr>,
        callbacks: &[SocketAddr],
        upgrade: bool,
    ) -> Result<Bound, BindError> {
        let mut reservations = Vec::new();
        let mut reserved = Vec::new();
        let mut one = |addr: SocketAddr| -> Result<SocketAddr, BindError> {
            if addr.port() != 0 {
                if !upgrade {
                    std::net::TcpListener::bind(addr).map_err(|source| BindError::Listen { addr, source })?;
                }
                return Ok(addr);
            }
            if upgrade {
                return Err(BindError::PortZeroUpgrade(addr));
            }
            let (socket, bound) = reserve(addr).map_err(|source| BindError::Listen { addr, source })?;
            reservations.push(socket);
            reserved.push(bound);
            Ok(bound)
        };
        let listen = listen.iter().map(|a| one(*a)).collect::<Result<Vec<_>, _>>()?;
        let admin = admin.map(&mut one).transpose()?;
        let callbacks = callbacks.iter().map(|a| one(*a)).collect::<Result<Vec<_>, _>>()?;
        Ok(Bound { listen, admin, callbacks, reserved, reservations: Mutex::new(reservations) })
    }

    /// Whether `addr` came from a port-0 reservation (its listener must set `SO_REUSEPORT`).
    pub fn is_reserved(&self, addr: SocketAddr) -> bool {
        self.reserved.contains(&addr)
    }

    /// Closes the reservations; call once Pingora's listeners accept on them.
    pub fn release(&self) {
        self.reservations.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The ready file's JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "listen": self.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "admin": self.admin.map(|a| a.to_string()),
            "callbacks": self.callbacks.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        })
    }
}

/// A socket bound to `addr` (port 0) with `SO_REUSEPORT`, not listening: it holds the port
/// the kernel chose without accepting anything.
fn reserve(addr: SocketAddr) -> std::io::Result<(socket2::Socket, SocketAddr)> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    // SO_REUSEPORT only: a socket with SO_REUSEADDR alone (most servers) cannot share the
    // port, while Pingora's listener (SO_REUSEPORT, same user) can. Port-0 binds elsewhere
    // never land on a port that is bound at all.
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let bound = socket.local_addr()?.as_socket().ok_or_else(|| std::io::Error::other("no inet address"))?;
    Ok((socket, bound))
}

/// Writes `value` to `path` whole: to a temporary file beside it, then renamed, so a reader
/// never sees half of it.
pub fn write_ready_file(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, value.to_string())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_reserved_and_held_until_released() {
        let b = Bound::resolve(&["127.0.0.1:0".parse().unwrap()], Some("127.0.0.1:0".parse().unwrap()), &[], false)
            .unwrap();
        let (listen, admin) = (b.listen[0], b.admin.unwrap());
        assert_ne!(listen.port(), 0);
        assert_ne!(listen, admin, "two port-0 listeners get two ports");
        assert!(b.is_reserved(listen) && b.is_reserved(admin));
        // Held: a plain bind (no SO_REUSEPORT) of the reserved port fails.
        assert!(std::net::TcpListener::bind(listen).is_err());
        // A listener with SO_REUSEPORT (as Pingora's is configured) may share it.
        let (_pingora_like, _) = reserve_exact(listen);
        b.release();
        assert!(b.reservations.lock().unwrap().is_empty());
    }

    fn reserve_exact(addr: SocketAddr) -> (socket2::Socket, SocketAddr) {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).expect("SO_REUSEPORT listener shares the reserved port");
        s.listen(8).unwrap();
        (s, addr)
    }

    #[test]
    fn port_zero_is_refused_for_an_upgrade() {
        let e = Bound::resolve(&["127.0.0.1:0".parse().unwrap()], None, &[], true).unwrap_err().to_string();
        assert!(e.contains("port 0 cannot be used with --upgrade"), "{e}");
    }

    #[test]
    fn a_fixed_port_in_use_is_reported() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = Bound::resolve(&[taken.local_addr().unwrap()], None, &[], false).unwrap_err().to_string();
        assert!(e.starts_with("cannot listen on 127.0.0.1:"), "{e}");
    }

    #[test]
    fn the_ready_file_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        write_ready_file(&path, &serde_json::json!({"listen": ["127.0.0.1:1"]})).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["listen"][0], "127.0.0.1:1");
        assert!(!dir.path().join("ready.json.tmp").exists());
    }
}
