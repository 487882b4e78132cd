//! PCI configuration space: the bytes, and the registers peerdma reads from
//! them (header, capability lists, PCI Express capability, ACS).
//!
//! Register offsets and bit layouts follow the PCI Local Bus and PCI Express
//! Base specifications (as named in Linux's `include/uapi/linux/pci_regs.h`).

use std::fmt;

pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const STATUS_CAP_LIST: u16 = 0x10;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0e;
pub const BASE_ADDRESS_0: usize = 0x10;
pub const PRIMARY_BUS: usize = 0x18;
pub const SECONDARY_BUS: usize = 0x19;
pub const SUBORDINATE_BUS: usize = 0x1a;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITY_LIST: usize = 0x34;

pub const CAP_ID_EXP: u8 = 0x10;
pub const EXP_FLAGS: usize = 0x02;
pub const EXP_DEVCAP: usize = 0x04;
pub const EXP_LNKCAP: usize = 0x0c;
pub const EXP_LNKSTA: usize = 0x12;
pub const EXP_LNKCAP2: usize = 0x2c;
pub const EXP_CAP_SIZEOF: usize = 0x3c;

pub const EXT_CAP_ID_ACS: u16 = 0x000d;
/// The SR-IOV extended capability, and its VF Device ID register.
pub const EXT_CAP_ID_SRIOV: u16 = 0x0010;
pub const SRIOV_VF_DID: usize = 0x1a;
pub const ACS_CAP: usize = 0x04;
pub const ACS_CTRL: usize = 0x06;

/// ACS Source Validation.
pub const ACS_SV: u16 = 0x0001;
/// ACS Translation Blocking.
pub const ACS_TB: u16 = 0x0002;
/// ACS P2P Request Redirect.
pub const ACS_RR: u16 = 0x0004;
/// ACS P2P Completion Redirect.
pub const ACS_CR: u16 = 0x0008;
/// ACS Upstream Forwarding.
pub const ACS_UF: u16 = 0x0010;
/// ACS P2P Egress Control.
pub const ACS_EC: u16 = 0x0020;
/// ACS Direct Translated P2P.
pub const ACS_DT: u16 = 0x0040;
/// The bits whose being set in ACS control makes the kernel's P2PDMA treat a
/// port as redirecting peer traffic upstream (`pci_bridge_has_acs_redir`).
pub const ACS_REDIR_MASK: u16 = ACS_RR | ACS_CR | ACS_EC;

/// `pci_bridge_has_acs_redir` on an ACS control register value: P2P
/// Request Redirect, Completion Redirect or Egress Control is set, so the
/// port sends peer requests upstream instead of routing them across. The
/// one place this test is written; `peerdma_p2p::rules` and the simulator
/// call it.
pub fn acs_ctrl_redirects(ctrl: u16) -> bool {
    ctrl & ACS_REDIR_MASK != 0
}

/// Names of the ACS bits, lowest first, as used in description files and
/// messages.
pub const ACS_BIT_NAMES: [(u16, &str); 7] = [
    (ACS_SV, "sv"),
    (ACS_TB, "tb"),
    (ACS_RR, "rr"),
    (ACS_CR, "cr"),
    (ACS_UF, "uf"),
    (ACS_EC, "ec"),
    (ACS_DT, "dt"),
];

/// Render ACS bits as `RR|CR`, or `-` for none.
pub fn acs_bits_string(bits: u16) -> String {
    let names: Vec<String> = ACS_BIT_NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n.to_ascii_uppercase())
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join("|")
    }
}

/// The bytes of one function's configuration space, as far as they were
/// readable (64 bytes to an unprivileged reader of sysfs, 256 for
/// conventional PCI, 4096 for PCI Express).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
}

impl fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigSpace({} bytes)", self.bytes.len())
    }
}

/// A register read that fell outside what was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    pub offset: usize,
    pub width: usize,
    pub len: usize,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "register at {:#x} ({} bytes) lies beyond the {} captured bytes",
            self.offset, self.width, self.len
        )
    }
}

