//! nxgate: a signing reverse-proxy gateway for the NXCloud Callbot v3 API, on Pingora.
//!
//! Module map, in the order a request meets them: `tenants` (who is calling), `routes`
//! (may this path go out), `headers` (what crosses), `signing` (sign the exact body),
//! `upstream` (the exchange), `verify` (check the answer), `errors` (the refusal
//! contract). `proxy` strings them together; `config`, `generation` and `server` set the
//! stage; `emulator` and `demo` stand in for NXCloud.
#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod demo;
pub mod downstream;
pub mod emulator;
pub mod errors;
pub mod exchange;
pub mod generation;
pub mod headers;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod routes;
pub mod secret;
pub mod server;
pub mod signing;
pub mod tenants;
pub mod upstream;
pub mod verify;
