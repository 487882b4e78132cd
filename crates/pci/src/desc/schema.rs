//! The description file's schema: the TOML tables and what their values
//! mean (device types, class names, link and size syntax, ACS bit names).
//! Nothing here knows about buses, addresses or config space.

use super::Ctx;
use crate::config;
use crate::error::{in_user_terms, Error, Result};
use crate::model::{LinkSpeed, LinkState, PortType};
use crate::raw::RawCpu;
use peerdma_mem::parse_size;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a description: a table with [cpu], [[host_bridge]] and [[device]]"
)]
pub(super) struct DescFile {
    pub version: Option<u32>,
    pub name: Option<String>,
    #[allow(dead_code)]
    pub description: Option<String>,
    pub cmdline: Option<String>,
    pub default_link: Option<String>,
    pub cpu: DescCpu,
    #[serde(rename = "host_bridge", default)]
    pub host_bridges: Vec<toml::Spanned<DescHostBridge>>,
    #[serde(rename = "device", default)]
    pub devices: Vec<toml::Spanned<DescDevice>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [cpu] table with vendor and family"
)]
pub(super) struct DescCpu {
    pub vendor: String,
    pub family: u32,
    #[serde(default)]
    pub model: u32,
    pub model_name: Option<String>,
    pub processors: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a host bridge: a table with a name")]
pub(super) struct DescHostBridge {
    pub name: String,
    pub domain: Option<u32>,
    pub bus: Option<u8>,
    pub numa_node: Option<u32>,
    /// bus address - CPU physical address of BARs below this bridge.
    pub bus_offset: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a class: a number like 0x010802 or a name like \"nvme\""
)]
pub(super) enum NumOrName {
    Num(u32),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected a size: a number of bytes or text like \"256M\""
)]
pub(super) enum SizeSpec {
    Num(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "expected true, false, or a list of ACS bits like [\"rr\", \"cr\"]"
)]
pub(super) enum AcsSpec {
    Flag(bool),
    Bits(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a BAR: a table like { bar = 0, size = \"16K\" }"
)]
pub(super) struct DescBar {
    pub bar: u8,
    pub size: SizeSpec,
    pub bits: Option<u8>,
    pub prefetch: Option<bool>,
    #[serde(default)]
    pub io: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "p2pmem: a table like { bar = 2 }")]
pub(super) struct DescP2p {
    pub bar: u8,
    pub size: Option<SizeSpec>,
    pub offset: Option<SizeSpec>,
    pub available: Option<SizeSpec>,
    pub published: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a device: a table with name, type and parent"
)]
pub(super) struct DescDevice {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub parent: Option<String>,
    pub physfn: Option<String>,
    pub slot: Option<u8>,
    pub function: Option<u8>,
    pub vendor: Option<u16>,
    pub device: Option<u16>,
    pub subsystem_vendor: Option<u16>,
    pub subsystem_device: Option<u16>,
    pub class: Option<NumOrName>,
    pub revision: Option<u8>,
    pub acs: Option<AcsSpec>,
    pub acs_cap: Option<Vec<String>>,
    #[serde(default)]
    pub bars: Vec<DescBar>,
    pub link: Option<String>,
    pub max_link: Option<String>,
    pub numa_node: Option<u32>,
    pub iommu_group: Option<u32>,
    pub driver: Option<String>,
    pub p2pmem: Option<DescP2p>,
}

/// Parse the file, with errors in a reader's terms: what is wrong, on
/// which line, and what was expected.
pub(super) fn parse(text: &str, ctx: &Ctx) -> Result<DescFile> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(text.len());
        toml_error(ctx, text, at, e.message())
    })
}

/// What a value may be, for messages about a missing or malformed one.
const A_VALUE: &str =
    "a value: \"text\", a number, true or false, [a, list] or { an = \"inline table\" }";