/// What the capture lets us see of the capability lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Everything the function has (4096 bytes, or 256 for a function
    /// without PCI Express capability).
    Full,
    /// Only the standard header and capabilities (256 bytes of a PCIe
    /// function): extended capabilities such as ACS are unknown.
    NoExtended,
    /// Only the header (an unprivileged read of sysfs returns 64 bytes):
    /// capabilities are unknown.
    HeaderOnly,
}

impl ConfigSpace {
    /// Wrap captured bytes. At most 4096 are kept.
    pub fn new(mut bytes: Vec<u8>) -> ConfigSpace {
        bytes.truncate(4096);
        ConfigSpace { bytes }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn read<const N: usize>(&self, offset: usize) -> Result<[u8; N], OutOfRange> {
        self.bytes
            .get(offset..offset + N)
            .and_then(|s| s.try_into().ok())
            .ok_or(OutOfRange {
                offset,
                width: N,
                len: self.bytes.len(),
            })
    }

    pub fn u8(&self, offset: usize) -> Result<u8, OutOfRange> {
        self.read::<1>(offset).map(|b| b[0])
    }
    pub fn u16(&self, offset: usize) -> Result<u16, OutOfRange> {
        self.read::<2>(offset).map(u16::from_le_bytes)
    }
    pub fn u32(&self, offset: usize) -> Result<u32, OutOfRange> {
        self.read::<4>(offset).map(u32::from_le_bytes)
    }

    pub fn vendor(&self) -> Option<u16> {
        self.u16(VENDOR_ID).ok()
    }
    pub fn device(&self) -> Option<u16> {
        self.u16(DEVICE_ID).ok()
    }
    /// 24-bit class code (base class, subclass, programming interface).
    pub fn class(&self) -> Option<u32> {
        let b = self.read::<3>(CLASS_PROG).ok()?;
        Some(u32::from(b[2]) << 16 | u32::from(b[1]) << 8 | u32::from(b[0]))
    }
    pub fn revision(&self) -> Option<u8> {
        self.u8(REVISION_ID).ok()
    }
    /// Header layout (0 normal, 1 PCI-to-PCI bridge, 2 CardBus).
    pub fn header_layout(&self) -> Option<u8> {
        self.u8(HEADER_TYPE).ok().map(|h| h & 0x7f)
    }
    /// The multi-function bit of the header type register.
    pub fn multifunction(&self) -> Option<bool> {
        self.u8(HEADER_TYPE).ok().map(|h| h & 0x80 != 0)
    }
    /// (primary, secondary, subordinate) bus numbers of a bridge.
    pub fn bridge_buses(&self) -> Option<(u8, u8, u8)> {
        if self.header_layout()? != 1 {
            return None;
        }
        Some((
            self.u8(PRIMARY_BUS).ok()?,
            self.u8(SECONDARY_BUS).ok()?,
            self.u8(SUBORDINATE_BUS).ok()?,
        ))
    }

    /// How much of the capability structure the capture shows, given whether
    /// the function is PCI Express (which sysfs tells even without root, by
    /// the size of its `config` file or its link attributes).
    pub fn visibility(&self, has_pcie_cap: bool) -> Visibility {
        match self.bytes.len() {
            n if n >= 4096 => Visibility::Full,
            n if n >= 256 && !has_pcie_cap => Visibility::Full,
            n if n >= 256 => Visibility::NoExtended,
            _ => Visibility::HeaderOnly,
        }
    }

    /// Walk the standard capability list; `Ok(None)` if the list is
    /// visible and lacks `id`, `Err` if the list runs outside the capture.
    pub fn find_cap(&self, id: u8) -> Result<Option<usize>, OutOfRange> {
        if self.u16(STATUS)? & STATUS_CAP_LIST == 0 {
            return Ok(None);
        }
        let mut pos = usize::from(self.u8(CAPABILITY_LIST)? & !3);
        // At most 48 capabilities fit in the 192 bytes after the header
        // (the kernel's PCI_FIND_CAP_TTL): a looping list ends here.
        for _ in 0..48 {
            if pos < 0x40 {
                return Ok(None);
            }
            let hdr = self.u16(pos)?;
            if hdr & 0xff == 0xff {
                return Ok(None);
            }
            if (hdr & 0xff) as u8 == id {
                return Ok(Some(pos));
            }
            pos = usize::from((hdr >> 8) as u8 & !3);
        }
        Ok(None)
    }

    /// Walk the extended capability list from 0x100; `Ok(None)` if absent.
    pub fn find_ext_cap(&self, id: u16) -> Result<Option<usize>, OutOfRange> {
        let mut pos = 0x100usize;
        // (4096 - 256) / 8 entries at most, as the kernel bounds the walk.
        for _ in 0..480 {
            let hdr = self.u32(pos)?;
            if hdr == 0 || hdr == 0xffff_ffff {
                return Ok(None);
            }
            if (hdr & 0xffff) as u16 == id {
                return Ok(Some(pos));
            }
            let next = ((hdr >> 20) & 0xffc) as usize;
            if next < 0x100 {
                return Ok(None);
            }
            pos = next;
        }
        Ok(None)
    }

    /// Raw BAR register `index` (0..6 for a normal header, 0..2 for a bridge).
    pub fn bar_register(&self, index: usize) -> Option<u32> {
        let max = match self.header_layout()? {
            0 => 6,
            1 => 2,
            _ => 0,
        };
        if index >= max {
            return None;
        }
        self.u32(BASE_ADDRESS_0 + 4 * index).ok()
    }

    /// The bus address a memory BAR is programmed with (both halves of a
    /// 64-bit BAR), `None` for I/O BARs or registers outside the capture.
    pub fn bar_bus_address(&self, index: usize) -> Option<u64> {
        let lo = self.bar_register(index)?;
        if lo & 1 != 0 {
            return None;
        }
        let base = u64::from(lo & !0xf);
        if (lo >> 1) & 3 == 2 {
            let hi = self.bar_register(index + 1)?;
            Some(base | u64::from(hi) << 32)
        } else {
            Some(base)
        }
    }
}

/// Builds a configuration space image, for topologies described on paper.
/// The description goes through the same parser as a real capture, so both
/// produce the same model.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    bytes: Vec<u8>,
    last_cap: Option<usize>,
    next_cap: usize,
    last_ext: Option<usize>,
    next_ext: usize,
}

