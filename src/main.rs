//! The `scenewatch` binary, in a fixed order: parse the command line, set up tracing (around
//! the progress display for the verbs that have one), start the runtime, run the verb, exit with
//! its code. The verbs are in the library's [`scenewatch::cli`].

use std::process::ExitCode;

use scenewatch::cli::{self, Live, Logs};
use scenewatch::exit;
use scenewatch::telemetry;

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    let live = match cli.command.logs() {
        Logs::Off => Live::off(),
        Logs::Info => {
            telemetry::init(cli.log_format, "info", None);
            Live::off()
        }
        Logs::BesideProgress { no_progress } => {
            let live = Live::wanted(no_progress);
            match live.log_writer() {
                // Only warnings while the display shows the same facts.
                Some(w) => telemetry::init(cli.log_format, "warn", Some(w)),
                None => telemetry::init(cli.log_format, "info", None),
            }
            live
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    ExitCode::from(runtime.block_on(cli::dispatch(cli.command, live)))
}
