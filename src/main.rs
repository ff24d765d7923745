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
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    ExitCode::from(cli::block_on(&runtime, cli.command, live))
}

/// One thread runs every task (the SQLite writer and blocking file work have threads of their
/// own): measured cheaper per poll than a worker per core, which hands tasks and wake-ups
/// between threads (docs/benchmarks.md, "CPU per poll"). `SCENEWATCH_WORKER_THREADS=N` (N ≥ 1)
/// asks for N worker threads instead, for a deployment that needs more than one core's worth
/// of polling.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::env::var("SCENEWATCH_WORKER_THREADS").ok().and_then(|v| {
        let n = v.trim().parse::<usize>().ok().filter(|&n| n > 0);
        if n.is_none() {
            tracing::warn!(
                value = %v,
                "SCENEWATCH_WORKER_THREADS is not a whole number above zero; running on one thread."
            );
        }
        n
    });
    match workers {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
}
