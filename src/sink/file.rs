//! The file sink: `{dir}/{workspace}/{project_id}/{asset_id}/{index_id}.json`, the latest version,
//! written atomically (temp file, fsync, rename, fsync the directory); optionally every version
//! as `{index_id}/{lastAnalyzedAt}.json` too.
//!
//! The latest file only moves forward: before replacing it, the sink reads the envelope there
//! and leaves it if it holds a newer version (see [`super::latest`]), since an older version can
//! arrive after a newer one (a retry after a backoff). The read and the rename do not race with
//! another delivery because one drainer per sink delivers one version at a time; two sinks (or
//! two daemons) writing the same directory for the same watch are not supported.
//!
//! Its configuration is at the end of this file: [`RawFileSink`] (the table as written), [`FileSinkConfig`]
//! (validated) and `validate`, which the one validation pass calls for each table of this kind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::cause::{Context as _, Fault};

use super::latest::{Stamp, envelope_stamp_from, supersedes};
use super::{Delivery, Receipt, Sink, SinkError};

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
            source: None,
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
            let latest = self.latest_path(d);
            let version = self.config.keep_versions.then(|| self.version_path(d));
            let stamp = Stamp::of(d);
            // The envelope is encoded straight into each file (a clone of `d` shares the
            // result): a result of megabytes is not built a second time in memory.
            let owned = d.clone();
            let (location, kept) = tokio::task::spawn_blocking(move || {
                let write = |path: &Path| {
                    write_atomic_with(path, |f| {
                        let mut w = std::io::BufWriter::with_capacity(64 * 1024, f);
                        owned.write_envelope(&mut w)?;
                        w.flush().map_err(Fill::Io)
                    })
                };
                if let Some(v) = &version {
                    write(v)?;
                }
                match read_stamp(&latest)? {
                    Some(current) if !supersedes(&stamp, &current) => {
                        // Delivered all the same: the newer version stays the latest, and the
                        // older one is where every version is kept (if they are).
                        Ok((version.unwrap_or(latest), Some(current)))
                    }
                    _ => {
                        write(&latest)?;
                        Ok::<_, Failed>((latest, None))
                    }
                }
            })
            .await
            .map_err(|e| self.error(format!("writer task failed: {e}")))?
            .map_err(|f| match f {
                Failed::Encode(e) => d.encode_error("file", &self.config.name, &e),
                Failed::Fault(f) => self.error(f.message).with_source(f.source),
            })?;
            if let Some(current) = kept {
                tracing::info!(sink = %self.config.name, version = %d.version_id, last_analyzed_at = %d.last_analyzed_at, latest_version = %current.version, latest_last_analyzed_at = %current.last_analyzed_at, "The latest file holds a newer version; left as it is.");
            }
            Ok(Receipt {
                location: location.display().to_string(),
            })
        })
    }

    fn targets(&self, d: &Delivery) -> Vec<String> {
        let mut out = vec![format!(
            "{} (unless it holds a newer version)",
            self.latest_path(d).display()
        )];
        if self.config.keep_versions {
            out.push(self.version_path(d).display().to_string());
        }
        out
    }

    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let dir = self.config.dir.clone();
            tokio::task::spawn_blocking(move || probe_writable(&dir))
                .await
                .map_err(|e| self.error(format!("probe task failed: {e}")))?
                .map_err(|f| self.error(f.message).with_source(f.source))
        })
    }
}

/// The version the latest file at `path` holds: `None` when there is none, or when it is not an
/// envelope (then the next version replaces it). A file that exists but cannot be read fails
/// the delivery, to be retried: replacing it blindly could put an older version back.
fn read_stamp(path: &Path) -> Result<Option<Stamp>, Fault> {
    let what = || {
        format!(
            "cannot read {} to compare its version with the new one",
            path.display()
        )
    };
    match std::fs::File::open(path) {
        // Read as it is parsed: the file can hold a result of megabytes, and only its stamp
        // is wanted.
        Ok(f) => envelope_stamp_from(std::io::BufReader::with_capacity(64 * 1024, f)).fault(what),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).fault(what),
    }
}

