//! The JSON lines sink: appends one compact line per result version (the envelope) or per event
//! (the CloudEvent) to a file, fsyncs after each batch, and rotates by size (`path.1` … `path.N`).
//!
//! Invariants: a line is never split across files, and a batch is confirmed only once fsync'd.
//! A failed write is cut back to the last whole line, so a retry never glues a fragment to the
//! next line.
//!
//! Its configuration is at the end of this file: [`RawJsonlSink`] (the table as written), [`JsonlSinkConfig`]
//! (validated) and `validate`, which the one validation pass calls for each table of this kind.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Delivery, Disposition, EventSink, Receipt, Sink, SinkError};
use crate::cause::{Context as _, Fault};
use crate::config::{Origins, Problem};
use crate::events::Event;

/// One appender per file, shared by every sink that names the same path (a result sink and an
/// event sink may well share `events.jsonl`): two appenders would each track their own size and
/// one's rotation would leave the other writing into the renamed file.
static WRITERS: LazyLock<Mutex<HashMap<PathBuf, Weak<JsonlWriter>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Appends lines to a file with size-based rotation. All IO is blocking; callers run it on the
/// blocking pool.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    max_bytes: u64,
    keep_files: u32,
    /// The open file and its size. A std mutex: it is only taken on blocking threads, and it
    /// serialises batches so their lines never interleave.
    open: Mutex<Option<OpenFile>>,
}

#[derive(Debug)]
struct OpenFile {
    file: File,
    /// Bytes in the file: where the next line starts.
    size: u64,
}

impl JsonlWriter {
    /// A writer for `path`; nothing is opened until the first append.
    pub fn new(path: PathBuf, max_bytes: u64, keep_files: u32) -> Self {
        Self {
            path,
            max_bytes,
            keep_files,
            open: Mutex::new(None),
        }
    }

    /// The process-wide writer of `path`, created with these limits if there is none yet (the
    /// first sink's limits win for a shared file).
    pub fn shared(path: &Path, max_bytes: u64, keep_files: u32) -> Arc<Self> {
        let mut writers = WRITERS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = writers.get(path).and_then(Weak::upgrade) {
            return w;
        }
        writers.retain(|_, w| w.strong_count() > 0);
        let w = Arc::new(Self::new(path.to_path_buf(), max_bytes, keep_files));
        writers.insert(path.to_path_buf(), Arc::downgrade(&w));
        w
    }

