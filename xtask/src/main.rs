//! `cargo xtask`: developer tasks for peerdma.
//!
//! The main job is the kernel oracle (DESIGN.md, "Testing"): build a Linux
//! kernel with CONFIG_PCI_P2PDMA and our debugfs patch (`kernel`), boot it in
//! QEMU on emulated PCIe topologies, bring back the kernel's own P2PDMA
//! verdicts next to the guest's sysfs, hold peerdma's against them and run
//! real P2P I/O in the guest (`vm`), and keep all that as test fixtures
//! (`capture`). `bench copy` measures `peerdma copy` against dd, cp and fio;
//! `pci-ids` refreshes the copy of pci.ids built into peerdma-pci.

// Doc comments on the arguments are clap's help texts, where `DIR/<scenario>/`
// is a path, not HTML.
#![allow(rustdoc::invalid_html_tags)]

mod bench;
mod capture;
mod cpio;
mod deps;
mod hwloc;
mod kernel;
mod oracle;
mod pci_ids;
mod scenario;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "peerdma developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages the kernel oracle needs (idempotent).
    Deps {
        /// Only print the package list, one per line (for CI caches).
        #[arg(long)]
        list: bool,
        /// Also the packages `cargo xtask bench` uses (fio).
        #[arg(long)]
        bench: bool,
    },
    /// Build the P2PDMA oracle kernel, or reuse the cached image.
    Kernel {
        /// Re-extract the source and rebuild from scratch.
        #[arg(long)]
        force: bool,
        /// Print only the bzImage path on stdout.
        #[arg(long)]
        print_path: bool,
    },
    /// Boot the oracle kernel on emulated topologies, hold peerdma against
    /// its verdicts and run the P2P smoke tests; a table per scenario.
    Vm(vm::VmArgs),
    /// Run the scenarios (all unless --scenario) and store their results as
    /// fixtures under tests/fixtures/kernel/ for `cargo test`.
    Capture(capture::CaptureArgs),
    /// Write hwloc XML of every kernel fixture with Debian's lstopo, under
    /// tests/fixtures/hwloc/kernel/ (cargo test reads them without hwloc).
    HwlocFixtures,
    /// Benchmarks (not tests; never in CI): `bench copy` runs peerdma copy
    /// against dd, cp and fio on the same large file and prints the ratios.
    Bench(bench::BenchArgs),
    /// Refresh the copy of pci.ids built into peerdma
    /// (crates/pci/data/pci.ids.gz) from Debian's pci.ids package.
    PciIds(pci_ids::PciIdsArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Deps { list, bench } => deps::run(list, bench),
        Cmd::Kernel { force, print_path } => kernel_cmd(force, print_path),
        Cmd::Vm(args) => vm::run(&args),
        Cmd::Capture(args) => capture::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::HwlocFixtures => hwloc::run(),
        Cmd::PciIds(args) => pci_ids::run(&args),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn kernel_cmd(force: bool, print_path: bool) -> Result<()> {
    let image = kernel::ensure(force)?;
    if print_path {
        println!("{}", image.display());
    }
    Ok(())
}

#[cfg(test)]
mod repository_tests {
    /// README's crate table lists every workspace member, and each has a
    /// README of its own.
    #[test]
    fn readme_crate_table_lists_every_member_and_each_has_a_readme() {
        let root = crate::util::workspace_root();
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
        let members = manifest["workspace"]["members"].as_array().unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| crate |"))
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert!(table.len() > 2, "README.md has no crate table");
        for m in members {
            let m = m.as_str().unwrap();
            assert!(
                table
                    .iter()
                    .any(|row| row.contains(&format!("[`{m}`]({m}/README.md)"))),
                "README.md's crate table does not list {m}"
            );
            assert!(
                root.join(m).join("README.md").is_file(),
                "{m} has no README.md"
            );
        }
    }
}
