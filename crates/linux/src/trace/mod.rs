//! The path a transfer really took, seen in the kernel's DMA mapping
//! tracepoints (`--trace`).
//!
//! Since 6.12 the kernel traces every DMA mapping (`dma:dma_map_sg`,
//! `dma_map_page`, `dma_map_resource`, their unmaps, and
//! `dma_map_sg_err`) with the device, the direction, and both the
//! physical and the DMA addresses. A [`Tracer`] enables them, filtered to
//! the devices of a transfer, in a trace instance of its own
//! ([`tracefs`]: the system's tracing state is never touched, and the
//! instance goes on every way out), reads them while the transfer runs
//! ([`parse`]), and holds every mapping of each leg against the machine's
//! address map ([`classify`]): P2P by bus address, P2P through the host
//! bridge (an IOVA, or the physical address untranslated), host memory,
//! or refused.
//!
//! What the trace cannot show, it does not claim. In 6.12 a mapping the
//! kernel refuses as P2P (`EREMOTEIO`) is not traced at all
//! (`__dma_map_sg_attrs` emits `dma_map_sg_err` only for errors it does
//! not expect): a refusal is observed by the error the I/O returns, and by
//! the absence of any mapping of the P2P memory. Without an IOMMU, and
//! with a bus offset of 0 (x86), a mapping by bus address and one through
//! the host bridge give the device the same address; the trace shows that
//! address ([`Class::Untranslated`]), and the route is the topology's.

pub mod classify;
pub mod parse;
pub mod tracefs;

pub use classify::{
    AddressMap, BarWindow, Class, ClassBytes, Decided, LegSpec, ObservedLeg, Staging, Translation,
};
pub use parse::{DmaDir, Event, EventKind, Formats, Parsed};
pub use tracefs::{Session, TracingState, Unavailable};

use peerdma_mem::Bdf;
use peerdma_pci::Topology;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The machine's address map as the classifier needs it, for `devices`:
/// every memory BAR of the topology with its bus offset, `System RAM` from
/// `/proc/iomem`, and each device's IOMMU translation from sysfs.
pub fn address_map(topo: &Topology, sys_root: &Path, devices: &[Bdf]) -> AddressMap {
    let ram = std::fs::read_to_string(sys_root.join("proc/iomem"))
        .ok()
        .and_then(|t| classify::parse_iomem(&t));
    let translation = devices
        .iter()
        .map(|d| (d.to_string(), translation(sys_root, *d)))
        .collect();
    AddressMap {
        bars: bar_windows(topo),
        ram,
        translation,
    }
}

/// Every memory BAR of the topology.
pub fn bar_windows(topo: &Topology) -> Vec<BarWindow> {
    let mut bars = Vec::new();
    for f in topo.functions() {
        for b in &f.bars {
            if b.io || b.phys.is_empty() {
                continue;
            }
            bars.push(BarWindow {
                owner: f.bdf,
                index: b.index,
                phys: b.phys,
                bus_offset: b.bus_offset().get(),
                p2pmem: f.p2pmem.is_some_and(|m| m.size > 0),
            });
        }
    }
    bars
}

/// How a device's DMA is translated: its IOMMU group's `type`.
pub fn translation(sys_root: &Path, bdf: Bdf) -> Translation {
    let dev = sys_root.join("sys/bus/pci/devices").join(bdf.to_string());
    if !dev.join("iommu_group").exists() {
        return if dev.exists() {
            Translation::NoIommu
        } else {
            Translation::Unknown
        };
    }
    std::fs::read_to_string(dev.join("iommu_group/type"))
        .map(|t| Translation::from_group_type(&t))
        .unwrap_or(Translation::Unknown)
}

/// Whether the trace was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceStatus {
    Observed,
    Unavailable,
}

/// What `--trace` saw of a transfer.
#[derive(Clone, Debug, Serialize)]
pub struct TraceReport {
    pub status: TraceStatus,
    /// Why the path is not observed (status `unavailable`).
    pub why: Option<String>,
    /// The events read.
    pub events: Vec<String>,
    pub devices: Vec<Bdf>,
    /// Map, refused-map and unmap events of those devices.
    pub map_events: u64,
    pub err_events: u64,
    pub unmap_events: u64,
    /// Events the buffers dropped, lines cut short, mappings with more
    /// entries than the kernel traces, lines not read: where any is not
    /// zero, byte counts are lower bounds.
    pub lost: u64,
    pub cut: u64,
    pub truncated: u64,
    pub unreadable: u64,
    pub legs: Vec<ObservedLeg>,
    /// Each device's IOMMU translation, as the classifier took it.
    pub translation: BTreeMap<String, Translation>,
    /// The system's tracing state was the same after the transfer.
    pub state_unchanged: Option<bool>,
    pub notes: Vec<String>,
}

