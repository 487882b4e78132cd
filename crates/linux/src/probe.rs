//! The P2P smoke test: move known bytes through a provider's memory with
//! real DMA, and hold what happened against the verdict.
//!
//! 1. Write a pattern to a scratch region *A* of the client's drive from a
//!    host buffer (`O_DIRECT`), and read it back to be sure the drive keeps
//!    bytes at all.
//! 2. Allocate P2P memory from the provider (`mmap` of `p2pmem/allocate`)
//!    and fill it with a canary; fill the destination region *B* with
//!    another canary.
//! 3. `O_DIRECT`-read *A* into the P2P memory — the drive DMA-writes the
//!    provider's BAR — and check it through [`peerdma_mem::IoMem`].
//! 4. Put the pattern into the P2P memory with the CPU (so this step does
//!    not depend on step 3), `O_DIRECT`-write it to *B* — the drive (the
//!    client, or `--to`) DMA-reads the provider's BAR — read *B* back into
//!    host memory and compare.
//!
//! Each transfer ends `ok` (right bytes), `eremoteio` (the kernel refused:
//! the pair cannot do P2P), `wrong_bytes` (success reported, other bytes
//! arrived: all-ones, zeros, the canary, or anything else, with the first
//! wrong offset) or `error` (another errno, with the step). The verdict
//! says what to expect: a P2P map type means `ok`, `not_supported` means
//! `eremoteio`.
//!
//! Nothing is written outside the two scratch regions the report names;
//! they default to the last `2 × size` bytes of the client's drive (or the
//! last `size` bytes of each drive with `--to`). A drive that is mounted or
//! held by another device is refused, and drives are opened `O_EXCL`.

use crate::blockdev::{self, BlockDevice};
use crate::direct::{AlignedBuf, DirectDev};
use crate::p2pmem::{self, P2pMem, P2pMemInfo};
use crate::pattern::{self, Mismatch};
use crate::trace::{self, AddressMap, Decided, DmaDir, LegSpec, Staging, TraceReport, Tracer};
use crate::{errno_name, Error, Result};
use peerdma_mem::{format_size, Bdf, PAGE_SIZE};
use peerdma_p2p::{calc_map_type_and_dist, oracle, MapType};
use peerdma_pci::{FnId, Source, Topology};
use serde::Serialize;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bytes moved by default.
pub const DEFAULT_SIZE: u64 = 1 << 20;

/// What to probe.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// The function whose memory is used (a BDF or a name).
    pub provider: String,
    /// The function whose drive reads into that memory.
    pub client: String,
    /// The function whose drive writes it out (default: the client).
    pub to: Option<String>,
    /// Bytes to move: a multiple of the page size and of the drives'
    /// logical block size.
    pub size: u64,
    /// Byte offset of the source region on the client's drive.
    pub offset: Option<u64>,
    /// Byte offset of the destination region.
    pub to_offset: Option<u64>,
    /// Pattern seed (default: from the clock and the process id).
    pub seed: Option<u64>,
    /// Where sysfs, `proc` and debugfs are (`/`).
    pub sys_root: PathBuf,
    /// Where the device nodes are (`/dev`).
    pub dev_dir: PathBuf,
    /// Watch the kernel's DMA mapping events during each transfer and
    /// report the path observed next to the verdict (needs root and
    /// tracefs; the report says why where it cannot).
    pub trace: bool,
}

impl ProbeOptions {
    pub fn new(provider: impl Into<String>, client: impl Into<String>) -> ProbeOptions {
        ProbeOptions {
            provider: provider.into(),
            client: client.into(),
            to: None,
            size: DEFAULT_SIZE,
            offset: None,
            to_offset: None,
            seed: None,
            sys_root: PathBuf::from("/"),
            dev_dir: PathBuf::from("/dev"),
            trace: false,
        }
    }
}

/// How a transfer (or the whole probe) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The right bytes arrived.
    Ok,
    /// The kernel refused the transfer with `EREMOTEIO`.
    Eremoteio,
    /// Success was reported but other bytes arrived.
    WrongBytes,
    /// Another error.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Eremoteio => "eremoteio",
            Outcome::WrongBytes => "wrong_bytes",
            Outcome::Error => "error",
        }
    }

    /// Parse the snake_case name.
    pub fn from_name(s: &str) -> Option<Outcome> {
        Some(match s {
            "ok" => Outcome::Ok,
            "eremoteio" => Outcome::Eremoteio,
            "wrong_bytes" => Outcome::WrongBytes,
            "error" => Outcome::Error,
            _ => return None,
        })
    }

    /// What a transfer should end with under a map type.
    pub fn expected_for(map: MapType) -> Outcome {
        if map.is_p2p() {
            Outcome::Ok
        } else {
            Outcome::Eremoteio
        }
    }
}

