//! The ledger thread: owns the connection, runs commands in group transactions, answers each
//! caller only after the `COMMIT` that made its data durable.
//!
//! Why one thread and not `spawn_blocking` per call: SQLite allows one writer at a time anyway,
//! and a single owner lets commands that queue up meanwhile share one transaction and one fsync
//! (group commit), which is what makes 100,000 watches cheap. Each command runs inside its own
//! savepoint, so a failing command is rolled back alone and the others of the group still commit.
//!
//! Timing-only poll steps ([`StepCommit::timing_only`] against the stored row) are not committed
//! one by one: the thread answers them at once and keeps the latest timing of each watch in
//! memory ([`Pending`]), then writes them together inside a group transaction: at most
//! [`FLUSH_EVERY`] after the first of them, once [`FLUSH_AT`] watches are queued, before any
//! command that reads or rewrites watch rows, and at close. A full step of a watch drops its
//! queued timing (the step carries newer values), so a queued update never overwrites a later
//! commit. A crash loses at most the queued timing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::store::Store;
use super::{StateError, StepCommit};
use crate::domain::WatchKey;
use crate::state::WatchTiming;

/// Longest a timing-only step waits in memory before it is written (with every other one
/// queued by then). What a crash can lose: the polls of the last second, which the restart
/// makes again.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Queued watches that make the thread write the batch before [`FLUSH_EVERY`] is up, so one
/// batch stays one short transaction even at thousands of polls per second.
pub(crate) const FLUSH_AT: usize = 4096;

/// Queued commands before senders wait: enough to absorb a burst of poll steps, small enough
/// that a stuck disk pushes back on the callers instead of growing memory.
const QUEUE: usize = 1024;

/// Most commands committed in one transaction. Bounds how long a caller waits behind others and
/// how much one failed `COMMIT` (disk full) has to report as failed.
const MAX_GROUP: usize = 256;

/// Sends a command's result to its caller once the group transaction is settled.
type Finish = Box<dyn FnOnce(Result<(), StateError>) + Send>;

/// What running a command produced.
pub(crate) enum Outcome {
    /// It succeeded; answer after the commit.
    Done(Finish),
    /// It failed (and was answered); its savepoint must be rolled back.
    Failed(StateError),
}

/// A command: a closure over the store plus the caller's reply channel.
pub(crate) trait Work: Send {
    /// Runs the command.
    fn run(self: Box<Self>, store: &mut Store) -> Outcome;
    /// Answers the caller with `error` without running the command.
    fn abort(self: Box<Self>, error: StateError);
}

struct Task<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T, StateError>>,
}

impl<T, F> Work for Task<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Store) -> Result<T, StateError> + Send + 'static,
{
    fn run(self: Box<Self>, store: &mut Store) -> Outcome {
        let Task { f, reply } = *self;
        match f(store) {
            Ok(value) => Outcome::Done(Box::new(move |settled: Result<(), StateError>| {
                // The caller may have given up waiting; nothing to do then.
                let _ = reply.send(settled.map(|()| value));
            })),
            Err(e) => {
                let _ = reply.send(Err(e.clone()));
                Outcome::Failed(e)
            }
        }
    }

    fn abort(self: Box<Self>, error: StateError) {
        let _ = self.reply.send(Err(error));
    }
}

/// Wraps a closure and its reply channel into a command.
pub(crate) fn job<T, F>(f: F, reply: oneshot::Sender<Result<T, StateError>>) -> Box<dyn Work>
where
    T: Send + 'static,
    F: FnOnce(&mut Store) -> Result<T, StateError> + Send + 'static,
{
    Box::new(Task { f, reply })
}

/// A message to the ledger thread.
pub(crate) enum Msg {
    /// Run a command in the current group.
    Job {
        /// The command.
        work: Box<dyn Work>,
        /// It writes.
        write: bool,
        /// It reads or rewrites watch rows: the queued timing is written first.
        watches: bool,
    },
    /// A poll step: queued if timing-only, else run as a writing command.
    Step(Box<StepCommit>, oneshot::Sender<Result<(), StateError>>),
    /// Run a writing command in a transaction of its own (retention's batches: short, and
    /// never holding up or sharing the fate of the poll steps queued beside them).
    Alone(Box<dyn Work>),
    /// Check writability (outside any group).
    Probe(oneshot::Sender<Result<(), StateError>>),
    /// Finish the queued commands, checkpoint, stop.
    Close(oneshot::Sender<Result<(), StateError>>),
}

