//! The HTML report (`peerdma report`): self-contained, every section there,
//! every not-supported pair explained, strings from the machine escaped,
//! probe results shown, on the presets and the kernel fixtures. That it
//! renders in a browser is tested where the command writes it
//! (crates/cli/tests/pictures.rs, headless Chromium).

use peerdma_p2p::dot::matrix_functions;
use peerdma_p2p::{matrix, MapType};
use peerdma_pci::ids::PciIds;
use peerdma_pci::{Source, Topology};
use peerdma_report::html::{Picture, Report};
use peerdma_report::probe::ProbeEntry;
use std::path::PathBuf;

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/kernel")
}

fn machines() -> Vec<(String, Topology)> {
    let mut all: Vec<(String, Topology)> = peerdma_pci::presets::PRESETS
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                Source::Preset(p.name.into()).load().unwrap(),
            )
        })
        .collect();
    let mut fixtures = Vec::new();
    for e in std::fs::read_dir(fixtures_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.join("snapshot.json").is_file() {
            let t = Source::Snapshot(p.join("snapshot.json")).load().unwrap();
            fixtures.push((p.file_name().unwrap().to_string_lossy().into_owned(), t));
        }
    }
    assert!(fixtures.len() >= 9, "the kernel fixtures are there");
    fixtures.sort_by(|a, b| a.0.cmp(&b.0));
    all.extend(fixtures);
    all
}

fn report(t: &Topology) -> String {
    let ids = PciIds::parse("");
    let mut r = Report::new(
        t,
        &ids,
        Picture::Unavailable("not drawn in this test".into()),
    );
    r.generated_by = "peerdma (test)".into();
    r.render()
}

/// The values of every `attr="..."` in the page.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let key = format!(" {attr}=\"");
    html.match_indices(&key)
        .map(|(i, _)| {
            let rest = &html[i + key.len()..];
            &rest[..rest.find('"').unwrap_or(rest.len())]
        })
        .collect()
}

/// The part of the page from `<section id="ID"` to the next section.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section {id}"));
    let rest = &html[start..];
    let end = rest[1..].find("<section").map_or(rest.len(), |e| e + 1);
    &rest[..end]
}

#[test]
fn the_page_needs_no_network_and_runs_no_script() {
    for (name, t) in machines() {
        let html = report(&t);
        assert!(html.starts_with("<!DOCTYPE html>"), "{name}");
        for attr in ["src", "href", "action", "srcset", "data", "xlink:href"] {
            for v in attribute_values(&html, attr) {
                let v = v.trim().to_ascii_lowercase();
                assert!(
                    v.starts_with('#'),
                    "{name}: {attr}=\"{v}\" points outside the page"
                );
            }
        }
        let lower = html.to_ascii_lowercase();
        for bad in [
            "<script",
            "<link",
            "<iframe",
            "<img",
            "@import",
            "url(",
            "@font-face",
        ] {
            assert!(!lower.contains(bad), "{name}: {bad} in the page");
        }
    }
}

#[test]
fn every_section_is_there_and_every_not_supported_pair_is_explained() {
    for (name, t) in machines() {
        let html = report(&t);
        for id in [
            "summary",
            "picture",
            "tree",
            "matrix",
            "not-supported",
            "host-bridge",
            "probes",
            "snapshot",
        ] {
            assert!(
                html.contains(&format!("<section id=\"{id}\"")),
                "{name}: {id}"
            );
        }
        let fns = matrix_functions(&t, false);
        let m = matrix(&t);
        let mut want = 0;
        for &a in &fns {
            for &b in &fns {
                if a != b && m.get(a, b).0 == MapType::NotSupported {
                    want += 1;
                    let (pa, pb) = (t.function(a).bdf.to_string(), t.function(b).bdf.to_string());
                    let ns = section(&html, "not-supported");
                    assert!(
                        ns.contains(&pa) && ns.contains(&pb),
                        "{name}: {pa} -> {pb} explained"
                    );
                }
            }
        }
        let ns = section(&html, "not-supported");
        assert_eq!(
            ns.matches("<details class=\"pair\"").count(),
            want,
            "{name}"
        );
        assert_eq!(
            ns.matches("<h4>Why</h4>").count(),
            want,
            "{name}: every pair has its reasons"
        );
        // The matrix has a cell per ordered pair.
        let mx = section(&html, "matrix");
        if fns.len() >= 2 {
            assert_eq!(
                mx.matches("<td class=").count(),
                fns.len() * fns.len(),
                "{name}"
            );
            assert_eq!(mx.matches("<td class=\"ns\"").count(), want, "{name}");
        }
        // Without Graphviz the page says so and keeps the tree.
        assert!(
            html.contains("No picture: not drawn in this test"),
            "{name}"
        );
        assert!(section(&html, "tree").contains(&t.functions()[0].bdf.short()));
    }
}

