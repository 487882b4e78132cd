//! Names for vendor, device and class codes, from the PCI ID Repository's
//! `pci.ids` database.
//!
//! peerdma carries its own copy (the vendor, device and class lines of
//! Debian's `pci.ids` package, compressed into the library: see
//! `crates/pci/data/README.md`), so names show on a machine with no
//! database installed (a container, a minimal server, CI). The system's
//! file wins when it is present and at least as new as the built-in copy,
//! by the dates in their headers ([`PciIds::load_default`]). Class names
//! for the common classes are built in besides, for a file that lacks them.
//!
//! ```
//! use peerdma_pci::ids::PciIds;
//! let ids = PciIds::embedded();
//! assert_eq!(ids.vendor(0x10de), Some("NVIDIA Corporation"));
//! assert_eq!(ids.class(0x010802), "Non-Volatile memory controller");
//! assert!(ids.date().is_some());
//! ```

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

/// The built-in copy of pci.ids (vendors, devices, classes), gzip
/// compressed; `cargo xtask pci-ids` writes it from Debian's package.
const EMBEDDED_GZ: &[u8] = include_bytes!("../data/pci.ids.gz");

/// The date a pci.ids file gives in its header (`#\tDate: 2023-04-10
/// 20:08:02`, else `#\tVersion: 2023.04.10`): year, month, day.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct IdsDate {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl std::fmt::Display for IdsDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl IdsDate {
    /// `2023-04-10 20:08:02`, `2023-04-10` or `2023.04.10`.
    fn parse(s: &str) -> Option<IdsDate> {
        let day_part = s.split_whitespace().next()?;
        let mut it = day_part.split(['-', '.']);
        let year = it.next()?.parse().ok()?;
        let month = it.next()?.parse().ok()?;
        let day = it.next()?.parse().ok()?;
        ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some(IdsDate {
            year,
            month,
            day,
        })
    }
}

/// Where a database's names came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IdsSource {
    /// No database: the built-in class names only.
    #[default]
    ClassesOnly,
    /// The copy built into peerdma.
    Embedded,
    /// A file.
    File(PathBuf),
}

/// A loaded database.
#[derive(Debug, Default, Clone)]
pub struct PciIds {
    vendors: HashMap<u16, (String, HashMap<u16, String>)>,
    classes: HashMap<u16, String>,
    base_classes: HashMap<u8, String>,
    source: IdsSource,
    version: Option<String>,
    date: Option<IdsDate>,
}

impl PciIds {
    /// Only the built-in class names.
    pub fn builtin() -> PciIds {
        PciIds::default()
    }

