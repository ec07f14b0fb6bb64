//! nxgate's pure core: everything about a request and its answer that can be decided
//! without a socket, a clock tick or an async runtime.
//!
//! Module map, in the order a request meets them: `tenants` (who is calling), `routes`
//! (may this path go out), `headers` (what crosses), `signing` (sign the exact body),
//! `verify` (check the answer), `callback` (check what NXCloud sends us), `errors` (the refusal contract and its one wire
//! rendering). `config` turns the file format into the validated model the gateway runs
//! on; `secret` holds key material; `clock` is the one wall clock. For NXCloud's own
//! answers: `vendor` (its codes), `backoff` (after "busy"), `gzip` (bounded decoding);
//! `replay` decides whether a failed upstream attempt may be sent again; `webhook`
//! signs callback deliveries the Standard Webhooks way; `idempotency` reads a caller's
//! `Idempotency-Key` and fingerprints its request.
#![warn(missing_docs)]

pub mod backoff;
pub mod callback;
pub mod clock;
pub mod config;
pub mod errors;
pub mod gzip;
pub mod headers;
pub mod idempotency;
pub mod replay;
pub mod routes;
pub mod secret;
pub mod signing;
pub mod tenants;
pub mod vendor;
pub mod verify;
pub mod webhook;
