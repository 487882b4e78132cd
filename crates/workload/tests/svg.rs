//! The run as a picture (`peerdma sim --svg`): well-formed SVG (parsed as
//! XML), a bar per job from its start to its end coloured by the paths its
//! legs took, a bar per busiest link, failures marked, names escaped; on
//! the demo of every preset and kernel fixture.

use peerdma_pci::{Source, Topology};
use peerdma_workload::run::{Report, RunOptions};
use peerdma_workload::{demo, format, run_workload, svg};
use std::path::{Path, PathBuf};

fn machines() -> Vec<(String, Topology)> {
    let mut all: Vec<(String, Topology)> = ["dual-xeon", "epyc", "gpu-storage-16", "workstation"]
        .iter()
        .map(|p| (p.to_string(), Source::Preset((*p).into()).load().unwrap()))
        .collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/kernel");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.join("snapshot.json").is_file() {
            let t = Source::Snapshot(p.join("snapshot.json")).load().unwrap();
            all.push((p.file_name().unwrap().to_string_lossy().into_owned(), t));
            n += 1;
        }
    }
    assert!(n >= 9, "the kernel fixtures are there");
    all
}

fn run(t: &Topology, text: &str) -> Report {
    let w = format::parse(text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    run_workload(&w, t.clone(), RunOptions::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

/// Each job's `<g>`: its tooltip and the fills of its rectangles.
fn job_groups(doc: &roxmltree::Document) -> Vec<(String, Vec<String>)> {
    doc.root_element()
        .children()
        .filter(|n| n.has_tag_name("g"))
        .map(|g| {
            let title = g
                .children()
                .find(|c| c.has_tag_name("title"))
                .and_then(|c| c.text())
                .unwrap_or("")
                .to_string();
            let fills = g
                .children()
                .filter(|c| c.has_tag_name("rect"))
                .filter_map(|c| c.attribute("fill"))
                .filter(|f| *f != "none")
                .map(String::from)
                .collect();
            (title, fills)
        })
        .collect()
}

#[test]
fn the_demo_of_every_machine_draws_as_well_formed_svg() {
    let mut drawn = 0;
    for (name, t) in machines() {
        let text = demo::workload_text_sized(&t, 8 << 20, 4 << 20);
        if !text.contains("[[job]]") {
            continue;
        }
        let r = run(&t, &text);
        let picture = svg::timeline(&r, &[("", &t)], &format!("demo on {name}"));
        let doc = roxmltree::Document::parse(&picture)
            .unwrap_or_else(|e| panic!("{name}: not well-formed: {e}\n{picture}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let groups = job_groups(&doc);
        assert_eq!(groups.len(), r.jobs.len() + r.busiest_links.len(), "{name}");
        for (j, (title, fills)) in r.jobs.iter().zip(&groups) {
            assert!(
                title.starts_with(&format!("{}: ", j.name)),
                "{name}: {title}"
            );
            // One band per distinct path of the job's legs.
            let mut paths: Vec<&str> = j.legs.iter().map(|l| l.path).collect();
            paths.sort();
            paths.dedup();
            assert_eq!(fills.len(), paths.len(), "{name}: {}: {fills:?}", j.name);
            for p in paths {
                let (fill, words) = match p {
                    "bus_addr" => (
                        peerdma_p2p::dot::palette::BUS_ADDR.0,
                        "P2P by PCI bus address",
                    ),
                    "thru_host_bridge" => (
                        peerdma_p2p::dot::palette::THRU_HOST_BRIDGE.0,
                        "P2P through the host bridge",
                    ),
                    "bounced" => (
                        peerdma_p2p::dot::palette::NOT_SUPPORTED.0,
                        "bounced through host memory",
                    ),
                    _ => continue,
                };
                assert!(fills.iter().any(|f| f == fill), "{name}: {}: {p}", j.name);
                assert!(title.contains(words), "{name}: {title}");
            }
        }
        drawn += 1;
    }
    assert!(drawn >= 8, "the demo runs on most machines ({drawn})");
}

#[test]
fn bars_sit_at_the_jobs_start_and_end() {
    let t = Source::Preset("dual-xeon".into()).load().unwrap();
    let r = run(
        &t,
        "[[job]]\nname = \"a\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nsize = \"64M\"\n\
         [[job]]\nname = \"b\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nsize = \"64M\"\noffset = \"64M\"\nafter = \"a\"\n",
    );
    let picture = svg::timeline(&r, &[("", &t)], "t");
    let doc = roxmltree::Document::parse(&picture).unwrap();
    let bars: Vec<(f64, f64)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("none"))
        .map(|n| {
            let x: f64 = n.attribute("x").unwrap().parse().unwrap();
            let w: f64 = n.attribute("width").unwrap().parse().unwrap();
            (x, x + w)
        })
        .collect();
    assert_eq!(bars.len(), 2);
    // b starts where a ends, and ends at the right of the chart.
    assert!((bars[1].0 - bars[0].1).abs() < 0.2, "{bars:?}");
    assert!(bars[1].1 > bars[0].1 + 100.0, "{bars:?}");
    assert!(r.jobs[1].start_seconds > 0.0);
}

#[test]
fn a_failed_job_is_marked_and_names_are_escaped() {
    let t = Source::Preset("workstation".into()).load().unwrap();
    let r = run(
        &t,
        "[[job]]\nname = \"<b>&amp;\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu\"\nsize = \"8M\"\npolicy = \"p2p-only\"\n",
    );
    assert!(!r.jobs[0].ok);
    let picture = svg::timeline(&r, &[("", &t)], "t <&>");
    let doc = roxmltree::Document::parse(&picture).unwrap_or_else(|e| panic!("{e}\n{picture}"));
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(texts.contains(&"<b>&amp;"), "{texts:?}");
    assert!(texts.contains(&"FAILED"), "{texts:?}");
    assert!(picture.contains("stroke-dasharray"));
    assert!(!picture.contains("<b>"));
}
