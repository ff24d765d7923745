//! The command line's definition (clap): the global flags and one variant per verb, with the
//! help texts, examples and exit-code table that `--help`, `scenewatch man` and `scenewatch
//! completions` are generated from. Parsing only: what a verb does is in its own file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;
use crate::telemetry::LogFormat;

/// The exit codes, as `--help` lists them (the constants are in [`crate::exit`]).
pub const EXIT_CODES: &str = "\
Exit codes (the same meaning for every verb):
  0   success (once: every watch completed and was delivered; health: ready)
  1   an unexpected error (the message says which); health: not ready
  2   once, demo: at least one watch ended failed, canceled, not_requested, timed_out or rejected
  64  command-line usage error (no verb, an unknown flag, a bad value)
  65  reset, retry-parked: a watch key or sink name nothing has (the nearest are suggested)
  69  check --online: the credentials' call or a sink's healthcheck failed
  74  a sink could not write (the message names it)
  75  once --timeout passed with watches still open
  77  the API refused the credentials, or the account's quota is used up
  78  the configuration is invalid (every problem is listed)
  130 interrupted by SIGINT or SIGTERM";

/// The version with the commit it was built from and the optional sinks it has (`none` for the
/// lean default build; README, "Cargo features").
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SCENEWATCH_COMMIT"),
    "; optional sinks: ",
    env!("SCENEWATCH_FEATURES"),
    ")"
);