fn toml_error(ctx: &Ctx, text: &str, at: usize, message: &str) -> Error {
    let at = at.min(text.len());
    let line = ctx.line(at);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let before = text[line_start..at].trim_end();
    let after = text[at..line_end].trim();
    let message = message.trim();
    let msg = if before.ends_with('=') && (after.is_empty() || after.starts_with('#')) {
        // `key =` at the end of a line or of the file.
        let key = before.trim_end_matches('=').trim();
        format!("'{key}' has no value; expected {A_VALUE}")
    } else if message.is_empty() && at >= text.trim_end().len() {
        "the file ends in the middle of a statement".to_string()
    } else if message.is_empty() {
        "this line is not TOML".to_string()
    } else if message.starts_with("invalid string\nexpected `\"`, `'`") {
        format!("expected {A_VALUE} (text goes in quotes)")
    } else {
        in_user_terms(message)
    };
    ctx.err(Some(line), msg)
}

impl DescCpu {
    /// The `/proc/cpuinfo` view of the CPU.
    pub fn raw(&self) -> RawCpu {
        let vendor_id = match self.vendor.to_ascii_lowercase().as_str() {
            "intel" | "genuineintel" => "GenuineIntel".to_string(),
            "amd" | "authenticamd" => "AuthenticAMD".to_string(),
            "hygon" | "hygongenuine" => "HygonGenuine".to_string(),
            _ => self.vendor.clone(),
        };
        RawCpu {
            vendor_id,
            family: self.family,
            model: self.model,
            model_name: self.model_name.clone().unwrap_or_default(),
            processors: self.processors.unwrap_or(2),
        }
    }
}

/// Class codes by name.
const CLASS_NAMES: &[(&str, u32)] = &[
    ("nvme", 0x010802),
    ("sata", 0x010601),
    ("raid", 0x010400),
    ("ethernet", 0x020000),
    ("infiniband", 0x020700),
    ("network", 0x028000),
    ("vga", 0x030000),
    ("3d", 0x030200),
    ("gpu", 0x030200),
    ("display", 0x038000),
    ("audio", 0x040300),
    ("host_bridge", 0x060000),
    ("isa_bridge", 0x060100),
    ("pci_bridge", 0x060400),
    ("system", 0x088000),
    ("iommu", 0x080600),
    ("usb", 0x0c0330),
    ("smbus", 0x0c0500),
    ("accelerator", 0x120000),
    ("fpga", 0x120000),
    ("coprocessor", 0x0b4000),
    ("unclassified", 0xff0000),
];

impl NumOrName {
    /// The 24-bit class code this `class` value stands for.
    pub fn class_code(&self) -> std::result::Result<u32, String> {
        match self {
            NumOrName::Num(c) if *c <= 0xff_ffff => Ok(*c),
            NumOrName::Num(c) => Err(format!("class {c:#x} is wider than 24 bits")),
            NumOrName::Name(s) => CLASS_NAMES
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(s))
                .map(|(_, c)| *c)
                .ok_or_else(|| {
                    format!(
                        "unknown class '{s}' (known: {}; or give a number like 0x010802)",
                        CLASS_NAMES
                            .iter()
                            .map(|(k, _)| *k)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }),
        }
    }
}

/// A device's `type`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    RootPort,
    SwitchUpstream,
    SwitchDownstream,
    Endpoint,
    LegacyEndpoint,
    RcEndpoint,
    Host,
    PcieToPciBridge,
    PciBridge,
    PciDevice,
}

const KIND_NAMES: &[(&str, Kind)] = &[
    ("root_port", Kind::RootPort),
    ("switch_upstream", Kind::SwitchUpstream),
    ("switch_downstream", Kind::SwitchDownstream),
    ("endpoint", Kind::Endpoint),
    ("legacy_endpoint", Kind::LegacyEndpoint),
    ("rc_endpoint", Kind::RcEndpoint),
    ("host", Kind::Host),
    ("pcie_to_pci_bridge", Kind::PcieToPciBridge),
    ("pci_bridge", Kind::PciBridge),
    ("pci_device", Kind::PciDevice),
];

