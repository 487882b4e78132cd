//! `cargo xtask pci-ids`: refresh the copy of pci.ids built into peerdma
//! (`crates/pci/data/pci.ids.gz`) from Debian's `pci.ids` package.
//!
//! Kept: the header (its Version and Date lines decide whether a machine's
//! own file is newer), vendors, devices, device classes and subclasses.
//! Dropped: subsystems, programming interfaces and comments, which peerdma
//! does not show. The result is gzip-compressed with no timestamp, so the
//! same input gives the same bytes.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where Debian's `pci.ids` package installs the database.
pub const DEBIAN_PATH: &str = "/usr/share/misc/pci.ids";

#[derive(clap::Args)]
pub struct PciIdsArgs {
    /// The pci.ids to read [default: /usr/share/misc/pci.ids, from Debian's package].
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// Where to write [default: crates/pci/data/pci.ids.gz].
    #[arg(long, value_name = "FILE")]
    to: Option<PathBuf>,
}

/// The lines of a pci.ids that peerdma uses.
pub fn filter(text: &str) -> String {
    let mut out = String::with_capacity(text.len() / 2);
    let mut header = true;
    for line in text.lines() {
        if line.starts_with('#') {
            let c = line.trim_start_matches('#').trim();
            if header
                || c.starts_with("Version:")
                || c.starts_with("Date:")
                || c.starts_with("This file can be distributed")
                || c.starts_with("(version 2")
            {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        header = false;
        if line.trim().is_empty() || line.starts_with("\t\t") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub fn run(args: &PciIdsArgs) -> Result<()> {
    let from = args.from.clone().unwrap_or_else(|| DEBIAN_PATH.into());
    let root = crate::util::workspace_root();
    let to = args
        .to
        .clone()
        .unwrap_or_else(|| root.join("crates/pci/data/pci.ids.gz"));
    let text = std::fs::read(&from)
        .with_context(|| format!("reading {} (apt-get install pci.ids)", from.display()))?;
    let text = String::from_utf8_lossy(&text);
    if !text.lines().any(|l| l.contains("Version:")) {
        bail!(
            "{}: no Version line in its header; not a pci.ids file",
            from.display()
        );
    }
    let kept = filter(&text);
    write_gz(&to, kept.as_bytes())?;
    let size = std::fs::metadata(&to)?.len();
    println!(
        "wrote {} ({} bytes; {} bytes of text kept of {}) from {}",
        to.display(),
        size,
        kept.len(),
        text.len(),
        from.display()
    );
    Ok(())
}

fn write_gz(to: &Path, bytes: &[u8]) -> Result<()> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes)?;
    let gz = enc.finish()?;
    std::fs::write(to, gz).with_context(|| format!("writing {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_header_vendors_devices_and_classes() {
        let text = "#\n#\tList of PCI ID's\n#\n#\tVersion: 2023.04.10\n#\tDate:    2023-04-10 20:08:02\n#\n\n# Vendors, devices and subsystems.\n10de  NVIDIA Corporation\n\t1db4  GV100GL\n\t\t10de 1214  Tesla V100\n\n# List of known device classes\nC 01  Mass storage controller\n\t08  Non-Volatile memory controller\n\t\t02  NVM Express\n";
        let out = filter(text);
        assert!(out.contains("#\tVersion: 2023.04.10\n#\tDate:    2023-04-10 20:08:02\n"));
        assert!(out.contains("10de  NVIDIA Corporation\n\t1db4  GV100GL\n"));
        assert!(
            out.contains("C 01  Mass storage controller\n\t08  Non-Volatile memory controller\n")
        );
        assert!(!out.contains("Tesla V100") && !out.contains("NVM Express"));
        assert!(!out.contains("# Vendors"));
    }
}