/// Starts the ledger thread, which opens the store with `open` (blocking work, kept off the
/// async runtime), and waits until the store is open or failed to open.
pub(crate) async fn start<O>(path: PathBuf, open: O) -> Result<mpsc::Sender<Msg>, StateError>
where
    O: FnOnce() -> Result<Store, StateError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("scenewatch-ledger".into())
        .spawn(move || match open() {
            Ok(store) => {
                if ready_tx.send(Ok(())).is_ok() {
                    serve(store, rx);
                }
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| StateError::Io {
            path: path.clone(),
            op: "start the thread of",
            detail: e.to_string(),
            source: crate::cause::of(e),
        })?;
    ready_rx.await.map_err(|_| StateError::Closed { path })??;
    Ok(tx)
}

/// Timing-only steps answered but not written yet: the latest per watch.
#[derive(Default)]
pub(crate) struct Pending {
    by_watch: HashMap<WatchKey, WatchTiming>,
    /// When the oldest of them was queued.
    since: Option<tokio::time::Instant>,
}

impl Pending {
    fn put(&mut self, key: WatchKey, timing: WatchTiming) {
        if self.by_watch.is_empty() {
            self.since = Some(crate::clock::instant_now());
        }
        self.by_watch.insert(key, timing);
    }

    /// A full step of `key` is about to be written: its queued timing is older than the step's.
    fn supersede(&mut self, key: &WatchKey) {
        if self.by_watch.remove(key).is_some() && self.by_watch.is_empty() {
            self.since = None;
        }
    }

    /// Back into the queue after a failed write, unless a newer step of the watch came since.
    fn requeue(&mut self, lost: Vec<(WatchKey, WatchTiming)>) {
        for (key, timing) in lost {
            if self.by_watch.is_empty() {
                self.since = Some(crate::clock::instant_now());
            }
            self.by_watch.entry(key).or_insert(timing);
        }
    }

    fn take(&mut self) -> Vec<(WatchKey, WatchTiming)> {
        self.since = None;
        self.by_watch.drain().collect()
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.since.map(|t| t + FLUSH_EVERY)
    }

    fn due(&self) -> bool {
        self.by_watch.len() >= FLUSH_AT
            || self
                .deadline()
                .is_some_and(|d| d <= crate::clock::instant_now())
    }
}

/// What the thread does next.
enum Next {
    Msg(Msg),
    /// The queued timing is due.
    Flush,
    /// Every sender is gone.
    Gone,
}

/// The next message, or `Flush` when the queued timing falls due first. Waiting with a deadline
/// needs a timer: a current-thread runtime of this thread's own, used only while timing is
/// queued.
fn next(
    rx: &mut mpsc::Receiver<Msg>,
    timer: Option<&tokio::runtime::Runtime>,
    pending: &Pending,
) -> Next {
    let (Some(deadline), Some(rt)) = (pending.deadline(), timer) else {
        return rx.blocking_recv().map_or(Next::Gone, Next::Msg);
    };
    // The timer is made inside `block_on`: it belongs to this runtime.
    match rt.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
        Ok(Some(msg)) => Next::Msg(msg),
        Ok(None) => Next::Gone,
        Err(_) => Next::Flush,
    }
}

/// The thread's loop: take what is queued (up to [`MAX_GROUP`]), run it as one group, repeat
/// until every sender is gone or `Close` arrives.
fn serve(mut store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(MAX_GROUP);
    let mut pending = Pending::default();
    // Without a timer (it could not be built) timing is still written, after every group.
    let timer = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::warn!(error = %e, "The ledger thread has no timer; poll timings are written at once.");
            None
        }
    };
    loop {
        match next(&mut rx, timer.as_ref(), &pending) {
            Next::Msg(first) => batch.push(first),
            Next::Flush => {
                let mut group = Group::default();
                group.flush(&mut store, &mut pending);
                group.commit(&mut store, &mut pending);
                continue;
            }
            Next::Gone => break,
        }
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        let mut group = Group::default();
        for msg in batch.drain(..) {
            match msg {
                Msg::Job {
                    work,
                    write,
                    watches,
                } => {
                    if watches {
                        group.flush(&mut store, &mut pending);
                    }
                    group.run(&mut store, &mut pending, work, write);
                }
                Msg::Step(commit, reply) => group.step(&mut store, &mut pending, *commit, reply),
                Msg::Alone(work) => {
                    group.commit(&mut store, &mut pending);
                    let mut alone = Group::default();
                    alone.run(&mut store, &mut pending, work, true);
                    alone.commit(&mut store, &mut pending);
                }
                Msg::Probe(reply) => {
                    group.commit(&mut store, &mut pending);
                    let _ = reply.send(store.probe_writable());
                }
                Msg::Close(reply) => {
                    group.flush(&mut store, &mut pending);
                    group.commit(&mut store, &mut pending);
                    let failed = match &store.last_write_error {
                        Some(e) if !pending.by_watch.is_empty() => Some(e.clone()),
                        _ => None,
                    };
                    // Messages after `Close` are dropped with their reply senders, which their
                    // callers see as `Closed`.
                    let closed = store.close();
                    let _ = reply.send(match failed {
                        Some(e) => Err(e),
                        None => closed,
                    });
                    return;
                }
            }
        }
        if timer.is_none() || pending.due() {
            group.flush(&mut store, &mut pending);
        }
        group.commit(&mut store, &mut pending);
    }
    // Every `Ledger` is gone without `close`: what is queued is still written, and dropping
    // the connection checkpoints.
    let mut group = Group::default();
    group.flush(&mut store, &mut pending);
    group.commit(&mut store, &mut pending);
}

