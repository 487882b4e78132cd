//! The kernel's verdicts (the `pci_p2pdma/verdicts` file, read by
//! `peerdma_p2p::oracle`) against the verdicts a scenario expects of it.

use crate::scenario::Expect;
use peerdma_p2p::oracle::KernelVerdicts;

/// Check expectations in both directions; one message per mismatch.
pub fn check(v: &KernelVerdicts, expect: &[Expect]) -> Vec<String> {
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
            let found = match (p.parse(), c.parse()) {
                (Ok(pb), Ok(cb)) => v.pair(pb, cb),
                _ => None,
            };
            match found {
                None => problems.push(format!("pair {p} -> {c}: missing (expected {want})")),
                Some(k)
                    if k.map_type.as_str() != e.map
                        || e.dist.is_some_and(|d| d != i64::from(k.distance)) =>
                {
                    problems.push(format!(
                        "pair {p} -> {c}: kernel says {} {}, expected {want}",
                        k.map_type.as_str(),
                        k.distance
                    ))
                }
                Some(_) => {}
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdma_p2p::oracle::parse_verdicts;

    #[test]
    fn parse_and_check() {
        let text = "# peerdma-oracle v1\n# cpu_supports_p2pdma 0\n\
                    dev 0000:00:00.0 acs_redir 0 host_bridge 0000:00:00.0 wl_same 0 wl_cross 0\n\
                    dev 0000:01:00.0 acs_redir 0 host_bridge 0000:00:00.0 wl_same 0 wl_cross 0\n\
                    pair 0000:00:00.0 0000:01:00.0 not_supported 3\n\
                    pair 0000:01:00.0 0000:00:00.0 not_supported 3\n";
        let v = parse_verdicts(text, "t").unwrap();
        assert_eq!(v.cpu_supports_p2pdma, Some(false));
        assert_eq!(v.devices.len(), 2);
        assert_eq!(v.counts().get("not_supported"), Some(&2));
        let mut e = Expect {
            pair: ["0000:00:00.0".into(), "0000:01:00.0".into()],
            map: "bus_addr".into(),
            dist: None,
            why: String::new(),
        };
        assert_eq!(check(&v, std::slice::from_ref(&e)).len(), 2);
        e.map = "not_supported".into();
        e.dist = Some(3);
        assert!(check(&v, std::slice::from_ref(&e)).is_empty());
        assert!(parse_verdicts("garbage\n", "t").is_err());
    }
}
