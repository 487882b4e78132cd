//! What the kernel's `pci_enable_acs()` writes to every function's ACS
//! control register at boot, from the firmware's value, the IOMMU driver's
//! request and the command line; and, run backwards from what a capture
//! shows, what set the bits of a port that redirects peer traffic, and
//! which command line would clear them.
//!
//! The model is drivers/pci/pci.c of Linux 6.12 as Debian ships it
//! (linux-source-6.12, 6.12.117, with the stable fix "PCI/ACS: Fix
//! 'pci=config_acs=' parameter"), for every function with an ACS capability:
//!
//! 1. start from the firmware's value (`fw_ctrl`, what the register holds
//!    when the kernel first looks);
//! 2. if an IOMMU driver asked for ACS (`pci_request_acs()`, at IOMMU
//!    detection) and no device quirk took over (`pci_dev_specific_enable_acs`:
//!    Intel PCH and Sunrise Point root ports), `pci_std_enable_acs()` adds
//!    Source Validation, P2P Request and Completion Redirect and Upstream
//!    Forwarding, as far as the capability has them (and Translation
//!    Blocking with `pci=noats`);
//! 3. `pci=disable_acs_redir=`: if an entry names the device, the control
//!    becomes the *firmware's* value with RR, CR and EC cleared (what the
//!    IOMMU driver added in step 2 is dropped too);
//! 4. `pci=config_acs=`, applied after it: if an entry names the device,
//!    the control becomes the *firmware's* value with the entry's forced
//!    bits (`1`/`0`) put in: whatever steps 2 and 3 did is gone;
//! 5. the hardware keeps only the control bits its capability implements.
//!
//! Parameter syntax, as `__pci_config_acs()` and `pci_dev_str_match()`
//! parse it, quirks included: entries separated by `;` (a `,` never gets
//! there: `pci_setup()` splits `pci=` options at commas); `config_acs`
//! entries are `FLAGS@DEVICE`, flags read right to left from bit 0 (`0`
//! force off, `1` force on, `x`/`X` keep), found with `strstr()` so a
//! missing `@` takes the next entry's; devices as `[DOMAIN:]BUS:DEV.FN`,
//! with an optional path of `/DEV.FN` below it, or
//! `pci:VENDOR:DEVICE[:SUBVENDOR:SUBDEVICE]` where 0 matches anything,
//! parsed with the kernel's `sscanf()` (hex, an optional `0x`, values
//! truncated to their type). The first entry naming the device wins; an
//! entry that does not parse stops the walk for every device that gets
//! there, and the kernel says so in its log.

use crate::calc::{calc_map_type_and_dist, Verdict};
use crate::MapType;
use peerdma_pci::cmdline::KernelCmdline;
use peerdma_pci::config::{
    acs_bits_string, ACS_CR, ACS_DT, ACS_EC, ACS_REDIR_MASK, ACS_RR, ACS_SV, ACS_TB, ACS_UF,
};
use peerdma_pci::{Acs, Bdf, FnId, Function, PortType, Topology};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The seven ACS control bits the kernel knows (`PCI_ACS_SV` .. `PCI_ACS_DT`).
const ACS_VALID: u16 = ACS_SV | ACS_TB | ACS_RR | ACS_CR | ACS_UF | ACS_EC | ACS_DT;
/// What `pci_std_enable_acs()` sets (TB only in some cases).
const ACS_STD: u16 = ACS_SV | ACS_RR | ACS_CR | ACS_UF;

// ---------------------------------------------------------------------------
// The kernel's sscanf, for the formats pci_dev_str_match() uses.

/// The kernel's `isspace()`.
fn kspace(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0)
}

/// What `vsscanf()` returned: the number of conversions, their values
/// (integers truncated to their type, a `%c` as its byte) and `%n`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    num: usize,
    vals: Vec<u64>,
    n: Option<usize>,
}

/// `vsscanf()` of lib/vsprintf.c for formats of literals, white space,
/// `%x`, `%hx`, `%c` and `%n` (no widths): conversions stop at the first
/// mismatch, a number may carry `0x`, skips white space before it and
/// wraps on overflow.
fn kscanf(buf: &[u8], fmt: &[u8]) -> Scan {
    let at = |s: usize| buf.get(s).copied().unwrap_or(0);
    let mut out = Scan::default();
    let (mut s, mut f) = (0usize, 0usize);
    while f < fmt.len() {
        if kspace(fmt[f]) {
            f += 1;
            while f < fmt.len() && kspace(fmt[f]) {
                f += 1;
            }
            while kspace(at(s)) {
                s += 1;
            }
        }
        if f < fmt.len() && fmt[f] != b'%' {
            if fmt[f] != at(s) {
                break;
            }
            f += 1;
            s += 1;
            continue;
        }
        if f >= fmt.len() {
            break;
        }
        f += 1;
        let mut half = false;
        if fmt.get(f) == Some(&b'h') {
            half = true;
            f += 1;
        }
        let Some(&conv) = fmt.get(f) else { break };
        if conv == b'n' {
            out.n = Some(s);
            f += 1;
            continue;
        }
        if at(s) == 0 {
            break;
        }
        f += 1;
        match conv {
            b'c' => {
                out.vals.push(u64::from(at(s)));
                s += 1;
                out.num += 1;
                continue;
            }
            b'x' => {}
            _ => break,
        }
        while kspace(at(s)) {
            s += 1;
        }
        if !at(s).is_ascii_hexdigit() {
            break;
        }
        if at(s) == b'0' && at(s + 1).eq_ignore_ascii_case(&b'x') {
            s += 2;
        }
        let mut v: u64 = 0;
        while let Some(d) = (at(s) as char).to_digit(16) {
            v = v.wrapping_mul(16).wrapping_add(u64::from(d));
            s += 1;
        }
        out.vals
            .push(if half { v & 0xffff } else { v & 0xffff_ffff });
        out.num += 1;
    }
    out
}

/// `PCI_DEVFN(slot, func)`, with its masks.
fn devfn(slot: u64, func: u64) -> u8 {
    (((slot & 0x1f) << 3) | (func & 0x07)) as u8
}

