//! The underlying error kept beneath our own errors (their `#[source]`): a sink's or the
//! ledger's message says what failed in words an operator can act on, and the cause (an
//! `io::Error`, a SQLite, PostgreSQL, HTTP or object-store error) stays attached for code that
//! needs its kind (disk full, a SQLSTATE) and for `{:#}` chains. Shared behind an `Arc` so the
//! errors that carry one stay `Clone`.

use std::error::Error;
use std::sync::Arc;

/// An underlying error, shareable.
pub type Cause = Arc<dyn Error + Send + Sync + 'static>;

/// `Some(cause)` of any error.
pub fn of(e: impl Error + Send + Sync + 'static) -> Option<Cause> {
    Some(Arc::new(e))
}

/// A failure below a sink or the ledger: what failed, in words (naming the path), and the error
/// that caused it. Code that writes files returns this instead of a bare `String`, so the cause
/// reaches the sink's error as its source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Fault {
    /// What failed, ending with the cause's text.
    pub message: String,
    /// The cause.
    #[source]
    pub source: Option<Cause>,
}

impl From<String> for Fault {
    fn from(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }
}

/// `result.fault(|| format!("cannot write {path}"))`: the error becomes a [`Fault`] whose
/// message is the text given, `: ` and the cause's text, with the cause kept as its source.
pub trait Context<T> {
    /// See the trait.
    fn fault(self, what: impl FnOnce() -> String) -> Result<T, Fault>;
}

impl<T, E: Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn fault(self, what: impl FnOnce() -> String) -> Result<T, Fault> {
        self.map_err(|e| Fault {
            message: format!("{}: {e}", what()),
            source: of(e),
        })
    }
}

/// The first error of type `T` in `e`'s chain of causes (looking inside a [`Cause`], which
/// shows itself in the chain as its `Arc`).
pub fn find<'a, T: Error + 'static>(e: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(c) = next {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(t) = c
            .downcast_ref::<Cause>()
            .and_then(|a| a.downcast_ref::<T>())
        {
            return Some(t);
        }
        next = c.source();
    }
    None
}

/// The error and its causes, `: `-separated, skipping a cause whose text the message before it
/// already holds (our messages quote their cause, so `{:#}` alone would say it twice).
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write /s/x.json: {detail}")]
    struct Outer {
        detail: String,
        #[source]
        source: Option<Cause>,
    }

    #[test]
    fn a_quoted_cause_is_not_repeated_and_a_new_one_is_added() {
        let io = std::io::Error::other("No space left on device");
        let quoted = Outer {
            detail: io.to_string(),
            source: of(io),
        };
        assert_eq!(
            chain(&quoted),
            "cannot write /s/x.json: No space left on device"
        );
        let other = Outer {
            detail: "disk trouble".into(),
            source: of(std::io::Error::other("No space left on device")),
        };
        assert_eq!(
            chain(&other),
            "cannot write /s/x.json: disk trouble: No space left on device"
        );
        // The cause's kind is reachable for code that acts on it.
        let kind = find::<std::io::Error>(&quoted).map(std::io::Error::kind);
        assert_eq!(kind, Some(std::io::ErrorKind::Other));
    }
}