    /// The copy of pci.ids built into peerdma.
    pub fn embedded() -> PciIds {
        let mut text = String::new();
        let read = std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(EMBEDDED_GZ),
            &mut text,
        );
        // The bytes are part of this library and a test decodes them; a
        // failure here would leave class names only, never a panic.
        let mut ids = match read {
            Ok(_) => PciIds::parse(&text),
            Err(_) => return PciIds::builtin(),
        };
        ids.source = IdsSource::Embedded;
        ids
    }

    /// The names a machine should use: the system's pci.ids (the first of
    /// [`DEFAULT_PATHS`] that exists) when it is at least as new as the
    /// built-in copy, else the built-in copy.
    pub fn load_default() -> PciIds {
        let paths: Vec<PathBuf> = DEFAULT_PATHS.iter().map(PathBuf::from).collect();
        PciIds::load_preferring(&paths)
    }

    /// [`PciIds::load_default`] with the system's database looked for at
    /// `paths` (the first that reads): it wins over the built-in copy when
    /// its header's date is the same or later. A file without a date loses.
    pub fn load_preferring(paths: &[PathBuf]) -> PciIds {
        let embedded = PciIds::embedded();
        let system = paths.iter().find_map(|p| PciIds::load(p).ok());
        match system {
            Some(s) if s.date.is_some() && s.date >= embedded.date => s,
            _ => embedded,
        }
    }

    /// Read a pci.ids file.
    pub fn load(path: &Path) -> std::io::Result<PciIds> {
        let bytes = std::fs::read(path)?;
        let mut ids = PciIds::parse(&String::from_utf8_lossy(&bytes));
        ids.source = IdsSource::File(path.to_path_buf());
        Ok(ids)
    }

    /// Parse pci.ids text. Malformed lines are skipped.
    pub fn parse(text: &str) -> PciIds {
        let mut ids = PciIds::default();
        let mut vendor: Option<u16> = None;
        let mut class: Option<u8> = None;
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix('#') {
                // The header: `#\tVersion: 2023.04.10`, `#\tDate:    2023-04-10 20:08:02`.
                let comment = comment.trim();
                if let Some(v) = comment.strip_prefix("Version:") {
                    ids.version.get_or_insert_with(|| v.trim().to_string());
                    if ids.date.is_none() {
                        ids.date = IdsDate::parse(v.trim());
                    }
                } else if let Some(d) = comment.strip_prefix("Date:") {
                    if let Some(d) = IdsDate::parse(d.trim()) {
                        ids.date = Some(d);
                    }
                }
                continue;
            }
            if line.trim().is_empty() {
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

    /// Where the names came from.
    pub fn source(&self) -> &IdsSource {
        &self.source
    }

    /// The database's version as its header gives it (`2023.04.10`).
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The database's date from its header.
    pub fn date(&self) -> Option<IdsDate> {
        self.date
    }

    /// For people: `built-in pci.ids 2023.04.10`, `/usr/share/misc/pci.ids
    /// 2024.01.01`, or `built-in class names only`.
    pub fn describe_source(&self) -> String {
        let v = self
            .version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        match &self.source {
            IdsSource::ClassesOnly => "built-in class names only".into(),
            IdsSource::Embedded => format!("built-in pci.ids{v}"),
            IdsSource::File(p) => format!("{}{v}", p.display()),
        }
    }

    /// Number of vendors known.
    pub fn vendor_count(&self) -> usize {
        self.vendors.len()
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

    fn file(dir: &Path, name: &str, date: &str) -> PathBuf {
        let p = dir.join(name);
        let text = format!("#\n#\tList of PCI ID's\n#\n#\tVersion: {}\n#\tDate:    {date} 03:15:02\n#\n10de  NVIDIA (from {name})\n", date.replace('-', "."));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_header_gives_version_and_date() {
        let ids = PciIds::parse("#\tVersion: 2023.04.10\n#\tDate:    2023-04-10 20:08:02\n");
        assert_eq!(ids.version(), Some("2023.04.10"));
        assert_eq!(ids.date().unwrap().to_string(), "2023-04-10");
        // Only a version: the date comes from it.
        let ids = PciIds::parse("#\tVersion: 2024.01.31\n");
        assert_eq!(ids.date().unwrap().to_string(), "2024-01-31");
        assert_eq!(PciIds::parse("10de  NVIDIA\n").date(), None);
        assert_eq!(IdsDate::parse("2024-13-01"), None);
    }

    #[test]
    fn the_embedded_copy_decodes_and_names_what_the_presets_hold() {
        let ids = PciIds::embedded();
        assert_eq!(ids.source(), &IdsSource::Embedded);
        assert!(ids.vendor_count() > 1000, "{}", ids.vendor_count());
        assert!(ids.date().is_some() && ids.version().is_some());
        assert!(ids.describe_source().starts_with("built-in pci.ids 20"));
        for p in crate::presets::PRESETS {
            let t = crate::Source::Preset(p.name.into()).load().unwrap();
            for f in t.functions() {
                assert!(
                    ids.vendor(f.vendor).is_some(),
                    "{}: {} vendor {:04x} has no name",
                    p.name,
                    f.bdf,
                    f.vendor
                );
            }
        }
        assert_eq!(
            ids.name(0x10de, 0x1db4),
            "NVIDIA Corporation GV100GL [Tesla V100 PCIe 16GB]"
        );
    }

    #[test]
    fn the_system_database_wins_only_when_present_and_not_older() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = PciIds::embedded().date().unwrap();
        let newer = format!("{}-12-31", embedded.year + 1);
        let older = format!("{}-01-01", embedded.year - 1);
        let missing = dir.path().join("missing.ids");
        // No system file: the built-in copy.
        let ids = PciIds::load_preferring(std::slice::from_ref(&missing));
        assert_eq!(ids.source(), &IdsSource::Embedded);
        assert!(ids.vendor(0x10de).is_some());
        // A newer one wins; the first of the paths that reads is the system's.
        let n = file(dir.path(), "newer.ids", &newer);
        let ids = PciIds::load_preferring(&[missing.clone(), n.clone()]);
        assert_eq!(ids.source(), &IdsSource::File(n));
        assert_eq!(ids.vendor(0x10de), Some("NVIDIA (from newer.ids)"));
        // An older one does not.
        let o = file(dir.path(), "older.ids", &older);
        let ids = PciIds::load_preferring(&[o]);
        assert_eq!(ids.source(), &IdsSource::Embedded);
        // Nor one without a date in its header.
        let undated = dir.path().join("undated.ids");
        std::fs::write(&undated, "10de  Mystery\n").unwrap();
        assert_eq!(
            PciIds::load_preferring(&[undated]).source(),
            &IdsSource::Embedded
        );
    }

    #[test]
    fn builtin_class_names_without_a_database() {
        let ids = PciIds::builtin();
        assert_eq!(ids.class(0x060400), "PCI bridge");
        assert_eq!(ids.name(0x10de, 0x1db4), "Device 10de:1db4");
    }
}