/// One group transaction and the answers waiting for its commit.
#[derive(Default)]
struct Group {
    open: bool,
    /// A writing command succeeded in it: its commit proves the database writable again.
    wrote: bool,
    waiting: Vec<Finish>,
    /// Queued timing written in it: queued again if it does not commit.
    flushed: Vec<(WatchKey, WatchTiming)>,
}

impl Group {
    fn begin(&mut self, store: &mut Store) -> Result<(), StateError> {
        if !self.open {
            store.begin()?;
            self.open = true;
        }
        Ok(())
    }

    fn run(&mut self, store: &mut Store, pending: &mut Pending, work: Box<dyn Work>, write: bool) {
        if let Err(e) = self.begin(store) {
            work.abort(e);
            return;
        }
        if let Err(e) = store.tx("write", "SAVEPOINT job") {
            work.abort(e.clone());
            self.fail(store, pending, e);
            return;
        }
        match work.run(store) {
            Outcome::Done(finish) => match store.tx("write", "RELEASE job") {
                Ok(()) => {
                    self.wrote |= write;
                    self.waiting.push(finish);
                }
                Err(e) => {
                    finish(Err(e.clone()));
                    self.fail(store, pending, e);
                }
            },
            Outcome::Failed(e) => self.undo(store, pending, e),
        }
    }

    /// A command failed inside its savepoint: roll it back alone, or, if SQLite rolled the
    /// whole transaction back by itself (disk full, I/O error), fail the group.
    fn undo(&mut self, store: &mut Store, pending: &mut Pending, e: StateError) {
        store.note_failure(&e);
        if store.conn.is_autocommit() {
            // The commands before this one in the group are lost too and must say so.
            self.open = false;
            self.fail(store, pending, e);
        } else if let Err(e) = store
            .tx("write", "ROLLBACK TO job")
            .and_then(|()| store.tx("write", "RELEASE job"))
        {
            self.fail(store, pending, e);
        }
    }

    /// A poll step: timing-only against the stored row, it is queued and answered now;
    /// otherwise it is written in this group (and supersedes the watch's queued timing).
    fn step(
        &mut self,
        store: &mut Store,
        pending: &mut Pending,
        commit: StepCommit,
        reply: oneshot::Sender<Result<(), StateError>>,
    ) {
        // A row that cannot be read is no reason to fail the step: it is written in full.
        let stored = store.stored_record(&commit.record.key).ok().flatten();
        if let Some(timing) = stored.as_ref().and_then(|s| commit.timing_only(s)) {
            pending.put(commit.record.key, timing);
            let _ = reply.send(Ok(()));
            return;
        }
        pending.supersede(&commit.record.key);
        self.run(
            store,
            pending,
            job(move |s: &mut Store| s.commit_step(&commit), reply),
            true,
        );
    }

    /// Writes the queued timing in this group, in a savepoint of its own.
    fn flush(&mut self, store: &mut Store, pending: &mut Pending) {
        if pending.by_watch.is_empty() {
            return;
        }
        let batch = pending.take();
        if let Err(e) = self.begin(store) {
            store.note_failure(&e);
            pending.requeue(batch);
            return;
        }
        let written = store
            .tx("write", "SAVEPOINT job")
            .and_then(|()| store.write_timing(&batch));
        match written.and_then(|()| store.tx("write", "RELEASE job")) {
            Ok(()) => {
                self.wrote = true;
                self.flushed.extend(batch);
            }
            Err(e) => {
                tracing::warn!(error = %e, watches = batch.len(), "Cannot write the poll timings of a batch of watches to the ledger; trying again.");
                pending.requeue(batch);
                self.undo(store, pending, e);
            }
        }
    }

    /// Rolls the group back and answers everyone waiting with `error`.
    fn fail(&mut self, store: &mut Store, pending: &mut Pending, error: StateError) {
        if self.open {
            store.rollback();
            self.open = false;
        }
        self.wrote = false;
        store.note_failure(&error);
        pending.requeue(std::mem::take(&mut self.flushed));
        for finish in self.waiting.drain(..) {
            finish(Err(error.clone()));
        }
    }

    /// Commits and answers everyone waiting: their data is durable now (`synchronous=FULL`).
    fn commit(&mut self, store: &mut Store, pending: &mut Pending) {
        if !self.open {
            return;
        }
        self.open = false;
        match store.tx("write", "COMMIT") {
            Ok(()) => {
                if self.wrote {
                    store.last_write_error = None;
                }
                self.flushed.clear();
                for finish in self.waiting.drain(..) {
                    finish(Ok(()));
                }
            }
            Err(e) => {
                self.open = true;
                self.fail(store, pending, e);
            }
        }
    }
}