// ---------------------------------------------------------------------------
// pci_dev_str_match()

/// The kernel's idea of a function's subsystem IDs: the header's
/// registers, or a bridge's Subsystem ID capability; 0 where there is none.
fn subsystem(f: &Function) -> (u16, u16) {
    let cs = &f.config;
    match cs.header_layout() {
        Some(0) => (cs.u16(0x2c).unwrap_or(0), cs.u16(0x2e).unwrap_or(0)),
        Some(1) => match cs.find_cap(0x0d) {
            Ok(Some(pos)) => (cs.u16(pos + 4).unwrap_or(0), cs.u16(pos + 6).unwrap_or(0)),
            _ => (0, 0),
        },
        _ => (0, 0),
    }
}

/// `pci_dev_str_match_path()` on `path` (up to the next `;`): `Err` when
/// it does not parse, and the end of the entry.
fn str_match_path(topo: &Topology, f: FnId, s: &[u8]) -> (Result<bool, ()>, usize) {
    let end = s.iter().position(|&b| b == b';').unwrap_or(s.len());
    let mut wpath = &s[..end];
    let mut dev = Some(f);
    while let Some(slash) = wpath.iter().rposition(|&b| b == b'/') {
        let sc = kscanf(&wpath[slash..], b"/%x.%x%c");
        if sc.num != 2 {
            return (Err(()), end);
        }
        let Some(d) = dev else {
            return (Ok(false), end);
        };
        if topo.function(d).bdf.devfn() != devfn(sc.vals[0], sc.vals[1]) {
            return (Ok(false), end);
        }
        dev = topo.function(d).upstream;
        if dev.is_none() {
            return (Ok(false), end);
        }
        wpath = &wpath[..slash];
    }
    let Some(d) = dev else {
        return (Ok(false), end);
    };
    let sc = kscanf(wpath, b"%x:%x:%x.%x%c");
    let (seg, bus, slot, func) = if sc.num == 4 {
        (sc.vals[0], sc.vals[1], sc.vals[2], sc.vals[3])
    } else {
        let sc = kscanf(wpath, b"%x:%x.%x%c");
        if sc.num != 3 {
            return (Err(()), end);
        }
        (0, sc.vals[0], sc.vals[1], sc.vals[2])
    };
    let b = topo.function(d).bdf;
    let m =
        seg == u64::from(b.domain()) && bus == u64::from(b.bus()) && b.devfn() == devfn(slot, func);
    (Ok(m), end)
}

/// `pci_dev_str_match()`: whether the device spec at the start of `s`
/// names function `f`, and where the spec ends; `Err` when it does not
/// parse.
fn str_match(topo: &Topology, f: FnId, s: &[u8]) -> (Result<bool, ()>, usize) {
    if let Some(rest) = s.strip_prefix(b"pci:") {
        let sc = kscanf(rest, b"%hx:%hx:%hx:%hx%n");
        let (ids, count) = match (sc.num, sc.n) {
            (4, Some(n)) => ([sc.vals[0], sc.vals[1], sc.vals[2], sc.vals[3]], n),
            _ => {
                let sc = kscanf(rest, b"%hx:%hx%n");
                match (sc.num, sc.n) {
                    (2, Some(n)) => ([sc.vals[0], sc.vals[1], 0, 0], n),
                    _ => return (Err(()), 0),
                }
            }
        };
        let func = topo.function(f);
        let (sv, sd) = subsystem(func);
        let want = [func.vendor, func.device, sv, sd].map(u64::from);
        let m = ids
            .iter()
            .zip(want)
            .all(|(&id, have)| id == 0 || id == have);
        (Ok(m), 4 + count)
    } else {
        str_match_path(topo, f, s)
    }
}

// ---------------------------------------------------------------------------
// __pci_config_acs(): the walk over one parameter for one device.

/// Why the kernel stops reading a parameter for a device before an entry
/// names it. Each is a message in its log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stop {
    /// "Invalid ACS flags... Ignoring": a flag that is not `0`, `1` or `x`.
    InvalidFlags { entry: String },
    /// "ACS Flags missing": no `@` in the rest of the parameter.
    FlagsMissing { rest: String },
    /// "Invalid ACS flags specified": a forced bit above bit 6.
    FlagsOutOfRange { entry: String },
    /// "PCI: Can't parse ACS command line parameter".
    CannotParse { entry: String },
    /// The entry is followed by neither `;` nor the end: the kernel stops
    /// there silently.
    Trailing { rest: String },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::InvalidFlags { entry } => write!(
                f,
                "`{entry}` has a flag that is not 0, 1 or x (the kernel logs \"Invalid ACS flags... Ignoring\")"
            ),
            Stop::FlagsMissing { rest } => write!(
                f,
                "`{rest}` has no `@` (the kernel logs \"ACS Flags missing\")"
            ),
            Stop::FlagsOutOfRange { entry } => write!(
                f,
                "`{entry}` forces a bit above bit 6 (the kernel logs \"Invalid ACS flags specified\")"
            ),
            Stop::CannotParse { entry } => write!(
                f,
                "`{entry}` is not a device the kernel can parse (it logs \"PCI: Can't parse ACS command line parameter\")"
            ),
            Stop::Trailing { rest } => write!(
                f,
                "the kernel stops silently at `{rest}` (an entry must be followed by `;` or the end)"
            ),
        }
    }
}

/// An entry of a parameter that names a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// 0-based position in the parameter.
    pub index: usize,
    /// The entry as written (`xxxx11xx@0000:00:02.0`, `0000:00:02.0`).
    pub text: String,
    /// The flags before `@` (config_acs only).
    pub flags_text: Option<String>,
    /// The device part (`0000:00:02.0`, `pci:8086:1234`).
    pub spec: String,
    /// The bits the entry sets from its flags, and their values.
    pub mask: u16,
    pub flags: u16,
}

impl Entry {
    /// Whether the device part can name one function only (a bus address,
    /// with or without a path), unlike `pci:VENDOR:DEVICE`.
    pub fn names_one_function(&self) -> bool {
        !self.spec.starts_with("pci:")
    }
}