/// Creates `dir` if needed and proves it writable by writing and removing a probe file.
fn probe_writable(dir: &Path) -> Result<(), Fault> {
    std::fs::create_dir_all(dir).fault(|| format!("cannot create directory {}", dir.display()))?;
    let probe = dir.join(format!(".scenewatch-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .fault(|| format!("cannot write in directory {}", dir.display()))?;
    // Leaving the probe behind would be harmless; removing it keeps the directory clean.
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What filling a file can fail with.
pub(crate) enum Fill {
    /// Writing to it.
    Io(std::io::Error),
    /// Encoding what goes in it (nothing was wrong with the file).
    Encode(serde_json::Error),
}

impl From<serde_json::Error> for Fill {
    fn from(e: serde_json::Error) -> Self {
        if e.is_io() {
            Fill::Io(e.into())
        } else {
            Fill::Encode(e)
        }
    }
}

/// Why a file was not written: the file system (retried), or an envelope that cannot be encoded
/// (parked, see [`Delivery::encode_error`](super::Delivery::encode_error)).
pub(crate) enum Failed {
    Fault(Fault),
    Encode(serde_json::Error),
}

impl From<Fault> for Failed {
    fn from(f: Fault) -> Self {
        Failed::Fault(f)
    }
}

/// Writes `body` to `path` so that readers see the old file or the new one, never a mix, and
/// the new one survives a power cut once this returns.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), Fault> {
    write_atomic_with(path, |f| f.write_all(body).map_err(Fill::Io)).map_err(|e| match e {
        Failed::Fault(f) => f,
        Failed::Encode(e) => Fault::from(format!("cannot encode {}: {e}", path.display())),
    })
}

/// [`write_atomic`] of what `fill` writes into the (temporary) file, as it writes it.
pub(crate) fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<(), Fill>,
) -> Result<(), Failed> {
    let dir = path
        .parent()
        .ok_or_else(|| Fault::from(format!("{} has no parent directory", path.display())))?;
    std::fs::create_dir_all(dir).fault(|| format!("cannot create directory {}", dir.display()))?;
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
        let mut f =
            std::fs::File::create(&tmp).fault(|| format!("cannot create {}", tmp.display()))?;
        if let Err(e) = fill(&mut f) {
            return Err(match e {
                Fill::Io(e) => Failed::Fault(Fault {
                    message: format!("cannot write {}: {e}", tmp.display()),
                    source: crate::cause::of(e),
                }),
                Fill::Encode(e) => Failed::Encode(e),
            });
        }
        f.sync_all()
            .fault(|| format!("cannot fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            Fault::from(format!(
                "cannot rename {} to {}: {e}",
                tmp.display(),
                path.display()
            ))
        })?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .fault(|| format!("cannot fsync directory {}", dir.display()))?;
        Ok(())
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

// Configuration: the table as written (with its defaults, equal to config/default.toml) and as
// validated, and the validation that turns one into the other (problems pushed into the pass's
// one list, with the key path and origin).

/// `[[sink]] type = "file"`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFileSink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
    /// Output directory; defaults to `{state_dir}/results`.
    pub dir: String,
    /// Also keep every version as `{index_id}/{lastAnalyzedAt}.json`.
    pub keep_versions: bool,
}

/// `[[sink]] type = "file"`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSinkConfig {
    /// Name in logs.
    pub name: String,
    /// Output directory.
    pub dir: PathBuf,
    /// Keep every version too.
    pub keep_versions: bool,
}

