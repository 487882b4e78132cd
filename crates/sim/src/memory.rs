//! Sparse byte storage for the simulated machine's memories (host DRAM,
//! BARs, device media): 1 MiB chunks appear on first write and unwritten
//! bytes read as zero, so a 64 GiB BAR costs nothing until used — and
//! nothing is allocated in proportion to a region's size, whatever size a
//! topology claims.
//!
//! A store can instead read its unwritten bytes as a deterministic
//! pattern ([`crate::pattern`]): a drive whose media "holds data" without
//! that data costing memory until it is overwritten.
//!
//! Offsets are checked by the callers (the memory map, the media, the
//! fabric); [`Store::holds`] is the check they use.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// Chunk size of the sparse store: one huge page, so that a chunk costs
/// one page fault, not 512.
pub(crate) const CHUNK: u64 = 2 << 20;

/// The bytes of one chunk: an anonymous mapping the kernel may back with
/// a transparent huge page, or heap memory where mapping fails.
enum Chunk {
    Mapped(memmap2::MmapMut),
    Heap(Box<[u8]>),
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Mapped(m) => m,
            Chunk::Heap(b) => b,
        }
    }
}

impl std::ops::DerefMut for Chunk {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Chunk::Mapped(m) => m,
            Chunk::Heap(b) => b,
        }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chunk")
    }
}

type Chunks = BTreeMap<u64, Chunk>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_chunk() -> Chunk {
    match memmap2::MmapMut::map_anon(CHUNK as usize) {
        Ok(m) => {
            // Advice only: without huge pages the chunk still works.
            #[cfg(target_os = "linux")]
            let _ = m.advise(memmap2::Advice::HugePage);
            Chunk::Mapped(m)
        }
        Err(_) => Chunk::Heap(vec![0u8; CHUNK as usize].into_boxed_slice()),
    }
}

/// What unwritten bytes of a store read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unwritten {
    Zero,
    /// [`crate::pattern::fill`] with this seed, at the byte's offset.
    Pattern(u64),
}

/// `size` bytes of sparse memory, addressed by offset.
#[derive(Debug)]
pub(crate) struct Store {
    size: u64,
    /// The chunks and what unwritten bytes read as, under one lock (taken
    /// once per access).
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    chunks: Chunks,
    unwritten: Unwritten,
}

/// The chunk, offset in it, and bytes of it a span starting at `off` with
/// `left` bytes to go covers.
fn piece(off: u64, left: usize) -> (u64, usize, usize) {
    let ci = off / CHUNK;
    let co = (off % CHUNK) as usize;
    let n = (CHUNK as usize - co).min(left);
    (ci, co, n)
}

impl Store {
    pub(crate) fn new(size: u64) -> Store {
        Store {
            size,
            inner: Mutex::new(Inner {
                chunks: BTreeMap::new(),
                unwritten: Unwritten::Zero,
            }),
        }
    }

