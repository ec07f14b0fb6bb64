//! The two sides of the wire: the caller's connection and NXCloud's.

pub mod body;
pub mod downstream;
pub mod keepalive;
pub mod tls;
pub mod upstream;
