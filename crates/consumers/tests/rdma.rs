//! RDMA between two simulated machines: memory regions on dma-bufs of GPU
//! memory (dynamic and pinned), WRITE and READ across the wire, GPUDirect
//! RDMA from GPU to GPU, and every fault path.

use peerdma_consumers::devmem::DeviceMemory;
use peerdma_consumers::io::{End, LegPath};
use peerdma_consumers::net::{Port, Wire};
use peerdma_consumers::rdma::job::JobFault;
use peerdma_consumers::rdma::{
    gpudirect, run_rdma, Access, Connection, DmaBuf, DmaBufError, Endpoint, Host, Inject, Memory,
    Migration, MrKind, Placement, RdmaError, RdmaEvent, RdmaJob, RdmaNic, RdmaOp, Side, WcStatus,
};
use peerdma_dma::IommuMode;
use peerdma_mem::{Address, Bdf};
use peerdma_p2p::ProviderState;
use peerdma_pci::Source;
use peerdma_sim::{pattern, Fault, SimConfig, SimMachine};

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

struct Pair {
    sims: [SimMachine; 2],
    dm: [DeviceMemory; 2],
}

impl Pair {
    fn new(preset: &str, iommu: IommuMode) -> Pair {
        Pair {
            sims: [machine(preset, iommu), machine(preset, iommu)],
            dm: [DeviceMemory::new(), DeviceMemory::new()],
        }
    }
    fn hosts(&self) -> Vec<Host<'_>> {
        (0..2)
            .map(|i| Host {
                sim: &self.sims[i],
                devmem: &self.dm[i],
            })
            .collect()
    }
    fn dev(&self, m: usize, name: &str) -> Bdf {
        self.sims[m].device(name).unwrap()
    }
    fn wire(&self, nic: &str, mtu: u32) -> Wire {
        Wire {
            a: Port {
                machine: 0,
                nic: self.dev(0, nic),
            },
            b: Port {
                machine: 1,
                nic: self.dev(1, nic),
            },
            bytes_per_sec: 12.5e9,
            mtu,
            latency_ns: 1000,
        }
    }
    fn side(&self, m: usize, nic: &str, mem: Option<&str>) -> Side {
        Side {
            machine: m,
            nic: self.dev(m, nic),
            memory: match mem {
                Some(g) => Memory::Device(self.dev(m, g)),
                None => Memory::Host,
            },
        }
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn a_remote_write_lands_in_gpu_memory_by_bus_address() {
    let p = Pair::new("dual-xeon", IommuMode::Off);
    let job = RdmaJob::new(
        RdmaOp::Write,
        p.side(0, "nic0", None),
        p.side(1, "nic0", Some("gpu0")),
        3 * MIB + 4096,
    );
    let r = run_rdma(&p.hosts(), &p.wire("nic0", 1500), &job).unwrap();
    r.check.as_ref().unwrap();
    r.teardown.as_ref().unwrap();
    assert_eq!(r.path_mtu, 1024);
    assert_eq!(r.messages, 4);
    let legs = &r.outcome.io.legs;
    // Machine 0: the NIC reads host memory; the wire; machine 1: the NIC
    // writes the GPU's memory below their common switch.
    let gpu = p.dev(1, "gpu0");
    let nic1 = p.dev(1, "nic0");
    let l0 = legs.iter().find(|l| l.machine == 0).unwrap();
    assert_eq!(l0.path, LegPath::HostMemory);
    let w = legs.iter().find(|l| l.path == LegPath::Wire).unwrap();
    assert_eq!((w.machine, w.peer_machine), (0, Some(1)));
    assert_eq!(w.bytes, job.size);
    let l1 = legs.iter().find(|l| l.machine == 1).unwrap();
    assert_eq!(l1.path, LegPath::BusAddr);
    assert_eq!(l1.to, End::Device { bdf: gpu });
    assert_eq!(l1.from, End::Device { bdf: nic1 });
    assert_eq!(l1.provider, Some(gpu));
    assert_eq!(l1.bytes, job.size);
    assert!(!l1.paths.is_empty());
    // Every data packet carries at most the path MTU.
    assert!(r.outcome.packets >= job.size.div_ceil(1024));
    assert!(r.outcome.wire_bytes > job.size);
}

#[test]
fn a_remote_read_comes_from_gpu_memory_through_the_host_bridge_with_and_without_an_iommu() {
    for iommu in [IommuMode::Off, IommuMode::Translated] {
        for mr in [MrKind::Dynamic, MrKind::Pinned] {
            let p = Pair::new("dual-xeon", iommu);
            let mut job = RdmaJob::new(
                RdmaOp::Read,
                p.side(0, "nic0", None),
                p.side(1, "nic0", Some("gpu2")),
                2 * MIB,
            );
            job.mr = mr;
            let r = run_rdma(&p.hosts(), &p.wire("nic0", 9000), &job).unwrap();
            r.check.as_ref().unwrap();
            r.teardown.as_ref().unwrap();
            assert_eq!(r.path_mtu, 4096);
            let gpu = p.dev(1, "gpu2");
            // The responder's NIC reads the GPU through the host bridges
            // (another stack of the socket: whitelisted Intel root ports).
            let l1 = r.outcome.io.legs.iter().find(|l| l.machine == 1).unwrap();
            assert_eq!(l1.path, LegPath::ThruHostBridge, "{iommu:?} {mr:?}");
            assert_eq!(l1.from, End::Device { bdf: gpu });
            let w = r
                .outcome
                .io
                .legs
                .iter()
                .find(|l| l.path == LegPath::Wire)
                .unwrap();
            assert_eq!(
                (w.machine, w.peer_machine),
                (1, Some(0)),
                "responses flow back"
            );
            let l0 = r.outcome.io.legs.iter().find(|l| l.machine == 0).unwrap();
            assert_eq!(l0.path, LegPath::HostMemory);
            assert!(l0.routes.iter().all(|r| r.through_root_complex()));
            // Nothing stays mapped in the NICs' IOMMU domains.
            for m in 0..2 {
                let nic = p.dev(m, "nic0");
                assert_eq!(p.sims[m].mapper().mapped_pages(nic), 0, "{iommu:?}");
            }
        }
    }
}

#[test]
fn registration_is_refused_where_the_nic_cannot_reach_the_gpu() {
    let sim = machine("workstation", IommuMode::Off);
    let dm = DeviceMemory::new();
    let (nic, gpu) = (sim.device("nic").unwrap(), sim.device("gpu").unwrap());
    let p = dm.provider(&sim, gpu).unwrap();
    let buf = DmaBuf::export(sim.mapper(), &p, MIB, true).unwrap();
    let n = RdmaNic::new(&sim, 0, nic).unwrap();
    for kind in [MrKind::Dynamic, MrKind::Pinned] {
        let e = n
            .reg_dmabuf_mr(&buf, 0, MIB, 0x1000_0000, Access::ALL, kind)
            .unwrap_err();
        let RdmaError::Registration { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(matches!(source, DmaBufError::NotSupported { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&nic.to_string()) && msg.contains(&gpu.to_string()),
            "{msg}"
        );
        assert!(msg.contains("cannot reach"), "{msg}");
        assert_eq!(e.errno(), "EINVAL");
    }
    // Nothing is left behind by the refusals.
    assert_eq!(n.mr_count(), 0);
    assert_eq!((buf.attachments(), buf.mappings(), buf.pins()), (0, 0, 0));
    // A function that is not a network controller is no RDMA NIC.
    let e = RdmaNic::new(&sim, 0, gpu).unwrap_err();
    assert!(e.to_string().contains("not an RDMA NIC"), "{e}");
    // The same job through the runner's entry point fails the same way.
    let d = DeviceMemory::new();
    let sims = [
        machine("workstation", IommuMode::Off),
        machine("workstation", IommuMode::Off),
    ];
    let hosts = [
        Host {
            sim: &sims[0],
            devmem: &dm,
        },
        Host {
            sim: &sims[1],
            devmem: &d,
        },
    ];
    let wire = Wire {
        a: Port { machine: 0, nic },
        b: Port { machine: 1, nic },
        bytes_per_sec: 1.25e9,
        mtu: 1500,
        latency_ns: 1000,
    };
    let job = RdmaJob::new(
        RdmaOp::Write,
        Side {
            machine: 0,
            nic,
            memory: Memory::Host,
        },
        Side {
            machine: 1,
            nic,
            memory: Memory::Device(gpu),
        },
        MIB,
    );
    let e = run_rdma(&hosts, &wire, &job).unwrap_err();
    assert!(matches!(e, RdmaError::Registration { .. }), "{e}");
}

#[test]
fn importers_that_cannot_be_revoked_or_refuse_p2p_are_turned_away() {
    let sim = machine("dual-xeon", IommuMode::Off);
    let dm = DeviceMemory::new();
    let (nic, gpu) = (sim.device("nic0").unwrap(), sim.device("gpu0").unwrap());
    let buf = DmaBuf::export(sim.mapper(), &dm.provider(&sim, gpu).unwrap(), MIB, false).unwrap();
    use peerdma_consumers::rdma::ImporterOps;
    let e = buf.attach(nic, true, ImporterOps::Static).unwrap_err();
    assert!(matches!(e, DmaBufError::NotRevocable { .. }), "{e}");
    assert_eq!(e.errno(), "EOPNOTSUPP");
    // Not pinnable: a pinned MR is refused, a dynamic one works.
    let n = RdmaNic::new(&sim, 0, nic).unwrap();
    let e = n
        .reg_dmabuf_mr(&buf, 0, MIB, 0, Access::ALL, MrKind::Pinned)
        .unwrap_err();
    assert!(e.to_string().contains("does not allow pinning"), "{e}");
    let mr = n
        .reg_dmabuf_mr(&buf, 4096, MIB - 4096, 0, Access::ALL, MrKind::Dynamic)
        .unwrap();
    assert_eq!(buf.attachments(), 1);
    assert_eq!(buf.mappings(), 1);
    // Out of the buffer: refused before anything is attached.
    let e = n
        .reg_dmabuf_mr(&buf, 4096, MIB, 0, Access::ALL, MrKind::Dynamic)
        .unwrap_err();
    assert!(e.to_string().starts_with("EINVAL"), "{e}");
    drop(mr);
    assert_eq!((buf.attachments(), buf.mappings(), n.mr_count()), (0, 0, 0));
}

#[test]
fn gpudirect_rdma_from_gpu_to_gpu_shows_every_leg() {
    let p = Pair::new("dual-xeon", IommuMode::Off);
    let r = gpudirect(
        &p.hosts(),
        &p.wire("nic0", 4200),
        p.side(0, "nic0", Some("gpu2")),
        p.side(1, "nic0", Some("gpu1")),
        5 * MIB,
        MrKind::Pinned,
    )
    .unwrap();
    r.check.as_ref().unwrap();
    r.teardown.as_ref().unwrap();
    let legs = &r.outcome.io.legs;
    let (g0, n0) = (p.dev(0, "gpu2"), p.dev(0, "nic0"));
    let (g1, n1) = (p.dev(1, "gpu1"), p.dev(1, "nic0"));
    let find = |m: usize, path: LegPath| {
        legs.iter()
            .find(|l| l.machine == m && l.path == path)
            .unwrap_or_else(|| panic!("no {path:?} leg on machine {m}: {legs:#?}"))
    };
    let a = find(0, LegPath::ThruHostBridge);
    assert_eq!(
        (a.from, a.to),
        (End::Device { bdf: g0 }, End::Device { bdf: n0 })
    );
    let w = find(0, LegPath::Wire);
    assert_eq!(w.peer_machine, Some(1));
    let b = find(1, LegPath::BusAddr);
    assert_eq!(
        (b.from, b.to),
        (End::Device { bdf: n1 }, End::Device { bdf: g1 })
    );
    for l in [a, w, b] {
        assert_eq!(l.bytes, 5 * MIB);
    }
    assert_eq!(legs.len(), 3, "{legs:#?}");
    // Host memory is not a GPUDirect side.
    let e = gpudirect(
        &p.hosts(),
        &p.wire("nic0", 4200),
        p.side(0, "nic0", None),
        p.side(1, "nic0", Some("gpu1")),
        MIB,
        MrKind::Pinned,
    )
    .unwrap_err();
    assert!(e.to_string().contains("GPUDirect"), "{e}");
}

#[test]
fn a_dynamic_mr_remaps_after_the_exporter_moves_the_buffer() {
    for to in [Placement::Device, Placement::Host { node: 0 }] {
        let p = Pair::new("dual-xeon", IommuMode::Translated);
        let mut job = RdmaJob::new(
            RdmaOp::Write,
            p.side(0, "nic0", None),
            p.side(1, "nic0", Some("gpu0")),
            4 * MIB,
        );
        // Mid-message: the move lands between two packets of message 1.
        job.migrate = Some(Migration {
            at: MIB + 512 * 1024,
            to,
        });
        let r = run_rdma(&p.hosts(), &p.wire("nic0", 1500), &job).unwrap();
        r.check.as_ref().unwrap();
        r.teardown.as_ref().unwrap();
        assert_eq!((r.moves, r.invalidations, r.remaps), (1, 1, 1), "{to:?}");
        let l1: Vec<_> = r
            .outcome
            .io
            .legs
            .iter()
            .filter(|l| l.machine == 1)
            .collect();
        let bytes: u64 = l1.iter().map(|l| l.bytes).sum();
        assert_eq!(bytes, 4 * MIB);
        match to {
            Placement::Device => assert!(l1.iter().all(|l| l.path == LegPath::BusAddr)),
            // Evicted: the rest of the bytes went to host memory.
            Placement::Host { .. } => {
                let h = l1.iter().find(|l| l.path == LegPath::HostMemory).unwrap();
                assert_eq!(h.bytes, 4 * MIB - (MIB + 512 * 1024));
            }
        }
    }
    // A pinned MR's buffer cannot move: the job fails and says why.
    let p = Pair::new("dual-xeon", IommuMode::Off);
    let mut job = RdmaJob::new(
        RdmaOp::Write,
        p.side(0, "nic0", None),
        p.side(1, "nic0", Some("gpu0")),
        2 * MIB,
    );
    job.mr = MrKind::Pinned;
    job.migrate = Some(Migration {
        at: MIB,
        to: Placement::Device,
    });
    let e = run_rdma(&p.hosts(), &p.wire("nic0", 1500), &job).unwrap_err();
    assert!(e.to_string().contains("EBUSY"), "{e}");
}

/// Set up a connection from machine 0's host memory to a dma-buf MR on
/// machine 1's gpu0 and run `msgs` WRITEs of `len` bytes with the events
/// of each; the result of each message.
struct Rig {
    p: Pair,
    wire: Wire,
}

fn filled(sim: &SimMachine, at: peerdma_mem::PhysAddr, len: u64, seed: u64) {
    let mut b = vec![0u8; len as usize];
    pattern::fill(seed, 0, &mut b);
    sim.cpu_write(at, &b).unwrap();
}

/// Each message of a WRITE sequence against memory left behind: all new
/// (`Some(true)`), all old (`Some(false)`), or a mix (`None`).
fn state(
    sim: &SimMachine,
    at: peerdma_mem::PhysAddr,
    len: u64,
    new: u64,
    old: u64,
) -> Option<bool> {
    if sim
        .memory_pattern_mismatch(at, len, new, 0)
        .unwrap()
        .is_none()
    {
        Some(true)
    } else if sim
        .memory_pattern_mismatch(at, len, old, 0)
        .unwrap()
        .is_none()
    {
        Some(false)
    } else {
        None
    }
}

fn revoke_mid_transfer(kind: MrKind, vfio: bool, iommu: IommuMode) {
    let rig = Rig {
        p: Pair::new("dual-xeon", iommu),
        wire: Wire {
            mtu: 1500,
            ..Pair::new("dual-xeon", iommu).wire("nic0", 1500)
        },
    };
    let p = &rig.p;
    let (s0, s1) = (&p.sims[0], &p.sims[1]);
    let n0 = RdmaNic::new(s0, 0, p.dev(0, "nic0")).unwrap();
    let n1 = RdmaNic::new(s1, 1, p.dev(1, "nic0")).unwrap();
    let gpu = p.dev(1, "gpu0");
    let prov = p.dm[1].provider(s1, gpu).unwrap();
    const MSG: u64 = 256 * 1024;
    const N: u64 = 6;
    let buf = DmaBuf::export(s1.mapper(), &prov, MSG * N, true).unwrap();
    let gpu_at = buf.exported_phys().addr();
    let mr1 = n1
        .reg_dmabuf_mr(&buf, 0, MSG * N, 0x10_0000, Access::ALL, kind)
        .unwrap();
    let host = s0.alloc_host(MSG * N, 0).unwrap();
    let mr0 = n0.reg_host_mr(host.phys(), 0, Access::ALL).unwrap();
    // Message i carries pattern seed 100 + i; the GPU starts with seed 7.
    for i in 0..N {
        let at = host.phys().addr().checked_add(i * MSG).unwrap();
        filled(s0, at, MSG, 100 + i);
        filled(s1, gpu_at.checked_add(i * MSG).unwrap(), MSG, 7 + i * 1000);
    }
    let mut conn = Connection::connect(
        Endpoint { sim: s0, nic: &n0 },
        Endpoint { sim: s1, nic: &n1 },
        &rig.wire,
    )
    .unwrap();
    let mut results = Vec::new();
    for i in 0..N {
        let mut ev = Vec::new();
        if i == 2 {
            ev.push(RdmaEvent {
                machine: 1,
                at: MSG / 2,
                what: if vfio {
                    Inject::Revoke { buf: buf.clone() }
                } else {
                    Inject::Fault(Fault::Revoke {
                        provider: gpu,
                        after: 0,
                    })
                },
            });
        }
        if conn.error().is_some() {
            // A fresh queue pair, so later messages fail on their own
            // merit, not by a flush.
            conn = Connection::connect(
                Endpoint { sim: s0, nic: &n0 },
                Endpoint { sim: s1, nic: &n1 },
                &rig.wire,
            )
            .unwrap();
        }
        let r = conn.write(
            &mr0,
            mr0.iova() + i * MSG,
            mr1.iova() + i * MSG,
            mr1.key(),
            MSG,
            &mut ev,
        );
        results.push(r);
    }
    // Before the revoke: done and all new. At it: done and all new, or an
    // error. After it: errors, and the GPU memory untouched.
    for (i, r) in results.iter().enumerate() {
        let i = i as u64;
        let st = state(
            s1,
            gpu_at.checked_add(i * MSG).unwrap(),
            MSG,
            100 + i,
            7 + i * 1000,
        );
        match r {
            Ok(_) => assert_eq!(st, Some(true), "message {i} reported success with {st:?}"),
            Err(e) => {
                assert!(i >= 2, "message {i} failed before the revoke: {e}");
                assert!(
                    matches!(
                        e,
                        RdmaError::Completion {
                            status: WcStatus::RemAccessErr,
                            ..
                        }
                    ),
                    "{e}"
                );
                if i > 2 {
                    assert_eq!(st, Some(false), "message {i} after the revoke wrote memory");
                }
            }
        }
        if i > 2 {
            assert!(r.is_err(), "message {i} after the revoke succeeded");
        }
    }
    let msg = results[3].as_ref().unwrap_err().to_string();
    assert!(msg.contains("revoked"), "{msg}");
    // The revoke finished, and everything was given back.
    if !vfio {
        let outcomes = s1.join_revokes();
        assert_eq!(outcomes.len(), 1);
        outcomes[0].result.as_ref().unwrap();
        assert_eq!(prov.state(), ProviderState::Revoked);
    }
    assert!(buf.is_revoked());
    assert_eq!(mr1.invalidations(), 1);
    assert!(!mr1.is_mapped());
    drop(conn);
    drop(mr1);
    drop(mr0);
    assert_eq!((buf.attachments(), buf.mappings(), buf.pins()), (0, 0, 0));
    assert_eq!((n0.mr_count(), n1.mr_count()), (0, 0));
    drop(buf);
    assert_eq!(prov.references(), 0);
    assert_eq!(prov.dma_in_flight(), 0);
    assert_eq!(s1.mapper().mapped_pages(p.dev(1, "nic0")), 0);
}

#[test]
fn revoking_the_gpu_memory_mid_transfer_never_reports_a_mix_as_success() {
    for kind in [MrKind::Dynamic, MrKind::Pinned] {
        for iommu in [IommuMode::Off, IommuMode::Translated] {
            revoke_mid_transfer(kind, false, iommu);
        }
    }
}

#[test]
fn a_vfio_style_dmabuf_revoke_mid_transfer_stops_its_importers() {
    for kind in [MrKind::Dynamic, MrKind::Pinned] {
        revoke_mid_transfer(kind, true, IommuMode::Off);
    }
}

#[test]
fn nic_and_gpu_faults_mid_operation_fail_with_the_fault_named() {
    type Case = (
        &'static str,
        usize,
        &'static str,
        fn(Bdf) -> Fault,
        WcStatus,
    );
    let cases: Vec<Case> = vec![
        (
            "responder NIC removed",
            1,
            "nic0",
            |d| Fault::Remove {
                device: d,
                after: 0,
            },
            WcStatus::RemOpErr,
        ),
        (
            "responder GPU removed",
            1,
            "gpu0",
            |d| Fault::Remove {
                device: d,
                after: 0,
            },
            WcStatus::RemOpErr,
        ),
        (
            "requester NIC link down",
            0,
            "nic0",
            |d| Fault::LinkDown { below: d, after: 0 },
            WcStatus::LocQpOpErr,
        ),
        (
            "requester GPU link down",
            0,
            "gpu1",
            |d| Fault::LinkDown { below: d, after: 0 },
            WcStatus::LocQpOpErr,
        ),
    ];
    for (what, m, dev, f, status) in cases {
        for op in [RdmaOp::Write, RdmaOp::Read] {
            let p = Pair::new("dual-xeon", IommuMode::Off);
            let mut job = RdmaJob::new(
                op,
                p.side(0, "nic0", Some("gpu1")),
                p.side(1, "nic0", Some("gpu0")),
                2 * MIB,
            );
            let d = p.dev(m, dev);
            job.fault = Some(JobFault {
                machine: m,
                at: MIB + 3000,
                fault: f(d),
            });
            let e = run_rdma(&p.hosts(), &p.wire("nic0", 1500), &job).unwrap_err();
            let RdmaError::Completion { status: s, at, .. } = &e else {
                panic!("{what}: {e}")
            };
            // A fault on the side that places the data: same status by side.
            let expect = match (op, m) {
                (RdmaOp::Read, 0) => WcStatus::LocQpOpErr,
                (RdmaOp::Read, 1) => WcStatus::RemOpErr,
                _ => status,
            };
            assert_eq!(*s, expect, "{what} {op:?}: {e}");
            // Byte 3000 of the second message is in its third packet.
            assert_eq!(*at, 2048, "{what} {op:?}: failed at {at}");
            assert!(e.to_string().contains(&d.to_string()), "{what} {op:?}: {e}");
        }
    }
}

#[test]
fn a_queue_pair_in_error_flushes_later_work() {
    let p = Pair::new("dual-xeon", IommuMode::Off);
    let (s0, s1) = (&p.sims[0], &p.sims[1]);
    let n0 = RdmaNic::new(s0, 0, p.dev(0, "nic0")).unwrap();
    let n1 = RdmaNic::new(s1, 1, p.dev(1, "nic0")).unwrap();
    let h0 = s0.alloc_host(MIB, 0).unwrap();
    let h1 = s1.alloc_host(MIB, 0).unwrap();
    let mr0 = n0.reg_host_mr(h0.phys(), 0, Access::ALL).unwrap();
    let ro = Access {
        remote_write: false,
        ..Access::ALL
    };
    let mr1 = n1.reg_host_mr(h1.phys(), 0, ro).unwrap();
    let wire = p.wire("nic0", 1500);
    let mut c = Connection::connect(
        Endpoint { sim: s0, nic: &n0 },
        Endpoint { sim: s1, nic: &n1 },
        &wire,
    )
    .unwrap();
    let e = c
        .write(
            &mr0,
            mr0.iova(),
            mr1.iova(),
            mr1.key(),
            4096,
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("does not allow remote write"), "{e}");
    // Reads are allowed, but the queue pair is in error now.
    let e = c
        .read(
            &mr0,
            mr0.iova(),
            mr1.iova(),
            mr1.key(),
            4096,
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            RdmaError::Completion {
                status: WcStatus::WrFlushErr,
                ..
            }
        ),
        "{e}"
    );
    // A bad key and a range past the MR are access errors too.
    let mut c = Connection::connect(
        Endpoint { sim: s0, nic: &n0 },
        Endpoint { sim: s1, nic: &n1 },
        &wire,
    )
    .unwrap();
    let e = c
        .read(&mr0, mr0.iova(), mr1.iova(), 0xbad, 4096, &mut Vec::new())
        .unwrap_err();
    assert!(e.to_string().contains("no MR with R_Key 0xbad"), "{e}");
    let mut c = Connection::connect(
        Endpoint { sim: s0, nic: &n0 },
        Endpoint { sim: s1, nic: &n1 },
        &wire,
    )
    .unwrap();
    let e = c
        .read(
            &mr0,
            mr0.iova(),
            mr1.iova() + MIB - 100,
            mr1.key(),
            4096,
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("outside MR"), "{e}");
    // A wire that does not join the two NICs.
    let other = Wire {
        b: Port {
            machine: 1,
            nic: p.dev(1, "nic1"),
        },
        ..wire
    };
    let e = Connection::connect(
        Endpoint { sim: s0, nic: &n0 },
        Endpoint { sim: s1, nic: &n1 },
        &other,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("the wire joins"), "{e}");
}
