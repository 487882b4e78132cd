//! NVMe on the wire: the 64-byte submission queue entry, the 16-byte
//! completion queue entry, and the two ways a command points at its data —
//! PRP entries (with PRP lists) and SGL descriptors — laid out as the NVMe
//! base specification lays them out, little-endian.
//!
//! The driver side builds these from a [`DmaSgl`](peerdma_dma::DmaSgl)'s
//! entries; the controller side decodes them from bytes it fetched by DMA.
//! Both sides check the rules a real controller checks, so a malformed
//! pointer is a completion status, never a panic.

use std::fmt;

/// Bytes in a submission queue entry.
pub const SQE_SIZE: usize = 64;
/// Bytes in a completion queue entry.
pub const CQE_SIZE: usize = 16;
/// Bytes in an SGL descriptor.
pub const SGL_DESC_SIZE: usize = 16;

/// The I/O command set opcodes the model implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    Flush,
    Write,
    Read,
}

impl Opcode {
    pub fn code(self) -> u8 {
        match self {
            Opcode::Flush => 0x00,
            Opcode::Write => 0x01,
            Opcode::Read => 0x02,
        }
    }
    pub fn from_code(c: u8) -> Option<Opcode> {
        Some(match c {
            0x00 => Opcode::Flush,
            0x01 => Opcode::Write,
            0x02 => Opcode::Read,
            _ => return None,
        })
    }
    /// Whether the controller writes host (or peer) memory.
    pub fn device_writes_memory(self) -> bool {
        self == Opcode::Read
    }
}

/// SGL descriptor types (NVMe base spec, "SGL Descriptor Type").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SglType {
    /// Points at data.
    DataBlock,
    /// Points at the next segment of descriptors.
    Segment,
    /// Points at the last segment of descriptors.
    LastSegment,
}

impl SglType {
    fn code(self) -> u8 {
        match self {
            SglType::DataBlock => 0x0,
            SglType::Segment => 0x2,
            SglType::LastSegment => 0x3,
        }
    }
    fn from_code(c: u8) -> Option<SglType> {
        Some(match c {
            0x0 => SglType::DataBlock,
            0x2 => SglType::Segment,
            0x3 => SglType::LastSegment,
            _ => return None,
        })
    }
}

/// One SGL descriptor: an address, a length and a type (subtype 0:
/// addresses are memory addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SglDesc {
    pub addr: u64,
    pub len: u32,
    pub kind: SglType,
}

impl SglDesc {
    pub fn encode(&self) -> [u8; SGL_DESC_SIZE] {
        let mut b = [0u8; SGL_DESC_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[15] = self.kind.code() << 4;
        b
    }

    pub fn decode(b: &[u8; SGL_DESC_SIZE]) -> Result<SglDesc, Status> {
        let kind = SglType::from_code(b[15] >> 4).ok_or(Status::SGL_DESCRIPTOR_TYPE_INVALID)?;
        if b[15] & 0xf != 0 {
            // Only the "address" subtype is modelled.
            return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID);
        }
        Ok(SglDesc {
            addr: le64(&b[0..8]),
            len: le32(&b[8..12]),
            kind,
        })
    }
}

/// The data pointer of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataPtr {
    /// PSDT 00b: PRP entry 1 and PRP entry 2 (data or a PRP list pointer).
    Prp { prp1: u64, prp2: u64 },
    /// PSDT 01b: SGL descriptor 1.
    Sgl(SglDesc),
}

/// A submission queue entry of the I/O command set (the fields modelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sqe {
    pub opcode: Opcode,
    pub cid: u16,
    pub nsid: u32,
    pub dptr: DataPtr,
    /// Starting LBA.
    pub slba: u64,
    /// Number of logical blocks, 0-based as on the wire (0 means one block).
    pub nlb: u16,
}