/// What one parameter says about one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lookup {
    /// The parameter is not on the command line.
    Absent,
    /// No entry names the device, or the kernel stops before one does.
    NoMatch { stop: Option<Stop> },
    /// This entry names it.
    Match { entry: Entry },
    /// The flags shift past bit 31 (undefined behaviour in C): what the
    /// kernel does cannot be said.
    Undefined { entry: String },
}

impl Lookup {
    /// What the kernel does with it: nothing (absent, or no entry names
    /// the device, whatever the reason), the entry's mask and flags, or
    /// something undefined.
    fn effect(&self) -> Option<Option<(u16, u16)>> {
        match self {
            Lookup::Absent | Lookup::NoMatch { .. } => Some(None),
            Lookup::Match { entry } => Some(Some((entry.mask, entry.flags))),
            Lookup::Undefined { .. } => None,
        }
    }

    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Lookup::Match { entry } => Some(entry),
            _ => None,
        }
    }
}

/// Walk `param` as `__pci_config_acs()` does for device `f`. `fixed` is
/// `Some((mask, flags))` for `disable_acs_redir` (entries are devices
/// only), `None` for `config_acs` (entries carry flags).
fn walk(topo: &Topology, f: FnId, param: Option<&str>, fixed: Option<(u16, u16)>) -> Lookup {
    let Some(param) = param else {
        return Lookup::Absent;
    };
    let b = param.as_bytes();
    let text =
        |from: usize, to: usize| String::from_utf8_lossy(&b[from..to.min(b.len())]).into_owned();
    let mut p = 0usize;
    let mut index = 0usize;
    let (mut mask, mut flags) = fixed.unwrap_or((0, 0));
    while p < b.len() {
        let start = p;
        let mut flags_text = None;
        if fixed.is_none() {
            let Some(at) = b[p..].iter().position(|&c| c == b'@').map(|i| p + i) else {
                return Lookup::NoMatch {
                    stop: Some(Stop::FlagsMissing {
                        rest: text(p, b.len()),
                    }),
                };
            };
            let entry_end = b[at..]
                .iter()
                .position(|&c| c == b';')
                .map_or(b.len(), |i| at + i);
            mask = 0;
            flags = 0;
            for (shift, &c) in b[p..at].iter().rev().enumerate() {
                let bit = match c {
                    b'0' | b'1' if shift >= 32 => {
                        return Lookup::Undefined {
                            entry: text(start, entry_end),
                        }
                    }
                    // `1 << shift` stored in a u16: bits 16..31 are lost.
                    b'0' | b'1' => u16::try_from(1u64 << shift).unwrap_or(0),
                    b'x' | b'X' => 0,
                    _ => {
                        return Lookup::NoMatch {
                            stop: Some(Stop::InvalidFlags {
                                entry: text(start, entry_end),
                            }),
                        }
                    }
                };
                mask |= bit;
                if c == b'1' {
                    flags |= bit;
                }
            }
            flags_text = Some(text(p, at));
            p = at + 1;
        }
        if mask & !ACS_VALID != 0 {
            let end = b[p..]
                .iter()
                .position(|&c| c == b';')
                .map_or(b.len(), |i| p + i);
            return Lookup::NoMatch {
                stop: Some(Stop::FlagsOutOfRange {
                    entry: text(start, end),
                }),
            };
        }
        let (m, len) = str_match(topo, f, &b[p..]);
        match m {
            Err(()) => {
                let end = b[p..]
                    .iter()
                    .position(|&c| c == b';')
                    .map_or(b.len(), |i| p + i);
                return Lookup::NoMatch {
                    stop: Some(Stop::CannotParse {
                        entry: text(start, end),
                    }),
                };
            }
            Ok(true) => {
                return Lookup::Match {
                    entry: Entry {
                        index,
                        text: text(start, p + len),
                        flags_text,
                        spec: text(p, p + len),
                        mask,
                        flags,
                    },
                }
            }
            Ok(false) => {}
        }
        p += len;
        match b.get(p) {
            None => break,
            Some(b';') | Some(b',') => p += 1,
            Some(_) => {
                return Lookup::NoMatch {
                    stop: Some(Stop::Trailing {
                        rest: text(p, b.len()),
                    }),
                }
            }
        }
        index += 1;
    }
    Lookup::NoMatch { stop: None }
}

// ---------------------------------------------------------------------------
// Device quirks that take over ACS (drivers/pci/quirks.c).

/// Intel root ports whose ACS the kernel handles by a quirk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quirk {
    /// PCH root ports without a usable ACS capability
    /// (`pci_quirk_enable_intel_pch_acs`): ACS is done through the chipset,
    /// the standard register is left alone.
    IntelPch,
    /// Sunrise Point, Union Point and 7th/8th generation mobile root ports
    /// (`pci_quirk_enable_intel_spt_pch_acs`): the ACS control register
    /// sits 2 bytes later than the standard place, where the kernel's
    /// quirk writes it (also for `pci=disable_acs_redir=` and
    /// `pci=config_acs=`, which it turns into "clear the redirect"); the
    /// standard place that P2PDMA reads holds part of the capability.
    IntelSpt,
}