/// Watches NAVER Cloud Media Intelligence scene summaries until they complete, and delivers them.
#[derive(Debug, Parser)]
#[command(name = "scenewatch", version = VERSION, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Log format: json (one object per line), pretty, or auto (json unless stdout is a terminal).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "SCENEWATCH_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: follow every configured watch for as long as it runs.
    ///
    /// Polls with backoff, keeps a durable ledger (in state_dir, or in PostgreSQL with [state]
    /// backend = "postgres"), delivers every result version to every sink and every event to
    /// every event sink, rechecks delivered watches for newer versions. SIGHUP reloads the configuration and the watch directory; SIGTERM or SIGINT
    /// stops gracefully within shutdown_timeout (a second signal exits at once).
    /// Example: scenewatch run --config /etc/scenewatch/scenewatch.toml
    Run {
        /// Configuration file (TOML); SCENEWATCH__SECTION__KEY variables override it.
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print the ledger: one row per watch (phase, remote status, polls, last change, next poll,
    /// when a waiting job is expected to finish from its project's history, pending
    /// deliveries). Reads the ledger (SQLite or PostgreSQL) read-only; works while the daemon
    /// runs.
    ///
    /// Example: scenewatch status --config /etc/scenewatch/scenewatch.toml --json
    Status {
        /// Configuration file (only state_dir and [state] are read from it).
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Poll every configured watch until each completes or ends, write the results, exit.
    ///
    /// Shows one live line per watch on a terminal, plain log lines otherwise, and a summary at
    /// the end (on stderr). --timeout bounds the run (exit 75 with watches still open, e.g. an
    /// endpoint that does not answer); --dry-run writes nothing and prints what it would write.
    /// Example: scenewatch once --config /etc/scenewatch/scenewatch.toml --timeout 10m --dry-run
    #[command(after_help = EXIT_CODES)]
    Once {
        /// Configuration file (TOML); SCENEWATCH__SECTION__KEY variables override it.
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Plain log lines even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// Give up after this long (e.g. 10m), with exit code 75 if watches are still open.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Poll and fetch, but write nothing (no sink, no event sink, no file): print where each
        /// result version would have gone, and how many events each event sink would have got.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the configuration and report every problem at once (exit 78 when invalid).
    ///
    /// Each problem names its key and where the value came from: file:line:column, or the
    /// environment variable. The summary counts watches by shape (index, asset, project).
    /// --online also signs one read-only call with the API credentials, connects to a
    /// PostgreSQL ledger (read-only) and runs every sink's healthcheck (exit 69 when one fails); --print first prints the effective configuration,
    /// secrets redacted, each value with its origin.
    /// Example: scenewatch check --config config/example.toml --print (with SCENEWATCH__API__SECRET_KEY set)
    Check {
        /// Configuration file (TOML); SCENEWATCH__SECTION__KEY variables override it.
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Also call the API once with the credentials and run every sink's healthcheck.
        #[arg(long)]
        online: bool,
        /// Print the effective configuration first (secrets redacted, with origins).
        #[arg(long)]
        print: bool,
    },
    /// Serve the Media Intelligence simulator (both API generations, faults on demand).
    ///
    /// Without --scenario it serves the demo scenario. See docs/simulator.md.
    /// Example: scenewatch simulate --listen 127.0.0.1:8480 --scenario config/simulator/faulty.toml
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
        /// Scenario file (TOML).
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Run the simulator and a watcher together, no credentials needed, and write the results.
    ///
    /// Five assets complete at staggered times within about 20 seconds (one fails, one is a
    /// partial re-run). Example: scenewatch demo --out ./scenewatch-demo
    Demo {
        /// Directory for the results.
        #[arg(long, default_value = "scenewatch-demo")]
        out: PathBuf,
        /// Plain log lines even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
    /// Put watches that ended (failed, canceled, not_requested, timed_out, rejected) back to
    /// pending, so they are polled again.
    ///
    /// Writes the ledger in state_dir; a running daemon picks the change up on its next reload
    /// (systemctl reload scenewatch, or SIGHUP). Without WATCH keys, --all-ended is required.
    /// A key the ledger does not hold is exit 65 and nothing is reset.
    /// Example: scenewatch reset --config /etc/scenewatch/scenewatch.toml newsroom/1234/5678/1001
    Reset {
        /// Configuration file (only state_dir and [state] are read from it).
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Reset every watch that ended.
        #[arg(long)]
        all_ended: bool,
        /// Watch keys: workspace/project_id/asset_id/index_id.
        watches: Vec<String>,
    },
    /// Retry deliveries (and events) that a receiver refused and that were parked.
    ///
    /// Fix the receiver first. Works while the daemon runs: its sinks pick the rows up within
    /// seconds. Example: scenewatch retry-parked --config /etc/scenewatch/scenewatch.toml --sink webhook
    RetryParked {
        /// Configuration file (only state_dir and [state] are read from it).
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only this sink (by its configured name; one neither configured nor in the ledger is
        /// exit 65).
        #[arg(long)]
        sink: Option<String>,
    },
    /// Work on the ledger itself: `ledger migrate` copies a SQLite ledger into PostgreSQL.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Probe a running daemon's readiness endpoint: exit 0 when ready, 1 otherwise.
    ///
    /// For container HEALTHCHECKs without curl. Prints the daemon's reasons when not ready.
    /// Example: scenewatch health --url http://127.0.0.1:9464
    Health {
        /// The endpoint to probe: a full URL, or the daemon's base address (http://HOST:PORT),
        /// which means its /readyz.
        #[arg(
            long,
            default_value = "http://127.0.0.1:9464/readyz",
            env = "SCENEWATCH_HEALTH_URL"
        )]
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print a shell completion script.
    ///
    /// Example: scenewatch completions bash > /etc/bash_completion.d/scenewatch
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff), or write all of them, generated from this command line definition.
    ///
    /// Without arguments it prints scenewatch(1); with a COMMAND, that command's page
    /// (scenewatch man run prints scenewatch-run(1)); with --dir, it writes scenewatch.1 and one
    /// scenewatch-COMMAND.1 per command into DIR (created if missing) and lists them.
    /// Example: scenewatch man --dir /usr/local/share/man/man1
    Man {
        /// The command whose page to print (run, once, check, status, …).
        command: Option<String>,
        /// Write every page into this directory instead of printing one.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        dir: Option<PathBuf>,
    },
    /// Print the string to sign and the signature of one request, to debug a 401.
    ///
    /// The access key is shown, the secret key never. Credentials come from the configuration
    /// (file and SCENEWATCH__API__… variables).
    /// Example: scenewatch sign --method GET --path /api/v1/workspaces/w/projects/1/assets/2/scene-summary/status
    Sign {
        /// HTTP method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Path with query, without scheme or host.
        #[arg(long)]
        path: String,
        /// Timestamp in milliseconds since the Unix epoch (default: now).
        #[arg(long)]
        timestamp: Option<u64>,
        /// Configuration file holding the credentials (optional: the environment may do).
        #[arg(long, short, env = "SCENEWATCH_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// How a verb logs, decided before anything runs so that `main` sets tracing up in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// No subscriber: the operator verbs print what they have to say and log nothing.
    Off,
    /// Log lines at `info` (the daemon, the simulator).
    Info,
    /// The live progress display on a terminal unless `no_progress`, with log lines around it
    /// (`once`, the demo).
    BesideProgress {
        /// `--no-progress`.
        no_progress: bool,
    },
}

impl Command {
    /// How this verb logs.
    pub fn logs(&self) -> Logs {
        match self {
            Command::Run { .. } | Command::Simulate { .. } => Logs::Info,
            Command::Once { no_progress, .. } | Command::Demo { no_progress, .. } => {
                Logs::BesideProgress {
                    no_progress: *no_progress,
                }
            }
            Command::Status { .. }
            | Command::Check { .. }
            | Command::Reset { .. }
            | Command::RetryParked { .. }
            | Command::Ledger { .. }
            | Command::Health { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::Sign { .. } => Logs::Off,
        }
    }
}

/// `scenewatch ledger …`.
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Copy the SQLite ledger ({state_dir}/scenewatch.db) into an empty PostgreSQL ledger.
    ///
    /// Stop the daemon first (a running one is refused: it holds the state directory's lock).
    /// Every watch, version, delivery, event, event delivery, sink health and fact is copied in
    /// one transaction; done deliveries stay done, so the daemon started on PostgreSQL delivers
    /// nothing again, and open ones stay open. The target schema is created and migrated if
    /// needed and must hold no ledger rows yet (a non-empty one is refused; there is no
    /// --force). The SQLite file is only read: keep it as a backup. The target is --to-config's
    /// [state] (backend = "postgres"), or --to with --schema, or else --config's own [state]
    /// when it says backend = "postgres". Prints what was copied.
    /// Example: scenewatch ledger migrate --config /etc/scenewatch/scenewatch.toml --to-config /etc/scenewatch/postgres.toml
    Migrate {
        /// Configuration whose state_dir holds the SQLite ledger (only state_dir and [state]
        /// are read).
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// A configuration file whose [state] names the PostgreSQL ledger (url, password_file or
        /// password_env, schema): the way to give a password.
        #[arg(long, conflicts_with_all = ["to", "schema"])]
        to_config: Option<PathBuf>,
        /// The PostgreSQL URL (postgres://user@host:port/db?sslmode=…). A password in it is
        /// visible to other users of the machine: prefer --to-config, or PGPASSWORD-free trust or
        /// peer authentication.
        #[arg(long)]
        to: Option<String>,
        /// The schema, with --to (default scenewatch).
        #[arg(long, requires = "to")]
        schema: Option<String>,
    },
}
