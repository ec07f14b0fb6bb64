//! The edge of every listener: which connections are taken at all, and TLS under a deadline.
//!
//! Three checks run before a connection reaches the header deadline (`net::downstream`):
//! - **Sources** ([`SourceFilter`]): Pingora's connection filter asks it about each peer
//!   address right after `accept(2)`; a refused connection is closed there, before any byte
//!   is read and before a task is spawned for it.
//! - **Connection cap** ([`Edge`]): each listener holds at most `limits.max_connections`
//!   connections; one more is closed at once, before any byte is read.
//! - **TLS handshake deadline** ([`Edge`]): Pingora 0.9.1's listener does the TLS handshake
//!   inside its per-connection task with a fixed 60 s limit, before the app sees the
//!   stream (`core/services/listening.rs:232-252`), so a peer that never finishes a
//!   handshake held its socket for a minute, and any deadline of ours only started after
//!   it. The TLS listeners are therefore plain TCP to Pingora; [`Edge`] runs Pingora's own
//!   rustls acceptor (`TlsSettings::build`, `Acceptor::tls_handshake`, the very calls the
//!   listener makes) under `limits.request_header_timeout_ms` from the accept. The stream
//!   the app gets is the same `TlsStream` Pingora's listener would have made, so ALPN
//!   (h2), the SSL digest and certificate reload (`net::tls::CertStore`) are unchanged
//!   (`docs/pingora.md` §12).
//!
//! The limits are read per connection from closures the server passes in (the live config),
//! so a reload applies to the next connection; the counters are passed in too, as this layer
//! knows no metrics registry.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
// Through the `connection_filter` module, which exists only with Pingora's feature of that
// name: without it `Service::set_connection_filter` compiles but does nothing, and the
// allowlists would silently admit everyone. This path makes that a build error instead.
use pingora::listeners::connection_filter::ConnectionFilter;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Peek, Stream};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::net::downstream::DeadlineSource;

/// Whether a peer address may connect; read per connection.
pub type SourcePolicy = Box<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The most connections a listener holds open (`None` = no cap); read per connection.
pub type CapSource = Box<dyn Fn() -> Option<usize> + Send + Sync>;

/// Pingora's connection filter for one listener: closes connections from sources the
/// policy refuses, counting each.
pub struct SourceFilter {
    allows: SourcePolicy,
    refused: IntCounter,
}

impl SourceFilter {
    /// A filter admitting what `allows` admits; `refused` counts the others.
    pub fn new(allows: SourcePolicy, refused: IntCounter) -> Self {
        SourceFilter { allows, refused }
    }
}

impl std::fmt::Debug for SourceFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceFilter")
    }
}

#[async_trait]
impl ConnectionFilter for SourceFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        // Pingora passes no address only for Unix sockets; nxgate listens on TCP alone.
        let Some(addr) = addr else { return true };
        if (self.allows)(addr.ip()) {
            return true;
        }
        self.refused.inc();
        tracing::debug!(target: "nxgate::edge", peer = %addr, "source not allowed; closing the connection");
        false
    }
}

/// The counters one listener's [`Edge`] keeps.
#[derive(Clone)]
pub struct EdgeCounters {
    /// Connections open now (`nxgate_open_connections{listener}`).
    pub open: IntGauge,
    /// Connections closed because the cap was reached.
    pub over_cap: IntCounter,
    /// Connections closed because the TLS handshake was not complete in time.
    pub handshake_timeouts: IntCounter,
}

/// A listener's share of the cap: held for a connection's life, given back on drop.
struct Slot<'a> {
    open: &'a AtomicUsize,
    gauge: &'a IntGauge,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Serves `A` behind the connection cap and, on a TLS listener, the TLS handshake under
/// the deadline; see the module docs.
pub struct Edge<A> {
    inner: Arc<A>,
    tls: Option<Acceptor>,
    deadline: DeadlineSource,
    cap: CapSource,
    open: AtomicUsize,
    counters: EdgeCounters,
}

impl<A> Edge<A> {
    /// Wraps `inner`. With `tls`, every connection's handshake must be complete within
    /// `deadline()` (read at its accept) before `inner` sees it.
    pub fn new(
        inner: A,
        tls: Option<Acceptor>,
        deadline: DeadlineSource,
        cap: CapSource,
        counters: EdgeCounters,
    ) -> Self {
        Edge { inner: Arc::new(inner), tls, deadline, cap, open: AtomicUsize::new(0), counters }
    }

