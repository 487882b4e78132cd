//! Each `peerdma copy` run held against what its case expects, the guest's
//! independent byte check and the kernel's verdicts for the provider it
//! used (or for every provider that both drives reach, when it bounced or
//! was refused).

use super::records::CopyRun;
use crate::scenario::CopyCase;
use peerdma_mem::Bdf;
use peerdma_p2p::oracle::KernelVerdicts;
use peerdma_p2p::MapType;

/// The kernel's map type for a provider and a client.
fn kernel_map(k: &KernelVerdicts, provider: Bdf, client: Bdf) -> Option<MapType> {
    k.verdict(provider, client).map(|(map, _)| map)
}

/// A copy held against its case and the kernel.
#[derive(Debug)]
pub struct CopyEval {
    pub run: CopyRun,
    /// What the kernel says for the copy's drives: the legs through the
    /// provider used, or which providers could serve both.
    pub kernel: String,
    pub problems: Vec<String>,
}

impl CopyEval {
    pub fn as_expected(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Hold a copy against what its case expects and what the kernel says.
pub fn evaluate_copy(
    c: &CopyCase,
    run: CopyRun,
    kernel: &KernelVerdicts,
    providers: &[Bdf],
) -> CopyEval {
    let mut p: Vec<String> = Vec::new();
    let bdf = |s: &str| s.parse::<Bdf>().ok();
    let (sb, db) = (bdf(&run.src), bdf(&run.dst));
    // Providers the kernel lets both drives reach.
    let both: Vec<Bdf> = match (sb, db) {
        (Some(s), Some(d)) => providers
            .iter()
            .copied()
            .filter(|&pv| {
                kernel_map(kernel, pv, s).is_some_and(MapType::is_p2p)
                    && kernel_map(kernel, pv, d).is_some_and(MapType::is_p2p)
            })
            .collect(),
        _ => Vec::new(),
    };
    let legs = |pv: Bdf| -> (Option<MapType>, Option<MapType>) {
        (
            sb.and_then(|s| kernel_map(kernel, pv, s)),
            db.and_then(|d| kernel_map(kernel, pv, d)),
        )
    };
    let show = |m: Option<MapType>| m.map_or("?".to_string(), |m| m.to_string());
    let used: Option<Bdf> = run
        .provider
        .as_deref()
        .and_then(bdf)
        .or_else(|| c.via.as_deref().and_then(bdf));
    let kernel_text = match used {
        Some(pv) => {
            let (r, w) = legs(pv);
            format!("{pv}: read {}, write {}", show(r), show(w))
        }
        None if both.is_empty() => "no published P2P memory reachable by both".to_string(),
        None => format!(
            "P2P possible via {}",
            both.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if let Some(e) = &run.check_error {
        p.push(format!("the guest's byte check failed: {e}"));
    }
    if run.outside != "untouched" {
        p.push(format!(
            "bytes outside the destination range were {}",
            if run.outside.is_empty() {
                "not checked"
            } else {
                &run.outside
            }
        ));
    }
    if c.expect_refused {
        if run.exit_code != Some(2) || run.path.is_some() {
            p.push(format!(
                "expected a refusal (exit 2, no report), got exit {:?}{}",
                run.exit_code,
                run.path
                    .as_ref()
                    .map(|x| format!(" and path {x}"))
                    .unwrap_or_default()
            ));
        }
        for b in [&run.src, &run.dst] {
            if !run.error.contains(b.as_str()) {
                p.push(format!("the error does not name {b}: {:?}", run.error));
            }
        }
        if run.unchanged != "exact" {
            p.push(format!(
                "a refused copy changed the destination ({})",
                run.unchanged
            ));
        }
        if !both.is_empty() {
            p.push(format!(
                "refused, but the kernel lets both drives reach {kernel_text}"
            ));
        }
        return CopyEval {
            run,
            kernel: kernel_text,
            problems: p,
        };
    }
    let Some(path) = run.path.clone() else {
        p.push(format!(
            "no report (exit {:?}): {}",
            run.exit_code,
            run.error.lines().last().unwrap_or("")
        ));
        return CopyEval {
            run,
            kernel: kernel_text,
            problems: p,
        };
    };
    if Some(&path) != c.expect_path.as_ref() {
        p.push(format!(
            "path {path} where the scenario expects {}",
            c.expect_path.as_deref().unwrap_or("?")
        ));
    }
    if run.fallback.is_some() != c.expect_fallback {
        p.push(match &run.fallback {
            Some(f) => format!("unexpected fallback: {f}"),
            None => "expected the kernel to refuse P2P mid-copy (fallback), it did not".into(),
        });
    }
    let want_rc = if c.expect_verify == "equal" { 0 } else { 1 };
    if run.exit_code != Some(want_rc) {
        p.push(format!(
            "exit status {:?}, expected {want_rc}",
            run.exit_code
        ));
    }
    match run.verify.as_deref() {
        Some(v) if v == c.expect_verify => {}
        Some(v) => p.push(format!(
            "--verify found {v}, the scenario expects {}",
            c.expect_verify
        )),
        None => p.push("the report has no verify result".into()),
    }
    // peerdma's verify against the independent byte check.
    match (run.verify.as_deref(), run.pattern.as_str()) {
        (Some("equal"), "exact") => {}
        (Some("mismatch"), x) if x.starts_with("differ") => {
            if run.first_difference.is_some()
                && run.check_first_difference().is_some()
                && run.first_difference != run.check_first_difference()
            {
                p.push(format!(
                    "--verify's first difference {:?} is not the byte check's {:?}",
                    run.first_difference,
                    run.check_first_difference()
                ));
            }
        }
        (v, x) => p.push(format!(
            "SILENT DISAGREEMENT: --verify says {} but the byte check says {x}",
            v.unwrap_or("nothing")
        )),
    }
    if run.report["bytes"].as_u64() != Some(run.count) {
        p.push(format!(
            "the report says {:?} bytes, the copy was of {}",
            run.report["bytes"], run.count
        ));
    }
    // The path against the kernel's verdicts.
    match path.as_str() {
        "p2p_bus_addr" | "p2p_thru_host_bridge" => match used {
            Some(pv) => {
                let (r, w) = legs(pv);
                let (rl, wl) = (run.read_leg.as_deref(), run.write_leg.as_deref());
                if r.map(|m| m.to_string()).as_deref() != rl
                    || w.map(|m| m.to_string()).as_deref() != wl
                {
                    p.push(format!(
                        "the report's legs (read {}, write {}) are not the kernel's ({kernel_text})",
                        rl.unwrap_or("-"),
                        wl.unwrap_or("-")
                    ));
                }
                let want = match (r, w) {
                    (Some(MapType::BusAddr), Some(MapType::BusAddr)) => "p2p_bus_addr",
                    _ => "p2p_thru_host_bridge",
                };
                if path != want {
                    p.push(format!("path {path}, but the kernel's legs make it {want}"));
                }
                if !(r.is_some_and(MapType::is_p2p) && w.is_some_and(MapType::is_p2p)) {
                    p.push(format!(
                        "P2P without a fallback where the kernel says not supported ({kernel_text})"
                    ));
                }
            }
            None => p.push("a P2P path without a provider in the report".into()),
        },
        _ => {
            if run.fallback.is_some() {
                let refused = used.is_some_and(|pv| {
                    let (r, w) = legs(pv);
                    !(r.is_some_and(MapType::is_p2p) && w.is_some_and(MapType::is_p2p))
                });
                if !refused {
                    p.push(format!(
                        "fell back although the kernel's verdicts allow P2P ({kernel_text})"
                    ));
                }
            } else if run.mode.as_deref() == Some("direct") && c.via.is_none() && !both.is_empty() {
                p.push(format!(
                    "bounced, but the kernel lets both drives reach P2P memory ({kernel_text})"
                ));
            }
            if run.reason.is_none() && run.fallback.is_none() {
                p.push("bounced without saying why (no reason in the report)".into());
            }
        }
    }
    CopyEval {
        run,
        kernel: kernel_text,
        problems: p,
    }
}

#[cfg(test)]
mod tests {
    use super::super::records::copy_from_files;
    use super::*;
    use peerdma_p2p::oracle;

    const VERDICTS: &str = "# peerdma-oracle v1\n# cpu_supports_p2pdma 0\n\
        dev 0000:03:00.0 acs_redir 0 host_bridge - wl_same 0 wl_cross 0\n\
        dev 0000:04:00.0 acs_redir 0 host_bridge - wl_same 0 wl_cross 0\n\
        dev 0000:05:00.0 acs_redir 0 host_bridge - wl_same 0 wl_cross 0\n\
        pair 0000:03:00.0 0000:04:00.0 bus_addr 4\npair 0000:04:00.0 0000:03:00.0 bus_addr 4\n\
        pair 0000:03:00.0 0000:05:00.0 not_supported 6\npair 0000:05:00.0 0000:03:00.0 not_supported 6\n\
        pair 0000:04:00.0 0000:05:00.0 not_supported 6\npair 0000:05:00.0 0000:04:00.0 not_supported 6\n";

    fn case(toml_text: &str) -> CopyCase {
        toml::from_str(toml_text).unwrap()
    }

    fn eval(c: &CopyCase, json: &str, err: &str, rc: i32, check: &str) -> CopyEval {
        let k = oracle::parse_verdicts(VERDICTS, "test").unwrap();
        let providers: Vec<Bdf> = ["0000:03:00.0", "0000:04:00.0", "0000:05:00.0"]
            .iter()
            .map(|b| b.parse().unwrap())
            .collect();
        let run = copy_from_files(c, json, err, Some(rc), check).unwrap();
        evaluate_copy(c, run, &k, &providers)
    }

    const EXACT: &str = "src_dev=/dev/nvme0n1\ndst_dev=/dev/nvme1n1\npattern=exact\n\
        unchanged=differ 0\nzeros=no\noutside=untouched\n";

    fn p2p_report(equal: bool) -> String {
        format!(
            r#"{{"path": "p2p_bus_addr", "bytes": 8388608, "mode": "direct",
            "read_leg": "bus_addr", "write_leg": "bus_addr",
            "staging": {{"kind": "p2p", "provider": "0000:03:00.0"}},
            "verify": {{"equal": {equal}, "first_difference": {}}}}}"#,
            if equal { "null" } else { "0" }
        )
    }

    #[test]
    fn a_p2p_copy_is_held_to_the_kernel_and_the_byte_check() {
        let c = case(
            "src = \"0000:03:00.0\"\ndst = \"0000:04:00.0\"\nexpect_path = \"p2p_bus_addr\"\n",
        );
        let e = eval(&c, &p2p_report(true), "", 0, EXACT);
        assert!(e.as_expected(), "{:?}", e.problems);
        assert_eq!(e.kernel, "0000:03:00.0: read bus_addr, write bus_addr");
        assert_eq!(e.run.outcome(), "p2p_bus_addr, verify equal, bytes exact");
        // --verify says equal, the bytes are wrong: the worst case, named.
        let wrong = EXACT.replace("pattern=exact", "pattern=differ 0");
        let e = eval(&c, &p2p_report(true), "", 0, &wrong);
        assert!(
            e.problems.iter().any(|p| p.contains("SILENT DISAGREEMENT")),
            "{:?}",
            e.problems
        );
        // The report's legs must be the kernel's.
        let json = p2p_report(true).replace(
            r#""write_leg": "bus_addr""#,
            r#""write_leg": "thru_host_bridge""#,
        );
        let e = eval(&c, &json, "", 0, EXACT);
        assert!(
            e.problems.iter().any(|p| p.contains("not the kernel's")),
            "{:?}",
            e.problems
        );
        // Bytes outside the range must stay.
        let e = eval(
            &c,
            &p2p_report(true),
            "",
            0,
            &EXACT.replace("untouched", "changed after the range"),
        );
        assert!(
            e.problems.iter().any(|p| p.contains("outside")),
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn wrong_bytes_must_be_caught_by_verify() {
        let c = case("src = \"0000:03:00.0\"\ndst = \"0000:04:00.0\"\nexpect_path = \"p2p_bus_addr\"\nexpect_verify = \"mismatch\"\n");
        let zeros = EXACT
            .replace("pattern=exact", "pattern=differ 0")
            .replace("zeros=no", "zeros=yes");
        let e = eval(&c, &p2p_report(false), "", 1, &zeros);
        assert!(e.as_expected(), "{:?}", e.problems);
        assert_eq!(
            e.run.outcome(),
            "p2p_bus_addr, verify mismatch, bytes wrong (differ 0: zeros)"
        );
        // A mismatch must not exit 0.
        let e = eval(&c, &p2p_report(false), "", 0, &zeros);
        assert!(
            e.problems.iter().any(|p| p.contains("exit status")),
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn refusals_and_bounces_are_held_to_the_kernel() {
        let c = case("src = \"0000:03:00.0\"\ndst = \"0000:05:00.0\"\nno_bounce = true\nexpect_refused = true\n");
        let untouched = EXACT
            .replace("pattern=exact", "pattern=differ 0")
            .replace("unchanged=differ 0", "unchanged=exact");
        let err = "peerdma: error: cannot copy /dev/nvme0n1 (block device on 0000:03:00.0) -> /dev/nvme2n1 (block device on 0000:05:00.0) peer to peer: ...";
        let e = eval(&c, "", err, 2, &untouched);
        assert!(e.as_expected(), "{:?}", e.problems);
        assert_eq!(e.kernel, "no published P2P memory reachable by both");
        let e = eval(&c, "", "peerdma: error: no", 2, &untouched);
        assert!(
            e.problems.iter().any(|p| p.contains("does not name")),
            "{:?}",
            e.problems
        );
        // Bouncing where the kernel allows P2P is a disagreement.
        let c = case("src = \"0000:03:00.0\"\ndst = \"0000:04:00.0\"\nexpect_path = \"bounced\"\n");
        let json = r#"{"path": "bounced", "bytes": 8388608, "mode": "direct", "reason": "why not",
            "staging": {"kind": "host", "provider": null}, "verify": {"equal": true}}"#;
        let e = eval(&c, json, "", 0, EXACT);
        assert!(
            e.problems
                .iter()
                .any(|p| p.contains("lets both drives reach")),
            "{:?}",
            e.problems
        );
    }
}
