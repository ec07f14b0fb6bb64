//! Transport, the lowest layer: the caller's connection (framing, header deadline,
//! keep-alive, TLS), NXCloud's and the receivers' (the upstream connector), and Redis.

pub mod body;
pub mod downstream;
pub mod keepalive;
pub mod redis;
pub mod tls;
pub mod upstream;
