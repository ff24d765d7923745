//! The domain's identities, in one place: the validated [`WatchKey`] of one index, the
//! [`VersionId`] of one result version and the recipe that makes it, shared by the engine, the
//! ledger, the sinks and the events. Nothing here does IO.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Longest id, in bytes (DESIGN.md "A watch").
pub const MAX_ID_BYTES: usize = 128;

/// Checks one id of a watch: non-empty, at most 128 bytes, ASCII letters, digits, `-`, `_`, `.`,
/// no `..` and not only dots, so it is safe both in a URL path and as a file name. The error says
/// what is wrong, without repeating the value (the caller decides whether to show it).
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "is {} bytes long; at most {MAX_ID_BYTES}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "contains {c:?}; only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    if id.contains("..") || id.chars().all(|c| c == '.') {
        return Err("must not contain \"..\" or be only dots".into());
    }
    Ok(())
}

/// The four ids that identify one watched index. Every part passed [`validate_id`], so a key is
/// safe to put in a URL, a file path or an object key as is. Built by [`WatchKey::new`] or
/// parsed from `workspace/project_id/asset_id/index_id`.
///
/// A key is held in several places per watch (its configuration, its record, the engine's index
/// of watches, events), so it is one shared allocation, `workspace/project_id/asset_id/index_id`
/// (the parts cannot hold a `/`), and a clone costs a reference count: at 100,000 watches four
/// `String`s per copy were a quarter of the daemon's memory. Ordered part by part, as a tuple of
/// the four parts is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WatchKey {
    /// The parts joined by `/`.
    text: Arc<str>,
    /// Where the second, third and fourth parts start in `text`.
    starts: [u16; 3],
}

/// A watch key could not be built: which part is wrong and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part} {value:?} {reason}")]
pub struct KeyError {
    /// `workspace`, `project_id`, `asset_id` or `index_id`; `key` when the shape is wrong.
    pub part: &'static str,
    /// The offending value (ids are not secret, and the user needs to see which one is wrong).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl WatchKey {
    /// Parts names, in key order.
    pub const PARTS: [&'static str; 4] = ["workspace", "project_id", "asset_id", "index_id"];

    /// A key of four valid ids.
    pub fn new(
        workspace: impl AsRef<str>,
        project_id: impl AsRef<str>,
        asset_id: impl AsRef<str>,
        index_id: impl AsRef<str>,
    ) -> Result<WatchKey, KeyError> {
        let parts = [
            workspace.as_ref(),
            project_id.as_ref(),
            asset_id.as_ref(),
            index_id.as_ref(),
        ];
        for (name, value) in Self::PARTS.iter().zip(parts) {
            validate_id(value).map_err(|reason| KeyError {
                part: name,
                value: value.to_string(),
                reason,
            })?;
        }
        Ok(Self::joined(parts))
    }

    /// The key of four valid parts.
    fn joined(parts: [&str; 4]) -> WatchKey {
        let mut text = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        let mut starts = [0u16; 3];
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                text.push('/');
                // Each part is at most MAX_ID_BYTES long, so every start fits.
                starts[i - 1] = u16::try_from(text.len()).unwrap_or(u16::MAX);
            }
            text.push_str(part);
        }
        WatchKey {
            text: Arc::from(text),
            starts,
        }
    }

    /// Part `i` (0..4) of the key.
    fn part(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            usize::from(self.starts[i - 1])
        };
        let end = if i == 3 {
            self.text.len()
        } else {
            usize::from(self.starts[i]) - 1
        };
        &self.text[start..end]
    }

    /// The workspace name.
    pub fn workspace(&self) -> &str {
        self.part(0)
    }

    /// The project id.
    pub fn project_id(&self) -> &str {
        self.part(1)
    }

    /// The asset id.
    pub fn asset_id(&self) -> &str {
        self.part(2)
    }

    /// The index id.
    pub fn index_id(&self) -> &str {
        self.part(3)
    }

    /// The same asset's other index (a re-index made `index_id` the latest). `index_id` must be
    /// a valid id.
    pub fn with_index(&self, index_id: &str) -> Result<WatchKey, KeyError> {
        WatchKey::new(
            self.workspace(),
            self.project_id(),
            self.asset_id(),
            index_id,
        )
    }

    /// The four parts, in order.
    pub fn parts(&self) -> [&str; 4] {
        [self.part(0), self.part(1), self.part(2), self.part(3)]
    }

    /// `workspace/project_id/asset_id/index_id`, as `Display` writes it, without a copy.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The CloudEvents `source` of the watch and the envelope's `source`.
    pub fn source(&self) -> String {
        let [w, p, a, i] = self.parts();
        format!("/workspaces/{w}/projects/{p}/assets/{a}/indexes/{i}")
    }
}

impl fmt::Debug for WatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchKey")
            .field("workspace", &self.workspace())
            .field("project_id", &self.project_id())
            .field("asset_id", &self.asset_id())
            .field("index_id", &self.index_id())
            .finish()
    }
}

impl PartialOrd for WatchKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for WatchKey {
    /// Part by part (`a/x` before `a-b/x`, as for the tuple of parts; the joined text would put
    /// `-` before `/`).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl fmt::Display for WatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for WatchKey {
    type Err = KeyError;