const INTEL_PCH_ACS_IDS: &[u16] = &[
    0x3b42, 0x3b43, 0x3b44, 0x3b45, 0x3b46, 0x3b47, 0x3b48, 0x3b49, 0x3b4a, 0x3b4b, 0x3b4c, 0x3b4d,
    0x3b4e, 0x3b4f, 0x3b50, 0x3b51, 0x1c10, 0x1c11, 0x1c12, 0x1c13, 0x1c14, 0x1c15, 0x1c16, 0x1c17,
    0x1c18, 0x1c19, 0x1c1a, 0x1c1b, 0x1c1c, 0x1c1d, 0x1c1e, 0x1c1f, 0x1e10, 0x1e11, 0x1e12, 0x1e13,
    0x1e14, 0x1e15, 0x1e16, 0x1e17, 0x1e18, 0x1e19, 0x1e1a, 0x1e1b, 0x1e1c, 0x1e1d, 0x1e1e, 0x1e1f,
    0x8c10, 0x8c11, 0x8c12, 0x8c13, 0x8c14, 0x8c15, 0x8c16, 0x8c17, 0x8c18, 0x8c19, 0x8c1a, 0x8c1b,
    0x8c1c, 0x8c1d, 0x8c1e, 0x8c1f, 0x9c10, 0x9c11, 0x9c12, 0x9c13, 0x9c14, 0x9c15, 0x9c16, 0x9c17,
    0x9c18, 0x9c19, 0x9c1a, 0x9c1b, 0x9c90, 0x9c91, 0x9c92, 0x9c93, 0x9c94, 0x9c95, 0x9c96, 0x9c97,
    0x9c98, 0x9c99, 0x9c9a, 0x9c9b, 0x1d10, 0x1d12, 0x1d14, 0x1d16, 0x1d18, 0x1d1a, 0x1d1c, 0x1d1e,
    0x8d10, 0x8d11, 0x8d12, 0x8d13, 0x8d14, 0x8d15, 0x8d16, 0x8d17, 0x8d18, 0x8d19, 0x8d1a, 0x8d1b,
    0x8d1c, 0x8d1d, 0x8d1e, 0x8c90, 0x8c92, 0x8c94, 0x8c96, 0x8c98, 0x8c9a, 0x8c9c, 0x8c9e,
];

/// The quirk that handles `f`'s ACS, if any.
pub fn quirk(f: &Function) -> Option<Quirk> {
    if f.vendor != 0x8086 || f.port_type != PortType::RootPort {
        return None;
    }
    if INTEL_PCH_ACS_IDS.contains(&f.device) {
        return Some(Quirk::IntelPch);
    }
    match f.device {
        0xa110..=0xa11f | 0xa167..=0xa16a | 0xa290..=0xa29f | 0xa2e7..=0xa2ee | 0x9d10..=0x9d1b
            if matches!(f.acs, Acs::Present { .. }) =>
        {
            Some(Quirk::IntelSpt)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The boot model.

/// Control bits with which of them are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bits {
    pub value: u16,
    pub known: u16,
}

impl Bits {
    pub fn exact(value: u16) -> Bits {
        Bits {
            value,
            known: u16::MAX,
        }
    }
    /// Whether `observed` agrees with every known bit.
    pub fn admits(self, observed: u16) -> bool {
        (observed ^ self.value) & self.known == 0
    }
    /// The redirect bits (RR, CR, EC) that are surely set / surely clear.
    pub fn redirect(self) -> Option<bool> {
        if self.value & self.known & ACS_REDIR_MASK != 0 {
            Some(true)
        } else if self.known & ACS_REDIR_MASK == ACS_REDIR_MASK {
            Some(false)
        } else {
            None
        }
    }
}

/// What the boot depends on besides each function: the IOMMU and the
/// command line.
#[derive(Clone, Debug)]
pub struct BootFacts {
    /// Whether an IOMMU driver asked for ACS; `None` when not known.
    pub iommu: Option<bool>,
    /// The command line, `None` when the capture does not record it (then
    /// taken as having neither parameter).
    pub cmdline: Option<KernelCmdline>,
    disable: Option<String>,
    config: Option<String>,
    noats: bool,
}

impl BootFacts {
    /// The facts of the captured machine.
    pub fn of(topo: &Topology) -> BootFacts {
        BootFacts::new(topo.iommu_on(), topo.cmdline())
    }

    pub fn new(iommu: Option<bool>, cmdline: Option<KernelCmdline>) -> BootFacts {
        let (disable, config, noats) = match &cmdline {
            Some(c) => (
                c.pci_option("disable_acs_redir"),
                c.pci_option("config_acs"),
                c.pci_noats(),
            ),
            None => (None, None, false),
        };
        BootFacts {
            iommu,
            cmdline,
            disable,
            config,
            noats,
        }
    }

    /// The same machine booted with another command line.
    pub fn with_cmdline(&self, cmdline: KernelCmdline) -> BootFacts {
        BootFacts::new(self.iommu, Some(cmdline))
    }

    /// `pci=disable_acs_redir=`'s value, as the kernel keeps it.
    pub fn disable_acs_redir(&self) -> Option<&str> {
        self.disable.as_deref()
    }

    /// `pci=config_acs=`'s value, as the kernel keeps it.
    pub fn config_acs(&self) -> Option<&str> {
        self.config.as_deref()
    }
}

/// What `pci_enable_acs()` does to one function with an ACS capability.
#[derive(Clone, Debug, Serialize)]
pub struct FunctionBoot {
    pub bdf: Bdf,
    /// The ACS capability register (for an assumed state, the assumed
    /// control bits).
    pub cap: u16,
    pub quirk: Option<Quirk>,
    /// `pci_std_enable_acs()` ran: an IOMMU driver asked for ACS and no
    /// quirk took over. `None` when the IOMMU state is unknown.
    pub std_enable: Option<bool>,
    pub disable_acs_redir: Lookup,
    pub config_acs: Lookup,
    /// The function's current Translation Blocking comes also from
    /// `pci=noats`.
    noats: bool,
}

impl FunctionBoot {
    /// `None` for a function without an ACS capability (the kernel returns
    /// early) or whose ACS state the capture does not show.
    pub fn new(topo: &Topology, f: FnId, facts: &BootFacts) -> Option<FunctionBoot> {
        let func = topo.function(f);
        let cap = match func.acs {
            Acs::Present { cap, .. } => cap,
            Acs::Assumed { ctrl } => ctrl,
            Acs::Absent | Acs::Unknown => return None,
        };
        let quirk = quirk(func);
        Some(FunctionBoot {
            bdf: func.bdf,
            cap,
            quirk,
            std_enable: facts.iommu.map(|on| on && quirk.is_none()),
            disable_acs_redir: walk(topo, f, facts.disable.as_deref(), Some((ACS_REDIR_MASK, 0))),
            config_acs: walk(topo, f, facts.config.as_deref(), None),
            noats: facts.noats,
        })
    }

    /// Bits the hardware implements among the seven (the others read 0).
    fn implemented(&self) -> u16 {
        (self.cap & ACS_VALID) | !ACS_VALID
    }

    fn std_bits(&self) -> u16 {
        self.cap & (ACS_STD | if self.noats { ACS_TB } else { 0 })
    }

    /// The control register after boot, from the firmware's value.
    pub fn apply(&self, fw: Bits) -> Bits {
        let mut c = fw;
        let std = self.std_bits();
        match self.std_enable {
            Some(true) => {
                c.value |= std;
                c.known |= std;
            }
            Some(false) => {}
            None => c.known &= !(std & !(c.value & c.known)),
        }
        if self.quirk != Some(Quirk::IntelSpt) {
            if let Lookup::Match { entry } = &self.disable_acs_redir {
                c = Bits {
                    value: fw.value & !entry.mask,
                    known: fw.known | entry.mask,
                };
            }
            match &self.config_acs {
                Lookup::Match { entry } => {
                    c = Bits {
                        value: (fw.value & !entry.mask) | (entry.flags & entry.mask),
                        known: fw.known | entry.mask,
                    }
                }
                Lookup::Undefined { .. } => c.known = 0,
                _ => {}
            }
        }
        let imp = self.implemented();
        Bits {
            value: c.value & imp,
            known: c.known | !imp,
        }
    }

    /// The firmware's value as far as `observed` (the register after boot)
    /// shows it: bits the boot copied from it.
    pub fn firmware(&self, observed: u16) -> Bits {
        let imp = self.implemented();
        let mut visible = if self.quirk == Some(Quirk::IntelSpt) {
            0
        } else if let Lookup::Undefined { .. } = self.config_acs {
            0
        } else if let Some(e) = self.config_acs.entry() {
            !e.mask
        } else if self.disable_acs_redir.entry().is_some() {
            !ACS_REDIR_MASK
        } else if self.std_enable != Some(false) {
            !self.std_bits()
        } else {
            u16::MAX
        };
        visible &= imp;
        Bits {
            value: observed & visible,
            known: visible | !imp,
        }
    }

    /// The bits of `observed` that this boot cannot leave: set (or
    /// cleared) after boot, or by something the model does not know.
    pub fn unexplained(&self, observed: u16) -> u16 {
        if self.quirk == Some(Quirk::IntelSpt) {
            return 0;
        }
        let after = self.apply(self.firmware(observed));
        (observed ^ after.value) & after.known
    }
}

/// Who set a port's redirect bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Setter {
    /// A `pci=config_acs=` entry forces them on.
    ConfigAcs { entry: String },
    /// The IOMMU driver's request (`pci_std_enable_acs()`); firmware may
    /// have set them too, the kernel sets them either way.
    IommuDriver,
    /// The IOMMU driver if one was on (the capture does not say), else
    /// firmware.
    IommuDriverOrFirmware,
    /// Firmware: nothing at boot sets them (no IOMMU driver, or not a bit
    /// it sets, and no command-line entry forcing it); or `setpci` since.
    Firmware {
        /// A `pci=config_acs=` entry names the port but keeps this bit's
        /// firmware value.
        kept_by: Option<String>,
    },
    /// Not what the kernel leaves at boot with this command line: set
    /// since (`setpci`, a driver) or by something peerdma does not model.
    Unexplained,
    /// An Intel root port whose ACS a quirk handles elsewhere.
    Quirk { quirk: Quirk },
}

impl fmt::Display for Setter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Setter::ConfigAcs { entry } => write!(f, "pci=config_acs= (its entry `{entry}` forces them on)"),
            Setter::IommuDriver => f.write_str("the IOMMU driver (pci_std_enable_acs() at boot; firmware may have set them too)"),
            Setter::IommuDriverOrFirmware => f.write_str("the IOMMU driver if one was on (the capture does not show it), else firmware"),
            Setter::Firmware { kept_by: None } => f.write_str("firmware (nothing at boot sets them: no IOMMU driver asks for them, nothing on the command line; or setpci since)"),
            Setter::Firmware { kept_by: Some(e) } => write!(f, "firmware (pci=config_acs= names the port, but its entry `{e}` keeps the firmware's value of these bits)"),
            Setter::Unexplained => f.write_str("not the kernel at boot: with this command line pci_enable_acs() leaves them clear, so they were set since (setpci, a driver) or by something peerdma does not model"),
            Setter::Quirk { quirk: Quirk::IntelSpt } => f.write_str("unknown: an Intel root port whose ACS control sits where the kernel's quirk writes it, not where P2PDMA reads"),
            Setter::Quirk { quirk: Quirk::IntelPch } => f.write_str("unknown: an Intel PCH root port whose ACS the kernel's quirk handles in the chipset"),
        }
    }
}

