//! What one scenario's evaluation looks like to people: the summaries and
//! findings `cargo xtask vm` prints, and the per-scenario table.

use super::Evaluation;
use anyhow::Result;

impl Evaluation {
    /// `ok 2/2`, `wrong_bytes (expected) 1/1`, `-`.
    pub fn smoke_summary(&self) -> String {
        if self.smoke.is_empty() {
            return "-".into();
        }
        let mut outcomes: Vec<String> = Vec::new();
        for s in &self.smoke {
            let o = if s.as_expected() {
                s.outcome.clone()
            } else {
                format!("{} (expected {})", s.outcome, s.expect)
            };
            if !outcomes.contains(&o) {
                outcomes.push(o);
            }
        }
        let good = self.smoke.iter().filter(|s| s.as_expected()).count();
        format!(
            "{} ({good}/{} as expected)",
            outcomes.join(", "),
            self.smoke.len()
        )
    }

    /// `p2p_bus_addr 2, refused 1 (3/3 as expected)`, `-`.
    pub fn copy_summary(&self) -> String {
        if self.copies.is_empty() {
            return "-".into();
        }
        let mut counts: Vec<(String, usize)> = Vec::new();
        for c in &self.copies {
            let mut k = match &c.run.path {
                Some(p) if c.run.fallback.is_some() => format!("{p} after fallback"),
                Some(p) => p.clone(),
                None => c.run.outcome(),
            };
            if c.run.verify.as_deref() == Some("mismatch") {
                k.push_str(" + verify mismatch");
            }
            match counts.iter_mut().find(|(n, _)| *n == k) {
                Some((_, n)) => *n += 1,
                None => counts.push((k, 1)),
            }
        }
        let good = self.copies.iter().filter(|c| c.as_expected()).count();
        format!(
            "{} ({good}/{} as expected)",
            counts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.copies.len()
        )
    }

    /// `proposed/confirmed`: the distinct kernel-parameter fixes peerdma
    /// proposes, and how many the kernel booted with them confirmed.
    pub fn fixes_summary(&self) -> String {
        let confirmed = self.fixes.iter().filter(|f| f.confirmed()).count();
        format!("{}/{confirmed}", self.fixes_proposed)
    }

    /// The `observed` column: the path each probe and copy was observed
    /// to take, from the kernel's DMA mapping events.
    pub fn observed_summary(&self) -> String {
        super::observed::summary(&self.traced.iter().collect::<Vec<_>>())
    }

    /// Lines worth printing: disagreements, unmet expectations, and smoke
    /// tests and copies that moved wrong bytes even where expected (a finding).
    pub fn details(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in [&self.snapshot, &self.root] {
            out.extend(c.render_problems().lines().map(str::to_string));
        }
        out.extend(self.problems.iter().cloned());
        for s in &self.smoke {
            if s.outcome == "wrong_bytes" || s.outcome == "error" || !s.agrees_with_verdict {
                out.push(format!(
                    "FINDING: probe {} ({}): {}{}",
                    s.label(),
                    s.verdict,
                    s.message,
                    if s.as_expected() {
                        " [the scenario expects this]"
                    } else {
                        ""
                    }
                ));
            }
        }
        for c in &self.copies {
            let wrong = c.run.verify.as_deref() == Some("mismatch") || c.run.pattern != "exact";
            if c.run.path.is_some() && wrong {
                let observed = self
                    .traced
                    .iter()
                    .find(|t| {
                        t.label.starts_with("copy ")
                            && t.label.contains(&c.run.label())
                            && t.label.contains(&c.run.range())
                    })
                    .map(|t| format!("; observed: {}", t.observed()))
                    .unwrap_or_default();
                out.push(format!(
                    "FINDING: copy {} ({}; kernel {}): {}{observed}{}",
                    c.run.label(),
                    c.run.range(),
                    c.kernel,
                    c.run.outcome(),
                    if c.as_expected() {
                        " [the scenario expects this]"
                    } else {
                        ""
                    }
                ));
            }
        }
        out
    }
}

/// The per-scenario table.
pub fn table(rows: &[(String, Result<&Evaluation, String>)]) -> String {
    let mut lines: Vec<[String; 10]> = vec![[
        "scenario",
        "functions",
        "pairs",
        "agree (snapshot)",
        "agree (root/)",
        "acs lists",
        "fixes proposed/confirmed",
        "smoke test",
        "copy",
        "observed (--trace)",
    ]
    .map(String::from)];
    for (name, r) in rows {
        lines.push(match r {
            Ok(e) => {
                let acs = e.root.acs_compared.map_or("-".into(), |n| {
                    let bad = e
                        .root
                        .acs_mismatches
                        .len()
                        .max(e.snapshot.acs_mismatches.len());
                    format!("{}/{n}", n - bad.min(n))
                });
                [
                    name.clone(),
                    e.functions.to_string(),
                    e.kernel_pairs.to_string(),
                    e.snapshot.pairs_agreeing.to_string(),
                    e.root.pairs_agreeing.to_string(),
                    acs,
                    e.fixes_summary(),
                    e.smoke_summary(),
                    e.copy_summary(),
                    e.observed_summary(),
                ]
            }
            Err(why) => {
                let mut l = [
                    name.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                ];
                l[7] = format!("FAILED: {}", why.lines().next().unwrap_or(""));
                l
            }
        });
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for l in &lines {
        let mut line = format!("{:<w$}", l[0], w = widths[0]);
        for i in 1..7 {
            line.push_str(&format!("  {:>w$}", l[i], w = widths[i]));
        }
        line.push_str(&format!("  {:<w$}  ", l[7], w = widths[7]));
        line.push_str(&format!("{:<w$}  ", l[8], w = widths[8]));
        line.push_str(&l[9]);
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_up() {
        let rows = vec![(
            "only-failed".to_string(),
            Err("no kernel\nmore".to_string()),
        )];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("scenario     functions"), "{t}");
        assert!(lines[1].ends_with("FAILED: no kernel"), "{t}");
    }
}
