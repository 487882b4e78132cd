//! Generated topologies, for property tests and benchmarks: random trees of
//! host bridges, root ports, (nested) switches and endpoints, with random
//! ACS settings, host bridge identities and CPUs. Written as description
//! text and read like any description file.

use crate::error::Result;
use crate::raw::RawMachine;
use std::fmt::Write;

/// A small deterministic generator (SplitMix64), so no dependency is needed
/// and a seed always gives the same machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `pct`/100.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Host-bridge identities to draw from: whitelisted with and without the
/// same-host-bridge flag, and not whitelisted.
const HOST_IDS: &[(u16, u16)] = &[
    (0x8086, 0x3c00), // whitelisted, same host bridge required
    (0x8086, 0x2f01),
    (0x8086, 0x2020), // whitelisted
    (0x8086, 0x09a2),
    (0x8086, 0x4660), // not whitelisted
    (0x1022, 0x1480),
    (0x1b36, 0x0008),
];
const ROOT_PORT_IDS: &[(u16, u16)] = &[
    (0x8086, 0x2030),
    (0x8086, 0x2033),
    (0x8086, 0x3c01),
    (0x1b36, 0x000c),
    (0x1022, 0x1483),
];
const ACS_CHOICES: &[&str] = &[
    "[]",
    "[\"rr\"]",
    "[\"cr\"]",
    "[\"ec\"]",
    "[\"sv\", \"uf\"]",
    "[\"sv\", \"rr\", \"cr\", \"uf\"]",
    "false",
];

struct Gen {
    rng: Rng,
    out: String,
    count: usize,
    target: usize,
    next_name: usize,
}

impl Gen {
    fn name(&mut self, prefix: &str) -> String {
        self.next_name += 1;
        format!("{prefix}{}", self.next_name)
    }

    fn device(&mut self, name: &str, kind: &str, parent: &str, extra: &str) {
        let _ = writeln!(
            self.out,
            "[[device]]\nname = \"{name}\"\ntype = \"{kind}\"\nparent = \"{parent}\"\n{extra}"
        );
        self.count += 1;
    }

    fn acs(&mut self, pct_redirect: u64) -> String {
        let c = if self.rng.chance(pct_redirect) {
            *self.rng.pick(&ACS_CHOICES[1..4])
        } else {
            *self
                .rng
                .pick(&[ACS_CHOICES[0], ACS_CHOICES[4], ACS_CHOICES[6]])
        };
        format!("acs = {c}\n")
    }

    /// Something below a root or downstream port: endpoint(s) or a switch.
    fn below_port(&mut self, port: &str, depth: u32) {
        if self.count >= self.target {
            return;
        }
        if depth < 3 && self.rng.chance(45) {
            let up = self.name("up");
            self.device(&up, "switch_upstream", port, "acs = false\n");
            let ports = 2 + self.rng.below(6);
            for _ in 0..ports {
                if self.count >= self.target {
                    break;
                }
                let dp = self.name("dp");
                let acs = self.acs(25);
                self.device(&dp, "switch_downstream", &up, &acs);
                if self.rng.chance(85) {
                    self.below_port(&dp, depth + 1);
                }
            }
        } else {
            let fns = if self.rng.chance(25) {
                2 + self.rng.below(3)
            } else {
                1
            };
            for _ in 0..fns {
                let ep = self.name("ep");
                let acs = if fns > 1 && self.rng.chance(40) {
                    self.acs(50)
                } else {
                    String::new()
                };
                let extra = format!(
                    "class = \"{}\"\nbars = [{{ bar = 0, size = \"1M\" }}]\n{acs}",
                    self.rng.pick(&["nvme", "gpu", "ethernet", "accelerator"])
                );
                self.device(&ep, "endpoint", port, &extra);
            }
        }
    }
}

/// A machine of about `functions` PCI functions.
pub fn description(seed: u64, functions: usize) -> String {
    let mut g = Gen {
        rng: Rng::new(seed),
        out: String::new(),
        count: 0,
        target: functions.max(2),
        next_name: 0,
    };
    let (vendor, family) = match g.rng.below(4) {
        0 => ("amd", 0x17 + g.rng.below(3)),
        1 => ("amd", 0x15),
        2 => ("hygon", 0x18),
        _ => ("intel", 6),
    };
    let _ = writeln!(g.out, "version = 1\nname = \"generated {seed}\"\n[cpu]\nvendor = \"{vendor}\"\nfamily = {family}\n");
    // Each host bridge gets a domain of its own so bus numbers never run out.
    let per_bridge = 40 + g.rng.below(120) as usize;
    let bridges = g.target.div_ceil(per_bridge).max(1);
    let mut hb_names = Vec::new();
    for h in 0..bridges {
        let name = format!("hb{h}");
        let _ = writeln!(
            g.out,
            "[[host_bridge]]\nname = \"{name}\"\ndomain = {h}\nbus = 0\nnuma_node = {}\n",
            h % 2
        );
        hb_names.push(name);
    }
    for (h, hb) in hb_names.iter().enumerate() {
        let stop = ((h + 1) * g.target).div_ceil(bridges);
        if g.rng.chance(60) {
            let (v, d) = *g.rng.pick(HOST_IDS);
            let n = g.name("host");
            g.device(
                &n,
                "host",
                hb,
                &format!("slot = 0\nvendor = {v:#x}\ndevice = {d:#x}\n"),
            );
        }
        let mut slots = 0;
        while g.count < stop && slots < 30 {
            slots += 1;
            if g.rng.chance(10) {
                let n = g.name("rcep");
                g.device(&n, "rc_endpoint", hb, "class = \"accelerator\"\n");
                continue;
            }
            let rp = g.name("rp");
            let (v, d) = *g.rng.pick(ROOT_PORT_IDS);
            let acs = g.acs(30);
            g.device(
                &rp,
                "root_port",
                hb,
                &format!("vendor = {v:#x}\ndevice = {d:#x}\n{acs}"),
            );
            if g.rng.chance(90) {
                let saved = g.target;
                g.target = stop;
                g.below_port(&rp, 0);
                g.target = saved;
            }
        }
    }
    g.out
}

/// A generated machine's capture.
pub fn generate(seed: u64, functions: usize) -> Result<RawMachine> {
    let text = description(seed, functions);
    let mut raw = crate::desc::parse_description(&text, &format!("generated machine {seed}"))?;
    raw.origin.kind = "generated".into();
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Topology;

    #[test]
    fn generated_machines_build_and_are_deterministic() {
        for seed in 0..20 {
            let a = generate(seed, 60).unwrap();
            let b = generate(seed, 60).unwrap();
            assert_eq!(a, b);
            let t = Topology::from_raw(a, "gen").unwrap();
            assert!(t.len() >= 2);
        }
        let big = Topology::from_raw(generate(7, 2000).unwrap(), "gen").unwrap();
        assert!((1900..=2200).contains(&big.len()), "{}", big.len());
    }
}
