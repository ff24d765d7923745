//! The command line: its definition ([`args`]) and one file per verb. A verb parses nothing and
//! sets up no tracing (`main` does both, in that order); it runs to its end and says how it
//! ended, as an exit code chosen from its typed outcome, or as an error whose type decides the
//! code ([`exit::code_of`]), never its text.
//!
//! This is a module of the library, not of the binary, so that tests can call a verb and its
//! exit-code choice without spawning a process, and reach the clap definition the man pages and
//! completion scripts are generated from (`Cli::command()`); `main.rs` is then only the fixed
//! order of parsing, tracing, the runtime and [`dispatch`]. The cost is that the library links
//! clap's man-page and completion generators, which the binary needs anyway.

pub mod args;
pub mod check;
pub mod completions;
pub mod demo;
pub mod health;
pub mod ledger;
pub mod live;
pub mod man;
#[cfg(feature = "postgres")]
pub mod migrate;
pub mod once;
pub mod reset;
pub mod retry_parked;
pub mod run;
pub mod sign;
pub mod simulate;
pub mod status;

pub use args::{Cli, Command, Logs};
pub use live::Live;

use crate::exit;

/// How a verb ended: `Ok` with the exit code its outcome stands for (having printed what it
/// had to say), or an error for [`fail`] to print and map to a code.
pub type Outcome = anyhow::Result<u8>;

/// Parses the command line. A usage error (no verb, an unknown flag, a bad value) is printed
/// with clap's hint and is exit 64 ([`exit::USAGE`]; clap's own default is 2, which here means
/// "a watch failed"); `--help` and `--version` print and are exit 0.
pub fn parse<I, T>(args: I) -> Result<Cli, u8>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::Parser as _;
    Cli::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            exit::USAGE
        } else {
            exit::OK
        }
    })
}

/// Runs one verb to its end; the process exit code. `live` is the progress display `main` set
/// the logs up around (off for every verb but `once` and the demo).
/// Runs a command to its exit code on `runtime`: the binary's whole run. It lives here, not in
/// `main.rs`, so that the program's future (every command's state machine) is compiled once,
/// in this crate; a `block_on` in the binary compiled it all again in the binary's crate (about
/// 40 s of CPU of a cold release build, docs/benchmarks.md, "Build time and binary size").
pub fn block_on(runtime: &tokio::runtime::Runtime, command: Command, live: Live) -> u8 {
    runtime.block_on(dispatch(command, live))
}

pub async fn dispatch(command: Command, live: Live) -> u8 {
    let outcome = match command {
        Command::Run { config } => run::run(&config).await,
        Command::Status { config, json } => status::run(&config, json).await,
        Command::Once {
            config,
            no_progress: _,
            timeout,
            dry_run,
        } => once::run(&config, timeout, dry_run, live).await,
        Command::Check {
            config,
            online,
            print,
        } => check::run(&config, online, print).await,
        Command::Simulate { listen, scenario } => simulate::run(listen, scenario).await,
        Command::Demo {
            out,
            no_progress: _,
        } => demo::run(&out, live).await,
        Command::Reset {
            config,
            all_ended,
            watches,
        } => reset::run(&config, all_ended, &watches).await,
        Command::RetryParked { config, sink } => retry_parked::run(&config, sink).await,
        Command::Ledger {
            command:
                args::LedgerCommand::Migrate {
                    config,
                    to_config,
                    to,
                    schema,
                },
        } => {
            #[cfg(feature = "postgres")]
            {
                migrate::run(
                    &config,
                    to_config.as_deref(),
                    to.as_deref(),
                    schema.as_deref(),
                )
                .await
            }
            #[cfg(not(feature = "postgres"))]
            {
                let _ = (config, to_config, to, schema);
                Err(exit::UsageError(
                    "ledger migrate copies into a PostgreSQL ledger, which is not in this build: \
                     scenewatch was compiled without the cargo feature \"postgres\"; rebuild \
                     with --features postgres (or --features full, every sink)"
                        .into(),
                )
                .into())
            }
        }
        Command::Health { url, timeout } => health::run(&url, timeout).await,
        Command::Completions { shell } => completions::run(shell),
        Command::Man { command, dir } => man::run(command.as_deref(), dir.as_deref()),
        Command::Sign {
            method,
            path,
            timestamp,
            config,
        } => sign::run(&method, &path, timestamp, config.as_deref()),
    };
    outcome.unwrap_or_else(|e| fail(&e))
}

