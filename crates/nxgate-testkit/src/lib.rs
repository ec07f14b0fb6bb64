//! What nxgate's tests, its demo and its emulator share: a blocking HTTP/1 client that
//! reports every failure as an error, and `refsign`, an independent implementation of
//! the v3 signing rule that shares no code with `nxgate-core`.
#![warn(missing_docs)]

pub mod client;
pub mod refsign;
