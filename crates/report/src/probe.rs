//! Probe results for the report: `peerdma probe` run on pairs the user
//! names (it writes to scratch regions of real drives, so the report never
//! picks pairs by itself), or the reason each could not run: the report is
//! of another machine, not root, no such function.

use maud::{html, Markup};
use peerdma_linux::probe::{self, ProbeOptions};
use serde_json::Value;

/// One probe asked for.
#[derive(Clone, Debug)]
pub enum ProbeEntry {
    /// It ran: the probe's report, as `peerdma probe --json` prints it, and
    /// as text.
    Ran {
        provider: String,
        client: String,
        json: Value,
        text: String,
    },
    /// It could not run, and why.
    NotRun {
        provider: String,
        client: String,
        reason: String,
    },
}

/// `PROVIDER,CLIENT` from `--probe`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once(',') {
        Some((p, c)) if !p.trim().is_empty() && !c.trim().is_empty() && !c.contains(',') => {
            Ok((p.trim().to_string(), c.trim().to_string()))
        }
        _ => Err(format!(
            "--probe {s}: expected PROVIDER,CLIENT (two functions, by BDF or name: --probe 0000:03:00.0,0000:04:00.0)"
        )),
    }
}

/// Whether this process runs as root.
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Run the probes on this machine. `live` says whether the report is of
/// this machine; probes of another machine's report are not run.
pub fn run(pairs: &[(String, String)], live: bool, origin: &str) -> Vec<ProbeEntry> {
    pairs
        .iter()
        .map(|(p, c)| {
            let not_run = |reason: String| ProbeEntry::NotRun {
                provider: p.clone(),
                client: c.clone(),
                reason,
            };
            if !live {
                return not_run(format!(
                    "probes move real bytes on this machine, and this report is of {origin}: run peerdma report --live --probe on the machine itself"
                ));
            }
            if !is_root() {
                return not_run(
                    "probes need root (they allocate P2P memory and open drives with O_DIRECT): run as root".into(),
                );
            }
            match probe::run(&ProbeOptions::new(p.clone(), c.clone())) {
                Ok(r) => ProbeEntry::Ran {
                    provider: p.clone(),
                    client: c.clone(),
                    json: serde_json::to_value(&r).unwrap_or(Value::Null),
                    text: r.render(),
                },
                Err(e) => not_run(error_line(&e)),
            }
        })
        .collect()
}

fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

fn s<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// One probe in the report.
pub fn render(e: &ProbeEntry) -> Markup {
    match e {
        ProbeEntry::NotRun {
            provider,
            client,
            reason,
        } => html! {
            div class="probe" {
                h3 { (provider) " → " (client) ": not run" }
                p class="note" { (reason) }
            }
        },
        ProbeEntry::Ran {
            provider,
            client,
            json,
            text,
        } => {
            let agrees = json.get("agrees").and_then(Value::as_bool) == Some(true);
            let outcome = s(json, "outcome");
            let class = match (outcome, agrees) {
                ("ok", true) => "bus",
                (_, true) => "hb",
                _ => "ns",
            };
            let empty = Vec::new();
            let transfers = json
                .get("transfers")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            html! {
                div class="probe" {
                    h3 { (provider) " → " (client) ": " span class={"chip " (class)} { (outcome) }
                        @if agrees { " as the verdict predicts" } @else { " — not what the verdict predicts (" (s(json, "expected")) ")" } }
                    p { (s(json, "message")) }
                    @if !transfers.is_empty() {
                        table class="list" {
                            tr { th { "transfer" } th { "what" } th { "verdict" } th { "expected" } th { "result" } th { "errno" } }
                            @for tr in transfers {
                                tr {
                                    td { (s(tr, "transfer")) }
                                    td { (s(tr, "what")) }
                                    td { (tr.get("verdict").map(|v| s(v, "map_type")).unwrap_or("")) }
                                    td { (s(tr, "expected")) }
                                    td { (s(tr, "result")) }
                                    td { (s(tr, "errno")) }
                                }
                            }
                        }
                    }
                    details { summary { "full probe report" } pre { (text) } }
                }
            }
        }
    }
}

impl ProbeEntry {
    /// A probe result read back from `peerdma probe --json` output.
    pub fn from_json(json: Value) -> ProbeEntry {
        ProbeEntry::Ran {
            provider: s(&json, "provider").to_string(),
            client: s(&json, "client").to_string(),
            text: serde_json::to_string_pretty(&json).unwrap_or_default(),
            json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_two_functions() {
        assert_eq!(
            parse_pair("gpu0, nvme0").unwrap(),
            ("gpu0".to_string(), "nvme0".to_string())
        );
        for bad in ["gpu0", "gpu0,", ",x", "a,b,c"] {
            let e = parse_pair(bad).unwrap_err();
            assert!(e.contains("expected PROVIDER,CLIENT"), "{e}");
        }
    }

    #[test]
    fn probes_of_another_machine_are_not_run_and_say_why() {
        let got = run(
            &[("gpu0".into(), "nvme0".into())],
            false,
            "preset 'dual-xeon'",
        );
        match &got[0] {
            ProbeEntry::NotRun { reason, .. } => {
                assert!(
                    reason.contains("this report is of preset 'dual-xeon'"),
                    "{reason}"
                );
                assert!(reason.contains("--live"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
