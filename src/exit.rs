//! Exit codes of every verb, in one place, and the mapping from typed errors to them. The README
//! table and `--help` list the same codes; sysexits where one fits.

use crate::config::ConfigErrors;
use crate::sink::SinkError;

/// Success.
pub const OK: u8 = 0;
/// Something else went wrong (see the error).
pub const ERROR: u8 = 1;
/// `once`: at least one watch ended failed, canceled, not_requested, timed_out or rejected.
pub const NOT_ALL_COMPLETED: u8 = 2;
/// Command-line usage error (sysexits EX_USAGE): no verb, an unknown flag, a bad value.
pub const USAGE: u8 = 64;
/// An operator verb was given a name nothing has (sysexits EX_DATAERR): `reset` a watch key the
/// ledger does not hold, `retry-parked --sink` a sink neither configured nor in the ledger.
pub const UNKNOWN_NAME: u8 = 65;
/// `check --online`: at least one online check failed, the credentials' call or a sink's
/// healthcheck (sysexits EX_UNAVAILABLE); each is listed with what came back.
pub const ONLINE_CHECK_FAILED: u8 = 69;
/// A sink could not write (sysexits EX_IOERR).
pub const SINK: u8 = 74;
/// `once --timeout` passed with watches still open (sysexits EX_TEMPFAIL: try again later).
pub const TIMEOUT: u8 = 75;
/// The API refused the credentials, or the quota is used up (sysexits EX_NOPERM).
pub const AUTH: u8 = 77;
/// The configuration is invalid (sysexits EX_CONFIG).
pub const CONFIG: u8 = 78;
/// Interrupted by SIGINT or SIGTERM before the end.
pub const INTERRUPTED: u8 = 130;

/// The command line asks for something that cannot be done as written (exit 64); the message
/// says what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A name on the command line that nothing has (exit 65): the message names it, says what
/// exists, and suggests the nearest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownName(pub String);

/// The configuration cannot give a verb what it needs (exit 78), found outside
/// [`crate::config::load`]: `sign` reads the credentials itself, without validating the rest.
/// Like every configuration message, it never quotes a configured value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnusableConfig(pub String);

/// The exit code an error stands for: a usage mistake is 64, an unknown name 65, a configuration problem 78, a sink
/// that cannot be set up 74, anything else 1. Decided by the error's type, never its text.
pub fn code_of(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        USAGE
    } else if e.downcast_ref::<UnknownName>().is_some() {
        UNKNOWN_NAME
    } else if e.downcast_ref::<ConfigErrors>().is_some()
        || e.downcast_ref::<UnusableConfig>().is_some()
    {
        CONFIG
    } else if e.downcast_ref::<SinkError>().is_some() {
        SINK
    } else {
        ERROR
    }
}

/// Up to three of `known` nearest to `name` by edit distance, nearest first, when near enough to
/// be a typo; for "did you mean" hints.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut scored: Vec<(usize, &str)> = known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().take(3).map(|(_, k)| k).collect()
}

/// Levenshtein distance, by characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `did you mean `a` or `b`?` for [`nearest`]'s answer; empty when there is none.
pub fn did_you_mean(near: &[&str]) -> String {
    match near {
        [] => String::new(),
        [one] => format!(" (did you mean `{one}`?)"),
        [init @ .., last] => format!(
            " (did you mean {} or `{last}`?)",
            init.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
