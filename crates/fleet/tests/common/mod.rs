//! Machines that differ from a preset the way real fleets do, written as
//! snapshots: shared by the tests and the fleet benchmark.
#![allow(dead_code)]

use peerdma_pci::raw::RawMachine;
use std::path::Path;

/// How a machine differs from the preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// As built.
    Plain,
    /// ACS redirect (SV|RR|CR|UF) on a switch downstream port.
    AcsRedirect,
    /// A drive missing.
    MissingDrive,
    /// A drive's link trained at Gen4 instead of Gen5.
    DegradedLink,
}

fn device_block(text: &str, name: &str) -> (usize, usize) {
    let at = text
        .find(&format!("name = \"{name}\""))
        .unwrap_or_else(|| panic!("no device {name}"));
    let start = text[..at].rfind("[[device]]").unwrap();
    let end = text[at..].find("[[device]]").map_or(text.len(), |e| at + e);
    (start, end)
}

/// The description text of gpu-storage-16 changed as `v` says.
pub fn gpu_storage_16(v: Variant) -> String {
    let preset = peerdma_pci::presets::PRESETS
        .iter()
        .find(|p| p.name == "gpu-storage-16")
        .unwrap();
    let mut text = preset.text.to_string();
    match v {
        Variant::Plain => {}
        Variant::AcsRedirect => {
            let (s, e) = device_block(&text, "rc1-sw-p0");
            let block = format!(
                "{}acs = [\"sv\", \"rr\", \"cr\", \"uf\"]\n\n",
                text[s..e].trim_end_matches('\n').to_string() + "\n"
            );
            text.replace_range(s..e, &block);
        }
        Variant::MissingDrive => {
            let (s, e) = device_block(&text, "nvme7");
            text.replace_range(s..e, "");
        }
        Variant::DegradedLink => {
            let (s, e) = device_block(&text, "nvme2");
            let block = text[s..e].replace(
                "link = \"gen5x4\"",
                "link = \"gen4x4\"\nmax_link = \"gen5x4\"",
            );
            assert_ne!(block, text[s..e], "nvme2 has a gen5x4 link");
            text.replace_range(s..e, &block);
        }
    }
    text
}

/// The capture of a variant, with a hostname.
pub fn machine(v: Variant, host: &str) -> RawMachine {
    let mut raw =
        peerdma_pci::desc::parse_description(&gpu_storage_16(v), "gpu-storage-16").unwrap();
    raw.origin.hostname = Some(host.to_string());
    raw
}

/// Write `n` snapshots of gpu-storage-16 into `dir`: of each 100, 3 with
/// ACS redirect, 1 without a drive and 2 with a degraded link; names
/// `node00000.json` up. Returns how many of each were written.
pub fn write_fleet(dir: &Path, n: usize) -> [(Variant, usize); 4] {
    let kinds = [
        Variant::Plain,
        Variant::AcsRedirect,
        Variant::MissingDrive,
        Variant::DegradedLink,
    ];
    // Each variant serialised once, the hostname put in per file.
    let texts: Vec<String> = kinds
        .iter()
        .map(|&v| peerdma_pci::snapshot_json(&machine(v, "@HOST@")))
        .collect();
    let mut counts = [0usize; 4];
    for i in 0..n {
        let k = match i % 100 {
            10 | 40 | 70 => 1,
            55 => 2,
            25 | 85 => 3,
            _ => 0,
        };
        counts[k] += 1;
        let host = format!("node{i:05}");
        let text = texts[k].replacen("@HOST@", &host, 1);
        std::fs::write(dir.join(format!("{host}.json")), text).unwrap();
    }
    [
        (kinds[0], counts[0]),
        (kinds[1], counts[1]),
        (kinds[2], counts[2]),
        (kinds[3], counts[3]),
    ]
}
