//! Transport, the lowest layer: the caller's connection (source allowlist, connection cap,
//! TLS under a deadline, framing, header deadline, keep-alive), NXCloud's and the receivers' (the upstream connector), and Redis.

pub mod body;
pub mod downstream;
pub mod edge;
pub mod keepalive;
pub mod redis;
pub mod tls;
pub mod upstream;
