//! `peerdma`: can these PCI devices do peer-to-peer DMA, why not, and how to
//! fix it. A thin command line over the peerdma crates.

// Doc comments here are clap's help texts, where `[machine]` means the
// workload file's table, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use peerdma_p2p::{explain, matrix, render::LEGEND, Matrix};
use peerdma_pci::ids::PciIds;
use peerdma_pci::render::{describe, header, tree};
use peerdma_pci::{presets, snapshot_json, sysfs, write_snapshot, FnId, Source, Topology};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

mod docs_cmds;
mod fleet_cmds;
mod net_cmds;
mod style;

#[derive(Parser)]
#[command(
    name = "peerdma",
    version,
    about = "Peer-to-peer DMA between PCI devices: whether it works, why not, and the fix",
    long_about = "Peer-to-peer DMA between PCI devices: whether it works, why not, and the fix.\n\n\
        Verdicts are the Linux kernel's own (drivers/pci/p2pdma.c): P2P by bus address below a \
        common switch, through a whitelisted host bridge or an AMD Zen root complex, or not supported.\n\n\
        Without a source option, peerdma reads its built-in default machine (preset 'dual-xeon'); \
        --live reads this machine."
)]
struct Cli {
    #[command(flatten)]
    source: SourceArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Colour verdicts: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    color: style::ColorWhen,
    /// Read device names from this pci.ids file [default: the system's
    /// when it is as new as peerdma's built-in copy, else the built-in copy;
    /// $PEERDMA_SYSTEM_PCI_IDS names the system's file].
    #[arg(long, global = true, value_name = "FILE")]
    pci_ids: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct SourceArgs {
    /// Read this machine's sysfs.
    #[arg(long, global = true)]
    live: bool,
    /// Read a directory holding sys/ and proc/cpuinfo laid out as on a live machine.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Replay a snapshot written by `peerdma snapshot`.
    #[arg(long, global = true, value_name = "FILE")]
    snapshot: Option<PathBuf>,
    /// Read a topology description file (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Use a built-in machine (see `peerdma presets`).
    #[arg(long, global = true, value_name = "NAME")]
    preset: Option<String>,
    /// Read hwloc XML (`lstopo --of xml`, hwloc 1.x or 2.x).
    #[arg(long, global = true, value_name = "FILE")]
    hwloc: Option<PathBuf>,
    /// Where the capture does not show ACS (hwloc XML, sysfs read without
    /// root): `none` assumes no redirect; `iommu` assumes root ports and
    /// switch downstream ports redirect, as the kernel sets them when an
    /// IOMMU driver is on. Verdicts also say what the other gives.
    #[arg(long, global = true, value_name = "none|iommu", value_parser = parse_assume_acs)]
    assume_acs: Option<peerdma_pci::AcsAssumption>,
}

fn parse_assume_acs(s: &str) -> Result<peerdma_pci::AcsAssumption, String> {
    peerdma_pci::AcsAssumption::parse(s).ok_or_else(|| format!("'{s}' is not none or iommu"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the PCI tree and the P2P matrix of the DMA-capable functions.
    Topo {
        /// Put every function (bridges and ports too) in the matrix.
        #[arg(long)]
        all: bool,
        /// Draw the machine (tree, links, ACS, the matrix of verdicts) as
        /// SVG into FILE (`-`: standard output), laid out by Graphviz.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Write the same picture as a Graphviz DOT graph into FILE.
        #[arg(long, value_name = "FILE")]
        dot: Option<PathBuf>,
    },
    /// Explain whether PROVIDER's memory can be reached by CLIENT's DMA.
    /// Exit status 0 when P2P works, 1 when it does not, 2 on error.
    Check {
        /// The function whose memory (BAR) is accessed: a BDF or a name.
        provider: String,
        /// The function doing the DMA: a BDF or a name.
        client: String,
    },
    /// Print the kernel's verdict for every ordered pair of functions.
    Matrix {
        /// In text, show every function (bridges and ports too); JSON always has all.
        #[arg(long)]
        all: bool,
    },
    /// Capture the machine into a self-contained snapshot (or a --root tree).
    Snapshot {
        /// Snapshot file to write (JSON); `-` for standard output.
        #[arg(short, long, value_name = "FILE", required_unless_present = "tree")]
        output: Option<PathBuf>,
        /// Also (or instead) write a directory that --root reads back.
        #[arg(long, value_name = "DIR")]
        tree: Option<PathBuf>,
    },
    /// List the built-in machines.
    Presets,
    /// Write one self-contained HTML report of the machine (for a support
    /// ticket): where it was read, ACS and link findings, the picture, the
    /// tree, the P2P matrix, every pair that cannot do P2P with the reasons
    /// and fixes, probe results, and the snapshot to replay it. Opens in
    /// any browser without network access.
    Report {
        /// The HTML file to write (`-`: standard output).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Also run `peerdma probe PROVIDER CLIENT` (real I/O on this
        /// machine, as root; it overwrites the scratch regions `peerdma
        /// probe --help` describes) and put the result in the report. May
        /// be given several times. Where a probe cannot run, the report
        /// says why.
        #[arg(long, value_name = "PROVIDER,CLIENT")]
        probe: Vec<String>,
        /// Put every function (bridges and ports too) in the matrix.
        #[arg(long)]
        all: bool,
    },
    /// Run a workload (a TOML file of jobs) on the simulated machine: every
    /// byte moved through the simulated fabric by the storage consumers
    /// (block layer, NVMe, RAID) and checked, and the whole workload timed
    /// with concurrent jobs sharing links.
    ///
    /// The machine: a source option if given, else the workload's
    /// [machine], else the built-in default. Exit status 0 when every job
    /// succeeded with verified bytes, 1 when one did not, 2 when the
    /// workload cannot run (the error names the file, line and job).
    Sim {
        /// The workload file (see `peerdma sim --help` and README.md).
        workload: PathBuf,
        /// The simulated IOMMU: off, passthrough or translated [default:
        /// the workload's, else off].
        #[arg(long, value_name = "MODE")]
        iommu: Option<String>,
        /// Seed of the drives' pattern data.
        #[arg(long)]
        seed: Option<u64>,
        /// Also draw the run as SVG into FILE: the jobs on a timeline,
        /// coloured by path, and how busy the busiest links were.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// devmem TCP receive into GPU memory, as a table: buffer utilization,
    /// device memory held and throughput for each MTU, net_iov size and
    /// buffer layout, on two copies of the machine joined by a wire.
    DevmemTable(net_cmds::DevmemTableArgs),
    /// Run the built-in demo on the default machine: the storage consumers
    /// of P2P DMA, each job's bytes moved and checked, P2P side by side
    /// with the same job through host memory.
    Demo {
        /// The simulated IOMMU: off, passthrough or translated.
        #[arg(long, value_name = "MODE", default_value = "off")]
        iommu: String,
        /// The full report of every job (legs, routes, time, notes).
        #[arg(long)]
        verbose: bool,
        /// Print the workload the demo chose for this machine (a workload
        /// file for `peerdma sim`) instead of running it.
        #[arg(long)]
        print_workload: bool,
        /// Bytes each read moves (the other jobs, and each job of the
        /// network part, move half as much).
        #[arg(long, value_name = "BYTES", default_value = "512M", value_parser = parse_bytes)]
        size: u64,
        /// Which part to run: storage (one machine), network (two copies
        /// of the machine on a wire: devmem TCP, GPUDirect RDMA, NVMe-oF),
        /// or all. With --print-workload, `all` prints the storage part.
        #[arg(long, value_name = "PART", default_value = "all", value_parser = ["all", "storage", "network"])]
        part: String,
    },
    /// Node labels for Kubernetes node-feature-discovery: a feature file
    /// for its features.d directory, saying for each two kinds of device
    /// (gpu, accel, nic, nvme) the best P2P verdict between them and how
    /// many pairs can do P2P; also ACS redirect, degraded links and P2P
    /// memory providers.
    ///
    /// NFD reads /etc/kubernetes/node-feature-discovery/features.d/;
    /// docs/fleet.md has a DaemonSet that keeps the file there current.
    Labels(fleet_cmds::LabelsArgs),
    /// Prometheus metrics for node_exporter's textfile collector: the
    /// verdict of every pair of DMA endpoints, ACS-redirecting functions,
    /// link speed and width against what they can do, P2P memory.
    Metrics(fleet_cmds::MetricsArgs),
    /// Compare two machines: devices added or removed, ACS, links, P2P
    /// memory, and every pair whose verdict changed with the reason.
    ///
    /// A and B are snapshots (or --root directories); without B, a source
    /// option gives the second machine: `peerdma diff node16.json --live`.
    Diff(fleet_cmds::DiffArgs),
    /// Summarise a directory of snapshots: machines grouped by identical
    /// P2P matrix, the odd ones out and what makes them differ, the fixes
    /// that apply across the fleet, links below what they can do.
    ///
    /// Exit status 0 when every file was a snapshot, 1 when some were not
    /// (they are listed), 2 on error (no snapshots at all).
    Fleet(fleet_cmds::FleetArgs),
    /// Print a shell completion script: `peerdma completions bash >
    /// /etc/bash_completion.d/peerdma`, or zsh, fish, elvish, powershell.
    Completions(docs_cmds::CompletionsArgs),
    /// Print the man page (roff): `peerdma man | man -l -`; --dir writes a
    /// page per subcommand too.
    Man(docs_cmds::ManArgs),
    /// Copy between files and block devices by the best path: P2P memory
    /// when both ends' devices can reach a provider, else host memory.
    ///
    /// Reports the path taken (P2P by bus address, through the host bridge,
    /// or bounced), how it is known (decided by the kernel's rule, or
    /// observed when the kernel refused P2P DMA), bytes, throughput and CPU
    /// time; the bytes count as verified only with --verify. Exit status 0
    /// on success, 1 when interrupted or --verify found a difference, 2 on
    /// error or refusal.
    ///
    /// Interrupted (Ctrl-C) or failed, the copied prefix is kept and the
    /// report prints the arguments that copy the rest. A new destination
    /// file gets its name only once it holds data, so a killed copy leaves
    /// none; a killed copy into an existing file or a device leaves the
    /// range partly written: run the same command again.
    Copy(CopyArgs),
    /// Smoke-test P2P DMA on this machine with real I/O: write a pattern to
    /// CLIENT's drive, O_DIRECT-read it into PROVIDER's P2P memory, write that
    /// back out and compare, next to the verdict for the pair.
    ///
    /// Overwrites only the two scratch regions it reports (by default the
    /// last 2 x SIZE bytes of the client's drive); refuses mounted drives.
    /// Needs root. Exit status 0 when the outcome is what the verdict
    /// predicts (P2P + right bytes, or not supported + EREMOTEIO), 1 when
    /// not (wrong bytes included), 2 on error.
    Probe {
        /// The function whose P2P memory is used (p2pmem/allocate): a BDF or a name.
        provider: String,
        /// The function whose drive DMAs into that memory: a BDF or a name.
        client: String,
        /// Write the P2P memory out to this function's drive instead of the client's.
        #[arg(long, value_name = "FUNCTION")]
        to: Option<String>,
        /// Bytes to move (a multiple of the page size).
        #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes)]
        size: u64,
        /// Offset of the source region on the client's drive [default: at the end].
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
        offset: Option<u64>,
        /// Offset of the destination region [default: after the source, or at the end of --to].
        #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
        to_offset: Option<u64>,
        /// Pattern seed [default: from the clock].
        #[arg(long)]
        seed: Option<u64>,
        /// Watch the kernel's DMA mapping events (tracefs, as root) and
        /// report the path each transfer was observed to take next to its
        /// verdict. The system's tracing state is left as it was; Ctrl-C
        /// then takes effect after the transfers (twice: at once).
        #[arg(long)]
        trace: bool,
    },
}

/// The `copy` subcommand's flags.
#[derive(Args)]
struct CopyArgs {
    /// Source: a file or a block device.
    src: PathBuf,
    /// Destination: a file (created if missing) or a block device.
    dst: PathBuf,
    /// Bytes to skip at the start of SRC (suffixes K, M, G, T).
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = parse_bytes)]
    skip: u64,
    /// Bytes to skip at the start of DST.
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = parse_bytes)]
    seek: u64,
    /// Bytes to copy [default: the rest of SRC].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    count: Option<u64>,
    /// Bytes per I/O.
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    chunk: u64,
    /// I/Os in flight.
    #[arg(long, default_value_t = 8)]
    depth: usize,
    /// Use this provider's P2P memory (a BDF) instead of the kernel's choice.
    #[arg(long, value_name = "BDF")]
    via: Option<String>,
    /// Fail, naming the pair and the reason, instead of bouncing through host memory.
    #[arg(long)]
    no_bounce: bool,
    /// Allow writing to a block device (it is overwritten at --seek).
    #[arg(long)]
    force_device: bool,
    /// Hash both ends after the copy and compare.
    #[arg(long)]
    verify: bool,
    /// Flush the destination to stable storage at the end.
    #[arg(long)]
    fsync: bool,
    /// Print the plan (path, buffer, ranges) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Watch the kernel's DMA mapping events while the data moves
    /// (tracefs, as root) and report the path each leg was observed to
    /// take next to the one the kernel's rule decides. The system's
    /// tracing state is left as it was.
    #[arg(long)]
    trace: bool,
}