    /// Forget every written byte: the whole store now reads as `what`.
    pub(crate) fn reset(&self, what: Unwritten) {
        let mut g = lock(&self.inner);
        g.chunks.clear();
        g.unwritten = what;
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether `[off, off + len)` lies inside (without overflow).
    pub(crate) fn holds(&self, off: u64, len: u64) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// Bytes actually backed.
    #[cfg(test)]
    pub(crate) fn resident(&self) -> u64 {
        lock(&self.inner).chunks.len() as u64 * CHUNK
    }

    /// Copy `dst.len()` bytes at offset `off` into `dst` (inside: see
    /// [`Store::holds`]).
    pub(crate) fn read(&self, off: u64, dst: &mut [u8]) {
        debug_assert!(self.holds(off, dst.len() as u64));
        let g = lock(&self.inner);
        read_from(&g.chunks, g.unwritten, off, dst);
    }

    /// Copy `src` in at offset `off` (inside: see [`Store::holds`]).
    pub(crate) fn write(&self, off: u64, src: &[u8]) {
        debug_assert!(self.holds(off, src.len() as u64));
        let g = &mut *lock(&self.inner);
        write_into(&mut g.chunks, g.unwritten, off, src);
    }

    /// Write the pattern of `seed` from `pattern_offset` on into `len`
    /// bytes at `off` (inside), generated in place.
    pub(crate) fn fill_pattern(&self, off: u64, len: u64, seed: u64, pattern_offset: u64) {
        debug_assert!(self.holds(off, len));
        let g = &mut *lock(&self.inner);
        let (chunks, unwritten) = (&mut g.chunks, g.unwritten);
        let mut done = 0u64;
        while done < len {
            let left = usize::try_from(len - done).unwrap_or(usize::MAX);
            let (ci, co, n) = piece(off + done, left);
            let c = chunk_mut(chunks, unwritten, ci, co, n);
            crate::pattern::fill(seed, pattern_offset + done, &mut c[co..co + n]);
            done += n as u64;
        }
    }

    /// [`Store::write`] for many pieces `(offset, offset in src, len)`
    /// under one lock.
    pub(crate) fn write_pieces(&self, pieces: &[(u64, u64, u64)], src: &[u8]) {
        let g = &mut *lock(&self.inner);
        let unwritten = g.unwritten;
        // Consecutive pieces mostly land in the chunk the last one did.
        let mut cur: Option<(u64, &mut Chunk)> = None;
        for &(off, loff, n) in pieces {
            debug_assert!(self.holds(off, n));
            let mut done = 0usize;
            let n = n as usize;
            while done < n {
                let (ci, co, k) = piece(off + done as u64, n - done);
                let hit = matches!(&cur, Some((c, _)) if *c == ci);
                if !hit {
                    chunk_mut(&mut g.chunks, unwritten, ci, co, k);
                    cur = g.chunks.get_mut(&ci).map(|c| (ci, c));
                }
                let Some((_, c)) = cur.as_mut() else {
                    return;
                };
                let from = loff as usize + done;
                c[co..co + k].copy_from_slice(&src[from..from + k]);
                done += k;
            }
        }
    }

    /// [`Store::read`] for many pieces `(offset, offset in dst, len)`
    /// under one lock.
    pub(crate) fn read_pieces(&self, pieces: &[(u64, u64, u64)], dst: &mut [u8]) {
        let g = lock(&self.inner);
        for &(off, loff, n) in pieces {
            debug_assert!(self.holds(off, n));
            let (a, b) = (loff as usize, (loff + n) as usize);
            read_from(&g.chunks, g.unwritten, off, &mut dst[a..b]);
        }
    }

    /// Fill `len` bytes at `off` with `byte`.
    pub(crate) fn fill(&self, off: u64, len: u64, byte: u8) {
        debug_assert!(self.holds(off, len));
        let g = &mut *lock(&self.inner);
        let (chunks, unwritten) = (&mut g.chunks, g.unwritten);
        let mut done = 0u64;
        while done < len {
            let left = usize::try_from(len - done).unwrap_or(usize::MAX);
            let (ci, co, n) = piece(off + done, left);
            if byte != 0 || unwritten != Unwritten::Zero || chunks.contains_key(&ci) {
                chunk_mut(chunks, unwritten, ci, co, n)[co..co + n].fill(byte);
            }
            done += n as u64;
        }
    }
}

/// Unwritten bytes at store offset `off` into `dst`.
fn unwritten_into(unwritten: Unwritten, off: u64, dst: &mut [u8]) {
    match unwritten {
        Unwritten::Zero => dst.fill(0),
        Unwritten::Pattern(seed) => crate::pattern::fill(seed, off, dst),
    }
}

/// Chunk `ci`, created when missing; a new chunk holds what unwritten
/// bytes read as, except the `[co, co + n)` the caller is about to
/// overwrite whole.
fn chunk_mut(chunks: &mut Chunks, unwritten: Unwritten, ci: u64, co: usize, n: usize) -> &mut [u8] {
    chunks.entry(ci).or_insert_with(|| {
        let mut c = new_chunk();
        if unwritten != Unwritten::Zero {
            let base = ci * CHUNK;
            unwritten_into(unwritten, base, &mut c[..co]);
            let end = co + n;
            unwritten_into(unwritten, base + end as u64, &mut c[end..]);
        }
        c
    })
}

impl Store {
    /// The first byte of `[off, off + len)` (as an offset from `off`) that
    /// is not the pattern of `seed` at `pattern_offset` onwards, checked in
    /// place.
    pub(crate) fn pattern_mismatch(
        &self,
        off: u64,
        len: u64,
        seed: u64,
        pattern_offset: u64,
    ) -> Option<u64> {
        debug_assert!(self.holds(off, len));
        let g = lock(&self.inner);
        let mut tmp: Vec<u8> = Vec::new();
        mismatch_in(&g, off, len, seed, pattern_offset, &mut tmp)
    }

