//! The `scenewatch` binary: parse the command line, set up tracing, load the configuration, run
//! the verb until done or signalled, and turn the outcome into an exit code. No logic of its own.

use std::net::SocketAddr;

use std::path::PathBuf;

use std::process::ExitCode;

use std::sync::Arc;

use clap::{Parser, Subcommand};

use tokio_util::sync::CancellationToken;

use scenewatch::exit;

use scenewatch::config::{self, DEFAULT_CONFIG_PATH, Sources};

use scenewatch::ncp::signing::{self, Credentials};

use scenewatch::progress::{Board, Progress};

use scenewatch::state::Ledger as _;

use scenewatch::telemetry::{self, LogFormat};

const EXIT_CODES: &str = "\
Exit codes:
  0   every watch completed and was delivered
  1   an unexpected error (the message says which)
  2   at least one watch ended failed, canceled, not_requested, timed_out or rejected
  64  command-line usage error
  74  a sink could not write (the message names it)
  75  once --timeout passed with watches still open
  77  the API refused the credentials, or the account's quota is used up
  78  the configuration is invalid (every problem is listed)
  130 interrupted by SIGINT or SIGTERM";

/// The version with the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SCENEWATCH_COMMIT"),
    ")"
);

/// Watches NAVER Cloud Media Intelligence scene summaries until they complete, and delivers them.
#[derive(Debug, Parser)]
#[command(name = "scenewatch", version = VERSION, about, after_help = EXIT_CODES)]
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
    /// Run the daemon: follow every configured watch for as long as it runs.
    ///
    /// Polls with backoff, keeps a durable ledger in state_dir, delivers every result version to
    /// every sink and every event to every event sink, rechecks delivered watches for newer
    /// versions. SIGHUP reloads the configuration and the watch directory; SIGTERM or SIGINT
    /// stops gracefully within shutdown_timeout (a second signal exits at once).
    /// Example: scenewatch run --config /etc/scenewatch/scenewatch.toml
    Run {
        /// Configuration file (TOML); SCENEWATCH__SECTION__KEY variables override it.
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print the ledger: one row per watch (phase, remote status, polls, last change, next poll,
    /// pending deliveries). Reads the state database; works while the daemon runs.
    ///
    /// Example: scenewatch status --config /etc/scenewatch/scenewatch.toml --json
    Status {
        /// Configuration file (only state_dir is read from it).
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
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
        /// Give up after this long (e.g. 10m), with exit code 75 if watches are still open.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
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
    /// Put watches that ended (failed, canceled, not_requested, timed_out, rejected) back to
    /// pending, so they are polled again.
    ///
    /// Writes the ledger in state_dir; a running daemon picks the change up on its next reload
    /// (systemctl reload scenewatch, or SIGHUP). Without WATCH keys, --all-ended is required.
    /// Example: scenewatch reset --config /etc/scenewatch/scenewatch.toml newsroom/1234/5678/1001
    Reset {
        /// Configuration file (only state_dir is read from it).
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
        /// Configuration file (only state_dir is read from it).
        #[arg(long, short, env = "SCENEWATCH_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only this sink (by its configured name).
        #[arg(long)]
        sink: Option<String>,
    },
    /// Probe a running daemon's readiness endpoint: exit 0 when ready, 1 otherwise.
    ///
    /// For container HEALTHCHECKs without curl. Prints the daemon's reasons when not ready.
    /// Example: scenewatch health --url http://127.0.0.1:9464/readyz
    Health {
        /// The endpoint to probe.
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
        Command::Run { config } => {
            telemetry::init(cli.log_format, "info", None);
            let shutdown = scenewatch::signals::shutdown_on_signal();
            let sources = Sources::file_and_process_env(&config);
            let result = scenewatch::daemon::run(sources, shutdown, |running| {
                tokio::spawn(forward_reloads(running.reload));
            })
            .await;
            match result {
                Ok(()) => exit::OK,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "The daemon stopped on an error.");
                    eprintln!("error: {e:#}");
                    exit::code_of(&e)
                }
            }
        }
        Command::Status { config, json } => status(&config, json).await,
        Command::Health { url, timeout } => health(&url, timeout).await,
        Command::Reset {
            config,
            all_ended,
            watches,
        } => reset(&config, all_ended, &watches).await,
        Command::RetryParked { config, sink } => retry_parked(&config, sink).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "scenewatch", &mut std::io::stdout());
            exit::OK
        }
        Command::Man { command, dir } => man(command.as_deref(), dir.as_deref()),
        Command::Check { config } => check(&config),
        Command::Sign {
            method,
            path,
            timestamp,
            config,
        } => sign(&method, &path, timestamp, config),
        Command::Simulate { listen, scenario } => {
            telemetry::init(cli.log_format, "info", None);
            let served =
                scenewatch::sim::run_cli(listen, scenario, scenewatch::signals::terminate()).await;
            report_error(served.map_err(anyhow::Error::from))
        }
        Command::Once {
            config,
            no_progress,
            timeout,
        } => {
            let (progress, board) = progress_and_logs(cli.log_format, no_progress);
            let config = match config::load(&Sources::file_and_process_env(&config)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::CONFIG;
                }
            };
            let shutdown = scenewatch::signals::shutdown_on_signal();
            let drawing = start_progress(progress);
            let options = scenewatch::once::OnceOptions {
                timeout,
                observer: Some(board),
            };
            let result = scenewatch::once::once(config, options, shutdown).await;
            drawing.finish().await;
            match result {
                Ok(report) => {
                    if let Some(a) = &report.auth_failure {
                        eprintln!("error: the API refused the credentials: {a}");
                    }
                    if let Some(q) = &report.quota_exceeded {
                        eprintln!("error: the API's quota is used up: {q}");
                    }
                    if report.timed_out {
                        eprintln!("error: --timeout passed before every watch was settled");
                    }
                    report.exit_code()
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    exit::code_of(&e)
                }
            }
        }
        Command::Demo { out, no_progress } => {
            let (progress, board) = progress_and_logs(cli.log_format, no_progress);
            let shutdown = scenewatch::signals::shutdown_on_signal();
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

/// The live progress display when wanted and on a terminal, with logs set up around it.
fn progress_and_logs(format: LogFormat, no_progress: bool) -> (Option<Progress>, Arc<Board>) {
    let progress =
        (!no_progress && Progress::available()).then(|| Progress::new(Arc::new(Board::default())));
    init_logs(format, progress.as_ref());
    let board = progress
        .as_ref()
        .map(|p| p.board().clone())
        .unwrap_or_default();
    (progress, board)
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

/// Turns SIGHUP into reloads of the daemon.
async fn forward_reloads(commands: tokio::sync::mpsc::Sender<scenewatch::daemon::Reload>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("Cannot listen for SIGHUP; reload by restarting.");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading the configuration.");
            if commands.send(scenewatch::daemon::Reload).await.is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    drop(commands);
}

/// Opens the ledger of the configuration at `path` for an operator command (no daemon needed;
/// safe while one runs: SQLite serialises the writes).
async fn operator_ledger(path: &std::path::Path) -> Result<scenewatch::state::SqliteLedger, u8> {
    let state_dir = match config::load_raw(&Sources::file_and_process_env(path)) {
        Ok((raw, _)) => PathBuf::from(raw.state_dir),
        Err(e) => {
            eprintln!("error: {e}");
            return Err(exit::CONFIG);
        }
    };
    // The sink lists only matter for new versions, which operator commands do not create.
    scenewatch::state::SqliteLedger::open(&state_dir, Vec::new(), Vec::new())
        .await
        .map_err(|e| {
            eprintln!("error: {e}");
            exit::ERROR
        })
}

async fn retry_parked(path: &std::path::Path, sink: Option<String>) -> u8 {
    let ledger = match operator_ledger(path).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let now = scenewatch::clock::wall_now_ms();
    let result = ledger.unpark(sink.clone(), now).await;
    let _ = ledger.close().await;
    match result {
        Ok(n) => {
            println!(
                "{n} parked deliveries and events{} are due again; a running daemon sends them within seconds.",
                sink.map(|s| format!(" of sink `{s}`")).unwrap_or_default()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::ERROR
        }
    }
}

async fn reset(path: &std::path::Path, all_ended: bool, watches: &[String]) -> u8 {
    if watches.is_empty() != all_ended {
        eprintln!(
            "error: name the watches to reset (workspace/project_id/asset_id/index_id), or pass --all-ended"
        );
        return exit::USAGE;
    }
    let mut keys = Vec::new();
    for w in watches {
        match w.parse::<scenewatch::domain::WatchKey>() {
            Ok(k) => keys.push(k),
            Err(e) => {
                eprintln!(
                    "error: {w:?} is not a watch key (workspace/project_id/asset_id/index_id): {e}"
                );
                return exit::USAGE;
            }
        }
    }
    let ledger = match operator_ledger(path).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let now = scenewatch::clock::wall_now_ms();
    let result = ledger.reset_watches(keys.clone(), now).await;
    let _ = ledger.close().await;
    match result {
        Ok(done) => {
            for k in &done {
                println!("reset {k}");
            }
            for k in keys.iter().filter(|k| !done.contains(k)) {
                println!("not reset {k}: not in the ledger, removed, or not ended");
            }
            println!(
                "{} watch(es) reset; a running daemon polls them after its next reload (systemctl reload scenewatch, or kill -HUP its pid).",
                done.len()
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::ERROR
        }
    }
}

/// GET `url`; 0 on a 2xx, 1 otherwise (printing why).
async fn health(url: &str, timeout: std::time::Duration) -> u8 {
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unhealthy: cannot build an HTTP client: {e}");
            return 1;
        }
    };
    match client.get(url).send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if status.is_success() {
                println!("healthy: {url} answered {status} {}", body.trim());
                0
            } else {
                println!("unhealthy: {url} answered {status} {}", body.trim());
                1
            }
        }
        Err(e) => {
            println!("unhealthy: {url}: {e}");
            1
        }
    }
}