    /// The file appended to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Option<OpenFile>> {
        // A panic while holding the lock cannot leave a half-known file behind us: forget the
        // handle and reopen, which re-reads the size from disk.
        self.open.lock().unwrap_or_else(|p| {
            let mut g = p.into_inner();
            *g = None;
            g
        })
    }

    /// Appends each line plus `\n`, rotating before a line that would push the file past
    /// `max_bytes`, then fsyncs. On error, the current file is cut back to its last whole line
    /// and the handle dropped; lines written before the error stay (the batch will be retried
    /// whole, and its events carry stable ids).
    pub fn append(&self, lines: &[Vec<u8>]) -> Result<(), Fault> {
        let mut guard = self.lock();
        let result = self.append_locked(&mut guard, lines);
        if result.is_err() {
            if let Some(open) = guard.as_ref() {
                // Best effort: the error we report is the original one.
                let _ = open.file.set_len(open.size);
            }
            *guard = None;
        }
        result
    }

    fn append_locked(&self, slot: &mut Option<OpenFile>, lines: &[Vec<u8>]) -> Result<(), Fault> {
        for line in lines {
            let len = line.len() as u64 + 1;
            let open = self.ensure_open(slot)?;
            // An empty file takes any line, however long: the line must go somewhere whole.
            if open.size > 0 && open.size.saturating_add(len) > self.max_bytes {
                self.rotate(slot)?;
            }
            let open = self.ensure_open(slot)?;
            let mut buf = Vec::with_capacity(line.len() + 1);
            buf.extend_from_slice(line);
            buf.push(b'\n');
            open.file
                .write_all(&buf)
                .fault(|| format!("cannot write {}", self.path.display()))?;
            open.size += len;
        }
        if let Some(open) = slot.as_ref() {
            open.file
                .sync_data()
                .fault(|| format!("cannot fsync {}", self.path.display()))?;
        }
        Ok(())
    }

    /// Opens the file for appending if it is not open yet. The directory is not created: a
    /// missing directory is a configuration or mount problem the operator should see.
    fn ensure_open<'s>(&self, slot: &'s mut Option<OpenFile>) -> Result<&'s mut OpenFile, Fault> {
        if slot.is_none() {
            let existed = self.path.exists();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .fault(|| format!("cannot open {}", self.path.display()))?;
            let mut size = file
                .metadata()
                .fault(|| format!("cannot stat {}", self.path.display()))?
                .len();
            if size > 0 {
                size = cut_torn_tail(&self.path, &file, size)?;
            }
            if !existed {
                // The new directory entry must survive a crash like the lines in it.
                sync_dir(&self.path)?;
            }
            *slot = Some(OpenFile { file, size });
        }
        // Just filled if it was empty; the error arm is unreachable but cheaper than a panic.
        slot.as_mut()
            .ok_or_else(|| Fault::from(format!("cannot open {}", self.path.display())))
    }

    /// `path.(N-1)` → `path.N` … `path` → `path.1`, dropping what falls off the end, then a new
    /// empty `path` on the next open. The old file is fsync'd first and the directory after, so
    /// a crash leaves every line in exactly one file.
    fn rotate(&self, slot: &mut Option<OpenFile>) -> Result<(), Fault> {
        if let Some(open) = slot.take() {
            open.file
                .sync_data()
                .fault(|| format!("cannot fsync {}", self.path.display()))?;
        }
        let keep = self.keep_files;
        // The oldest kept file is pushed off the end; files beyond it are left from a run with a
        // larger `keep_files`. Remove them all, stopping at the first gap.
        if keep > 0 {
            remove_if_exists(&numbered(&self.path, keep))?;
        }
        let mut n = keep.saturating_add(1);
        while n < u32::MAX && remove_if_exists(&numbered(&self.path, n))? {
            n += 1;
        }
        if keep == 0 {
            std::fs::remove_file(&self.path)
                .fault(|| format!("cannot remove {}", self.path.display()))?;
        } else {
            for i in (1..keep).rev() {
                let from = numbered(&self.path, i);
                let to = numbered(&self.path, i + 1);
                match std::fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).fault(|| {
                            format!("cannot rename {} to {}", from.display(), to.display())
                        });
                    }
                }
            }
            let first = numbered(&self.path, 1);
            std::fs::rename(&self.path, &first).map_err(|e| {
                format!(
                    "cannot rename {} to {}: {e}",
                    self.path.display(),
                    first.display()
                )
            })?;
        }
        sync_dir(&self.path)
    }

    /// Opens (creating) the file, proving the directory exists and is writable.
    pub fn probe(&self) -> Result<(), Fault> {
        let mut guard = self.lock();
        self.ensure_open(&mut guard).map(|_| ())
    }
}

/// Removes `path`; `Ok(false)` if it did not exist.
fn remove_if_exists(path: &Path) -> Result<bool, Fault> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).fault(|| format!("cannot remove {}", path.display())),
    }
}

/// `path.n`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Fsyncs the directory holding `path`, making creations and renames in it durable.
fn sync_dir(path: &Path) -> Result<(), Fault> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .fault(|| format!("cannot fsync directory {}", dir.display()))
}

/// Appends results or events as JSON lines; one type for both, sharing [`JsonlWriter`].
#[derive(Debug)]
pub struct JsonlSink {
    name: String,
    writer: Arc<JsonlWriter>,
}

impl JsonlSink {
    /// A sink for `config`, sharing the writer of any other sink on the same path.
    pub fn new(config: &JsonlSinkConfig) -> Self {
        Self {
            name: config.name.clone(),
            writer: JsonlWriter::shared(&config.path, config.max_bytes, config.keep_files),
        }
    }

    fn error(&self, message: String, disposition: Disposition) -> SinkError {
        SinkError {
            kind: "jsonl",
            name: self.name.clone(),
            message,
            disposition,
            source: None,
        }
    }

