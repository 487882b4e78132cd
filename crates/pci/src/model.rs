//! The model of a machine's PCI functions.

use crate::config::{self, ConfigSpace};
use crate::raw::{Origin, RawMachine};
use peerdma_mem::{AddrRange, Bdf, BusAddr, BusOffset, PhysAddr};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;

/// Index of a function in a [`Topology`]. Ids come from the topology that
/// owns them ([`Topology::ids`], [`Topology::lookup`], [`Topology::find`],
/// [`Topology::id_at`] and the fields of its functions), not from numbers.
/// Functions are numbered in BDF order from 0.
///
/// An id cannot be made up from outside this crate:
///
/// ```compile_fail
/// let forged = peerdma_pci::FnId(3);
/// ```
///
/// ```
/// let t = peerdma_pci::Source::Preset("workstation".into()).load().unwrap();
/// let id = t.id_at(3).unwrap();
/// assert_eq!(t.function(id).id, id);
/// assert_eq!(t.id_at(t.len()), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(transparent)]
pub struct FnId(u32);

impl FnId {
    pub(crate) fn new(index: usize) -> FnId {
        FnId(index as u32)
    }
    /// The function's position in [`Topology::functions`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of a host bridge (a root bus) in a [`Topology`], from the
/// topology that owns it ([`Topology::host_bridges`] and its functions).
///
/// ```compile_fail
/// let forged = peerdma_pci::HostBridgeId(0);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(transparent)]
pub struct HostBridgeId(u32);

impl HostBridgeId {
    pub(crate) fn new(index: usize) -> HostBridgeId {
        HostBridgeId(index as u32)
    }
    /// Not yet known (while the builder resolves host bridges).
    pub(crate) const UNKNOWN: HostBridgeId = HostBridgeId(u32::MAX);
    /// The host bridge's position in [`Topology::host_bridges`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The PCI Express device/port type (`pci_pcie_type`), or what a function
/// without a PCI Express capability is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortType {
    Endpoint,
    LegacyEndpoint,
    RootPort,
    SwitchUpstream,
    SwitchDownstream,
    /// PCIe-to-PCI/PCI-X bridge.
    PcieToPciBridge,
    /// PCI/PCI-X-to-PCIe bridge.
    PciToPcieBridge,
    /// Root-complex integrated endpoint.
    RcEndpoint,
    /// Root-complex event collector.
    RcEventCollector,
    /// A conventional PCI function (no PCI Express capability).
    Conventional,
    /// A conventional PCI-to-PCI bridge.
    ConventionalBridge,
    /// Not known (capabilities unreadable and not inferable).
    Unknown,
}

impl PortType {
    /// From the 4-bit type field of the PCI Express Capabilities register.
    pub fn from_pcie_code(code: u8) -> PortType {
        match code {
            0x0 => PortType::Endpoint,
            0x1 => PortType::LegacyEndpoint,
            0x4 => PortType::RootPort,
            0x5 => PortType::SwitchUpstream,
            0x6 => PortType::SwitchDownstream,
            0x7 => PortType::PcieToPciBridge,
            0x8 => PortType::PciToPcieBridge,
            0x9 => PortType::RcEndpoint,
            0xa => PortType::RcEventCollector,
            _ => PortType::Unknown,
        }
    }

    /// The 4-bit code, for PCI Express types.
    pub fn pcie_code(self) -> Option<u8> {
        Some(match self {
            PortType::Endpoint => 0x0,
            PortType::LegacyEndpoint => 0x1,
            PortType::RootPort => 0x4,
            PortType::SwitchUpstream => 0x5,
            PortType::SwitchDownstream => 0x6,
            PortType::PcieToPciBridge => 0x7,
            PortType::PciToPcieBridge => 0x8,
            PortType::RcEndpoint => 0x9,
            PortType::RcEventCollector => 0xa,
            _ => return None,
        })
    }

    /// Whether the function forwards to a secondary bus.
    pub fn is_bridge(self) -> bool {
        matches!(
            self,
            PortType::RootPort
                | PortType::SwitchUpstream
                | PortType::SwitchDownstream
                | PortType::PcieToPciBridge
                | PortType::PciToPcieBridge
                | PortType::ConventionalBridge
        )
    }

