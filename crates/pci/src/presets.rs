//! Built-in machines, written as description files and compiled in. The
//! first is the embedded default.

use crate::error::{Error, Result};
use crate::raw::RawMachine;

/// A built-in machine.
pub struct Preset {
    pub name: &'static str,
    pub summary: &'static str,
    pub text: &'static str,
}

/// All presets; the first is the default.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "dual-xeon",
        summary: "dual-socket Intel Xeon server: PCIe switches with GPUs, NVMe drives with CMBs and NICs",
        text: include_str!("../presets/dual-xeon.toml"),
    },
    Preset {
        name: "epyc",
        summary: "AMD EPYC server: four root complexes, GPUs and NVMe on root ports and on a Gen4 switch",
        text: include_str!("../presets/epyc.toml"),
    },
    Preset {
        name: "gpu-storage-16",
        summary: "two-socket AMD EPYC server with 8 GPUs and 8 NVMe drives on four Gen5 switches (load studies)",
        text: include_str!("../presets/gpu-storage-16.toml"),
    },
    Preset {
        name: "workstation",
        summary: "Intel desktop workstation: GPU and NVMe drives on separate root ports (P2P not supported)",
        text: include_str!("../presets/workstation.toml"),
    },
];

/// The name of the embedded default machine.
pub const DEFAULT: &str = "dual-xeon";

/// A preset's capture by name.
pub fn load(name: &str) -> Result<RawMachine> {
    let p = PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        Error::parse(
            format!("preset '{name}'"),
            None,
            format!(
                "no such preset; built-in presets are: {}",
                PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    crate::desc::parse_preset(p.text, p.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Topology;

    #[test]
    fn every_preset_builds() {
        for p in PRESETS {
            let raw = load(p.name).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            let t = Topology::from_raw(raw, p.name).unwrap_or_else(|e| panic!("{}: {e}", p.name));
            assert!(t.len() > 10, "{}", p.name);
            assert!(t.notes().is_empty(), "{}: {:?}", p.name, t.notes());
            for f in t.functions() {
                assert!(f.label.is_some());
                assert_ne!(
                    f.port_type,
                    crate::PortType::Unknown,
                    "{} {}",
                    p.name,
                    f.bdf
                );
            }
        }
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let e = load("nope").unwrap_err().to_string();
        assert!(
            e.contains("dual-xeon") && e.contains("epyc") && e.contains("workstation"),
            "{e}"
        );
    }
}
