//! The raw capture: what sysfs and `/proc/cpuinfo` say about a machine, as
//! files would show it. Every source (live sysfs, a `--root` tree, a
//! snapshot, a description file, a preset) produces a [`RawMachine`]; one
//! builder turns it into the model, so all sources mean the same thing.
//!
//! A snapshot file is this structure as JSON.

use peerdma_mem::Bdf;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `format` field of a snapshot.
pub const SNAPSHOT_FORMAT: &str = "peerdma-snapshot";
/// The snapshot version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// One machine as captured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a peerdma snapshot: an object with format, version, origin, cpu and devices"
)]
pub struct RawMachine {
    pub format: String,
    pub version: u32,
    pub origin: Origin,
    pub cpu: RawCpu,
    pub devices: Vec<RawDevice>,
}

/// Where a capture came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an origin: an object with kind and detail"
)]
pub struct Origin {
    /// `sysfs`, `description`, `preset` or `generated`.
    pub kind: String,
    /// The root directory, file or preset name.
    pub detail: String,
    /// A human name for the machine (description files and presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `uname -r` of the captured machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The kernel command line (ACS and IOMMU parameters live there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The tool and version that wrote the capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Why the capture may leave out functions the machine has (hwloc's
    /// default I/O filter drops host bridge functions and more); `None`
    /// when it lists every function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

/// The first processor of `/proc/cpuinfo` (what the kernel's AMD rule reads
/// from `cpu_data(0)`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a CPU: an object with vendor_id, family, model, model_name and processors"
)]
pub struct RawCpu {
    pub vendor_id: String,
    pub family: u32,
    pub model: u32,
    pub model_name: String,
    /// Logical processors listed.
    pub processors: u32,
}

/// One PCI function as its sysfs directory shows it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a device: an object with path and config"
)]
pub struct RawDevice {
    /// The device's directory relative to `sys/devices`, e.g.
    /// `pci0000:00/0000:00:01.0/0000:01:00.0`: it carries the BDF, the host
    /// bridge and the upstream bridges.
    pub path: String,
    /// Configuration space bytes as far as readable, in hex.
    #[serde(with = "hex_bytes")]
    pub config: Vec<u8>,
    /// Single-value attribute files, trimmed: `vendor`, `device`, `class`,
    /// `revision`, `subsystem_vendor`, `subsystem_device`, `numa_node`,
    /// `current_link_speed`, `current_link_width`, `max_link_speed`,
    /// `max_link_width`, `local_cpulist`; and from hwloc XML,
    /// `pci_link_speed` (the current link's data rate in GB/s).
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
    /// The `resource` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Name of the bound driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_group: Option<u32>,
    /// For an SR-IOV virtual function, its physical function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physfn: Option<Bdf>,
    /// The `p2pmem/` directory, when the device publishes P2P memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2pmem: Option<RawP2pMem>,
    /// A name given in a description file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Vendor and device names from the capture (hwloc XML's PCIVendor
    /// and PCIDevice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// The OS devices of the function (`nvme0n1`, `mlx5_0`, `nvml0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub os_devices: Vec<String>,
}

/// `p2pmem/size`, `p2pmem/available`, `p2pmem/published`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "p2pmem: an object with size, available and published"
)]
pub struct RawP2pMem {
    pub size: u64,
    pub available: u64,
    pub published: bool,
}

impl RawMachine {
    pub fn new(origin: Origin, cpu: RawCpu, devices: Vec<RawDevice>) -> RawMachine {
        RawMachine {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            origin,
            cpu,
            devices,
        }
    }
}

impl RawDevice {
    /// The last component of the path, which names the function.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

mod hex_bytes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let s = s.as_bytes();
        if s.len() % 2 != 0 {
            return Err(D::Error::custom(format!(
                "config hex has an odd number of digits ({})",
                s.len()
            )));
        }
        let digit = |s: &[u8], at: usize| -> Result<u8, D::Error> {
            let c = s[at];
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(D::Error::custom(format!(
                    "config hex has '{}' at digit {at}",
                    char::from(c).escape_default()
                ))),
            }
        };
        // A plain loop: snapshots hold 8 KiB of hex per function.
        let mut out = Vec::with_capacity(s.len() / 2);
        for i in 0..s.len() / 2 {
            out.push(digit(s, 2 * i)? << 4 | digit(s, 2 * i + 1)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let m = RawMachine::new(
            Origin {
                kind: "sysfs".into(),
                detail: "/".into(),
                ..Default::default()
            },
            RawCpu {
                vendor_id: "AuthenticAMD".into(),
                family: 0x19,
                model: 1,
                model_name: "AMD EPYC".into(),
                processors: 2,
            },
            vec![RawDevice {
                path: "pci0000:00/0000:00:01.0".into(),
                config: vec![0x86, 0x80, 0xff, 0x00],
                ..Default::default()
            }],
        );
        let j = serde_json::to_string(&m).unwrap();
        assert!(j.contains("\"config\":\"8680ff00\""), "{j}");
        let back: RawMachine = serde_json::from_str(&j).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.devices[0].name(), "0000:00:01.0");
    }

    #[test]
    fn bad_hex_is_named() {
        let j = r#"{"path":"x","config":"0g"}"#;
        let e = serde_json::from_str::<RawDevice>(j)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'g' at digit 1"), "{e}");
        let e = serde_json::from_str::<RawDevice>(r#"{"path":"x","config":"abc"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("odd number"), "{e}");
    }
}
