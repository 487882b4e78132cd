//! devmem TCP receive between two simulated machines (or two ports of one):
//! bytes end to end on every path the kernel's verdict gives (by bus
//! address, through the host bridge, in every IOMMU mode), binds refused
//! where the NIC cannot reach the memory, reference counts back to zero,
//! the 1024-frag limit of `SO_DEVMEM_DONTNEED`, a pool run dry without a
//! byte overwritten, and the utilization of 1500-byte packets in 64 KiB
//! `net_iov`s.

use peerdma_consumers::devmem::DeviceMemory;
use peerdma_consumers::io::{End, LegPath, Mover};
use peerdma_consumers::net::devmem::{BindingState, DmaBuf};
use peerdma_consumers::net::flow::{
    dontneed_calls, run_transfer, Flow, FlowConfig, Host, Receiver, SendFrom, Sender, TokenReturn,
    TransferSpec,
};
use peerdma_consumers::net::frame::TcpOptions;
use peerdma_consumers::net::nic::{BufferLayout, NicConfig};
use peerdma_consumers::net::tcp::{DevmemCmsg, DmabufToken};
use peerdma_consumers::net::utilization::{pipeline_time, utilization_table, TableSpec};
use peerdma_consumers::net::{NetError, Port, Wire};
use peerdma_dma::IommuMode;
use peerdma_mem::{Address, Bdf};
use peerdma_p2p::{calc_map_type_and_dist, MapType};
use peerdma_pci::Source;
use peerdma_sim::{Route, SimConfig, SimMachine};