/// `[[sink]] type = "file"`, validated: the directory defaults to `{state_dir}/results`. Nothing
/// here can be wrong (a directory that cannot be written is found by the healthcheck).
pub(crate) fn validate(raw: &RawFileSink, state_dir: &Path) -> FileSinkConfig {
    let dir = if raw.dir.trim().is_empty() {
        state_dir.join("results")
    } else {
        PathBuf::from(&raw.dir)
    };
    FileSinkConfig {
        name: raw.name.clone().unwrap_or_else(|| "file".into()),
        dir,
        keep_versions: raw.keep_versions,
    }
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

    /// A version of the test watch analyzed at `last`, fetched `fetched_s` seconds after the
    /// test delivery's fetch; its `result` names `last`, so files show which version they hold.
    fn version(last: &str, fetched_s: u64) -> Delivery {
        let mut d = crate::sink::stdout::test_delivery(&format!(r#"{{"v":"{last}"}}"#));
        d.version_id = crate::domain::VersionId::of(&d.key, last);
        d.last_analyzed_at = last.into();
        d.fetched_at += std::time::Duration::from_secs(fetched_s);
        d
    }

    fn sink(dir: &Path, keep_versions: bool) -> FileSink {
        FileSink::new(FileSinkConfig {
            name: "files".into(),
            dir: dir.to_path_buf(),
            keep_versions,
        })
    }

    /// The version id in the latest file.
    fn latest_version(s: &FileSink, d: &Delivery) -> String {
        let bytes = std::fs::read(s.latest_path(d)).unwrap();
        super::super::latest::envelope_stamp(&bytes)
            .expect("an envelope")
            .version
    }

    #[tokio::test]
    async fn an_older_version_delivered_late_does_not_replace_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), true);
        let a = version("2026-04-17T10:30:00", 0);
        // B was analyzed later but written in another form: as strings it would sort first.
        let b = version("2026-04-18 09:00:00", 60);
        s.deliver(&b).await.unwrap();
        // A's retry lands after B: delivered (kept with the versions), latest untouched.
        let receipt = s.deliver(&a).await.unwrap();
        assert_eq!(latest_version(&s, &a), b.version_id);
        assert_eq!(receipt.location, s.version_path(&a).display().to_string());
        for v in [&a, &b] {
            assert_eq!(
                std::fs::read(s.version_path(v)).unwrap(),
                v.envelope_json().unwrap()
            );
        }
        assert_eq!(
            std::fs::read(s.latest_path(&b)).unwrap(),
            b.envelope_json().unwrap()
        );
        // B again (a repeated delivery) and a later C still go through.
        s.deliver(&b).await.unwrap();
        assert_eq!(latest_version(&s, &b), b.version_id);
        let c = version("2026-04-19T00:00:00", 120);
        let receipt = s.deliver(&c).await.unwrap();
        assert_eq!(receipt.location, s.latest_path(&c).display().to_string());
        assert_eq!(latest_version(&s, &c), c.version_id);
    }

    #[tokio::test]
    async fn without_kept_versions_a_late_older_version_succeeds_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), false);
        let (a, b) = (
            version("2026-04-17T10:30:00", 0),
            version("2026-04-18T09:00:00", 60),
        );
        s.deliver(&b).await.unwrap();
        let receipt = s.deliver(&a).await.unwrap();
        assert_eq!(receipt.location, s.latest_path(&a).display().to_string());
        assert_eq!(latest_version(&s, &a), b.version_id);
        assert!(!s.asset_dir(&a).join("1001").exists(), "no versions kept");
    }

    #[tokio::test]
    async fn equal_times_are_decided_by_the_later_fetch_and_junk_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), false);
        let first = version("2026-04-17T10:30:00", 0);
        let same_instant = version("2026-04-17T10:30:00.000", 60);
        s.deliver(&same_instant).await.unwrap();
        s.deliver(&first).await.unwrap();
        assert_eq!(latest_version(&s, &first), same_instant.version_id);

        // A latest file that is not an envelope (written by someone else, cut short) is ours to
        // replace.
        std::fs::write(s.latest_path(&first), b"{\"trunc").unwrap();
        s.deliver(&first).await.unwrap();
        assert_eq!(latest_version(&s, &first), first.version_id);
    }

    #[tokio::test]
    async fn a_latest_file_that_cannot_be_read_fails_the_delivery_for_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), false);
        let a = version("2026-04-17T10:30:00", 0);
        // A directory where the latest file should be: it cannot be read (nor replaced).
        std::fs::create_dir_all(s.latest_path(&a)).unwrap();
        let e = s.deliver(&a).await.unwrap_err();
        assert_eq!(e.disposition, super::super::Disposition::Retry, "{e}");
        assert!(e.message.contains("1001.json"), "{e}");
    }

    #[test]
    fn unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = probe_writable(&file.join("results")).unwrap_err();
        assert!(err.message.contains("not-a-dir/results"), "{err}");
        // The io::Error stays attached as the cause.
        let io = err
            .source
            .as_deref()
            .and_then(|c| c.downcast_ref::<std::io::Error>());
        assert!(io.is_some(), "{err:?}");
    }
}
