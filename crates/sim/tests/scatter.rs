//! One DMA of many pieces — a NIC scattering a burst of packets into the
//! buffers it was handed — moves the bytes, takes the routes and crosses
//! the links that one DMA per piece would, whatever the IOMMU does; faults
//! still fire inside it; routes follow ACS changes made between DMAs; and
//! pattern data can be written where it lives.

use peerdma_dma::{BouncePolicy, DmaSgl, IommuMode};
use peerdma_mem::{Address, Bdf, Direction, DmaAddr, PhysAddr};
use peerdma_pci::Source;
use peerdma_sim::{
    pattern, AccessError, DmaError, Fault, Local, LocalMut, PathBytes, Route, SimConfig,
    SimMachine, Transfer,
};

const MODES: [IommuMode; 3] = [
    IommuMode::Off,
    IommuMode::Passthrough,
    IommuMode::Translated,
];

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

/// The memories a NIC scatters into on dual-xeon: host memory, the CMB
/// below its own switch (by bus address) and the CMB below another host
/// bridge (through the root complex); each mapped for the NIC, and where
/// each lives.
struct Targets {
    nic: Bdf,
    lists: Vec<DmaSgl>,
    phys: Vec<PhysAddr>,
    _host: peerdma_sim::HostBuffer,
    _cmbs: Vec<peerdma_p2p::Allocation>,
}

const LEN: u64 = 1 << 20;

fn targets(m: &SimMachine) -> Targets {
    let nic = m.device("nic0").unwrap();
    let host = m.alloc_host(LEN, 0).unwrap();
    let cmbs: Vec<_> = ["nvme0", "nvme1"]
        .iter()
        .map(|d| {
            m.provider(m.device(d).unwrap())
                .unwrap()
                .alloc(LEN)
                .unwrap()
        })
        .collect();
    let mut vecs = vec![host.phys()];
    vecs.extend(cmbs.iter().map(|c| c.phys()));
    let lists = vecs
        .iter()
        .map(|v| {
            m.map(nic, &[*v], Direction::Bidirectional, BouncePolicy::Forbid)
                .unwrap()
        })
        .collect();
    Targets {
        nic,
        lists,
        phys: vecs.iter().map(|v| v.addr()).collect(),
        _host: host,
        _cmbs: cmbs,
    }
}

/// The DMA address of byte `off` of target `t`'s list.
fn at(t: &Targets, which: usize, off: u64) -> DmaAddr {
    let mut o = off;
    for e in t.lists[which].entries() {
        if o < e.len {
            return e.addr.checked_add(o).unwrap();
        }
        o -= e.len;
    }
    panic!("offset {off} past the list");
}

/// Pieces that hop between the three memories, of sizes from 1 byte to
/// 9000, some across IOMMU pages, none overlapping.
fn pieces(t: &Targets) -> Vec<(usize, u64, u64)> {
    let sizes = [1460u64, 54, 9000, 1, 4096, 1472, 333, 8192];
    let mut next = [0u64; 3];
    let mut out = Vec::new();
    for i in 0..60 {
        let which = i % 3;
        let len = sizes[i % sizes.len()];
        let off = next[which] + (i as u64 * 37) % 200;
        next[which] = off + len;
        assert!(next[which] <= LEN);
        out.push((which, off, len));
    }
    let _ = t;
    out
}

fn totals(paths: &[PathBytes]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = paths
        .iter()
        .map(|p| {
            let hops: Vec<String> = p
                .hops
                .iter()
                .map(|h| format!("{}{:?}", h.link.index(), h.dir))
                .collect();
            (hops.join(" "), p.bytes)
        })
        .collect();
    v.sort();
    let mut merged: Vec<(String, u64)> = Vec::new();
    for (h, b) in v {
        match merged.last_mut() {
            Some((lh, lb)) if *lh == h => *lb += b,
            _ => merged.push((h, b)),
        }
    }
    merged
}