/// A verdict for one (provider, client) pair.
#[derive(Clone, Debug, Serialize)]
pub struct PairReport {
    pub provider: Bdf,
    pub client: Bdf,
    /// peerdma's verdict on its model of this machine.
    pub map_type: MapType,
    pub distance: Option<u32>,
    /// The kernel's own verdict, when the oracle kernel's debugfs file is
    /// readable (`map_type distance`).
    pub kernel: Option<String>,
}

/// A setup step.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub micros: u64,
}

/// One DMA transfer through the P2P memory.
#[derive(Clone, Debug, Serialize)]
pub struct Transfer {
    /// `drive_to_p2pmem` or `p2pmem_to_drive`.
    pub transfer: &'static str,
    /// What moved where, for people.
    pub what: String,
    pub verdict: PairReport,
    pub expected: Outcome,
    pub result: Outcome,
    /// The step that failed (`read_to_p2pmem`, `check_p2pmem`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrong: Option<Mismatch>,
    pub micros: u64,
    /// `--trace`: the path observed in the kernel's DMA mapping events
    /// during this transfer (`trace.legs[0].observed`), or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceReport>,
}

impl Transfer {
    /// A transfer about to run, expected to end as the verdict predicts.
    fn new(transfer: &'static str, what: String, verdict: PairReport) -> Transfer {
        Transfer {
            transfer,
            what,
            expected: Outcome::expected_for(verdict.map_type),
            verdict,
            result: Outcome::Ok,
            step: None,
            errno: None,
            message: None,
            wrong: None,
            micros: 0,
            trace: None,
        }
    }

    /// The DMA itself failed at `step`.
    fn dma_failed(&mut self, step: &'static str, e: &Error) {
        let (r, errno) = failed(e);
        self.result = r;
        self.errno = errno;
        self.step = Some(step);
        self.message = Some(e.to_string());
    }
}

/// A region the probe writes.
#[derive(Clone, Debug, Serialize)]
pub struct Region {
    pub role: &'static str,
    pub device: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// Everything the probe did and found.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub provider: Bdf,
    pub client: Bdf,
    pub to: Bdf,
    pub size: u64,
    pub seed: String,
    /// Where the verdicts come from.
    pub verdict_source: String,
    pub p2pmem: Option<P2pMemInfo>,
    pub devices: Vec<BlockDevice>,
    /// The only places written.
    pub scratch: Vec<Region>,
    pub steps: Vec<Step>,
    pub transfers: Vec<Transfer>,
    pub expected: Outcome,
    pub outcome: Outcome,
    /// Where the outcome came from (`setup:find_block_device`,
    /// `drive_to_p2pmem:check_p2pmem`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    pub message: String,
    /// The outcome is what the verdict predicts.
    pub agrees: bool,
    /// 0 agrees, 1 does not (wrong bytes included), 2 error.
    pub exit_code: u8,
}

fn micros(t: Instant) -> u64 {
    t.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
}

fn default_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40) ^ 0x7065_6572_646d_6121
}

const CANARY_P2PMEM: u64 = 0xc1c1_c1c1_0000_0001;
const CANARY_DEST: u64 = 0xc2c2_c2c2_0000_0002;

