use clap::Parser;
use std::process::ExitCode;

use nxgate::cli::args::{Cli, Command};
use nxgate::cli::commands;
use nxgate::process::logging;
use nxgate::server::StartMode;

/// The allocator, left out by the `system-allocator` feature (for heap profilers that see
/// only malloc).
#[cfg(not(feature = "system-allocator"))]
mod allocator {
    /// jemalloc, with background purging: memory freed after a burst of connections goes
    /// back to the system within seconds, where glibc's malloc keeps the peak (BENCHMARKS.md).
    #[global_allocator]
    static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc's options, read at its start (the `_RJEM_MALLOC_CONF` environment variable
    /// still overrides them). Freed pages go back after about a second unused instead of
    /// ten: a burst of new connections (each one's accept, handshake and upstream connect)
    /// would otherwise stay in RSS for as long as traffic keeps the arenas busy, about 3 KiB
    /// per request in flight; purging runs on jemalloc's background thread, off the request
    /// path (BENCHMARKS.md, issue 28).
    #[unsafe(export_name = "_rjem_malloc_conf")]
    static MALLOC_CONF: MallocConf = MallocConf(c"dirty_decay_ms:1000".as_ptr());

    /// A C string pointer jemalloc reads once; `Sync` so it can be a static.
    #[repr(transparent)]
    struct MallocConf(*const std::ffi::c_char);

    // SAFETY: the pointer is to a `'static` C string literal that nothing writes.
    unsafe impl Sync for MallocConf {}
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "emulator")]
    let default_filter = if matches!(cli.command, Command::Demo) { "error" } else { "info" };
    #[cfg(not(feature = "emulator"))]
    let default_filter = "info";
    logging::init(cli.log_format, default_filter);
    match &cli.command {
        Command::Run { config, upgrade, upgrade_sock, ready_file } => {
            let mode =
                StartMode { upgrade: *upgrade, upgrade_sock: upgrade_sock.clone(), ready_file: ready_file.clone() };
            commands::run(config, &mode)
        }
        Command::Check { config, probe } => commands::check(config, *probe),
        Command::Ping { config, tenant } => commands::ping(config, tenant.as_deref()),
        Command::Healthcheck { url } => commands::healthcheck(url),
        Command::Sign(args) => commands::sign(args),
        #[cfg(feature = "emulator")]
        Command::Emulator(args) => nxgate_emulator::cli::run(args),
        #[cfg(feature = "emulator")]
        Command::Demo => nxgate::cli::demo::run(),
    }
}