#[test]
fn many_pieces_move_what_one_dma_per_piece_moves() {
    for iommu in MODES {
        let (a, b) = (machine("dual-xeon", iommu), machine("dual-xeon", iommu));
        let (ta, tb) = (targets(&a), targets(&b));
        let ps = pieces(&ta);
        let total: u64 = ps.iter().map(|p| p.2).sum();
        let mut data = vec![0u8; total as usize];
        pattern::fill(5, 0, &mut data);
        let entries: Vec<(DmaAddr, u64)> = ps.iter().map(|&(w, o, l)| (at(&ta, w, o), l)).collect();
        let many = a
            .dma_to_many(ta.nic, &entries, Local::Bytes(&data))
            .unwrap();
        let mut one_by_one: Vec<Transfer> = Vec::new();
        let mut pos = 0usize;
        for &(w, o, l) in &ps {
            let piece = &data[pos..pos + l as usize];
            one_by_one.push(
                b.dma_to(tb.nic, at(&tb, w, o), l, Local::Bytes(piece))
                    .unwrap(),
            );
            pos += l as usize;
        }
        assert_eq!(many.bytes, total, "{iommu:?}");
        assert_eq!(many.unsupported_bytes, 0, "{iommu:?}");
        let mut routes_b: Vec<Route> = Vec::new();
        let mut paths_b: Vec<PathBytes> = Vec::new();
        for t in &one_by_one {
            for r in &t.routes {
                if !routes_b.contains(r) {
                    routes_b.push(*r);
                }
            }
            paths_b.extend(t.paths.iter().cloned());
        }
        assert_eq!(
            many.routes, routes_b,
            "{iommu:?}: the same routes, in order"
        );
        assert!(
            many.routes
                .iter()
                .any(|r| matches!(r, Route::Switch { .. }))
                && many
                    .routes
                    .iter()
                    .any(|r| matches!(r, Route::HostMemory { .. }))
                && many
                    .routes
                    .iter()
                    .any(|r| matches!(r, Route::RootComplexPeer { .. })),
            "{iommu:?}: all three kinds of target: {:?}",
            many.routes
        );
        assert_eq!(
            totals(&many.paths),
            totals(&paths_b),
            "{iommu:?}: the same bytes on the same links"
        );
        // The same bytes in the same places, on both machines.
        for w in 0..3 {
            let mut ma = vec![0u8; LEN as usize];
            let mut mb = vec![0u8; LEN as usize];
            a.cpu_read(ta.phys[w], &mut ma).unwrap();
            b.cpu_read(tb.phys[w], &mut mb).unwrap();
            assert!(ma == mb, "{iommu:?}: memory {w} differs");
        }
        // And read back in one DMA of many pieces, in order.
        let mut back = vec![0u8; total as usize];
        let r = a
            .dma_from_many(ta.nic, &entries, LocalMut::Bytes(&mut back))
            .unwrap();
        assert_eq!(r.bytes, total);
        assert_eq!(pattern::first_mismatch(5, 0, &back), None, "{iommu:?}");
    }
}

#[test]
fn a_fault_inside_a_list_stops_it_at_that_byte() {
    let m = machine("dual-xeon", IommuMode::Off);
    let t = targets(&m);
    let nvme0 = m.device("nvme0").unwrap();
    // 256 packets of 1460 bytes, 1472 apart, into the CMB below the switch.
    let entries: Vec<(DmaAddr, u64)> = (0..256u64).map(|i| (at(&t, 1, i * 1472), 1460)).collect();
    let data = vec![0x5au8; 256 * 1460];
    // A first list makes the route known; the fault comes with the next.
    m.dma_to_many(t.nic, &entries[..4], Local::Bytes(&data[..4 * 1460]))
        .unwrap();
    m.cpu_write(t.phys[1], &vec![0u8; LEN as usize]).unwrap();
    m.inject(Fault::LinkDown {
        below: nvme0,
        after: 100 * 1460 + 5,
    })
    .unwrap();
    let err = m
        .dma_to_many(t.nic, &entries, Local::Bytes(&data))
        .unwrap_err();
    assert!(
        matches!(err, DmaError::LinkDown { below, done } if below == nvme0 && done == 100 * 1460 + 5),
        "{err:?}"
    );
    let mut back = vec![0u8; LEN as usize];
    m.cpu_read(t.phys[1], &mut back).unwrap();
    for i in 0..256usize {
        let p = &back[i * 1472..i * 1472 + 1460];
        if i < 100 {
            assert!(
                p.iter().all(|&x| x == 0x5a),
                "packet {i} moved before the fault"
            );
        } else if i == 100 {
            // The fault fires at its byte: five bytes of this packet landed.
            assert!(p[..5].iter().all(|&x| x == 0x5a), "packet 100's head");
            assert!(p[5..].iter().all(|&x| x == 0), "packet 100 past the fault");
        } else {
            assert!(p.iter().all(|&x| x == 0), "packet {i} is after the fault");
        }
    }
    m.heal();
    m.dma_to_many(t.nic, &entries, Local::Bytes(&data)).unwrap();
}

