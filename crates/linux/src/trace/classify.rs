//! What each traced mapping was: P2P by bus address, P2P through the host
//! bridge, host memory, or refused — from its physical and DMA addresses
//! and the machine's address map.
//!
//! The kernel maps P2P memory by the rule of `pci_p2pdma_map_segment()`:
//! by bus address (`PCI_P2PDMA_MAP_BUS_ADDR`: the device is given
//! `phys + bus_offset` of the provider's BAR, untranslated by any IOMMU),
//! or through the host bridge (`PCI_P2PDMA_MAP_THRU_HOST_BRIDGE`: mapped
//! like host memory, so an IOVA where an IOMMU translates the device and
//! the physical address where nothing does). So a mapping whose physical
//! address lies in a BAR is:
//!
//! * [`Class::BusAddr`]: its DMA address is the BAR's bus address, and a
//!   host-bridge mapping would have given another one (the device's IOMMU
//!   domain translates, or the bus offset is not zero);
//! * [`Class::Untranslated`]: its DMA address is the bus address, which is
//!   also the physical address (bus offset 0, as on x86) and nothing
//!   translates the device: exactly what both rules give. The address is
//!   observed; which way the fabric routes it follows from the topology;
//! * [`Class::Iova`]: another address, from the device's IOMMU domain:
//!   through the host bridge;
//! * [`Class::Phys`]: its physical address where that differs from the
//!   bus address: through the host bridge, untranslated.
//!
//! Outside every BAR it is host memory: [`Class::Host`] (untranslated),
//! [`Class::HostIova`], or [`Class::Bounced`] (untranslated and yet
//! another address: a swiotlb bounce buffer). A `_err` event is
//! [`Class::Refused`].

use super::parse::{DmaDir, Event, EventKind, Segment};
use peerdma_mem::{format_size, AddrRange, Bdf, BusOffset, DmaAddr, PhysAddr};
use peerdma_p2p::MapType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A BAR as the classifier sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BarWindow {
    pub owner: Bdf,
    pub index: u8,
    pub phys: AddrRange<PhysAddr>,
    /// `bus - phys`, from the BAR register and `resource`.
    pub bus_offset: i64,
    /// The BAR holds the owner's published P2P memory.
    pub p2pmem: bool,
}

/// How a device's DMA addresses are translated (its IOMMU group's
/// `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Translation {
    /// No IOMMU group: nothing translates.
    NoIommu,
    /// An identity (passthrough) domain.
    Identity,
    /// A DMA domain: addresses are IOVAs (`DMA`, `DMA-FQ`).
    Translated,
    /// Not known (the group's type could not be read).
    Unknown,
}

impl Translation {
    /// From `iommu_group/type`.
    pub fn from_group_type(t: &str) -> Translation {
        match t.trim() {
            "identity" => Translation::Identity,
            "DMA" | "DMA-FQ" => Translation::Translated,
            _ => Translation::Unknown,
        }
    }

    fn untranslated(self) -> bool {
        matches!(self, Translation::NoIommu | Translation::Identity)
    }
}

/// The machine's address map: the BARs, host RAM where known, and how
/// each device's DMA is translated.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AddressMap {
    pub bars: Vec<BarWindow>,
    /// `System RAM` ranges of `/proc/iomem` (start, end inclusive), when
    /// readable (root). Without them, memory outside every BAR is taken as
    /// host memory.
    pub ram: Option<Vec<(u64, u64)>>,
    pub translation: BTreeMap<String, Translation>,
}

impl AddressMap {
    /// The BAR holding `p`.
    pub fn bar_of(&self, p: PhysAddr) -> Option<&BarWindow> {
        self.bars.iter().find(|b| b.phys.contains(p))
    }

    fn in_ram(&self, p: PhysAddr) -> Option<bool> {
        self.ram
            .as_ref()
            .map(|r| r.iter().any(|&(s, e)| (s..=e).contains(&p.raw())))
    }