/// Choose the scratch regions: `(source offset on client, destination
/// offset on to)`, checked against the drives.
pub fn scratch_offsets(
    client: &BlockDevice,
    to: &BlockDevice,
    size: u64,
    offset: Option<u64>,
    to_offset: Option<u64>,
) -> Result<(u64, u64)> {
    let same = client.dev == to.dev;
    let align = PAGE_SIZE
        .max(client.logical_block_size)
        .max(to.logical_block_size);
    if size == 0 || size % align != 0 {
        return Err(Error::bad(format!(
            "size {size} must be a non-zero multiple of {align} (the page size and the drives' logical block size)"
        )));
    }
    let round = |x: u64, lbs: u64| x / lbs * lbs;
    let need = if same { 2 * size } else { size };
    if client.size < need || to.size < size {
        return Err(Error::bad(format!(
            "{} ({}) is too small for {} of scratch space",
            client.dev_path.display(),
            format_size(client.size),
            format_size(need)
        )));
    }
    let a = match offset {
        Some(a) => a,
        None => round(client.size - need, client.logical_block_size),
    };
    let b = match to_offset {
        Some(b) => b,
        None if same && offset.is_none() => a + size,
        None => round(to.size - size, to.logical_block_size),
    };
    for (what, dev, off) in [("source", client, a), ("destination", to, b)] {
        if off % dev.logical_block_size != 0 {
            return Err(Error::bad(format!(
                "{what} offset {off:#x} on {} is not a multiple of its logical block size {}",
                dev.dev_path.display(),
                dev.logical_block_size
            )));
        }
        if off.checked_add(size).is_none_or(|end| end > dev.size) {
            return Err(Error::bad(format!(
                "{what} region [{off:#x}, +{}) lies beyond the end of {} ({} bytes)",
                format_size(size),
                dev.dev_path.display(),
                dev.size
            )));
        }
    }
    if same && a < b + size && b < a + size {
        return Err(Error::bad(format!(
            "source [{a:#x}, +{size:#x}) and destination [{b:#x}, +{size:#x}) overlap on {}",
            client.dev_path.display()
        )));
    }
    Ok((a, b))
}

struct Run<'a> {
    report: ProbeReport,
    opts: &'a ProbeOptions,
    /// The machine's address map, for `--trace`.
    map: Option<AddressMap>,
}

impl Run<'_> {
    /// Run a setup step; on error record it and give `None`.
    fn step<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Option<T> {
        let t = Instant::now();
        let r = f();
        let (ok, errno, message) = match &r {
            Ok(_) => (true, None, None),
            Err(e) => {
                let hint = match e.errno() {
                    Some(libc::EACCES) | Some(libc::EPERM) => " (peerdma probe needs root)",
                    Some(libc::EBUSY) => {
                        " (the drive is in use: mounted, or held by another device)"
                    }
                    _ => "",
                };
                (
                    false,
                    e.errno().map(|n| errno_name(n).to_string()),
                    Some(format!("{e}{hint}")),
                )
            }
        };
        self.report.steps.push(Step {
            step: name,
            ok,
            errno,
            message,
            micros: micros(t),
        });
        r.ok()
    }
}

fn load_topology(sys_root: &Path) -> Result<Topology> {
    let source = if sys_root == Path::new("/") {
        Source::Live
    } else {
        Source::Root(sys_root.to_path_buf())
    };
    Ok(source.load()?)
}

fn pair_report(
    topo: &Topology,
    kernel: Option<&oracle::KernelVerdicts>,
    p: FnId,
    c: FnId,
) -> PairReport {
    let v = calc_map_type_and_dist(topo, p, c);
    let (pb, cb) = (topo.function(p).bdf, topo.function(c).bdf);
    PairReport {
        provider: pb,
        client: cb,
        map_type: v.map_type,
        distance: v.distance,
        kernel: kernel
            .and_then(|k| k.verdict(pb, cb))
            .map(|(map, dist)| format!("{} {dist}", map.as_str())),
    }
}

/// Run the probe. `Err` only when the machine cannot be read or a function
/// does not exist; everything after that ends in the report.
pub fn run(opts: &ProbeOptions) -> Result<ProbeReport> {
    let topo = load_topology(&opts.sys_root)?;
    let p = topo.lookup(&opts.provider)?;
    let c = topo.lookup(&opts.client)?;
    let t = match &opts.to {
        Some(t) => topo.lookup(t)?,
        None => c,
    };
    let kernel_path = opts.sys_root.join(oracle::VERDICTS_PATH);
    // Only the oracle kernel prints it (and only root reads debugfs); when
    // it is there it must parse, or the report would hide the kernel's word.
    let kernel = match std::fs::read_to_string(&kernel_path) {
        Ok(text) => Some(oracle::parse_verdicts(
            &text,
            &kernel_path.display().to_string(),
        )?),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) => None,
        Err(e) => return Err(Error::io("read", &kernel_path, e)),
    };
    let seed = opts.seed.unwrap_or_else(default_seed);
    let read_verdict = pair_report(&topo, kernel.as_ref(), p, c);
    let write_verdict = pair_report(&topo, kernel.as_ref(), p, t);
    let bdf = |id: FnId| topo.function(id).bdf;
    let report = ProbeReport {
        provider: bdf(p),
        client: bdf(c),
        to: bdf(t),
        size: opts.size,
        seed: format!("{seed:#018x}"),
        verdict_source: match &kernel {
            Some(_) => format!(
                "peerdma on {}; kernel from {}",
                topo.origin_label(),
                kernel_path.display()
            ),
            None => format!("peerdma on {}", topo.origin_label()),
        },
        p2pmem: None,
        devices: Vec::new(),
        scratch: Vec::new(),
        steps: Vec::new(),
        transfers: Vec::new(),
        expected: Outcome::expected_for(read_verdict.map_type)
            .max_severity(Outcome::expected_for(write_verdict.map_type)),
        outcome: Outcome::Error,
        step: None,
        errno: None,
        message: String::new(),
        agrees: false,
        exit_code: 2,
    };
    let map = opts
        .trace
        .then(|| trace::address_map(&topo, &opts.sys_root, &[bdf(c), bdf(t)]));
    let mut run = Run { report, opts, map };
    run.transfers(seed, read_verdict, write_verdict);
    run.conclude();
    Ok(run.report)
}