    /// Whether a link below this function leads to a separate device (root
    /// and downstream ports).
    pub fn is_downstream_port(self) -> bool {
        matches!(self, PortType::RootPort | PortType::SwitchDownstream)
    }

    /// A short name for people.
    pub fn name(self) -> &'static str {
        match self {
            PortType::Endpoint => "endpoint",
            PortType::LegacyEndpoint => "legacy endpoint",
            PortType::RootPort => "root port",
            PortType::SwitchUpstream => "switch upstream port",
            PortType::SwitchDownstream => "switch downstream port",
            PortType::PcieToPciBridge => "PCIe-to-PCI bridge",
            PortType::PciToPcieBridge => "PCI-to-PCIe bridge",
            PortType::RcEndpoint => "root complex integrated endpoint",
            PortType::RcEventCollector => "root complex event collector",
            PortType::Conventional => "conventional PCI function",
            PortType::ConventionalBridge => "PCI-to-PCI bridge",
            PortType::Unknown => "function of unknown type",
        }
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A function's Access Control Services, as read from config space.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Acs {
    /// The function has no ACS capability.
    Absent,
    /// The ACS extended capability at `offset`, with its capability and
    /// control registers.
    Present { offset: u16, cap: u16, ctrl: u16 },
    /// The capture does not show extended capabilities (unprivileged read,
    /// or a source that records no config space, like hwloc XML).
    Unknown,
    /// Not read: the ACS control the user told peerdma to assume for a
    /// function whose ACS state is unknown (`--assume-acs`, see
    /// [`AcsAssumption`]).
    Assumed { ctrl: u16 },
}

impl Acs {
    /// The kernel's `pci_bridge_has_acs_redir`: ACS control has RR, CR or EC
    /// set. `None` when unknown.
    pub fn redirects(&self) -> Option<bool> {
        match self {
            Acs::Absent => Some(false),
            Acs::Present { ctrl, .. } | Acs::Assumed { ctrl } => {
                Some(config::acs_ctrl_redirects(*ctrl))
            }
            Acs::Unknown => None,
        }
    }

    /// Control bits, when present (or assumed).
    pub fn ctrl(&self) -> Option<u16> {
        match self {
            Acs::Present { ctrl, .. } | Acs::Assumed { ctrl } => Some(*ctrl),
            _ => None,
        }
    }

    /// Whether the state was read from the capture (not unknown, not
    /// assumed).
    pub fn is_known(&self) -> bool {
        matches!(self, Acs::Absent | Acs::Present { .. })
    }
}

/// What to take for the ACS state of functions whose config space the
/// capture does not show (`--assume-acs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AcsAssumption {
    /// No redirect anywhere: what the verdicts assume unless told otherwise.
    #[default]
    None,
    /// What an IOMMU driver's request for ACS (`pci_request_acs`) makes the
    /// kernel's `pci_std_enable_acs` set on every function with an ACS
    /// capability: Source Validation, P2P Request and Completion Redirect
    /// and Upstream Forwarding, as far as the capability offers them.
    /// peerdma assumes that root ports and switch downstream ports have
    /// the capability with all four bits, and that other functions
    /// (switch upstream ports, endpoints, multi-function devices,
    /// PCI bridges) have none.
    Iommu,
}

impl AcsAssumption {
    pub fn parse(s: &str) -> Option<AcsAssumption> {
        match s {
            "none" => Some(AcsAssumption::None),
            "iommu" => Some(AcsAssumption::Iommu),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            AcsAssumption::None => "none",
            AcsAssumption::Iommu => "iommu",
        }
    }
    /// The other choice.
    pub fn other(self) -> AcsAssumption {
        match self {
            AcsAssumption::None => AcsAssumption::Iommu,
            AcsAssumption::Iommu => AcsAssumption::None,
        }
    }
    /// What it assumes, for people.
    pub fn describe(self) -> &'static str {
        match self {
            AcsAssumption::None => "no ACS redirect",
            AcsAssumption::Iommu => {
                "ACS redirect on root ports and switch downstream ports, as the kernel sets it when an IOMMU driver is on"
            }
        }
    }
    /// The ACS control the assumption gives a function of this type.
    pub fn ctrl_for(self, port_type: PortType) -> u16 {
        match (self, port_type) {
            (AcsAssumption::Iommu, PortType::RootPort | PortType::SwitchDownstream) => {
                config::ACS_SV | config::ACS_RR | config::ACS_CR | config::ACS_UF
            }
            _ => 0,
        }
    }
}