impl Sqe {
    pub fn encode(&self) -> [u8; SQE_SIZE] {
        let mut b = [0u8; SQE_SIZE];
        let psdt: u32 = match self.dptr {
            DataPtr::Prp { .. } => 0,
            DataPtr::Sgl(_) => 1,
        };
        let dw0 = u32::from(self.opcode.code()) | (psdt << 14) | (u32::from(self.cid) << 16);
        b[0..4].copy_from_slice(&dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        match self.dptr {
            DataPtr::Prp { prp1, prp2 } => {
                b[24..32].copy_from_slice(&prp1.to_le_bytes());
                b[32..40].copy_from_slice(&prp2.to_le_bytes());
            }
            DataPtr::Sgl(d) => b[24..40].copy_from_slice(&d.encode()),
        }
        b[40..48].copy_from_slice(&self.slba.to_le_bytes());
        b[48..52].copy_from_slice(&u32::from(self.nlb).to_le_bytes());
        b
    }

    /// Decode an entry fetched from a submission queue. An unknown opcode
    /// or data pointer type is the status the controller completes with.
    pub fn decode(b: &[u8; SQE_SIZE]) -> Result<Sqe, (u16, Status)> {
        let dw0 = le32(&b[0..4]);
        let cid = (dw0 >> 16) as u16;
        let opcode = Opcode::from_code(dw0 as u8).ok_or((cid, Status::INVALID_OPCODE))?;
        let fuse = (dw0 >> 8) & 0x3;
        if fuse != 0 {
            return Err((cid, Status::INVALID_FIELD));
        }
        let dptr = match (dw0 >> 14) & 0x3 {
            0 => DataPtr::Prp {
                prp1: le64(&b[24..32]),
                prp2: le64(&b[32..40]),
            },
            1 => {
                let mut d = [0u8; SGL_DESC_SIZE];
                d.copy_from_slice(&b[24..40]);
                DataPtr::Sgl(SglDesc::decode(&d).map_err(|s| (cid, s))?)
            }
            _ => return Err((cid, Status::INVALID_FIELD)),
        };
        Ok(Sqe {
            opcode,
            cid,
            nsid: le32(&b[4..8]),
            dptr,
            slba: le64(&b[40..48]),
            nlb: le32(&b[48..52]) as u16,
        })
    }

    /// Blocks the command covers (NLB is 0-based).
    pub fn blocks(&self) -> u64 {
        u64::from(self.nlb) + 1
    }
}

/// A completion status: status code type, status code, do-not-retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Status {
    pub const SUCCESS: Status = Status::generic(0x00);
    pub const INVALID_OPCODE: Status = Status::generic(0x01);
    pub const INVALID_FIELD: Status = Status::generic(0x02);
    pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
    pub const ABORTED_POWER_LOSS: Status = Status::generic(0x05);
    pub const INTERNAL_ERROR: Status = Status::generic(0x06);
    pub const INVALID_NAMESPACE: Status = Status::generic(0x0b);
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0f);
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::generic(0x11);
    pub const PRP_OFFSET_INVALID: Status = Status::generic(0x13);
    pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
    /// Media and data integrity errors: Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: Status = Status {
        sct: 2,
        sc: 0x81,
        dnr: true,
    };

    const fn generic(sc: u8) -> Status {
        Status {
            sct: 0,
            sc,
            dnr: sc != 0,
        }
    }

    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// The 15-bit status field of DW3 (bits 31:17), without the phase tag.
    fn bits(self) -> u32 {
        u32::from(self.sc) | (u32::from(self.sct & 0x7) << 8) | (u32::from(self.dnr) << 14)
    }

    fn from_bits(v: u32) -> Status {
        Status {
            sc: v as u8,
            sct: ((v >> 8) & 0x7) as u8,
            dnr: v & (1 << 14) != 0,
        }
    }

    /// The spec's name of the status, for messages.
    pub fn name(self) -> &'static str {
        match (self.sct, self.sc) {
            (0, 0x00) => "Successful Completion",
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x04) => "Data Transfer Error",
            (0, 0x05) => "Commands Aborted due to Power Loss Notification",
            (0, 0x06) => "Internal Error",
            (0, 0x0b) => "Invalid Namespace or Format",
            (0, 0x0f) => "Data SGL Length Invalid",
            (0, 0x11) => "SGL Descriptor Type Invalid",
            (0, 0x13) => "PRP Offset Invalid",
            (0, 0x80) => "LBA Out of Range",
            (2, 0x81) => "Unrecovered Read Error",
            _ => "other status",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (SCT {:#x}, SC {:#04x})",
            self.name(),
            self.sct,
            self.sc
        )
    }
}