    async fn append(&self, lines: Vec<Vec<u8>>) -> Result<(), SinkError> {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || writer.append(&lines))
            .await
            .map_err(|e| self.error(format!("writer task failed: {e}"), Disposition::Retry))?
            // Disk full, read-only remount, missing directory: all fixable, so retry.
            .map_err(|f| {
                self.error(f.message, Disposition::Retry)
                    .with_source(f.source)
            })
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn targets(&self, _d: &Delivery) -> Vec<String> {
        vec![format!(
            "{} (one line appended)",
            self.writer.path().display()
        )]
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let line = d.body("jsonl", &self.name, true)?;
            self.append(vec![line]).await?;
            Ok(Receipt {
                location: self.writer.path().display().to_string(),
            })
        })
    }

    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(self.probe())
    }
}

impl JsonlSink {
    async fn probe(&self) -> Result<(), SinkError> {
        let writer = Arc::clone(&self.writer);
        tokio::task::spawn_blocking(move || writer.probe())
            .await
            .map_err(|e| self.error(format!("probe task failed: {e}"), Disposition::Retry))?
            .map_err(|f| {
                self.error(f.message, Disposition::Retry)
                    .with_source(f.source)
            })
    }
}

impl EventSink for JsonlSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(());
            }
            self.append(events.iter().map(Event::to_cloudevent_bytes).collect())
                .await
        })
    }

    fn healthcheck(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(self.probe())
    }
}

/// A process killed in the middle of a write (SIGKILL, power cut) can leave a last line without
/// its newline. That line was never confirmed, so it will be delivered again; the fragment is cut
/// off so the retry starts a clean line instead of being glued to it. Returns the new size.
fn cut_torn_tail(path: &std::path::Path, file: &File, size: u64) -> Result<u64, Fault> {
    use std::io::{Read, Seek, SeekFrom};
    let mut reader = File::open(path).fault(|| format!("cannot read {}", path.display()))?;
    // Look back in chunks for the last newline.
    let mut end = size;
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        reader
            .seek(SeekFrom::Start(start))
            .and_then(|_| reader.read_exact(&mut buf[..n]))
            .fault(|| format!("cannot read {}", path.display()))?;
        if first && buf[n - 1] == b'\n' {
            return Ok(size); // the common case: the file ends with a whole line
        }
        first = false;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            file.set_len(keep)
                .and_then(|_| file.sync_data())
                .fault(|| format!("cannot cut the torn last line of {}", path.display()))?;
            tracing::warn!(path = %path.display(), dropped_bytes = size - keep, "Cut a torn last line left by an interrupted write; it will be delivered again.");
            return Ok(keep);
        }
        end = start;
    }
    file.set_len(0)
        .and_then(|_| file.sync_data())
        .fault(|| format!("cannot cut the torn last line of {}", path.display()))?;
    tracing::warn!(path = %path.display(), dropped_bytes = size, "Cut a torn line left by an interrupted write; it will be delivered again.");
    Ok(0)
}

// Configuration: the table as written (with its defaults, equal to config/default.toml) and as
// validated, and the validation that turns one into the other (problems pushed into the pass's
// one list, with the key path and origin).

/// `type = "jsonl"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJsonlSink {
    /// Name used in logs and metrics; defaults to the type.
    pub name: Option<String>,
    /// The file appended to; required.
    pub path: String,
    /// Rotate when the file would grow beyond this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` … `path.N`).
    pub keep_files: u32,
}

impl Default for RawJsonlSink {
    fn default() -> Self {
        Self {
            name: None,
            path: String::new(),
            max_bytes: 100 * 1024 * 1024,
            keep_files: 5,
        }
    }
}

/// `type = "jsonl"`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonlSinkConfig {
    /// Name in logs.
    pub name: String,
    /// The file appended to.
    pub path: PathBuf,
    /// Rotation size.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep_files: u32,
}

