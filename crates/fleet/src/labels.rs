//! Node labels for Kubernetes node-feature-discovery: a feature file for
//! its `local` source, which reads every file in
//! `/etc/kubernetes/node-feature-discovery/features.d/`.
//!
//! The format (NFD's customization guide, "Local feature source"): one
//! `<namespace>/<name>[=<value>]` per line, `#` starts a comment, and a
//! `# +expiry-time=<RFC 3339 time>` comment line makes the lines after it
//! expire. A file over 64 KiB is ignored, and a file should be replaced
//! by a rename so NFD never reads half of one (it skips dot files while they
//! are written). Names and values follow Kubernetes' label syntax, which
//! [`check_label`] enforces on every label written.
//!
//! The labels say, for each two kinds of device the node has (GPUs,
//! accelerators, NICs, NVMe drives), the best P2P verdict between them and
//! how many pairs can do P2P, so that a pod can ask for a node where a GPU
//! and a drive reach each other by bus address:
//!
//! ```text
//! feature.node.kubernetes.io/peerdma-gpu-nvme=bus_addr
//! feature.node.kubernetes.io/peerdma-gpu-nvme.p2p-pairs=16
//! ```

use crate::kinds::{kind_pairs, DeviceKind};
use crate::Error;
use peerdma_p2p::P2pIndex;
use peerdma_pci::Topology;
use serde::Serialize;

/// The namespace NFD always accepts (other namespaces must not be denied
/// by nfd-master's `-deny-label-ns`).
pub const DEFAULT_PREFIX: &str = "feature.node.kubernetes.io";

/// The largest feature file NFD reads.
pub const NFD_FILE_LIMIT: usize = 64 << 10;

/// One node label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Label {
    /// `namespace/name`.
    pub name: String,
    pub value: String,
}

/// The labels for a machine, under `prefix` (a DNS subdomain such as
/// [`DEFAULT_PREFIX`]).
///
/// - `peerdma-<kind>-<kind>`: the best verdict between devices of the two
///   kinds: `bus_addr`, `thru_host_bridge` or `not_supported` (kinds `gpu`,
///   `accel`, `nic`, `nvme`, in that order; `gpu-gpu` for GPUs among
///   themselves);
/// - `peerdma-<kind>-<kind>.pairs`, `.p2p-pairs`, `.bus-addr-pairs`: how
///   many pairs there are, can do P2P, can do it by bus address;
/// - `peerdma-acs-redirect`: `true` when a function redirects peer
///   requests upstream (ACS RR, CR or EC), `false` when none does,
///   `unknown` when the capture could not read some ACS registers (not
///   root) and none of those it read redirects;
/// - `peerdma-links-degraded`: links trained below what they can do;
/// - `peerdma-p2pmem-providers`: functions that publish P2P memory.
pub fn labels(topo: &Topology, prefix: &str) -> Result<Vec<Label>, Error> {
    check_prefix(prefix)?;
    let idx = P2pIndex::new(topo);
    let mut out = Vec::new();
    let mut push = |name: String, value: String| {
        out.push(Label {
            name: format!("{prefix}/{name}"),
            value,
        })
    };
    for kp in kind_pairs(&idx) {
        let base = format!("peerdma-{}-{}", kp.kinds[0].name(), kp.kinds[1].name());
        push(base.clone(), kp.best.as_str().into());
        push(format!("{base}.pairs"), kp.pairs.to_string());
        push(format!("{base}.p2p-pairs"), kp.p2p.to_string());
        push(format!("{base}.bus-addr-pairs"), kp.bus_addr.to_string());
    }
    let states: Vec<Option<bool>> = topo.functions().iter().map(|f| f.acs.redirects()).collect();
    let redirect = if states.contains(&Some(true)) {
        Some(true)
    } else if states.contains(&None) {
        None
    } else {
        Some(false)
    };
    push(
        "peerdma-acs-redirect".into(),
        match redirect {
            Some(true) => "true",
            Some(false) => "false",
            None => "unknown",
        }
        .into(),
    );
    let degraded = topo
        .functions()
        .iter()
        .filter(|f| f.link.is_some_and(|l| l.degraded()))
        .count();
    push("peerdma-links-degraded".into(), degraded.to_string());
    let providers = topo
        .functions()
        .iter()
        .filter(|f| f.p2pmem.is_some_and(|p| p.published))
        .count();
    push("peerdma-p2pmem-providers".into(), providers.to_string());
    for l in &out {
        check_label(&l.name, &l.value).map_err(Error::Label)?;
    }
    Ok(out)
}