impl Outcome {
    fn severity(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::Eremoteio => 1,
            Outcome::Error => 2,
            Outcome::WrongBytes => 3,
        }
    }

    fn max_severity(self, other: Outcome) -> Outcome {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

/// A transfer's result from a failed system call.
fn failed(e: &Error) -> (Outcome, Option<String>) {
    match e.errno() {
        Some(libc::EREMOTEIO) => (Outcome::Eremoteio, Some("EREMOTEIO".into())),
        Some(n) => (Outcome::Error, Some(errno_name(n).to_string())),
        None => (Outcome::Error, None),
    }
}

impl Run<'_> {
    fn transfers(&mut self, seed: u64, read_verdict: PairReport, write_verdict: PairReport) {
        let o = self.opts;
        let sys = o.sys_root.clone();
        let (client_bdf, to_bdf, provider) =
            (self.report.client, self.report.to, self.report.provider);
        let Some(client) = self.step("find_block_device", || {
            blockdev::find_for_function(&sys, &o.dev_dir, client_bdf)
        }) else {
            return;
        };
        let to = if to_bdf == client_bdf {
            client.clone()
        } else {
            let Some(to) = self.step("find_block_device", || {
                blockdev::find_for_function(&sys, &o.dev_dir, to_bdf)
            }) else {
                return;
            };
            to
        };
        self.report.devices.push(client.clone());
        if to.dev != client.dev {
            self.report.devices.push(to.clone());
        }
        let same = to.dev == client.dev;
        let mountinfo_path = sys.join("proc/self/mountinfo");
        let devices = self.report.devices.clone();
        let checked = self.step("check_drives", || {
            let mountinfo = std::fs::read_to_string(&mountinfo_path)
                .map_err(|e| Error::io("read", &mountinfo_path, e))?;
            for d in &devices {
                if let Some(why) = d.in_use(&mountinfo) {
                    return Err(Error::InUse {
                        device: d.dev_path.clone(),
                        detail: why,
                    });
                }
                blockdev::check_node(&d.dev_path, d.dev)?;
            }
            Ok(())
        });
        if checked.is_none() {
            return;
        }
        let size = o.size;
        let Some((a, b)) = self.step("choose_scratch", || {
            scratch_offsets(&client, &to, size, o.offset, o.to_offset)
        }) else {
            return;
        };
        self.report.scratch = vec![
            Region {
                role: "source",
                device: client.dev_path.clone(),
                offset: a,
                len: size,
            },
            Region {
                role: "destination",
                device: to.dev_path.clone(),
                offset: b,
                len: size,
            },
        ];
        let Some(client_dev) = self.step("open", || DirectDev::open(&client.dev_path)) else {
            return;
        };
        let to_dev_owned;
        let to_dev = if same {
            &client_dev
        } else {
            let Some(d) = self.step("open", || DirectDev::open(&to.dev_path)) else {
                return;
            };
            to_dev_owned = d;
            &to_dev_owned
        };
        self.report.p2pmem = p2pmem::info(&sys, provider).ok();
        let len = size as usize;
        let Some(mem) = self.step("allocate_p2pmem", || P2pMem::allocate(&sys, provider, len))
        else {
            return;
        };

        let want = pattern::pattern(seed, len);
        let mut host = AlignedBuf::zeroed(len);
        host.as_mut_slice().copy_from_slice(&want);
        if self
            .step("write_source", || client_dev.write_from(&host, a))
            .is_none()
        {
            return;
        }
        let verified = self.step("verify_source", || {
            let mut back = AlignedBuf::zeroed(len);
            client_dev.read_into(&mut back, a)?;
            match pattern::compare(&want, back.as_slice(), None) {
                None => Ok(()),
                Some(m) => Err(Error::Unreliable {
                    what: format!(
                        "{} does not keep what is written to it (host memory, no P2P involved)",
                        client.dev_path.display()
                    ),
                    detail: m.describe(),
                }),
            }
        });
        if verified.is_none() {
            return;
        }
        let dest_canary = pattern::pattern(seed ^ CANARY_DEST, len);
        host.as_mut_slice().copy_from_slice(&dest_canary);
        if self
            .step("prepare_destination", || to_dev.write_from(&host, b))
            .is_none()
        {
            return;
        }
        let mem_canary = pattern::pattern(seed ^ CANARY_P2PMEM, len);
        let io = mem.io();
        if self
            .step("prepare_p2pmem", || {
                io.write(0, &mem_canary).map_err(|e| Error::P2pAccess {
                    provider,
                    source: Box::new(e),
                })
            })
            .is_none()
        {
            return;
        }

        // Transfer 1: the client's drive DMA-writes the provider's memory.
        let t0 = Instant::now();
        let mut tr = Transfer::new(
            "drive_to_p2pmem",
            format!(
                "{} [{a:#x}, +{}) -> P2P memory of {provider} (the drive DMA-writes the provider's BAR)",
                client.dev_path.display(),
                format_size(size)
            ),
            read_verdict,
        );
        let tracer = self.start_trace(client_bdf);
        let dma = client_dev.read_into_p2p(&mem, a);
        tr.trace = self.finish_trace(
            tracer,
            "drive_to_p2pmem",
            client_bdf,
            DmaDir::FromDevice,
            &tr,
            &dma,
        );
        match dma {
            Err(e) => tr.dma_failed("read_to_p2pmem", &e),
            Ok(()) => {
                let mut got = vec![0u8; len];
                match io.read(0, &mut got) {
                    Err(e) => {
                        tr.result = Outcome::Error;
                        tr.step = Some("check_p2pmem");
                        tr.message = Some(e.to_string());
                    }
                    Ok(()) => {
                        if let Some(m) = pattern::compare(&want, &got, Some(&mem_canary)) {
                            tr.result = Outcome::WrongBytes;
                            tr.step = Some("check_p2pmem");
                            tr.message = Some(format!(
                                "the read reported success, but the P2P memory holds {}",
                                m.describe()
                            ));
                            tr.wrong = Some(m);
                        }
                    }
                }
            }
        }
        tr.micros = micros(t0);
        self.report.transfers.push(tr);

        // Transfer 2 on its own footing: the CPU puts the pattern in place.
        if self
            .step("fill_p2pmem", || {
                io.write(0, &want).map_err(|e| Error::P2pAccess {
                    provider,
                    source: Box::new(e),
                })?;
                let mut got = vec![0u8; len];
                io.read(0, &mut got).map_err(|e| Error::P2pAccess {
                    provider,
                    source: Box::new(e),
                })?;
                match pattern::compare(&want, &got, Some(&mem_canary)) {
                    None => Ok(()),
                    Some(m) => Err(Error::Unreliable {
                        what: format!("the CPU cannot even write the P2P memory of {provider}"),
                        detail: m.describe(),
                    }),
                }
            })
            .is_none()
        {
            return;
        }
        let t0 = Instant::now();
        let mut tr = Transfer::new(
            "p2pmem_to_drive",
            format!(
                "P2P memory of {provider} -> {} [{b:#x}, +{}) (the drive DMA-reads the provider's BAR)",
                to.dev_path.display(),
                format_size(size)
            ),
            write_verdict,
        );
        let tracer = self.start_trace(to_bdf);
        let dma = to_dev.write_from_p2p(&mem, b);
        tr.trace = self.finish_trace(
            tracer,
            "p2pmem_to_drive",
            to_bdf,
            DmaDir::ToDevice,
            &tr,
            &dma,
        );
        match dma {
            Err(e) => tr.dma_failed("write_from_p2pmem", &e),
            Ok(()) => {
                let mut back = AlignedBuf::zeroed(len);
                match to_dev.read_into(&mut back, b) {
                    Err(e) => {
                        tr.result = Outcome::Error;
                        tr.errno = e.errno().map(|n| errno_name(n).to_string());
                        tr.step = Some("read_back");
                        tr.message = Some(e.to_string());
                    }
                    Ok(()) => {
                        if let Some(m) =
                            pattern::compare(&want, back.as_slice(), Some(&dest_canary))
                        {
                            tr.result = Outcome::WrongBytes;
                            tr.step = Some("read_back");
                            tr.message = Some(format!(
                                "the write reported success, but {} holds {}",
                                to.dev_path.display(),
                                m.describe()
                            ));
                            tr.wrong = Some(m);
                        }
                    }
                }
            }
        }
        tr.micros = micros(t0);
        self.report.transfers.push(tr);
    }

    /// `--trace`: start watching `device`'s mappings (or say why not).
    fn start_trace(&self, device: Bdf) -> Option<Result<Tracer, TraceReport>> {
        let o = self.opts;
        let map = self.map.clone();
        trace::start_if(o.trace, &o.sys_root, &[device], || map)
    }

    /// `--trace`: stop watching, and hold the mappings against the verdict.
    fn finish_trace(
        &self,
        tracer: Option<Result<Tracer, TraceReport>>,
        leg: &str,
        device: Bdf,
        dir: DmaDir,
        tr: &Transfer,
        dma: &Result<()>,
    ) -> Option<TraceReport> {
        tracer.map(|t| match t {
            Ok(t) => t.finish(&[LegSpec {
                leg: leg.to_string(),
                device,
                dir,
                staging: Staging::P2p(self.report.provider),
                decided: Decided::P2p(tr.verdict.map_type),
                refused: matches!(dma, Err(e) if e.errno() == Some(libc::EREMOTEIO)),
                moved: dma.is_ok().then_some(self.report.size),
            }]),
            Err(r) => r,
        })
    }

    /// Fill in outcome, agreement, message and exit code.
    fn conclude(&mut self) {
        let r = &mut self.report;
        if let Some(s) = r.steps.iter().find(|s| !s.ok) {
            r.outcome = Outcome::Error;
            r.step = Some(format!("setup:{}", s.step));
            r.errno = s.errno.clone();
            r.message = format!(
                "error before any P2P transfer ({}): {}",
                s.step,
                s.message.as_deref().unwrap_or("failed")
            );
            r.agrees = false;
            r.exit_code = 2;
            return;
        }
        let worst = r
            .transfers
            .iter()
            .max_by_key(|t| t.result.severity())
            .map(|t| (t.result, t.transfer, t.step, t.errno.clone()));
        let Some((outcome, transfer, step, errno)) = worst else {
            r.message = "no transfer ran".into();
            return;
        };
        r.outcome = outcome;
        r.agrees = r.transfers.iter().all(|t| t.result == t.expected) && r.transfers.len() == 2;
        // `--trace`: the path observed must be the one decided too.
        let traced: Vec<&TraceReport> = r
            .transfers
            .iter()
            .filter_map(|t| t.trace.as_ref())
            .collect();
        let observed = TraceReport::merge(&traced);
        let trace_differs = observed.as_ref().and_then(TraceReport::agrees) == Some(false);
        r.agrees &= !trace_differs;
        if outcome != Outcome::Ok {
            r.step = Some(match step {
                Some(s) => format!("{transfer}:{s}"),
                None => transfer.to_string(),
            });
            r.errno = errno;
        }
        let verdicts: Vec<String> = r
            .transfers
            .iter()
            .map(|t| format!("{} {}", t.transfer, t.verdict.map_type.as_str()))
            .collect();
        r.message = match (outcome, r.agrees) {
            (Outcome::Ok, true) => format!(
                "ok: {} moved through the P2P memory of {} with the right bytes, as the verdict ({}) says",
                format_size(r.size),
                r.provider,
                verdicts.join(", ")
            ),
            (Outcome::Eremoteio, true) => format!(
                "eremoteio: the kernel refused the P2P transfer cleanly, as the verdict ({}) says",
                verdicts.join(", ")
            ),
            (Outcome::WrongBytes, _) => {
                let t = r
                    .transfers
                    .iter()
                    .find(|t| t.result == Outcome::WrongBytes)
                    .and_then(|t| t.message.clone())
                    .unwrap_or_default();
                format!(
                    "WRONG BYTES: the transfer reported success but moved the wrong data ({}); verdict {}",
                    t,
                    verdicts.join(", ")
                )
            }
            (Outcome::Error, _) => {
                let t = r
                    .transfers
                    .iter()
                    .find(|t| t.result == Outcome::Error)
                    .and_then(|t| t.message.clone())
                    .unwrap_or_default();
                format!("error during a P2P transfer: {t}; verdict {}", verdicts.join(", "))
            }
            (o, false) => format!(
                "DISAGREES: {} where the verdict ({}) predicts {}",
                o.as_str(),
                verdicts.join(", "),
                r.expected.as_str()
            ),
        };
        if let Some(t) = &observed {
            if trace_differs {
                r.message = format!("DISAGREES: {}; {}", t.statement(), r.message);
            } else if t.agrees() == Some(true) {
                let bytes = match outcome {
                    Outcome::Ok => ", bytes verified",
                    Outcome::WrongBytes => ", and the data did not arrive",
                    _ => "",
                };
                r.message = format!("{}; {}{bytes}", r.message, t.statement());
            } else {
                r.message = format!("{}; {}", r.message, t.statement());
            }
        }
        r.exit_code = if r.agrees {
            0
        } else if outcome == Outcome::Error {
            2
        } else {
            1
        };
    }
}