/// `type = "jsonl"`, validated (problems under `base`, e.g. `sink[2]`); `default_name` when no
/// name is given.
pub(crate) fn validate(
    origins: &Origins,
    p: &mut Vec<Problem>,
    base: &str,
    j: &RawJsonlSink,
    default_name: &str,
) -> Option<JsonlSinkConfig> {
    let mut ok = true;
    if j.path.trim().is_empty() {
        p.push(origins.problem(&format!("{base}.path"), "missing; the file to append to"));
        ok = false;
    }
    if j.max_bytes < 4096 {
        p.push(origins.problem(&format!("{base}.max_bytes"), "must be at least 4096"));
        ok = false;
    }
    ok.then(|| JsonlSinkConfig {
        name: j.name.clone().unwrap_or_else(|| default_name.into()),
        path: PathBuf::from(j.path.trim()),
        max_bytes: j.max_bytes,
        keep_files: j.keep_files,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn line(i: usize) -> Vec<u8> {
        // Varying lengths, so rotation points do not line up by accident.
        format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(i % 17)).into_bytes()
    }

    #[test]
    fn rotation_keeps_n_files_and_never_splits_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let w = JsonlWriter::new(path.clone(), 100, 3);
        for batch in 0..40 {
            let lines: Vec<_> = (batch * 3..batch * 3 + 3).map(line).collect();
            w.append(&lines).unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "events.jsonl",
                "events.jsonl.1",
                "events.jsonl.2",
                "events.jsonl.3"
            ]
        );
        // Oldest first: .3, .2, .1, then the live file; every line whole, numbers consecutive.
        let mut seen = Vec::new();
        for p in [
            numbered(&path, 3),
            numbered(&path, 2),
            numbered(&path, 1),
            path.clone(),
        ] {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                bytes.len() <= 100,
                "{} has {} bytes",
                p.display(),
                bytes.len()
            );
            assert!(bytes.ends_with(b"\n"));
            for l in lines_of(&p) {
                let v: Value = serde_json::from_str(&l).unwrap();
                seen.push(v["n"].as_u64().unwrap());
            }
        }
        let last = *seen.last().unwrap();
        assert_eq!(last, 119);
        let first = seen[0];
        assert_eq!(seen, (first..=last).collect::<Vec<_>>());
    }

    #[test]
    fn a_line_longer_than_max_bytes_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let w = JsonlWriter::new(path.clone(), 10, 2);
        w.append(&[b"short".to_vec()]).unwrap();
        let long = vec![b'y'; 50];
        w.append(std::slice::from_ref(&long)).unwrap();
        w.append(&[b"after".to_vec()]).unwrap();
        assert_eq!(lines_of(&numbered(&path, 2)), ["short"]);
        assert_eq!(
            lines_of(&numbered(&path, 1)),
            [String::from_utf8(long).unwrap()]
        );
        assert_eq!(lines_of(&path), ["after"]);
    }

    #[test]
    fn keep_zero_keeps_only_the_live_file_and_stale_extras_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        // Left over from a run with a larger keep_files.
        for n in 1..=4 {
            std::fs::write(numbered(&path, n), b"old\n").unwrap();
        }
        let w = JsonlWriter::new(path.clone(), 10, 0);
        w.append(&[b"12345".to_vec(), b"67890".to_vec()]).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("e.jsonl")]);
        assert_eq!(lines_of(&path), ["67890"]);
    }

    #[test]
    fn reopening_continues_from_the_size_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        std::fs::write(&path, b"0123456789\n").unwrap();
        let w = JsonlWriter::new(path.clone(), 20, 1);
        w.append(&[b"abcdefghij".to_vec()]).unwrap();
        assert_eq!(lines_of(&numbered(&path, 1)), ["0123456789"]);
        assert_eq!(lines_of(&path), ["abcdefghij"]);
    }

    #[test]
    fn missing_directory_is_named_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir/events.jsonl");
        let sink = JsonlSink::new(&JsonlSinkConfig {
            name: "log".into(),
            path: path.clone(),
            max_bytes: 4096,
            keep_files: 2,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = Event::sink_recovered("x", 1, 0);
        let err = rt.block_on(EventSink::send(&sink, &[e])).unwrap_err();
        assert_eq!(err.disposition, Disposition::Retry);
        assert!(
            err.to_string().contains("no-such-dir/events.jsonl"),
            "{err}"
        );
        assert!(err.to_string().starts_with("jsonl sink `log`"), "{err}");
        let err = rt.block_on(EventSink::healthcheck(&sink)).unwrap_err();
        assert!(
            err.to_string().contains("no-such-dir/events.jsonl"),
            "{err}"
        );
    }

    #[test]
    fn unwritable_path_is_named() {
        // Tests may run as root, which ignores permission bits; a regular file where the
        // directory should be fails for everyone.
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let path = blocker.join("events.jsonl");
        let w = JsonlWriter::new(path, 4096, 1);
        let err = w.append(&[b"{}".to_vec()]).unwrap_err();
        assert!(err.message.contains("not-a-dir/events.jsonl"), "{err}");
        // The io::Error stays attached as the cause.
        let io = err
            .source
            .as_deref()
            .and_then(|c| c.downcast_ref::<std::io::Error>());
        assert!(io.is_some(), "{err:?}");
    }

    #[tokio::test]
    async fn results_and_events_on_one_path_share_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("all.jsonl");
        let config = |name: &str| JsonlSinkConfig {
            name: name.into(),
            path: path.clone(),
            max_bytes: 4096,
            keep_files: 2,
        };
        let results = JsonlSink::new(&config("results"));
        let events = JsonlSink::new(&config("events"));
        assert!(Arc::ptr_eq(&results.writer, &events.writer));

        let d = crate::sink::stdout::test_delivery("{\n \"a\": 1\n}");
        let receipt = results.deliver(&d).await.unwrap();
        assert_eq!(receipt.location, path.display().to_string());
        let e = Event::delivered(&d.key, &d.version_id, "results", &receipt.location, 5);
        EventSink::send(&events, std::slice::from_ref(&e))
            .await
            .unwrap();

        let lines = lines_of(&path);
        assert_eq!(lines.len(), 2);
        let envelope: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(envelope["version"], d.version_id.as_str());
        assert_eq!(envelope["result"], serde_json::json!({"a": 1}));
        let ce: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(Event::from_cloudevent(&ce), Some(e));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever the line sizes and limits: every file holds whole lines, only a file with a
        /// single line may exceed `max_bytes`, at most `keep_files` rotated files exist, and
        /// reading them oldest first gives the newest lines written, in order.
        #[test]
        fn rotation_never_splits_or_reorders(
            sizes in proptest::collection::vec(0usize..120, 1..60),
            batch in 1usize..5,
            max_bytes in 8u64..300,
            keep in 0u32..4,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.jsonl");
            let w = JsonlWriter::new(path.clone(), max_bytes, keep);
            let all: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{i}:{}", "z".repeat(*n)).into_bytes())
                .collect();
            for chunk in all.chunks(batch) {
                w.append(chunk).unwrap();
            }
            let mut files: Vec<PathBuf> = (1..=keep).rev().map(|n| numbered(&path, n)).collect();
            files.push(path.clone());
            proptest::prop_assert!(!numbered(&path, keep + 1).exists());
            let mut read = Vec::new();
            for f in files.iter().filter(|f| f.exists()) {
                let bytes = std::fs::read(f).unwrap();
                let lines = lines_of(f);
                proptest::prop_assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
                proptest::prop_assert!(bytes.len() as u64 <= max_bytes || lines.len() == 1);
                read.extend(lines.into_iter().map(String::into_bytes));
            }
            proptest::prop_assert!(!read.is_empty());
            proptest::prop_assert_eq!(&read[..], &all[all.len() - read.len()..]);
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"tor").unwrap();
        let w = JsonlWriter::new(path.clone(), 1 << 20, 2);
        w.append(&[b"{\"c\":3}".to_vec()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n"
        );
        // Only a fragment, no newline at all: the file starts over.
        std::fs::write(&path, b"{\"torn").unwrap();
        let w = JsonlWriter::new(path.clone(), 1 << 20, 2);
        w.append(&[b"{\"d\":4}".to_vec()]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"d\":4}\n");
    }
}