/// Prints `error: ` and the error's whole chain on stderr; the exit code its type stands for.
pub fn fail(e: &anyhow::Error) -> u8 {
    eprintln!("error: {}", chain(e));
    exit::code_of(e)
}

/// The error and its causes, `: `-separated, each cause said once (see [`crate::cause::chain`]).
pub fn chain(e: &anyhow::Error) -> String {
    crate::cause::chain(e.as_ref())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;
    use crate::exit::{UnusableConfig, UsageError};

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_come_from_the_error_type() {
        let code = |e: anyhow::Error| exit::code_of(&e);
        assert_eq!(code(UsageError("x".into()).into()), exit::USAGE);
        assert_eq!(code(UnusableConfig("x".into()).into()), exit::CONFIG);
        assert_eq!(
            code(crate::config::ConfigErrors(Vec::new()).into()),
            exit::CONFIG
        );
        // Context on top does not hide the type; a message that merely reads like one does.
        let wrapped = anyhow::Error::from(UsageError("x".into())).context("while parsing");
        assert_eq!(code(wrapped), exit::USAGE);
        assert_eq!(code(anyhow::anyhow!("usage: configuration")), exit::ERROR);
    }

    #[test]
    fn usage_mistakes_are_64_before_anything_is_read() {
        let e = sign::run("GET", "no-slash", Some(0), None).unwrap_err();
        assert_eq!(exit::code_of(&e), exit::USAGE);
        assert!(chain(&e).starts_with("--path must start with '/'"), "{e}");
        let e = man::run(Some("runn"), None).unwrap_err();
        assert_eq!(exit::code_of(&e), exit::USAGE);
        assert!(
            chain(&e).starts_with("no command \"runn\"; pages exist for: run"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn reset_needs_keys_or_all_ended_and_checks_keys_first() {
        let nowhere = std::path::Path::new("/nonexistent/scenewatch.toml");
        for (all, keys) in [(false, vec![]), (true, vec!["w/1/2/3".to_string()])] {
            let e = reset::run(nowhere, all, &keys).await.unwrap_err();
            assert_eq!(exit::code_of(&e), exit::USAGE, "{e}");
        }
        let e = reset::run(nowhere, false, &["w/1/2".into()])
            .await
            .unwrap_err();
        assert_eq!(exit::code_of(&e), exit::USAGE, "{e}");
        assert!(chain(&e).starts_with("\"w/1/2\" is not a watch key"), "{e}");
        // With valid keys, the missing file is a configuration problem.
        let e = reset::run(nowhere, false, &["w/1/2/3".into()])
            .await
            .unwrap_err();
        assert_eq!(exit::code_of(&e), exit::CONFIG, "{e}");
    }

    #[test]
    fn only_once_and_the_demo_draw_progress() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("scenewatch").chain(args.iter().copied()))
                .unwrap()
                .command
                .logs()
        };
        assert_eq!(parse(&["run"]), Logs::Info);
        assert_eq!(parse(&["simulate"]), Logs::Info);
        assert_eq!(
            parse(&["once", "--no-progress"]),
            Logs::BesideProgress { no_progress: true }
        );
        assert_eq!(
            parse(&["demo"]),
            Logs::BesideProgress { no_progress: false }
        );
        for verb in [
            &["status"][..],
            &["check"],
            &["reset", "--all-ended"],
            &["retry-parked"],
            &["health"],
            &["man"],
            &["completions", "bash"],
            &["sign", "--path", "/x"],
        ] {
            assert_eq!(parse(verb), Logs::Off, "{verb:?}");
        }
    }
}