impl ProbeReport {
    /// The report for people.
    pub fn render(&self) -> String {
        let mut s = format!(
            "probe: P2P memory of {} (provider), drive of {} (client){}\n",
            self.provider,
            self.client,
            if self.to != self.client {
                format!(", written out to the drive of {}", self.to)
            } else {
                String::new()
            }
        );
        s.push_str(&format!("verdicts: {}\n", self.verdict_source));
        if let Some(m) = &self.p2pmem {
            s.push_str(&format!(
                "p2pmem: {} of which {} available{}\n",
                format_size(m.size),
                format_size(m.available),
                if m.published { "" } else { " (not published)" }
            ));
        }
        for d in &self.devices {
            s.push_str(&format!(
                "drive: {} = {} ({}, logical block {} bytes)\n",
                d.bdf.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                d.dev_path.display(),
                format_size(d.size),
                d.logical_block_size
            ));
        }
        for r in &self.scratch {
            s.push_str(&format!(
                "scratch ({}): {} [{:#x}, {:#x}) — overwritten\n",
                r.role,
                r.device.display(),
                r.offset,
                r.offset + r.len
            ));
        }
        for st in self.steps.iter().filter(|s| !s.ok) {
            s.push_str(&format!(
                "step {} FAILED: {}\n",
                st.step,
                st.message.as_deref().unwrap_or("")
            ));
        }
        for t in &self.transfers {
            let v = &t.verdict;
            s.push_str(&format!(
                "{}: {}\n  verdict {} -> {}: {}{}{}\n  expected {}, got {}{}\n",
                t.transfer,
                t.what,
                v.provider,
                v.client,
                v.map_type.as_str(),
                v.distance
                    .map(|d| format!(" (distance {d})"))
                    .unwrap_or_default(),
                v.kernel
                    .as_ref()
                    .map(|k| format!("; kernel: {k}"))
                    .unwrap_or_default(),
                t.expected.as_str(),
                t.result.as_str(),
                t.message
                    .as_ref()
                    .map(|m| format!(" — {m}"))
                    .unwrap_or_default(),
            ));
            if let Some(tr) = &t.trace {
                for l in tr.render_lines() {
                    s.push_str(&format!("  trace: {l}\n"));
                }
            }
        }
        s.push_str(&format!("result: {}\n", self.message));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, dev: (u32, u32), size: u64, lbs: u64) -> BlockDevice {
        BlockDevice {
            bdf: Some("0000:01:00.0".parse().unwrap()),
            name: name.into(),
            dev_path: PathBuf::from(format!("/dev/{name}")),
            dev,
            size,
            logical_block_size: lbs,
            partitions: Vec::new(),
            sys_dir: PathBuf::new(),
        }
    }

