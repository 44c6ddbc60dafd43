//! `sluice`: the daemon (`sluice run`) and the command-line tool, in one binary.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, outermost context first, for people and for scripts.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