impl TraceReport {
    /// `--trace` was asked for and cannot be had.
    pub fn unavailable(why: impl Into<String>) -> TraceReport {
        TraceReport {
            status: TraceStatus::Unavailable,
            why: Some(why.into()),
            events: Vec::new(),
            devices: Vec::new(),
            map_events: 0,
            err_events: 0,
            unmap_events: 0,
            lost: 0,
            cut: 0,
            truncated: 0,
            unreadable: 0,
            legs: Vec::new(),
            translation: BTreeMap::new(),
            state_unchanged: None,
            notes: Vec::new(),
        }
    }

    /// Hold recorded events against legs (what [`Tracer::finish`] does with
    /// the events it read; also for recorded traces).
    pub fn from_events(
        map: &AddressMap,
        devices: &[Bdf],
        parsed: &Parsed,
        legs: &[LegSpec],
    ) -> TraceReport {
        let names: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
        let ours: Vec<Event> = parsed
            .events
            .iter()
            .filter(|e| names.contains(&e.device))
            .cloned()
            .collect();
        let count = |k: EventKind| ours.iter().filter(|e| e.kind == k).count() as u64;
        let mut r = TraceReport::unavailable("");
        r.status = TraceStatus::Observed;
        r.why = None;
        r.devices = devices.to_vec();
        r.map_events = count(EventKind::Map);
        r.err_events = count(EventKind::MapErr);
        r.unmap_events = count(EventKind::Unmap);
        r.lost = parsed.lost;
        r.cut = ours.iter().filter(|e| e.cut).count() as u64;
        r.truncated = ours.iter().filter(|e| e.truncated).count() as u64;
        r.unreadable = parsed.unreadable;
        r.legs = classify::observe_legs(map, &ours, legs);
        r.translation = names
            .iter()
            .map(|d| (d.clone(), map.translation_of(d)))
            .collect();
        if r.lost + r.cut + r.truncated + r.unreadable > 0 {
            r.notes.push(format!(
                "the trace is incomplete ({} events lost, {} lines cut, {} mappings with more entries than traced, {} lines unread): byte counts are lower bounds",
                r.lost, r.cut, r.truncated, r.unreadable
            ));
        }
        r.notes.extend(
            parsed
                .unreadable_examples
                .iter()
                .map(|e| format!("unread: {e}")),
        );
        r
    }

    /// Several reports (one per transfer) as one: their legs together;
    /// unavailable if any is.
    pub fn merge(reports: &[&TraceReport]) -> Option<TraceReport> {
        let first = reports.first()?;
        if let Some(u) = reports.iter().find(|r| r.status != TraceStatus::Observed) {
            return Some((*u).clone());
        }
        let mut m = (*first).clone();
        for r in &reports[1..] {
            m.legs.extend(r.legs.iter().cloned());
            for d in &r.devices {
                if !m.devices.contains(d) {
                    m.devices.push(*d);
                }
            }
            m.map_events += r.map_events;
            m.err_events += r.err_events;
            m.unmap_events += r.unmap_events;
            m.lost += r.lost;
            m.cut += r.cut;
            m.truncated += r.truncated;
            m.unreadable += r.unreadable;
            m.translation.extend(r.translation.clone());
            m.state_unchanged = match (m.state_unchanged, r.state_unchanged) {
                (Some(a), Some(b)) => Some(a && b),
                _ => None,
            };
            m.notes.extend(r.notes.iter().cloned());
        }
        Some(m)
    }

    /// Every leg traced agrees with the rule.
    pub fn agrees(&self) -> Option<bool> {
        if self.status != TraceStatus::Observed || self.legs.is_empty() {
            return None;
        }
        if self.legs.iter().any(|l| l.agrees == Some(false)) {
            return Some(false);
        }
        if self.legs.iter().all(|l| l.agrees == Some(true)) {
            return Some(true);
        }
        None
    }

