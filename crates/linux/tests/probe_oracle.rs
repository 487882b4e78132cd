//! `peerdma probe` reads the oracle kernel's verdicts with the one parser
//! (`peerdma_p2p::oracle`): where the file is there, it is used, and a
//! malformed one is an error naming its line, never silently dropped.

use peerdma_linux::probe::{run, ProbeOptions};
use peerdma_p2p::oracle::VERDICTS_PATH;
use peerdma_p2p::{calc_map_type_and_dist, host_bridge_whitelisted};
use peerdma_pci::{Source, Topology};
use std::path::Path;

/// A `--root` tree of a preset, with `verdicts` (if any) where the oracle
/// kernel prints it.
fn root_with(topo: &Topology, verdicts: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    peerdma_pci::sysfs::write_root(topo.raw(), dir.path()).unwrap();
    if let Some(text) = verdicts {
        let path = dir.path().join(VERDICTS_PATH);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// The verdicts file the oracle kernel would print for `topo`.
fn verdicts_of(topo: &Topology) -> String {
    let mut text = format!(
        "# peerdma-oracle v1\n# cpu_supports_p2pdma {}\n",
        u8::from(topo.cpu().supports_p2pdma())
    );
    for f in topo.functions() {
        let hb = topo
            .host_bridge_device(f.host_bridge)
            .map_or("-".to_string(), |h| topo.function(h).bdf.to_string());
        text += &format!(
            "dev {} acs_redir {} host_bridge {hb} wl_same {} wl_cross {}\n",
            f.bdf,
            u8::from(f.acs.redirects().unwrap_or(false)),
            u8::from(host_bridge_whitelisted(topo, f.host_bridge, true)),
            u8::from(host_bridge_whitelisted(topo, f.host_bridge, false)),
        );
    }
    for a in topo.ids() {
        for b in topo.ids().filter(|&b| b != a) {
            let v = calc_map_type_and_dist(topo, a, b);
            text += &format!(
                "pair {} {} {} {}\n",
                topo.function(a).bdf,
                topo.function(b).bdf,
                v.map_type.as_str(),
                v.raw_distance
            );
        }
    }
    text
}

fn options(topo: &Topology, root: &Path) -> ProbeOptions {
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
    o.sys_root = root.to_path_buf();
    o
}

#[test]
fn the_kernels_verdicts_are_read_when_present() {
    let topo = Source::Preset("dual-xeon".into()).load().unwrap();
    let root = root_with(&topo, None);
    let r = run(&options(&topo, root.path())).unwrap();
    assert!(!r.verdict_source.contains("kernel"), "{}", r.verdict_source);

    let root = root_with(&topo, Some(&verdicts_of(&topo)));
    let r = run(&options(&topo, root.path())).unwrap();
    assert!(
        r.verdict_source.contains("kernel from") && r.verdict_source.contains(VERDICTS_PATH),
        "{}",
        r.verdict_source
    );
}

#[test]
fn a_malformed_verdicts_file_is_an_error_naming_the_line() {
    let topo = Source::Preset("dual-xeon".into()).load().unwrap();
    let good = verdicts_of(&topo);
    let n = good.lines().position(|l| l.starts_with("pair ")).unwrap() + 1;
    let bad: String = good
        .lines()
        .zip(1..)
        .map(|(l, i)| {
            if i == n {
                format!("{} maybe 2\n", l.rsplitn(3, ' ').nth(2).unwrap())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let root = root_with(&topo, Some(&bad));
    let e = run(&options(&topo, root.path())).unwrap_err().to_string();
    let path = root.path().join(VERDICTS_PATH);
    assert!(
        e.starts_with(&format!("{}:{n}: malformed line \"pair ", path.display())),
        "{e}"
    );
    assert!(e.contains("unknown map type \"maybe\""), "{e}");

    // Cut short: the kernel prints every pair.
    let cut: String = good.lines().take(n + 3).map(|l| format!("{l}\n")).collect();
    let root = root_with(&topo, Some(&cut));
    let e = run(&options(&topo, root.path())).unwrap_err().to_string();
    assert!(e.contains("without a `pair` line"), "{e}");
}