    /// `workspace/project_id/asset_id/index_id`, as [`WatchKey`]'s `Display` writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let [w, p, a, i] = parts.as_slice() else {
            return Err(KeyError {
                part: "key",
                value: s.to_string(),
                reason: "is not workspace/project_id/asset_id/index_id".into(),
            });
        };
        WatchKey::new(*w, *p, *a, *i)
    }
}

/// The id of one result version: the first 128 bits, in hex, of SHA-256 over the watch key (and
/// so its index) and `lastAnalyzedAt`, each followed by a NUL byte. A version belongs to one
/// index: `(indexId, lastAnalyzedAt)` within the asset. Stable across runs and releases, so
/// consumers can dedupe on it.
///
/// Shared like [`WatchKey`]: a watch's record, its delivered mark and its stale mark often name
/// the same version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(Arc<str>);

impl serde::Serialize for VersionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl VersionId {
    /// The version `last_analyzed_at` of the index `key` names.
    pub fn of(key: &WatchKey, last_analyzed_at: &str) -> VersionId {
        let mut h = Sha256::new();
        for part in key.parts().into_iter().chain([last_analyzed_at]) {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let digest = h.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        VersionId(Arc::from(hex))
    }

    /// An id read back from the ledger (made by [`VersionId::of`] when it was stored).
    pub fn from_stored(id: String) -> VersionId {
        VersionId(Arc::from(id))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for VersionId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for VersionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for VersionId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<VersionId> for String {
    fn eq(&self, other: &VersionId) -> bool {
        **self == *other.0
    }
}

impl From<VersionId> for String {
    fn from(v: VersionId) -> String {
        v.0.to_string()
    }
}

impl PartialEq<&str> for VersionId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_and_round_trip() {
        let k = WatchKey::new("ws", "1", "2", "3").unwrap();
        assert_eq!(k.to_string(), "ws/1/2/3");
        assert_eq!("ws/1/2/3".parse::<WatchKey>().unwrap(), k);
        assert_eq!(k.source(), "/workspaces/ws/projects/1/assets/2/indexes/3");
        for bad in [
            "ws/1/2",
            "ws/1/2/3/4",
            "ws//2/3",
            "ws/1/../3",
            "ws/1/a b/3",
            "ws/./2/3",
            "",
        ] {
            assert!(bad.parse::<WatchKey>().is_err(), "{bad:?}");
        }
        let e = WatchKey::new("ws", "1", "a/b", "3").unwrap_err();
        assert_eq!(e.part, "asset_id");
        assert!(e.to_string().contains("\"a/b\""), "{e}");
        assert!(WatchKey::new("w", "p", "a", "x".repeat(129)).is_err());
        assert!(WatchKey::new("w", "p", "a", "x".repeat(128)).is_ok());
    }

    /// The recipe is a contract with consumers (they dedupe on it): it must never change.
    /// One shared text per key: the parts read back as given (up to the longest ids), keys
    /// sort part by part as the four ids would, and a clone is the same text, not a copy.
    #[test]
    fn a_key_is_one_shared_text_read_back_part_by_part() {
        let long = "x".repeat(MAX_ID_BYTES);
        let k = WatchKey::new(&long, "p.1", &long, "i_9").unwrap();
        assert_eq!(k.parts(), [long.as_str(), "p.1", long.as_str(), "i_9"]);
        assert_eq!(k.as_str(), format!("{long}/p.1/{long}/i_9"));
        assert_eq!(k.with_index("j").unwrap().parts()[3], "j");
        let copy = k.clone();
        assert!(std::ptr::eq(copy.as_str(), k.as_str()));
        assert_eq!(
            format!("{:?}", WatchKey::new("w", "1", "2", "3").unwrap()),
            r#"WatchKey { workspace: "w", project_id: "1", asset_id: "2", index_id: "3" }"#
        );
        // '-' sorts before '/', so comparing the joined texts would put "a-b" first.
        let a = WatchKey::new("a", "1", "2", "3").unwrap();
        let ab = WatchKey::new("a-b", "1", "2", "3").unwrap();
        assert!(a < ab);
        assert!(a.as_str() > ab.as_str());
        let mut keys = vec![ab.clone(), a.clone()];
        keys.sort();
        assert_eq!(keys, [a, ab]);
    }

    #[test]
    fn version_ids_are_stable() {
        let k = WatchKey::new("my-workspace", "1234", "5678", "1001").unwrap();
        let v = VersionId::of(&k, "2026-04-17T10:30:00");
        assert_eq!(v.len(), 32);
        assert_eq!(v, VersionId::of(&k, "2026-04-17T10:30:00"));
        assert_ne!(
            v,
            VersionId::of(&k.with_index("1002").unwrap(), "2026-04-17T10:30:00")
        );
        assert_ne!(v, VersionId::of(&k, "2026-04-17T10:30:01"));
        // Parts are separated, so shifting a character between them changes the id.
        let a = VersionId::of(&WatchKey::new("ab", "c", "d", "e").unwrap(), "t");
        let b = VersionId::of(&WatchKey::new("a", "bc", "d", "e").unwrap(), "t");
        assert_ne!(a, b);
    }
}