async fn status(path: &std::path::Path, json: bool) -> u8 {
    let sources = Sources::file_and_process_env(path);
    let state_dir = match config::load_raw(&sources) {
        Ok((raw, _)) => PathBuf::from(raw.state_dir),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::CONFIG;
        }
    };
    let ledger = match scenewatch::state::SqliteLedger::open_read_only(&state_dir).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::ERROR;
        }
    };
    let rows = match ledger.status().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::ERROR;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    print!("{}", scenewatch::status::render(&rows, now, json));
    exit::OK
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

/// `scenewatch man`: one page to stdout, or every page into `dir`.
fn man(command: Option<&str>, dir: Option<&std::path::Path>) -> u8 {
    let pages = man_pages();
    if let Some(dir) = dir {
        let written = std::fs::create_dir_all(dir).and_then(|()| {
            pages
                .iter()
                .try_for_each(|(name, text)| std::fs::write(dir.join(name), text))
        });
        return match written {
            Ok(()) => {
                for (name, _) in &pages {
                    println!("{}", dir.join(name).display());
                }
                exit::OK
            }
            Err(e) => {
                eprintln!(
                    "error: cannot write the man pages to {}: {e}",
                    dir.display()
                );
                exit::ERROR
            }
        };
    }
    let wanted = match command {
        None => "scenewatch.1".to_string(),
        Some(c) => format!("scenewatch-{c}.1"),
    };
    match pages.iter().find(|(name, _)| *name == wanted) {
        Some((_, text)) => {
            print!("{text}");
            exit::OK
        }
        None => {
            let known: Vec<&str> = pages
                .iter()
                .filter_map(|(n, _)| n.strip_prefix("scenewatch-")?.strip_suffix(".1"))
                .collect();
            eprintln!(
                "error: no command {:?}; pages exist for: {}",
                command.unwrap_or_default(),
                known.join(", ")
            );
            exit::USAGE
        }
    }
}

