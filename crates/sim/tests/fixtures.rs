//! The simulated machine on every kernel-oracle fixture (machines the real
//! kernel booted on, captured by `cargo xtask capture`): for every P2P
//! provider and every other drive, bytes go through and back exactly, by
//! the path the kernel's verdict calls for.

use peerdma_dma::{BouncePolicy, IommuMode, PathTaken};
use peerdma_mem::Direction;
use peerdma_p2p::{calc_map_type_and_dist, MapType};
use peerdma_pci::Source;
use peerdma_sim::{SimConfig, SimMachine};
use std::path::PathBuf;

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

#[test]
fn bytes_are_exact_on_every_fixture_by_the_kernels_path() {
    let mut checked = 0;
    for fx in fixtures() {
        let topo = Source::Snapshot(fx.join("snapshot.json")).load().unwrap();
        for mode in [IommuMode::Off, IommuMode::Translated] {
            let m = SimMachine::new(
                topo.clone(),
                SimConfig {
                    iommu: mode,
                    ..SimConfig::default()
                },
            )
            .unwrap();
            let t = m.topology().clone();
            let drives: Vec<_> = t
                .functions()
                .iter()
                .filter(|f| f.class == 0x010802)
                .map(|f| f.id)
                .collect();
            for prov in m.providers() {
                let pid = t.find(prov.bdf()).unwrap();
                for &c in drives.iter().filter(|&&c| c != pid) {
                    let client = t.function(c).bdf;
                    let verdict = calc_map_type_and_dist(&t, pid, c).map_type;
                    let len = 256 << 10;
                    let data: Vec<u8> = (0..len)
                        .map(|i| (i as u8).wrapping_mul(13) ^ client.bus())
                        .collect();
                    m.media_write(client, 0, &data).unwrap();
                    let a = prov.alloc(len as u64).unwrap();
                    let sgl = m
                        .map(
                            client,
                            &[a.phys()],
                            Direction::FromDevice,
                            BouncePolicy::Bounce,
                        )
                        .unwrap();
                    let want = match verdict {
                        MapType::BusAddr => PathTaken::BusAddr,
                        MapType::ThruHostBridge => PathTaken::ThruHostBridge,
                        _ => PathTaken::Bounced,
                    };
                    assert_eq!(
                        sgl.path(),
                        want,
                        "{}: {} <- {client}",
                        fx.display(),
                        prov.bdf()
                    );
                    let tr = m.media_to_memory(client, 0, &sgl).unwrap();
                    assert_eq!(
                        tr.unsupported_bytes,
                        0,
                        "{}: {} <- {client}: {:?}",
                        fx.display(),
                        prov.bdf(),
                        tr.routes
                    );
                    sgl.unmap().unwrap();
                    let sgl = m
                        .map(
                            client,
                            &[a.phys()],
                            Direction::ToDevice,
                            BouncePolicy::Bounce,
                        )
                        .unwrap();
                    m.memory_to_media(client, &sgl, 1 << 20).unwrap();
                    drop(sgl);
                    let mut back = vec![0u8; len];
                    m.media_read(client, 1 << 20, &mut back).unwrap();
                    assert!(
                        back == data,
                        "{}: {} <-> {client}: bytes differ ({mode:?})",
                        fx.display(),
                        prov.bdf()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} pairs checked");
}