/// A link generation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub enum LinkSpeed {
    #[serde(rename = "2.5GT/s")]
    Gen1,
    #[serde(rename = "5GT/s")]
    Gen2,
    #[serde(rename = "8GT/s")]
    Gen3,
    #[serde(rename = "16GT/s")]
    Gen4,
    #[serde(rename = "32GT/s")]
    Gen5,
    #[serde(rename = "64GT/s")]
    Gen6,
}

impl LinkSpeed {
    pub const ALL: [LinkSpeed; 6] = [
        LinkSpeed::Gen1,
        LinkSpeed::Gen2,
        LinkSpeed::Gen3,
        LinkSpeed::Gen4,
        LinkSpeed::Gen5,
        LinkSpeed::Gen6,
    ];

    /// From the Link Status / Link Capabilities speed code (1 = 2.5 GT/s).
    pub fn from_code(code: u8) -> Option<LinkSpeed> {
        LinkSpeed::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }
    pub fn code(self) -> u8 {
        self as u8 + 1
    }
    pub fn generation(self) -> u8 {
        self.code()
    }
    /// Transfers per second per lane, in GT/s.
    pub fn gts(self) -> f64 {
        [2.5, 5.0, 8.0, 16.0, 32.0, 64.0][self as usize]
    }
    /// Payload-bearing bits per lane per second after line encoding
    /// (8b/10b up to 5 GT/s, 128b/130b for 8-32 GT/s, 242B/256B FLITs at 64 GT/s).
    pub fn lane_bits_per_sec(self) -> f64 {
        let gts = self.gts() * 1e9;
        match self {
            LinkSpeed::Gen1 | LinkSpeed::Gen2 => gts * 8.0 / 10.0,
            LinkSpeed::Gen3 | LinkSpeed::Gen4 | LinkSpeed::Gen5 => gts * 128.0 / 130.0,
            LinkSpeed::Gen6 => gts * 242.0 / 256.0,
        }
    }
    /// Parse sysfs's `8.0 GT/s PCIe`, or `8GT/s`, `8`, `gen3`.
    pub fn parse(s: &str) -> Option<LinkSpeed> {
        let t = s.trim().to_ascii_lowercase();
        if let Some(g) = t.strip_prefix("gen") {
            return g.parse::<u8>().ok().and_then(LinkSpeed::from_code);
        }
        let num: String = t
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let v: f64 = num.parse().ok()?;
        LinkSpeed::ALL
            .into_iter()
            .find(|s| (s.gts() - v).abs() < 0.01)
    }
}

impl fmt::Display for LinkSpeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}GT/s", self.gts())
    }
}

/// Speed and width of a link.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct LinkState {
    pub speed: LinkSpeed,
    pub width: u8,
}

impl LinkState {
    /// Raw data rate in bytes per second after line encoding (before
    /// packet overhead).
    pub fn bytes_per_sec(&self) -> f64 {
        self.speed.lane_bits_per_sec() * f64::from(self.width) / 8.0
    }
}

impl LinkState {
    /// The generations and widths (x1, x2, x4, x8, x12, x16, x32) whose
    /// data rate is `bytes_per_sec`, within 0.1%: hwloc records a link as
    /// that rate alone, and rates repeat (Gen3 x16 = Gen4 x8 = Gen5 x4).
    pub fn candidates(bytes_per_sec: f64) -> Vec<LinkState> {
        let mut out = Vec::new();
        if !(bytes_per_sec.is_finite() && bytes_per_sec > 0.0) {
            return out;
        }
        for speed in LinkSpeed::ALL {
            for width in [1u8, 2, 4, 8, 12, 16, 32] {
                let s = LinkState { speed, width };
                if ((s.bytes_per_sec() - bytes_per_sec) / bytes_per_sec).abs() < 1e-3 {
                    out.push(s);
                }
            }
        }
        out
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gen{} x{}", self.speed.generation(), self.width)
    }
}

