//! The deterministic content of media that "holds data" without costing
//! memory ([`crate::SimMachine::fill_media_pattern`]): every 8-byte word
//! at offset `8 * w` is a function of `(seed, w)`, so any range can be
//! generated — and checked — on its own, in any order, at memory speed.
//!
//! Word `w` is `z ^ (z >> 29)` with `z = seed + w * K` (K odd): unique for
//! every `w` of a seed, so a byte from the wrong offset, a stale byte or a
//! zero shows, and consecutive words are one add apart, so a range is
//! generated with no multiply in the loop. It is not for cryptography.

const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn mix(z: u64) -> u64 {
    z ^ (z >> 29)
}

#[inline]
fn word(seed: u64, w: u64) -> u64 {
    mix(seed.wrapping_add(w.wrapping_mul(K)))
}

/// The pattern of `seed` for the bytes at `offset .. offset + buf.len()`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut i = 0usize;
    let mut off = offset;
    // Head: up to the next 8-byte boundary.
    while i < buf.len() && off % 8 != 0 {
        buf[i] = word(seed, off / 8).to_le_bytes()[(off % 8) as usize];
        i += 1;
        off += 1;
    }
    let mut z = seed.wrapping_add((off / 8).wrapping_mul(K));
    let mut chunks = buf[i..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&mix(z).to_le_bytes());
        z = z.wrapping_add(K);
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&mix(z).to_le_bytes()[..n]);
}

/// The first byte of `buf` (as an index) that is not the pattern of
/// `seed` at `offset`, or `None` when all match.
pub fn first_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<usize> {
    // Blocks of expected bytes, generated and compared a block at a time
    // (both loops vectorize); the exact byte is looked for only in a block
    // that differs.
    const BLOCK: usize = 512;
    let mut expect = [0u8; BLOCK];
    let mut done = 0usize;
    while done < buf.len() {
        let n = (buf.len() - done).min(BLOCK);
        fill(seed, offset + done as u64, &mut expect[..n]);
        if expect[..n] != buf[done..done + n] {
            let i = expect[..n]
                .iter()
                .zip(&buf[done..done + n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Some(done + i);
        }
        done += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_range_is_the_same_bytes_however_it_is_cut() {
        let mut whole = vec![0u8; 1000];
        fill(7, 13, &mut whole);
        for (start, len) in [(0usize, 1usize), (3, 8), (5, 17), (100, 900), (999, 1)] {
            let mut part = vec![0u8; len];
            fill(7, 13 + start as u64, &mut part);
            assert_eq!(part, whole[start..start + len], "at {start}+{len}");
        }
        assert_eq!(first_mismatch(7, 13, &whole), None);
        let mut bad = whole.clone();
        bad[517] ^= 1;
        assert_eq!(first_mismatch(7, 13, &bad), Some(517));
        let mut other = vec![0u8; 1000];
        fill(8, 13, &mut other);
        assert_ne!(other, whole, "the seed matters");
        assert!(
            whole.iter().filter(|&&b| b == 0).count() < 20,
            "not mostly zeros"
        );
    }
}
