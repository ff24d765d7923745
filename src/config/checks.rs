//! The small checks every part of validation shares: durations, loopback hosts, and secrets
//! read from exactly one of a file or an environment variable. Each pushes its [`Problem`]
//! (key path and origin, never the value) into the one list of the pass.

use std::net::IpAddr;

use std::time::Duration;

use reqwest::Url;

use super::{Origins, Problem};

/// Parses a humantime duration ("10s", "5m", "1h 30m").
pub(crate) fn duration(
    origins: &Origins,
    problems: &mut Vec<Problem>,
    key: &str,
    value: &str,
) -> Option<Duration> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d.is_zero() => {
            problems.push(origins.problem(key, "must be longer than zero"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(origins.problem(
                key,
                format!("{value:?} is not a duration ({e}); write e.g. \"10s\", \"5m\", \"24h\""),
            ));
            None
        }
    }
}

/// The largest secret file read: a key, a password or a token is a few hundred bytes. A bigger
/// file (a misconfigured path: a log, a device such as `/dev/zero`) is refused after reading this
/// much, instead of being read to the end (or forever).
pub(crate) const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads a secret file of at most [`MAX_SECRET_FILE_BYTES`].
pub(crate) fn read_secret_file(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 64 KiB, so not a secret file",
        ));
    }
    Ok(text)
}

/// True when `url` names a loopback host (`localhost`, 127.0.0.0/8, `::1`).
pub(crate) fn is_loopback(url: &Url) -> bool {
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .is_some_and(|h| h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

/// A secret from exactly one of a file or an environment variable (the field names are given
/// for messages); `Ok(None)` when neither is set. Never echoes the secret. Used by the sinks
/// behind cargo features only (PostgreSQL, S3, NATS).
#[cfg(any(feature = "postgres", feature = "s3", feature = "nats"))]
pub(crate) fn secret_from(
    origins: &Origins,
    p: &mut Vec<Problem>,
    base: &str,
    (file_key, file): (&str, &str),
    (env_key, env): (&str, &str),
) -> Result<Option<String>, ()> {
    let (file, env) = (file.trim(), env.trim());
    match (file.is_empty(), env.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => {
            p.push(origins.problem(
                &format!("{base}.{file_key}"),
                format!("set only one of {file_key} and {env_key}"),
            ));
            Err(())
        }
        (false, true) => match read_secret_file(file) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Ok(_) => {
                p.push(origins.problem(&format!("{base}.{file_key}"), format!("{file} is empty")));
                Err(())
            }
            Err(e) => {
                p.push(origins.problem(
                    &format!("{base}.{file_key}"),
                    format!("cannot read {file}: {e}"),
                ));
                Err(())
            }
        },
        (true, false) => match std::env::var(env) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            _ => {
                p.push(origins.problem(
                    &format!("{base}.{env_key}"),
                    format!("environment variable {env} is not set or empty"),
                ));
                Err(())
            }
        },
    }
}
