//! Giving the start's freed memory back to the system.
//!
//! Making a million entries leaves behind what the start freed among them: the configuration's
//! strings, the ledger's pages of records, the specs' list. glibc keeps those free chunks
//! (between live ones, so the top of the heap cannot shrink) and the process's resident size
//! with them: 28 MiB at a million watches (docs/benchmarks.md, "Memory at a million watches").
//! `malloc_trim(0)` hands every whole free page in every arena back to the kernel; nothing else
//! in glibc does (`MALLOC_TRIM_THRESHOLD_` only trims the top of the heap). [`give_back`] is
//! called where a large amount was just freed: once the configuration is read (the daemon's
//! start and each reload; a large file's raw watches) and once the engine has made its entries
//! (the start, and a reload that added watches).
//!
//! The only `unsafe` in the project (the workspace denies it elsewhere): `malloc_trim` takes a
//! number and walks glibc's own arenas under their locks, so any thread may call it at any time.
//! With another C library (musl) or system it is not there and [`give_back`] does nothing.

use std::time::Duration;

/// Hands free memory back to the system where the C library can (glibc); returns how long it
/// took, or `None` where there is nothing to call.
pub fn give_back() -> Option<Duration> {
    let started = crate::clock::instant_now();
    trim().then(|| started.elapsed())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: `malloc_trim` has no preconditions: it takes a byte count to leave untrimmed at
    // the top of the heap and locks each arena as it walks it.
    unsafe { libc::malloc_trim(0) };
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giving_back_leaves_the_heap_usable() {
        // A heap with free chunks among live ones: trimming must not touch the live ones.
        let mut kept = Vec::new();
        for i in 0..10_000u32 {
            let freed = vec![i as u8; 512];
            kept.push(vec![i as u8; 64]);
            drop(freed);
        }
        let took = give_back();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(took.is_some());
        } else {
            assert_eq!(took, None);
        }
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, v)| v.iter().all(|&b| b == i as u8))
        );
    }
}
