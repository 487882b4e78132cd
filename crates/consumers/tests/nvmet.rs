//! The NVMe-oF target with P2P memory between two simulated machines.

use peerdma_consumers::block::Op;
use peerdma_consumers::devmem::DeviceMemory;
use peerdma_consumers::io::{End, LegPath};
use peerdma_consumers::net::{Port, Wire};
use peerdma_consumers::nvme::{NvmeConfig, NvmeDrive};
use peerdma_consumers::nvmet::{choose, run_nvmet, NvmetError, NvmetJob, P2pMem, Staging};
use peerdma_consumers::rdma::job::JobFault;
use peerdma_consumers::rdma::{Host, Memory, RdmaError};
use peerdma_dma::IommuMode;
use peerdma_mem::Bdf;
use peerdma_p2p::{calc_map_type_and_dist, find_many, MapType};
use peerdma_pci::Source;
use peerdma_sim::{Fault, SimConfig, SimMachine};

const MIB: u64 = 1 << 20;

struct Pair {
    sims: [SimMachine; 2],
    dm: [DeviceMemory; 2],
}

fn machine(preset: &str, iommu: IommuMode) -> SimMachine {
    let cfg = SimConfig {
        iommu,
        media_size: 1 << 30,
        ..SimConfig::default()
    };
    SimMachine::new(Source::Preset(preset.into()).load().unwrap(), cfg).unwrap()
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
    fn dev(&self, m: usize, n: &str) -> Bdf {
        self.sims[m].device(n).unwrap()
    }
    fn wire(&self, nic0: &str, nic1: &str) -> Wire {
        Wire {
            a: Port {
                machine: 0,
                nic: self.dev(0, nic0),
            },
            b: Port {
                machine: 1,
                nic: self.dev(1, nic1),
            },
            bytes_per_sec: 12.5e9,
            mtu: 4200,
            latency_ns: 1000,
        }
    }
    fn job(&self, op: Op, tnic: &str, drive: &str, size: u64, p2pmem: P2pMem) -> NvmetJob {
        let hnic = if tnic == "nic" { "nic" } else { "nic0" };
        NvmetJob {
            op,
            host_machine: 0,
            host_nic: self.dev(0, hnic),
            host_memory: Memory::Host,
            target_machine: 1,
            target_nic: self.dev(1, tnic),
            drive: self.dev(1, drive),
            offset: 64 * 1024,
            size,
            io_size: 0,
            p2pmem,
            fault: None,
            seed: 42,
        }
    }
    fn drive(&self, name: &str) -> NvmeDrive {
        NvmeDrive::new(&self.sims[1], self.dev(1, name), NvmeConfig::default()).unwrap()
    }
}

#[test]
fn a_remote_write_stages_in_the_cmb_chosen_like_find_many_and_saves_host_memory() {
    for iommu in [IommuMode::Off, IommuMode::Translated] {
        let p = Pair::new("dual-xeon", iommu);
        let mut d = p.drive("nvme0");
        let job = p.job(Op::Write, "nic0", "nvme0", 2 * MIB, P2pMem::Auto);
        let r = run_nvmet(&p.hosts(), &p.wire("nic0", "nic0"), &mut d, &job).unwrap();
        r.check.as_ref().unwrap();
        r.teardown.as_ref().unwrap();
        let t = p.sims[1].topology();
        let fm = find_many(
            t,
            &[t.find(job.target_nic).unwrap(), t.find(job.drive).unwrap()],
        )
        .unwrap();
        let cmb = t.function(fm.providers[0]).bdf;
        assert_eq!(r.p2p_provider, Some(cmb));
        assert_eq!(cmb, job.drive, "the drive's own CMB is closest to both");
        assert_eq!((r.staged_p2p_bytes, r.staged_host_bytes), (2 * MIB, 0));
        assert_eq!(r.host_memory_bytes_saved, 2 * MIB);
        assert_eq!(r.dram_traffic_saved, 4 * MIB);
        assert_eq!(r.commands, 16);
        let legs = &r.outcome.io.legs;
        // Machine 0: the host's NIC reads its buffer; the wire; machine 1:
        // the target's NIC writes the CMB by bus address, then the drive
        // writes its media from its own CMB.
        assert!(legs
            .iter()
            .any(|l| l.machine == 0 && l.path == LegPath::HostMemory));
        let w = legs.iter().find(|l| l.path == LegPath::Wire).unwrap();
        assert_eq!((w.machine, w.peer_machine, w.bytes), (0, Some(1), 2 * MIB));
        let nic_leg = legs
            .iter()
            .find(|l| {
                l.machine == 1
                    && l.from
                        == End::Device {
                            bdf: job.target_nic,
                        }
            })
            .unwrap();
        assert_eq!(nic_leg.path, LegPath::BusAddr);
        assert_eq!(nic_leg.to, End::Device { bdf: cmb });
        let drive_leg = legs
            .iter()
            .find(|l| {
                l.machine == 1
                    && l.to == End::Device { bdf: job.drive }
                    && l.from == End::Device { bdf: cmb }
            })
            .unwrap();
        assert_eq!(drive_leg.bytes, 2 * MIB);
        assert!(!legs
            .iter()
            .any(|l| l.machine == 1 && matches!(l.to, End::Host { .. })));
        assert_eq!(p.sims[1].provider(cmb).unwrap().references(), 0);
    }
}

