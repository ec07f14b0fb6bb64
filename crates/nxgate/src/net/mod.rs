//! The two sides of the wire: the caller's connection and NXCloud's.

pub mod body;
pub mod downstream;
pub mod tls;
pub mod upstream;