/// What `pci=disable_acs_redir=` on the command line did to a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DisableEffect {
    /// The command line has no `pci=disable_acs_redir=`.
    NotGiven,
    /// The command line is not in the capture.
    CmdlineUnknown,
    /// It does not name the port.
    DoesNotName { stop: Option<Stop> },
    /// It names the port: the redirect bits were cleared, from the
    /// firmware's value...
    Cleared { entry: String },
    /// ...and then `pci=config_acs=` (applied after it) set the control
    /// again from the firmware's value.
    Overridden { entry: String, config_acs: String },
    /// It names an Intel root port whose quirk clears a register P2PDMA
    /// does not read.
    Quirk { entry: String },
}

impl fmt::Display for DisableEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisableEffect::NotGiven => f.write_str("the command line has no pci=disable_acs_redir="),
            DisableEffect::CmdlineUnknown => f.write_str("the capture does not record the kernel command line"),
            DisableEffect::DoesNotName { stop: None } => f.write_str("pci=disable_acs_redir= does not name this port"),
            DisableEffect::DoesNotName { stop: Some(s) } => write!(f, "pci=disable_acs_redir= does not reach this port: {s}"),
            DisableEffect::Cleared { entry } => write!(f, "pci=disable_acs_redir= names this port (`{entry}`): the kernel cleared RR, CR and EC at boot, from the firmware's value"),
            DisableEffect::Overridden { entry, config_acs } => write!(f, "pci=disable_acs_redir= names this port (`{entry}`), but the kernel applies pci=config_acs= after it, and its entry `{config_acs}` sets the control again from the firmware's value: the disable_acs_redir entry changes nothing"),
            DisableEffect::Quirk { entry } => write!(f, "pci=disable_acs_redir= names this port (`{entry}`), but on this Intel root port the kernel's quirk clears a register P2PDMA does not read"),
        }
    }
}