#[test]
fn routes_follow_an_acs_change_between_lists() {
    let m = machine("dual-xeon", IommuMode::Off);
    let t = targets(&m);
    let entries: Vec<(DmaAddr, u64)> = (0..32u64).map(|i| (at(&t, 1, i * 4096), 1460)).collect();
    let data = vec![7u8; 32 * 1460];
    let before = m.dma_to_many(t.nic, &entries, Local::Bytes(&data)).unwrap();
    assert!(
        matches!(before.routes[..], [Route::Switch { .. }]),
        "{:?}",
        before.routes
    );
    // setpci: the NIC's downstream port now redirects peer requests up.
    m.set_acs_ctrl(m.device("sw0-p12").unwrap(), 0x1d).unwrap();
    let after = m.dma_to_many(t.nic, &entries, Local::Bytes(&data)).unwrap();
    assert!(
        matches!(after.routes[..], [Route::RootComplexPeer { .. }]),
        "{:?}",
        after.routes
    );
    let mut back = vec![0u8; 1460];
    m.cpu_read(t.phys[1].checked_add(31 * 4096).unwrap(), &mut back)
        .unwrap();
    assert!(back.iter().all(|&x| x == 7));
}

#[test]
fn unsupported_pieces_are_each_answered_and_logged() {
    // The workstation's root complex does not forward peer traffic.
    let m = machine("workstation", IommuMode::Off);
    let nic = m.device("nic").unwrap();
    let gpu = m.device("gpu").unwrap();
    let bar = m
        .topology()
        .function(m.topology().find(gpu).unwrap())
        .bars
        .iter()
        .filter(|b| !b.io)
        .max_by_key(|b| b.phys.len())
        .unwrap()
        .phys
        .start();
    let entries: Vec<(DmaAddr, u64)> = (0..8u64)
        .map(|i| (DmaAddr::direct(bar.checked_add(i * 4096).unwrap()), 100))
        .collect();
    let t = m
        .dma_to_many(nic, &entries, Local::Bytes(&[1u8; 800]))
        .unwrap();
    assert_eq!(t.unsupported_bytes, 800);
    assert_eq!(m.unsupported_requests().len(), 8, "one per piece");
    let mut back = [9u8; 100];
    m.cpu_read(bar, &mut back).unwrap();
    assert_eq!(back, [0u8; 100], "the writes were dropped");
}

#[test]
fn lists_are_checked() {
    let m = machine("dual-xeon", IommuMode::Off);
    let t = targets(&m);
    let a = at(&t, 0, 0);
    let err = m.dma_to_many(t.nic, &[], Local::Bytes(&[])).unwrap_err();
    assert!(matches!(err, DmaError::Empty { .. }), "{err}");
    let err = m
        .dma_to_many(t.nic, &[(a, 4), (a, 0)], Local::Bytes(&[0; 4]))
        .unwrap_err();
    assert!(matches!(err, DmaError::Empty { .. }), "{err}");
    let err = m
        .dma_from_many(t.nic, &[(a, 4), (a, 4)], LocalMut::Bytes(&mut [0; 4]))
        .unwrap_err();
    assert!(
        matches!(err, DmaError::LengthMismatch { buffer: 4, list: 8 }),
        "{err}"
    );
    let err = m
        .dma_to_many(
            t.nic,
            &[(DmaAddr::from_descriptor(u64::MAX - 1), 4)],
            Local::Bytes(&[0; 4]),
        )
        .unwrap_err();
    assert!(matches!(err, DmaError::AddressOverflow { .. }), "{err}");
}

fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let mut b = [0u8];
    pattern::fill(seed, offset, &mut b);
    b[0]
}

#[test]
fn pattern_data_is_written_where_it_lives() {
    let m = machine("dual-xeon", IommuMode::Off);
    let host = m.alloc_host(3 << 20, 0).unwrap();
    let cmb = m
        .provider(m.device("nvme0").unwrap())
        .unwrap()
        .alloc(1 << 20)
        .unwrap();
    for (addr, len) in [
        (host.phys().addr().checked_add(7).unwrap(), (3 << 20) - 7),
        (cmb.phys_addr(), 1 << 20),
    ] {
        m.fill_memory_pattern(addr, len, 11, 1000).unwrap();
        assert_eq!(
            m.memory_pattern_mismatch(addr, len, 11, 1000).unwrap(),
            None
        );
        let mut back = vec![0u8; len as usize];
        m.cpu_read(addr, &mut back).unwrap();
        assert_eq!(pattern::first_mismatch(11, 1000, &back), None);
        assert_eq!(
            m.memory_pattern_mismatch(addr, len, 11, 1001).unwrap(),
            Some(0),
            "another offset is other data"
        );
    }
    // A BAR full of data: every byte reads as the pattern at its offset in
    // the BAR, by the CPU and by DMA, until written.
    let gpu = m.device("gpu0").unwrap();
    let bar = m
        .topology()
        .function(m.topology().find(gpu).unwrap())
        .bars
        .iter()
        .find(|b| b.index == 1)
        .unwrap()
        .phys;
    m.fill_bar_pattern(gpu, 1, 77).unwrap();
    let at = bar.start().checked_add(5 << 30).unwrap();
    assert_eq!(
        m.memory_pattern_mismatch(at, 3 << 20, 77, 5 << 30).unwrap(),
        None
    );
    m.cpu_write(at, &[1, 2, 3]).unwrap();
    assert_eq!(
        m.memory_pattern_mismatch(at, 8, 77, 5 << 30).unwrap(),
        Some(0)
    );
    assert_eq!(
        m.memory_pattern_mismatch(at.checked_add(3).unwrap(), 1 << 20, 77, (5 << 30) + 3)
            .unwrap(),
        None,
        "the rest of the written chunk keeps the pattern"
    );
    // Many ranges in one call: host memory, the CMB and the BAR.
    let ranges = [
        (host.phys().addr(), 4096u64, 993u64),
        (at.checked_add(8).unwrap(), 5000, (5 << 30) + 8),
        (cmb.phys_addr(), 1 << 20, 1000),
    ];
    m.fill_memory_pattern(host.phys().addr(), 4096, 77, 993)
        .unwrap();
    m.fill_memory_pattern(cmb.phys_addr(), 1 << 20, 77, 1000)
        .unwrap();
    assert_eq!(m.memory_patterns_mismatch(&ranges, 77).unwrap(), None);
    let wrong = pattern_byte(77, 1000 + 12345) ^ 0xff;
    m.cpu_write(cmb.phys_addr().checked_add(12345).unwrap(), &[wrong])
        .unwrap();
    assert_eq!(
        m.memory_patterns_mismatch(&ranges, 77).unwrap(),
        Some((2, 12345)),
        "the third range, at the byte written"
    );
    let err = m
        .memory_patterns_mismatch(&[(PhysAddr::new(u64::MAX - 10), 100, 0)], 77)
        .unwrap_err();
    assert!(matches!(err, AccessError::NoMemory { .. }), "{err}");
    let err = m.fill_bar_pattern(gpu, 2, 1).unwrap_err();
    assert!(matches!(err, AccessError::NoBar { bar: 2, .. }), "{err}");
    assert!(err.to_string().contains("no memory BAR 2"), "{err}");
    let err = m
        .fill_memory_pattern(PhysAddr::new(u64::MAX - 10), 100, 1, 0)
        .unwrap_err();
    assert!(matches!(err, AccessError::NoMemory { .. }), "{err}");
    m.fill_memory_pattern(PhysAddr::new(u64::MAX - 10), 0, 1, 0)
        .unwrap();
}