    /// How `device`'s addresses are translated.
    pub fn translation_of(&self, device: &str) -> Translation {
        self.translation
            .get(device)
            .copied()
            .unwrap_or(Translation::Unknown)
    }
}

/// `System RAM` ranges from `/proc/iomem`; `None` when the addresses are
/// hidden (read without root, every range reads 0-0).
pub fn parse_iomem(text: &str) -> Option<Vec<(u64, u64)>> {
    let mut ram = Vec::new();
    let mut any_nonzero = false;
    for line in text.lines() {
        if line.starts_with(' ') {
            continue;
        }
        let Some((range, name)) = line.split_once(" : ") else {
            continue;
        };
        let Some((a, b)) = range.trim().split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        any_nonzero |= b != 0;
        if name.trim() == "System RAM" {
            ram.push((a, b));
        }
    }
    (any_nonzero && !ram.is_empty()).then_some(ram)
}

/// What a mapping was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// P2P by PCI bus address, unambiguously.
    BusAddr,
    /// P2P to the BAR's bus address, which is also its physical address,
    /// untranslated: what both the bus-address and the host-bridge rule
    /// give without an IOMMU where the bus offset is 0.
    Untranslated,
    /// P2P through the IOMMU (an IOVA), so through the host bridge.
    Iova,
    /// P2P by physical address (not the bus address), untranslated:
    /// through the host bridge.
    Phys,
    /// Host memory, untranslated.
    Host,
    /// Host memory through the IOMMU.
    HostIova,
    /// Host memory, bounced (swiotlb): the device got another address
    /// without an IOMMU.
    Bounced,
    /// The kernel refused the mapping (a `_err` event).
    Refused,
    /// Not classified: no physical address (a cut line), memory that is
    /// neither RAM nor a BAR, or a BAR mapped to an address that is none of
    /// the above.
    Unknown,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::BusAddr => "bus_addr",
            Class::Untranslated => "untranslated",
            Class::Iova => "iova",
            Class::Phys => "phys",
            Class::Host => "host",
            Class::HostIova => "host_iova",
            Class::Bounced => "bounced",
            Class::Refused => "refused",
            Class::Unknown => "unknown",
        }
    }

    /// Into a BAR (P2P).
    pub fn is_p2p(self) -> bool {
        matches!(
            self,
            Class::BusAddr | Class::Untranslated | Class::Iova | Class::Phys
        )
    }

    pub fn is_host(self) -> bool {
        matches!(self, Class::Host | Class::HostIova | Class::Bounced)
    }

    /// Words for people.
    pub fn describe(self) -> &'static str {
        match self {
            Class::BusAddr => "by PCI bus address",
            Class::Untranslated => {
                "by PCI bus address, untranslated (the bus address is the physical address here and no IOMMU translates the device)"
            }
            Class::Iova => "through the host bridge, by IOVA (the IOMMU translates)",
            Class::Phys => "through the host bridge, by physical address (untranslated)",
            Class::Host => "host memory",
            Class::HostIova => "host memory through the IOMMU",
            Class::Bounced => "host memory, bounced by swiotlb",
            Class::Refused => "refused (dma_map_*_err)",
            Class::Unknown => "not classified",
        }
    }

    /// Whether a mapping of this class is what the kernel's map type for
    /// the pair gives. `Untranslated` fits both P2P map types.
    pub fn fits(self, map: MapType) -> bool {
        match map {
            MapType::BusAddr => matches!(self, Class::BusAddr | Class::Untranslated),
            MapType::ThruHostBridge => {
                matches!(self, Class::Iova | Class::Phys | Class::Untranslated)
            }
            _ => matches!(self, Class::Refused) || self.is_host(),
        }
    }
}

/// A segment, classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    pub class: Class,
    /// The BAR's owner, for P2P and refused mappings of a BAR.
    pub target: Option<Bdf>,
    pub bytes: Option<u64>,
}