/// A completion queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cqe {
    /// Command specific (DW0).
    pub result: u32,
    /// Where the controller's head of the submission queue is now.
    pub sq_head: u16,
    pub sq_id: u16,
    pub cid: u16,
    /// The phase tag: flips each time the controller wraps the queue, so
    /// the host can tell a new entry from an old one.
    pub phase: bool,
    pub status: Status,
}

impl Cqe {
    pub fn encode(&self) -> [u8; CQE_SIZE] {
        let mut b = [0u8; CQE_SIZE];
        b[0..4].copy_from_slice(&self.result.to_le_bytes());
        let dw2 = u32::from(self.sq_head) | (u32::from(self.sq_id) << 16);
        b[8..12].copy_from_slice(&dw2.to_le_bytes());
        let dw3 = u32::from(self.cid) | (u32::from(self.phase) << 16) | (self.status.bits() << 17);
        b[12..16].copy_from_slice(&dw3.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; CQE_SIZE]) -> Cqe {
        let dw2 = le32(&b[8..12]);
        let dw3 = le32(&b[12..16]);
        Cqe {
            result: le32(&b[0..4]),
            sq_head: dw2 as u16,
            sq_id: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            phase: dw3 & (1 << 16) != 0,
            status: Status::from_bits(dw3 >> 17),
        }
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Little-endian u64 values of a PRP list page (or part of one).
pub fn decode_u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(le64).collect()
}

/// Little-endian bytes of PRP entries.
pub fn encode_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------
// PRP: the driver side
// ---------------------------------------------------------------------------

/// Why a list of DMA segments cannot be described by PRP entries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrpError {
    #[error("segment {index} starts at {addr:#x}, inside a page: only the first PRP entry may have an offset")]
    OffsetNotFirst { index: usize, addr: u64 },
    #[error(
        "segment {index} ends at {end:#x}, inside a page: only the last segment may end there"
    )]
    EndNotLast { index: usize, end: u64 },
    #[error("no data to describe")]
    Empty,
    #[error("segment {index} wraps the 64-bit address space")]
    Overflow { index: usize },
}

/// Split `segments` (DMA address, length) into PRP entries of `page` bytes:
/// the first may start at an offset into its page, every other starts on a
/// page boundary, and every segment but the last ends on one (the rule
/// the kernel's NVMe driver relies on the block layer's virt boundary for).
pub fn prp_entries(segments: &[(u64, u64)], page: u64) -> Result<Vec<u64>, PrpError> {
    debug_assert!(page.is_power_of_two());
    if segments.iter().all(|s| s.1 == 0) {
        return Err(PrpError::Empty);
    }
    let last = segments.len() - 1;
    let mut out = Vec::new();
    for (index, &(addr, len)) in segments.iter().enumerate() {
        let end = addr.checked_add(len).ok_or(PrpError::Overflow { index })?;
        if index > 0 && addr % page != 0 {
            return Err(PrpError::OffsetNotFirst { index, addr });
        }
        if index < last && end % page != 0 {
            return Err(PrpError::EndNotLast { index, end });
        }
        let mut a = addr;
        while a < end {
            out.push(a);
            a = (a / page + 1) * page;
        }
    }
    Ok(out)
}

/// How a command's PRP entries are laid out: PRP1, PRP2, and the list
/// pages PRP2 points at when more than two pages are needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrpLayout {
    pub prp1: u64,
    /// PRP entry 2: unused (0), the second page, or the first list page.
    pub prp2: u64,
    /// Contents of each list page, in order; the last entry of every page
    /// but the last points at the next page.
    pub list_pages: Vec<Vec<u64>>,
}

