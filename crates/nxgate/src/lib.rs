//! nxgate: a signing reverse-proxy gateway for the NXCloud Callbot v3 API, on Pingora.
//!
//! The pure decisions (signing, verification, routes, tenants, config, the error
//! contract) live in `nxgate-core`; this crate puts them on the network.
//!
//! Module map: `pipeline` is the request path as named steps (authenticate → route →
//! frame → admit → read body → sign → exchange → verify → respond), with `exchange`
//! the one signed round trip that `nxgate ping` also runs. `net` holds the two sides of
//! the wire: `downstream` (the caller's connection and its header deadline) and
//! `upstream` (NXCloud's pool and one exchange on it). `ratelimit` admits requests.
//! `runtime` sets the stage: `server` (Pingora's server and listeners), `generation`
//! (one config's worth of state, swapped atomically), `reload`, `lifecycle` (ready,
//! drain), `admin`, `metrics`, `logging`. `callbacks` is the callback listener (NXCloud → receiver: verify, deliver once).
//! `cli` is the command line: `args`,
//! `commands`, `demo`.
#![warn(missing_docs)]

pub mod callbacks;
pub mod cli;
pub mod net;
pub mod pipeline;
pub mod ratelimit;
pub mod runtime;
