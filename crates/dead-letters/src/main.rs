//! `handoff-dlq`: `serve` runs the dead-letter handler; every other command is the
//! operator CLI, a client of its HTTP API (`--url`, `--token` or `HANDOFF_DLQ_TOKEN`).

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = handoff_dead_letters::cli::Cli::parse();
    handoff_dead_letters::cli::main(args)
}