    /// The path in one phrase: `mapped by bus address (observed)`, or what
    /// differs, or why it is not observed.
    pub fn statement(&self) -> String {
        if self.status != TraceStatus::Observed {
            return format!(
                "path not observed ({})",
                self.why.as_deref().unwrap_or("no trace")
            );
        }
        let words = |l: &ObservedLeg| match l.decided {
            "bus_addr" => "mapped by bus address",
            "thru_host_bridge" => "mapped through the host bridge",
            "host" => "through host memory",
            _ => "refused by the kernel",
        };
        let differ: Vec<String> = self
            .legs
            .iter()
            .filter(|l| l.agrees == Some(false))
            .map(|l| {
                format!(
                    "the {} leg was decided {} but observed {}",
                    l.leg, l.decided, l.observed
                )
            })
            .collect();
        if !differ.is_empty() {
            return format!("OBSERVED PATH DIFFERS: {}", differ.join("; "));
        }
        let unseen: Vec<&str> = self
            .legs
            .iter()
            .filter(|l| l.agrees.is_none())
            .map(|l| l.leg.as_str())
            .collect();
        if !unseen.is_empty() {
            return format!(
                "path not observed for the {} leg{} (no mapping of its memory traced)",
                unseen.join(" and "),
                if unseen.len() == 1 { "" } else { "s" }
            );
        }
        let mut phrases: Vec<&str> = self.legs.iter().map(words).collect();
        phrases.dedup();
        if phrases.len() == 1 {
            format!("{} (observed)", phrases[0])
        } else {
            let each: Vec<String> = self
                .legs
                .iter()
                .map(|l| format!("{} leg {}", l.leg, words(l)))
                .collect();
            format!("{} (observed)", each.join(", "))
        }
    }

    /// Lines for a report: one per leg, then the notes.
    pub fn render_lines(&self) -> Vec<String> {
        if self.status != TraceStatus::Observed {
            return vec![format!(
                "not observed: {}",
                self.why.as_deref().unwrap_or("no trace")
            )];
        }
        let mut out: Vec<String> = self
            .legs
            .iter()
            .map(|l| format!("{} leg: {}", l.leg, l.text))
            .collect();
        out.extend(self.notes.iter().cloned());
        if self.state_unchanged == Some(true) {
            out.push(format!(
                "{} map, {} unmap event(s) of {} read from {}; the system's tracing state is as it was",
                self.map_events + self.err_events,
                self.unmap_events,
                self.devices
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.events.join(", ")
            ));
        }
        out
    }
}

/// A running trace of a transfer's devices.
#[derive(Debug)]
pub struct Tracer {
    session: Session,
    devices: Vec<Bdf>,
    map: AddressMap,
}

impl Tracer {
    /// Start tracing the DMA mappings of `devices`.
    pub fn start(devices: &[Bdf], map: AddressMap) -> Result<Tracer, Unavailable> {
        let mut devices = devices.to_vec();
        devices.sort();
        devices.dedup();
        let session = Session::start(&devices)?;
        Ok(Tracer {
            session,
            devices,
            map,
        })
    }

    /// Stop, put the system's tracing as it was, and hold what was traced
    /// against `legs`.
    pub fn finish(self, legs: &[LegSpec]) -> TraceReport {
        let c = self.session.finish();
        let mut r = TraceReport::from_events(&self.map, &self.devices, &c.parsed, legs);
        r.events = c.events;
        r.state_unchanged = Some(c.state_unchanged);
        r.notes.extend(c.notes);
        for d in &self.devices {
            let name = d.to_string();
            if !c.parsed.events.iter().any(|e| e.device == name) {
                let driver = std::fs::read_link(format!("/sys/bus/pci/devices/{name}/driver"))
                    .ok()
                    .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
                r.notes.push(format!(
                    "no DMA mapping of {name} was traced: {}",
                    match driver.as_deref() {
                        Some("virtio-pci") => "its driver (virtio-pci) does not map through the DMA API unless the device asks for it (VIRTIO_F_ACCESS_PLATFORM)".to_string(),
                        Some(d) => format!("its driver ({d}) mapped nothing through the DMA API while the data moved"),
                        None => "it has no driver".to_string(),
                    }
                ));
            }
        }
        r
    }
}