    #[test]
    fn default_scratch_is_at_the_end_of_the_drive() {
        let d = dev("nvme0n1", (259, 0), 64 << 20, 512);
        let (a, b) = scratch_offsets(&d, &d, 1 << 20, None, None).unwrap();
        assert_eq!((a, b), ((62 << 20), (63 << 20)));
        let e = dev("nvme1n1", (259, 1), 32 << 20, 4096);
        let (a, b) = scratch_offsets(&d, &e, 1 << 20, None, None).unwrap();
        assert_eq!((a, b), ((63 << 20), (31 << 20)));
        // An odd-sized drive: rounded down to its logical block size.
        let odd = dev("vda", (254, 0), (8 << 20) + 512, 4096);
        let (a, b) = scratch_offsets(&odd, &odd, 1 << 20, None, None).unwrap();
        assert_eq!((a % 4096, b), (0, a + (1 << 20)));
    }

    #[test]
    fn bad_scratch_is_refused() {
        let d = dev("nvme0n1", (259, 0), 4 << 20, 4096);
        let msg = |r: Result<(u64, u64)>| r.unwrap_err().to_string();
        assert!(msg(scratch_offsets(&d, &d, 1000, None, None)).contains("multiple of 4096"));
        assert!(msg(scratch_offsets(&d, &d, 4 << 20, None, None)).contains("too small"));
        assert!(msg(scratch_offsets(&d, &d, 1 << 20, Some(512), None))
            .contains("not a multiple of its logical block size"));
        assert!(msg(scratch_offsets(&d, &d, 1 << 20, Some(0), Some(4096))).contains("overlap"));
        assert!(
            msg(scratch_offsets(&d, &d, 1 << 20, Some(0), Some(4 << 20)))
                .contains("beyond the end")
        );
        assert_eq!(
            scratch_offsets(&d, &d, 1 << 20, Some(0), Some(1 << 20)).unwrap(),
            (0, 1 << 20)
        );
    }

