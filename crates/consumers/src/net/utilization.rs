//! The seed's question — 1500-byte DMAs into device memory that GPU
//! drivers manage in 64 KiB units — answered with numbers: buffer
//! utilization (payload bytes over the bytes of the `net_iov`s holding
//! them) and throughput of devmem TCP receive for MTU 1500, 4096 and 9000
//! against `net_iov`s of 4, 16 and 64 KiB, for each buffer layout.
//!
//! Every cell is a real transfer ([`super::flow::run_transfer`]): bytes
//! moved through both machines and the wire, each one checked; the user
//! holds up to 1024 frags (one `SO_DEVMEM_DONTNEED` call's worth) before
//! giving them back. Utilization is sampled each round after the user's
//! read; the average is over all samples (payload summed over held bytes
//! summed). Throughput is the flow model's: the sender's DMA out of its
//! send buffer timed on its machine, the receiver's payload, header,
//! descriptor and completion DMAs on its own (all at once, sharing
//! links), and the frames on the wire at its line rate; the stages
//! overlap, so the slowest sets the rate ([`pipeline_time`]).

use super::flow::{run_transfer, DevmemReport, Host, TokenReturn, TransferSpec};
use super::nic::BufferLayout;
use super::tcp::MAX_DONTNEED_FRAGS;
use super::{NetError, Port, Wire};
use crate::io::LegPath;
use peerdma_mem::{format_size, Bdf};
use peerdma_sim::timing::{Flow, Network};
use peerdma_sim::{PathBytes, SimMachine};

/// How long a transfer takes in the flow model, stage by stage.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PipelineTime {
    pub sender_seconds: f64,
    pub wire_seconds: f64,
    pub receiver_seconds: f64,
    /// Retransmission timeouts, each at least `TCP_RTO_MIN` (200 ms) with
    /// nothing moving: added, not overlapped.
    pub timeout_seconds: f64,
    pub seconds: f64,
    /// What sets the pace: "the wire", or a stage's busiest link.
    pub bottleneck: String,
}

/// `TCP_RTO_MIN`.
pub const RTO_MIN_SECONDS: f64 = 0.2;

fn stage(net: &Network, sim: &SimMachine, paths: &[&PathBytes]) -> Result<(f64, String), NetError> {
    let flows: Vec<Flow> = paths
        .iter()
        .filter(|p| !p.hops.is_empty() && p.bytes > 0)
        .map(|p| Flow::new(p.hops.clone(), p.bytes))
        .collect();
    if flows.is_empty() {
        return Ok((0.0, String::new()));
    }
    let s = sim
        .simulate(&flows)
        .map_err(|e| NetError::Config(format!("timing the transfer: {e}")))?;
    let busiest = s
        .channels
        .iter()
        .max_by_key(|c| c.busy)
        .and_then(|c| net.link(c.link))
        .map(|l| named(sim, &l.name))
        .unwrap_or_default();
    Ok((s.makespan.as_secs_f64(), busiest))
}

/// A link's name with the names the topology gives its ends
/// (`sw0-p12<->nic0` for `0000:19:12.0<->0000:1d:00.0`).
fn named(sim: &SimMachine, link: &str) -> String {
    let t = sim.topology();
    link.split("<->")
        .map(|end| {
            end.parse::<Bdf>()
                .ok()
                .and_then(|b| t.find(b))
                .and_then(|f| t.function(f).label.clone())
                .unwrap_or_else(|| end.to_string())
        })
        .collect::<Vec<_>>()
        .join("<->")
}