fn classify_pair(
    map: &AddressMap,
    t: Translation,
    p: PhysAddr,
    d: DmaAddr,
) -> (Class, Option<Bdf>) {
    match map.bar_of(p) {
        Some(bar) => {
            let off = BusOffset::new(bar.bus_offset);
            let bus = off.to_bus(p).map(|b| b.raw());
            let class = if Some(d.raw()) == bus {
                if bar.bus_offset != 0 || t == Translation::Translated {
                    Class::BusAddr
                } else {
                    Class::Untranslated
                }
            } else if d.raw() == p.raw() && !matches!(t, Translation::Translated) {
                Class::Phys
            } else if t.untranslated() {
                // Neither address, and nothing translates: not a mapping
                // either rule makes.
                Class::Unknown
            } else {
                Class::Iova
            };
            (class, Some(bar.owner))
        }
        None => {
            if map.in_ram(p) == Some(false) {
                return (Class::Unknown, None);
            }
            let class = if d.raw() == p.raw() && t != Translation::Translated {
                Class::Host
            } else if t.untranslated() {
                Class::Bounced
            } else {
                Class::HostIova
            };
            (class, None)
        }
    }
}

/// Classify the segments of one map event (nothing for unmaps).
pub fn classify_event(map: &AddressMap, e: &Event) -> Vec<Classified> {
    let t = map.translation_of(&e.device);
    match e.kind {
        EventKind::Unmap => Vec::new(),
        EventKind::MapErr => {
            let targets: Vec<Option<Bdf>> = e
                .segments
                .iter()
                .map(|s| s.phys.and_then(|p| map.bar_of(p)).map(|b| b.owner))
                .collect();
            if targets.is_empty() {
                return vec![Classified {
                    class: Class::Refused,
                    target: None,
                    bytes: None,
                }];
            }
            targets
                .into_iter()
                .map(|target| Classified {
                    class: Class::Refused,
                    target,
                    bytes: None,
                })
                .collect()
        }
        EventKind::Map if e.merged => classify_merged(map, t, &e.segments),
        EventKind::Map => e
            .segments
            .iter()
            .map(|s| match (s.phys, s.dma) {
                (Some(p), Some(d)) => {
                    let (class, target) = classify_pair(map, t, p, d);
                    Classified {
                        class,
                        target,
                        bytes: s.len,
                    }
                }
                (None, Some(d)) => {
                    // A cut line: the DMA address alone can still be a
                    // BAR's bus address.
                    let hit = map.bars.iter().find(|b| {
                        BusOffset::new(b.bus_offset)
                            .to_phys(peerdma_mem::BusAddr::from_config_space(d.raw()))
                            .is_some_and(|p| b.phys.contains(p))
                    });
                    Classified {
                        class: Class::Unknown,
                        target: hit.map(|b| b.owner),
                        bytes: s.len,
                    }
                }
                _ => Classified {
                    class: Class::Unknown,
                    target: None,
                    bytes: s.len,
                },
            })
            .collect(),
    }
}

/// An IOMMU merged entries: each DMA entry against all physical ones.
fn classify_merged(map: &AddressMap, t: Translation, segs: &[Segment]) -> Vec<Classified> {
    let phys: Vec<PhysAddr> = segs.iter().filter_map(|s| s.phys).collect();
    let owners: Vec<Option<Bdf>> = phys
        .iter()
        .map(|p| map.bar_of(*p).map(|b| b.owner))
        .collect();
    segs.iter()
        .filter_map(|s| s.dma.map(|d| (d, s.len)))
        .map(|(d, len)| {
            // An exact bus or physical address of one of the entries.
            let exact = phys.iter().find_map(|p| {
                let (c, target) = classify_pair(map, t, *p, d);
                (c != Class::Iova
                    && c != Class::HostIova
                    && c != Class::Bounced
                    && c != Class::Unknown)
                    .then_some((c, target))
            });
            let (class, target) = match exact {
                Some(x) => x,
                None => match owners.first() {
                    Some(first) if owners.iter().all(|o| o == first) => match first {
                        Some(o) if !t.untranslated() => (Class::Iova, Some(*o)),
                        Some(o) => (Class::Unknown, Some(*o)),
                        None if t.untranslated() => (Class::Bounced, None),
                        None => (Class::HostIova, None),
                    },
                    _ => (Class::Unknown, None),
                },
            };
            Classified {
                class,
                target,
                bytes: len,
            }
        })
        .collect()
}

