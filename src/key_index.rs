//! Lists of watches by key: positions only, hashed by the key the list's item itself holds
//! (the engine's entries, and the configuration's watches while they are checked for
//! duplicates), and [`give_back`] for lists emptied from their end.
//!
//! A `HashMap<WatchKey, usize>` kept a second copy of every key beside its position: a
//! 32-byte bucket per slot, 4.3 MB at 100,000 watches. This table keeps the 4-byte position
//! and finds a key by comparing it with `entries[position]`'s (docs/benchmarks.md, "SQLite's
//! share and the index without its keys"). Invariant: an entry's key never changes once it is
//! in the table (a re-index adds a new entry; a reload replaces a record of the same key), and
//! entries are never removed from the `Vec`, so a position stays valid.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::domain::WatchKey;

/// Positions of items in a list of watches (the engine's entries, the validated specs), by
/// their key.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    table: HashTable<u32>,
    hasher: RandomState,
}

impl KeyIndex {
    /// Room for `more` entries beyond those in the table; `key_of` gives the key at a position.
    pub(crate) fn reserve<'a>(&mut self, more: usize, key_of: impl Fn(usize) -> &'a WatchKey) {
        let hasher = &self.hasher;
        self.table
            .reserve(more, |&i| hasher.hash_one(key_of(i as usize)));
    }

    /// The position of `key`'s entry, if it has one.
    pub(crate) fn get<'a>(
        &self,
        key: &WatchKey,
        key_of: impl Fn(usize) -> &'a WatchKey,
    ) -> Option<usize> {
        self.table
            .find(self.hasher.hash_one(key), |&i| key_of(i as usize) == key)
            .map(|&i| i as usize)
    }

    /// Records that the entry at `position` has `key`, which has no entry yet. Positions past
    /// `u32::MAX` (four billion watches) are not indexed.
    pub(crate) fn insert<'a>(
        &mut self,
        key: &WatchKey,
        position: usize,
        key_of: impl Fn(usize) -> &'a WatchKey,
    ) {
        let Ok(position) = u32::try_from(position) else {
            return;
        };
        let hasher = &self.hasher;
        self.table
            .insert_unique(hasher.hash_one(key), position, |&i| {
                hasher.hash_one(key_of(i as usize))
            });
    }
}

/// Gives a list's unused room back to the allocator once it reaches [`GIVE_BACK_ROOM`] items,
/// for lists emptied from their end: a shrink in place, which for a large block returns its
/// pages to the system.
pub(crate) fn give_back<T>(list: &mut Vec<T>) {
    if list.capacity() - list.len() >= GIVE_BACK_ROOM {
        list.shrink_to_fit();
    }
}

/// See [`give_back`]: at 100,000 watches, some 25 shrinks of each list at the start.
const GIVE_BACK_ROOM: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> WatchKey {
        WatchKey::new("ws", "p", format!("a{n}"), format!("i{n}")).expect("a valid key")
    }

    #[test]
    fn finds_every_key_at_its_position_and_no_other() {
        let keys: Vec<WatchKey> = (0..5000).map(key).collect();
        let mut index = KeyIndex::default();
        index.reserve(10, |i| &keys[i]);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(k, |i| &keys[i]), None);
            // Growing past the reserve rehashes through the keys held by the entries.
            index.insert(k, i, |i| &keys[i]);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(k, |i| &keys[i]), Some(i), "{k}");
        }
        assert_eq!(index.get(&key(5000), |i| &keys[i]), None);
    }
}