    #[test]
    fn outcomes() {
        assert_eq!(Outcome::expected_for(MapType::BusAddr), Outcome::Ok);
        assert_eq!(Outcome::expected_for(MapType::ThruHostBridge), Outcome::Ok);
        assert_eq!(
            Outcome::expected_for(MapType::NotSupported),
            Outcome::Eremoteio
        );
        assert_eq!(
            Outcome::Ok.max_severity(Outcome::WrongBytes),
            Outcome::WrongBytes
        );
        for o in [
            Outcome::Ok,
            Outcome::Eremoteio,
            Outcome::WrongBytes,
            Outcome::Error,
        ] {
            assert_eq!(Outcome::from_name(o.as_str()), Some(o));
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::json!(o.as_str())
            );
        }
        let e = Error::io(
            "pread",
            Path::new("/dev/nvme0n1"),
            std::io::Error::from_raw_os_error(libc::EREMOTEIO),
        );
        assert_eq!(failed(&e), (Outcome::Eremoteio, Some("EREMOTEIO".into())));
        let e = Error::io(
            "pread",
            Path::new("/dev/nvme0n1"),
            std::io::Error::from_raw_os_error(libc::EIO),
        );
        assert_eq!(failed(&e), (Outcome::Error, Some("EIO".into())));
    }

    /// A probe on a sysfs tree without a drive ends in a report, with the
    /// failed step named, and exit code 2.
    #[test]
    fn missing_drive_is_a_reported_error() {
        let topo = peerdma_pci::Source::Preset("dual-xeon".into())
            .load()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        peerdma_pci::sysfs::write_root(topo.raw(), dir.path()).unwrap();
        let nvme = topo
            .functions()
            .iter()
            .find(|f| f.class >> 8 == 0x0108)
            .expect("the preset has an NVMe drive");
        let gpu = topo
            .functions()
            .iter()
            .find(|f| f.base_class() == 0x03)
            .expect("the preset has a GPU");
        let mut o = ProbeOptions::new(gpu.bdf.to_string(), nvme.bdf.to_string());
        o.sys_root = dir.path().to_path_buf();
        let r = run(&o).unwrap();
        assert_eq!(r.outcome, Outcome::Error);
        assert_eq!(r.exit_code, 2);
        assert_eq!(r.step.as_deref(), Some("setup:find_block_device"));
        assert!(r.message.contains("has no block device"), "{}", r.message);
        assert!(r.transfers.is_empty() && r.scratch.is_empty());
        let text = r.render();
        assert!(text.contains("step find_block_device FAILED"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcome"], "error");
        assert_eq!(json["provider"], gpu.bdf.to_string());

        o.provider = "0000:ff:1f.7".into();
        assert!(run(&o).is_err(), "an unknown function is an error");
    }
}
