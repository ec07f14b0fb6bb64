use clap::Parser;
use std::process::ExitCode;

use nxgate::cli::{Cli, Command};
use nxgate::{commands, demo, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo => "error",
        _ => "info",
    };
    logging::init(cli.log_format, default_filter);
    match &cli.command {
        Command::Run { config } => commands::run(config),
        Command::Check { config } => commands::check(config),
        Command::Sign(args) => commands::sign(args),
        Command::Emulator(args) => commands::emulator(args),
        Command::Demo => demo::run(),
    }
}