impl ConfigBuilder {
    /// A header of `layout` 0 (normal) or 1 (bridge); `pcie` selects a
    /// 4096-byte space, otherwise 256 bytes.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8, layout: u8, pcie: bool) -> Self {
        let mut b = ConfigBuilder {
            bytes: vec![0; if pcie { 4096 } else { 256 }],
            last_cap: None,
            next_cap: 0x40,
            last_ext: None,
            next_ext: 0x100,
        };
        b.put16(VENDOR_ID, vendor);
        b.put16(DEVICE_ID, device);
        b.put16(COMMAND, 0x0006); // memory space + bus master
        b.bytes[REVISION_ID] = revision;
        b.bytes[CLASS_PROG] = class as u8;
        b.bytes[CLASS_PROG + 1] = (class >> 8) as u8;
        b.bytes[CLASS_PROG + 2] = (class >> 16) as u8;
        b.bytes[HEADER_TYPE] = layout & 0x7f;
        b
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn multifunction(mut self, on: bool) -> Self {
        if on {
            self.bytes[HEADER_TYPE] |= 0x80;
        }
        self
    }

    pub fn subsystem(mut self, vendor: u16, device: u16) -> Self {
        if self.bytes[HEADER_TYPE] & 0x7f == 0 {
            self.put16(SUBSYSTEM_VENDOR_ID, vendor);
            self.put16(SUBSYSTEM_ID, device);
        }
        self
    }

    pub fn bridge_buses(mut self, primary: u8, secondary: u8, subordinate: u8) -> Self {
        self.bytes[PRIMARY_BUS] = primary;
        self.bytes[SECONDARY_BUS] = secondary;
        self.bytes[SUBORDINATE_BUS] = subordinate;
        self
    }

