//! `dfdet`: parses the command line, runs one command ([`cli::commands`]) and turns how it
//! ended into the exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::args::{Cli, Command};
use cli::commands::{self as run, Ended};

/// Exit codes, the same for every command:
/// 0: everything was done;
/// 1: some inputs could not be processed (each is named on stderr; the others were processed);
/// 2: nothing could run (bad options, unreadable weights or config, an unwritable output);
/// 130: stopped by Ctrl-C (`train`: `last` was saved, `--resume` continues).
const EXIT_PARTIAL: u8 = 1;
const EXIT_FATAL: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    dfdet::model::fused::threads::restart_with_quiet_threads();
    dfdet::memory::keep_freed_memory();
    let cli = Cli::parse();
    let ended = match cli.command {
        Command::Predict(args) => run::predict(args),
        Command::Info(args) => run::info(args),
        Command::Convert(args) => run::convert(args),
        Command::Bench(args) => run::bench(args),
        Command::Test(args) => run::test(args),
        Command::Metrics(args) => run::metrics(args),
        Command::Preprocess(args) => run::preprocess(args),
        Command::Train(args) => run::train(args),
        Command::Study(args) => run::study(args),
        Command::Serve(args) => run::serve(args),
    };
    match ended {
        Ok(Ended::Done) => ExitCode::SUCCESS,
        Ok(Ended::Partial) => ExitCode::from(EXIT_PARTIAL),
        Ok(Ended::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}