/// Lay out `entries` (from [`prp_entries`]) with list pages at the DMA
/// addresses `list_addr(i)` gives for page `i` (page-aligned, as the
/// kernel's dma_pool hands them out).
pub fn prp_layout(
    entries: &[u64],
    page: u64,
    mut list_addr: impl FnMut(usize) -> u64,
) -> Result<PrpLayout, PrpError> {
    let (&prp1, rest) = entries.split_first().ok_or(PrpError::Empty)?;
    match rest.len() {
        0 => Ok(PrpLayout {
            prp1,
            prp2: 0,
            list_pages: Vec::new(),
        }),
        1 => Ok(PrpLayout {
            prp1,
            prp2: rest[0],
            list_pages: Vec::new(),
        }),
        _ => {
            let per_page = (page / 8) as usize;
            let mut pages: Vec<Vec<u64>> = Vec::new();
            let mut i = 0;
            while i < rest.len() {
                let left = rest.len() - i;
                if left <= per_page {
                    pages.push(rest[i..].to_vec());
                    break;
                }
                let mut p = rest[i..i + per_page - 1].to_vec();
                p.push(list_addr(pages.len() + 1));
                pages.push(p);
                i += per_page - 1;
            }
            Ok(PrpLayout {
                prp1,
                prp2: list_addr(0),
                list_pages: pages,
            })
        }
    }
}

/// List pages a transfer of `entries` PRP entries needs.
pub fn prp_list_pages(entries: usize, page: u64) -> usize {
    let rest = entries.saturating_sub(1);
    if rest <= 1 {
        return 0;
    }
    let per_page = (page / 8) as usize;
    // Every full page but the last gives one slot to the chain pointer.
    let mut pages = 1;
    let mut cap = per_page;
    while cap < rest {
        pages += 1;
        cap += per_page - 1;
    }
    pages
}

// ---------------------------------------------------------------------------
// PRP and SGL: the controller side
// ---------------------------------------------------------------------------

/// Resolve a PRP data pointer into data ranges (DMA address, length) for a
/// transfer of `len` bytes. `read_list(addr, n)` fetches `n` entries of a
/// PRP list at `addr` by DMA; its error is the status to complete with.
pub fn prp_walk(
    prp1: u64,
    prp2: u64,
    len: u64,
    page: u64,
    read_list: &mut dyn FnMut(u64, usize) -> Result<Vec<u64>, Status>,
) -> Result<Vec<(u64, u64)>, Status> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if prp1 % 4 != 0 {
        return Err(Status::PRP_OFFSET_INVALID);
    }
    let first = (page - prp1 % page).min(len);
    let mut out = vec![(prp1, first)];
    let mut left = len - first;
    if left == 0 {
        return Ok(out);
    }
    if left <= page {
        if prp2 % page != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        push_merged(&mut out, prp2, left);
        return Ok(out);
    }
    // PRP2 is a list pointer: qword aligned, may start inside a page.
    if prp2 % 8 != 0 {
        return Err(Status::PRP_OFFSET_INVALID);
    }
    let per_page = page / 8;
    let mut list = prp2;
    let mut guard = 0u64;
    while left > 0 {
        let slots = ((page - list % page) / 8).min(per_page) as usize;
        let needed = left.div_ceil(page) as usize;
        let (take, chained) = if needed <= slots {
            (needed, false)
        } else {
            (slots, true)
        };
        let got = read_list(list, take)?;
        if got.len() != take {
            return Err(Status::DATA_TRANSFER_ERROR);
        }
        let data = if chained { &got[..take - 1] } else { &got[..] };
        for &e in data {
            if e % page != 0 {
                return Err(Status::PRP_OFFSET_INVALID);
            }
            let n = left.min(page);
            push_merged(&mut out, e, n);
            left -= n;
        }
        if chained {
            list = got[take - 1];
            if list % 8 != 0 {
                return Err(Status::PRP_OFFSET_INVALID);
            }
        }
        guard += 1;
        if guard > len / page + 2 {
            // A list that points back at itself.
            return Err(Status::INVALID_FIELD);
        }
    }
    Ok(out)
}