/// A function's PCIe link: as negotiated now, and the most it can do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize)]
pub struct Link {
    pub current: Option<LinkState>,
    pub max: Option<LinkState>,
    /// The current link's data rate in bytes per second, when the capture
    /// gives only that and not which generation and width make it (hwloc's
    /// `pci_link_speed`: [`LinkState::candidates`] lists what it can be).
    pub current_rate: Option<u64>,
}

impl Link {
    /// The current link's data rate after line encoding, from its
    /// generation and width, else from the rate the capture gave.
    pub fn current_bytes_per_sec(&self) -> Option<f64> {
        self.current
            .map(|c| c.bytes_per_sec())
            .or(self.current_rate.map(|r| r as f64))
    }

    /// The current link for people: `Gen3 x16`, else the rate and what it
    /// can be (`15.75 GB/s (Gen3 x16 or Gen4 x8 or Gen5 x4)`).
    pub fn describe_current(&self) -> Option<String> {
        if let Some(c) = self.current {
            return Some(c.to_string());
        }
        let r = self.current_rate? as f64;
        let c: Vec<String> = LinkState::candidates(r)
            .iter()
            .map(|s| s.to_string())
            .collect();
        Some(if c.is_empty() {
            format!("{:.2} GB/s", r / 1e9)
        } else {
            format!("{:.2} GB/s ({})", r / 1e9, c.join(" or "))
        })
    }

    /// Whether the link trained below what both ends... what this end can do.
    pub fn degraded(&self) -> bool {
        match (self.current, self.max) {
            (Some(c), Some(m)) => c.speed < m.speed || c.width < m.width,
            _ => false,
        }
    }
}

/// A memory or I/O BAR.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct Bar {
    pub index: u8,
    /// CPU physical range (from `resource`).
    pub phys: AddrRange<PhysAddr>,
    /// Bus address programmed in config space, when visible.
    pub bus: Option<BusAddr>,
    pub io: bool,
    pub prefetchable: bool,
    pub is64: bool,
}

impl Bar {
    /// `bus - phys` for this BAR, identity when the bus address is not
    /// visible (x86 host bridges do not translate).
    pub fn bus_offset(&self) -> BusOffset {
        self.bus
            .and_then(|b| BusOffset::between(b, self.phys.start()))
            .unwrap_or(BusOffset::IDENTITY)
    }
}

/// The `p2pmem/` state of a provider.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct P2pMem {
    pub size: u64,
    pub available: u64,
    pub published: bool,
}

/// CPU vendor as the kernel's x86 vendor detection sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuVendor {
    Intel,
    Amd,
    Hygon,
    Other,
}

/// The boot CPU.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Cpu {
    pub vendor: CpuVendor,
    pub vendor_id: String,
    pub family: u32,
    pub model: u32,
    pub model_name: String,
}

impl Cpu {
    /// The kernel's `cpu_supports_p2pdma`: an AMD CPU of family 0x17 (Zen)
    /// or newer forwards peer traffic between its root ports.
    pub fn supports_p2pdma(&self) -> bool {
        self.vendor == CpuVendor::Amd && self.family >= 0x17
    }
}

