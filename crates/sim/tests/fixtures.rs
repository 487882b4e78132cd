//! The simulated machine on every kernel-oracle fixture (machines the real
//! kernel booted on, captured by `cargo xtask capture`), held against the
//! kernel's own verdicts for that machine (`tests/fixtures/kernel/*/verdicts`,
//! read with `peerdma_p2p::oracle`), not against peerdma's rule. For every
//! P2P provider and every other drive, in both IOMMU modes:
//!
//! - the pair maps by the kernel's map type (by bus address, through the
//!   host bridge, or bounced through host memory where the kernel says
//!   not supported), and with bouncing forbidden it is refused exactly where
//!   the kernel says not supported;
//! - the fabric carries the DMA the way that map type means: below a common
//!   switch for `bus_addr`, up through the root complex and down to the peer
//!   for `thru_host_bridge`, only to and from host memory when bounced; never
//!   an Unsupported Request;
//! - the bytes go into the provider's memory and back out exactly.

use peerdma_dma::{BouncePolicy, IommuMode, PathTaken};
use peerdma_mem::{Bdf, Direction};
use peerdma_p2p::oracle::{parse_verdicts, KernelVerdicts};
use peerdma_p2p::MapType;
use peerdma_pci::{Source, Topology};
use peerdma_sim::{Route, SimConfig, SimMachine, Transfer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/kernel");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("snapshot.json").is_file())
        .collect();
    out.sort();
    assert!(
        !out.is_empty(),
        "no kernel fixtures under {}",
        dir.display()
    );
    out
}

/// A fixture's machine (the snapshot peerdma took in the guest) and the
/// kernel's verdicts file from the same boot.
fn fixture(fx: &Path) -> (Topology, KernelVerdicts) {
    let topo = Source::Snapshot(fx.join("snapshot.json"))
        .load()
        .unwrap_or_else(|e| panic!("{}: {e}", fx.display()));
    let path = fx.join("verdicts");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let k = parse_verdicts(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
    (topo, k)
}

/// What the simulator did with one pair, held against the kernel's map type.
fn route_problem(kernel: MapType, mapped: PathTaken, tr: &Transfer) -> Option<String> {
    let want = match kernel {
        MapType::BusAddr => PathTaken::BusAddr,
        MapType::ThruHostBridge => PathTaken::ThruHostBridge,
        _ => PathTaken::Bounced,
    };
    if mapped != want {
        return Some(format!(
            "mapped {mapped:?}, the kernel's verdict means {want:?}"
        ));
    }
    if tr.unsupported_bytes != 0 {
        return Some(format!(
            "{} bytes answered with Unsupported Request ({:?})",
            tr.unsupported_bytes, tr.routes
        ));
    }
    let fits = |r: &Route| match kernel {
        MapType::BusAddr => matches!(r, Route::Switch { .. }),
        MapType::ThruHostBridge => matches!(r, Route::RootComplexPeer { .. }),
        _ => matches!(r, Route::HostMemory { .. }),
    };
    if tr.routes.is_empty() || !tr.routes.iter().all(fits) {
        return Some(format!(
            "the fabric routed it {:?}, not as {} means",
            tr.routes,
            kernel.as_str()
        ));
    }
    None
}

/// Every provider and every other drive of one machine, in both IOMMU
/// modes, against the kernel's verdicts: the problems, and how many pairs
/// of each kernel map type were checked.
fn check(
    label: &str,
    topo: &Topology,
    k: &KernelVerdicts,
) -> (Vec<String>, BTreeMap<&'static str, usize>) {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    for mode in [IommuMode::Off, IommuMode::Translated] {
        let m = SimMachine::new(
            topo.clone(),
            SimConfig {
                iommu: mode,
                ..SimConfig::default()
            },
        )
        .unwrap();
        let drives: Vec<Bdf> = m
            .topology()
            .functions()
            .iter()
            .filter(|f| f.class == 0x010802)
            .map(|f| f.bdf)
            .collect();
        for prov in m.providers() {
            for &client in drives.iter().filter(|&&c| c != prov.bdf()) {
                let at = format!(
                    "{label} ({mode:?}): provider {} client {client}",
                    prov.bdf()
                );
                let Some((kernel, _)) = k.verdict(prov.bdf(), client) else {
                    problems.push(format!("{at}: no kernel verdict"));
                    continue;
                };
                *seen.entry(kernel.as_str()).or_default() += 1;
                let len = 256 << 10;
                let data: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(13) ^ client.bus())
                    .collect();
                m.media_write(client, 0, &data).unwrap();
                let a = prov.alloc(len as u64).unwrap();

                // Refused without bouncing exactly where the kernel says so.
                let forbid = m.map(
                    client,
                    &[a.phys()],
                    Direction::FromDevice,
                    BouncePolicy::Forbid,
                );
                match (&forbid, kernel.is_p2p()) {
                    (Ok(_), true) | (Err(_), false) => {}
                    (Ok(s), false) => problems.push(format!(
                        "{at}: kernel {}, but mapped {:?} with bouncing forbidden",
                        kernel.as_str(),
                        s.path()
                    )),
                    (Err(e), true) => problems.push(format!(
                        "{at}: kernel {}, but refused with bouncing forbidden: {e}",
                        kernel.as_str()
                    )),
                }
                drop(forbid);

                // Into the provider's memory and back out, by the kernel's path.
                let sgl = m
                    .map(
                        client,
                        &[a.phys()],
                        Direction::FromDevice,
                        BouncePolicy::Bounce,
                    )
                    .unwrap();
                let tr = m.media_to_memory(client, 0, &sgl).unwrap();
                if let Some(p) = route_problem(kernel, sgl.path(), &tr) {
                    problems.push(format!(
                        "{at}: drive -> P2P memory: kernel {}: {p}",
                        kernel.as_str()
                    ));
                }
                sgl.unmap().unwrap();
                let sgl = m
                    .map(
                        client,
                        &[a.phys()],
                        Direction::ToDevice,
                        BouncePolicy::Bounce,
                    )
                    .unwrap();
                let tr = m.memory_to_media(client, &sgl, 1 << 20).unwrap();
                if let Some(p) = route_problem(kernel, sgl.path(), &tr) {
                    problems.push(format!(
                        "{at}: P2P memory -> drive: kernel {}: {p}",
                        kernel.as_str()
                    ));
                }
                drop(sgl);
                let mut back = vec![0u8; len];
                m.media_read(client, 1 << 20, &mut back).unwrap();
                if back != data {
                    let at_byte = back.iter().zip(&data).position(|(a, b)| a != b);
                    problems.push(format!("{at}: bytes differ from offset {at_byte:?}"));
                }
            }
        }
    }
    (problems, seen)
}

