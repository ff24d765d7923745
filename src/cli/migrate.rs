//! `scenewatch ledger migrate`: the SQLite ledger of a configuration's state_dir copied into an
//! empty PostgreSQL ledger (see [`crate::state::postgres::migrate`]), with the daemon stopped.

use std::path::Path;

use super::Outcome;
use crate::config::{Origins, Problem};
use crate::exit::{self, UsageError};
use crate::state::postgres::migrate::{self, Refusal};
use crate::state::{Backend, DB_FILE, Ledger as _, PostgresLedger};

/// Copies, and prints what was copied.
pub async fn run(
    config: &Path,
    to_config: Option<&Path>,
    to: Option<&str>,
    schema: Option<&str>,
) -> Outcome {
    let (state_dir, own) = super::ledger::location(config)?;
    let target = match (to_config, to) {
        (Some(file), _) => match super::ledger::location(file)? {
            (_, Backend::Postgres(t)) => t,
            (_, Backend::Sqlite) => {
                return Err(UsageError(format!(
                    "{}: its [state] says backend = \"sqlite\"; --to-config needs a configuration \
                     with backend = \"postgres\" and its url",
                    file.display()
                ))
                .into());
            }
        },
        (None, Some(url)) => {
            let origins = Origins::default();
            let mut p: Vec<Problem> = Vec::new();
            let state = crate::config::RawState {
                backend: "postgres".into(),
                url: url.to_string(),
                schema: schema.unwrap_or("scenewatch").to_string(),
                ..crate::config::RawState::default()
            };
            match crate::config::check_state(&origins, &mut p, &state) {
                Some(Backend::Postgres(t)) if p.is_empty() => t,
                _ => {
                    let why: Vec<String> = p
                        .iter()
                        .map(|p| p.message.replace("state.url", "--to"))
                        .collect();
                    return Err(UsageError(format!(
                        "--to: {}",
                        if why.is_empty() {
                            "not a PostgreSQL URL".to_string()
                        } else {
                            why.join("; ")
                        }
                    ))
                    .into());
                }
            }
        }
        (None, None) => match own {
            Backend::Postgres(t) => t,
            Backend::Sqlite => {
                return Err(UsageError(
                    "no target: give --to-config FILE (a configuration with [state] backend = \
                     \"postgres\"), or --to postgres://… --schema NAME, or set backend = \
                     \"postgres\" in the configuration itself"
                        .into(),
                )
                .into());
            }
        },
    };
    // The daemon's own lock: held by a running daemon, and held here until the copy is done so
    // that none starts on the SQLite file meanwhile.
    let _lock = crate::daemon::lock_state_dir(&state_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}; ledger migrate copies a ledger no daemon is writing (systemctl stop scenewatch)"
        )
    })?;
    let ledger = PostgresLedger::open(&target, Vec::new(), Vec::new()).await?;
    let outcome = migrate::copy(&state_dir, &ledger).await;
    let _ = ledger.close().await;
    let source = state_dir.join(DB_FILE);
    match outcome? {
        Ok(c) => {
            println!(
                "Copied {} into {}: {} watches, {} versions, {} deliveries, {} events, {} event \
                 deliveries, {} sink health rows, {} facts.",
                source.display(),
                ledger.at(),
                c.watches,
                c.versions,
                c.deliveries,
                c.events,
                c.event_deliveries,
                c.sink_health,
                c.facts
            );
            println!(
                "Next: set [state] backend = \"postgres\" with this url and schema, and start the \
                 daemon. {} was left as it was; keep it as a backup.",
                source.display()
            );
            Ok(exit::OK)
        }
        Err(Refusal::DaemonRunning) => Err(anyhow::anyhow!(
            "{} is held by a running scenewatch daemon; stop it first (nothing was copied)",
            ledger.at()
        )),
        Err(Refusal::NotEmpty(found)) => {
            let rows: Vec<String> = found.iter().map(|(t, n)| format!("{n} {t}")).collect();
            Err(anyhow::anyhow!(
                "{} already holds a ledger ({}); ledger migrate copies into an empty one only: \
                 pick another schema, or drop this one if it is not needed (nothing was copied)",
                ledger.at(),
                rows.join(", ")
            ))
        }
    }
}