/// One PCI function.
#[derive(Clone, Debug, Serialize)]
pub struct Function {
    pub id: FnId,
    pub bdf: Bdf,
    /// Directory relative to `sys/devices`.
    pub path: String,
    pub vendor: u16,
    pub device: u16,
    pub subsystem: Option<(u16, u16)>,
    pub class: u32,
    pub revision: u8,
    pub multifunction: bool,
    pub port_type: PortType,
    /// True when `port_type` was inferred from the tree rather than read.
    pub port_type_inferred: bool,
    /// `pci_upstream_bridge`: the bridge above this function (for a virtual
    /// function, above its physical function); `None` on a root bus.
    pub upstream: Option<FnId>,
    /// Functions whose upstream bridge this is, in BDF order.
    pub children: Vec<FnId>,
    /// The physical function of an SR-IOV virtual function.
    pub physfn: Option<FnId>,
    pub host_bridge: HostBridgeId,
    pub acs: Acs,
    /// Secondary and subordinate bus of a bridge.
    pub bridge_buses: Option<(u8, u8)>,
    pub bars: Vec<Bar>,
    pub link: Option<Link>,
    pub numa_node: Option<u32>,
    pub iommu_group: Option<u32>,
    pub driver: Option<String>,
    pub p2pmem: Option<P2pMem>,
    /// A name from a description file or the firmware's `label`, or the
    /// first of its OS devices (hwloc XML).
    pub label: Option<String>,
    /// Vendor and device names the capture gave (hwloc XML's PCIVendor and
    /// PCIDevice), for where no pci.ids database knows the IDs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// Names the operating system gave the device (`nvme0n1`, `mlx5_0`,
    /// `eth0`, `nvml0`), as hwloc XML lists them; [`Topology::lookup`]
    /// finds the function by any of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub os_devices: Vec<String>,
    #[serde(skip)]
    pub config: ConfigSpace,
}

impl Function {
    pub fn is_bridge(&self) -> bool {
        self.port_type.is_bridge()
    }
    pub fn base_class(&self) -> u8 {
        (self.class >> 16) as u8
    }
    /// Whether this is a function that moves data (not a bridge, host
    /// bridge or other system glue).
    pub fn is_dma_endpoint(&self) -> bool {
        !self.is_bridge()
            && !matches!(self.base_class(), 0x06 | 0x08)
            && self.port_type != PortType::RcEventCollector
    }
    /// The largest memory BAR.
    pub fn largest_memory_bar(&self) -> Option<&Bar> {
        self.bars
            .iter()
            .filter(|b| !b.io)
            .max_by_key(|b| b.phys.len())
    }
}

/// A host bridge: one root bus.
#[derive(Clone, Debug, Serialize)]
pub struct HostBridge {
    pub id: HostBridgeId,
    /// `pciDDDD:BB`, as sysfs names it.
    pub name: String,
    /// Directory relative to `sys/devices`.
    pub path: String,
    pub domain: u32,
    pub bus: u8,
    /// Functions on the root bus, in the order the kernel lists them
    /// (ascending devfn, as enumeration adds them).
    pub root_functions: Vec<FnId>,
    pub numa_node: Option<u32>,
    /// The capture may leave out the function that stands for this host
    /// bridge (hwloc drops host bridge functions unless `lstopo
    /// --whole-io`): none of its root functions is 00.0, so which device
    /// the kernel's whitelist would see is unknown.
    pub device_not_captured: bool,
}

/// A machine's PCI topology.
#[derive(Clone, Debug)]
pub struct Topology {
    pub(crate) functions: Vec<Function>,
    pub(crate) by_bdf: HashMap<Bdf, FnId>,
    pub(crate) host_bridges: Vec<HostBridge>,
    pub(crate) cpu: Cpu,
    pub(crate) origin: Origin,
    pub(crate) notes: Vec<String>,
    pub(crate) raw: RawMachine,
    /// The snapshot file this model was replayed from, if it was.
    pub(crate) snapshot: Option<std::path::PathBuf>,
    /// What unknown ACS states were taken to be.
    pub(crate) acs_assumption: AcsAssumption,
}

