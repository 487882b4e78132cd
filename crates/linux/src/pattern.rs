//! The bytes the probe moves, and what went wrong when other bytes arrive.
//!
//! A pattern is a function of a seed and the byte's offset in the region:
//! every 8-byte word is a mix (splitmix64) of the seed and the word's
//! index, so no two words repeat, and a word that landed at the wrong
//! offset, or a stale copy from another run, does not look right. It is
//! never all zeros or all ones, the two values a failed transfer tends to
//! leave behind.

use serde::Serialize;
use std::fmt::Write as _;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fill `buf` with the pattern of `seed`, as if `buf` started at byte
/// `base` of the region.
pub fn fill(seed: u64, base: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let off = base + i as u64;
        let word = splitmix64(seed ^ (off / 8).wrapping_mul(0xd6e8_feb8_6659_fd93));
        *b = word.to_le_bytes()[(off % 8) as usize];
    }
}

/// The pattern of `seed` for a region of `len` bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(seed, 0, &mut v);
    v
}

/// What the wrong bytes look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WrongKind {
    /// Every wrong byte is 0xff: what a read of a BAR nobody answers (an
    /// unsupported request, a master abort) returns.
    AllOnes,
    /// Every wrong byte is zero: a transfer that moved nothing into fresh
    /// memory, or a device that reads as zeros.
    Zeros,
    /// Every wrong byte is what was there before the transfer: the
    /// transfer reported success but never arrived.
    Stale,
    /// Something else: bytes from another address, partly written data.
    Other,
}

impl WrongKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WrongKind::AllOnes => "all_ones",
            WrongKind::Zeros => "zeros",
            WrongKind::Stale => "stale",
            WrongKind::Other => "other",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            WrongKind::AllOnes => "all-ones (0xff), as from an unanswered request",
            WrongKind::Zeros => "zeros",
            WrongKind::Stale => "stale: the previous contents, the transfer never arrived",
            WrongKind::Other => {
                "other bytes (neither the pattern, nor zeros/all-ones, nor the previous contents)"
            }
        }
    }
}

/// Bytes that differ from the expected pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub kind: WrongKind,
    /// Offset of the first wrong byte in the region.
    pub first_offset: usize,
    /// How many bytes are wrong.
    pub bytes_wrong: usize,
    /// Of how many.
    pub len: usize,
    /// Up to 16 bytes from the first wrong one, expected and found (hex).
    pub expected: String,
    pub found: String,
}

impl Mismatch {
    pub fn describe(&self) -> String {
        format!(
            "{} of {} bytes wrong, first at offset {:#x}: {} (expected {}, found {})",
            self.bytes_wrong,
            self.len,
            self.first_offset,
            self.kind.describe(),
            self.expected,
            self.found
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Compare `found` with `expected`; `previous` is what the region held
/// before the transfer (to recognize a transfer that never arrived).
/// `None` when every byte is right.
pub fn compare(expected: &[u8], found: &[u8], previous: Option<&[u8]>) -> Option<Mismatch> {
    assert_eq!(expected.len(), found.len(), "compare equal lengths");
    let first = expected.iter().zip(found).position(|(e, f)| e != f)?;
    let (mut wrong, mut ones, mut zeros, mut stale) = (0usize, true, true, previous.is_some());
    for i in first..expected.len() {
        let f = found[i];
        if f == expected[i] {
            continue;
        }
        wrong += 1;
        ones &= f == 0xff;
        zeros &= f == 0;
        if let Some(p) = previous {
            stale &= p.get(i) == Some(&f);
        }
    }
    let kind = if ones {
        WrongKind::AllOnes
    } else if zeros {
        WrongKind::Zeros
    } else if stale {
        WrongKind::Stale
    } else {
        WrongKind::Other
    };
    let end = (first + 16).min(expected.len());
    Some(Mismatch {
        kind,
        first_offset: first,
        bytes_wrong: wrong,
        len: expected.len(),
        expected: hex(&expected[first..end]),
        found: hex(&found[first..end]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_not_trivial_and_depends_on_seed_and_offset() {
        let a = pattern(1, 1 << 16);
        assert!(a.iter().any(|&b| b != 0) && a.iter().any(|&b| b != 0xff));
        // No 8-byte word is all zeros or all ones, and words do not repeat.
        let words: std::collections::HashSet<&[u8]> = a.chunks(8).collect();
        assert_eq!(words.len(), a.len() / 8);
        assert!(!words.contains(&[0u8; 8][..]) && !words.contains(&[0xffu8; 8][..]));
        assert_ne!(pattern(2, 64), pattern(1, 64));
        // fill() at an offset continues the same sequence.
        let mut tail = vec![0u8; 100];
        fill(1, 4003, &mut tail);
        assert_eq!(&tail[..], &a[4003..4103]);
    }

    #[test]
    fn right_bytes_compare_equal() {
        let p = pattern(7, 4096);
        assert_eq!(compare(&p, &p.clone(), None), None);
    }

    #[test]
    fn wrong_bytes_are_classified() {
        let p = pattern(7, 4096);
        let before = pattern(99, 4096);

        let ones = vec![0xff; 4096];
        let m = compare(&p, &ones, Some(&before)).unwrap();
        assert_eq!(m.kind, WrongKind::AllOnes);
        assert_eq!(m.first_offset, p.iter().position(|&b| b != 0xff).unwrap());

        let mut z = p.clone();
        z[1000..1010].fill(0);
        let m = compare(&p, &z, Some(&before)).unwrap();
        assert_eq!(m.kind, WrongKind::Zeros);
        assert!(m.first_offset >= 1000 && m.bytes_wrong <= 10);
        assert_eq!(m.len, 4096);

        let m = compare(&p, &before, Some(&before)).unwrap();
        assert_eq!(m.kind, WrongKind::Stale);
        assert!(m.bytes_wrong > 4000);
        assert!(m.describe().contains("stale"), "{}", m.describe());

        // Half stale, half other: other. Without `previous`: other.
        let mut mixed = before.clone();
        mixed[2048..].copy_from_slice(&pattern(5, 2048));
        assert_eq!(
            compare(&p, &mixed, Some(&before)).unwrap().kind,
            WrongKind::Other
        );
        assert_eq!(compare(&p, &before, None).unwrap().kind, WrongKind::Other);

        // The right pattern at the wrong offset is wrong.
        let mut shifted = vec![0u8; 4096];
        fill(7, 512, &mut shifted);
        let m = compare(&p, &shifted, None).unwrap();
        assert_eq!((m.kind, m.first_offset), (WrongKind::Other, 0));
        assert_eq!(m.expected.len(), 32);
        assert_eq!(m.expected, hex(&p[..16]));
    }
}
