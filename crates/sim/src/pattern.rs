//! The deterministic content of media that "holds data" without costing
//! memory ([`crate::SimMachine::fill_media_pattern`]): every 8-byte word
//! at offset `8 * w` is a hash of `(seed, w)`, so any range can be
//! generated — and checked — on its own, in any order, at memory speed.
//!
//! The hash is one multiply and a shift: not for cryptography, but every
//! word differs from its neighbours and from the same word under another
//! seed, which is what catching misplaced, stale or lost bytes needs.

#[inline]
fn word(seed: u64, w: u64) -> u64 {
    let z = (w ^ seed.rotate_left(17))
        .wrapping_add(seed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z ^ (z >> 29)
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
    let mut w = off / 8;
    let mut chunks = buf[i..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&word(seed, w).to_le_bytes());
        w = w.wrapping_add(1);
    }
    let rest = chunks.into_remainder();
    let bytes = word(seed, w).to_le_bytes();
    let n = rest.len();
    rest.copy_from_slice(&bytes[..n]);
}

/// The first byte of `buf` (as an index) that is not the pattern of
/// `seed` at `offset`, or `None` when all match.
pub fn first_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<usize> {
    let mut expect = [0u8; 8];
    // Head up to an 8-byte boundary, byte by byte.
    let head = (((8 - offset % 8) % 8) as usize).min(buf.len());
    if head > 0 {
        let mut e = [0u8; 8];
        fill(seed, offset, &mut e[..head]);
        if let Some(i) = e[..head].iter().zip(&buf[..head]).position(|(a, b)| a != b) {
            return Some(i);
        }
    }
    // Whole words, compared as words.
    let mut w = (offset + head as u64) / 8;
    let body = &buf[head..];
    let mut chunks = body.chunks_exact(8);
    for (k, c) in (&mut chunks).enumerate() {
        let want = word(seed, w).to_le_bytes();
        if c != want {
            let i = c.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Some(head + 8 * k + i);
        }
        w = w.wrapping_add(1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        expect.copy_from_slice(&word(seed, w).to_le_bytes());
        if let Some(i) = rest.iter().zip(&expect).position(|(a, b)| a != b) {
            return Some(buf.len() - rest.len() + i);
        }
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