fn run_copy(a: &CopyArgs, json: bool) -> Result<ExitCode> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let mut opts = peerdma_linux::copy::CopyOptions::new(&a.src, &a.dst);
    opts.skip = a.skip;
    opts.seek = a.seek;
    opts.count = a.count;
    opts.chunk = a.chunk;
    opts.depth = a.depth;
    opts.via = a.via.clone();
    opts.no_bounce = a.no_bounce;
    opts.force_device = a.force_device;
    opts.verify = a.verify;
    opts.fsync = a.fsync;
    opts.trace = a.trace;
    // Ctrl-C stops submitting I/O; what is in flight completes and the
    // report says how far the copy got.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the interrupt handler")?;
    }
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) && !a.dry_run {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let result = peerdma_linux::copy::copy(&opts, a.dry_run, &stop, &mut progress);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    // A copy whose bytes did not verify still has its report: print it,
    // then the failure, and exit 1.
    let (report, verify_failed) = match result {
        Ok(r) => (r, None),
        Err(peerdma_linux::Error::VerifyFailed(r)) => {
            let line = r.verify_failure();
            (*r, Some(line))
        }
        Err(e) => return Err(anyhow::anyhow!(error_line(&e))),
    };
    if json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        print(&report.render())?;
    }
    if let Some(line) = &verify_failed {
        eprintln!("peerdma: {line}");
    }
    Ok(if verify_failed.is_some() || report.interrupted.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// An error and its causes on one line, each cause once: a cause whose
/// text the message already carries (`EACCES (Permission denied)` and
/// `Permission denied (os error 13)`) is not repeated.
fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        let core = text.split(" (os error").next().unwrap_or(&text);
        if !line.contains(core) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    peerdma_mem::parse_size(s).map_err(|e| e.to_string())
}

