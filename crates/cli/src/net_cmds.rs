//! `peerdma devmem-table`: buffer utilization and throughput of devmem
//! TCP receive for MTU × `net_iov` size × buffer layout, on two copies of
//! the machine joined by a wire — the seed's question about 1500-byte
//! frames in 64K allocations, answered with numbers anyone can rerun.

use super::{print, print_json};
use anyhow::{bail, Result};
use clap::Args;
use peerdma_pci::Topology;
use peerdma_workload::devmem_table::{
    mtu_valid, render_table, rx_buf_size_valid, BufferLayout, TableRequest, MAX_MTU, MIN_MTU,
};
use serde_json::json;
use std::process::ExitCode;

/// `peerdma devmem-table`.
#[derive(Args)]
pub struct DevmemTableArgs {
    /// MTUs, comma-separated.
    #[arg(
        long,
        value_name = "MTU,...",
        value_delimiter = ',',
        default_value = "1500,4096,9000"
    )]
    mtu: Vec<u32>,
    /// net_iov sizes (the RX queue's rx-buf-size), comma-separated.
    #[arg(long, value_name = "SIZE,...", value_delimiter = ',', default_value = "4K,16K,64K", value_parser = super::parse_bytes)]
    niov: Vec<u64>,
    /// Buffer layouts, comma-separated: one-packet, packed (2K strides,
    /// gve's page-pool fragments), packed:STRIDE (64: a striding RQ's).
    #[arg(
        long,
        value_name = "LAYOUT,...",
        value_delimiter = ',',
        default_value = "one-packet,packed,packed:64"
    )]
    layout: Vec<String>,
    /// Payload bytes each cell receives.
    #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = super::parse_bytes)]
    size: u64,
    /// The wire's line rate.
    #[arg(long, value_name = "GBIT/S", default_value_t = 100.0)]
    gbps: f64,
}

pub fn devmem_table(topo: &Topology, a: &DevmemTableArgs, json: bool) -> Result<ExitCode> {
    if !a.mtu.iter().all(|&m| mtu_valid(m)) {
        bail!("--mtu {:?}: each MTU is {MIN_MTU} to {MAX_MTU}", a.mtu);
    }
    let mut niovs = Vec::new();
    for &n in &a.niov {
        if !rx_buf_size_valid(n) {
            bail!(
                "--niov {}: a net_iov is a power of two from 4K to 2M",
                peerdma_mem::format_size(n)
            );
        }
        niovs.push(n as u32);
    }
    let layouts = a
        .layout
        .iter()
        .map(|l| l.parse::<BufferLayout>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| anyhow::anyhow!("--layout {m}"))?;
    if a.size == 0 || a.size > 1 << 30 {
        bail!("--size: each cell receives 1 byte to 1 GiB");
    }
    if !(a.gbps > 0.0 && a.gbps <= 1600.0) {
        bail!("--gbps {}: a line rate above 0 and at most 1600", a.gbps);
    }
    let table = peerdma_workload::devmem_table::devmem_table(
        topo,
        &TableRequest {
            mtus: a.mtu.clone(),
            niov_sizes: niovs,
            layouts,
            bytes: a.size,
            wire_bytes_per_sec: a.gbps * 1e9 / 8.0,
        },
    )
    .map_err(|why| anyhow::anyhow!("no devmem TCP table on {}: {why}", topo.origin_label()))?;
    let rows = &table.rows;
    let name = |b| {
        topo.find(b)
            .and_then(|f| topo.function(f).label.clone())
            .unwrap_or_else(|| b.to_string())
    };
    if json {
        print_json(&json!({
            "machine": topo.origin_label(),
            "nic": table.nic.to_string(),
            "into": table.gpu.to_string(),
            "gbits_per_sec": a.gbps,
            "bytes_per_cell": a.size,
            "rows": rows,
        }))?;
    } else {
        print(&format!(
            "devmem TCP receive on two copies of {}: {} of payload per cell from a's host memory over a {} Gbit/s wire into {}'s memory on b through {}; tokens given back 1024 frags at a time; every byte checked where it landed.\n\n{}\nutilization: payload bytes over the bytes of the net_iovs holding them, averaged over the transfer; peak held: the most device memory data held at once; GB/s: payload throughput in the flow model.\n",
            topo.origin_label(),
            peerdma_mem::format_size(a.size),
            a.gbps,
            name(table.gpu),
            name(table.nic),
            render_table(rows)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
