use clap::Parser;
use std::process::ExitCode;

use nxgate::cli::{Cli, Command};
use nxgate::server::StartMode;
use nxgate::{commands, demo, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo => "error",
        _ => "info",
    };
    logging::init(cli.log_format, default_filter);
    match &cli.command {
        Command::Run { config, upgrade, upgrade_sock } => {
            let mode = StartMode { upgrade: *upgrade, upgrade_sock: upgrade_sock.clone() };
            commands::run(config, &mode)
        }
        Command::Check { config } => commands::check(config),
        Command::Ping { config, tenant } => commands::ping(config, tenant.as_deref()),
        Command::Healthcheck { url } => commands::healthcheck(url),
        Command::Sign(args) => commands::sign(args),
        Command::Emulator(args) => commands::emulator(args),
        Command::Demo => demo::run(),
    }
}
