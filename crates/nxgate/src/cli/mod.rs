//! The command line: its arguments, the subcommands behind them, and the demo.

pub mod args;
pub mod commands;
pub mod demo;
