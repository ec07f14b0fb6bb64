//! What runs the pipeline: Pingora's server and listeners, config generations and their
//! reload, the lifecycle (ready, drain), the admin listener, metrics and logging.

pub mod admin;
pub mod bind;
pub mod generation;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod server;
