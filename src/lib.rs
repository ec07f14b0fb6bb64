//! nxgate: a signing reverse-proxy gateway for the NXCloud Callbot v3 API, on Pingora.
//!
//! The pure decisions (signing, verification, routes, tenants, config, the error
//! contract) live in `nxgate-core`; this crate puts them on the network.
//!
//! The modules are layers, lowest first; a module imports only from layers below it
//! (`tests/layering.rs` fails on any import circle between them):
//!
//! 1. `net` (transport: framing, header deadline, keep-alive, TLS, the upstream
//!    connector, the Redis link) and `process` (metrics, logging, lifecycle); `store`
//!    (durable state: the callback outbox, embedded or in Redis);
//! 2. `shell`: the request loop both listeners share, with a `shell::Flow` for each;
//!    `policy`: admission, the signed exchange with NXCloud, NXCloud's answers, callback
//!    delivery and its replay memory, each taking only the state it uses;
//! 3. `state`: one config generation with its per-tenant records, swapped atomically (it
//!    holds the policies' state, so it sits above them);
//! 4. the two flows: `proxy` (caller → NXCloud) and `callbacks` (NXCloud → receiver);
//! 5. `server`: Pingora's server and listeners, binding, the admin listener, reload;
//! 6. `cli`: the command line.
#![warn(missing_docs)]

pub mod net;
pub mod process;
pub mod store;
pub mod shell;
pub mod policy;
pub mod state;
pub mod proxy;
pub mod callbacks;
pub mod server;
pub mod cli;