#[test]
fn without_p2pmem_the_same_write_stages_in_host_memory() {
    let p = Pair::new("dual-xeon", IommuMode::Off);
    let mut d = p.drive("nvme0");
    let job = p.job(Op::Write, "nic0", "nvme0", 2 * MIB, P2pMem::Off);
    let r = run_nvmet(&p.hosts(), &p.wire("nic0", "nic0"), &mut d, &job).unwrap();
    r.check.as_ref().unwrap();
    r.teardown.as_ref().unwrap();
    assert_eq!(r.p2p_provider, None);
    assert_eq!((r.staged_p2p_bytes, r.staged_host_bytes), (0, 2 * MIB));
    assert_eq!(r.host_memory_bytes_saved, 0);
    let legs = &r.outcome.io.legs;
    let into_dram: u64 = legs
        .iter()
        .filter(|l| l.machine == 1 && matches!(l.to, End::Host { .. }))
        .map(|l| l.bytes)
        .sum();
    let out_of_dram: u64 = legs
        .iter()
        .filter(|l| l.machine == 1 && matches!(l.from, End::Host { .. }))
        .map(|l| l.bytes)
        .sum();
    assert_eq!((into_dram, out_of_dram), (2 * MIB, 2 * MIB));
}

#[test]
fn a_remote_read_goes_from_media_through_the_cmb_to_the_host() {
    let p = Pair::new("dual-xeon", IommuMode::Off);
    p.sims[1].fill_media_pattern(p.dev(1, "nvme0"), 77).unwrap();
    let mut d = p.drive("nvme0");
    let job = p.job(Op::Read, "nic0", "nvme0", MIB + 4096, P2pMem::Auto);
    let r = run_nvmet(&p.hosts(), &p.wire("nic0", "nic0"), &mut d, &job).unwrap();
    r.check.as_ref().unwrap();
    r.teardown.as_ref().unwrap();
    assert_eq!(r.staged_p2p_bytes, MIB + 4096);
    let w = r
        .outcome
        .io
        .legs
        .iter()
        .find(|l| l.path == LegPath::Wire)
        .unwrap();
    assert_eq!((w.machine, w.peer_machine), (1, Some(0)));
    let nic_leg = r
        .outcome
        .io
        .legs
        .iter()
        .find(|l| {
            l.machine == 1
                && l.to
                    == End::Device {
                        bdf: job.target_nic,
                    }
        })
        .unwrap();
    assert_eq!(nic_leg.path, LegPath::BusAddr);
}

#[test]
fn through_the_host_bridge_the_legs_follow_the_kernel_verdicts() {
    let p = Pair::new("dual-xeon", IommuMode::Translated);
    let mut d = p.drive("nvme3");
    let job = p.job(Op::Write, "nic1", "nvme3", MIB, P2pMem::Auto);
    let r = run_nvmet(&p.hosts(), &p.wire("nic0", "nic1"), &mut d, &job).unwrap();
    r.check.as_ref().unwrap();
    let cmb = r.p2p_provider.unwrap();
    let t = p.sims[1].topology();
    let verdict =
        calc_map_type_and_dist(t, t.find(cmb).unwrap(), t.find(job.target_nic).unwrap()).map_type;
    assert!(verdict.is_p2p());
    let nic_leg = r
        .outcome
        .io
        .legs
        .iter()
        .find(|l| {
            l.machine == 1
                && l.from
                    == End::Device {
                        bdf: job.target_nic,
                    }
        })
        .unwrap();
    let want = if verdict == MapType::BusAddr {
        LegPath::BusAddr
    } else {
        LegPath::ThruHostBridge
    };
    assert_eq!(nic_leg.path, want);
    assert_eq!(
        want,
        LegPath::ThruHostBridge,
        "nic1 and nvme3 are on different stacks"
    );
}

