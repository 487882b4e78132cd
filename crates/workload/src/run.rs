//! The runner: every job's bytes moved through the simulated fabric by the
//! consumers, every byte checked, and the whole workload timed in one flow
//! model, where concurrent jobs share links.
//!
//! Bytes move job by job, in an order that respects `after` (the data a
//! job sees is what the jobs before it left); time is simulated for all
//! jobs together: each job's legs become flows that start when the jobs it
//! waits for have ended, and max-min fair sharing decides how fast each
//! moves. A job's legs run concurrently (a bounce is a pipeline through
//! its buffer, a drive-to-drive copy one through its staging memory).
//!
//! What a job's content is: every drive's media holds pattern data (a
//! seed per drive) until a job writes it; the device memory a `write` job
//! sends is filled with a pattern of its own first. A job is verified by
//! comparing every byte of its destination with its source — against the
//! pattern where the source was never written, else byte for byte.

use crate::format::{FaultKind, IommuSetting, Job, Policy, Task};
use crate::format::{MemRef, P2pMemSetting};
use peerdma_consumers::block::Op;
use peerdma_consumers::copy::{drive_to_drive, plan_copy, plan_rebuild, StagingPlan};
use peerdma_consumers::devmem::DeviceMemory;
use peerdma_consumers::io::{
    direct_io, End, Fallback, IoError, IoFault, IoOutcome, Leg, LegPath, Mover,
};
use peerdma_consumers::net::Wire;
use peerdma_consumers::nvme::{NvmeConfig, NvmeDrive};
use peerdma_consumers::raid::{raid5_degraded_read, write_array, Raid5Layout};
use peerdma_dma::IommuMode;
use peerdma_mem::{format_size, Address, Bdf, PhysAddr};
use peerdma_pci::Topology;
use peerdma_sim::timing::{Flow, Hop, LinkId, Network, SimTime};
use peerdma_sim::{pattern, Fault, Route, SimConfig, SimMachine};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// What the CPU does in the flow model (bytes per second): stores into a
/// BAR through write-combining, loads from a BAR (uncached, one read
/// request at a time), and XOR over data in host memory.
pub const CPU_MMIO_WRITE_RATE: f64 = 6e9;
pub const CPU_MMIO_READ_RATE: f64 = 0.3e9;
pub const CPU_XOR_RATE: f64 = 10e9;

/// How to run a workload.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub iommu: IommuSetting,
    /// Seed of the drives' pattern data.
    pub seed: u64,
    pub nvme: NvmeConfig,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            iommu: IommuSetting::Off,
            seed: 0x9e37_79b9,
            nvme: NvmeConfig::default(),
        }
    }
}

/// One leg of a job in the report.
#[derive(Clone, Debug, Serialize)]
pub struct LegReport {
    /// The machine the leg ran on (when the workload has several); for a
    /// leg on the wire, the sending machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// For a leg on the wire, the receiving machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_machine: Option<String>,
    /// A BDF, or `host` for host memory.
    pub from: String,
    pub to: String,
    /// `bus_addr`, `thru_host_bridge`, `bounced` or `host_memory`: how the
    /// leg was mapped, by the kernel's rule.
    pub path: &'static str,
    pub bytes: u64,
    /// Whose P2P memory the leg used.
    pub provider: Option<String>,
    /// The DMA engine that moved it, or `cpu`.
    pub by: String,
    /// The NUMA node of the host memory end, if one is host memory.
    pub numa_node: Option<u32>,
    /// How the path is known: `observed`, because the simulated fabric
    /// carried every request of the leg (its routes are listed).
    pub known: &'static str,
    /// What the simulated fabric did with the leg's requests.
    pub routes: Vec<String>,
    /// Bytes the fabric answered with Unsupported Request.
    pub unsupported_bytes: u64,
}

/// What a devmem TCP receive did with its buffers.
#[derive(Clone, Debug, Serialize)]
pub struct DevmemSummary {
    pub mtu: u32,
    pub mss: u32,
    /// `net_iov` size in bytes.
    pub niov_size: u32,
    pub layout: String,
    /// Bytes of the bound dma-buf.
    pub dmabuf_bytes: u64,
    /// Payload bytes over the bytes of the `net_iov`s holding them,
    /// averaged over the transfer.
    pub utilization: f64,
    /// The most device memory held by data at once, and its payload.
    pub peak_held_bytes: u64,
    pub peak_payload_bytes: u64,
    /// Frames the NIC dropped for want of RX buffers, and segments the
    /// socket dropped for a full receive buffer.
    pub drops: u64,
    pub socket_drops: u64,
    pub retransmitted_bytes: u64,
    /// Headers split into host memory.
    pub header_bytes: u64,
    pub frags: u64,
    pub tokens_returned: u64,
    pub dontneed_calls: u64,
    /// Whether the binding was freed after unbind and close (every
    /// `net_iov` back).
    pub binding_freed: bool,
    /// Why the receive stopped short, if it did.
    pub stalled: Option<String>,
}

/// A link and its data rate.
#[derive(Clone, Debug, Serialize)]
pub struct Bottleneck {
    pub link: String,
    pub gbytes_per_sec: f64,
}

/// One job in the report.
#[derive(Clone, Debug, Serialize)]
pub struct JobReport {
    pub name: String,
    pub kind: &'static str,
    /// The machine the job ran on, when the workload has several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Where the data comes from: a drive, device memory, or RAID members.
    pub source: Vec<String>,
    /// Where it goes.
    pub destination: String,
    pub ok: bool,
    pub legs: Vec<LegReport>,
    pub bytes: u64,
    /// Every byte of the destination was compared with its source.
    pub verified: bool,
    pub sim_seconds: f64,
    pub gbytes_per_sec: f64,
    /// The narrowest link (or rate limit) of the job's slowest leg.
    pub bottleneck: Option<Bottleneck>,
    /// Jobs that shared a link with this one while both moved data.
    pub shared_with: Vec<String>,
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub bounce_bytes: u64,
    pub cpu_copy_bytes: u64,
    pub cpu_xor_bytes: u64,
    pub commands: u64,
    /// Network jobs: packets on the wire (both ways) and their line bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire_bytes: Option<u64>,
    /// NVMe-oF: what the target staged where, and the host memory that
    /// P2P memory saved against the same job without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staged_p2p_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staged_host_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_memory_bytes_saved: Option<u64>,
    /// devmem TCP receive: the buffers, tokens and drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devmem: Option<DevmemSummary>,
    pub policy: Policy,
    pub error: Option<String>,
    /// Why the job bounced, when it did.
    pub bounce_reason: Option<String>,
    pub notes: Vec<String>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Where the machine came from (for several: each, by name).
    pub machine: String,
    /// The IOMMU of the (first) machine.
    pub iommu: IommuSetting,
    /// Every machine of the run: its name, where it came from, its IOMMU.
    pub machines: Vec<MachineReport>,
    /// The wire, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire: Option<WireReport>,
    pub jobs: Vec<JobReport>,
    /// Simulated time from the first job's start to the last job's end.
    pub sim_seconds: f64,
    /// Links busiest over the run: (name, direction, bytes, busy fraction).
    pub busiest_links: Vec<LinkUse>,
    /// Wall-clock seconds the simulation took.
    #[serde(skip)]
    pub wall_seconds: f64,
}