/// Where a leg's data was meant to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Staging {
    /// In the P2P memory of this provider.
    P2p(Bdf),
    /// In host memory.
    Host,
}

/// The path the kernel's rule decides for a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decided {
    /// A P2P map type of the provider and the device.
    P2p(MapType),
    /// Through host memory.
    Host,
}

impl Decided {
    pub fn as_str(self) -> &'static str {
        match self {
            Decided::P2p(m) => m.as_str(),
            Decided::Host => "host",
        }
    }
}

/// One leg of a transfer: a device moving data to or from the staging
/// memory.
#[derive(Clone, Debug)]
pub struct LegSpec {
    /// `read`, `write`, `drive_to_p2pmem`, ...
    pub leg: String,
    pub device: Bdf,
    /// `FromDevice`: the device writes the memory; `ToDevice`: it reads it.
    pub dir: DmaDir,
    pub staging: Staging,
    pub decided: Decided,
    /// The I/O of this leg was refused with EREMOTEIO (seen by the
    /// caller).
    pub refused: bool,
    /// Bytes the leg moved through the staging memory, when known.
    pub moved: Option<u64>,
}

/// Mappings of one class into one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClassBytes {
    pub class: Class,
    /// The BAR's owner (P2P and refused mappings).
    pub target: Option<Bdf>,
    /// Whether these mappings are of the leg's staging memory.
    pub staging: bool,
    pub mappings: u64,
    pub bytes: u64,
}

/// What the trace shows for one leg.
#[derive(Clone, Debug, Serialize)]
pub struct ObservedLeg {
    pub leg: String,
    pub device: Bdf,
    pub direction: DmaDir,
    /// The kernel's rule: `bus_addr`, `thru_host_bridge`, `not_supported`
    /// or `host`.
    pub decided: &'static str,
    /// The class of the staging memory's mappings (`bus_addr`,
    /// `untranslated`, `iova`, `phys`, `host`, `host_iova`, `bounced`),
    /// `refused`, `mixed` (several classes: see `classes`) or `none`.
    pub observed: String,
    /// Whether that is what the rule decides; `null` when nothing of the
    /// staging memory was traced.
    pub agrees: Option<bool>,
    /// Mappings and bytes of the staging memory.
    pub mappings: u64,
    pub bytes: u64,
    /// Bytes the leg moved through it, when known.
    pub moved: Option<u64>,
    /// Every mapping of this device in this direction during the transfer.
    pub classes: Vec<ClassBytes>,
    /// The leg in words.
    pub text: String,
}

/// Hold the trace's mappings against each leg.
pub fn observe_legs(map: &AddressMap, events: &[Event], legs: &[LegSpec]) -> Vec<ObservedLeg> {
    legs.iter().map(|l| observe_leg(map, events, l)).collect()
}