/// The time of `report`'s transfer from `sender` to `receiver` over
/// `wire`: each machine's DMAs together on its links, the wire at its
/// rate, the slowest of the three; plus the timeouts.
pub fn pipeline_time(
    sender: &SimMachine,
    receiver: &SimMachine,
    wire: &Wire,
    report: &DevmemReport,
) -> Result<PipelineTime, NetError> {
    let o = &report.outcome;
    // The wire leg says which machine sent: its legs ran there.
    let sender_id = o
        .legs
        .iter()
        .find(|l| l.path == LegPath::Wire)
        .map(|l| l.machine);
    let same =
        std::ptr::eq(sender, receiver) || o.legs.iter().all(|l| Some(l.machine) == sender_id);
    let mut tx_paths: Vec<&PathBytes> = Vec::new();
    let mut rx_paths: Vec<&PathBytes> = o.meta_paths.iter().collect();
    for l in o.legs.iter().filter(|l| l.path != LegPath::Wire) {
        if !same && Some(l.machine) == sender_id {
            tx_paths.extend(l.paths.iter());
        } else {
            rx_paths.extend(l.paths.iter());
        }
    }
    let (ts, tname) = if same {
        (0.0, String::new())
    } else {
        stage(sender.network(), sender, &tx_paths)?
    };
    let (tr, rname) = stage(receiver.network(), receiver, &rx_paths)?;
    let tw = report.line_bytes as f64 / wire.bytes_per_sec + wire.latency_ns as f64 * 1e-9;
    let timeouts = report.timeouts as f64 * RTO_MIN_SECONDS;
    let (slowest, bottleneck) = if tw >= ts && tw >= tr {
        (tw, "the wire".to_string())
    } else if ts >= tr {
        (ts, format!("sender: {tname}"))
    } else {
        (tr, format!("receiver: {rname}"))
    };
    Ok(PipelineTime {
        sender_seconds: ts,
        wire_seconds: tw,
        receiver_seconds: tr,
        timeout_seconds: timeouts,
        seconds: slowest + timeouts,
        bottleneck,
    })
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TableRow {
    pub mtu: u32,
    pub niov_size: u32,
    pub layout: BufferLayout,
    /// Payload over held bytes, averaged over the transfer.
    pub utilization: f64,
    /// The most device memory held by data at once.
    pub peak_held_bytes: u64,
    /// Frags (tokens to give back) and buffers posted per MiB of payload:
    /// the user's and the driver's work.
    pub frags_per_mib: f64,
    pub buffers_per_mib: f64,
    /// Payload throughput in the flow model, and what limits it.
    pub gbytes_per_sec: f64,
    pub bottleneck: String,
    pub drops: u64,
}

/// What the table is made of.
#[derive(Clone, Debug)]
pub struct TableSpec {
    /// Payload bytes per cell.
    pub bytes: u64,
    pub mtus: Vec<u32>,
    pub niov_sizes: Vec<u32>,
    pub layouts: Vec<BufferLayout>,
    /// Whose device memory receives.
    pub into: Bdf,
}

impl TableSpec {
    /// MTU 1500, 4096 and 9000 against 4, 16 and 64 KiB `net_iov`s, one
    /// packet per buffer and the default packed layout (2 KiB strides,
    /// gve's) and 64-byte strides (a striding receive queue's).
    pub fn new(into: Bdf) -> TableSpec {
        TableSpec {
            bytes: 16 << 20,
            mtus: vec![1500, 4096, 9000],
            niov_sizes: vec![4096, 16384, 65536],
            layouts: vec![
                BufferLayout::OnePacket,
                BufferLayout::Packed { stride: 2048 },
                BufferLayout::Packed { stride: 64 },
            ],
            into,
        }
    }
}

/// Run the table: one transfer per (MTU, `net_iov` size, layout), from
/// `from` over `wire` (its MTU replaced by each row's).
pub fn utilization_table(
    sender: Host<'_>,
    receiver: Host<'_>,
    wire: &Wire,
    from: Port,
    spec: &TableSpec,
) -> Result<Vec<TableRow>, NetError> {
    let mut rows = Vec::new();
    for &mtu in &spec.mtus {
        let w = Wire { mtu, ..*wire };
        for &niov in &spec.niov_sizes {
            for &layout in &spec.layouts {
                let mut t = TransferSpec::new(spec.bytes, spec.into);
                t.nic.layout = layout;
                t.rx_buf_size = niov;
                t.tokens = TokenReturn::Batch {
                    frags: MAX_DONTNEED_FRAGS,
                };
                t.dmabuf_len = t.ring_dmabuf_len();
                let r = run_transfer(sender, receiver, &w, from, &t)?;
                if !r.complete {
                    return Err(NetError::Config(format!(
                        "the cell MTU {mtu}, {} net_iovs, {layout} did not complete: {}",
                        format_size(u64::from(niov)),
                        r.stalled.as_deref().unwrap_or("stopped short")
                    )));
                }
                let time = pipeline_time(sender.sim, receiver.sim, &w, &r)?;
                let mib = r.verified_bytes as f64 / f64::from(1u32 << 20);
                rows.push(TableRow {
                    mtu,
                    niov_size: niov,
                    layout,
                    utilization: r.utilization.average,
                    peak_held_bytes: r.utilization.peak_held_bytes,
                    frags_per_mib: r.frags as f64 / mib,
                    buffers_per_mib: r.buffers_posted as f64 / mib,
                    gbytes_per_sec: if time.seconds > 0.0 {
                        r.verified_bytes as f64 / time.seconds / 1e9
                    } else {
                        0.0
                    },
                    bottleneck: time.bottleneck,
                    drops: r.drops + r.socket_drops,
                });
            }
        }
    }
    Ok(rows)
}

/// The table as text, one row per cell.
pub fn render_table(rows: &[TableRow]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:>5}  {:>8}  {:<24}  {:>11}  {:>10}  {:>9}  {:>11}  {:>9}  {}\n",
        "MTU",
        "net_iov",
        "layout",
        "utilization",
        "peak held",
        "frags/MiB",
        "buffers/MiB",
        "GB/s",
        "limited by"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:>5}  {:>8}  {:<24}  {:>10.1}%  {:>10}  {:>9.0}  {:>11.1}  {:>9.2}  {}{}\n",
            r.mtu,
            format_size(u64::from(r.niov_size)),
            r.layout.to_string(),
            100.0 * r.utilization,
            format_size(r.peak_held_bytes),
            r.frags_per_mib,
            r.buffers_per_mib,
            r.gbytes_per_sec,
            r.bottleneck,
            if r.drops > 0 {
                format!(" ({} drops)", r.drops)
            } else {
                String::new()
            }
        ));
    }
    out
}
