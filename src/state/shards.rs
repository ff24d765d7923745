//! Shards: how the watches of a shared ledger are split between replicas. A watch's shard is a
//! hash of its key, fixed for the life of a ledger (the PostgreSQL ledger stores it); a replica
//! polls and delivers only the watches of the shards it holds a lease on (see
//! `state/postgres/leases.rs`). Pure code, in every build: the engine filters by it without
//! knowing which ledger it runs on.

use sha2::{Digest, Sha256};

use crate::domain::WatchKey;

/// Watch keys hash into this many shards, fixed for the life of a ledger: the unit replicas
/// hold leases on.
pub const SHARDS: u32 = 256;

/// The shard of a watch: the first four bytes of SHA-256 of `w/p/a/i`, modulo [`SHARDS`]. Stable
/// across processes, builds and platforms (it is stored).
pub fn shard_of(key: &WatchKey) -> i32 {
    let digest = Sha256::digest(key.to_string().as_bytes());
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (n % SHARDS) as i32
}

/// A set of shards (a 256-bit set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSet([u64; 4]);

impl ShardSet {
    /// Every shard.
    pub const ALL: ShardSet = ShardSet([u64::MAX; 4]);

    /// The set of `shards` (numbers outside `0..SHARDS` are ignored).
    pub fn of(shards: &[i32]) -> ShardSet {
        let mut s = ShardSet::default();
        for &n in shards {
            if (0..SHARDS as i32).contains(&n) {
                s.0[n as usize / 64] |= 1 << (n as usize % 64);
            }
        }
        s
    }

    /// Whether `shard` is in the set.
    pub fn contains(&self, shard: i32) -> bool {
        (0..SHARDS as i32).contains(&shard)
            && self.0[shard as usize / 64] & (1 << (shard as usize % 64)) != 0
    }

    /// Whether the watch `key` is in one of the set's shards.
    pub fn holds(&self, key: &WatchKey) -> bool {
        *self == ShardSet::ALL || self.contains(shard_of(key))
    }

    /// How many shards the set holds.
    pub fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The set's share of all shards, in `0.0..=1.0`.
    pub fn share(&self) -> f64 {
        f64::from(self.len()) / f64::from(SHARDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_exactly_its_shards() {
        let s = ShardSet::of(&[0, 63, 64, 255, 256, -1]);
        assert_eq!(s.len(), 4, "out-of-range numbers are ignored");
        for n in [0, 63, 64, 255] {
            assert!(s.contains(n), "{n}");
        }
        for n in [1, 62, 65, 254, 256, -1] {
            assert!(!s.contains(n), "{n}");
        }
        assert_eq!(ShardSet::ALL.len(), SHARDS);
        assert_eq!(ShardSet::ALL.share(), 1.0);
        assert!(ShardSet::default().is_empty());
        assert_eq!(ShardSet::of(&(0..64).collect::<Vec<_>>()).share(), 0.25);
    }

    #[test]
    fn a_watch_is_held_by_the_set_of_its_shard_only() {
        let keys: Vec<WatchKey> = (0..200)
            .map(|n| WatchKey::new("ws", "p", "a", format!("i{n}")).unwrap())
            .collect();
        let half = ShardSet::of(&(0..128).collect::<Vec<_>>());
        let held = keys.iter().filter(|k| half.holds(k)).count();
        assert!((60..140).contains(&held), "about half of 200 keys: {held}");
        for k in &keys {
            assert_eq!(half.holds(k), shard_of(k) < 128);
            assert!(ShardSet::ALL.holds(k));
            assert!(!ShardSet::default().holds(k));
        }
    }
}
