//! The `scenewatch` binary: parse the command line, set up tracing, load the configuration, run
//! the verb until done or signalled, and turn the outcome into an exit code. No logic of its own.

use std::net::SocketAddr;

use std::path::PathBuf;

use std::process::ExitCode;

use std::sync::Arc;

use clap::{Parser, Subcommand};

use tokio_util::sync::CancellationToken;

use scenewatch::app::{self, exit};

use scenewatch::config::{self, DEFAULT_CONFIG_PATH, Sources};

use scenewatch::ncp::signing::{self, Credentials};

use scenewatch::progress::{Board, Progress};

use scenewatch::telemetry::{self, LogFormat};

const EXIT_CODES: &str = "\
Exit codes:
  0   every watch completed and was delivered
  1   an unexpected error (the message says which)
  2   at least one watch ended failed, canceled, not_requested, timed_out or rejected
  64  command-line usage error
  74  a sink could not write (the message names it)
  77  the API refused the credentials
  78  the configuration is invalid (every problem is listed)
  130 interrupted by SIGINT or SIGTERM";

/// Watches NAVER Cloud Media Intelligence scene summaries until they complete, and delivers them.
#[derive(Debug, Parser)]
#[command(name = "scenewatch", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Log format: json (one object per line), pretty, or auto (json unless stdout is a terminal).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "SCENEWATCH_LOG_FORMAT"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Poll every configured watch until each completes or ends, write the results, exit.
    ///
    /// Shows one live line per watch on a terminal, plain log lines otherwise.
    /// Example: scenewatch once --config /etc/scenewatch/scenewatch.toml
    #[command(after_help = EXIT_CODES)]
    Once {
        /// Configuration file (TOML); SCENEWATCH__SECTION__KEY variables override it.
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Plain log lines even on a terminal.
        #[arg(long)]
        no_progress: bool,
    },
    /// Validate the configuration and report every problem at once (exit 78 when invalid).
    ///
    /// Example: scenewatch check --config config/example.toml (with SCENEWATCH__API__SECRET_KEY set)
    Check {
        /// Configuration file (TOML); SCENEWATCH__SECTION__KEY variables override it.
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let code = runtime.block_on(run(cli));
    ExitCode::from(code)
}

async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Sign {
            method,
            path,
            timestamp,
            config,
        } => sign(&method, &path, timestamp, config),
        Command::Simulate { listen, scenario } => {
            telemetry::init(cli.log_format, "info", None);
            report_error(scenewatch::sim::run_cli(listen, scenario).await)
        }
        Command::Once {
            config,
            no_progress,
        } => {
            let progress = (!no_progress && Progress::available())
                .then(|| Progress::new(Arc::new(Board::default())));
            init_logs(cli.log_format, progress.as_ref());
            let config = match config::load(&Sources::file_and_process_env(&config)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::CONFIG;
                }
            };
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            let sinks = match app::sinks(&config).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::SINK;
                }
            };
            let board = progress
                .as_ref()
                .map(|p| p.board().clone())
                .unwrap_or_default();
            let shutdown = shutdown_on_signal();
            let drawing = start_progress(progress);
            let result = app::once(config, sinks, board, shutdown).await;
            drawing.finish().await;
            match result {
                Ok(report) => {
                    if let Some(a) = &report.auth_failure {
                        eprintln!("error: the API refused the credentials: {a}");
                    }
                    report.exit_code()
                }
                Err(e) => report_error(Err(e)),
            }
        }
        Command::Demo { out, no_progress } => {
            let progress = (!no_progress && Progress::available())
                .then(|| Progress::new(Arc::new(Board::default())));
            init_logs(cli.log_format, progress.as_ref());
            let board = progress
                .as_ref()
                .map(|p| p.board().clone())
                .unwrap_or_default();
            let shutdown = shutdown_on_signal();
            let drawing = start_progress(progress);
            let result = scenewatch::demo::run(&out, board, shutdown).await;
            drawing.finish().await;
            match result {
                Ok(run) => {
                    println!("{}", run.summary());
                    run.exit_code()
                }
                Err(e) => report_error(Err(e)),
            }
        }
    }
}

/// Logs at `info`, or only warnings while the progress display shows the same facts.
fn init_logs(format: LogFormat, progress: Option<&Progress>) {
    match progress {
        Some(p) => telemetry::init(format, "warn", Some(p.log_writer())),
        None => telemetry::init(format, "info", None),
    }
}

/// The progress display's task, if any.
struct Drawing {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drawing {
    async fn finish(self) {
        self.stop.cancel();
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

fn start_progress(progress: Option<Progress>) -> Drawing {
    let stop = CancellationToken::new();
    let task = progress.map(|p| tokio::spawn(p.run(stop.clone())));
    Drawing { stop, task }
}

/// Cancels the returned token on the first SIGINT or SIGTERM; a second one exits at once.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!("Signal received; stopping (send it again to exit at once).");
        t.cancel();
        wait_for_signal().await;
        std::process::exit(i32::from(exit::INTERRUPTED));
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn check(path: &std::path::Path) -> u8 {
    match config::load(&Sources::file_and_process_env(path)) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: configuration is valid: {} watch(es), {} sink(s), endpoint {}",
                path.display(),
                c.watches.len(),
                c.sinks.len(),
                c.api.endpoint
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::CONFIG
        }
    }
}

fn sign(method: &str, path: &str, timestamp: Option<u64>, config: Option<PathBuf>) -> u8 {
    if !path.starts_with('/') {
        eprintln!(
            "error: --path must start with '/' (no scheme or host), e.g. /api/v1/workspaces/…"
        );
        return exit::USAGE;
    }
    let sources = match config {
        Some(p) => Sources::file_and_process_env(&p),
        None => Sources::default(),
    };
    let creds = match config::load_raw(&sources) {
        Ok((raw, _)) => raw.api,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    let secret = if !creds.secret_key.is_empty() {
        creds.secret_key.trim().to_string()
    } else if !creds.secret_key_file.is_empty() {
        match std::fs::read_to_string(&creds.secret_key_file) {
            Ok(s) => s.trim().to_string(),
            Err(e) => {
                eprintln!(
                    "error: api.secret_key_file: cannot read {}: {e}",
                    creds.secret_key_file
                );
                return exit::CONFIG;
            }
        }
    } else {
        String::new()
    };
    if creds.access_key.is_empty() || secret.is_empty() {
        eprintln!(
            "error: credentials missing: set api.access_key and api.secret_key_file in --config, or {} and {}",
            config::env_var_name("api.access_key"),
            config::env_var_name("api.secret_key")
        );
        return exit::CONFIG;
    }
    let ts = timestamp.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default()
    });
    let signed = signing::sign(
        &Credentials::new(creds.access_key.trim(), secret),
        &method.to_ascii_uppercase(),
        path,
        ts,
    );
    println!("string to sign (each line below ends in \\n except the last):");
    for line in signed.string_to_sign.split('\n') {
        println!("  {line}");
    }
    println!();
    for (name, value) in signed.headers() {
        println!("{name}: {value}");
    }
    exit::OK
}

fn report_error(result: anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::ERROR
        }
    }
}