    /// [`Store::pattern_mismatch`] for many ranges `(offset, len,
    /// pattern_offset)` under one lock: the first range with a byte that
    /// differs, and that byte's offset in it.
    pub(crate) fn patterns_mismatch(
        &self,
        ranges: &[(u64, u64, u64)],
        seed: u64,
    ) -> Option<(usize, u64)> {
        let g = lock(&self.inner);
        let mut tmp: Vec<u8> = Vec::new();
        ranges.iter().enumerate().find_map(|(k, &(off, len, po))| {
            debug_assert!(self.holds(off, len));
            mismatch_in(&g, off, len, seed, po, &mut tmp).map(|i| (k, i))
        })
    }
}

/// The first byte of `[off, off + len)` that is not the pattern of `seed`
/// from `pattern_offset` on (as an offset from `off`).
fn mismatch_in(
    g: &Inner,
    off: u64,
    len: u64,
    seed: u64,
    pattern_offset: u64,
    tmp: &mut Vec<u8>,
) -> Option<u64> {
    let mut done = 0u64;
    while done < len {
        let left = usize::try_from(len - done).unwrap_or(usize::MAX);
        let (ci, co, n) = piece(off + done, left);
        let found = match g.chunks.get(&ci) {
            Some(c) => crate::pattern::first_mismatch(seed, pattern_offset + done, &c[co..co + n]),
            None => {
                tmp.resize(n, 0);
                unwritten_into(g.unwritten, off + done, &mut tmp[..n]);
                crate::pattern::first_mismatch(seed, pattern_offset + done, &tmp[..n])
            }
        };
        if let Some(i) = found {
            return Some(done + i as u64);
        }
        done += n as u64;
    }
    None
}

fn read_from(chunks: &Chunks, unwritten: Unwritten, off: u64, dst: &mut [u8]) {
    let mut done = 0usize;
    while done < dst.len() {
        let (ci, co, n) = piece(off + done as u64, dst.len() - done);
        match chunks.get(&ci) {
            Some(c) => dst[done..done + n].copy_from_slice(&c[co..co + n]),
            None => unwritten_into(unwritten, off + done as u64, &mut dst[done..done + n]),
        }
        done += n;
    }
}

fn write_into(chunks: &mut Chunks, unwritten: Unwritten, off: u64, src: &[u8]) {
    let mut done = 0usize;
    while done < src.len() {
        let (ci, co, n) = piece(off + done as u64, src.len() - done);
        chunk_mut(chunks, unwritten, ci, co, n)[co..co + n].copy_from_slice(&src[done..done + n]);
        done += n;
    }
}

/// Copy `len` bytes from `src` at `soff` to `dst` at `doff` (both inside),
/// chunk to chunk without an intermediate buffer (two locks, taken in
/// address order; one lock when both are the same store).
pub(crate) fn copy(src: &Store, soff: u64, dst: &Store, doff: u64, len: u64) {
    debug_assert!(src.holds(soff, len) && dst.holds(doff, len));
    if std::ptr::eq(src, dst) {
        let g = &mut *lock(&src.inner);
        let u = g.unwritten;
        let mut tmp = vec![0u8; len.min(CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            read_from(&g.chunks, u, soff + done, &mut tmp[..n]);
            write_into(&mut g.chunks, u, doff + done, &tmp[..n]);
            done += n as u64;
        }
        return;
    }
    let (a, b) = if (src as *const Store) < (dst as *const Store) {
        (src, dst)
    } else {
        (dst, src)
    };
    let ga = lock(&a.inner);
    let gb = lock(&b.inner);
    let (s, mut d) = if std::ptr::eq(a, src) {
        (ga, gb)
    } else {
        (gb, ga)
    };
    let (su, du) = (s.unwritten, d.unwritten);
    let (s, d) = (&s.chunks, &mut d.chunks);
    let mut done = 0u64;
    while done < len {
        let left = usize::try_from(len - done).unwrap_or(usize::MAX);
        let (sci, sco, sn) = piece(soff + done, left);
        let (dci, dco, dn) = piece(doff + done, left);
        let n = sn.min(dn);
        match s.get(&sci) {
            Some(sc) => {
                chunk_mut(d, du, dci, dco, n)[dco..dco + n].copy_from_slice(&sc[sco..sco + n]);
            }
            None if su == Unwritten::Zero && du == Unwritten::Zero => {
                if let Some(dc) = d.get_mut(&dci) {
                    dc[dco..dco + n].fill(0);
                }
            }
            None => {
                let dc = chunk_mut(d, du, dci, dco, n);
                unwritten_into(su, soff + done, &mut dc[dco..dco + n]);
            }
        }
        done += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_stores_read_back_and_copy() {
        let r = Store::new(8 * CHUNK);
        assert_eq!(r.resident(), 0);
        let data: Vec<u8> = (0..3 * CHUNK as usize / 2)
            .map(|i| (i % 253) as u8)
            .collect();
        r.write(CHUNK / 2 + 7, &data);
        assert_eq!(r.resident(), 3 * CHUNK, "chunks 0, 1 and 2 are touched");
        let mut back = vec![0u8; data.len()];
        r.read(CHUNK / 2 + 7, &mut back);
        assert_eq!(back, data);
        let mut zeros = vec![1u8; 10];
        r.read(7 * CHUNK, &mut zeros);
        assert_eq!(zeros, vec![0; 10], "unwritten reads as zero");
        let s = Store::new(4 * CHUNK);
        copy(&r, CHUNK / 2 + 7, &s, 3, data.len() as u64);
        let mut out = vec![0u8; data.len()];
        s.read(3, &mut out);
        assert_eq!(out, data);
        // Copying unwritten memory over written memory writes zeros.
        copy(&r, 6 * CHUNK, &s, 3, 100);
        let mut z = vec![9u8; 100];
        s.read(3, &mut z);
        assert_eq!(z, vec![0; 100]);
        // Within one store, overlapping forward copy.
        copy(&s, 3, &s, 5, 1000);
        let mut w = vec![0u8; 2];
        s.read(5 + 100, &mut w);
        assert_eq!(w, out[100..102]);
        assert!(r.holds(8 * CHUNK - 1, 1));
        assert!(!r.holds(8 * CHUNK - 1, 2));
        assert!(!r.holds(u64::MAX, 2), "overflow is not inside");
        r.fill(0, 16, 0xab);
        let mut f = [0u8; 16];
        r.read(0, &mut f);
        assert_eq!(f, [0xab; 16]);
    }

    #[test]
    fn a_huge_store_costs_nothing_until_written() {
        let r = Store::new(u64::MAX);
        r.write(u64::MAX - 10, &[7; 10]);
        let mut b = [0u8; 10];
        r.read(u64::MAX - 10, &mut b);
        assert_eq!(b, [7; 10]);
        assert_eq!(r.resident(), CHUNK);
    }
}