    /// Program BAR `index` with a memory bus address.
    pub fn memory_bar(mut self, index: usize, bus_addr: u64, is64: bool, prefetch: bool) -> Self {
        let mut lo = (bus_addr as u32) & !0xf;
        if is64 {
            lo |= 0x4;
        }
        if prefetch {
            lo |= 0x8;
        }
        self.put32(BASE_ADDRESS_0 + 4 * index, lo);
        if is64 {
            self.put32(BASE_ADDRESS_0 + 4 * (index + 1), (bus_addr >> 32) as u32);
        }
        self
    }

    /// Program BAR `index` as an I/O BAR.
    pub fn io_bar(mut self, index: usize, port: u32) -> Self {
        self.put32(BASE_ADDRESS_0 + 4 * index, (port & !0x3) | 1);
        self
    }

    fn add_cap(&mut self, id: u8, size: usize) -> usize {
        let pos = self.next_cap;
        self.bytes[pos] = id;
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = pos as u8,
            None => {
                self.bytes[CAPABILITY_LIST] = pos as u8;
                let st = u16::from_le_bytes([self.bytes[STATUS], self.bytes[STATUS + 1]]);
                self.put16(STATUS, st | STATUS_CAP_LIST);
            }
        }
        self.last_cap = Some(pos);
        self.next_cap = (pos + size + 3) & !3;
        pos
    }

    fn add_ext_cap(&mut self, id: u16, version: u8, size: usize) -> usize {
        let pos = self.next_ext;
        self.put32(pos, u32::from(id) | u32::from(version & 0xf) << 16);
        if let Some(prev) = self.last_ext {
            let hdr = u32::from_le_bytes(self.bytes[prev..prev + 4].try_into().unwrap_or([0; 4]));
            self.put32(prev, hdr | (pos as u32) << 20);
        }
        self.last_ext = Some(pos);
        self.next_ext = (pos + size + 3) & !3;
        pos
    }

    /// Add a PCI Express capability of `port_type` (the 4-bit device/port
    /// type) with link capability and status. `link` is (current speed code,
    /// current width, max speed code, max width); speed codes 1..=6 are
    /// 2.5..64 GT/s.
    pub fn pcie(mut self, port_type: u8, link: Option<(u8, u8, u8, u8)>) -> Self {
        let pos = self.add_cap(CAP_ID_EXP, EXP_CAP_SIZEOF);
        let slot = matches!(port_type, 4 | 6) as u16;
        self.put16(
            pos + EXP_FLAGS,
            0x2 | u16::from(port_type & 0xf) << 4 | slot << 8,
        );
        self.put32(pos + EXP_DEVCAP, 0x0000_8002); // MPS 512, role-based error reporting
        if let Some((cur_speed, cur_width, max_speed, max_width)) = link {
            self.put32(
                pos + EXP_LNKCAP,
                u32::from(max_speed & 0xf) | u32::from(max_width & 0x3f) << 4,
            );
            self.put16(
                pos + EXP_LNKSTA,
                u16::from(cur_speed & 0xf) | u16::from(cur_width & 0x3f) << 4,
            );
            // Supported Link Speeds Vector: every speed up to the maximum.
            let vector = ((1u32 << max_speed.min(7)) - 1) << 1;
            self.put32(pos + EXP_LNKCAP2, vector & 0xfe);
        }
        self
    }

    /// Add an ACS extended capability with capability and control bits.
    pub fn acs(mut self, cap: u16, ctrl: u16) -> Self {
        if self.bytes.len() < 4096 {
            return self;
        }
        let pos = self.add_ext_cap(EXT_CAP_ID_ACS, 1, 8);
        self.put16(pos + ACS_CAP, cap);
        self.put16(pos + ACS_CTRL, ctrl);
        self
    }

    /// Add an SR-IOV extended capability whose virtual functions have
    /// device ID `vf_device`, `total_vfs` of them (offset 1, stride 1).
    pub fn sriov(mut self, vf_device: u16, total_vfs: u16) -> Self {
        if self.bytes.len() < 4096 {
            return self;
        }
        let pos = self.add_ext_cap(EXT_CAP_ID_SRIOV, 1, 0x40);
        self.put16(pos + 0x0c, total_vfs); // InitialVFs
        self.put16(pos + 0x0e, total_vfs); // TotalVFs
        self.put16(pos + 0x14, 1); // First VF Offset
        self.put16(pos + 0x16, 1); // VF Stride
        self.put16(pos + SRIOV_VF_DID, vf_device);
        self
    }

    pub fn build(self) -> ConfigSpace {
        ConfigSpace { bytes: self.bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_output_parses_back() {
        let cs = ConfigBuilder::new(0x10b5, 0x8747, 0x060400, 0xca, 1, true)
            .multifunction(false)
            .bridge_buses(2, 3, 5)
            .pcie(6, Some((4, 16, 4, 16)))
            .acs(0x5f, ACS_RR | ACS_CR)
            .memory_bar(0, 0x38_0000_0000, true, true)
            .build();
        assert_eq!(cs.len(), 4096);
        assert_eq!(cs.vendor(), Some(0x10b5));
        assert_eq!(cs.device(), Some(0x8747));
        assert_eq!(cs.class(), Some(0x060400));
        assert_eq!(cs.revision(), Some(0xca));
        assert_eq!(cs.header_layout(), Some(1));
        assert_eq!(cs.bridge_buses(), Some((2, 3, 5)));
        let exp = cs.find_cap(CAP_ID_EXP).unwrap().unwrap();
        assert_eq!((cs.u16(exp + EXP_FLAGS).unwrap() >> 4) & 0xf, 6);
        assert_eq!(cs.u16(exp + EXP_LNKSTA).unwrap(), 4 | 16 << 4);
        let acs = cs.find_ext_cap(EXT_CAP_ID_ACS).unwrap().unwrap();
        assert_eq!(cs.u16(acs + ACS_CTRL).unwrap(), ACS_RR | ACS_CR);
        assert_eq!(cs.bar_bus_address(0), Some(0x38_0000_0000));
        assert_eq!(cs.bar_register(2), None, "a bridge has two BARs");
        assert_eq!(cs.visibility(true), Visibility::Full);
    }

    #[test]
    fn truncated_captures_say_what_is_missing() {
        let full = ConfigBuilder::new(1, 2, 0x010802, 0, 0, true)
            .pcie(0, Some((3, 4, 3, 4)))
            .acs(1, 0)
            .build();
        let head = ConfigSpace::new(full.bytes()[..64].to_vec());
        assert_eq!(head.visibility(true), Visibility::HeaderOnly);
        assert!(head.find_cap(CAP_ID_EXP).is_err());
        let e = head.u32(0x100).unwrap_err();
        assert!(
            e.to_string().contains("beyond the 64 captured bytes"),
            "{e}"
        );
        let std = ConfigSpace::new(full.bytes()[..256].to_vec());
        assert_eq!(std.visibility(true), Visibility::NoExtended);
        assert!(std.find_cap(CAP_ID_EXP).unwrap().is_some());
        assert!(std.find_ext_cap(EXT_CAP_ID_ACS).is_err());
    }

    #[test]
    fn looping_capability_lists_terminate() {
        let mut bytes = vec![0u8; 4096];
        bytes[STATUS] = STATUS_CAP_LIST as u8;
        bytes[CAPABILITY_LIST] = 0x40;
        bytes[0x40] = 0x01; // PM
        bytes[0x41] = 0x40; // points at itself
                            // extended list that points at itself
        bytes[0x100..0x104].copy_from_slice(&(0x0001u32 | 0x100 << 20).to_le_bytes());
        let cs = ConfigSpace::new(bytes);
        assert_eq!(cs.find_cap(CAP_ID_EXP), Ok(None));
        assert_eq!(cs.find_ext_cap(EXT_CAP_ID_ACS), Ok(None));
    }

    #[test]
    fn acs_bit_names() {
        assert_eq!(acs_bits_string(ACS_RR | ACS_CR | ACS_SV), "SV|RR|CR");
        assert_eq!(acs_bits_string(0), "-");
    }
}
