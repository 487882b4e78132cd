//! The simulated machine's memories: host DRAM per NUMA node and the BAR
//! memory of every endpoint, backed by real bytes. Storage is sparse: 1 MiB
//! chunks appear on first write, unwritten bytes read as zero, so a 64 GiB
//! BAR costs nothing until used.

use std::sync::{Mutex, MutexGuard};

/// Chunk size of the sparse store.
pub const CHUNK: u64 = 1 << 20;

/// One contiguous region of simulated memory.
#[derive(Debug)]
pub struct Region {
    pub base: u64,
    pub size: u64,
    chunks: Mutex<Vec<Option<Box<[u8]>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Region {
    pub fn new(base: u64, size: u64) -> Region {
        let n = size.div_ceil(CHUNK) as usize;
        Region {
            base,
            size,
            chunks: Mutex::new((0..n).map(|_| None).collect()),
        }
    }

    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && len <= self.size && addr - self.base <= self.size - len
    }

    /// Bytes actually backed (for tests and reports).
    pub fn resident(&self) -> u64 {
        lock(&self.chunks).iter().filter(|c| c.is_some()).count() as u64 * CHUNK
    }

    /// Copy `dst.len()` bytes at region offset `off` into `dst`.
    pub fn read(&self, off: u64, dst: &mut [u8]) {
        let chunks = lock(&self.chunks);
        read_from(&chunks, off, dst);
    }

    /// Copy `src` into the region at offset `off`.
    pub fn write(&self, off: u64, src: &[u8]) {
        let mut chunks = lock(&self.chunks);
        write_into(&mut chunks, off, src);
    }

    /// Fill `len` bytes at `off` with `byte`.
    pub fn fill(&self, off: u64, len: u64, byte: u8) {
        let mut chunks = lock(&self.chunks);
        let mut done = 0;
        while done < len {
            let o = off + done;
            let ci = (o / CHUNK) as usize;
            let co = (o % CHUNK) as usize;
            let n = ((CHUNK as usize - co) as u64).min(len - done) as usize;
            if byte != 0 || chunks[ci].is_some() {
                let c =
                    chunks[ci].get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
                c[co..co + n].fill(byte);
            }
            done += n as u64;
        }
    }
}

fn read_from(chunks: &[Option<Box<[u8]>>], off: u64, dst: &mut [u8]) {
    let mut done = 0usize;
    while done < dst.len() {
        let o = off + done as u64;
        let ci = (o / CHUNK) as usize;
        let co = (o % CHUNK) as usize;
        let n = (CHUNK as usize - co).min(dst.len() - done);
        match &chunks[ci] {
            Some(c) => dst[done..done + n].copy_from_slice(&c[co..co + n]),
            None => dst[done..done + n].fill(0),
        }
        done += n;
    }
}

fn write_into(chunks: &mut [Option<Box<[u8]>>], off: u64, src: &[u8]) {
    let mut done = 0usize;
    while done < src.len() {
        let o = off + done as u64;
        let ci = (o / CHUNK) as usize;
        let co = (o % CHUNK) as usize;
        let n = (CHUNK as usize - co).min(src.len() - done);
        let c = chunks[ci].get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
        c[co..co + n].copy_from_slice(&src[done..done + n]);
        done += n;
    }
}

/// Copy `len` bytes from `src` at `soff` to `dst` at `doff`, chunk to chunk
/// without an intermediate buffer (two locks, taken in address order; one
/// lock when both are the same region).
pub fn copy(src: &Region, soff: u64, dst: &Region, doff: u64, len: u64) {
    if std::ptr::eq(src, dst) {
        let mut chunks = lock(&src.chunks);
        let mut tmp = vec![0u8; len.min(CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            read_from(&chunks, soff + done, &mut tmp[..n]);
            write_into(&mut chunks, doff + done, &tmp[..n]);
            done += n as u64;
        }
        return;
    }
    let (a, b) = if (src as *const Region) < (dst as *const Region) {
        (src, dst)
    } else {
        (dst, src)
    };
    let ga = lock(&a.chunks);
    let gb = lock(&b.chunks);
    let (s, mut d) = if std::ptr::eq(a, src) {
        (ga, gb)
    } else {
        (gb, ga)
    };
    let mut done = 0u64;
    while done < len {
        let so = soff + done;
        let dof = doff + done;
        let sci = (so / CHUNK) as usize;
        let sco = (so % CHUNK) as usize;
        let dci = (dof / CHUNK) as usize;
        let dco = (dof % CHUNK) as usize;
        let n = (CHUNK as usize - sco)
            .min(CHUNK as usize - dco)
            .min((len - done) as usize);
        match &s[sci] {
            Some(sc) => {
                let dc = d[dci].get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
                dc[dco..dco + n].copy_from_slice(&sc[sco..sco + n]);
            }
            None => {
                if let Some(dc) = &mut d[dci] {
                    dc[dco..dco + n].fill(0);
                }
            }
        }
        done += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_regions_read_back_and_copy() {
        let r = Region::new(0x1000_0000, 8 * CHUNK);
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
        let s = Region::new(0, 4 * CHUNK);
        copy(&r, CHUNK / 2 + 7, &s, 3, data.len() as u64);
        let mut out = vec![0u8; data.len()];
        s.read(3, &mut out);
        assert_eq!(out, data);
        // Copying unwritten memory over written memory writes zeros.
        copy(&r, 6 * CHUNK, &s, 3, 100);
        let mut z = vec![9u8; 100];
        s.read(3, &mut z);
        assert_eq!(z, vec![0; 100]);
        // Within one region, overlapping forward copy.
        copy(&s, 3, &s, 5, 1000);
        let mut w = vec![0u8; 2];
        s.read(5 + 100, &mut w);
        assert_eq!(w, out[100..102]);
        assert!(r.contains(0x1000_0000 + 8 * CHUNK - 1, 1));
        assert!(!r.contains(0x1000_0000 + 8 * CHUNK - 1, 2));
        r.fill(0, 16, 0xab);
        let mut f = [0u8; 16];
        r.read(0, &mut f);
        assert_eq!(f, [0xab; 16]);
    }
}
