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
/// The snapshot version this build writes.
///
/// Version 2 adds `iommu_units` (what `/sys/class/iommu` lists: whether an
/// IOMMU driver was on, which decides what the kernel's
/// `pci_enable_acs()` did at boot). Version 1 snapshots read as before,
/// with the IOMMU taken from the functions' IOMMU groups.
pub const SNAPSHOT_VERSION: u32 = 2;
/// Every snapshot version this build reads.
pub const SNAPSHOT_VERSIONS_READ: &[u32] = &[1, 2];

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
    /// The IOMMU units the kernel registered (`/sys/class/iommu/*`:
    /// `dmar0`, `ivhd0`), empty when it registered none; `None` when the
    /// capture does not record it (version 1 snapshots, hwloc XML,
    /// descriptions, a `--root` tree without `sys/class/iommu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_units: Option<Vec<String>>,
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
            iommu_units: None,
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
    use serde::{
        de::{Error, Visitor},
        Deserializer, Serializer,
    };

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
        // A visitor rather than a String: a snapshot holds 8 KiB of hex per
        // function, decoded straight from the input where it can be borrowed.
        d.deserialize_str(HexVisitor)
    }

    struct HexVisitor;

    impl Visitor<'_> for HexVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("configuration space bytes as a string of hex digits")
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<Vec<u8>, E> {
            decode(s.as_bytes())
        }
    }

    /// The value of a hex digit, 16 or more for other bytes.
    #[inline(always)]
    fn digit(c: u8) -> u8 {
        let d = c.wrapping_sub(b'0');
        let l = (c | 0x20).wrapping_sub(b'a');
        if d < 10 {
            d
        } else if l < 6 {
            l + 10
        } else {
            0xff
        }
    }

    /// 32 hex digits into 16 bytes; false if any is not a hex digit.
    #[inline(always)]
    fn decode_block(src: &[u8; 32], dst: &mut [u8; 16]) -> bool {
        let mut v = [0u8; 32];
        let mut bad = 0u8;
        for i in 0..32 {
            v[i] = digit(src[i]);
            bad |= v[i] & 0xf0;
        }
        for i in 0..16 {
            dst[i] = v[2 * i] << 4 | (v[2 * i + 1] & 0x0f);
        }
        bad == 0
    }

    fn decode<E: Error>(s: &[u8]) -> Result<Vec<u8>, E> {
        if s.len() % 2 != 0 {
            return Err(E::custom(format!(
                "config hex has an odd number of digits ({})",
                s.len()
            )));
        }
        // In blocks of 32 digits, without branches, so the compiler can
        // use vector instructions; an invalid digit clears `ok`, and only
        // then is the input walked again to say where.
        let mut out = vec![0u8; s.len() / 2];
        let mut ok = true;
        let mut blocks = s.chunks_exact(32);
        let mut outs = out.chunks_exact_mut(16);
        for (src, dst) in (&mut blocks).zip(&mut outs) {
            let src: &[u8; 32] = src.try_into().unwrap_or(&[b'0'; 32]);
            let dst: &mut [u8; 16] = match dst.try_into() {
                Ok(d) => d,
                Err(_) => continue,
            };
            ok &= decode_block(src, dst);
        }
        for (pair, d) in blocks
            .remainder()
            .chunks_exact(2)
            .zip(outs.into_remainder())
        {
            let (hi, lo) = (digit(pair[0]), digit(pair[1]));
            ok &= hi < 16 && lo < 16;
            *d = hi << 4 | (lo & 0x0f);
        }
        if !ok {
            let at = s.iter().position(|&c| digit(c) > 15).unwrap_or(0);
            return Err(E::custom(format!(
                "config hex has '{}' at digit {at}",
                char::from(s[at]).escape_default()
            )));
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
    fn hex_round_trips_and_every_bad_digit_is_found() {
        // Lengths around the 32-digit blocks, every byte value, upper case too.
        for len in 0..80usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let m = RawDevice {
                path: "x".into(),
                config: bytes.clone(),
                ..Default::default()
            };
            let j = serde_json::to_string(&m).unwrap();
            let back: RawDevice = serde_json::from_str(&j).unwrap();
            assert_eq!(back.config, bytes);
            let upper: RawDevice = serde_json::from_str(
                &j.to_uppercase()
                    .replace("\"PATH\"", "\"path\"")
                    .replace("\"CONFIG\"", "\"config\"")
                    .replace("\"ATTRS\"", "\"attrs\""),
            )
            .unwrap();
            assert_eq!(upper.config, bytes);
        }
        let all: String = (0..=255u8).map(|b| format!("{b:02x}")).collect();
        for at in 0..all.len() {
            for bad in ['g', 'G', ' ', '/', ':', '@', '`'] {
                let mut h = all.clone();
                h.replace_range(at..at + 1, &bad.to_string());
                let e =
                    serde_json::from_str::<RawDevice>(&format!(r#"{{"path":"x","config":"{h}"}}"#))
                        .unwrap_err()
                        .to_string();
                assert!(e.contains(&format!("'{bad}' at digit {at}")), "{e}");
            }
        }
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