impl SourceArgs {
    /// Whether a source option was given.
    fn given(&self) -> bool {
        self.live
            || self.root.is_some()
            || self.snapshot.is_some()
            || self.topology.is_some()
            || self.preset.is_some()
    }

    fn source(&self) -> Result<Source> {
        let mut chosen = Vec::new();
        if self.live {
            chosen.push(Source::Live);
        }
        if let Some(d) = &self.root {
            chosen.push(Source::Root(d.clone()));
        }
        if let Some(f) = &self.snapshot {
            chosen.push(Source::Snapshot(f.clone()));
        }
        if let Some(f) = &self.topology {
            chosen.push(Source::Description(f.clone()));
        }
        if let Some(p) = &self.preset {
            chosen.push(Source::Preset(p.clone()));
        }
        if let Some(f) = &self.hwloc {
            chosen.push(Source::Hwloc(f.clone()));
        }
        match chosen.len() {
            0 => Ok(Source::default()),
            1 => Ok(chosen.remove(0)),
            _ => bail!(
                "choose one machine: --live, --root, --snapshot, --topology, --preset or --hwloc"
            ),
        }
    }

    /// Read a machine, with `--assume-acs` applied.
    fn load(&self, source: &Source) -> Result<Topology> {
        let mut t = source.load()?;
        if let Some(a) = self.assume_acs {
            t.assume_acs(a);
        }
        Ok(t)
    }
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`peerdma matrix | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

/// The version of the JSON every command prints with `--json` (its
/// `schema` field; README.md lists the fields per command).
const JSON_SCHEMA: u32 = 1;

/// Print JSON for tools, with `"schema"` added to an object that lacks it.
fn print_json(v: &serde_json::Value) -> Result<()> {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.entry("schema").or_insert(json!(JSON_SCHEMA));
    }
    let mut s = serde_json::to_string_pretty(&v)?;
    s.push('\n');
    print(&s)
}

fn load_ids(path: &Option<PathBuf>) -> Result<PciIds> {
    match path {
        Some(p) => {
            PciIds::load(p).with_context(|| format!("cannot read pci.ids file {}", p.display()))
        }
        None => match std::env::var_os("PEERDMA_SYSTEM_PCI_IDS") {
            Some(p) if !p.is_empty() => Ok(PciIds::load_preferring(&[PathBuf::from(p)])),
            _ => Ok(PciIds::load_default()),
        },
    }
}

fn iommu_setting(s: &str) -> Result<peerdma_workload::format::IommuSetting> {
    peerdma_workload::format::IommuSetting::parse(s)
        .with_context(|| format!("--iommu {s}: not one of off, passthrough, translated"))
}

fn run_sim(
    src: &SourceArgs,
    path: &std::path::Path,
    iommu: Option<&str>,
    seed: Option<u64>,
    svg: Option<&std::path::Path>,
    json: bool,
) -> Result<ExitCode> {
    use peerdma_workload::format::MachineSource;
    let w = peerdma_workload::format::load(path)?;
    let given = src.live
        || src.root.is_some()
        || src.snapshot.is_some()
        || src.topology.is_some()
        || src.preset.is_some()
        || src.hwloc.is_some();
    if given && w.machines.len() > 1 {
        bail!(
            "{}: the workload names its machines ([machine.{}] and more): --live, --root, --snapshot, --topology and --preset apply to a workload of one machine",
            path.display(),
            w.machines[0].name
        );
    }
    let override_iommu = iommu.map(iommu_setting).transpose()?;
    let mut machines = Vec::new();
    for m in &w.machines {
        let source = match (&m.source, given) {
            (Some(s), false) => match s {
                MachineSource::Preset(p) => Source::Preset(p.clone()),
                MachineSource::Snapshot(f) => Source::Snapshot(f.clone()),
                MachineSource::Topology(f) => Source::Description(f.clone()),
                MachineSource::Root(d) => Source::Root(d.clone()),
                MachineSource::Hwloc(f) => Source::Hwloc(f.clone()),
                MachineSource::Live => Source::Live,
            },
            _ => src.source()?,
        };
        let topo = src.load(&source)?;
        machines.push((topo, override_iommu.or(m.iommu).unwrap_or_default()));
    }
    let defaults = peerdma_workload::run::RunOptions::default();
    let opts = peerdma_workload::run::RunOptions {
        iommu: machines.first().map_or(defaults.iommu, |m| m.1),
        seed: seed.unwrap_or(defaults.seed),
        ..defaults
    };
    let (report, topos) = peerdma_workload::run_machines(&w, machines, opts)?;
    if let Some(out) = svg {
        let named: Vec<(&str, &Topology)> = w
            .machines
            .iter()
            .zip(&topos)
            .map(|(m, t)| (m.name.as_str(), t.as_ref()))
            .collect();
        let picture = peerdma_workload::svg::timeline(
            &report,
            &named,
            &format!("peerdma sim {}", path.display()),
        );
        let said = write_out(out, &picture, "an SVG picture")?;
        eprint!("{said}");
    }
    if json {
        let mut s = peerdma_workload::report::to_json(&report);
        s.push('\n');
        print(&s)?;
    } else {
        let names = peerdma_workload::report::Names::new(
            w.machines
                .iter()
                .zip(&topos)
                .map(|(m, t)| (m.name.clone(), t.as_ref()))
                .collect(),
        );
        print(&peerdma_workload::report::render(
            &names,
            &report,
            &format!("peerdma sim {}", path.display()),
        ))?;
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[allow(clippy::too_many_arguments)]
fn run_demo(
    src: &SourceArgs,
    iommu: &str,
    verbose: bool,
    print_workload: bool,
    size: u64,
    part: &str,
    json: bool,
) -> Result<ExitCode> {
    const STEP: u64 = 4 << 20;
    if size < STEP || size % STEP != 0 {
        bail!("--size {size}: the demo's reads are whole multiples of 4 MiB (try 1G or 64M)");
    }
    let topo = src.load(&src.source()?)?;
    let storage = part != "network";
    let network = part != "storage";
    let net_text = peerdma_workload::demo::network_workload_text(&topo, size / 2);
    if print_workload {
        if storage {
            print(&peerdma_workload::demo::workload_text_sized(
                &topo,
                size,
                size / 2,
            ))?;
        } else {
            match &net_text {
                Ok(t) => print(t)?,
                Err(why) => bail!(
                    "the demo has no network part on {}: {why}",
                    topo.origin_label()
                ),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = peerdma_workload::run::RunOptions {
        iommu: iommu_setting(iommu)?,
        ..Default::default()
    };
    let mut ok = true;
    let mut json_out = serde_json::Map::new();
    if storage {
        let text = peerdma_workload::demo::workload_text_sized(&topo, size, size / 2);
        let w =
            peerdma_workload::format::parse(&text, "the demo workload", std::path::Path::new("."))?;
        let (report, t) = peerdma_workload::run_workload(&w, topo.clone(), opts.clone())?;
        ok &= report.ok();
        if json {
            let v: serde_json::Value =
                serde_json::from_str(&peerdma_workload::report::to_json(&report))?;
            if let serde_json::Value::Object(m) = v {
                json_out = m;
            }
        } else if verbose {
            print(&peerdma_workload::demo::full(&t, &report))?;
        } else {
            print(&format!(
                "peerdma demo: the storage consumers of P2P DMA on the simulated machine\n{}\n",
                peerdma_workload::demo::summary(&t, &report)
            ))?;
        }
    }
    if network {
        match &net_text {
            Err(why) => {
                if !storage {
                    bail!(
                        "the demo has no network part on {}: {why}",
                        topo.origin_label()
                    );
                }
                if json {
                    json_out.insert(
                        "network".into(),
                        serde_json::json!({ "skipped": format!("the demo has no network part on {}: {why}", topo.origin_label()) }),
                    );
                } else {
                    print(&format!(
                        "The demo has no network part on {}: {why}.\n",
                        topo.origin_label()
                    ))?;
                }
            }
            Ok(text) => {
                let w = peerdma_workload::format::parse(
                    text,
                    "the demo's network workload",
                    std::path::Path::new("."),
                )?;
                let i = opts.iommu;
                let (report, topos) = peerdma_workload::run_machines(
                    &w,
                    vec![(topo.clone(), i), (topo.clone(), i)],
                    opts.clone(),
                )?;
                ok &= report.ok();
                if json {
                    let v: serde_json::Value =
                        serde_json::from_str(&peerdma_workload::report::to_json(&report))?;
                    if storage {
                        json_out.insert("network".into(), v);
                    } else if let serde_json::Value::Object(m) = v {
                        json_out = m;
                    }
                } else if verbose {
                    print(&peerdma_workload::report::render(
                        &peerdma_workload::report::Names::new(
                            w.machines
                                .iter()
                                .zip(&topos)
                                .map(|(m, t)| (m.name.clone(), &**t))
                                .collect(),
                        ),
                        &report,
                        "peerdma demo (network part)",
                    ))?;
                } else {
                    print(&format!(
                        "peerdma demo: the network consumers of P2P DMA on two simulated machines\n{}\n",
                        peerdma_workload::demo::network_summary(&topos[1], &report)
                    ))?;
                }
            }
        }
    }
    if json {
        let mut s = serde_json::to_string_pretty(&serde_json::Value::Object(json_out))?;
        s.push('\n');
        print(&s)?;
    } else {
        print("Each job's bytes went through the simulated PCIe fabric (and the wire) and were checked; `peerdma demo --verbose` shows every leg, route and note, `--print-workload` the workload it ran, and `peerdma sim FILE` runs your own.\n")?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn endpoints(topo: &Topology, all: bool) -> Vec<FnId> {
    topo.functions()
        .iter()
        .filter(|f| all || f.is_dma_endpoint())
        .map(|f| f.id)
        .collect()
}

fn matrix_with_legend(topo: &Topology, m: &Matrix, fns: &[FnId]) -> String {
    format!(
        "{}\n{LEGEND}\n",
        peerdma_p2p::render::matrix_table_painted(topo, m, fns, &style::cell)
    )
}

fn notes(topo: &Topology) -> String {
    topo.notes()
        .iter()
        .map(|n| format!("note: {n}\n"))
        .collect()
}

fn functions_json(topo: &Topology, ids: &PciIds) -> serde_json::Value {
    topo.functions()
        .iter()
        .map(|f| {
            let mut v = serde_json::to_value(f).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("bdf".into(), json!(f.bdf));
                o.insert(
                    "upstream".into(),
                    json!(f.upstream.map(|u| topo.function(u).bdf)),
                );
                o.insert(
                    "children".into(),
                    json!(f
                        .children
                        .iter()
                        .map(|c| topo.function(*c).bdf)
                        .collect::<Vec<_>>()),
                );
                o.insert(
                    "physfn".into(),
                    json!(f.physfn.map(|u| topo.function(u).bdf)),
                );
                o.insert(
                    "host_bridge".into(),
                    json!(topo.host_bridge(f.host_bridge).name),
                );
                o.insert("description".into(), json!(describe(ids, f)));
                o.remove("id");
            }
            v
        })
        .collect()
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Cmd::Presets = cli.cmd {
        if cli.json {
            let list: Vec<_> = presets::PRESETS
                .iter()
                .map(|p| json!({"name": p.name, "summary": p.summary, "default": p.name == presets::DEFAULT}))
                .collect();
            print_json(&json!({ "presets": list }))?;
        } else {
            let mut s = String::new();
            for p in presets::PRESETS {
                let d = if p.name == presets::DEFAULT {
                    " (default)"
                } else {
                    ""
                };
                s.push_str(&format!("{:<12} {}{d}\n", p.name, p.summary));
            }
            print(&s)?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    style::set(cli.color);
    match &cli.cmd {
        Cmd::Completions(a) => return docs_cmds::completions(a),
        Cmd::Man(a) => return docs_cmds::man(a),
        Cmd::Diff(a) => return fleet_cmds::diff(&cli.source, a, &cli.pci_ids, cli.json),
        Cmd::Fleet(a) => {
            if cli.source.given() {
                bail!("fleet reads the snapshots in its directory: --live, --root, --snapshot, --topology and --preset do not apply");
            }
            return fleet_cmds::fleet(a, &cli.pci_ids, cli.json);
        }
        _ => {}
    }

    if matches!(cli.cmd, Cmd::Labels(_) | Cmd::Metrics(_)) && !cli.source.given() {
        // What these write lands in a fleet's scheduler and monitoring: the
        // built-in demo machine is never the right default there.
        bail!("labels and metrics describe a real machine: give --live for this one, or --snapshot, --root, --topology or --preset");
    }

    if let Cmd::Copy(a) = &cli.cmd {
        let s = &cli.source;
        if s.root.is_some()
            || s.snapshot.is_some()
            || s.topology.is_some()
            || s.preset.is_some()
            || s.hwloc.is_some()
        {
            bail!("copy does real I/O on this machine: --root, --snapshot, --topology, --preset and --hwloc do not apply");
        }
        return run_copy(a, cli.json);
    }

    if let Cmd::Probe {
        provider,
        client,
        to,
        size,
        offset,
        to_offset,
        seed,
        trace,
    } = &cli.cmd
    {
        let s = &cli.source;
        if s.root.is_some()
            || s.snapshot.is_some()
            || s.topology.is_some()
            || s.preset.is_some()
            || s.hwloc.is_some()
        {
            bail!("probe does real I/O on this machine: --root, --snapshot, --topology, --preset and --hwloc do not apply");
        }
        let mut opts = peerdma_linux::probe::ProbeOptions::new(provider, client);
        opts.to = to.clone();
        opts.size = *size;
        opts.offset = *offset;
        opts.to_offset = *to_offset;
        opts.seed = *seed;
        opts.trace = *trace;
        return run_probe(&opts, cli.json);
    }

    if let Cmd::Sim {
        workload,
        iommu,
        seed,
        svg,
    } = &cli.cmd
    {
        return run_sim(
            &cli.source,
            workload,
            iommu.as_deref(),
            *seed,
            svg.as_deref(),
            cli.json,
        );
    }
    if let Cmd::Demo {
        iommu,
        verbose,
        print_workload,
        size,
        part,
    } = &cli.cmd
    {
        return run_demo(
            &cli.source,
            iommu,
            *verbose,
            *print_workload,
            *size,
            part,
            cli.json,
        );
    }

    let source = cli.source.source()?;
    let topo = cli.source.load(&source)?;
    match cli.cmd {
        Cmd::Presets
        | Cmd::Probe { .. }
        | Cmd::Copy(_)
        | Cmd::Sim { .. }
        | Cmd::Demo { .. }
        | Cmd::Diff(_)
        | Cmd::Fleet(_)
        | Cmd::Completions(_)
        | Cmd::Man(_) => {
            unreachable!("handled above")
        }
        Cmd::Labels(a) => fleet_cmds::labels(&topo, &source, &a, cli.json),
        Cmd::Metrics(a) => fleet_cmds::metrics(&topo, &a, cli.json),
        Cmd::DevmemTable(a) => net_cmds::devmem_table(&topo, &a, cli.json),
        Cmd::Report { output, probe, all } => {
            report_cmd(&topo, &source, &cli.pci_ids, &output, &probe, all)
        }
        Cmd::Topo { all, svg, dot } => topo_cmd(
            &topo,
            &cli.pci_ids,
            all,
            svg.as_deref(),
            dot.as_deref(),
            cli.json,
        ),
        Cmd::Check { provider, client } => {
            let p = topo.lookup(&provider)?;
            let c = topo.lookup(&client)?;
            let e = explain(&topo, p, c);
            if cli.json {
                let mut v = serde_json::to_value(&e)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("notes".into(), json!(topo.notes()));
                }
                print_json(&v)?;
            } else {
                let mut s = e.render();
                s.push_str(&notes(&topo));
                style::print(&style::check(&s, e.map_type))?;
            }
            Ok(if e.p2p {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Matrix { all } => {
            if cli.json {
                let pairs = peerdma_p2p::pair_reports(&topo);
                print_json(
                    &json!({ "source": source.label(), "pairs": pairs, "notes": topo.notes() }),
                )?;
            } else {
                let m = matrix(&topo);
                let fns = endpoints(&topo, all);
                let mut s = header(&topo);
                s.push('\n');
                s.push_str(&matrix_with_legend(&topo, &m, &fns));
                s.push_str(&notes(&topo));
                style::print(&s)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Snapshot {
            output,
            tree: tree_dir,
        } => {
            // Each output is written whole or not at all; the tree first,
            // and taken back if the snapshot then fails, so an error leaves
            // nothing behind.
            if let Some(dir) = &tree_dir {
                sysfs::create_root(topo.raw(), dir)?;
            }
            let to_stdout = output.as_deref().is_some_and(is_stdout);
            if let Some(path) = &output {
                let written = if to_stdout {
                    print(&snapshot_json(topo.raw()))
                } else {
                    write_snapshot(topo.raw(), path).map_err(anyhow::Error::from)
                };
                if let Err(e) = written {
                    if let Some(dir) = &tree_dir {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    return Err(e);
                }
            }
            // What was written, on standard error when the snapshot itself
            // went to standard output.
            let summary = if cli.json {
                let mut s = serde_json::to_string_pretty(
                    &json!({ "schema": JSON_SCHEMA, "snapshot": output, "tree": tree_dir, "functions": topo.len(), "source": source.label() }),
                )?;
                s.push('\n');
                s
            } else {
                let mut s = String::new();
                if let Some(p) = &output {
                    s.push_str(&format!(
                        "wrote snapshot of {} functions from {} to {}\n",
                        topo.len(),
                        source.label(),
                        if to_stdout {
                            "standard output".into()
                        } else {
                            p.display().to_string()
                        }
                    ));
                }
                if let Some(d) = &tree_dir {
                    s.push_str(&format!(
                        "wrote a --root tree of {} functions to {}\n",
                        topo.len(),
                        d.display()
                    ));
                }
                s.push_str(&notes(&topo));
                s
            };
            if to_stdout {
                eprint!("{summary}");
            } else {
                print(&summary)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Write `text` to `path` whole (standard output for `-`); the line that
/// `peerdma probe`: the P2P smoke test on this machine, Ctrl-C waiting
/// for the transfers when tracing so that the trace instance is removed.
fn run_probe(opts: &peerdma_linux::probe::ProbeOptions, json: bool) -> Result<ExitCode> {
    // With --trace, a first Ctrl-C waits for the transfers, so that the
    // tracing instance is removed; a second one ends the probe at once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if opts.trace {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_conditional_shutdown(
                sig,
                130,
                std::sync::Arc::clone(&stop),
            )
            .and_then(|_| signal_hook::flag::register(sig, std::sync::Arc::clone(&stop)))
            .context("installing the interrupt handler")?;
        }
    }
    let report = peerdma_linux::probe::run(opts)?;
    if json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        print(&report.render())?;
    }
    if stop.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!(
            "peerdma: interrupted (it took effect after the transfers, with the tracing put back)"
        );
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::from(report.exit_code))
}

/// `peerdma report -o FILE`.
fn report_cmd(
    topo: &Topology,
    source: &Source,
    pci_ids: &Option<PathBuf>,
    output: &std::path::Path,
    probe: &[String],
    all: bool,
) -> Result<ExitCode> {
    let pairs = probe
        .iter()
        .map(|p| peerdma_report::probe::parse_pair(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let ids = load_ids(pci_ids)?;
    let opts = peerdma_p2p::dot::DotOptions {
        all_in_matrix: all,
        with_matrix: false,
        ..Default::default()
    };
    let picture = match peerdma_report::machine_svg(topo, &ids, &opts) {
        Ok(svg) => peerdma_report::html::Picture::Svg(svg),
        Err(e) => peerdma_report::html::Picture::Unavailable(e.to_string()),
    };
    let mut report = peerdma_report::html::Report::new(topo, &ids, picture);
    report.all_in_matrix = all;
    report.generated_by = peerdma_report::generated_by();
    if !pairs.is_empty() {
        let live = matches!(source, Source::Live);
        report.probes = Some(peerdma_report::probe::run(
            &pairs,
            live,
            &topo.origin_label(),
        ));
    }
    let said = write_out(output, &report.render(), "an HTML report")?;
    if is_stdout(output) {
        eprint!("{said}");
    } else {
        print(&said)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `peerdma topo`: the tree and the matrix, or the machine as DOT / SVG.
fn topo_cmd(
    topo: &Topology,
    pci_ids: &Option<PathBuf>,
    all: bool,
    svg: Option<&std::path::Path>,
    dot: Option<&std::path::Path>,
    json: bool,
) -> Result<ExitCode> {
    let ids = load_ids(pci_ids)?;
    if svg.is_some() || dot.is_some() {
        let opts = peerdma_p2p::dot::DotOptions {
            all_in_matrix: all,
            ..Default::default()
        };
        let graph = peerdma_p2p::dot::machine_dot(topo, &ids, &opts);
        let mut said = String::new();
        if let Some(path) = dot {
            said.push_str(&write_out(path, &graph, "a DOT graph")?);
        }
        if let Some(path) = svg {
            let picture = peerdma_report::graphviz::svg(&graph)?;
            said.push_str(&write_out(path, &picture, "an SVG picture")?);
        }
        // What was written, on standard error when a picture itself
        // went to standard output.
        if [dot, svg].into_iter().flatten().any(is_stdout) {
            eprint!("{said}");
        } else {
            print(&said)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        let hbs: Vec<_> = topo
            .host_bridges()
            .iter()
            .map(|h| {
                json!({
                    "name": h.name, "domain": h.domain, "bus": h.bus, "numa_node": h.numa_node,
                    "device": topo.host_bridge_device(h.id).map(|d| topo.function(d).bdf),
                    "whitelisted": peerdma_p2p::host_bridge_whitelisted(topo, h.id, true),
                    "whitelisted_across_host_bridges": peerdma_p2p::host_bridge_whitelisted(topo, h.id, false),
                })
            })
            .collect();
        print_json(&json!({
            "origin": topo.origin(),
            "cpu": { "vendor_id": topo.cpu().vendor_id, "family": topo.cpu().family, "model": topo.cpu().model,
                     "model_name": topo.cpu().model_name, "supports_p2pdma": topo.cpu().supports_p2pdma() },
            "host_bridges": hbs,
            "functions": functions_json(topo, &ids),
            "notes": topo.notes(),
        }))?;
    } else {
        let fns = endpoints(topo, all);
        let m = Matrix::compute(topo);
        let mut s = header(topo);
        s.push('\n');
        s.push_str(&tree(topo, &ids));
        if fns.len() >= 2 {
            s.push_str(&format!(
                "\nP2P matrix of {} {}:\n",
                fns.len(),
                if all {
                    "functions"
                } else {
                    "DMA endpoints (--all for every function)"
                }
            ));
            s.push_str(&matrix_with_legend(topo, &m, &fns));
        }
        s.push_str(&notes(topo));
        style::print(&s)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// says so.
fn write_out(path: &std::path::Path, text: &str, what: &str) -> Result<String> {
    if is_stdout(path) {
        print(text)?;
        return Ok(String::new());
    }
    peerdma_pci::write_file(path, text.as_bytes(), what)
        .with_context(|| format!("cannot write {what} to {}", path.display()))?;
    Ok(format!("wrote {what} to {}\n", path.display()))
}

/// Whether `path` is `-` or names this process's standard output
/// (`/dev/stdout`, or the file it is redirected to).
fn is_stdout(path: &std::path::Path) -> bool {
    if path.as_os_str() == "-" {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (
            std::fs::metadata(path),
            std::fs::metadata("/proc/self/fd/1"),
        ) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    false
}

/// An error and its causes as one line, each cause said once: an error
/// whose message already gives its cause (a file error saying "permission
/// denied") is not followed by the cause's own words for it
/// ("Permission denied (os error 13)").
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        let text = text.trim();
        let plain = match text.rfind(" (os error ") {
            Some(i) if text.ends_with(')') => &text[..i],
            _ => text,
        };
        if plain.is_empty() || out.to_lowercase().contains(&plain.to_lowercase()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("peerdma: error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use peerdma_pci::render::short_name;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn causes_are_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = anyhow::Error::new(io).context("cannot read /x: permission denied");
        assert_eq!(one_line(&e), "cannot read /x: permission denied");
        let io = std::io::Error::from_raw_os_error(28);
        let e = anyhow::Error::new(io).context("cannot write /y");
        assert_eq!(
            one_line(&e),
            "cannot write /y: No space left on device (os error 28)"
        );
    }

    #[test]
    fn short_names_prefer_labels() {
        let t = Source::default().load().unwrap();
        assert_eq!(short_name(t.function(t.lookup("gpu0").unwrap())), "gpu0");
    }
}
