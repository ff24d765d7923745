//! `scenewatch sign`: the string to sign and the signature headers of one request, to debug a
//! 401. The access key is shown, the secret key never.

use std::path::Path;

use super::Outcome;
use crate::config::{self, Sources};
use crate::exit::{self, UnusableConfig, UsageError};
use crate::ncp::signing::{self, Credentials};

/// Signs `method` `path` at `timestamp` (ms; default now) with the credentials of `config`
/// (file and environment) or of the environment alone.
pub fn run(method: &str, path: &str, timestamp: Option<u64>, config: Option<&Path>) -> Outcome {
    if !path.starts_with('/') {
        return Err(UsageError(
            "--path must start with '/' (no scheme or host), e.g. /api/v1/workspaces/…".into(),
        )
        .into());
    }
    let sources = match config {
        Some(p) => Sources::file_and_process_env(p),
        None => Sources::default(),
    };
    let (raw, _) = config::load_raw(&sources)?;
    let creds = raw.api;
    let secret = if !creds.secret_key.is_empty() {
        creds.secret_key.trim().to_string()
    } else if !creds.secret_key_file.is_empty() {
        match std::fs::read_to_string(&creds.secret_key_file) {
            Ok(s) => s.trim().to_string(),
            Err(e) => {
                return Err(UnusableConfig(format!(
                    "api.secret_key_file: cannot read {}: {e}",
                    creds.secret_key_file
                ))
                .into());
            }
        }
    } else {
        String::new()
    };
    if creds.access_key.is_empty() || secret.is_empty() {
        return Err(UnusableConfig(format!(
            "credentials missing: set api.access_key and api.secret_key_file in --config, or {} and {}",
            config::env_var_name("api.access_key"),
            config::env_var_name("api.secret_key")
        ))
        .into());
    }
    let ts = timestamp.unwrap_or_else(crate::clock::wall_now_ms);
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
    Ok(exit::OK)
}
