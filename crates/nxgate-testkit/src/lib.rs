//! What nxgate's tests, its demo and its emulator share: a blocking HTTP/1 client that
//! reports every failure as an error, `refsign`, an independent implementation of the v3
//! signing rule that shares no code with `nxgate-core`, and `layering`, which reads which
//! module of a crate imports which.
#![warn(missing_docs)]

pub mod client;
pub mod layering;
pub mod refsign;