#[test]
fn where_no_p2p_memory_fits_nvmet_falls_back_as_the_kernel_does() {
    // The workstation has no P2P memory: p2pmem cannot even be enabled.
    let p = Pair::new("workstation", IommuMode::Off);
    let mut d = p.drive("nvme0");
    let mut job = p.job(Op::Write, "nic", "nvme0", MIB, P2pMem::Auto);
    let wire = p.wire("nic", "nic");
    let e = run_nvmet(&p.hosts(), &wire, &mut d, &job).unwrap_err();
    assert!(matches!(e, NvmetError::NsEnable { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("no peer-to-peer memory is available for"),
        "{e}"
    );
    // Off works there, through host memory.
    job.p2pmem = P2pMem::Off;
    let r = run_nvmet(&p.hosts(), &wire, &mut d, &job).unwrap();
    r.check.as_ref().unwrap();
    assert_eq!(r.staged_host_bytes, MIB);
    // A named device that publishes nothing.
    let p = Pair::new("dual-xeon", IommuMode::Off);
    let mut d = p.drive("nvme0");
    let job = p.job(
        Op::Write,
        "nic0",
        "nvme0",
        MIB,
        P2pMem::Device(p.dev(1, "gpu0")),
    );
    let e = run_nvmet(&p.hosts(), &p.wire("nic0", "nic0"), &mut d, &job).unwrap_err();
    assert!(e.to_string().contains("publishes no P2P memory"), "{e}");
    // The named device is used when both reach it.
    let nvme1 = p.dev(1, "nvme1");
    let s = choose(
        &p.sims[1],
        p.dev(1, "nic0"),
        p.dev(1, "nvme0"),
        P2pMem::Device(nvme1),
    )
    .unwrap();
    assert_eq!(s, Staging::P2p { provider: nvme1 });
}

#[test]
fn a_full_cmb_pool_sends_requests_to_host_memory() {
    let p = Pair::new("dual-xeon", IommuMode::Off);
    let cmb = p.sims[1].provider(p.dev(1, "nvme0")).unwrap();
    // Leave less than one request's worth free.
    let hog = cmb.alloc(cmb.available() - 64 * 1024).unwrap();
    let mut d = p.drive("nvme0");
    let job = p.job(Op::Write, "nic0", "nvme0", MIB, P2pMem::Auto);
    let r = run_nvmet(&p.hosts(), &p.wire("nic0", "nic0"), &mut d, &job).unwrap();
    r.check.as_ref().unwrap();
    assert_eq!(r.p2p_provider, Some(cmb.bdf()));
    assert_eq!(r.pool_fallbacks, r.commands);
    assert_eq!((r.staged_p2p_bytes, r.staged_host_bytes), (0, MIB));
    assert!(r.host_reason.as_ref().unwrap().contains("pool full"));
    drop(hog);
    assert_eq!(cmb.references(), 0);
}

#[test]
fn faults_mid_write_fail_the_job_and_name_the_fault() {
    // The target's NIC goes away, the CMB is revoked, the drive is removed.
    for (what, dev) in [("nic", "nic0"), ("cmb", "nvme0"), ("drive", "nvme0")] {
        let p = Pair::new("dual-xeon", IommuMode::Off);
        let mut d = p.drive("nvme0");
        let mut job = p.job(Op::Write, "nic0", "nvme0", MIB, P2pMem::Auto);
        let b = p.dev(1, dev);
        job.fault = Some(JobFault {
            machine: 1,
            at: 300 * 1024,
            fault: match what {
                "nic" => Fault::Remove {
                    device: b,
                    after: 0,
                },
                "cmb" => Fault::Revoke {
                    provider: b,
                    after: 0,
                },
                _ => Fault::LinkDown { below: b, after: 0 },
            },
        });
        // The drive's fault is the drive's own (its DMA); the others the NIC's.
        if what == "drive" {
            job.fault.as_mut().unwrap().fault = Fault::Remove {
                device: b,
                after: 0,
            };
        }
        let e = run_nvmet(&p.hosts(), &p.wire("nic0", "nic0"), &mut d, &job).unwrap_err();
        let msg = e.to_string();
        match what {
            "nic" => {
                assert!(
                    matches!(e, NvmetError::Rdma(RdmaError::Completion { .. })),
                    "{msg}"
                );
                assert!(
                    msg.contains(&b.to_string()) && msg.contains("removed"),
                    "{msg}"
                );
            }
            "cmb" => {
                assert!(msg.contains("revoke"), "{msg}");
                let done = p.sims[1].join_revokes();
                done[0].result.as_ref().unwrap();
            }
            _ => {
                assert!(matches!(e, NvmetError::Io { .. }), "{msg}");
                assert!(msg.contains(&b.to_string()), "{msg}");
            }
        }
        assert_eq!(
            p.sims[1].provider(p.dev(1, "nvme0")).unwrap().references(),
            0,
            "{what}"
        );
    }
}

#[test]
fn the_host_can_write_from_its_gpu_memory() {
    // GPUDirect on both ends: the host's NIC reads GPU memory, the
    // target's NIC writes the CMB.
    let p = Pair::new("dual-xeon", IommuMode::Off);
    let mut d = p.drive("nvme0");
    let mut job = p.job(Op::Write, "nic0", "nvme0", MIB, P2pMem::Auto);
    job.host_memory = Memory::Device(p.dev(0, "gpu0"));
    let r = run_nvmet(&p.hosts(), &p.wire("nic0", "nic0"), &mut d, &job).unwrap();
    r.check.as_ref().unwrap();
    r.teardown.as_ref().unwrap();
    let l0 = r.outcome.io.legs.iter().find(|l| l.machine == 0).unwrap();
    assert_eq!(l0.path, LegPath::BusAddr);
    assert_eq!(
        l0.from,
        End::Device {
            bdf: p.dev(0, "gpu0")
        }
    );
    assert_eq!(r.host_memory_bytes_saved, MIB);
}