impl Kind {
    /// The kind a `type` value names, or a message listing the known ones.
    pub fn parse(s: &str) -> std::result::Result<Kind, String> {
        KIND_NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                format!(
                    "unknown type '{s}' (known: {})",
                    KIND_NAMES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
    pub fn port_type(self) -> PortType {
        match self {
            Kind::RootPort => PortType::RootPort,
            Kind::SwitchUpstream => PortType::SwitchUpstream,
            Kind::SwitchDownstream => PortType::SwitchDownstream,
            Kind::Endpoint => PortType::Endpoint,
            Kind::LegacyEndpoint => PortType::LegacyEndpoint,
            Kind::RcEndpoint => PortType::RcEndpoint,
            Kind::Host | Kind::PciDevice => PortType::Conventional,
            Kind::PcieToPciBridge => PortType::PcieToPciBridge,
            Kind::PciBridge => PortType::ConventionalBridge,
        }
    }
    pub fn is_bridge(self) -> bool {
        self.port_type().is_bridge()
    }
    /// A downstream port: its link is the one to the device below it.
    pub fn is_downstream_port(self) -> bool {
        matches!(self, Kind::RootPort | Kind::SwitchDownstream)
    }
    pub fn is_pcie(self) -> bool {
        !matches!(self, Kind::Host | Kind::PciDevice | Kind::PciBridge)
    }
    pub fn has_link(self) -> bool {
        self.is_pcie() && self != Kind::RcEndpoint
    }
    pub fn name(self) -> &'static str {
        KIND_NAMES
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
    /// Which parents this kind may sit below (None = a host bridge).
    pub fn allowed_parents(self) -> &'static [Option<Kind>] {
        match self {
            Kind::RootPort | Kind::RcEndpoint | Kind::Host => &[None],
            Kind::SwitchUpstream
            | Kind::Endpoint
            | Kind::LegacyEndpoint
            | Kind::PcieToPciBridge => &[Some(Kind::RootPort), Some(Kind::SwitchDownstream)],
            Kind::SwitchDownstream => &[Some(Kind::SwitchUpstream)],
            Kind::PciBridge | Kind::PciDevice => {
                &[None, Some(Kind::PciBridge), Some(Kind::PcieToPciBridge)]
            }
        }
    }
    pub fn default_class(self) -> u32 {
        match self {
            Kind::Host => 0x060000,
            k if k.is_bridge() => 0x060400,
            _ => 0xff0000,
        }
    }
    pub fn default_ids(self) -> (u16, u16) {
        match self {
            // QEMU's generic ports, so a description without IDs still reads
            // as something real.
            Kind::RootPort => (0x1b36, 0x000c),
            Kind::SwitchUpstream => (0x104c, 0x8232),
            Kind::SwitchDownstream => (0x104c, 0x8233),
            Kind::Host => (0x8086, 0x29c0),
            Kind::PcieToPciBridge | Kind::PciBridge => (0x1b36, 0x000e),
            _ => (0x1b36, 0x0010),
        }
    }
}

/// `gen4x16`, `Gen4 x16`, `16GT/s x16`, `x8 gen3`.
pub(super) fn parse_link_spec(s: &str) -> Option<LinkState> {
    let t = s.trim().to_ascii_lowercase().replace(' ', "");
    let xi = t.rfind('x')?;
    let (a, b) = t.split_at(xi);
    let width: u8 = b[1..].parse().ok()?;
    let speed = if a.is_empty() {
        return None;
    } else {
        LinkSpeed::parse(a)?
    };
    if !matches!(width, 1 | 2 | 4 | 8 | 12 | 16 | 32) {
        return None;
    }
    Some(LinkState { speed, width })
}

/// A size given as a number or as text like `256M`.
pub(super) fn size_of(spec: &SizeSpec) -> std::result::Result<u64, String> {
    match spec {
        SizeSpec::Num(n) => Ok(*n),
        SizeSpec::Text(t) => parse_size(t).map_err(|e| e.to_string()),
    }
}

/// ACS bits by name (`["rr", "cr"]`).
pub(super) fn acs_bits(names: &[String]) -> std::result::Result<u16, String> {
    let mut bits = 0;
    for n in names {
        let lower = n.to_ascii_lowercase();
        match config::ACS_BIT_NAMES
            .iter()
            .find(|(_, name)| *name == lower)
        {
            Some((b, _)) => bits |= b,
            None => {
                return Err(format!(
                    "unknown ACS bit '{n}' (known: sv, tb, rr, cr, uf, ec, dt)"
                ))
            }
        }
    }
    Ok(bits)
}
