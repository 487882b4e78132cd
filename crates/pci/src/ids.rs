//! Names for vendor, device and class codes, from the pci.ids database
//! (Debian's `pci.ids` package) when it is installed, with built-in class
//! names as a fallback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where distributions put pci.ids.
pub const DEFAULT_PATHS: &[&str] = &[
    "/usr/share/misc/pci.ids",
    "/usr/share/hwdata/pci.ids",
    "/usr/share/pci.ids",
    "/usr/local/share/pci.ids",
];

/// Base classes and common subclasses (PCI Code and ID Assignment spec).
const CLASSES: &[(u16, &str)] = &[
    (0x0000, "Non-VGA unclassified device"),
    (0x0100, "SCSI storage controller"),
    (0x0101, "IDE interface"),
    (0x0104, "RAID bus controller"),
    (0x0106, "SATA controller"),
    (0x0107, "Serial Attached SCSI controller"),
    (0x0108, "Non-Volatile memory controller"),
    (0x0180, "Mass storage controller"),
    (0x0200, "Ethernet controller"),
    (0x0207, "Infiniband controller"),
    (0x0280, "Network controller"),
    (0x0300, "VGA compatible controller"),
    (0x0302, "3D controller"),
    (0x0380, "Display controller"),
    (0x0403, "Audio device"),
    (0x0480, "Multimedia controller"),
    (0x0500, "RAM memory"),
    (0x0600, "Host bridge"),
    (0x0601, "ISA bridge"),
    (0x0604, "PCI bridge"),
    (0x0680, "Bridge"),
    (0x0806, "IOMMU"),
    (0x0880, "System peripheral"),
    (0x0b40, "Co-processor"),
    (0x0c03, "USB controller"),
    (0x0c05, "SMBus"),
    (0x1200, "Processing accelerators"),
    (0x1280, "Processing accelerators"),
    (0xff00, "Unassigned class"),
];

/// A loaded database.
#[derive(Debug, Default, Clone)]
pub struct PciIds {
    vendors: HashMap<u16, (String, HashMap<u16, String>)>,
    classes: HashMap<u16, String>,
    base_classes: HashMap<u8, String>,
    source: Option<PathBuf>,
}

impl PciIds {
    /// Only the built-in class names.
    pub fn builtin() -> PciIds {
        PciIds::default()
    }

    /// The first pci.ids found at [`DEFAULT_PATHS`], or built-in names only.
    pub fn load_default() -> PciIds {
        DEFAULT_PATHS
            .iter()
            .find_map(|p| PciIds::load(Path::new(p)).ok())
            .unwrap_or_default()
    }

    /// Read a pci.ids file.
    pub fn load(path: &Path) -> std::io::Result<PciIds> {
        let bytes = std::fs::read(path)?;
        let mut ids = PciIds::parse(&String::from_utf8_lossy(&bytes));
        ids.source = Some(path.to_path_buf());
        Ok(ids)
    }

