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

/// The pattern of `seed` for the bytes at `offset .. offset + buf.len()`
/// (compiled for AVX2 too, picked at run time, like [`first_mismatch`]'s
/// word loop).
#[multiversion::multiversion(targets("x86_64+avx2"))]
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
    // Head: up to the next 8-byte boundary of the pattern.
    let mut i = 0usize;
    let mut off = offset;
    while i < buf.len() && off % 8 != 0 {
        if buf[i] != word(seed, off / 8).to_le_bytes()[(off % 8) as usize] {
            return Some(i);
        }
        i += 1;
        off += 1;
    }
    // Whole words, a block at a time.
    let (at, z) = words_mismatch(&buf[i..], seed.wrapping_add((off / 8).wrapping_mul(K)));
    if let Some(at) = at {
        return Some(i + at);
    }
    i += (buf.len() - i) / 8 * 8;
    // Tail: less than a word.
    let e = mix(z).to_le_bytes();
    buf[i..]
        .iter()
        .zip(e.iter())
        .position(|(a, b)| a != b)
        .map(|k| i + k)
}

/// The whole words of `buf` against the pattern whose first word is
/// `mix(z)`: the index of the first byte that differs, and the `z` of the
/// word after the last whole one. Every word's difference is OR-ed over a
/// block (a loop that vectorizes, no early exit); the exact byte is
/// looked for only in a block that differs. Compiled for AVX2 too, picked
/// at run time where the CPU has it (the check runs at memory speed with
/// 256-bit lanes; with SSE2 alone it is the slowest part of a devmem
/// receive).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn words_mismatch(buf: &[u8], mut z: u64) -> (Option<usize>, u64) {
    const BLOCK: usize = 512;
    let words = buf.len() / 8 * 8;
    let mut i = 0usize;
    while i < words {
        let n = (words - i).min(BLOCK);
        let block = &buf[i..i + n];
        let mut acc = 0u64;
        let mut zz = z;
        for c in block.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            acc |= u64::from_le_bytes(w) ^ mix(zz);
            zz = zz.wrapping_add(K);
        }
        if acc != 0 {
            let mut zz = z;
            for (j, c) in block.chunks_exact(8).enumerate() {
                let e = mix(zz).to_le_bytes();
                if let Some(k) = c.iter().zip(e.iter()).position(|(a, b)| a != b) {
                    return (Some(i + j * 8 + k), zz);
                }
                zz = zz.wrapping_add(K);
            }
        }
        z = zz;
        i += n;
    }
    (None, z)
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

    #[test]
    fn every_byte_is_checked_whatever_the_alignment() {
        for offset in 0..16u64 {
            for len in [0usize, 1, 7, 8, 9, 63, 64, 511, 512, 513, 1460, 2000] {
                let mut v = vec![0u8; len];
                fill(3, offset, &mut v);
                assert_eq!(first_mismatch(3, offset, &v), None, "{offset}+{len}");
                for pos in [0, len / 3, len / 2, len.saturating_sub(1)] {
                    if pos >= len {
                        continue;
                    }
                    let mut bad = v.clone();
                    bad[pos] ^= 0x80;
                    assert_eq!(
                        first_mismatch(3, offset, &bad),
                        Some(pos),
                        "{offset}+{len} at {pos}"
                    );
                }
                if len > 8 {
                    // The first of two differences is the one reported.
                    let mut bad = v.clone();
                    bad[len - 1] ^= 1;
                    bad[len / 2] ^= 1;
                    assert_eq!(first_mismatch(3, offset, &bad), Some(len / 2));
                }
            }
        }
    }
}
