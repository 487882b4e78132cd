//! md-style RAID on the simulated machine: a RAID-1 rebuild (see
//! [`crate::copy::plan_rebuild`]) and a RAID-5 read with one member
//! missing.
//!
//! RAID-5 here has md's default layout, left-symmetric: in stripe `s` of
//! `n` members the parity chunk is on member `n - 1 - s mod n` and the data
//! chunks follow it, wrapping around. A read of a healthy stripe, or of a
//! stripe whose missing member held only its parity, goes straight from
//! each member into the destination — peer to peer where the kernel's
//! verdict allows. A stripe whose missing member held data is
//! reconstructed: the missing chunk is the XOR of all the others, and the
//! XOR is the CPU's work. The CPU reading a BAR is an uncached MMIO load
//! (hundreds of MB/s at best), so the surviving chunks of such a stripe
//! are read into host memory (md's stripe cache) and every requested byte
//! of that stripe goes to the destination from there.
//!
//! Upstream md does not advertise P2P support on its queue, so a kernel
//! today refuses P2P memory for I/O on an md device; this is the behaviour
//! of an md that does (as out-of-tree P2P md drivers do), with the
//! stripe-cache rule above.

use crate::block::Op;
use crate::io::{device_copy, direct_io, slice_segments, Fallback, IoError, IoOutcome};
use crate::nvme::NvmeDrive;
use peerdma_mem::{format_size, Bdf, MemKind, PhysVec};
use peerdma_sim::{pattern, SimMachine};

/// Where RAID-5 keeps each chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raid5Layout {
    pub members: usize,
    /// Bytes per chunk (md's `chunk_size`).
    pub chunk: u64,
}

/// Where a byte of the array lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub stripe: u64,
    pub member: usize,
    /// Byte offset on the member.
    pub offset: u64,
    /// Bytes left in this chunk from here.
    pub left_in_chunk: u64,
}

impl Raid5Layout {
    /// Data bytes per stripe.
    pub fn stripe_bytes(&self) -> u64 {
        self.chunk * (self.members as u64 - 1)
    }
    /// The member holding stripe `s`'s parity.
    pub fn parity_member(&self, s: u64) -> usize {
        let n = self.members as u64;
        (n - 1 - s % n) as usize
    }
    /// The member holding data chunk `k` (0-based) of stripe `s`.
    pub fn data_member(&self, s: u64, k: usize) -> usize {
        (self.parity_member(s) + 1 + k) % self.members
    }
    /// Where the array's byte `logical` is.
    pub fn locate(&self, logical: u64) -> Location {
        let sb = self.stripe_bytes();
        let stripe = logical / sb;
        let within = logical % sb;
        let k = (within / self.chunk) as usize;
        let co = within % self.chunk;
        Location {
            stripe,
            member: self.data_member(stripe, k),
            offset: stripe * self.chunk + co,
            left_in_chunk: self.chunk - co,
        }
    }
}

/// Write the array's content for the stripes covering `[offset, offset +
/// len)`: data chunks hold the pattern of `seed` at their array offsets,
/// parity chunks the XOR of their stripe's data — what an array written
/// before the member failed holds. Outside any DMA (set-up, not timed).
pub fn write_array(
    sim: &SimMachine,
    members: &[Bdf],
    layout: Raid5Layout,
    offset: u64,
    len: u64,
    seed: u64,
) -> Result<(), IoError> {
    let sb = layout.stripe_bytes();
    let c = layout.chunk as usize;
    let mut data = vec![0u8; c];
    let mut parity = vec![0u8; c];
    let err = |e: peerdma_sim::AccessError| IoError::Resource(format!("writing the array: {e}"));
    for s in offset / sb..(offset + len).div_ceil(sb) {
        parity.fill(0);
        for k in 0..layout.members - 1 {
            pattern::fill(seed, s * sb + k as u64 * layout.chunk, &mut data);
            for (p, d) in parity.iter_mut().zip(&data) {
                *p ^= d;
            }
            sim.media_write(members[layout.data_member(s, k)], s * layout.chunk, &data)
                .map_err(err)?;
        }
        sim.media_write(members[layout.parity_member(s)], s * layout.chunk, &parity)
            .map_err(err)?;
    }
    Ok(())
}