    /// Parse pci.ids text. Malformed lines are skipped.
    pub fn parse(text: &str) -> PciIds {
        let mut ids = PciIds::default();
        let mut vendor: Option<u16> = None;
        let mut class: Option<u8> = None;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let hex = |s: &str| u16::from_str_radix(s, 16).ok();
            if let Some(rest) = line.strip_prefix("C ") {
                vendor = None;
                class = rest.get(..2).and_then(|c| u8::from_str_radix(c, 16).ok());
                if let (Some(c), Some(name)) = (class, rest.get(2..)) {
                    ids.base_classes.insert(c, name.trim().to_string());
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("\t\t") {
                let _ = rest; // subsystems and programming interfaces: not needed
                continue;
            }
            if let Some(rest) = line.strip_prefix('\t') {
                let (Some(code), Some(name)) = (rest.get(..4).or(rest.get(..2)), rest.get(4..))
                else {
                    continue;
                };
                if let Some(c) = class {
                    if let Some(sub) = rest.get(..2).and_then(|s| u8::from_str_radix(s, 16).ok()) {
                        if let Some(n) = rest.get(2..) {
                            ids.classes
                                .insert(u16::from(c) << 8 | u16::from(sub), n.trim().to_string());
                        }
                    }
                    continue;
                }
                if let (Some(v), Some(d)) = (vendor, hex(code)) {
                    if let Some(e) = ids.vendors.get_mut(&v) {
                        e.1.insert(d, name.trim().to_string());
                    }
                }
                continue;
            }
            if line.len() > 6 && line.as_bytes()[4] == b' ' {
                class = None;
                vendor = hex(&line[..4]);
                if let Some(v) = vendor {
                    ids.vendors
                        .insert(v, (line[4..].trim().to_string(), HashMap::new()));
                }
            }
        }
        ids
    }

    /// The file the names came from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    pub fn vendor(&self, vendor: u16) -> Option<&str> {
        self.vendors.get(&vendor).map(|v| v.0.as_str())
    }

    pub fn device(&self, vendor: u16, device: u16) -> Option<&str> {
        self.vendors
            .get(&vendor)?
            .1
            .get(&device)
            .map(|s| s.as_str())
    }

    /// The class name for a 24-bit class code (subclass if known, else base).
    pub fn class(&self, class: u32) -> String {
        let sub = (class >> 8) as u16;
        let base = sub & 0xff00;
        if let Some(n) = self.classes.get(&sub) {
            return n.clone();
        }
        if let Some((_, n)) = CLASSES.iter().find(|(c, _)| *c == sub) {
            return (*n).to_string();
        }
        if let Some(n) = self.base_classes.get(&((class >> 16) as u8)) {
            return n.clone();
        }
        match CLASSES.iter().find(|(c, _)| *c == base) {
            Some((_, n)) => (*n).to_string(),
            None => format!("Class {sub:04x}"),
        }
    }

    /// `Vendor Device`, as lspci prints it; IDs where names are unknown.
    pub fn name(&self, vendor: u16, device: u16) -> String {
        match (self.vendor(vendor), self.device(vendor, device)) {
            (Some(v), Some(d)) => format!("{v} {d}"),
            (Some(v), None) => format!("{v} Device {device:04x}"),
            _ => format!("Device {vendor:04x}:{device:04x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# comment\n10de  NVIDIA Corporation\n\t1db4  GV100GL [Tesla V100 PCIe 16GB]\n\t\t10de 1214  Tesla V100 PCIe 16GB\n1de5  Eideticom, Inc\n\t1000  IO Memory Controller\nC 01  Mass storage controller\n\t08  Non-Volatile memory controller\n\t\t02  NVM Express\nC 03  Display controller\n\t02  3D controller\n";

    #[test]
    fn names_from_the_database() {
        let ids = PciIds::parse(SAMPLE);
        assert_eq!(
            ids.name(0x10de, 0x1db4),
            "NVIDIA Corporation GV100GL [Tesla V100 PCIe 16GB]"
        );
        assert_eq!(ids.name(0x10de, 0x9999), "NVIDIA Corporation Device 9999");
        assert_eq!(ids.name(0x1234, 0x5678), "Device 1234:5678");
        assert_eq!(ids.class(0x010802), "Non-Volatile memory controller");
        assert_eq!(ids.class(0x030200), "3D controller");
        assert_eq!(
            ids.class(0x030000),
            "VGA compatible controller",
            "built-in fallback"
        );
        assert_eq!(ids.class(0x01ff00), "Mass storage controller", "base class");
        assert_eq!(ids.class(0x77ee00), "Class 77ee");
    }

    #[test]
    fn builtin_class_names_without_a_database() {
        let ids = PciIds::builtin();
        assert_eq!(ids.class(0x060400), "PCI bridge");
        assert_eq!(ids.name(0x10de, 0x1db4), "Device 10de:1db4");
    }
}