#[test]
fn fixes_of_the_acs_redirecting_pairs_are_shown() {
    let t = Source::Preset("dual-xeon".into()).load().unwrap();
    let html = report(&t);
    let hb = section(&html, "host-bridge");
    // gpu4 and nvme3 sit below one switch whose ports redirect.
    assert!(hb.contains("0000:88:00.0 (gpu4)"), "{hb}");
    assert!(
        hb.contains("pci=disable_acs_redir=0000:87:08.0;0000:87:11.0"),
        "{hb}"
    );
    assert!(hb.contains("setpci -s 0000:87:08.0 ECAP_ACS+0x6.w=0000:"));
    assert!(section(&html, "summary").contains("3 function(s) with ACS redirect"));
    // workstation: nothing can do P2P, each pair is explained with its fix.
    let t = Source::Preset("workstation".into()).load().unwrap();
    let html = report(&t);
    let ns = section(&html, "not-supported");
    assert!(
        ns.contains("is not in the kernel&#39;s P2PDMA whitelist")
            || ns.contains("is not in the kernel's P2PDMA whitelist"),
        "{ns}"
    );
    assert!(ns.contains("below one PCIe switch"), "{ns}");
}

#[test]
fn strings_from_the_machine_are_escaped() {
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>&amp;";
    let q = hostile.replace('"', "\\\"");
    let text = format!(
        "name = \"{q}\"\n[cpu]\nvendor = \"intel\"\nfamily = 6\nmodel_name = \"{q}\"\n[[host_bridge]]\nname = \"hb\"\n\
         [[device]]\nname = \"rp\"\ntype = \"root_port\"\nparent = \"hb\"\n\
         [[device]]\nname = \"rp2\"\ntype = \"root_port\"\nparent = \"hb\"\n\
         [[device]]\nname = \"{q}\"\ntype = \"endpoint\"\nparent = \"rp\"\n\
         [[device]]\nname = \"b\"\ntype = \"endpoint\"\nparent = \"rp2\"\n"
    );
    let raw = match peerdma_pci::desc::parse_description(&text, "hostile.toml") {
        Ok(r) => r,
        Err(e) => panic!("{e}\n{text}"),
    };
    let t = Topology::from_raw(raw, "hostile.toml").unwrap();
    let html = report(&t);
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "{html}");
    assert!(!lower.contains("<img"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("&amp;amp;"), "{html}");
}

#[test]
fn probe_results_are_shown_and_probes_that_could_not_run_say_why() {
    let t = Source::Preset("dual-xeon".into()).load().unwrap();
    let ids = PciIds::parse("");
    // The kernel fixtures hold real `peerdma probe` reports.
    let mut entries = Vec::new();
    for scenario in ["switch-nvme-cmb", "root-ports-intel"] {
        let path = fixtures_dir().join(scenario).join("smoke.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in v["probes"].as_array().unwrap() {
            entries.push(ProbeEntry::from_json(p["report"].clone()));
        }
    }
    entries.extend(peerdma_report::probe::run(
        &[("gpu0".into(), "nvme0".into())],
        false,
        &t.origin_label(),
    ));
    let mut r = Report::new(&t, &ids, Picture::Unavailable("-".into()));
    r.probes = Some(entries);
    let html = r.render();
    let probes = section(&html, "probes");
    assert!(probes.contains("0000:03:00.0 → 0000:04:00.0"), "{probes}");
    assert!(probes.contains("as the verdict predicts"), "{probes}");
    assert!(probes.contains("drive_to_p2pmem"), "{probes}");
    assert!(probes.contains("eremoteio"), "root-ports-intel: {probes}");
    assert!(probes.contains("gpu0 → nvme0: not run"), "{probes}");
    assert!(
        probes.contains("this report is of preset &#39;dual-xeon&#39;")
            || probes.contains("this report is of preset 'dual-xeon'"),
        "{probes}"
    );
    // Without probes asked for, the section says how to get them.
    let html = report(&t);
    assert!(section(&html, "probes").contains("No probe was asked for"));
}

/// The page's outline: headings, and how many pairs each section holds.
fn outline(html: &str) -> String {
    let mut out = String::new();
    for (i, _) in html.match_indices("<h") {
        let tag = &html[i + 1..i + 3];
        if !matches!(tag, "h1" | "h2") {
            continue;
        }
        let body = &html[i + 4..];
        let end = body.find("</").unwrap_or(body.len());
        out.push_str(&format!("{tag}: {}\n", &body[..end]));
    }
    for id in ["not-supported", "host-bridge"] {
        out.push_str(&format!(
            "{id}: {} pairs\n",
            section(html, id).matches("<details class=\"pair\"").count()
        ));
    }
    out
}

#[test]
fn the_outline_of_the_presets_reports_is_stable() {
    for p in peerdma_pci::presets::PRESETS {
        let t = Source::Preset(p.name.into()).load().unwrap();
        insta::assert_snapshot!(format!("outline_{}", p.name), outline(&report(&t)));
    }
}
