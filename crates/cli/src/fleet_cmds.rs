//! `peerdma labels`, `metrics`, `diff` and `fleet`: peerdma for fleets,
//! thin over peerdma-fleet.

use super::{load_ids, print, print_json, SourceArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use peerdma_fleet::JSON_SCHEMA;
use peerdma_pci::{Source, Topology};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `peerdma labels`.
#[derive(Args)]
pub struct LabelsArgs {
    /// The label namespace [default: feature.node.kubernetes.io, which
    /// node-feature-discovery always accepts].
    #[arg(long, value_name = "DNS-SUBDOMAIN")]
    prefix: Option<String>,
    /// Make the labels expire this long after writing (`# +expiry-time`),
    /// so a node whose writer stopped loses them: `10m`, `2h`, `1day`.
    #[arg(long, value_name = "DURATION")]
    expires_in: Option<String>,
    /// Write the feature file here, whole (a dot file renamed into place)
    /// [default: standard output].
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// `peerdma metrics`.
#[derive(Args)]
pub struct MetricsArgs {
    /// Write the metrics here, whole (a dot file renamed into place), e.g.
    /// a `.prom` file in node_exporter's --collector.textfile.directory
    /// [default: standard output].
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// `peerdma diff`.
#[derive(Args)]
pub struct DiffArgs {
    /// The first machine: a snapshot (or a --root directory).
    a: PathBuf,
    /// The second machine: a snapshot (or a --root directory) [default: the
    /// source option given, e.g. --live].
    b: Option<PathBuf>,
}

/// `peerdma fleet`.
#[derive(Args)]
pub struct FleetArgs {
    /// A directory of snapshots (`*.json`, also in subdirectories).
    dir: PathBuf,
    /// Threads reading snapshots [default: one per core].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn write_or_print(output: &Option<PathBuf>, text: &str, what: &str) -> Result<()> {
    match output {
        Some(p) if p.as_os_str() != "-" => {
            peerdma_pci::write_file(p, text.as_bytes(), what)?;
            Ok(())
        }
        _ => print(text),
    }
}

pub fn labels(topo: &Topology, source: &Source, a: &LabelsArgs, json: bool) -> Result<ExitCode> {
    use peerdma_fleet::labels;
    let prefix = a.prefix.as_deref().unwrap_or(labels::DEFAULT_PREFIX);
    let list = labels::labels(topo, prefix)?;
    let expiry = match &a.expires_in {
        Some(d) => {
            let dur = humantime::parse_duration(d).with_context(|| {
                format!("--expires-in {d}: not a duration like 10m, 2h or 1day")
            })?;
            let at = std::time::SystemTime::now()
                .checked_add(dur)
                .with_context(|| format!("--expires-in {d}: too far in the future"))?;
            Some(humantime::format_rfc3339_seconds(at).to_string())
        }
        None => None,
    };
    if json {
        let v = json!({
            "schema": JSON_SCHEMA,
            "source": source.label(),
            "expiry_time": expiry,
            "labels": list,
        });
        return print_json(&v).map(|_| ExitCode::SUCCESS);
    }
    let comments = vec![
        format!(
            "node-feature-discovery labels written by peerdma {} (peerdma labels)",
            env!("CARGO_PKG_VERSION")
        ),
        format!("from {}", source.label()),
    ];
    let text = labels::features_file(&list, &comments, expiry.as_deref());
    if text.len() > labels::NFD_FILE_LIMIT {
        bail!(
            "the feature file would be {} bytes, over node-feature-discovery's limit of {}",
            text.len(),
            labels::NFD_FILE_LIMIT
        );
    }
    write_or_print(&a.output, &text, "a feature file")?;
    Ok(ExitCode::SUCCESS)
}

pub fn metrics(topo: &Topology, a: &MetricsArgs, json: bool) -> Result<ExitCode> {
    if json {
        bail!("metrics prints the Prometheus text format; --json does not apply (peerdma matrix --json has the verdicts)");
    }
    let text = peerdma_fleet::metrics::metrics(topo);
    write_or_print(&a.output, &text, "Prometheus metrics")?;
    Ok(ExitCode::SUCCESS)
}

/// A path given on the command line: a directory is a --root tree, else a snapshot.
fn source_of(p: &Path) -> Source {
    if p.is_dir() {
        Source::Root(p.to_path_buf())
    } else {
        Source::Snapshot(p.to_path_buf())
    }
}

pub fn diff(
    src: &SourceArgs,
    a: &DiffArgs,
    pci_ids: &Option<PathBuf>,
    json: bool,
) -> Result<ExitCode> {
    let given = src.given();
    let second = match (&a.b, given) {
        (Some(b), false) => source_of(b),
        (Some(_), true) => bail!(
            "diff compares two machines: give a second snapshot or a source option (--live, --snapshot, ...), not both"
        ),
        (None, true) => src.source()?,
        (None, false) => bail!(
            "diff compares two machines: give a second snapshot, or --live to compare {} with this machine",
            a.a.display()
        ),
    };
    let ta = source_of(&a.a).load()?;
    let tb = second.load()?;
    let ids = load_ids(pci_ids)?;
    let d = peerdma_fleet::diff::diff(&ta, &tb, &ids);
    if json {
        let mut v = serde_json::to_value(&d)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("schema".into(), json!(JSON_SCHEMA));
        }
        print_json(&v)?;
    } else {
        print(&d.render())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn fleet(a: &FleetArgs, pci_ids: &Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let ids = load_ids(pci_ids)?;
    let opts = peerdma_fleet::fleet::FleetOptions {
        threads: a.threads.unwrap_or(0),
        ..Default::default()
    };
    let f = peerdma_fleet::fleet::summarise(&a.dir, &ids, &opts)?;
    if json {
        let mut v = serde_json::to_value(&f)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("schema".into(), json!(JSON_SCHEMA));
        }
        print_json(&v)?;
    } else {
        print(&f.render())?;
    }
    Ok(if f.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
