//! The two sides of the wire: the caller's connection and NXCloud's.

pub mod downstream;
pub mod upstream;