/// Resolve an SGL into data ranges for a transfer of `len` bytes.
/// `read_segment(addr, n)` fetches `n` descriptors at `addr` by DMA.
pub fn sgl_walk(
    sgl1: SglDesc,
    len: u64,
    read_segment: &mut dyn FnMut(u64, usize) -> Result<Vec<SglDesc>, Status>,
) -> Result<Vec<(u64, u64)>, Status> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut total = 0u64;
    let mut next = Some(sgl1);
    let mut segments = 0u32;
    while let Some(d) = next.take() {
        match d.kind {
            SglType::DataBlock => {
                total += u64::from(d.len);
                push_merged(&mut out, d.addr, u64::from(d.len));
            }
            SglType::Segment | SglType::LastSegment => {
                let n = d.len as usize / SGL_DESC_SIZE;
                if d.len as usize % SGL_DESC_SIZE != 0 || n == 0 {
                    return Err(Status::DATA_SGL_LENGTH_INVALID);
                }
                segments += 1;
                if segments > 4096 {
                    return Err(Status::INVALID_FIELD);
                }
                let descs = read_segment(d.addr, n)?;
                if descs.len() != n {
                    return Err(Status::DATA_TRANSFER_ERROR);
                }
                for (i, e) in descs.iter().enumerate() {
                    match e.kind {
                        SglType::DataBlock => {
                            total += u64::from(e.len);
                            push_merged(&mut out, e.addr, u64::from(e.len));
                        }
                        // Only the last descriptor of a (non-last) segment
                        // may point on.
                        _ if i == n - 1 && d.kind == SglType::Segment => next = Some(*e),
                        _ => return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID),
                    }
                }
            }
        }
        if total > len {
            return Err(Status::DATA_SGL_LENGTH_INVALID);
        }
    }
    if total < len {
        return Err(Status::DATA_SGL_LENGTH_INVALID);
    }
    Ok(out)
}

fn push_merged(out: &mut Vec<(u64, u64)>, addr: u64, len: u64) {
    if len == 0 {
        return;
    }
    match out.last_mut() {
        Some((a, l)) if a.checked_add(*l) == Some(addr) => *l += len,
        _ => out.push((addr, len)),
    }
}

