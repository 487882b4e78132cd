//! Reading the kernel's `pci_p2pdma/verdicts` file (format in kernel/README.md).

use crate::scenario::Expect;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

pub struct Verdicts {
    pub cpu_supports_p2pdma: Option<bool>,
    pub devices: Vec<String>,
    /// (provider, client) -> (map type, distance)
    pub pairs: BTreeMap<(String, String), (String, i64)>,
}

pub fn parse(text: &str, origin: &str) -> Result<Verdicts> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, "# peerdma-oracle v1")) => {}
        other => bail!(
            "{origin}: line 1 is {:?}, expected \"# peerdma-oracle v1\"",
            other.map(|l| l.1)
        ),
    }
    let mut v = Verdicts {
        cpu_supports_p2pdma: None,
        devices: Vec::new(),
        pairs: BTreeMap::new(),
    };
    for (i, line) in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("{origin}:{}: malformed line {line:?}", i + 1);
        match f.first().copied() {
            Some("#") if f.get(1) == Some(&"cpu_supports_p2pdma") => {
                v.cpu_supports_p2pdma = Some(*f.get(2).with_context(bad)? == "1");
            }
            Some("dev") => v.devices.push(f.get(1).with_context(bad)?.to_string()),
            Some("pair") if f.len() == 5 => {
                let dist = f[4].parse().with_context(bad)?;
                v.pairs
                    .insert((f[1].into(), f[2].into()), (f[3].into(), dist));
            }
            Some("#") | None => {}
            _ => bail!(bad()),
        }
    }
    Ok(v)
}

impl Verdicts {
    /// Count of pairs per map type.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for (map, _) in self.pairs.values() {
            *counts.entry(map.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// Check expectations in both directions; one message per mismatch.
    pub fn check(&self, expect: &[Expect]) -> Vec<String> {
        let mut problems = Vec::new();
        for e in expect {
            let [a, b] = &e.pair;
            for (p, c) in [(a, b), (b, a)] {
                let mut want = match e.dist {
                    Some(d) => format!("{} {d}", e.map),
                    None => e.map.clone(),
                };
                if !e.why.is_empty() {
                    want = format!("{want}: {}", e.why);
                }
                match self.pairs.get(&(p.clone(), c.clone())) {
                    None => problems.push(format!("pair {p} -> {c}: missing (expected {want})")),
                    Some((map, dist)) if *map != e.map || e.dist.is_some_and(|d| d != *dist) => {
                        problems.push(format!(
                            "pair {p} -> {c}: kernel says {map} {dist}, expected {want}"
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let text = "# peerdma-oracle v1\n# cpu_supports_p2pdma 0\n\
                    dev 0000:00:00.0 acs_redir 0 host_bridge 0000:00:00.0 wl_same 0 wl_cross 0\n\
                    dev 0000:01:00.0 acs_redir 0 host_bridge 0000:00:00.0 wl_same 0 wl_cross 0\n\
                    pair 0000:00:00.0 0000:01:00.0 not_supported 3\n\
                    pair 0000:01:00.0 0000:00:00.0 not_supported 3\n";
        let v = parse(text, "t").unwrap();
        assert_eq!(v.cpu_supports_p2pdma, Some(false));
        assert_eq!(v.devices.len(), 2);
        assert_eq!(v.counts().get("not_supported"), Some(&2));
        let e = Expect {
            pair: ["0000:00:00.0".into(), "0000:01:00.0".into()],
            map: "bus_addr".into(),
            dist: None,
            why: String::new(),
        };
        assert_eq!(v.check(&[e]).len(), 2);
        assert!(parse("garbage\n", "t").is_err());
    }
}