/// One machine of a run.
#[derive(Clone, Debug, Serialize)]
pub struct MachineReport {
    pub name: String,
    pub origin: String,
    pub iommu: IommuSetting,
}

/// The wire of a run.
#[derive(Clone, Debug, Serialize)]
pub struct WireReport {
    /// `machine:BDF` of each end.
    pub a: String,
    pub b: String,
    pub gbits_per_sec: f64,
    pub mtu: u32,
    pub latency_ns: u64,
}

/// How much one direction of a link carried.
#[derive(Clone, Debug, Serialize)]
pub struct LinkUse {
    pub link: String,
    pub direction: &'static str,
    pub bytes: u64,
    /// Fraction of the run the link moved data.
    pub busy: f64,
    pub gbytes_per_sec: f64,
}

impl Report {
    /// Whether every job did what it was asked, verified.
    pub fn ok(&self) -> bool {
        self.jobs.iter().all(|j| j.ok)
    }
}

/// Why the runner could not run at all (a job's own failure is in its
/// report instead).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the simulated machine")]
    Machine(#[from] peerdma_sim::BuildError),
    #[error("timing the workload failed")]
    Timing(#[from] peerdma_sim::timing::TimingError),
}

/// Where a flow of a job runs.
#[derive(Clone, Debug)]
enum FlowPlace {
    /// On these links of machine `0`.
    Links(usize, Vec<Hop>),
    /// On the wire, from its `a` end (true) or its `b` end.
    Wire { from_a: bool },
    /// Nowhere but a rate limit (CPU work).
    Local,
}

/// Every machine's links and the wire in one network: the network, where
/// each machine's links are in it (by their index there), and the wire.
type World = (Network, Vec<Vec<LinkId>>, Option<LinkId>);

/// A job's flows for the timing model, before they are numbered.
struct JobFlows {
    /// Where, bytes, rate cap, and whether it is the job's data (not queue
    /// and descriptor traffic).
    legs: Vec<(FlowPlace, u64, Option<f64>, bool)>,
}

/// What running one job produced.
struct Done {
    report: JobReport,
    flows: JobFlows,
}

/// One simulated machine of a run and what the runner keeps about it.
pub struct Machine {
    /// The name jobs use for it (empty for the one machine of a workload
    /// that names none).
    pub name: String,
    label: String,
    iommu: IommuSetting,
    sim: SimMachine,
    devmem: DeviceMemory,
    drives: HashMap<Bdf, NvmeDrive>,
    /// Ranges of each drive written by a job (start, end).
    written: HashMap<Bdf, Vec<(u64, u64)>>,
    nvme: NvmeConfig,
    seed: u64,
}

/// The machines of a run, the wire between two of them, and the options.
pub struct Runner {
    machines: Vec<Machine>,
    wire: Option<Wire>,
}

fn drive_seed(seed: u64, d: Bdf) -> u64 {
    seed ^ (u64::from(d.bus()) << 16 | u64::from(d.device()) << 8 | u64::from(d.function()))
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Machine {
    /// A simulated machine for `topo`, every NVMe drive full of pattern data.
    fn new(
        name: &str,
        topo: Topology,
        iommu: IommuSetting,
        opts: &RunOptions,
    ) -> Result<Machine, RunError> {
        let label = topo.origin_label();
        let sim = SimMachine::new(
            topo,
            SimConfig {
                iommu: match iommu {
                    IommuSetting::Off => IommuMode::Off,
                    IommuSetting::Passthrough => IommuMode::Passthrough,
                    IommuSetting::Translated => IommuMode::Translated,
                },
                ..SimConfig::default()
            },
        )?;
        // Two machines of one preset must not hold the same data.
        let seed = opts.seed ^ name_seed(name);
        let t = sim.topology().clone();
        for id in t.ids() {
            if crate::format::is_nvme(&t, id) {
                let b = t.function(id).bdf;
                // Only fails for a device that is not there.
                let _ = sim.fill_media_pattern(b, drive_seed(seed, b));
            }
        }
        Ok(Machine {
            name: name.to_string(),
            label,
            iommu,
            sim,
            devmem: DeviceMemory::new(),
            drives: HashMap::new(),
            written: HashMap::new(),
            nvme: opts.nvme,
            seed,
        })
    }

    pub fn sim(&self) -> &SimMachine {
        &self.sim
    }

    /// Where the machine came from (`preset 'dual-xeon'`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The machine's device memory (CMBs, exported GPU apertures).
    pub fn device_memory(&self) -> &DeviceMemory {
        &self.devmem
    }

    fn drive(&mut self, b: Bdf) -> Result<&mut NvmeDrive, IoError> {
        drive_of(&self.sim, &mut self.drives, self.nvme, b)
    }

    /// Move the job's bytes; then check them. The outer error is a job that
    /// did not complete; the inner one a completed job with wrong bytes.
    fn execute(&mut self, job: &Job) -> Result<(IoOutcome, Result<(), String>), String> {
        let fallback = match job.policy {
            Policy::Bounce => Fallback::Bounce,
            Policy::P2pOnly => Fallback::Fail,
            Policy::Host => Fallback::AlwaysHost,
        };
        let fault = job.fault.as_ref().map(|f| IoFault {
            at: f.at,
            fault: sim_fault(f),
        });
        let err = errno_text;
        match job.task.clone() {
            Task::Rdma { .. } | Task::Nvmeof { .. } | Task::DevmemRx(_) => {
                Err("a network job needs both machines of the wire".into())
            }
            Task::Read {
                drive,
                into,
                offset,
            } => {
                let p = self
                    .devmem
                    .provider(&self.sim, into)
                    .map_err(|e| e.to_string())?;
                let buf = p.alloc(job.size).map_err(|e| e.to_string())?;
                let d = drive_of(&self.sim, &mut self.drives, self.nvme, drive).map_err(err)?;
                let out = direct_io(
                    &self.sim,
                    d,
                    Op::Read,
                    offset,
                    &[buf.phys()],
                    fallback,
                    fault,
                )
                .map_err(err)?;
                let check = self.check_media_to_memory(drive, offset, buf.phys_addr(), job.size);
                Ok((out, check))
            }
            Task::Write {
                from,
                drive,
                offset,
            } => {
                let p = self
                    .devmem
                    .provider(&self.sim, from)
                    .map_err(|e| e.to_string())?;
                let buf = p.alloc(job.size).map_err(|e| e.to_string())?;
                let seed = name_seed(&job.name);
                fill_memory(&self.sim, buf.phys_addr(), job.size, seed)
                    .map_err(|e| e.to_string())?;
                let d = drive_of(&self.sim, &mut self.drives, self.nvme, drive).map_err(err)?;
                let out = direct_io(
                    &self.sim,
                    d,
                    Op::Write,
                    offset,
                    &[buf.phys()],
                    fallback,
                    fault,
                )
                .map_err(err);
                self.mark_written(drive, offset, job.size);
                let out = out?;
                let check = self.check_memory_to_media(buf.phys_addr(), drive, offset, job.size);
                Ok((out, check))
            }
            Task::Copy {
                from,
                to,
                from_offset,
                to_offset,
                via,
            } => {
                let plan = match job.policy {
                    Policy::Host => StagingPlan::Host {
                        why: "policy = \"host\": through host memory".into(),
                    },
                    _ => plan_copy(&self.sim, from, to, via).map_err(|e| e.to_string())?,
                };
                self.drive_copy(job, from, to, from_offset, to_offset, plan, fault)
            }
            Task::Raid1Rebuild { from, to, via } => {
                let plan = match job.policy {
                    Policy::Host => StagingPlan::Host {
                        why: "policy = \"host\": through host memory".into(),
                    },
                    _ => plan_rebuild(&self.sim, from, to, via).map_err(|e| e.to_string())?,
                };
                self.drive_copy(job, from, to, 0, 0, plan, fault)
            }
            Task::Raid5Read {
                members,
                missing,
                into,
                chunk,
                offset,
            } => {
                let layout = Raid5Layout {
                    members: members.len(),
                    chunk,
                };
                let seed = name_seed(&job.name);
                write_array(&self.sim, &members, layout, offset, job.size, seed).map_err(err)?;
                for &m in &members {
                    let sb = layout.stripe_bytes();
                    let first = offset / sb * chunk;
                    let last = (offset + job.size).div_ceil(sb) * chunk;
                    self.mark_written(m, first, last - first);
                }
                let p = self
                    .devmem
                    .provider(&self.sim, into)
                    .map_err(|e| e.to_string())?;
                let buf = p.alloc(job.size).map_err(|e| e.to_string())?;
                for &m in &members {
                    self.drive(m).map_err(err)?;
                }
                let mut drives: Vec<NvmeDrive> = members
                    .iter()
                    .map(|m| self.drives.remove(m).expect("set up above"))
                    .collect();
                let out = raid5_degraded_read(
                    &self.sim,
                    &mut drives,
                    layout,
                    missing,
                    offset,
                    &[buf.phys()],
                    fallback,
                );
                for (m, d) in members.iter().zip(drives) {
                    self.drives.insert(*m, d);
                }
                let out = out.map_err(err)?;
                let check = check_pattern(&self.sim, buf.phys_addr(), job.size, seed, offset);
                Ok((out, check))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn drive_copy(
        &mut self,
        job: &Job,
        from: Bdf,
        to: Bdf,
        from_offset: u64,
        to_offset: u64,
        plan: StagingPlan,
        fault: Option<IoFault>,
    ) -> Result<(IoOutcome, Result<(), String>), String> {
        let err = errno_text;
        self.drive(from).map_err(err)?;
        self.drive(to).map_err(err)?;
        let mut a = self.drives.remove(&from).expect("set up above");
        let mut b = self.drives.remove(&to).expect("set up above");
        let out = drive_to_drive(
            &self.sim,
            &mut a,
            &mut b,
            from_offset,
            to_offset,
            job.size,
            &plan,
            fault,
        );
        self.drives.insert(from, a);
        self.drives.insert(to, b);
        // The source's expected content is known before the copy writes.
        let before = self.expected(from, from_offset, job.size);
        self.mark_written(to, to_offset, job.size);
        let out = out.map_err(err)?;
        let check = self.check_media_to_media(from, from_offset, before, to, to_offset, job.size);
        Ok((out, check))
    }

    fn mark_written(&mut self, d: Bdf, off: u64, len: u64) {
        self.written.entry(d).or_default().push((off, off + len));
    }

    /// The pattern seed a drive range holds, when no job wrote it.
    fn expected(&self, d: Bdf, off: u64, len: u64) -> Option<u64> {
        let touched = self
            .written
            .get(&d)
            .is_some_and(|w| w.iter().any(|&(a, b)| a < off + len && off < b));
        (!touched).then(|| drive_seed(self.seed, d))
    }

    fn check_media_to_memory(
        &self,
        d: Bdf,
        off: u64,
        mem: PhysAddr,
        len: u64,
    ) -> Result<(), String> {
        match self.expected(d, off, len) {
            Some(seed) => check_pattern(&self.sim, mem, len, seed, off),
            None => compare(&self.sim, Side::Media(d, off), Side::Memory(mem), len),
        }
    }

    fn check_memory_to_media(
        &self,
        mem: PhysAddr,
        d: Bdf,
        off: u64,
        len: u64,
    ) -> Result<(), String> {
        compare(&self.sim, Side::Memory(mem), Side::Media(d, off), len)
    }

    fn check_media_to_media(
        &self,
        a: Bdf,
        aoff: u64,
        a_seed: Option<u64>,
        b: Bdf,
        boff: u64,
        len: u64,
    ) -> Result<(), String> {
        match a_seed {
            Some(seed) => check_pattern_media(&self.sim, b, boff, len, seed, aoff),
            None => compare(&self.sim, Side::Media(a, aoff), Side::Media(b, boff), len),
        }
    }
}

impl Runner {
    /// One simulated machine for `topo`.
    pub fn new(topo: Topology, opts: RunOptions) -> Result<Runner, RunError> {
        let iommu = opts.iommu;
        Runner::with_machines(vec![(String::new(), topo, iommu)], None, opts)
    }

    /// Several machines (name, topology, IOMMU), and the wire between two.
    pub fn with_machines(
        machines: Vec<(String, Topology, IommuSetting)>,
        wire: Option<Wire>,
        opts: RunOptions,
    ) -> Result<Runner, RunError> {
        let machines = machines
            .into_iter()
            .map(|(n, t, i)| Machine::new(&n, t, i, &opts))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Runner { machines, wire })
    }

    /// The first machine (the only one of most workloads).
    pub fn machine(&self) -> &SimMachine {
        &self.machines[0].sim
    }

    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }

    /// The wire, when the workload has one.
    pub fn wire(&self) -> Option<&Wire> {
        self.wire.as_ref()
    }

    /// Join two of the machines with a wire (or none).
    pub fn set_wire(&mut self, w: Option<Wire>) {
        self.wire = w;
    }

    /// Bytes of media behind each drive.
    pub fn media_size(&self) -> u64 {
        self.machines[0].sim.config().media_size
    }

    /// Run `jobs` (resolved against this machine) and time them together.
    pub fn run(&mut self, jobs: &[Job]) -> Result<Report, RunError> {
        let wall = Instant::now();
        let order = crate::format::run_order(jobs);
        let mut done: Vec<Option<Done>> = (0..jobs.len()).map(|_| None).collect();
        for &i in &order {
            done[i] = Some(self.run_job(&jobs[i]));
        }
        let done: Vec<Done> = done
            .into_iter()
            .map(|d| d.expect("every job ran"))
            .collect();
        let mut report = self.time(jobs, &order, done)?;
        report.wall_seconds = wall.elapsed().as_secs_f64();
        Ok(report)
    }

    fn run_job(&mut self, job: &Job) -> Done {
        let (source, destination) = match &job.task {
            Task::Read { drive, into, .. } => (vec![drive.to_string()], into.to_string()),
            Task::Write { from, drive, .. } => (vec![from.to_string()], drive.to_string()),
            Task::Copy { from, to, .. } | Task::Raid1Rebuild { from, to, .. } => {
                (vec![from.to_string()], to.to_string())
            }
            Task::Raid5Read {
                members,
                missing,
                into,
                ..
            } => (
                members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i != missing)
                    .map(|(_, m)| m.to_string())
                    .collect(),
                into.to_string(),
            ),
            Task::Rdma { from, to, .. } => (vec![self.mem_name(from)], self.mem_name(to)),
            Task::DevmemRx(d) => (vec![self.mem_name(&d.from)], self.mem_name(&d.into)),
            Task::Nvmeof {
                write, host, drive, ..
            } => {
                let d = format!("{}:{}", self.machines[drive.0].name, drive.1);
                if *write {
                    (vec![self.mem_name(host)], d)
                } else {
                    (vec![d], self.mem_name(host))
                }
            }
        };
        let mut report = JobReport {
            name: job.name.clone(),
            kind: job.task.kind(),
            machine: (self.machines.len() > 1).then(|| self.machines[job.machine].name.clone()),
            source,
            destination,
            ok: false,
            legs: Vec::new(),
            bytes: 0,
            verified: false,
            sim_seconds: 0.0,
            gbytes_per_sec: 0.0,
            bottleneck: None,
            shared_with: Vec::new(),
            start_seconds: 0.0,
            end_seconds: 0.0,
            bounce_bytes: 0,
            cpu_copy_bytes: 0,
            cpu_xor_bytes: 0,
            commands: 0,
            packets: None,
            wire_bytes: None,
            staged_p2p_bytes: None,
            staged_host_bytes: None,
            host_memory_bytes_saved: None,
            devmem: None,
            policy: job.policy,
            error: None,
            bounce_reason: None,
            notes: Vec::new(),
        };
        let mut flows = JobFlows { legs: Vec::new() };
        let net = matches!(
            job.task,
            Task::Rdma { .. } | Task::Nvmeof { .. } | Task::DevmemRx(_)
        );
        let result = if net {
            self.execute_net(job, &mut report)
        } else {
            self.machines[job.machine]
                .execute(job)
                .map(|(o, c)| (o, c, None, job.machine))
        };
        match result {
            Ok((mut out, check, wire_bytes, meta_machine)) => {
                if !net {
                    // A storage job runs on one machine: its consumers
                    // number no machines, so its legs are that machine's.
                    for l in &mut out.legs {
                        l.machine = job.machine;
                    }
                }
                self.fill(meta_machine, &mut report, &mut flows, &out, wire_bytes);
                report.bytes = out.bytes;
                match check {
                    Ok(()) => {
                        report.verified = true;
                        report.ok = true;
                    }
                    Err(e) => report.error = Some(e),
                }
            }
            Err(e) => {
                report.error = Some(e);
            }
        }
        if let Some(f) = &job.fault {
            let revokes = self.machines[job.machine].sim.join_revokes();
            for r in revokes {
                report.notes.push(match r.result {
                    Ok(_) => format!(
                        "the revoke of {} finished after in-flight DMA drained",
                        r.provider
                    ),
                    Err(e) => format!("the revoke of {} did not finish: {e}", r.provider),
                });
            }
            report.notes.push(format!(
                "fault injected: {} of {} at byte {}",
                f.kind.as_str(),
                f.device,
                f.at
            ));
        }
        Done { report, flows }
    }

    /// `a:gpu0 (0000:1a:00.0)`-style name of a job's memory.
    fn mem_name(&self, m: &MemRef) -> String {
        let multi = self.machines.len() > 1;
        let on = |x: String| {
            if multi {
                format!("{}:{x}", self.machines[m.machine].name)
            } else {
                x
            }
        };
        match m.device {
            Some(b) => on(b.to_string()),
            None => on("host".into()),
        }
    }

    /// An RDMA or NVMe-oF job: both machines and the wire. The outcome,
    /// the check of the bytes, the line bytes on the wire, and the machine
    /// of the queue traffic.
    #[allow(clippy::type_complexity)]
    fn execute_net(
        &mut self,
        job: &Job,
        report: &mut JobReport,
    ) -> Result<(IoOutcome, Result<(), String>, Option<u64>, usize), String> {
        use peerdma_consumers::rdma::job::{
            Host, JobFault as RFault, Memory, Migration, RdmaJob, RdmaOp, Side,
        };
        let wire = self
            .wire
            .ok_or_else(|| "a network job needs a [wire] between the machines".to_string())?;
        let nic_of = |m: usize| {
            if wire.a.machine == m {
                wire.a.nic
            } else {
                wire.b.nic
            }
        };
        let side = |r: &MemRef| Side {
            machine: r.machine,
            nic: nic_of(r.machine),
            memory: r.device.map_or(Memory::Host, Memory::Device),
        };
        let fault = job.fault.as_ref().map(|f| RFault {
            machine: f.machine,
            at: f.at,
            fault: sim_fault(f),
        });
        let seed = name_seed(&job.name);
        match &job.task {
            Task::Rdma {
                write,
                from,
                to,
                pinned,
                message,
                migrate_at,
            } => {
                let (req, resp) = if *write { (from, to) } else { (to, from) };
                let mut r = RdmaJob::new(
                    if *write { RdmaOp::Write } else { RdmaOp::Read },
                    side(req),
                    side(resp),
                    job.size,
                );
                r.mr = if *pinned {
                    peerdma_consumers::rdma::MrKind::Pinned
                } else {
                    peerdma_consumers::rdma::MrKind::Dynamic
                };
                r.message = *message;
                r.fault = fault;
                r.seed = seed;
                r.migrate = migrate_at.map(|at| Migration {
                    at,
                    to: peerdma_consumers::rdma::dmabuf::Placement::Host { node: 0 },
                });
                let hosts: Vec<Host<'_>> = self
                    .machines
                    .iter()
                    .map(|m| Host {
                        sim: &m.sim,
                        devmem: &m.devmem,
                    })
                    .collect();
                let rep = peerdma_consumers::rdma::job::run_rdma(&hosts, &wire, &r)
                    .map_err(|e| format!("{}: {e}", e.errno()))?;
                report.packets = Some(rep.outcome.packets);
                report.wire_bytes = Some(rep.outcome.wire_bytes);
                report.notes.push(format!(
                    "{} {} message(s) of up to {} bytes, path MTU {}, {} memory regions; {} re-map(s) after {} invalidation(s), {} move(s)",
                    rep.messages,
                    if *write { "RDMA WRITE" } else { "RDMA READ" },
                    message,
                    rep.path_mtu,
                    rep.mr_kind,
                    rep.remaps,
                    rep.invalidations,
                    rep.moves
                ));
                let check = match (rep.check, rep.teardown) {
                    (Ok(()), Ok(())) => Ok(()),
                    (Err(e), _) => Err(e),
                    (Ok(()), Err(t)) => Err(format!("teardown: {t}")),
                };
                Ok((
                    rep.outcome.io,
                    check,
                    Some(rep.outcome.wire_bytes),
                    job.machine,
                ))
            }
            Task::Nvmeof {
                write,
                host,
                drive,
                offset,
                io_size,
                p2pmem,
            } => {
                use peerdma_consumers::nvmet::{NvmetJob, P2pMem};
                let (dm, dbdf) = *drive;
                let nvme_cfg = self.machines[dm].nvme;
                {
                    let m = &mut self.machines[dm];
                    drive_of(&m.sim, &mut m.drives, nvme_cfg, dbdf).map_err(errno_text)?;
                }
                let mut d = self.machines[dm]
                    .drives
                    .remove(&dbdf)
                    .expect("set up above");
                let nj = NvmetJob {
                    op: if *write { Op::Write } else { Op::Read },
                    host_machine: host.machine,
                    host_nic: nic_of(host.machine),
                    host_memory: host.device.map_or(Memory::Host, Memory::Device),
                    target_machine: dm,
                    target_nic: nic_of(dm),
                    drive: dbdf,
                    offset: *offset,
                    size: job.size,
                    io_size: *io_size,
                    p2pmem: match p2pmem {
                        P2pMemSetting::Off => P2pMem::Off,
                        P2pMemSetting::Auto => P2pMem::Auto,
                        P2pMemSetting::Device(b) => P2pMem::Device(*b),
                    },
                    fault,
                    seed,
                };
                let result = {
                    let hosts: Vec<Host<'_>> = self
                        .machines
                        .iter()
                        .map(|m| Host {
                            sim: &m.sim,
                            devmem: &m.devmem,
                        })
                        .collect();
                    peerdma_consumers::nvmet::run_nvmet(&hosts, &wire, &mut d, &nj)
                };
                self.machines[dm].drives.insert(dbdf, d);
                if *write {
                    self.machines[dm].mark_written(dbdf, *offset, job.size);
                }
                let rep = result.map_err(|e| e.to_string())?;
                report.packets = Some(rep.outcome.packets);
                report.wire_bytes = Some(rep.outcome.wire_bytes);
                report.commands = rep.commands;
                report.host_memory_bytes_saved = Some(rep.host_memory_bytes_saved);
                report.staged_p2p_bytes = Some(rep.staged_p2p_bytes);
                report.staged_host_bytes = Some(rep.staged_host_bytes);
                let check = match (rep.check, rep.teardown) {
                    (Ok(()), Ok(())) => Ok(()),
                    (Err(e), _) => Err(e),
                    (Ok(()), Err(t)) => Err(format!("teardown: {t}")),
                };
                Ok((rep.outcome.io, check, Some(rep.outcome.wire_bytes), dm))
            }
            Task::DevmemRx(d) => {
                use peerdma_consumers::net::flow::{
                    run_transfer, Host as NetHost, SendFrom, TransferSpec,
                };
                let from_port = if wire.a.machine == d.from.machine {
                    wire.a
                } else {
                    wire.b
                };
                let into = d
                    .into
                    .device
                    .ok_or_else(|| "devmem TCP receives into device memory".to_string())?;
                let mut spec = TransferSpec::new(job.size, into);
                spec.seed = seed;
                spec.rx_buf_size = d.niov;
                spec.nic.layout = d.layout;
                spec.tokens = d.tokens;
                spec.dmabuf_len = d.dmabuf.unwrap_or_else(|| spec.ring_dmabuf_len());
                spec.from = match d.from.device {
                    Some(dev) => SendFrom::DeviceDataset { dev },
                    None => SendFrom::Host {
                        node: peerdma_consumers::rdma::job::node_of(
                            &self.machines[d.from.machine].sim,
                            from_port.nic,
                        ),
                    },
                };
                let mut w = wire;
                if let Some(mtu) = d.mtu {
                    w.mtu = mtu;
                }
                let host = |m: usize| NetHost {
                    sim: &self.machines[m].sim,
                    mem: &self.machines[m].devmem,
                    id: m,
                };
                let rep = run_transfer(
                    host(d.from.machine),
                    host(d.into.machine),
                    &w,
                    from_port,
                    &spec,
                )
                .map_err(|e| e.to_string())?;
                report.packets = Some(rep.packets);
                report.wire_bytes = Some(rep.line_bytes);
                report.notes.push(format!(
                    "devmem TCP: MTU {} (MSS {}), {} net_iovs in a {} dma-buf, {}; {} frags, {} tokens given back in {} SO_DEVMEM_DONTNEED call(s); buffer utilization {:.1}% (at most {} of device memory held for {} of payload); {} of headers split into host memory",
                    rep.mtu,
                    rep.mss,
                    format_size(u64::from(rep.niov_size)),
                    format_size(spec.dmabuf_len),
                    rep.layout,
                    rep.frags,
                    rep.tokens_returned,
                    rep.dontneed_calls,
                    100.0 * rep.utilization.average,
                    format_size(rep.utilization.peak_held_bytes),
                    format_size(rep.utilization.peak_payload_bytes),
                    format_size(rep.header_bytes),
                ));
                report.devmem = Some(DevmemSummary {
                    mtu: rep.mtu,
                    mss: rep.mss,
                    niov_size: rep.niov_size,
                    layout: rep.layout.to_string(),
                    dmabuf_bytes: spec.dmabuf_len,
                    utilization: rep.utilization.average,
                    peak_held_bytes: rep.utilization.peak_held_bytes,
                    peak_payload_bytes: rep.utilization.peak_payload_bytes,
                    drops: rep.drops,
                    socket_drops: rep.socket_drops,
                    retransmitted_bytes: rep.retransmitted_bytes,
                    header_bytes: rep.header_bytes,
                    frags: rep.frags,
                    tokens_returned: rep.tokens_returned,
                    dontneed_calls: rep.dontneed_calls,
                    binding_freed: rep.binding_freed,
                    stalled: rep.stalled.clone(),
                });
                let check = if let Some(why) = &rep.stalled {
                    Err(format!(
                        "received {} of {} bytes (all of them verified, none overwritten): {why}",
                        rep.verified_bytes, rep.bytes
                    ))
                } else if !rep.complete {
                    Err(format!(
                        "received {} of {} bytes",
                        rep.verified_bytes, rep.bytes
                    ))
                } else if !rep.binding_freed {
                    Err("the dma-buf binding was not freed after unbind and close: a net_iov is still referenced".into())
                } else {
                    Ok(())
                };
                Ok((rep.outcome, check, Some(rep.line_bytes), d.into.machine))
            }
            _ => Err("not a network job".into()),
        }
    }

    fn fill(
        &self,
        job_machine: usize,
        r: &mut JobReport,
        flows: &mut JobFlows,
        out: &IoOutcome,
        wire_bytes: Option<u64>,
    ) {
        let multi = self.machines.len() > 1;
        let name = |m: usize| self.machines.get(m).map(|x| x.name.clone());
        let end = |e: End| match e {
            End::Device { bdf } => bdf.to_string(),
            End::Host { .. } => "host".to_string(),
        };
        for l in &out.legs {
            if l.bytes == 0 {
                continue;
            }
            let t = self.machines[l.machine.min(self.machines.len() - 1)]
                .sim
                .topology();
            r.legs.push(LegReport {
                machine: if multi { name(l.machine) } else { None },
                peer_machine: if multi {
                    l.peer_machine.and_then(name)
                } else {
                    None
                },
                from: end(l.from),
                to: end(l.to),
                path: l.path.as_str(),
                bytes: l.bytes,
                provider: l.provider.map(|p| p.to_string()),
                by: match l.mover {
                    Mover::Dma { engine } => engine.to_string(),
                    Mover::Cpu => "cpu".into(),
                },
                numa_node: match (l.from, l.to) {
                    (End::Host { node }, _) | (_, End::Host { node }) => Some(node),
                    _ => None,
                },
                known: "observed",
                routes: l.routes.iter().map(|r| describe_route(t, r)).collect(),
                unsupported_bytes: l.unsupported_bytes,
            });
            if l.path == LegPath::Wire {
                let from_a = self.wire.is_some_and(|w| {
                    w.a.machine == l.machine && End::Device { bdf: w.a.nic } == l.from
                });
                // On the line: frames with their headers (both ways, all
                // counted in the data's direction), or else the payload.
                let line = wire_bytes.unwrap_or(l.bytes);
                flows
                    .legs
                    .push((FlowPlace::Wire { from_a }, line, None, true));
                continue;
            }
            let cap = leg_rate_cap(l);
            for p in &l.paths {
                flows.legs.push((
                    FlowPlace::Links(l.machine, p.hops.clone()),
                    p.bytes,
                    cap,
                    true,
                ));
            }
        }
        // Queue and descriptor traffic moves alongside the data.
        for p in &out.meta_paths {
            flows.legs.push((
                FlowPlace::Links(job_machine, p.hops.clone()),
                p.bytes,
                None,
                false,
            ));
        }
        if out.cpu_xor_bytes > 0 {
            flows.legs.push((
                FlowPlace::Local,
                out.cpu_xor_bytes,
                Some(CPU_XOR_RATE),
                true,
            ));
        }
        r.bounce_bytes = out.bounce_bytes;
        r.cpu_copy_bytes = out.cpu_copy_bytes;
        r.cpu_xor_bytes = out.cpu_xor_bytes;
        r.commands = out.commands;
        r.bounce_reason = out.bounce_reason.clone();
        r.notes.extend(out.notes.iter().cloned());
    }

    /// One network of every machine's links and the wire, and where each
    /// machine's links are in it.
    fn world(&self) -> Result<World, RunError> {
        let multi = self.machines.len() > 1;
        let mut world = Network::new();
        let mut maps = Vec::new();
        for m in &self.machines {
            let mut ids = Vec::new();
            for l in m.sim.network().links() {
                let name = if multi {
                    format!("{}: {}", m.name, l.name)
                } else {
                    l.name.clone()
                };
                ids.push(world.add_link(name, l.bytes_per_sec, l.latency)?);
            }
            maps.push(ids);
        }
        let wire = match &self.wire {
            Some(w) => {
                let end = |p: &peerdma_consumers::net::Port| {
                    let m = &self.machines[p.machine];
                    let t = m.sim.topology();
                    let n = t
                        .find(p.nic)
                        .and_then(|f| t.function(f).label.clone())
                        .unwrap_or_else(|| p.nic.to_string());
                    if multi {
                        format!("{}:{n}", m.name)
                    } else {
                        n
                    }
                };
                Some(world.add_link(
                    format!("wire {}<->{}", end(&w.a), end(&w.b)),
                    w.bytes_per_sec,
                    SimTime::from_nanos(w.latency_ns),
                )?)
            }
            None => None,
        };
        Ok((world, maps, wire))
    }

    /// Time every job together and fill in the times.
    fn time(&self, jobs: &[Job], order: &[usize], mut done: Vec<Done>) -> Result<Report, RunError> {
        let (world, maps, wire_link) = self.world()?;
        let net = &world;
        let mut flows: Vec<Flow> = Vec::new();
        // Per job: start marker, data flows, end marker (indices).
        let mut markers: Vec<(usize, Vec<usize>, usize)> = vec![(0, Vec::new(), 0); jobs.len()];
        // The flows of each job's data (for the bottleneck and sharing).
        let mut data_flows: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
        for &i in order {
            let start = flows.len();
            flows.push(Flow {
                also_after: jobs[i].after.iter().map(|&a| markers[a].2).collect(),
                rate_cap: Some(1e18),
                ..Flow::default()
            });
            let mut data = Vec::new();
            let mut data_only = Vec::new();
            for (place, bytes, cap, is_data) in &done[i].flows.legs {
                let hops: Vec<Hop> = match place {
                    FlowPlace::Links(m, hops) => hops
                        .iter()
                        .filter_map(|h| {
                            maps.get(*m)
                                .and_then(|ids| ids.get(h.link.index() as usize))
                                .map(|&link| Hop { link, dir: h.dir })
                        })
                        .collect(),
                    FlowPlace::Wire { from_a } => match wire_link {
                        Some(l) => vec![if *from_a { Hop::up(l) } else { Hop::down(l) }],
                        None => Vec::new(),
                    },
                    FlowPlace::Local => Vec::new(),
                };
                if hops.is_empty() && cap.is_none() {
                    // Inside one device (a drive and its own CMB): no link
                    // to share, nothing to time here.
                    continue;
                }
                data.push(flows.len());
                if *is_data {
                    data_only.push(flows.len());
                }
                flows.push(Flow {
                    path: hops.clone(),
                    bytes: *bytes,
                    after: Some(start),
                    rate_cap: *cap,
                    ..Flow::default()
                });
            }
            let end = flows.len();
            flows.push(Flow {
                after: Some(start),
                also_after: data.clone(),
                rate_cap: Some(1e18),
                ..Flow::default()
            });
            markers[i] = (start, data, end);
            data_flows[i] = data_only;
        }
        let s = net.simulate(&flows)?;
        let secs = |t: SimTime| t.as_secs_f64();
        let link_name = |l: LinkId| {
            net.link(l)
                .map_or_else(|| format!("link {}", l.index()), |x| x.name.clone())
        };
        let link_rate = |l: LinkId| net.link(l).map_or(f64::INFINITY, |x| x.bytes_per_sec);
        let mut spans: Vec<(SimTime, SimTime)> = vec![(SimTime::ZERO, SimTime::ZERO); jobs.len()];
        for (i, d) in done.iter_mut().enumerate() {
            let (st, _, en) = &markers[i];
            let _ = &d.flows;
            let start = s.flows[*st].start;
            let end = s.flows[*en].end;
            spans[i] = (start, end);
            let r = &mut d.report;
            r.start_seconds = secs(start);
            r.end_seconds = secs(end);
            let dur = secs(end - start);
            r.sim_seconds = dur;
            r.gbytes_per_sec = if dur > 0.0 && r.ok {
                r.bytes as f64 / dur / 1e9
            } else {
                0.0
            };
            // The slowest leg alone, and its narrowest link.
            let mut worst: Option<(f64, Bottleneck)> = None;
            for &fi in data_flows[i].iter() {
                let (hops, bytes, cap) = (&flows[fi].path, &flows[fi].bytes, &flows[fi].rate_cap);
                let mut narrow: Option<(f64, String)> = None;
                for h in hops {
                    let rate = link_rate(h.link);
                    if narrow.as_ref().is_none_or(|n| rate < n.0) {
                        narrow = Some((rate, link_name(h.link)));
                    }
                }
                if let Some(c) = cap {
                    if narrow.as_ref().is_none_or(|n| *c < n.0) {
                        narrow = Some((*c, cpu_limit_name(*c)));
                    }
                }
                let Some((rate, name)) = narrow else { continue };
                let alone = *bytes as f64 / rate;
                if worst.as_ref().is_none_or(|w| alone > w.0) {
                    worst = Some((
                        alone,
                        Bottleneck {
                            link: name,
                            gbytes_per_sec: rate / 1e9,
                        },
                    ));
                }
            }
            r.bottleneck = worst.map(|w| w.1);
        }
        // Who shared links with whom, while both moved data.
        for i in 0..jobs.len() {
            let mine: Vec<(LinkId, bool)> = data_flows[i]
                .iter()
                .flat_map(|&f| {
                    flows[f]
                        .path
                        .iter()
                        .map(|h| (h.link, h.dir == peerdma_sim::timing::Dir::Up))
                })
                .collect();
            let mut shared = Vec::new();
            for j in 0..jobs.len() {
                if i == j || spans[i].0 >= spans[j].1 || spans[j].0 >= spans[i].1 {
                    continue;
                }
                let theirs = data_flows[j].iter().flat_map(|&f| {
                    flows[f]
                        .path
                        .iter()
                        .map(|h| (h.link, h.dir == peerdma_sim::timing::Dir::Up))
                });
                if theirs.into_iter().any(|x| mine.contains(&x)) {
                    shared.push(jobs[j].name.clone());
                }
            }
            done[i].report.shared_with = shared;
        }
        let makespan = secs(s.makespan);
        let mut busiest: Vec<LinkUse> = s
            .channels
            .iter()
            .filter(|c| c.bytes > 0)
            .map(|c| LinkUse {
                link: link_name(c.link),
                direction: match c.dir {
                    peerdma_sim::timing::Dir::Up => "up",
                    peerdma_sim::timing::Dir::Down => "down",
                },
                bytes: c.bytes,
                busy: if makespan > 0.0 {
                    secs(c.busy) / makespan
                } else {
                    0.0
                },
                gbytes_per_sec: link_rate(c.link) / 1e9,
            })
            .collect();
        busiest.sort_by(|a, b| b.busy.total_cmp(&a.busy).then(b.bytes.cmp(&a.bytes)));
        busiest.truncate(5);
        let machines: Vec<MachineReport> = self
            .machines
            .iter()
            .map(|m| MachineReport {
                name: m.name.clone(),
                origin: m.label.clone(),
                iommu: m.iommu,
            })
            .collect();
        let machine = if machines.len() == 1 {
            machines[0].origin.clone()
        } else {
            machines
                .iter()
                .map(|m| format!("{}: {}", m.name, m.origin))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let port = |p: &peerdma_consumers::net::Port| {
            format!("{}:{}", self.machines[p.machine].name, p.nic)
        };
        Ok(Report {
            machine,
            iommu: self.machines[0].iommu,
            machines,
            wire: self.wire.as_ref().map(|w| WireReport {
                a: port(&w.a),
                b: port(&w.b),
                gbits_per_sec: w.bytes_per_sec * 8.0 / 1e9,
                mtu: w.mtu,
                latency_ns: w.latency_ns,
            }),
            jobs: done.into_iter().map(|d| d.report).collect(),
            sim_seconds: makespan,
            busiest_links: busiest,
            wall_seconds: 0.0,
        })
    }
}

fn cpu_limit_name(rate: f64) -> String {
    if rate == CPU_XOR_RATE {
        "CPU XOR (parity)".into()
    } else if rate == CPU_MMIO_READ_RATE {
        "CPU loads from a BAR (uncached MMIO)".into()
    } else {
        "CPU stores to a BAR (write-combined MMIO)".into()
    }
}

/// A CPU leg is limited by what the CPU can do to a BAR.
fn leg_rate_cap(l: &Leg) -> Option<f64> {
    match l.mover {
        Mover::Cpu => Some(match l.to {
            End::Device { .. } => CPU_MMIO_WRITE_RATE,
            End::Host { .. } => CPU_MMIO_READ_RATE,
        }),
        Mover::Dma { .. } => None,
    }
}

/// A route as a person reads it, with the names the topology gives.
pub fn describe_route(t: &Topology, r: &Route) -> String {
    let hb = |id: peerdma_pci::HostBridgeId| t.host_bridge(id).name.clone();
    let named = |b: Bdf| match t.find(b).and_then(|f| t.function(f).label.clone()) {
        Some(l) => format!("{l} ({b})"),
        None => b.to_string(),
    };
    match r {
        Route::Switch { at } => match t.find(*at) {
            Some(f) if !t.function(f).is_bridge() => {
                format!("inside {}: its own memory, no link crossed", named(*at))
            }
            _ => format!("across the switch {}", named(*at)),
        },
        Route::HostMemory { host_bridge, node } => {
            format!("up through {} into DRAM of node {node}", hb(*host_bridge))
        }
        Route::RootComplexPeer {
            from_host_bridge,
            to_host_bridge,
        } if from_host_bridge == to_host_bridge => {
            format!("through the root complex {}", hb(*from_host_bridge))
        }
        Route::RootComplexPeer {
            from_host_bridge,
            to_host_bridge,
        } => format!(
            "through the root complexes {} -> {}",
            hb(*from_host_bridge),
            hb(*to_host_bridge)
        ),
        Route::Unsupported { host_bridge } => {
            format!("Unsupported Request at {}", hb(*host_bridge))
        }
    }
}

/// An I/O error as a user of read()/write() would see it: the errno, then
/// what happened (once, when the message already starts with it).
fn errno_text(e: IoError) -> String {
    let m = e.to_string();
    if m.starts_with(e.errno()) {
        m
    } else {
        format!("{}: {m}", e.errno())
    }
}

/// A workload's fault as the simulator's (armed by the consumer at its byte).
fn sim_fault(f: &crate::format::JobFault) -> Fault {
    match f.kind {
        FaultKind::SurpriseRemoval => Fault::Remove {
            device: f.device,
            after: 0,
        },
        FaultKind::LinkDown => Fault::LinkDown {
            below: f.device,
            after: 0,
        },
        FaultKind::IommuFault => Fault::IommuFault {
            device: f.device,
            after: 0,
        },
        FaultKind::Revoke => Fault::Revoke {
            provider: f.device,
            after: 0,
        },
    }
}

/// The driver of drive `b`, set up on first use.
fn drive_of<'a>(
    sim: &SimMachine,
    drives: &'a mut HashMap<Bdf, NvmeDrive>,
    cfg: NvmeConfig,
    b: Bdf,
) -> Result<&'a mut NvmeDrive, IoError> {
    match drives.entry(b) {
        std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(NvmeDrive::new(sim, b, cfg)?)),
    }
}