impl Topology {
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }
    pub fn function(&self, id: FnId) -> &Function {
        &self.functions[id.index()]
    }
    pub fn len(&self) -> usize {
        self.functions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }
    pub fn ids(&self) -> impl ExactSizeIterator<Item = FnId> + '_ {
        (0..self.functions.len()).map(FnId::new)
    }
    /// The id of the function at `index` in [`Topology::functions`].
    pub fn id_at(&self, index: usize) -> Option<FnId> {
        (index < self.functions.len()).then(|| FnId::new(index))
    }
    pub fn host_bridges(&self) -> &[HostBridge] {
        &self.host_bridges
    }
    pub fn host_bridge(&self, id: HostBridgeId) -> &HostBridge {
        &self.host_bridges[id.index()]
    }
    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
    /// Caveats about the capture (unreadable registers, inferred types).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
    /// The capture this model was built from (what `snapshot` writes).
    pub fn raw(&self) -> &RawMachine {
        &self.raw
    }
    /// A short description of the source for messages: the snapshot file
    /// (with what it was captured from), else the directory or preset.
    pub fn origin_label(&self) -> String {
        let captured = match self.origin.kind.as_str() {
            "preset" => format!("preset '{}'", self.origin.detail),
            "sysfs" if self.origin.detail == "/" => "this machine's sysfs".into(),
            "sysfs" => format!("root {}", self.origin.detail),
            _ => self.origin.detail.clone(),
        };
        match &self.snapshot {
            Some(p) => format!("{} (a snapshot of {captured})", p.display()),
            None => captured,
        }
    }

    /// The kernel command line of the captured machine, when the capture
    /// records it (`/proc/cmdline`).
    pub fn cmdline(&self) -> Option<crate::cmdline::KernelCmdline> {
        self.origin
            .cmdline
            .as_deref()
            .map(crate::cmdline::KernelCmdline::parse)
    }

    /// The IOMMU units the kernel registered (`/sys/class/iommu`), when
    /// the capture records them.
    pub fn iommu_units(&self) -> Option<&[String]> {
        self.raw.iommu_units.as_deref()
    }

    /// Whether an IOMMU driver was on in the captured machine (and so, at
    /// boot, asked the PCI core to enable ACS: `pci_request_acs()`): from
    /// the IOMMU units the capture lists, else from IOMMU groups (every
    /// function gets one when a driver is on). `None` where the capture
    /// cannot tell (no sysfs behind it: hwloc XML, descriptions, presets
    /// without IOMMU groups).
    pub fn iommu_on(&self) -> Option<bool> {
        if let Some(u) = self.iommu_units() {
            return Some(!u.is_empty());
        }
        if self.functions.iter().any(|f| f.iommu_group.is_some()) {
            return Some(true);
        }
        (self.origin.kind == "sysfs").then_some(false)
    }

    /// The snapshot file this model was replayed from, if it was.
    pub fn snapshot(&self) -> Option<&std::path::Path> {
        self.snapshot.as_deref()
    }

    pub fn find(&self, bdf: Bdf) -> Option<FnId> {
        self.by_bdf.get(&bdf).copied()
    }

    /// Look a function up by BDF (`0000:01:00.0` or `01:00.0`) or by its
    /// description-file name, with a clear error naming what exists.
    pub fn lookup(&self, what: &str) -> crate::Result<FnId> {
        if let Ok(bdf) = what.parse::<Bdf>() {
            if let Some(id) = self.find(bdf) {
                return Ok(id);
            }
        }
        if let Some(f) = self.functions.iter().find(|f| {
            f.label
                .as_deref()
                .is_some_and(|l| l.eq_ignore_ascii_case(what))
        }) {
            return Ok(f.id);
        }
        if let Some(f) = self
            .functions
            .iter()
            .find(|f| f.os_devices.iter().any(|d| d == what))
        {
            return Ok(f.id);
        }
        let hint = match what.parse::<Bdf>() {
            Err(e) if !self.functions.iter().any(|f| f.label.is_some()) => e.to_string(),
            _ => {
                let near: Vec<String> = self
                    .functions
                    .iter()
                    .filter(|f| {
                        what.parse::<Bdf>()
                            .map(|b| b.bus() == f.bdf.bus() && b.domain() == f.bdf.domain())
                            .unwrap_or(false)
                    })
                    .take(6)
                    .map(|f| f.bdf.to_string())
                    .collect();
                if near.is_empty() {
                    format!(
                        "it has {} functions; `peerdma topo` lists them",
                        self.functions.len()
                    )
                } else {
                    format!("on that bus there are {}", near.join(", "))
                }
            }
        };
        Err(crate::Error::NoSuchFunction {
            origin: self.origin_label(),
            asked: what.to_string(),
            hint,
        })
    }

    /// The bridges from `id` up to the root bus, nearest first (not
    /// including `id`).
    pub fn ancestors(&self, id: FnId) -> impl Iterator<Item = FnId> + '_ {
        std::iter::successors(self.function(id).upstream, move |&u| {
            self.function(u).upstream
        })
    }

    /// The device that stands for a host bridge in the kernel's whitelist
    /// (`pci_host_bridge_dev`): the first function on the root bus if it is
    /// devfn 00.0 or a root port.
    ///
    /// `None` also where the capture may have left that function out
    /// ([`HostBridge::device_not_captured`]).
    pub fn host_bridge_device(&self, hb: HostBridgeId) -> Option<FnId> {
        if self.host_bridge(hb).device_not_captured {
            return None;
        }
        let first = *self.host_bridge(hb).root_functions.first()?;
        let f = self.function(first);
        (f.bdf.devfn() == 0 || f.port_type == PortType::RootPort).then_some(first)
    }

    /// What functions whose ACS state the capture does not show are taken
    /// to have ([`AcsAssumption`]).
    pub fn acs_assumption(&self) -> AcsAssumption {
        self.acs_assumption
    }

    /// Whether some function's ACS state is not in the capture.
    pub fn has_unknown_acs(&self) -> bool {
        self.functions.iter().any(|f| !f.acs.is_known())
    }

    /// Take `a` for every function whose ACS state the capture does not
    /// show: under [`AcsAssumption::Iommu`] those that could have the
    /// capability get [`Acs::Assumed`] with the bits the kernel would set,
    /// the others stay [`Acs::Unknown`] (no redirect).
    pub fn assume_acs(&mut self, a: AcsAssumption) {
        for f in &mut self.functions {
            if matches!(f.acs, Acs::Unknown | Acs::Assumed { .. }) {
                f.acs = match a.ctrl_for(f.port_type) {
                    0 => Acs::Unknown,
                    ctrl => Acs::Assumed { ctrl },
                };
            }
        }
        self.acs_assumption = a;
    }

    /// A copy with unknown ACS states taken as `a`.
    pub fn with_acs_assumption(&self, a: AcsAssumption) -> Topology {
        let mut t = self.clone();
        t.assume_acs(a);
        t
    }

    /// Why the ACS states this capture does not show are unknown, for
    /// messages.
    pub fn acs_unknown_reason(&self) -> &'static str {
        if self.origin.kind == "hwloc" {
            "hwloc XML records no config space"
        } else {
            "config space beyond 64 bytes needs root"
        }
    }

    /// Change a function's ACS control register (for what-if analysis).
    /// Adds an ACS capability if the function had none.
    pub fn set_acs_ctrl(&mut self, id: FnId, ctrl: u16) {
        let f = &mut self.functions[id.index()];
        f.acs = match f.acs {
            Acs::Present { offset, cap, .. } => Acs::Present { offset, cap, ctrl },
            _ => Acs::Present {
                offset: 0,
                cap: ctrl,
                ctrl,
            },
        };
    }

    /// Move a leaf function (no children) below `new_parent`, as if it were
    /// plugged into that port (for what-if analysis).
    pub fn move_leaf(&mut self, id: FnId, new_parent: FnId) -> bool {
        if !self.function(id).children.is_empty() || id == new_parent {
            return false;
        }
        if let Some(old) = self.function(id).upstream {
            self.functions[old.index()].children.retain(|&c| c != id);
        } else {
            let hb = self.function(id).host_bridge;
            self.host_bridges[hb.index()]
                .root_functions
                .retain(|&c| c != id);
        }
        let hb = self.function(new_parent).host_bridge;
        let numa = self.function(new_parent).numa_node;
        let f = &mut self.functions[id.index()];
        f.upstream = Some(new_parent);
        f.host_bridge = hb;
        f.numa_node = numa;
        self.functions[new_parent.index()].children.push(id);
        true
    }
}