#[test]
fn the_simulator_follows_the_kernels_verdict_on_every_fixture() {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    for fx in fixtures() {
        let (topo, k) = fixture(&fx);
        let name = fx.file_name().unwrap().to_string_lossy().into_owned();
        let (p, s) = check(&name, &topo, &k);
        problems.extend(p);
        for (m, n) in s {
            *seen.entry(m).or_default() += n;
        }
    }
    assert!(
        problems.is_empty(),
        "the simulator does not follow the kernel ({} problem(s)):\n{}",
        problems.len(),
        problems.join("\n")
    );
    // Each of the kernel's answers was exercised, not only one.
    for m in [
        MapType::BusAddr,
        MapType::ThruHostBridge,
        MapType::NotSupported,
    ] {
        let n = seen.get(m.as_str()).copied().unwrap_or(0);
        assert!(n >= 4, "{}: {n} pair(s) checked: {seen:?}", m.as_str());
    }
}

#[test]
fn a_kernel_verdict_the_simulator_does_not_follow_is_caught() {
    // The kernel's file decides: doctor one pair of a real fixture and the
    // same simulator run must be called out, for that pair.
    let fx = fixtures()
        .into_iter()
        .find(|f| f.ends_with("iommu-switch"))
        .expect("the iommu-switch fixture");
    let (topo, mut k) = fixture(&fx);
    let (problems, _) = check("real", &topo, &k);
    assert!(problems.is_empty(), "{problems:#?}");
    let (p, c): (Bdf, Bdf) = (
        "0000:03:00.0".parse().unwrap(),
        "0000:04:00.0".parse().unwrap(),
    );
    let i = k
        .pairs
        .iter()
        .position(|x| (x.provider, x.client) == (p, c))
        .expect("the pair of the two drives below the switch");
    assert_eq!(k.pairs[i].map_type, MapType::BusAddr);
    k.pairs[i].map_type = MapType::ThruHostBridge;
    let (problems, _) = check("doctored", &topo, &k);
    assert!(!problems.is_empty());
    // Both directions of the DMA, in both IOMMU modes, name the pair.
    assert_eq!(problems.len(), 4, "{problems:#?}");
    for q in &problems {
        assert!(
            q.contains(&format!("provider {p} client {c}"))
                && q.contains("kernel thru_host_bridge"),
            "{q}"
        );
    }
}