fn observe_leg(map: &AddressMap, events: &[Event], l: &LegSpec) -> ObservedLeg {
    let dev = l.device.to_string();
    let mut classes: BTreeMap<(Class, Option<Bdf>), (u64, u64)> = BTreeMap::new();
    for e in events {
        if e.device != dev || e.kind == EventKind::Unmap {
            continue;
        }
        if !e.dir.is_some_and(|d| d.covers(l.dir)) {
            continue;
        }
        let cs = classify_event(map, e);
        // One event is one mapping; it counts once per class and target.
        let mut seen: Vec<(Class, Option<Bdf>)> = Vec::new();
        for c in cs {
            let k = (c.class, c.target);
            let slot = classes.entry(k).or_default();
            if !seen.contains(&k) {
                slot.0 += 1;
                seen.push(k);
            }
            slot.1 += c.bytes.unwrap_or(0);
        }
    }
    let is_staging = |c: Class, target: Option<Bdf>| match l.staging {
        Staging::P2p(p) => {
            target == Some(p) && (c.is_p2p() || c == Class::Refused || c == Class::Unknown)
        }
        Staging::Host => c.is_host(),
    };
    let list: Vec<ClassBytes> = classes
        .iter()
        .map(|(&(class, target), &(mappings, bytes))| ClassBytes {
            class,
            target,
            staging: is_staging(class, target),
            mappings,
            bytes,
        })
        .collect();
    let staged: Vec<&ClassBytes> = list.iter().filter(|c| c.staging).collect();
    let mapped: Vec<&ClassBytes> = staged
        .iter()
        .copied()
        .filter(|c| c.class != Class::Refused)
        .collect();
    let refused = l.refused || staged.iter().any(|c| c.class == Class::Refused);
    let (mappings, bytes) = mapped
        .iter()
        .fold((0, 0), |(m, b), c| (m + c.mappings, b + c.bytes));
    let mut kinds: Vec<Class> = mapped.iter().map(|c| c.class).collect();
    kinds.dedup();
    let observed = match kinds.as_slice() {
        [] if refused => "refused".to_string(),
        [] => "none".to_string(),
        [one] => one.as_str().to_string(),
        _ => "mixed".to_string(),
    };
    // The P2P mappings of anything other than the staging memory count
    // against a host leg: data went where the rule said it would not.
    let stray_p2p = list.iter().any(|c| !c.staging && c.class.is_p2p());
    let agrees = match l.decided {
        Decided::P2p(m) if m.is_p2p() => {
            if kinds.is_empty() {
                if refused {
                    Some(false)
                } else {
                    None
                }
            } else {
                Some(!refused && kinds.iter().all(|k| k.fits(m)))
            }
        }
        Decided::P2p(_) => {
            // Not supported: refused, or nothing of the BAR mapped.
            if !kinds.is_empty() {
                Some(false)
            } else if refused {
                Some(true)
            } else {
                None
            }
        }
        Decided::Host => {
            if stray_p2p {
                Some(false)
            } else if kinds.is_empty() {
                None
            } else {
                Some(kinds.iter().all(|k| k.is_host()))
            }
        }
    };
    let mut o = ObservedLeg {
        leg: l.leg.clone(),
        device: l.device,
        direction: l.dir,
        decided: l.decided.as_str(),
        observed,
        agrees,
        mappings,
        bytes,
        moved: l.moved,
        classes: list,
        text: String::new(),
    };
    o.text = o.describe(l);
    o
}

impl ObservedLeg {
    /// The staging class in words, for this leg's decided path: where both
    /// rules give the same address, the words follow the rule that was
    /// decided.
    pub fn observed_words(&self) -> String {
        match self.observed.as_str() {
            "untranslated" if self.decided == "thru_host_bridge" => {
                "through the host bridge, by physical address (untranslated; it is also the bus address here)".into()
            }
            "refused" => "refused by the kernel (EREMOTEIO), nothing of the P2P memory mapped".into(),
            "none" => "no mapping of it traced".into(),
            "mixed" => "mixed (see the classes)".into(),
            other => self
                .classes
                .iter()
                .find(|c| c.class.as_str() == other)
                .map_or(other.to_string(), |c| c.class.describe().to_string()),
        }
    }

