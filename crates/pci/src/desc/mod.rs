//! Description files: topologies written by hand (TOML), for machines that
//! exist only on paper, and the built-in presets.
//!
//! ```toml
//! version = 1
//! name = "two GPUs and an NVMe drive under one switch"
//!
//! [cpu]
//! vendor = "intel"          # or "amd", or a /proc/cpuinfo vendor_id
//! family = 6
//! model_name = "Intel Xeon Gold 6248"
//!
//! [[host_bridge]]
//! name = "hb0"              # sysfs calls it pci0000:00
//! numa_node = 0
//!
//! [[device]]
//! name = "rp0"
//! type = "root_port"
//! parent = "hb0"
//! vendor = 0x8086
//! device = 0x2030
//! acs = ["sv", "rr", "cr", "uf"]   # ACS control bits set; false: no ACS capability
//!
//! [[device]]
//! name = "sw0-up"
//! type = "switch_upstream"
//! parent = "rp0"
//!
//! [[device]]
//! name = "nvme0"
//! type = "endpoint"
//! parent = "sw0-dp0"
//! class = "nvme"
//! bars = [{ bar = 0, size = "16K", bits = 64 }, { bar = 2, size = "256M" }]
//! p2pmem = { bar = 2 }      # publish BAR 2 as P2P memory
//! link = "gen4x4"
//! ```
//!
//! Bus numbers, device numbers, BAR addresses and the configuration space
//! bytes are generated, as firmware and hardware would have them; the result
//! goes through the same builder as a real machine's capture.

mod emit;
mod firmware;
mod schema;
mod tree;

use crate::error::{Error, Result};
use crate::model::{LinkSpeed, LinkState};
use crate::raw::{Origin, RawMachine};
use schema::DescFile;

/// Where the text came from, for messages: the origin and its lines.
struct Ctx<'a> {
    origin: &'a str,
    /// Byte offsets of the newlines.
    newlines: Vec<usize>,
}

