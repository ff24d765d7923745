//! The file sink: `{dir}/{workspace}/{project_id}/{asset_id}/{index_id}.json`, the latest version,
//! written atomically (temp file, fsync, rename, fsync the directory); optionally every version
//! as `{index_id}/{lastAnalyzedAt}.json` too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;

use super::{Delivery, Receipt, Sink, SinkError};
use crate::config::FileSinkConfig;

/// Writes JSON documents under a directory.
#[derive(Debug)]
pub struct FileSink {
    config: FileSinkConfig,
}

impl FileSink {
    /// A sink for `config`; nothing is touched until the first delivery or healthcheck.
    pub fn new(config: FileSinkConfig) -> Self {
        Self { config }
    }

    fn error(&self, message: String) -> SinkError {
        SinkError {
            kind: "file",
            name: self.config.name.clone(),
            message,
            // Disks fill up and get fixed, directories get their permissions back: retry.
            disposition: super::Disposition::Retry,
        }
    }

    /// Where the latest version of a watch goes.
    pub fn latest_path(&self, d: &Delivery) -> PathBuf {
        self.asset_dir(d).join(format!("{}.json", d.key.index_id()))
    }

    /// Where a kept version goes. `lastAnalyzedAt` comes from the API, so it is used as a file
    /// name only when it is plainly safe; otherwise the version id stands in.
    pub fn version_path(&self, d: &Delivery) -> PathBuf {
        let name = if is_safe_file_name(&d.last_analyzed_at) {
            d.last_analyzed_at.as_str()
        } else {
            d.version_id.as_str()
        };
        self.asset_dir(d)
            .join(d.key.index_id())
            .join(format!("{name}.json"))
    }

    fn asset_dir(&self, d: &Delivery) -> PathBuf {
        // Watch ids are validated at config time: letters, digits, '-', '_', '.', no "..".
        self.config
            .dir
            .join(d.key.workspace())
            .join(d.key.project_id())
            .join(d.key.asset_id())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let body = d.body("file", &self.config.name, false)?;
            let latest = self.latest_path(d);
            let version = self.config.keep_versions.then(|| self.version_path(d));
            let written = tokio::task::spawn_blocking(move || {
                if let Some(v) = &version {
                    write_atomic(v, &body)?;
                }
                write_atomic(&latest, &body)?;
                Ok::<_, String>(latest)
            })
            .await
            .map_err(|e| self.error(format!("writer task failed: {e}")))?
            .map_err(|m| self.error(m))?;
            Ok(Receipt {
                location: written.display().to_string(),
            })
        })
    }

    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let dir = self.config.dir.clone();
            tokio::task::spawn_blocking(move || probe_writable(&dir))
                .await
                .map_err(|e| self.error(format!("probe task failed: {e}")))?
                .map_err(|m| self.error(m))
        })
    }
}

/// Creates `dir` if needed and proves it writable by writing and removing a probe file.
fn probe_writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".scenewatch-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .map_err(|e| format!("cannot write in directory {}: {e}", dir.display()))?;
    // Leaving the probe behind would be harmless; removing it keeps the directory clean.
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `body` to `path` so that readers see the old file or the new one, never a mix, and
/// the new one survives a power cut once this returns.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        f.write_all(body)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.sync_all()
            .map_err(|e| format!("cannot fsync {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot fsync directory {}: {e}", dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// True for names made only of letters, digits and `-_.:+`, not starting with a dot.
pub(crate) fn is_safe_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_version_names_are_not_used_as_paths() {
        assert!(is_safe_file_name("2026-04-17T10:30:00"));
        for bad in [
            "",
            "../../etc/passwd",
            "a/b",
            ".hidden",
            "x\0y",
            &"9".repeat(65),
        ] {
            assert!(!is_safe_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c.json")]);
    }

    #[test]
    fn unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = probe_writable(&file.join("results")).unwrap_err();
        assert!(err.contains("not-a-dir/results"), "{err}");
    }
}