fn machine(preset: &str, iommu: IommuMode) -> SimMachine {
    SimMachine::new(
        Source::Preset(preset.into()).load().unwrap(),
        SimConfig {
            iommu,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

fn verdict(m: &SimMachine, provider: Bdf, client: Bdf) -> MapType {
    let t = m.topology();
    calc_map_type_and_dist(t, t.find(provider).unwrap(), t.find(client).unwrap()).map_type
}

/// Two machines of `preset`, the wire between their `nic`s.
struct Pair {
    m0: SimMachine,
    m1: SimMachine,
    d0: DeviceMemory,
    d1: DeviceMemory,
    wire: Wire,
}

impl Pair {
    fn new(preset: &str, iommu: IommuMode, tx_nic: &str, rx_nic: &str) -> Pair {
        let (m0, m1) = (machine(preset, iommu), machine(preset, iommu));
        let wire = Wire {
            a: Port {
                machine: 0,
                nic: m0.device(tx_nic).unwrap(),
            },
            b: Port {
                machine: 1,
                nic: m1.device(rx_nic).unwrap(),
            },
            bytes_per_sec: 12.5e9,
            mtu: 1500,
            latency_ns: 1000,
        };
        Pair {
            m0,
            m1,
            d0: DeviceMemory::new(),
            d1: DeviceMemory::new(),
            wire,
        }
    }
    fn tx(&self) -> Host<'_> {
        Host {
            sim: &self.m0,
            mem: &self.d0,
            id: 0,
        }
    }
    fn rx(&self) -> Host<'_> {
        Host {
            sim: &self.m1,
            mem: &self.d1,
            id: 1,
        }
    }
    fn run(
        &self,
        spec: &TransferSpec,
    ) -> Result<peerdma_consumers::net::flow::DevmemReport, NetError> {
        run_transfer(self.tx(), self.rx(), &self.wire, self.wire.a, spec)
    }
}

/// A stream of whole segments and a bit (the last one short).
const BYTES: u64 = (6 << 20) + 777;

fn check_legs(r: &peerdma_consumers::net::flow::DevmemReport, tx_nic: Bdf, rx_nic: Bdf, gpu: Bdf) {
    let o = &r.outcome;
    let tx = o
        .legs
        .iter()
        .find(|l| l.machine == 0 && l.path != LegPath::Wire)
        .expect("the sender's leg");
    assert_eq!(tx.to, End::Device { bdf: tx_nic });
    assert_eq!(tx.mover, Mover::Dma { engine: tx_nic });
    assert!(
        tx.bytes >= r.bytes,
        "the sender read every byte at least once"
    );
    assert!(!tx.paths.is_empty(), "timed on the sender's links");
    let wire = o.legs.iter().find(|l| l.path == LegPath::Wire).unwrap();
    assert_eq!((wire.machine, wire.peer_machine), (0, Some(1)));
    assert_eq!(wire.bytes, r.line_bytes);
    assert!(wire.bytes > r.bytes, "headers and framing on the line");
    let payload = o
        .legs
        .iter()
        .find(|l| l.machine == 1 && l.to == End::Device { bdf: gpu })
        .expect("the payload leg");
    assert_eq!(payload.from, End::Device { bdf: rx_nic });
    assert_eq!(payload.provider, Some(gpu));
    assert_eq!(payload.bytes, r.payload_bytes);
    assert!(!payload.paths.is_empty());
    let headers = o
        .legs
        .iter()
        .find(|l| l.machine == 1 && matches!(l.to, End::Host { .. }))
        .expect("the header leg");
    assert_eq!(headers.path, LegPath::HostMemory);
    assert_eq!(headers.bytes, r.header_bytes);
    assert_eq!(r.header_bytes, 54 * (r.frames_sent - r.drops));
    assert!(!o.meta_paths.is_empty(), "descriptors and completions");
}

#[test]
fn bytes_arrive_intact_by_bus_address_and_through_the_host_bridge() {
    // (preset, sending NIC, receiving NIC, GPU on the receiver)
    let cases = [
        ("dual-xeon", "nic0", "nic0", "gpu0"),
        ("dual-xeon", "nic0", "nic0", "gpu2"),
        ("dual-xeon", "nic0", "nic1", "gpu6"),
        ("epyc", "nic0", "nic0", "gpu1"),
        ("epyc", "nic1", "nic1", "gpu0"),
    ];
    for (preset, txn, rxn, gpu) in cases {
        for iommu in [IommuMode::Off, IommuMode::Translated] {
            let p = Pair::new(preset, iommu, txn, rxn);
            let g = p.m1.device(gpu).unwrap();
            let rx_nic = p.wire.b.nic;
            let want = match verdict(&p.m1, g, rx_nic) {
                MapType::BusAddr => LegPath::BusAddr,
                MapType::ThruHostBridge => LegPath::ThruHostBridge,
                other => panic!("{preset} {rxn} -> {gpu}: {other:?}"),
            };
            let mut spec = TransferSpec::new(BYTES, g);
            spec.dmabuf_len = 16 << 20;
            let r = p
                .run(&spec)
                .unwrap_or_else(|e| panic!("{preset} {rxn} -> {gpu} {iommu:?}: {e}"));
            let what = format!("{preset} {rxn} -> {gpu} {iommu:?}");
            assert!(r.complete, "{what}: {:?}", r.stalled);
            assert_eq!(r.verified_bytes, BYTES, "{what}");
            assert_eq!(r.path, want, "{what}: the kernel's verdict");
            assert_eq!(r.drops + r.socket_drops, 0, "{what}");
            assert!(r.outcome.notes.is_empty(), "{what}: {:?}", r.outcome.notes);
            assert_eq!(r.packets, BYTES.div_ceil(1460), "{what}");
            assert!(r.binding_freed, "{what}");
            check_legs(&r, p.wire.a.nic, rx_nic, g);
            let payload = r
                .outcome
                .legs
                .iter()
                .find(|l| l.to == End::Device { bdf: g })
                .unwrap();
            assert_eq!(payload.path, want, "{what}");
            let observed_ok = payload.routes.iter().all(|r| match want {
                LegPath::BusAddr => matches!(r, Route::Switch { .. }),
                _ => matches!(r, Route::RootComplexPeer { .. }),
            });
            assert!(observed_ok, "{what}: {:?}", payload.routes);
            assert_eq!(payload.unsupported_bytes, 0, "{what}");
        }
    }
}

#[test]
fn every_iommu_mode_and_both_layouts_and_timestamps() {
    for iommu in [
        IommuMode::Off,
        IommuMode::Passthrough,
        IommuMode::Translated,
    ] {
        for layout in [
            BufferLayout::OnePacket,
            BufferLayout::Packed { stride: 2048 },
            BufferLayout::Packed { stride: 64 },
        ] {
            for niov in [4096u32, 16384, 65536] {
                let p = Pair::new("dual-xeon", iommu, "nic0", "nic0");
                let g = p.m1.device("gpu2").unwrap();
                let mut spec = TransferSpec::new(2 << 20, g);
                spec.nic.layout = layout;
                spec.rx_buf_size = niov;
                spec.dmabuf_len = (4 * 1024 * u64::from(niov)).max(16 << 20);
                spec.flow.tcp = TcpOptions { timestamps: true };
                let what = format!("{iommu:?} {layout} {niov}");
                let r = p.run(&spec).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(r.complete && r.binding_freed, "{what}: {:?}", r.stalled);
                assert_eq!(r.mss, 1448, "timestamps take 12 bytes of every segment");
                assert_eq!(r.header_bytes, 66 * r.frames_sent, "{what}");
            }
        }
    }
}

#[test]
fn a_sender_in_device_memory_and_two_ports_of_one_machine() {
    // devmem TX out of gpu1's memory, into gpu0 of the same machine through
    // the NIC's other port, cabled back: one simulated machine, both ends.
    let m = machine("dual-xeon", IommuMode::Off);
    let mem = DeviceMemory::new();
    let host = Host {
        sim: &m,
        mem: &mem,
        id: 0,
    };
    let wire = Wire {
        a: Port {
            machine: 0,
            nic: m.device("nic0").unwrap(),
        },
        b: Port {
            machine: 0,
            nic: m.device("nic0-1").unwrap(),
        },
        bytes_per_sec: 12.5e9,
        mtu: 9000,
        latency_ns: 100,
    };
    let gpu1 = m.device("gpu1").unwrap();
    let mut spec = TransferSpec::new(BYTES, m.device("gpu0").unwrap());
    spec.from = SendFrom::Device { dev: gpu1 };
    spec.dmabuf_len = 32 << 20;
    let r = run_transfer(host, host, &wire, wire.a, &spec).unwrap();
    assert!(r.complete && r.binding_freed);
    assert_eq!(r.mss, 8960);
    let tx = &r.outcome.legs[0];
    assert_eq!(tx.from, End::Device { bdf: gpu1 });
    assert_eq!(
        tx.path,
        LegPath::BusAddr,
        "nic0 reads gpu1 below their switch"
    );
    assert!(r.outcome.legs.iter().all(|l| l.machine == 0));
    let t = pipeline_time(&m, &m, &wire, &r).unwrap();
    assert!(t.seconds > 0.0 && t.sender_seconds == 0.0, "{t:?}");
}

#[test]
fn the_bind_is_refused_where_the_nic_cannot_reach_the_memory() {
    // The workstation's root complex does not forward peer traffic: its
    // NIC cannot reach the GPU, and devmem TCP has no bounce.
    let m = machine("workstation", IommuMode::Off);
    let mem = DeviceMemory::new();
    let host = Host {
        sim: &m,
        mem: &mem,
        id: 1,
    };
    let (nic, gpu) = (m.device("nic").unwrap(), m.device("gpu").unwrap());
    assert_eq!(verdict(&m, gpu, nic), MapType::NotSupported);
    let mut rx = Receiver::new(host, nic, NicConfig::default()).unwrap();
    let d = DmaBuf::export(&m, &mem, gpu, 8 << 20).unwrap();
    let p = d.allocation().provider().clone();
    let refs = p.references();
    let err = rx.bind(d, 1, 4096).unwrap_err();
    assert!(matches!(err, NetError::BindRefused { .. }), "{err}");
    assert_eq!(err.errno(), "EREMOTEIO");
    let msg = err.to_string();
    assert!(
        msg.contains(&nic.to_string()) && msg.contains(&gpu.to_string()),
        "names the pair: {msg}"
    );
    assert!(msg.contains("no bounce"), "{msg}");
    assert!(
        msg.contains("host bridge") || msg.contains("root"),
        "says why: {msg}"
    );
    assert!(p.references() < refs, "the refused dma-buf was put");
    assert!(rx.binding().is_none());
    // The same through run_transfer, from a workstation to a workstation.
    let m0 = machine("workstation", IommuMode::Off);
    let d0 = DeviceMemory::new();
    let wire = Wire {
        a: Port {
            machine: 0,
            nic: m0.device("nic").unwrap(),
        },
        b: Port { machine: 1, nic },
        bytes_per_sec: 125e6,
        mtu: 1500,
        latency_ns: 10_000,
    };
    let spec = TransferSpec::new(1 << 20, gpu);
    let err = run_transfer(
        Host {
            sim: &m0,
            mem: &d0,
            id: 0,
        },
        host,
        &wire,
        wire.a,
        &spec,
    )
    .unwrap_err();
    assert!(matches!(err, NetError::BindRefused { .. }), "{err}");
    // devmem TX from the workstation's GPU is refused the same way.
    let err = Sender::new(
        Host {
            sim: &m0,
            mem: &d0,
            id: 0,
        },
        wire.a.nic,
        SendFrom::Device {
            dev: m0.device("gpu").unwrap(),
        },
        1 << 20,
        1 << 20,
        1,
    )
    .unwrap_err();
    assert!(matches!(err, NetError::SendRefused { .. }), "{err}");
}

#[test]
fn binds_name_what_is_wrong() {
    // gpu-storage-16 has no NIC: a GPU is not one.
    let m = machine("gpu-storage-16", IommuMode::Off);
    let mem = DeviceMemory::new();
    let host = Host {
        sim: &m,
        mem: &mem,
        id: 0,
    };
    let gpu = m.device("gpu0").unwrap();
    let err = Receiver::new(host, gpu, NicConfig::default()).unwrap_err();
    assert!(matches!(err, NetError::NotANic { .. }), "{err}");
    assert!(err.to_string().contains(&gpu.to_string()), "{err}");
    assert!(err.to_string().contains("030200"), "the class: {err}");
    let m = machine("dual-xeon", IommuMode::Off);
    let mem = DeviceMemory::new();
    let host = Host {
        sim: &m,
        mem: &mem,
        id: 0,
    };
    let (nic, gpu) = (m.device("nic0").unwrap(), m.device("gpu0").unwrap());
    let mut rx = Receiver::new(host, nic, NicConfig::default()).unwrap();
    let buf = || DmaBuf::export(&m, &mem, gpu, 8 << 20).unwrap();
    for bad in [0u32, 2048, 12288, 4 << 20] {
        let err = rx.bind(buf(), 1, bad).unwrap_err();
        assert!(
            matches!(err, NetError::RxBufSize { size } if size == bad),
            "{err}"
        );
        assert!(err.to_string().contains("power of 2"), "{err}");
    }
    let err = rx.bind(buf(), 8, 4096).unwrap_err();
    assert!(err.to_string().contains("8 RX queues"), "{err}");
    let id = rx.bind(buf(), 1, 4096).unwrap();
    let err = rx.bind(buf(), 2, 4096).unwrap_err();
    assert!(
        matches!(err, NetError::QueueBusy { binding, .. } if binding == id),
        "{err}"
    );
    // A dma-buf whose mapping is not aligned to the net_iov size.
    let p = mem.provider(&m, gpu).unwrap();
    let _pad = p.alloc(4096).unwrap();
    let odd = p.alloc(1 << 20).unwrap();
    assert_ne!(odd.bus_addr().raw() % 65536, 0);
    let mut rx2 = Receiver::new(host, m.device("nic0-1").unwrap(), NicConfig::default()).unwrap();
    let err = rx2
        .bind(DmaBuf::from_allocation(odd), 0, 65536)
        .unwrap_err();
    assert!(matches!(err, NetError::Unaligned { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("not aligned to net_iov size 65536"),
        "{err}"
    );
    // Header split off: devmem TCP cannot work.
    let mut rx3 = Receiver::new(
        host,
        m.device("nic1").unwrap(),
        NicConfig {
            header_split: false,
            ..NicConfig::default()
        },
    )
    .unwrap();
    let err = rx3.bind(buf(), 0, 4096).unwrap_err();
    assert!(err.to_string().contains("tcp-data-split"), "{err}");
}

/// A flow on dual-xeon pairs with a dma-buf of `niovs` 4 KiB `net_iov`s
/// and a ring of `ring` descriptors.
fn small_flow(p: &Pair, niovs: u64, ring: u32, bytes: u64) -> Flow<'_> {
    let gpu = p.m1.device("gpu0").unwrap();
    let tx = Sender::new(
        p.tx(),
        p.wire.a.nic,
        SendFrom::Host { node: 0 },
        1 << 20,
        bytes,
        9,
    )
    .unwrap();
    let mut rx = Receiver::new(
        p.rx(),
        p.wire.b.nic,
        NicConfig {
            ring_size: ring,
            layout: BufferLayout::OnePacket,
            ..NicConfig::default()
        },
    )
    .unwrap();
    rx.bind(
        DmaBuf::export(&p.m1, &p.d1, gpu, niovs * 4096).unwrap(),
        1,
        4096,
    )
    .unwrap();
    Flow::new(
        tx,
        p.wire,
        rx,
        FlowConfig {
            burst: 64,
            ..FlowConfig::default()
        },
    )
    .unwrap()
}

/// Check each frag against the sender's data (seed 9) from `at` on.
fn check(p: &Pair, flow: &Flow<'_>, frags: &[DevmemCmsg], mut at: u64) -> u64 {
    let base = flow.rx.binding().unwrap().dmabuf_phys();
    for c in frags {
        let addr = base.checked_add(c.frag_offset).unwrap();
        assert_eq!(
            p.m1.memory_pattern_mismatch(addr, u64::from(c.frag_size), 9, at)
                .unwrap(),
            None,
            "frag at dma-buf offset {:#x} (stream byte {at})",
            c.frag_offset
        );
        at += u64::from(c.frag_size);
    }
    at
}

#[test]
fn a_pool_run_dry_drops_frames_and_overwrites_nothing() {
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let bytes = 4 << 20;
    let mut flow = small_flow(&p, 256, 64, bytes);
    let mut held: Vec<DevmemCmsg> = Vec::new();
    let mut dropped = 0;
    // Read everything, give nothing back, until the pool is dry and the
    // NIC drops whatever comes.
    for _ in 0..40 {
        let r = flow.round().unwrap();
        dropped += r.dropped;
        flow.rx.recvmsg(&mut held, u64::MAX).unwrap();
    }
    let b = flow.rx.binding().unwrap();
    assert_eq!(b.genpool_avail(), 0, "every net_iov is out");
    assert!(dropped > 0 && flow.rx.queue().unwrap().stats.missed == u64::from(dropped));
    assert!(
        flow.tcp.stats.timeouts > 0,
        "nothing after the drops reported them"
    );
    assert_eq!(held.len() as u64, flow.rx.socket().held_tokens());
    let got: u64 = held.iter().map(|c| u64::from(c.frag_size)).sum();
    // One packet per 4 KiB net_iov: the user holds all 256 of them.
    assert_eq!(held.len(), 256);
    assert_eq!(got, 256 * 1460);
    // Nothing the user holds was overwritten, after all those frames.
    let read = check(&p, &flow, &held, 0);
    assert_eq!(read, got);
    // Frags are distinct buffers: no two overlap.
    let mut spans: Vec<(u64, u64)> = held
        .iter()
        .map(|c| (c.frag_offset, c.frag_offset + u64::from(c.frag_size)))
        .collect();
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    // Give the tokens back: retransmissions fill the gap, the stream ends
    // whole.
    let mut tokens: Vec<u32> = held.iter().map(|c| c.frag_token).collect();
    for call in dontneed_calls(&mut tokens) {
        flow.rx.dontneed(&call).unwrap();
    }
    let mut at = read;
    let mut frags = Vec::new();
    for _ in 0..10_000 {
        if at == bytes {
            break;
        }
        flow.round().unwrap();
        frags.clear();
        flow.rx.recvmsg(&mut frags, u64::MAX).unwrap();
        at = check(&p, &flow, &frags, at);
        let mut t: Vec<u32> = frags.iter().map(|c| c.frag_token).collect();
        for call in dontneed_calls(&mut t) {
            flow.rx.dontneed(&call).unwrap();
        }
    }
    assert_eq!(at, bytes, "the whole stream, after the recovery");
    assert!(flow.tcp.stats.retransmitted_bytes > 0);
}

#[test]
fn a_user_that_does_not_read_closes_the_window_and_nothing_drops() {
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let mut flow = small_flow(&p, 4096, 1024, 64 << 20);
    flow.rx.socket_mut().rcvbuf = 1 << 20;
    let mut sent = 0;
    for _ in 0..50 {
        let r = flow.round().unwrap();
        sent += r.sent;
        assert_eq!(r.dropped, 0);
    }
    assert_eq!(
        flow.rx.socket().window(),
        0,
        "the queue holds the whole buffer"
    );
    assert!(flow.tcp.stats.zero_window > 0, "the sender waits");
    assert_eq!(flow.rx.queue().unwrap().stats.missed, 0);
    assert_eq!(flow.rx.socket().stats.rcvbuf_drops, 0);
    let queued = flow.rx.socket().readable();
    assert!(queued > 0 && queued < 1 << 20);
    assert_eq!(u64::from(sent), flow.rx.socket().stats.segments);
}

#[test]
fn dontneed_takes_at_most_1024_frags_and_128_ranges() {
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let mut flow = small_flow(&p, 4096, 1024, 4 << 20);
    let mut held: Vec<DevmemCmsg> = Vec::new();
    while held.len() < 1500 {
        flow.round().unwrap();
        flow.rx.recvmsg(&mut held, u64::MAX).unwrap();
    }
    let n = held.len() as u32;
    let refs = |f: &Flow<'_>| f.rx.binding().unwrap().pp_refs();
    let before = refs(&flow);
    // 129 ranges: EINVAL, nothing freed.
    let ranges: Vec<DmabufToken> = held[..129]
        .iter()
        .map(|c| DmabufToken {
            token_start: c.frag_token,
            token_count: 1,
        })
        .collect();
    let err = flow.rx.dontneed(&ranges).unwrap_err();
    assert!(
        matches!(err, NetError::TooManyTokens { given: 129 }),
        "{err}"
    );
    assert_eq!(err.errno(), "EINVAL");
    assert_eq!(refs(&flow), before);
    // Every token in one range: the first 1024 frags go, the call returns.
    let mut tokens: Vec<u32> = held.iter().map(|c| c.frag_token).collect();
    tokens.sort();
    let (lo, hi) = (tokens[0], tokens[tokens.len() - 1]);
    assert_eq!(hi - lo + 1, n, "tokens of one socket are dense");
    let all = [DmabufToken {
        token_start: lo,
        token_count: n,
    }];
    assert_eq!(flow.rx.dontneed(&all).unwrap(), 1024);
    assert_eq!(flow.rx.socket().held_tokens(), u64::from(n - 1024));
    assert_eq!(refs(&flow), before - 1024);
    // Again: the rest (the returned ones are skipped, and count).
    let rest = [DmabufToken {
        token_start: lo + 1024,
        token_count: n - 1024,
    }];
    assert_eq!(flow.rx.dontneed(&rest).unwrap(), n - 1024);
    assert_eq!(flow.rx.dontneed(&rest).unwrap(), 0, "already given back");
    assert_eq!(flow.rx.socket().held_tokens(), 0);
    // Token 0 and unknown tokens are skipped.
    let junk = [
        DmabufToken {
            token_start: 0,
            token_count: 1,
        },
        DmabufToken {
            token_start: u32::MAX,
            token_count: 5,
        },
    ];
    assert_eq!(flow.rx.dontneed(&junk).unwrap(), 0);
}

#[test]
fn references_come_back_to_zero_and_the_binding_is_freed_last() {
    for iommu in [IommuMode::Off, IommuMode::Translated] {
        let p = Pair::new("dual-xeon", iommu, "nic0", "nic0");
        let nic = p.wire.b.nic;
        let iova_before = p.m1.mapper().iova_in_use(nic);
        let mut flow = small_flow(&p, 2048, 256, 2 << 20);
        let prov = p.d1.provider(&p.m1, p.m1.device("gpu0").unwrap()).unwrap();
        let prov_refs = prov.references();
        let mut held: Vec<DevmemCmsg> = Vec::new();
        for _ in 0..8 {
            flow.round().unwrap();
            flow.rx.recvmsg(&mut held, u64::MAX).unwrap();
        }
        assert!(!held.is_empty());
        // Unbind while the user holds tokens: the binding waits.
        flow.rx.unbind().unwrap();
        let b = flow.rx.binding().unwrap();
        assert_eq!(b.state(), BindingState::Unbound);
        assert!(b.mapping().is_some(), "still mapped: net_iovs are out");
        assert!(b.genpool_avail() < b.genpool_size());
        assert_eq!(b.pp_refs(), held.len() as u64, "one reference per token");
        assert!(flow.rx.queue().is_none(), "the queue was stopped");
        let err = flow.round().unwrap_err();
        assert!(matches!(err, NetError::NotBound { .. }), "{err}");
        // The user gives everything back: now it is freed.
        let mut tokens: Vec<u32> = held.iter().map(|c| c.frag_token).collect();
        for call in dontneed_calls(&mut tokens) {
            flow.rx.dontneed(&call).unwrap();
        }
        let b = flow.rx.binding().unwrap();
        assert_eq!(b.state(), BindingState::Freed, "{iommu:?}");
        assert_eq!(b.pp_refs(), 0);
        assert_eq!(b.refs(), 0);
        assert_eq!(b.genpool_avail(), b.genpool_size());
        assert!(b.mapping().is_none());
        assert!(flow.rx.pool().unwrap().released());
        assert_eq!(flow.rx.pool().unwrap().inflight(), 0);
        assert_eq!(
            p.m1.mapper().iova_in_use(nic),
            iova_before,
            "{iommu:?}: the rings and the dma-buf are unmapped"
        );
        assert!(prov.references() < prov_refs, "the dma-buf was put");
    }
}

#[test]
fn closing_the_socket_gives_back_what_the_user_held() {
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let mut flow = small_flow(&p, 2048, 256, 2 << 20);
    let mut held: Vec<DevmemCmsg> = Vec::new();
    for _ in 0..4 {
        flow.round().unwrap();
    }
    flow.rx.recvmsg(&mut held, 3000).unwrap();
    assert_eq!(
        held.iter().map(|c| c.frag_size).sum::<u32>(),
        3000,
        "a partial read"
    );
    assert!(flow.rx.socket().readable() > 0);
    flow.rx.unbind().unwrap();
    flow.rx.close().unwrap();
    let b = flow.rx.binding().unwrap();
    assert_eq!(b.state(), BindingState::Freed);
    assert_eq!(b.pp_refs(), 0);
    assert_eq!(b.held(), (0, 0));
}

#[test]
fn utilization_of_1500_byte_packets_in_64k_net_iovs() {
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let mut spec = TableSpec::new(p.m1.device("gpu0").unwrap());
    // Whole segments only: every packet carries 1460 bytes.
    spec.bytes = 1460 * 8000;
    spec.mtus = vec![1500];
    spec.niov_sizes = vec![65536];
    let rows = utilization_table(p.tx(), p.rx(), &p.wire, p.wire.a, &spec).unwrap();
    let one = &rows[0];
    assert_eq!(one.layout, BufferLayout::OnePacket);
    assert!(
        (one.utilization - 1460.0 / 65536.0).abs() < 1e-9,
        "one packet per 64 KiB net_iov: {}",
        one.utilization
    );
    assert!(
        one.peak_held_bytes >= 1024 * 65536,
        "1024 frags held cost 64 MiB of device memory: {}",
        one.peak_held_bytes
    );
    let gve = &rows[1];
    assert!(
        gve.utilization > 0.68 && gve.utilization <= 1460.0 / 2048.0 + 1e-9,
        "2 KiB strides: at most 1460/2048: {}",
        gve.utilization
    );
    let dense = &rows[2];
    assert!(
        dense.utilization > 0.9 && dense.utilization <= 1460.0 / 1472.0 + 1e-9,
        "64-byte strides: at most 1460/1472: {}",
        dense.utilization
    );
    assert!(one.peak_held_bytes > 20 * dense.peak_held_bytes);
    // The same payload costs the driver one buffer per packet, or one per
    // ~44 packets.
    assert!(
        one.buffers_per_mib > 700.0 && dense.buffers_per_mib < 20.0,
        "{rows:?}"
    );
    for r in &rows {
        assert!(r.gbytes_per_sec > 1.0, "{r:?}");
        // nic0's Gen3 x8 link is narrower than the 100 Gb/s wire.
        assert_eq!(r.bottleneck, "receiver: sw0-p12<->nic0", "{r:?}");
    }
    let text = peerdma_consumers::net::utilization::render_table(&rows);
    assert!(text.contains("2.2%") && text.contains("64 KiB"), "{text}");
}

#[test]
fn the_wire_sets_the_pace_when_it_is_the_slowest() {
    let mut p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    p.wire.bytes_per_sec = 125e6; // 1 GbE
    let spec = TransferSpec::new(1 << 20, p.m1.device("gpu0").unwrap());
    let r = p.run(&spec).unwrap();
    let t = pipeline_time(&p.m0, &p.m1, &p.wire, &r).unwrap();
    assert_eq!(t.bottleneck, "the wire");
    let expect = r.line_bytes as f64 / 125e6;
    assert!((t.wire_seconds - expect).abs() < 1e-5, "{t:?}");
    assert!(t.receiver_seconds < t.wire_seconds && t.sender_seconds < t.wire_seconds);
}

#[test]
fn flows_check_their_wire() {
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let spec = TransferSpec::new(1 << 20, p.m1.device("gpu0").unwrap());
    let wrong = Port {
        machine: 0,
        nic: p.m0.device("nic1").unwrap(),
    };
    let err = run_transfer(p.tx(), p.rx(), &p.wire, wrong, &spec).unwrap_err();
    assert!(matches!(err, NetError::Wire(_)), "{err}");
    let mut bad = p.wire;
    bad.mtu = 100_000;
    let err = run_transfer(p.tx(), p.rx(), &bad, bad.a, &spec).unwrap_err();
    assert!(matches!(err, NetError::Mtu { .. }), "{err}");
    let err = run_transfer(p.rx(), p.tx(), &p.wire, p.wire.a, &spec).unwrap_err();
    assert!(matches!(err, NetError::Wire(_)), "machines swapped: {err}");
}

#[test]
fn a_stuck_consumer_stalls_the_transfer_and_says_so() {
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let mut spec = TransferSpec::new(64 << 20, p.m1.device("gpu0").unwrap());
    spec.tokens = TokenReturn::Never;
    spec.dmabuf_len = 8 << 20;
    let r = p.run(&spec).unwrap();
    assert!(!r.complete);
    assert!(r.drops > 0, "{r:?}");
    let why = r.stalled.clone().unwrap();
    assert!(why.contains("page pool is empty"), "{why}");
    let notes = r.outcome.notes.join("\n");
    assert!(
        notes.contains("dropped") && notes.contains("stopped after"),
        "{notes}"
    );
    assert!(r.verified_bytes > 0 && r.verified_bytes < 8 << 20);
    assert!(r.binding_freed, "closing the socket gave everything back");
}

#[test]
fn a_dataset_in_gpu_memory_to_gpu_memory_on_another_machine() {
    // GPU memory on machine 0, sent as it is (devmem TX), into GPU memory
    // on machine 1 (devmem RX): both ends by bus address below a switch.
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let src = p.m0.device("gpu1").unwrap();
    let mut spec = TransferSpec::new(BYTES, p.m1.device("gpu0").unwrap());
    spec.from = SendFrom::DeviceDataset { dev: src };
    spec.dmabuf_len = 16 << 20;
    let r = p.run(&spec).unwrap();
    assert!(r.complete && r.binding_freed, "{:?}", r.stalled);
    let tx = r
        .outcome
        .legs
        .iter()
        .find(|l| l.machine == 0 && l.path != LegPath::Wire)
        .unwrap();
    assert_eq!(tx.from, End::Device { bdf: src });
    assert_eq!(tx.path, LegPath::BusAddr);
    assert!(tx.routes.iter().all(|r| matches!(r, Route::Switch { .. })));
}

#[test]
fn a_link_going_down_below_the_gpu_is_an_error_that_names_it() {
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let gpu = p.m1.device("gpu0").unwrap();
    p.m1.inject(peerdma_sim::Fault::LinkDown {
        below: gpu,
        after: 100_000,
    })
    .unwrap();
    let spec = TransferSpec::new(BYTES, gpu);
    let err = p.run(&spec).unwrap_err();
    assert!(matches!(err, NetError::Dma { .. }), "{err}");
    assert_eq!(err.errno(), "EIO");
    let full = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(full.contains("payloads into the bound dma-buf"), "{full}");
    assert!(
        full.contains(&gpu.to_string()) && full.contains("down"),
        "{full}"
    );
}

#[test]
fn a_stale_bus_address_mapping_faults_in_the_iommu() {
    // The binding maps gpu0 for nic0 by bus address (one switch). Turning
    // ACS redirect on at the NIC's port afterwards sends its writes up to
    // the root complex, where the IOMMU has no mapping for them: the DMA
    // stops with an IOMMU fault, nothing lands anywhere else.
    let p = Pair::new("dual-xeon", IommuMode::Translated, "nic0", "nic0");
    let mut flow = small_flow(&p, 2048, 256, 8 << 20);
    assert_eq!(flow.rx.binding().unwrap().path(), LegPath::BusAddr);
    let mut frags = Vec::new();
    for _ in 0..3 {
        flow.round().unwrap();
        flow.rx.recvmsg(&mut frags, u64::MAX).unwrap();
    }
    p.m1.set_acs_ctrl(p.m1.device("sw0-p12").unwrap(), 0x1d)
        .unwrap();
    let err = flow.round().unwrap_err();
    let NetError::Dma { source, .. } = &err else {
        panic!("{err}");
    };
    assert!(
        matches!(source, peerdma_sim::DmaError::Iommu { .. }),
        "{source}"
    );
    assert!(!p.m1.mapper().iommu_faults().is_empty());
    // What the user read before is intact.
    check(&p, &flow, &frags, 0);
}

#[test]
fn the_check_finds_the_first_byte_that_is_not_the_senders() {
    let p = Pair::new("dual-xeon", IommuMode::Off, "nic0", "nic0");
    let mut flow = small_flow(&p, 2048, 256, 4 << 20);
    let mut frags = Vec::new();
    for _ in 0..3 {
        flow.round().unwrap();
        flow.rx.recvmsg(&mut frags, u64::MAX).unwrap();
    }
    let b = flow.rx.binding().unwrap();
    let at = peerdma_consumers::net::flow::FragCheck {
        dmabuf: b.dmabuf_phys(),
        memory: b.exporter(),
        seed: 9,
        pattern_base: 0,
    };
    let mut scratch = Vec::new();
    let total: u64 = frags.iter().map(|c| u64::from(c.frag_size)).sum();
    assert_eq!(
        peerdma_consumers::net::flow::check_frags(&p.m1, &at, &frags, &mut scratch, 0).unwrap(),
        total
    );
    // A GPU kernel scribbles on byte 100 of the fifth frag.
    let c = frags[4];
    let addr = b.dmabuf_phys().checked_add(c.frag_offset + 100).unwrap();
    let mut byte = [0u8];
    p.m1.cpu_read(addr, &mut byte).unwrap();
    p.m1.cpu_write(addr, &[byte[0] ^ 0x20]).unwrap();
    let err =
        peerdma_consumers::net::flow::check_frags(&p.m1, &at, &frags, &mut scratch, 0).unwrap_err();
    let before: u64 = frags[..4].iter().map(|c| u64::from(c.frag_size)).sum();
    assert!(
        matches!(err, NetError::Corrupt { stream_offset, dmabuf_offset, memory }
            if stream_offset == before + 100 && dmabuf_offset == c.frag_offset + 100 && memory == b.exporter()),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("byte {}", before + 100)),
        "{err}"
    );
}