/// Where the redirect of one port came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AcsOrigin {
    pub bdf: Bdf,
    /// The control register as captured, and its capability.
    pub ctrl: u16,
    pub cap: u16,
    /// Redirect bits (of RR, CR, EC), grouped by who set them.
    pub setters: Vec<(String, Setter)>,
    pub disable_acs_redir: DisableEffect,
    /// Assumptions the answer rests on.
    pub notes: Vec<String>,
}

impl AcsOrigin {
    /// Where function `f`'s redirect bits came from; `None` for a function
    /// that does not redirect or whose ACS is not in the capture.
    pub fn of(topo: &Topology, f: FnId, facts: &BootFacts) -> Option<AcsOrigin> {
        let func = topo.function(f);
        let Acs::Present { ctrl, .. } = func.acs else {
            return None;
        };
        let boot = FunctionBoot::new(topo, f, facts)?;
        let redir = ctrl & ACS_REDIR_MASK;
        if redir == 0 {
            return None;
        }
        let unexplained = boot.unexplained(ctrl);
        let mut setters: Vec<(u16, Setter)> = Vec::new();
        for bit in [ACS_RR, ACS_CR, ACS_EC] {
            if redir & bit == 0 {
                continue;
            }
            let s = if let Some(q) = boot.quirk {
                Setter::Quirk { quirk: q }
            } else if unexplained & bit != 0 {
                Setter::Unexplained
            } else if let Some(e) = boot.config_acs.entry() {
                if e.mask & bit != 0 {
                    Setter::ConfigAcs {
                        entry: e.text.clone(),
                    }
                } else {
                    Setter::Firmware {
                        kept_by: Some(e.text.clone()),
                    }
                }
            } else if boot.cap & ACS_STD & bit != 0 && boot.std_enable == Some(true) {
                Setter::IommuDriver
            } else if boot.cap & ACS_STD & bit != 0 && boot.std_enable.is_none() {
                Setter::IommuDriverOrFirmware
            } else {
                Setter::Firmware { kept_by: None }
            };
            match setters.iter_mut().find(|(_, x)| *x == s) {
                Some((b, _)) => *b |= bit,
                None => setters.push((bit, s)),
            }
        }
        let disable = if facts.cmdline.is_none() {
            DisableEffect::CmdlineUnknown
        } else {
            match (&boot.disable_acs_redir, &boot.config_acs) {
                (Lookup::Absent, _) => DisableEffect::NotGiven,
                (Lookup::Match { entry }, _) if boot.quirk == Some(Quirk::IntelSpt) => {
                    DisableEffect::Quirk {
                        entry: entry.text.clone(),
                    }
                }
                (Lookup::Match { entry }, Lookup::Match { entry: c }) => {
                    DisableEffect::Overridden {
                        entry: entry.text.clone(),
                        config_acs: c.text.clone(),
                    }
                }
                (Lookup::Match { entry }, _) => DisableEffect::Cleared {
                    entry: entry.text.clone(),
                },
                (Lookup::NoMatch { stop }, _) => DisableEffect::DoesNotName { stop: stop.clone() },
                (Lookup::Undefined { .. }, _) => DisableEffect::DoesNotName { stop: None },
            }
        };
        let mut notes = Vec::new();
        if facts.cmdline.is_none() {
            notes.push("the capture does not record the kernel command line: a pci=config_acs= may have set them too".into());
        }
        if facts.iommu.is_none() {
            notes.push("the capture does not show whether an IOMMU driver was on".into());
        }
        Some(AcsOrigin {
            bdf: func.bdf,
            ctrl,
            cap: boot.cap,
            setters: setters
                .into_iter()
                .map(|(b, s)| (acs_bits_string(b), s))
                .collect(),
            disable_acs_redir: disable,
            notes,
        })
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let set: Vec<String> = self
            .setters
            .iter()
            .map(|(bits, s)| format!("{bits} set by {s}"))
            .collect();
        let mut s = set.join("; ");
        if !matches!(
            self.disable_acs_redir,
            DisableEffect::NotGiven
                | DisableEffect::CmdlineUnknown
                | DisableEffect::DoesNotName { stop: None }
        ) {
            s.push_str(&format!("; {}", self.disable_acs_redir));
        }
        for n in &self.notes {
            s.push_str(&format!(" ({n})"));
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Fixes on the command line.

/// A command line that clears the redirect of some ports, checked by
/// booting the model with it.
#[derive(Clone, Debug)]
pub struct ParamFix {
    /// The `pci=` options to set (`("disable_acs_redir", "0000:00:02.0")`).
    pub options: Vec<(String, String)>,
    /// The same as parameters (`pci=disable_acs_redir=0000:00:02.0`).
    pub params: Vec<String>,
    /// The whole command line after the change, when the capture has one.
    pub cmdline_after: Option<String>,
    /// What changes, for people.
    pub edits: Vec<String>,
    /// The machine as the kernel would set it up with that command line.
    pub topology: Topology,
    /// Every function's ACS control after the change, as far as known.
    pub predicted: Vec<(Bdf, Bits)>,
    /// What the prediction assumes.
    pub assumptions: Vec<String>,
    /// Bits (other than the redirect) the fixed ports have now and may
    /// lose: 6.12's parameters start from the firmware's value, so what the
    /// IOMMU driver added is kept only if the firmware had set it too.
    pub lost: Vec<(Bdf, u16)>,
}

/// `flags` (a config_acs flag string) with RR, CR and EC forced off.
fn flags_without_redirect(flags: &str) -> String {
    let mut chars: Vec<u8> = flags.bytes().rev().collect();
    while chars.len() < 6 {
        chars.push(b'x');
    }
    for bit in [2usize, 3, 5] {
        chars[bit] = b'0';
    }
    chars.reverse();
    String::from_utf8_lossy(&chars).into_owned()
}

/// What the kernel would set every function's ACS to with `facts` instead
/// of the captured machine's boot: functions whose parameters do not
/// change keep their captured value.
pub fn boot_with(
    topo: &Topology,
    now: &BootFacts,
    then: &BootFacts,
) -> (Topology, Vec<(Bdf, Bits)>) {
    let mut t = topo.clone();
    let mut predicted = Vec::new();
    for f in topo.ids() {
        let func = topo.function(f);
        let observed = match func.acs {
            Acs::Present { ctrl, .. } | Acs::Assumed { ctrl } => ctrl,
            _ => continue,
        };
        let (Some(a), Some(b)) = (
            FunctionBoot::new(topo, f, now),
            FunctionBoot::new(topo, f, then),
        ) else {
            continue;
        };
        let bits = if a.disable_acs_redir.effect() == b.disable_acs_redir.effect()
            && a.config_acs.effect() == b.config_acs.effect()
            && a.noats == b.noats
        {
            Bits::exact(observed)
        } else {
            b.apply(a.firmware(observed))
        };
        if bits.value != observed {
            t.set_acs_ctrl(f, bits.value);
        }
        predicted.push((func.bdf, bits));
    }
    (t, predicted)
}

/// The command line that clears the redirect of `ports`, and the machine
/// it gives; `Err` with the reasons where that cannot be known.
pub fn redirect_fix(topo: &Topology, ports: &[FnId]) -> Result<ParamFix, Vec<String>> {
    let facts = BootFacts::of(topo);
    let mut why = Vec::new();
    let mut disable_add: Vec<Bdf> = Vec::new();
    let mut config_edits: Vec<(Entry, Bdf)> = Vec::new();
    for &r in ports {
        let func = topo.function(r);
        let observed = func.acs.ctrl().unwrap_or(0);
        let Some(boot) = FunctionBoot::new(topo, r, &facts) else {
            why.push(format!(
                "the ACS state of {} is not in the capture",
                func.bdf
            ));
            continue;
        };
        match boot.quirk {
            Some(Quirk::IntelSpt) => {
                why.push(format!(
                    "{} is an Intel root port ({:04x}) whose ACS control is not where P2PDMA reads it: the kernel's quirk clears the redirect elsewhere, so what P2PDMA would see after boot cannot be known",
                    func.bdf, func.device
                ));
                continue;
            }
            Some(Quirk::IntelPch) | None => {}
        }
        let odd = boot.unexplained(observed) & ACS_REDIR_MASK;
        if odd != 0 {
            why.push(format!(
                "{} has {} set, which the kernel does not leave at boot with this command line: whoever set it since (setpci, a driver, firmware at runtime) may set it again, so no boot parameter can be known to clear it",
                func.bdf,
                acs_bits_string(odd)
            ));
            continue;
        }
        match &boot.config_acs {
            // Even where the entry keeps the firmware's redirect bits,
            // disable_acs_redir would not help: config_acs comes after it.
            Lookup::Match { entry } => config_edits.push((entry.clone(), func.bdf)),
            Lookup::Undefined { entry } => why.push(format!(
                "pci=config_acs= entry `{entry}` shifts a flag past bit 31, which is undefined in C: what the kernel does with it cannot be said"
            )),
            _ => disable_add.push(func.bdf),
        }
    }
    if !why.is_empty() {
        return Err(why);
    }
    let mut options: Vec<(String, String)> = Vec::new();
    let mut edits = Vec::new();
    if !disable_add.is_empty() {
        let list: Vec<String> = disable_add.iter().map(Bdf::to_string).collect();
        let value = match facts.disable_acs_redir() {
            // Ours first: the kernel stops at an entry it cannot parse.
            Some(old) if !old.is_empty() => format!("{};{old}", list.join(";")),
            _ => list.join(";"),
        };
        edits.push(match facts.disable_acs_redir() {
            Some(old) => format!(
                "puts {} first in pci=disable_acs_redir= (now `{old}`)",
                list.join(", ")
            ),
            None => format!("adds pci=disable_acs_redir={}", list.join(";")),
        });
        options.push(("disable_acs_redir".into(), value));
    }
    if !config_edits.is_empty() {
        let Some(old) = facts.config_acs() else {
            return Err(vec![
                "internal: a config_acs entry without the parameter".into()
            ]);
        };
        let mut value = old.to_string();
        let mut prepend: Vec<String> = Vec::new();
        let mut rewritten: Vec<(String, String)> = Vec::new();
        for (entry, bdf) in &config_edits {
            let flags = flags_without_redirect(entry.flags_text.as_deref().unwrap_or(""));
            if entry.names_one_function() {
                if !rewritten.iter().any(|(o, _)| *o == entry.text) {
                    let new = format!("{flags}@{}", entry.spec);
                    rewritten.push((entry.text.clone(), new.clone()));
                    let forced = entry.flags & entry.mask & ACS_REDIR_MASK;
                    let what = if forced != 0 {
                        format!("forces {} on {bdf}", acs_bits_string(forced))
                    } else {
                        format!("names {bdf} and keeps the firmware's redirect bits")
                    };
                    edits.push(format!(
                        "changes the pci=config_acs= entry `{}` to `{new}`: it {what}, and the kernel applies pci=config_acs= after pci=disable_acs_redir= (from the firmware's value), so adding this port to disable_acs_redir would change nothing",
                        entry.text,
                    ));
                }
            } else {
                let new = format!("{flags}@{bdf}");
                edits.push(format!(
                    "puts `{new}` first in pci=config_acs=: its entry `{}` names {bdf} and others; the kernel takes the first entry that names a device, so this one keeps the entry's other settings for {bdf} and forces RR, CR and EC off",
                    entry.text
                ));
                prepend.push(new);
            }
        }
        // Rewrite entries in place (by position, so equal texts elsewhere stay).
        let mut parts: Vec<String> = value.split(';').map(str::to_string).collect();
        for (old_text, new) in &rewritten {
            if let Some(p) = parts.iter_mut().find(|p| p == &old_text) {
                *p = new.clone();
            }
        }
        value = parts.join(";");
        if !prepend.is_empty() {
            value = format!("{};{value}", prepend.join(";"));
        }
        options.push(("config_acs".into(), value));
    }
    let base = facts
        .cmdline
        .clone()
        .unwrap_or_else(|| KernelCmdline::parse(""));
    let set: Vec<(&str, &str)> = options
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let after_text = base.with_pci_options(&set);
    let then = facts.with_cmdline(KernelCmdline::parse(&after_text));
    let (topology, predicted) = boot_with(topo, &facts, &then);
    let mut assumptions = Vec::new();
    if facts.cmdline.is_none() {
        assumptions.push("the capture does not record the kernel command line: this takes it to have no pci=disable_acs_redir= or pci=config_acs=".to_string());
    }
    // The fix must clear every port; if the model says otherwise, say so.
    let mut still = Vec::new();
    let mut lost = Vec::new();
    for &r in ports {
        let b = topology.function(r).bdf;
        let Some((_, bits)) = predicted.iter().find(|(x, _)| *x == b) else {
            continue;
        };
        if bits.redirect() != Some(false) {
            still.push(b.to_string());
        }
        // A bit is kept only where the prediction knows it stays set: what
        // the IOMMU driver added goes back to the firmware's unknown value.
        let before = topo.function(r).acs.ctrl().unwrap_or(0);
        let gone = before & !(bits.value & bits.known) & !ACS_REDIR_MASK;
        if gone != 0 {
            lost.push((b, gone));
        }
    }
    if !still.is_empty() {
        return Err(vec![format!(
            "no command line peerdma can write clears the redirect on {}",
            still.join(", ")
        )]);
    }
    Ok(ParamFix {
        params: options
            .iter()
            .map(|(n, v)| format!("pci={n}={v}"))
            .collect(),
        options,
        cmdline_after: facts.cmdline.as_ref().map(|_| after_text),
        edits,
        topology,
        predicted,
        assumptions,
        lost,
    })
}

/// A kernel-parameter fix for one pair, and the pair's verdict with it.
#[derive(Clone, Debug)]
pub struct PairFix {
    pub fix: ParamFix,
    pub after: Verdict,
}

/// The kernel-parameter fix for the pair of verdict `v`: `None` when no
/// port on its path redirects or the fix would not improve the verdict,
/// `Err` with the reasons when no fix can be known to work.
pub fn pair_fix(topo: &Topology, v: &Verdict) -> Option<Result<PairFix, Vec<String>>> {
    if v.acs_redirects.is_empty() {
        return None;
    }
    match redirect_fix(topo, &v.acs_redirects) {
        Err(why) => Some(Err(why)),
        Ok(fix) => {
            let after = calc_map_type_and_dist(&fix.topology, v.provider, v.client);
            (crate::explain::rank(&after) < crate::explain::rank(v))
                .then_some(Ok(PairFix { fix, after }))
        }
    }
}

/// What peerdma predicts for one pair under a proposed fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixPrediction {
    pub provider: Bdf,
    pub client: Bdf,
    /// The verdict now and with the fix, as the kernel prints them
    /// (`not_supported 2`, `bus_addr 2`: map type and raw distance).
    pub now: String,
    pub predicted: String,
}

/// One distinct kernel-parameter fix that peerdma proposes for some pairs
/// of a machine, with the verdicts it predicts for them and the ACS
/// control it predicts for every function whose control would change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposedFix {
    /// The `pci=` options to set, as `(name, value)`.
    pub options: Vec<(String, String)>,
    /// The same as parameters.
    pub params: Vec<String>,
    /// The pairs that proposed it, in the kernel's order (providers, then
    /// clients, by address).
    pub pairs: Vec<FixPrediction>,
    /// `(function, value, known bits)`: the ACS control the kernel should
    /// leave, for every function whose parameters change.
    pub acs: Vec<(Bdf, u16, u16)>,
}

impl ProposedFix {
    /// `cmdline` (a scenario's or a machine's) with the fix applied.
    pub fn apply_to(&self, cmdline: &str) -> String {
        let set: Vec<(&str, &str)> = self
            .options
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        KernelCmdline::parse(cmdline).with_pci_options(&set)
    }
}

/// `map raw_distance`, the kernel's form.
pub fn verdict_text(map: MapType, raw_distance: u32) -> String {
    format!("{} {raw_distance}", map.as_str())
}

/// Every distinct kernel-parameter fix that `peerdma check` proposes for
/// some ordered pair of distinct functions of `topo`, in the order of the
/// first pair that proposes it.
pub fn proposed_fixes(topo: &Topology) -> Vec<ProposedFix> {
    let mut ids: Vec<FnId> = topo.ids().collect();
    ids.sort_by_key(|&f| topo.function(f).bdf);
    let mut out: Vec<ProposedFix> = Vec::new();
    for &p in &ids {
        for &c in ids.iter().filter(|&&c| c != p) {
            let v = calc_map_type_and_dist(topo, p, c);
            let Some(Ok(pf)) = pair_fix(topo, &v) else {
                continue;
            };
            let pred = FixPrediction {
                provider: topo.function(p).bdf,
                client: topo.function(c).bdf,
                now: verdict_text(v.map_type, v.raw_distance),
                predicted: verdict_text(pf.after.map_type, pf.after.raw_distance),
            };
            match out.iter_mut().find(|f| f.options == pf.fix.options) {
                Some(f) => f.pairs.push(pred),
                None => {
                    let mut acs = Vec::new();
                    for (b, bits) in &pf.fix.predicted {
                        let Some(f) = topo.find(*b) else { continue };
                        let observed = topo.function(f).acs.ctrl().unwrap_or(0);
                        if *bits != Bits::exact(observed) {
                            acs.push((*b, bits.value, bits.known));
                        }
                    }
                    out.push(ProposedFix {
                        options: pf.fix.options.clone(),
                        params: pf.fix.params.clone(),
                        pairs: vec![pred],
                        acs,
                    })
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
