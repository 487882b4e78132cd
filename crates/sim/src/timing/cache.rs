//! A cache of recent rate computations. Rates depend only on how many
//! flows of each class are active, so a population seen recently (a queue
//! returning to an earlier state) reuses its rates; a hit is compared in
//! full, so the cache never changes a result.

use super::classes::Class;

/// Entries of the rate cache of `Network::simulate`.
pub(super) const MEMO_ENTRIES: usize = 256;
/// States with more active classes than this are not cached (bounds the
/// cache to `MEMO_ENTRIES * MEMO_MAX_CLASSES` rows).
const MEMO_MAX_CLASSES: usize = 1024;

/// A pseudo-random 64-bit value per class (splitmix64), for hashing
/// population vectors as `sum(hash(k) * n_k)`.
pub(super) fn class_hash(k: u32) -> u64 {
    let mut z = (k as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Recent results of `Filler::fill`: for a population hash, the active
/// classes with their populations and rates. Rates are a function of the
/// populations alone, and a hit is compared in full, so using the cache
/// never changes a result. Replaced round-robin.
pub(super) struct RateCache {
    hashes: Vec<u64>,
    rows: Vec<Vec<(u32, u32, f64)>>,
    capacity: usize,
    next: usize,
}

impl RateCache {
    pub(super) fn new(capacity: usize) -> RateCache {
        RateCache {
            hashes: Vec::with_capacity(capacity),
            rows: Vec::with_capacity(capacity),
            capacity,
            next: 0,
        }
    }

    /// Sets the rates of the `active` classes from a cached result for
    /// exactly their current populations, if there is one.
    pub(super) fn restore(&self, hash: u64, active: &[u32], classes: &mut [Class]) -> bool {
        for (i, _) in self.hashes.iter().enumerate().filter(|&(_, &h)| h == hash) {
            let rows = &self.rows[i];
            let same = rows.len() == active.len()
                && rows
                    .iter()
                    .zip(active)
                    .all(|(&(k, n, _), &a)| k == a && classes[a as usize].n == n);
            if same {
                for &(k, _, r) in rows {
                    classes[k as usize].rate = r;
                }
                return true;
            }
        }
        false
    }

    /// Remembers the rates just computed for the `active` classes.
    pub(super) fn store(&mut self, hash: u64, active: &[u32], classes: &[Class]) {
        if self.capacity == 0 || active.len() > MEMO_MAX_CLASSES {
            return;
        }
        let rows = active.iter().map(|&k| {
            let cl = &classes[k as usize];
            (k, cl.n, cl.rate)
        });
        if self.hashes.len() < self.capacity {
            self.hashes.push(hash);
            self.rows.push(rows.collect());
        } else {
            self.hashes[self.next] = hash;
            let slot = &mut self.rows[self.next];
            slot.clear();
            slot.extend(rows);
            self.next = (self.next + 1) % self.capacity;
        }
    }
}