/// SGL descriptors for `segments`: one data block in SGL1, or SGL1 a
/// last-segment descriptor pointing at `segment_addr`, where the data
/// block descriptors (returned) must be written.
pub fn sgl_layout(segments: &[(u64, u64)], segment_addr: u64) -> Option<(SglDesc, Vec<SglDesc>)> {
    let descs: Vec<SglDesc> = segments
        .iter()
        .map(|&(addr, len)| {
            Some(SglDesc {
                addr,
                len: u32::try_from(len).ok()?,
                kind: SglType::DataBlock,
            })
        })
        .collect::<Option<_>>()?;
    match descs.as_slice() {
        [] => None,
        [one] => Some((*one, Vec::new())),
        many => Some((
            SglDesc {
                addr: segment_addr,
                len: u32::try_from(many.len() * SGL_DESC_SIZE).ok()?,
                kind: SglType::LastSegment,
            },
            descs,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const PAGE: u64 = 4096;

    #[test]
    fn sqe_round_trips_with_the_fields_where_the_spec_puts_them() {
        let s = Sqe {
            opcode: Opcode::Read,
            cid: 0xbeef,
            nsid: 1,
            dptr: DataPtr::Prp {
                prp1: 0x1234_5000,
                prp2: 0x8000,
            },
            slba: 0x1_0000_0002,
            nlb: 7,
        };
        let b = s.encode();
        assert_eq!(b[0], 0x02, "opcode in byte 0");
        assert_eq!(&b[2..4], &0xbeefu16.to_le_bytes(), "CID in DW0 31:16");
        assert_eq!((b[1] >> 6) & 3, 0, "PSDT 00b: PRPs");
        assert_eq!(&b[24..32], &0x1234_5000u64.to_le_bytes());
        assert_eq!(&b[40..48], &0x1_0000_0002u64.to_le_bytes());
        assert_eq!(Sqe::decode(&b), Ok(s));
        assert_eq!(s.blocks(), 8);

        let g = Sqe {
            dptr: DataPtr::Sgl(SglDesc {
                addr: 0xfe00_0000,
                len: 0x2000,
                kind: SglType::DataBlock,
            }),
            ..s
        };
        let b = g.encode();
        assert_eq!((b[1] >> 6) & 3, 1, "PSDT 01b: SGL");
        assert_eq!(Sqe::decode(&b), Ok(g));
    }

    #[test]
    fn bad_entries_decode_to_the_status_a_controller_returns() {
        let mut b = [0u8; SQE_SIZE];
        b[0] = 0x7f;
        b[2] = 9;
        assert_eq!(Sqe::decode(&b), Err((9, Status::INVALID_OPCODE)));
        b[0] = 0x02;
        b[1] = 0x80; // PSDT 10b
        assert_eq!(Sqe::decode(&b), Err((9, Status::INVALID_FIELD)));
        b[1] = 0x40; // SGL with type 0xf
        b[39] = 0xf0;
        assert_eq!(
            Sqe::decode(&b),
            Err((9, Status::SGL_DESCRIPTOR_TYPE_INVALID))
        );
    }

    #[test]
    fn cqe_round_trips_with_phase_and_status() {
        for status in [
            Status::SUCCESS,
            Status::DATA_TRANSFER_ERROR,
            Status::UNRECOVERED_READ_ERROR,
            Status::LBA_OUT_OF_RANGE,
        ] {
            for phase in [false, true] {
                let c = Cqe {
                    result: 0,
                    sq_head: 17,
                    sq_id: 1,
                    cid: 0xabcd,
                    phase,
                    status,
                };
                let b = c.encode();
                assert_eq!(b[14] & 1, u8::from(phase), "phase tag in DW3 bit 16");
                assert_eq!(Cqe::decode(&b), c);
            }
        }
        assert!(!Status::DATA_TRANSFER_ERROR.is_success());
        assert!(Status::DATA_TRANSFER_ERROR
            .to_string()
            .contains("Data Transfer Error"));
    }

    #[test]
    fn prp_rules_first_entry_may_be_offset_then_whole_pages() {
        // 100 bytes into a page, 3 pages' worth, contiguous.
        let e = prp_entries(&[(0x10064, 3 * PAGE)], PAGE).unwrap();
        assert_eq!(e, vec![0x10064, 0x11000, 0x12000, 0x13000]);
        // Two segments meeting the rule.
        let e = prp_entries(&[(0x10800, 0x800), (0x40000, 0x1800)], PAGE).unwrap();
        assert_eq!(e, vec![0x10800, 0x40000, 0x41000]);
        assert_eq!(
            prp_entries(&[(0x10000, 0x800), (0x40000, 0x1000)], PAGE),
            Err(PrpError::EndNotLast {
                index: 0,
                end: 0x10800
            })
        );
        assert_eq!(
            prp_entries(&[(0x10000, 0x1000), (0x40200, 0x1000)], PAGE),
            Err(PrpError::OffsetNotFirst {
                index: 1,
                addr: 0x40200
            })
        );
    }

    #[test]
    fn prp_layouts_use_prp2_directly_or_as_a_chained_list() {
        let list = |i: usize| 0xa000_0000 + i as u64 * PAGE;
        let l = prp_layout(&[0x1000], PAGE, list).unwrap();
        assert_eq!((l.prp1, l.prp2, l.list_pages.len()), (0x1000, 0, 0));
        let l = prp_layout(&[0x1000, 0x5000], PAGE, list).unwrap();
        assert_eq!((l.prp2, l.list_pages.len()), (0x5000, 0));
        // 1 + 1024 entries: 511 + chain, 511 + chain, 2.
        let entries: Vec<u64> = (0..1025).map(|i| i * PAGE).collect();
        let l = prp_layout(&entries, PAGE, list).unwrap();
        assert_eq!(l.prp2, list(0));
        assert_eq!(l.list_pages.len(), 3);
        assert_eq!(l.list_pages[0].len(), 512);
        assert_eq!(*l.list_pages[0].last().unwrap(), list(1));
        assert_eq!(*l.list_pages[1].last().unwrap(), list(2));
        assert_eq!(prp_list_pages(entries.len(), PAGE), 3);
        assert_eq!(prp_list_pages(513, PAGE), 1, "512 entries fit one page");
        assert_eq!(prp_list_pages(514, PAGE), 2);
    }

    /// Driver layout, then controller walk over the same bytes, gives back
    /// the original ranges (merged where contiguous).
    fn round_trip_prp(segments: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, Status> {
        let entries = prp_entries(segments, PAGE).unwrap();
        let base = 0x7000_0000u64;
        let lay = prp_layout(&entries, PAGE, |i| base + i as u64 * PAGE).unwrap();
        let mut mem: HashMap<u64, u64> = HashMap::new();
        for (i, p) in lay.list_pages.iter().enumerate() {
            for (j, v) in p.iter().enumerate() {
                mem.insert(base + i as u64 * PAGE + j as u64 * 8, *v);
            }
        }
        let len: u64 = segments.iter().map(|s| s.1).sum();
        prp_walk(lay.prp1, lay.prp2, len, PAGE, &mut |a, n| {
            (0..n)
                .map(|k| {
                    mem.get(&(a + 8 * k as u64))
                        .copied()
                        .ok_or(Status::DATA_TRANSFER_ERROR)
                })
                .collect()
        })
    }

    fn merged(segments: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for &(a, l) in segments {
            push_merged(&mut out, a, l);
        }
        out
    }

    #[test]
    fn a_two_mib_transfer_round_trips_through_chained_list_pages() {
        let segs = [(0x2000_0200, 2 << 20)];
        let got = round_trip_prp(&segs).unwrap();
        assert_eq!(got, merged(&segs));
    }

    #[test]
    fn the_controller_refuses_offsets_where_the_rules_forbid_them() {
        let mut no_list = |_: u64, _: usize| -> Result<Vec<u64>, Status> { Ok(vec![]) };
        assert_eq!(
            prp_walk(0x1000, 0x5010, 0x2000, PAGE, &mut no_list),
            Err(Status::PRP_OFFSET_INVALID),
            "PRP2 as a data pointer must be page aligned"
        );
        let mut list = |_: u64, n: usize| -> Result<Vec<u64>, Status> { Ok(vec![0x9008; n]) };
        assert_eq!(
            prp_walk(0x1000, 0x8000, 0x3000, PAGE, &mut list),
            Err(Status::PRP_OFFSET_INVALID),
            "list entries must be page aligned"
        );
        // A chain pointer in the last slot of a page that points at itself
        // describes no data: the walk must end with an error.
        let mut self_loop = |a: u64, n: usize| -> Result<Vec<u64>, Status> { Ok(vec![a; n]) };
        assert_eq!(
            prp_walk(0x1000, 0x8ff8, 1 << 30, PAGE, &mut self_loop),
            Err(Status::INVALID_FIELD)
        );
    }

    #[test]
    fn sgls_describe_one_block_inline_or_a_segment() {
        let (d, rest) = sgl_layout(&[(0xfe00_0000, 8192)], 0).unwrap();
        assert_eq!(d.kind, SglType::DataBlock);
        assert!(rest.is_empty());
        let segs = [(0xfe00_0100, 100), (0x1_0000_0000, 5000), (0x2000, 1)];
        let (d, rest) = sgl_layout(&segs, 0x7000).unwrap();
        assert_eq!((d.kind, d.addr, d.len), (SglType::LastSegment, 0x7000, 48));
        let got = sgl_walk(d, 5101, &mut |a, n| {
            assert_eq!((a, n), (0x7000, 3));
            let bytes: Vec<u8> = rest.iter().flat_map(|x| x.encode()).collect();
            Ok(bytes
                .chunks_exact(SGL_DESC_SIZE)
                .map(|c| SglDesc::decode(c.try_into().unwrap()).unwrap())
                .collect())
        })
        .unwrap();
        assert_eq!(got, segs.to_vec());
        assert_eq!(
            sgl_walk(d, 5102, &mut |_, _| Ok(rest.clone())),
            Err(Status::DATA_SGL_LENGTH_INVALID),
            "the SGL must cover the transfer"
        );
        assert!(
            sgl_layout(&[(0, 1 << 32)], 0).is_none(),
            "a descriptor length is 32 bits"
        );
    }

    proptest! {
        #[test]
        fn prp_layout_and_walk_agree(
            first_off in 0u64..PAGE / 4,
            pages in proptest::collection::vec((1u64..2000, 1u64..6), 1..6),
            tail in 1u64..PAGE,
        ) {
            // Build segments that obey the PRP rule: the first starts at an
            // offset, all meet at page boundaries, the last ends anywhere.
            let mut segs = Vec::new();
            for (i, (p, n)) in pages.iter().enumerate() {
                let start = p * PAGE * 16 + if i == 0 { first_off * 4 } else { 0 };
                let end = (p * PAGE * 16) + n * PAGE;
                segs.push((start, end - start));
            }
            let last = segs.len() - 1;
            if segs[last].1 > PAGE {
                segs[last].1 = segs[last].1 - PAGE + tail;
            }
            let got = round_trip_prp(&segs).unwrap();
            prop_assert_eq!(got, merged(&segs));
        }
    }
}
