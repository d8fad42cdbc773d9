//! The `wattmesh` command: one binary for every role (control plane, gateway, site agent, the
//! all-in-one `up`) and the operator's CLI. Thin by design: each subcommand parses its flags,
//! calls into the library crates, and prints.
//!
//! Layout: [`cli`] declares the flags, [`run`] wires services and shutdown, [`client`] talks to
//! the control API, [`commands`] holds the operator commands, [`progress`] draws model pulls.

mod cli;
mod client;
mod commands;
mod progress;
mod run;
mod up;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
