//! The ledger thread: owns the connection, runs commands in group transactions, answers each
//! caller only after the `COMMIT` that made its data durable.
//!
//! Why one thread and not `spawn_blocking` per call: SQLite allows one writer at a time anyway,
//! and a single owner lets commands that queue up meanwhile share one transaction and one fsync
//! (group commit), which is what makes 100,000 watches cheap. Each command runs inside its own
//! savepoint, so a failing command is rolled back alone and the others of the group still commit.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use super::StateError;
use super::store::Store;

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
    /// Run a command in the current group; `true` if it writes.
    Job(Box<dyn Work>, bool),
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

/// The thread's loop: take what is queued (up to [`MAX_GROUP`]), run it as one group, repeat
/// until every sender is gone or `Close` arrives.
fn serve(mut store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        let mut group = Group::default();
        for msg in batch.drain(..) {
            match msg {
                Msg::Job(work, write) => group.run(&mut store, work, write),
                Msg::Probe(reply) => {
                    group.commit(&mut store);
                    let _ = reply.send(store.probe_writable());
                }
                Msg::Close(reply) => {
                    group.commit(&mut store);
                    // Messages after `Close` are dropped with their reply senders, which their
                    // callers see as `Closed`.
                    let _ = reply.send(store.close());
                    return;
                }
            }
        }
        group.commit(&mut store);
    }
    // Every `Ledger` is gone without `close`: dropping the connection still checkpoints.
}

/// One group transaction and the answers waiting for its commit.
#[derive(Default)]
struct Group {
    open: bool,
    /// A writing command succeeded in it: its commit proves the database writable again.
    wrote: bool,
    waiting: Vec<Finish>,
}

impl Group {
    fn run(&mut self, store: &mut Store, work: Box<dyn Work>, write: bool) {
        if !self.open {
            if let Err(e) = store.begin() {
                work.abort(e);
                return;
            }
            self.open = true;
        }
        if let Err(e) = store.exec("write", "SAVEPOINT job") {
            work.abort(e.clone());
            self.fail(store, e);
            return;
        }
        match work.run(store) {
            Outcome::Done(finish) => match store.exec("write", "RELEASE job") {
                Ok(()) => {
                    self.wrote |= write;
                    self.waiting.push(finish);
                }
                Err(e) => {
                    finish(Err(e.clone()));
                    self.fail(store, e);
                }
            },
            Outcome::Failed(e) => {
                store.note_failure(&e);
                if store.conn.is_autocommit() {
                    // SQLite rolled the whole transaction back by itself (disk full, I/O error):
                    // the commands before this one in the group are lost too and must say so.
                    self.open = false;
                    self.fail(store, e);
                } else if let Err(e) = store.exec("write", "ROLLBACK TO job; RELEASE job") {
                    self.fail(store, e);
                }
            }
        }
    }

    /// Rolls the group back and answers everyone waiting with `error`.
    fn fail(&mut self, store: &mut Store, error: StateError) {
        if self.open {
            store.rollback();
            self.open = false;
        }
        self.wrote = false;
        store.note_failure(&error);
        for finish in self.waiting.drain(..) {
            finish(Err(error.clone()));
        }
    }

    /// Commits and answers everyone waiting: their data is durable now (`synchronous=FULL`).
    fn commit(&mut self, store: &mut Store) {
        if !self.open {
            return;
        }
        self.open = false;
        match store.exec("write", "COMMIT") {
            Ok(()) => {
                if self.wrote {
                    store.last_write_error = None;
                }
                for finish in self.waiting.drain(..) {
                    finish(Ok(()));
                }
            }
            Err(e) => {
                self.open = true;
                self.fail(store, e);
            }
        }
    }
}