/// Read `len` bytes of the array at `offset` into `dst` (device or host
/// memory) with member `missing` gone. `drives` are the members' drivers,
/// in member order (the missing one's is not used).
pub fn raid5_degraded_read(
    sim: &SimMachine,
    drives: &mut [NvmeDrive],
    layout: Raid5Layout,
    missing: usize,
    offset: u64,
    dst: &[PhysVec],
    fallback: Fallback,
) -> Result<IoOutcome, IoError> {
    let len: u64 = dst.iter().map(|v| v.len()).sum();
    let sb = layout.stripe_bytes();
    let mut out = IoOutcome::default();
    let owner = dst.first().and_then(|v| v.kind().provider());
    let mut direct_bytes = 0u64;
    let mut rebuilt_stripes = 0u64;
    let mut via_host = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let logical = offset + pos;
        let s = logical / sb;
        let stripe_end = ((s + 1) * sb - offset).min(len);
        let degraded = layout.parity_member(s) != missing;
        if !degraded {
            // Straight from each member, chunk piece by chunk piece.
            while pos < stripe_end {
                let loc = layout.locate(offset + pos);
                let n = loc.left_in_chunk.min(stripe_end - pos);
                let piece = slice_segments(dst, pos, n);
                let o = direct_io(
                    sim,
                    &mut drives[loc.member],
                    Op::Read,
                    loc.offset,
                    &piece,
                    fallback,
                    None,
                )?;
                out.absorb(o);
                direct_bytes += n;
                pos += n;
            }
            continue;
        }
        // Reconstruct: every surviving chunk of the stripe into host memory
        // (the stripe cache), XOR by the CPU, then the requested bytes on.
        rebuilt_stripes += 1;
        let node = drives
            .iter()
            .enumerate()
            .find(|(i, _)| *i != missing)
            .map_or(0, |(_, d)| d.numa_node());
        let cache = sim
            .alloc_host(layout.chunk * layout.members as u64, node)
            .map_err(|e| IoError::Resource(format!("stripe cache: {e}")))?;
        let chunk_vec =
            |m: usize| slice_segments(&[cache.phys()], m as u64 * layout.chunk, layout.chunk);
        for (m, d) in drives.iter_mut().enumerate() {
            if m == missing {
                continue;
            }
            let o = direct_io(
                sim,
                d,
                Op::Read,
                s * layout.chunk,
                &chunk_vec(m),
                Fallback::Fail,
                None,
            )?;
            // Into the stripe cache: the first leg of a trip through host
            // memory.
            let mut o = o;
            o.mark_bounced();
            out.absorb(o);
        }
        let c = layout.chunk as usize;
        let mut acc = vec![0u8; c];
        let mut tmp = vec![0u8; c];
        for m in (0..layout.members).filter(|&m| m != missing) {
            sim.cpu_read(chunk_vec(m)[0].addr(), &mut tmp)
                .map_err(|e| IoError::Resource(format!("stripe cache: {e}")))?;
            for (a, t) in acc.iter_mut().zip(&tmp) {
                *a ^= t;
            }
        }
        sim.cpu_write(chunk_vec(missing)[0].addr(), &acc)
            .map_err(|e| IoError::Resource(format!("stripe cache: {e}")))?;
        out.cpu_xor_bytes += layout.chunk * (layout.members as u64 - 1);
        // The requested bytes of this stripe, from the cache.
        while pos < stripe_end {
            let loc = layout.locate(offset + pos);
            let n = loc.left_in_chunk.min(stripe_end - pos);
            let from = slice_segments(
                &[cache.phys()],
                loc.member as u64 * layout.chunk + loc.offset % layout.chunk,
                n,
            );
            let to = slice_segments(dst, pos, n);
            match owner {
                Some(o) => device_copy(
                    sim,
                    &mut out,
                    o,
                    node,
                    from[0],
                    &to,
                    true,
                    "the reconstructed stripe",
                )?,
                None => {
                    // Host memory destination: a CPU copy.
                    let mut b = vec![0u8; n as usize];
                    sim.cpu_read(from[0].addr(), &mut b)
                        .map_err(|e| IoError::Resource(e.to_string()))?;
                    let mut at = 0usize;
                    for t in &to {
                        sim.cpu_write(t.addr(), &b[at..at + t.len() as usize])
                            .map_err(|e| IoError::Resource(e.to_string()))?;
                        at += t.len() as usize;
                    }
                    out.cpu_copy_bytes += n;
                }
            }
            via_host += n;
            pos += n;
        }
    }
    out.bytes = len;
    out.bounce_bytes += via_host;
    let memory = match dst.first().map(|v| v.kind()) {
        Some(MemKind::P2p { provider }) => format!("the memory of {provider}"),
        _ => "host memory".into(),
    };
    out.notes.push(format!(
        "{} of {} came straight from the members into {memory}; {} in {rebuilt_stripes} stripe(s) whose data chunk was on the missing member came through host memory: the parity needs a CPU XOR, and the CPU reading uncached BAR memory is slow, so md's stripe cache in host memory takes the stripe's surviving chunks ({} read by the CPU)",
        format_size(direct_bytes),
        format_size(len),
        format_size(via_host),
        format_size(out.cpu_xor_bytes),
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_symmetric_layout_rotates_parity_and_follows_it_with_data() {
        let l = Raid5Layout {
            members: 4,
            chunk: 4096,
        };
        // md's left-symmetric: stripe 0 parity on 3, data on 0,1,2; stripe 1
        // parity on 2, data on 3,0,1.
        assert_eq!(l.parity_member(0), 3);
        assert_eq!(
            (0..3).map(|k| l.data_member(0, k)).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(l.parity_member(1), 2);
        assert_eq!(
            (0..3).map(|k| l.data_member(1, k)).collect::<Vec<_>>(),
            vec![3, 0, 1]
        );
        assert_eq!(
            l.parity_member(4),
            3,
            "the rotation repeats every n stripes"
        );
        let loc = l.locate(3 * 4096 + 10);
        assert_eq!(
            (loc.stripe, loc.member, loc.offset, loc.left_in_chunk),
            (1, 3, 4096 + 10, 4086)
        );
        // Every data byte of a stripe is on a member other than its parity.
        for x in (0..20 * 4096).step_by(777) {
            let loc = l.locate(x);
            assert_ne!(loc.member, l.parity_member(loc.stripe));
        }
    }
}