    fn describe(&self, l: &LegSpec) -> String {
        let what = match (l.dir, l.staging) {
            (DmaDir::FromDevice, Staging::P2p(p)) => {
                format!("{} DMA-writes the P2P memory of {p}", l.device)
            }
            (_, Staging::P2p(p)) => format!("{} DMA-reads the P2P memory of {p}", l.device),
            (DmaDir::FromDevice, Staging::Host) => format!("{} DMA-writes host memory", l.device),
            (_, Staging::Host) => format!("{} DMA-reads host memory", l.device),
        };
        let amount = if self.mappings > 0 {
            format!(
                ": {} in {} mapping{}{}",
                format_size(self.bytes),
                self.mappings,
                if self.mappings == 1 { "" } else { "s" },
                match self.moved {
                    Some(m) if m != self.bytes => format!(" (the leg moved {})", format_size(m)),
                    _ => String::new(),
                }
            )
        } else {
            String::new()
        };
        let verdict = match self.agrees {
            Some(true) => format!("as decided ({})", self.decided),
            Some(false) => format!("DIFFERS from the decided {}", self.decided),
            None => format!("decided {}, not observed", self.decided),
        };
        let mut s = format!("{what}: {}{amount}; {verdict}", self.observed_words());
        let others: Vec<String> = self
            .classes
            .iter()
            .filter(|c| !c.staging)
            .map(|c| {
                format!(
                    "{} {} in {} mapping{}",
                    format_size(c.bytes),
                    match c.target {
                        Some(t) => format!("{} of {t}", c.class.describe()),
                        None => c.class.describe().to_string(),
                    },
                    c.mappings,
                    if c.mappings == 1 { "" } else { "s" }
                )
            })
            .collect();
        if !others.is_empty() {
            s.push_str(&format!("; also {}", others.join(", ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::{parse_line, Formats, Line};
    use super::*;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    /// Two NVMe drives with CMBs at 0xfc000000 and 0xfd000000 (16 MiB
    /// each), RAM below 2 GiB.
    fn machine(t: Translation, offset: i64) -> AddressMap {
        let bar = |owner: &str, start: u64| BarWindow {
            owner: bdf(owner),
            index: 2,
            phys: AddrRange::new(PhysAddr::new(start), 16 << 20).unwrap(),
            bus_offset: offset,
            p2pmem: true,
        };
        AddressMap {
            bars: vec![
                bar("0000:03:00.0", 0xfc00_0000),
                bar("0000:04:00.0", 0xfd00_0000),
            ],
            ram: Some(vec![(0x1000, 0x7fff_ffff)]),
            translation: [("0000:03:00.0", t), ("0000:04:00.0", t)]
                .into_iter()
                .map(|(d, t)| (d.to_string(), t))
                .collect(),
        }
    }

    fn ev(line: &str) -> Event {
        match parse_line(line, &Formats::new()) {
            Line::Event(e) => e,
            o => panic!("{o:?}"),
        }
    }

    fn sg(dev: &str, dir: &str, dma: u64, len: u64, phys: u64) -> Event {
        ev(&format!("peerdma-1 [000] ..... 1.0: dma_map_sg: {dev} dir={dir} nents=1/1 ents=1/1 dma_addrs={{{dma:#x}}} sizes={{{len:#x}}} phys_addrs={{{phys:#x}}} attrs="))
    }

    fn class_of(m: &AddressMap, e: &Event) -> (Class, Option<Bdf>) {
        let c = classify_event(m, e);
        assert_eq!(c.len(), 1, "{c:?}");
        (c[0].class, c[0].target)
    }

    #[test]
    fn bus_address_with_and_without_translation() {
        let e = sg(
            "0000:04:00.0",
            "FROM_DEVICE",
            0xfc02_0000,
            0x80000,
            0xfc02_0000,
        );
        // No IOMMU, bus offset 0: both rules give this address.
        let m = machine(Translation::NoIommu, 0);
        assert_eq!(
            class_of(&m, &e),
            (Class::Untranslated, Some(bdf("0000:03:00.0")))
        );
        assert!(Class::Untranslated.fits(MapType::BusAddr));
        assert!(Class::Untranslated.fits(MapType::ThruHostBridge));
        // An IOMMU translates the device: the bus address is a bus-address
        // mapping (a host-bridge one would be an IOVA).
        let m = machine(Translation::Translated, 0);
        assert_eq!(class_of(&m, &e).0, Class::BusAddr);
        assert!(!Class::BusAddr.fits(MapType::ThruHostBridge));
        // A host bridge that translates (bus = phys + 0x1000_0000).
        let m = machine(Translation::NoIommu, 0x1000_0000);
        let e = sg(
            "0000:04:00.0",
            "FROM_DEVICE",
            0x1_0c02_0000,
            0x80000,
            0xfc02_0000,
        );
        assert_eq!(class_of(&m, &e).0, Class::BusAddr);
        // ... and the physical address there is the host bridge's way.
        let e = sg(
            "0000:04:00.0",
            "FROM_DEVICE",
            0xfc02_0000,
            0x80000,
            0xfc02_0000,
        );
        assert_eq!(class_of(&m, &e).0, Class::Phys);
    }

    #[test]
    fn host_bridge_by_iova_and_host_memory() {
        let m = machine(Translation::Translated, 0);
        let e = sg(
            "0000:04:00.0",
            "TO_DEVICE",
            0xffe0_0000,
            0x100000,
            0xfc10_0000,
        );
        assert_eq!(class_of(&m, &e), (Class::Iova, Some(bdf("0000:03:00.0"))));
        assert!(Class::Iova.fits(MapType::ThruHostBridge) && !Class::Iova.fits(MapType::BusAddr));
        let e = sg(
            "0000:04:00.0",
            "TO_DEVICE",
            0xffe0_0000,
            0x1000,
            0x1234_5000,
        );
        assert_eq!(class_of(&m, &e), (Class::HostIova, None));
        let m = machine(Translation::NoIommu, 0);
        let e = sg(
            "0000:04:00.0",
            "TO_DEVICE",
            0x1234_5000,
            0x1000,
            0x1234_5000,
        );
        assert_eq!(class_of(&m, &e), (Class::Host, None));
        // Untranslated and yet another address: a swiotlb slot.
        let e = sg(
            "0000:04:00.0",
            "TO_DEVICE",
            0x7000_0000,
            0x1000,
            0x1_2345_5000,
        );
        let mut m2 = m.clone();
        m2.ram = None;
        assert_eq!(class_of(&m2, &e), (Class::Bounced, None));
        // Neither RAM nor a BAR.
        assert_eq!(class_of(&m, &e).0, Class::Unknown);
    }

    #[test]
    fn refused_mappings_name_the_bar() {
        let m = machine(Translation::NoIommu, 0);
        let e = ev("x-1 [000] ..... 1.0: dma_map_sg_err: 0000:04:00.0 dir=FROM_DEVICE dma_addrs={0xfc000000,0xfc001000} err=-121 attrs=");
        assert_eq!(e.err, Some(-121));
        let c = classify_event(&m, &e);
        assert_eq!(c.len(), 2);
        assert!(c
            .iter()
            .all(|c| c.class == Class::Refused && c.target == Some(bdf("0000:03:00.0"))));
    }

    fn leg(dev: &str, dir: DmaDir, staging: Staging, decided: Decided) -> LegSpec {
        LegSpec {
            leg: "read".into(),
            device: bdf(dev),
            dir,
            staging,
            decided,
            refused: false,
            moved: Some(0x100000),
        }
    }

    #[test]
    fn a_leg_is_its_devices_mappings_in_its_direction() {
        let m = machine(Translation::NoIommu, 0);
        let events = vec![
            sg(
                "0000:04:00.0",
                "FROM_DEVICE",
                0xfc00_0000,
                0x80000,
                0xfc00_0000,
            ),
            sg(
                "0000:04:00.0",
                "FROM_DEVICE",
                0xfc08_0000,
                0x80000,
                0xfc08_0000,
            ),
            // The other direction, another device, and an edge in host memory.
            sg(
                "0000:04:00.0",
                "TO_DEVICE",
                0xfc00_0000,
                0x80000,
                0xfc00_0000,
            ),
            sg(
                "0000:03:00.0",
                "FROM_DEVICE",
                0xfc00_0000,
                0x80000,
                0xfc00_0000,
            ),
            sg(
                "0000:04:00.0",
                "FROM_DEVICE",
                0x2000_0000,
                0x1000,
                0x2000_0000,
            ),
        ];
        let l = leg(
            "0000:04:00.0",
            DmaDir::FromDevice,
            Staging::P2p(bdf("0000:03:00.0")),
            Decided::P2p(MapType::BusAddr),
        );
        let o = observe_legs(&m, &events, std::slice::from_ref(&l)).remove(0);
        assert_eq!(
            (o.observed.as_str(), o.agrees),
            ("untranslated", Some(true))
        );
        assert_eq!((o.mappings, o.bytes), (2, 0x100000));
        assert_eq!(o.classes.len(), 2);
        assert!(o.text.contains("as decided (bus_addr)"), "{}", o.text);
        assert!(
            o.text.contains("also 4 KiB host memory in 1 mapping"),
            "{}",
            o.text
        );
        // The same mappings where the rule says through the host bridge:
        // without an IOMMU that is the same address, so it agrees, in the
        // host bridge's words.
        let l2 = LegSpec {
            decided: Decided::P2p(MapType::ThruHostBridge),
            ..l.clone()
        };
        let o = observe_legs(&m, &events, &[l2]).remove(0);
        assert_eq!(o.agrees, Some(true));
        assert!(
            o.text
                .contains("through the host bridge, by physical address"),
            "{}",
            o.text
        );
        // With an IOMMU translating the device, bus address and host bridge
        // differ.
        let mt = machine(Translation::Translated, 0);
        let l3 = LegSpec {
            decided: Decided::P2p(MapType::ThruHostBridge),
            ..l
        };
        let o = observe_legs(&mt, &events, &[l3]).remove(0);
        assert_eq!((o.observed.as_str(), o.agrees), ("bus_addr", Some(false)));
        assert!(
            o.text.contains("DIFFERS from the decided thru_host_bridge"),
            "{}",
            o.text
        );
    }

    #[test]
    fn refused_and_bounced_legs() {
        let m = machine(Translation::NoIommu, 0);
        let p = bdf("0000:03:00.0");
        // EREMOTEIO without a traced mapping: refused, as not_supported says.
        let mut l = leg(
            "0000:04:00.0",
            DmaDir::FromDevice,
            Staging::P2p(p),
            Decided::P2p(MapType::NotSupported),
        );
        l.refused = true;
        let o = observe_legs(&m, &[], &[l.clone()]).remove(0);
        assert_eq!((o.observed.as_str(), o.agrees), ("refused", Some(true)));
        // Where the rule said P2P, a refusal differs.
        l.decided = Decided::P2p(MapType::BusAddr);
        assert_eq!(observe_legs(&m, &[], &[l.clone()])[0].agrees, Some(false));
        // Nothing traced and nothing refused: not observed.
        l.refused = false;
        let o = observe_legs(&m, &[], &[l]).remove(0);
        assert_eq!((o.observed.as_str(), o.agrees), ("none", None));
        // A bounced leg: host memory agrees, a BAR mapping does not.
        let h = leg(
            "0000:04:00.0",
            DmaDir::ToDevice,
            Staging::Host,
            Decided::Host,
        );
        let host = sg(
            "0000:04:00.0",
            "TO_DEVICE",
            0x2000_0000,
            0x1000,
            0x2000_0000,
        );
        let bar = sg(
            "0000:04:00.0",
            "TO_DEVICE",
            0xfc00_0000,
            0x1000,
            0xfc00_0000,
        );
        let o = observe_legs(&m, std::slice::from_ref(&host), std::slice::from_ref(&h)).remove(0);
        assert_eq!((o.observed.as_str(), o.agrees), ("host", Some(true)));
        assert_eq!(observe_legs(&m, &[host, bar], &[h])[0].agrees, Some(false));
    }

    #[test]
    fn iomem_ram_is_read_only_with_addresses() {
        let text = "00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n  00001000-00001fff : nested\n00100000-1ffdffff : System RAM\nfc000000-fcffffff : PCI Bus 0000:03\n";
        assert_eq!(
            parse_iomem(text),
            Some(vec![(0x1000, 0x9fbff), (0x10_0000, 0x1ffd_ffff)])
        );
        let hidden = "00000000-00000000 : Reserved\n00000000-00000000 : System RAM\n";
        assert_eq!(parse_iomem(hidden), None);
    }
}