/// Which kinds of device the machine has, for messages.
pub fn kinds_present(topo: &Topology) -> Vec<DeviceKind> {
    let mut k: Vec<DeviceKind> = topo.functions().iter().filter_map(DeviceKind::of).collect();
    k.sort();
    k.dedup();
    k
}

/// The feature file: a comment per line of `comments`, the expiry
/// directive when given (an RFC 3339 time), then the labels.
pub fn features_file(labels: &[Label], comments: &[String], expiry: Option<&str>) -> String {
    let mut s = String::new();
    for c in comments {
        // A comment is one line whatever it quotes.
        let c: String = c
            .chars()
            .map(|ch| if ch.is_control() { ' ' } else { ch })
            .collect();
        s.push_str("# ");
        s.push_str(c.trim_end());
        s.push('\n');
    }
    if let Some(t) = expiry {
        s.push_str("# +expiry-time=");
        s.push_str(t);
        s.push('\n');
    }
    for l in labels {
        s.push_str(&l.name);
        s.push('=');
        s.push_str(&l.value);
        s.push('\n');
    }
    s
}

fn check_prefix(prefix: &str) -> Result<(), Error> {
    let bad = |why: &str| Error::Label(format!("label prefix '{prefix}' {why}"));
    if prefix.is_empty() || prefix.len() > 253 {
        return Err(bad("must be a DNS subdomain of 1 to 253 characters"));
    }
    for part in prefix.split('.') {
        let ok = !part.is_empty()
            && part.len() <= 63
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(bad(
                "is not a DNS subdomain (lowercase letters, digits, '-' and '.', like example.com)",
            ));
        }
    }
    Ok(())
}

/// Whether `name=value` is a valid Kubernetes label: `name` is an optional
/// DNS-subdomain prefix and `/`, then 1 to 63 characters of letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit;
/// `value` is empty or the same as a name.
pub fn check_label(name: &str, value: &str) -> Result<(), String> {
    let (prefix, short) = match name.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, name),
    };
    if let Some(p) = prefix {
        check_prefix(p).map_err(|e| e.to_string())?;
    }
    let segment = |s: &str| {
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if !segment(short) {
        return Err(format!(
            "label name '{name}' is not a valid Kubernetes label name"
        ));
    }
    if !value.is_empty() && !segment(value) {
        return Err(format!(
            "label {name}: value '{value}' is not a valid Kubernetes label value"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_syntax() {
        assert!(check_label("feature.node.kubernetes.io/peerdma-gpu-nvme", "bus_addr").is_ok());
        assert!(check_label("a/b", "").is_ok());
        assert!(check_label("a/-b", "x").is_err());
        assert!(check_label("a/b", "x y").is_err());
        assert!(check_label("a/b", &"v".repeat(64)).is_err());
        assert!(check_label(&format!("a/{}", "n".repeat(64)), "v").is_err());
        assert!(check_label("Upper.case/b", "v").is_err());
        assert!(check_prefix("example.com").is_ok());
        assert!(check_prefix("example..com").is_err());
    }

    #[test]
    fn features_file_format() {
        let l = vec![Label {
            name: "example.com/x".into(),
            value: "1".into(),
        }];
        let f = features_file(&l, &["a\nb".into()], Some("2030-01-01T00:00:00Z"));
        assert_eq!(
            f,
            "# a b\n# +expiry-time=2030-01-01T00:00:00Z\nexample.com/x=1\n"
        );
    }
}