/// Start a trace where one was asked for: `None` if not asked, the reason
/// as an unavailable report if it cannot be had.
pub fn start_if(
    asked: bool,
    sys_root: &Path,
    devices: &[Bdf],
    map: impl FnOnce() -> Option<AddressMap>,
) -> Option<Result<Tracer, TraceReport>> {
    if !asked {
        return None;
    }
    if sys_root != Path::new("/") {
        return Some(Err(TraceReport::unavailable(format!(
            "the machine is read from {}, not this kernel's sysfs: there is no trace to read",
            sys_root.display()
        ))));
    }
    let Some(map) = map() else {
        return Some(Err(TraceReport::unavailable(
            "the machine's PCI topology could not be read, so mappings cannot be told apart",
        )));
    };
    Some(Tracer::start(devices, map).map_err(|u| TraceReport::unavailable(u.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdma_mem::{AddrRange, PhysAddr};
    use peerdma_p2p::MapType;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    /// A copy through the CMB of 03:00.0 (BAR at 0xfc000000, no IOMMU),
    /// read leg by 03:00.0, write leg by 04:00.0, with a SATA controller's
    /// and an unrelated NVMe drive's mappings interleaved: the events of
    /// other devices change nothing, even where they map the same BAR.
    #[test]
    fn events_of_other_devices_interleaved_change_nothing() {
        let map = AddressMap {
            bars: vec![BarWindow {
                owner: bdf("0000:03:00.0"),
                index: 2,
                phys: AddrRange::new(PhysAddr::new(0xfc00_0000), 16 << 20).unwrap(),
                bus_offset: 0,
                p2pmem: true,
            }],
            ram: None,
            translation: [
                ("0000:03:00.0", Translation::NoIommu),
                ("0000:04:00.0", Translation::NoIommu),
            ]
            .into_iter()
            .map(|(d, t)| (d.to_string(), t))
            .collect(),
        };
        let ours = "\
  peerdma-7 [000] ..... 9.100: dma_map_sg: 0000:03:00.0 dir=FROM_DEVICE nents=2/2 ents=2/2 dma_addrs={0xfc000000,0xfc040000} sizes={0x40000,0x40000} phys_addrs={0xfc000000,0xfc040000} attrs=
  peerdma-7 [001] ..... 9.300: dma_map_sg: 0000:04:00.0 dir=TO_DEVICE nents=1/1 ents=1/1 dma_addrs={0xfc000000} sizes={0x80000} phys_addrs={0xfc000000} attrs=
";
        let others = "\
  kworker-3 [000] ..... 9.150: dma_map_page: 0000:00:1f.2 dir=FROM_DEVICE dma_addr=3a000000 size=4096 phys_addr=3a000000 attrs=
  peerdma-8 [001] ..... 9.200: dma_map_sg: 0000:05:00.0 dir=FROM_DEVICE nents=1/1 ents=1/1 dma_addrs={0x12345000} sizes={0x1000} phys_addrs={0xfc100000} attrs=
  peerdma-8 [001] ..... 9.250: dma_map_sg_err: 0000:05:00.0 dir=TO_DEVICE dma_addrs={0xfc200000} err=-22 attrs=
";
        let legs = [
            LegSpec {
                leg: "read".into(),
                device: bdf("0000:03:00.0"),
                dir: DmaDir::FromDevice,
                staging: Staging::P2p(bdf("0000:03:00.0")),
                decided: Decided::P2p(MapType::BusAddr),
                refused: false,
                moved: Some(0x80000),
            },
            LegSpec {
                leg: "write".into(),
                device: bdf("0000:04:00.0"),
                dir: DmaDir::ToDevice,
                staging: Staging::P2p(bdf("0000:03:00.0")),
                decided: Decided::P2p(MapType::BusAddr),
                refused: false,
                moved: Some(0x80000),
            },
        ];
        let devices = [bdf("0000:03:00.0"), bdf("0000:04:00.0")];
        let alone = Parsed::from_text(ours, &Formats::new());
        let l: Vec<&str> = ours.lines().collect();
        let o: Vec<&str> = others.lines().collect();
        let mixed_text = [o[0], l[0], o[1], o[2], l[1]].join("\n");
        let mixed = Parsed::from_text(&mixed_text, &Formats::new());
        assert_eq!(mixed.events.len(), 5);
        let a = TraceReport::from_events(&map, &devices, &alone, &legs);
        let b = TraceReport::from_events(&map, &devices, &mixed, &legs);
        for r in [&a, &b] {
            assert_eq!((r.map_events, r.err_events), (2, 0));
            assert_eq!(r.agrees(), Some(true), "{r:?}");
            assert_eq!(r.legs[0].observed, "untranslated");
            assert_eq!((r.legs[0].mappings, r.legs[0].bytes), (1, 0x80000));
            assert_eq!((r.legs[1].mappings, r.legs[1].bytes), (1, 0x80000));
            assert_eq!(r.statement(), "mapped by bus address (observed)");
        }
        assert_eq!(
            serde_json::to_value(&a.legs).unwrap(),
            serde_json::to_value(&b.legs).unwrap()
        );
    }
}
