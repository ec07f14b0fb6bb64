//! The command line: its arguments, the subcommands behind them, and the demo.

pub mod args;
pub mod commands;
#[cfg(feature = "emulator")]
pub mod demo;