/// Every man page as (file name, roff): scenewatch.1, then scenewatch-COMMAND.1 per command.
/// clap_mangen names scenewatch-COMMAND(1) in the main page's SUBCOMMANDS section; each page
/// also ends in a SEE ALSO section naming only pages of this set, so every reference is real.
fn man_pages() -> Vec<(String, String)> {
    use clap_mangen::roff::{Roff, bold, roman};
    let mut cli = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    cli.build();
    let commands: Vec<clap::Command> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    let title = |c: &clap::Command| c.get_display_name().unwrap_or(c.get_name()).to_string();
    let page = |cmd: clap::Command, see_also: Vec<String>| {
        // Subcommands carry no version of their own: name the program's on every page.
        let man = clap_mangen::Man::new(cmd).source(format!("scenewatch {VERSION}"));
        let mut out = Vec::new();
        // Rendering into a Vec cannot fail.
        let _ = man.render(&mut out);
        let mut refs = Vec::new();
        for (i, name) in see_also.iter().enumerate() {
            if i > 0 {
                refs.push(roman(", "));
            }
            refs.push(bold(name.as_str()));
            refs.push(roman("(1)"));
        }
        let mut roff = Roff::new();
        roff.control("SH", ["SEE ALSO"]);
        // No hyphenation: a page name split across lines ("sce-newatch-check") is unreadable.
        roff.control("nh", []);
        roff.text(refs);
        roff.control("PP", []);
        roff.text([roman(
            "README.md, docs/operations.md and docs/troubleshooting.md in the source tree.",
        )]);
        let text = String::from_utf8_lossy(&out).into_owned() + &roff.to_roff();
        (man.get_filename(), text)
    };
    let all: Vec<String> = commands.iter().map(title).collect();
    let mut pages = vec![page(cli.clone(), all.clone())];
    for c in &commands {
        let me = title(c);
        let mut see_also = vec!["scenewatch".to_string()];
        see_also.extend(all.iter().filter(|t| **t != me).cloned());
        pages.push(page(c.clone(), see_also));
    }
    pages
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