impl<'a> Ctx<'a> {
    fn new(text: &str, origin: &'a str) -> Ctx<'a> {
        Ctx {
            origin,
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }
    /// The 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
    fn err(&self, line: Option<usize>, msg: impl Into<String>) -> Error {
        Error::parse(self.origin, line, msg)
    }
}

/// Read a description (TOML text). `origin` names it in errors.
pub fn parse_description(text: &str, origin: &str) -> Result<RawMachine> {
    build(text, origin, "description")
}

/// A built-in preset's description text is parsed like a file.
pub(crate) fn parse_preset(text: &str, name: &str) -> Result<RawMachine> {
    let origin = format!("preset '{name}'");
    let mut raw = build(text, &origin, "preset")?;
    raw.origin.detail = name.to_string();
    Ok(raw)
}

fn build(text: &str, origin: &str, kind: &str) -> Result<RawMachine> {
    let ctx = Ctx::new(text, origin);
    let file: DescFile = schema::parse(text, &ctx)?;
    if let Some(v) = file.version {
        if v != 1 {
            return Err(ctx.err(
                None,
                format!("version {v} is not understood (this peerdma reads version 1)"),
            ));
        }
    }
    if file.host_bridges.is_empty() {
        return Err(ctx.err(
            None,
            "no [[host_bridge]]: a machine needs at least one root bus",
        ));
    }
    let default_link = match &file.default_link {
        Some(s) => schema::parse_link_spec(s).ok_or_else(|| {
            ctx.err(
                None,
                format!("default_link '{s}' is not a link like gen4x16"),
            )
        })?,
        None => LinkState {
            speed: LinkSpeed::Gen4,
            width: 16,
        },
    };

    let tree = tree::Tree::resolve(&file, &ctx)?;
    let enumeration = firmware::enumerate(&file, &tree, &ctx)?;
    let links = firmware::train_links(&file, &tree, default_link);
    let bars = firmware::assign_bars(&file, &tree, &ctx)?;
    let layout = emit::Layout {
        tree: &tree,
        enumeration: &enumeration,
        links: &links,
        bars: &bars,
    };
    let devices = emit::devices(&file, &layout, &ctx)?;

    let origin = Origin {
        kind: kind.to_string(),
        detail: origin.to_string(),
        name: file.name.clone(),
        hostname: None,
        kernel: None,
        cmdline: file.cmdline.clone(),
        tool: Some(format!("peerdma {}", env!("CARGO_PKG_VERSION"))),
        partial: None,
    };
    Ok(RawMachine::new(origin, file.cpu.raw(), devices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PortType, Topology};

    const SMALL: &str = r#"
version = 1
name = "small"
[cpu]
vendor = "intel"
family = 6

[[host_bridge]]
name = "hb0"
numa_node = 0

[[device]]
name = "rp0"
type = "root_port"
parent = "hb0"

[[device]]
name = "up"
type = "switch_upstream"
parent = "rp0"

[[device]]
name = "dp0"
type = "switch_downstream"
parent = "up"
acs = ["rr", "cr"]

[[device]]
name = "dp1"
type = "switch_downstream"
parent = "up"

[[device]]
name = "nvme0"
type = "endpoint"
parent = "dp0"
class = "nvme"
vendor = 0x1de5
device = 0x1000
bars = [{ bar = 0, size = "16K" }, { bar = 2, size = "1G" }]
p2pmem = { bar = 2, size = "512M" }
link = "gen4x8"

[[device]]
name = "gpu0"
type = "endpoint"
parent = "dp1"
class = "gpu"
bars = [{ bar = 0, size = "16M", bits = 32 }]
"#;

    fn topo(text: &str) -> Topology {
        Topology::from_raw(parse_description(text, "t.toml").unwrap(), "t.toml").unwrap()
    }

    #[test]
    fn lays_out_buses_and_types() {
        let t = topo(SMALL);
        let names: Vec<String> = t
            .functions()
            .iter()
            .map(|f| format!("{} {}", f.bdf, f.label.as_deref().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                "0000:00:00.0 rp0",
                "0000:01:00.0 up",
                "0000:02:00.0 dp0",
                "0000:02:01.0 dp1",
                "0000:03:00.0 nvme0",
                "0000:04:00.0 gpu0"
            ]
        );
        let nvme = t.function(t.lookup("nvme0").unwrap());
        assert_eq!(nvme.port_type, PortType::Endpoint);
        assert_eq!(nvme.class, 0x010802);
        assert_eq!(nvme.vendor, 0x1de5);
        let dp0 = t.function(nvme.upstream.unwrap());
        assert_eq!(dp0.port_type, PortType::SwitchDownstream);
        assert_eq!(dp0.acs.redirects(), Some(true));
        assert_eq!(
            dp0.link.unwrap().current.unwrap().to_string(),
            "Gen4 x8",
            "the port copies its child's link"
        );
        let up = t.function(dp0.upstream.unwrap());
        assert_eq!(up.port_type, PortType::SwitchUpstream);
        assert_eq!(up.acs, crate::Acs::Absent);
        let rp = t.function(up.upstream.unwrap());
        assert_eq!(rp.port_type, PortType::RootPort);
        assert_eq!(rp.bridge_buses, Some((1, 4)));
        assert_eq!(rp.upstream, None);
        let p2p = nvme.p2pmem.unwrap();
        assert_eq!((p2p.size, p2p.published), (512 << 20, true));
        let bar2 = nvme.bars.iter().find(|b| b.index == 2).unwrap();
        assert_eq!(bar2.phys.len(), 1 << 30);
        assert!(
            bar2.phys.start().raw() % (1 << 30) == 0,
            "naturally aligned"
        );
        assert_eq!(bar2.bus.map(|b| b.raw()), Some(bar2.phys.start().raw()));
        let gpu = t.function(t.lookup("gpu0").unwrap());
        assert!(gpu.bars[0].phys.start().raw() < 1 << 32);
        assert_eq!(t.host_bridges()[0].name, "pci0000:00");
        assert_eq!(t.host_bridge_device(t.host_bridges()[0].id), Some(rp.id));
    }

    fn parse_err(text: &str) -> String {
        match parse_description(text, "bad.toml").and_then(|r| Topology::from_raw(r, "bad.toml")) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn dangling_parent_is_named_with_its_line() {
        let bad = SMALL.replace("parent = \"dp1\"", "parent = \"dp9\"");
        let e = parse_err(&bad);
        assert!(e.starts_with("bad.toml:"), "{e}");
        assert!(e.contains("'gpu0' names parent 'dp9'"), "{e}");
        let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(bad.lines().nth(line - 1).unwrap(), "[[device]]", "{e}");
    }

    #[test]
    fn cycle_is_named() {
        let bad = SMALL.replace("parent = \"rp0\"", "parent = \"dp1\"");
        let e = parse_err(&bad);
        assert!(e.contains("cycle"), "{e}");
        assert!(
            e.contains("up -> dp1 -> up") || e.contains("dp1 -> up -> dp1"),
            "{e}"
        );
    }

    #[test]
    fn wrong_parent_kinds_and_bad_values() {
        for (from, to, want) in [
            ("parent = \"dp0\"", "parent = \"hb0\"", "rc_endpoint"),
            (
                "type = \"switch_downstream\"\nparent = \"up\"\nacs",
                "type = \"switch_downstream\"\nparent = \"rp0\"\nacs",
                "needs switch_upstream",
            ),
            ("link = \"gen4x8\"", "link = \"fast\"", "link 'fast'"),
            (
                "acs = [\"rr\", \"cr\"]",
                "acs = [\"rr\", \"zz\"]",
                "unknown ACS bit 'zz'",
            ),
            ("size = \"1G\"", "size = \"3M\"", "power of two"),
            (
                "class = \"nvme\"",
                "class = \"nvmee\"",
                "unknown class 'nvmee'",
            ),
            (
                "p2pmem = { bar = 2, size = \"512M\" }",
                "p2pmem = { bar = 4 }",
                "not a memory BAR",
            ),
            (
                "vendor = 0x1de5",
                "vendor = 0x1de5\nvendr = 1",
                "unknown field `vendr`",
            ),
            (
                "name = \"gpu0\"",
                "name = \"nvme0\"",
                "already used on line",
            ),
            ("family = 6", "family = \"six\"", "invalid type"),
        ] {
            assert!(SMALL.contains(from), "{from}");
            let e = parse_err(&SMALL.replacen(from, to, 1));
            assert!(e.contains(want), "{to}: {e}");
            assert!(e.starts_with("bad.toml:"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn multi_function_and_virtual_functions() {
        let text = r#"
[cpu]
vendor = "amd"
family = 0x19
[[host_bridge]]
name = "hb"
[[device]]
name = "rp"
type = "root_port"
parent = "hb"
[[device]]
name = "nic0"
type = "endpoint"
parent = "rp"
class = "ethernet"
[[device]]
name = "nic1"
type = "endpoint"
parent = "rp"
class = "ethernet"
[[device]]
name = "vf0"
type = "endpoint"
physfn = "nic0"
class = "ethernet"
"#;
        let t = topo(text);
        let n0 = t.function(t.lookup("nic0").unwrap());
        let n1 = t.function(t.lookup("nic1").unwrap());
        let vf = t.function(t.lookup("vf0").unwrap());
        assert_eq!(n0.bdf.to_string(), "0000:01:00.0");
        assert_eq!(n1.bdf.to_string(), "0000:01:00.1");
        assert!(n0.multifunction && n1.multifunction);
        assert_eq!(vf.bdf.to_string(), "0000:01:00.2");
        assert_eq!(vf.physfn, Some(n0.id));
        assert_eq!(vf.upstream, n0.upstream);
        assert!(t.cpu().supports_p2pdma());
    }

    #[test]
    fn physfn_must_name_a_device_of_the_file() {
        // With a parent given, physfn was looked up only later, by index:
        // a name that is not a device panicked (index out of bounds).
        let vf = |physfn: &str| {
            format!("{SMALL}\n[[device]]\nname = \"vf\"\ntype = \"endpoint\"\nparent = \"dp0\"\nphysfn = \"{physfn}\"\n")
        };
        let e = parse_err(&vf("nosuch"));
        assert!(e.contains("physfn 'nosuch' is not a device"), "{e}");
        let e = parse_err(&vf("hb0"));
        assert!(e.contains("physfn 'hb0' is a host bridge"), "{e}");
        for e in [parse_err(&vf("nosuch")), parse_err(&vf("hb0"))] {
            let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
            assert_eq!(vf("x").lines().nth(line - 1), Some("[[device]]"), "{e}");
        }
    }

    #[test]
    fn syntax_and_type_errors_say_what_is_wrong_in_a_readers_terms() {
        for (text, line, want) in [
            // A file ending in `name =`: toml gives an empty message.
            (
                "version = 1\nname =",
                2,
                "'name' has no value; expected a value",
            ),
            ("name =   # comment\n[cpu]\n", 1, "'name' has no value"),
            ("name = intel\n", 1, "text goes in quotes"),
            ("version = 1 2\n", 1, "expected the end of the line"),
        ] {
            let e = parse_err(text);
            assert!(
                e.starts_with(&format!("bad.toml:{line}: ")),
                "{text:?}: {e}"
            );
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.len() > "bad.toml:1: ".len() + 10, "{e}");
        }
        for (from, to, want) in [
            (
                "class = \"nvme\"",
                "class = true",
                "expected a class: a number like 0x010802 or a name like \"nvme\"",
            ),
            (
                "size = \"1G\"",
                "size = true",
                "expected a size: a number of bytes or text like \"256M\"",
            ),
            (
                "acs = [\"rr\", \"cr\"]",
                "acs = 5",
                "expected true, false, or a list of ACS bits",
            ),
            (
                "vendor = 0x1de5",
                "vendor = 0x11de5",
                "expected a whole number from 0 to 65535",
            ),
            (
                "numa_node = 0",
                "numa_node = -1",
                "expected a whole number from 0 to 4294967295",
            ),
            (
                "bars = [{ bar = 0, size = \"16M\", bits = 32 }]",
                "bars = [1]",
                "expected a BAR: a table like { bar = 0",
            ),
        ] {
            let bad = SMALL.replacen(from, to, 1);
            assert_ne!(bad, SMALL, "{from}");
            let e = parse_err(&bad);
            let line = bad.lines().position(|l| l.contains(to)).unwrap() + 1;
            assert!(e.starts_with(&format!("bad.toml:{line}: ")), "{to}: {e}");
            assert!(e.contains(want), "{to}: {e}");
            for internal in [
                "untagged",
                "NumOrName",
                "SizeSpec",
                "AcsSpec",
                "u16",
                "u32",
                "struct",
                "Desc",
            ] {
                assert!(!e.contains(internal), "{to}: {e}");
            }
        }
    }
}