    /// Takes a slot under the cap, or `None` when the listener is full.
    fn admit(&self) -> Option<Slot<'_>> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let slot = Slot { open: &self.open, gauge: &self.counters.open };
        self.counters.open.inc();
        if (self.cap)().is_some_and(|max| before >= max) {
            // Dropping the slot gives the count back.
            drop(slot);
            return None;
        }
        Some(slot)
    }

    /// The TLS stream over `stream`, or `None` (closed) if the handshake failed or was not
    /// complete in time.
    async fn handshake(&self, acceptor: &Acceptor, stream: Stream) -> Option<Stream> {
        // The listener is plain TCP, so Pingora hands over its own L4 stream, boxed: the
        // acceptor takes it as the listener itself would have.
        let mut l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => *l4,
            Err(_) => {
                tracing::error!(target: "nxgate::edge", "a TLS listener accepted a stream that is not plain TCP");
                return None;
            }
        };
        let deadline = (self.deadline)();
        let handshake = async move {
            // Wait for the hello's first byte holding only the socket: the handshake's
            // state (its future, boxed so that it is allocated only now, and rustls'
            // connection and buffers) is made only for a peer that has started one, so a
            // flood of silent sockets costs little more than the sockets. The byte is read
            // and put back for the handshake to read.
            let mut first = [0u8; 1];
            l4.try_peek(&mut first).await.map_err(|e| e.to_string())?;
            Box::pin(acceptor.tls_handshake(l4)).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(deadline, handshake).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(error)) => {
                tracing::debug!(target: "nxgate::edge", error, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.counters.handshake_timeouts.inc();
                let timeout_ms = deadline.as_millis() as u64;
                tracing::info!(target: "nxgate::edge", timeout_ms, "TLS handshake not complete in time; closing the connection");
                None
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Edge<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Some(_slot) = self.admit() else {
            self.counters.over_cap.inc();
            tracing::debug!(target: "nxgate::edge", "connection cap reached; closing the connection");
            return None;
        };
        // The handshake is boxed while it runs: inline, its state (the L4 stream, the deadline
        // timer) would size this future, which lives as long as the connection.
        let mut stream = match &self.tls {
            Some(acceptor) => Box::pin(self.handshake(acceptor, stream)).await?,
            None => stream,
        };
        // Pingora's own loop (`Service::handle_event`), run here so the slot is held for
        // as long as the connection is served.
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    fn counters() -> EdgeCounters {
        EdgeCounters {
            open: IntGauge::new("o", "o").unwrap(),
            over_cap: IntCounter::new("c", "c").unwrap(),
            handshake_timeouts: IntCounter::new("h", "h").unwrap(),
        }
    }

    #[test]
    fn the_cap_admits_up_to_its_value_gives_slots_back_on_drop_and_follows_the_live_value() {
        let cap = Arc::new(AtomicU64::new(2));
        let live = cap.clone();
        let edge = Edge::new(
            (),
            None,
            Box::new(|| Duration::from_secs(1)),
            Box::new(move || Some(live.load(Ordering::Relaxed) as usize)),
            counters(),
        );
        let (a, b) = (edge.admit().unwrap(), edge.admit().unwrap());
        assert!(edge.admit().is_none(), "the third connection is over a cap of 2");
        assert_eq!(edge.counters.open.get(), 2, "a refused connection is not left counted as open");
        drop(a);
        let c = edge.admit().expect("a slot given back is taken again");
        cap.store(3, Ordering::Relaxed);
        let d = edge.admit().expect("a raised cap applies to the next connection");
        assert_eq!(edge.counters.open.get(), 3);
        drop((b, c, d));
        assert_eq!((edge.open.load(Ordering::Relaxed), edge.counters.open.get()), (0, 0));
    }

    #[test]
    fn no_cap_admits_everyone() {
        let edge = Edge::new((), None, Box::new(|| Duration::from_secs(1)), Box::new(|| None), counters());
        let slots: Vec<_> = (0..1000).map(|_| edge.admit().unwrap()).collect();
        assert_eq!(edge.counters.open.get(), 1000);
        drop(slots);
        assert_eq!(edge.counters.open.get(), 0);
    }

    #[tokio::test]
    async fn the_source_filter_counts_what_it_refuses() {
        let refused = IntCounter::new("r", "r").unwrap();
        let filter = SourceFilter::new(Box::new(|ip| ip == IpAddr::from([127, 0, 0, 1])), refused.clone());
        let addr = |a: [u8; 4]| SocketAddr::from((a, 40000));
        assert!(filter.should_accept(Some(&addr([127, 0, 0, 1]))).await);
        assert!(!filter.should_accept(Some(&addr([127, 0, 0, 2]))).await);
        assert!(filter.should_accept(None).await, "no address: not a TCP peer");
        assert_eq!(refused.get(), 1);
    }
}