const PIECE: u64 = 4 << 20;

fn fill_memory(
    sim: &SimMachine,
    at: PhysAddr,
    len: u64,
    seed: u64,
) -> Result<(), peerdma_sim::AccessError> {
    let mut buf = vec![0u8; PIECE.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(PIECE) as usize;
        pattern::fill(seed, done, &mut buf[..n]);
        sim.cpu_write(at.checked_add(done).unwrap_or(at), &buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

fn mismatch(at: u64) -> String {
    format!("verification failed: the data moved but is wrong, first wrong byte at offset {at} of the job")
}

/// Memory at `mem` against the pattern of `seed` from `pat_off`.
fn check_pattern(
    sim: &SimMachine,
    mem: PhysAddr,
    len: u64,
    seed: u64,
    pat_off: u64,
) -> Result<(), String> {
    match sim.memory_pattern_mismatch(mem, len, seed, pat_off) {
        Ok(None) => Ok(()),
        Ok(Some(at)) => Err(mismatch(at)),
        Err(e) => Err(format!("verification could not read: {e}")),
    }
}

fn check_pattern_media(
    sim: &SimMachine,
    d: Bdf,
    off: u64,
    len: u64,
    seed: u64,
    pat_off: u64,
) -> Result<(), String> {
    match sim.media_pattern_mismatch(d, off, len, seed, pat_off) {
        Ok(None) => Ok(()),
        Ok(Some(at)) => Err(mismatch(at)),
        Err(e) => Err(format!("verification could not read: {e}")),
    }
}

enum Side {
    Media(Bdf, u64),
    Memory(PhysAddr),
}

fn compare(sim: &SimMachine, a: Side, b: Side, len: u64) -> Result<(), String> {
    let mut x = vec![0u8; PIECE.min(len) as usize];
    let mut y = vec![0u8; PIECE.min(len) as usize];
    let read = |s: &Side, off: u64, buf: &mut [u8]| -> Result<(), String> {
        match s {
            Side::Media(d, base) => sim.media_read(*d, base + off, buf),
            Side::Memory(m) => sim.cpu_read(m.checked_add(off).unwrap_or(*m), buf),
        }
        .map_err(|e| format!("verification could not read: {e}"))
    };
    let mut done = 0;
    while done < len {
        let n = (len - done).min(PIECE) as usize;
        read(&a, done, &mut x[..n])?;
        read(&b, done, &mut y[..n])?;
        if let Some(i) = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q) {
            return Err(mismatch(done + i as u64));
        }
        done += n as u64;
    }
    Ok(())
}

/// Whether a leg went the way its path says (for reports).
pub fn leg_is_p2p(path: LegPath) -> bool {
    matches!(path, LegPath::BusAddr | LegPath::ThruHostBridge)
}
