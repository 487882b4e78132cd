//! Text views for people: the P2P matrix with its legend.

use crate::index::Matrix;
use crate::path::link_class;
use crate::MapType;
use peerdma_pci::render::short_name;
use peerdma_pci::{FnId, Topology};

/// What the matrix cells mean.
pub const LEGEND: &str = "\
Legend (row = provider whose memory is accessed, column = client doing the DMA):
  B<n>  P2P by PCI bus address, through switches only; n = the kernel's distance
  H<n>  P2P through the host bridge (root complex); IOMMU-translated when one is on
  --    not supported: I/O between the two bounces through host memory
  X     the same function
  INT two functions of one device, PIX one switch or bridge, PXB several switches,
  PHB the host bridge, NODE between host bridges of one NUMA node, SYS between NUMA nodes";

/// The cell text for a pair, e.g. `B4 PIX`.
pub fn cell(topo: &Topology, m: &Matrix, a: FnId, b: FnId) -> String {
    if a == b {
        return "X".into();
    }
    let (map, dist) = m.get(a, b);
    let v = match map {
        MapType::BusAddr => format!("B{dist}"),
        MapType::ThruHostBridge => format!("H{dist}"),
        _ => "--".into(),
    };
    format!("{v} {}", link_class(topo, a, b))
}

/// The matrix over `fns`, rows providers, columns clients.
pub fn matrix_table(topo: &Topology, m: &Matrix, fns: &[FnId]) -> String {
    matrix_table_painted(topo, m, fns, &|_, text| text.to_string())
}

/// [`matrix_table`] with each cell's text passed through `paint` with the
/// pair's map type (`None` for a function with itself), e.g. to colour
/// it; columns are aligned on the text before painting.
pub fn matrix_table_painted(
    topo: &Topology,
    m: &Matrix,
    fns: &[FnId],
    paint: &dyn Fn(Option<MapType>, &str) -> String,
) -> String {
    let names: Vec<String> = fns.iter().map(|&f| short_name(topo.function(f))).collect();
    let cells: Vec<Vec<String>> = fns
        .iter()
        .map(|&a| fns.iter().map(|&b| cell(topo, m, a, b)).collect())
        .collect();
    let kinds: Vec<Vec<Option<MapType>>> = fns
        .iter()
        .map(|&a| {
            fns.iter()
                .map(|&b| (a != b).then(|| m.get(a, b).0))
                .collect()
        })
        .collect();
    let row_w = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let col_w: Vec<usize> = (0..fns.len())
        .map(|j| {
            let c = cells.iter().map(|r| r[j].len()).max().unwrap_or(0);
            c.max(names[j].chars().count())
        })
        .collect();
    let mut s = String::new();
    pad(&mut s, "", row_w);
    for (j, n) in names.iter().enumerate() {
        s.push_str("  ");
        pad(&mut s, n, col_w[j]);
    }
    let trimmed = s.trim_end().len();
    s.truncate(trimmed);
    s.push('\n');
    for (i, n) in names.iter().enumerate() {
        pad(&mut s, n, row_w);
        for (j, c) in cells[i].iter().enumerate() {
            s.push_str("  ");
            s.push_str(&paint(kinds[i][j], c));
            let n = col_w[j].saturating_sub(c.chars().count());
            s.extend(std::iter::repeat_n(' ', n));
        }
        let trimmed = s.trim_end().len();
        s.truncate(trimmed);
        s.push('\n');
    }
    s
}

/// `text` left-aligned in `width` characters. By hand, because a format
/// width (`{:w$}`) above 65,535 panics, and names come from input files.
fn pad(s: &mut String, text: &str, width: usize) {
    s.push_str(text);
    let n = width.saturating_sub(text.chars().count());
    s.extend(std::iter::repeat_n(' ', n));
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdma_pci::Source;

    #[test]
    fn workstation_matrix() {
        let t = Source::Preset("workstation".into()).load().unwrap();
        let m = Matrix::compute(&t);
        let fns: Vec<FnId> = ["gpu", "gpu-audio", "nvme0", "nvme1"]
            .iter()
            .map(|n| t.lookup(n).unwrap())
            .collect();
        let out = matrix_table(&t, &m, &fns);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["gpu", "gpu-audio", "nvme0", "nvme1"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["gpu", "X", "B2", "INT", "--", "PHB", "--", "PHB"]
        );
        assert_eq!(
            lines[4].split_whitespace().collect::<Vec<_>>(),
            ["nvme1", "--", "PHB", "--", "PHB", "--", "PHB", "X"]
        );
    }

    #[test]
    fn painted_cells_keep_the_columns() {
        let t = Source::Preset("workstation".into()).load().unwrap();
        let m = Matrix::compute(&t);
        let fns: Vec<FnId> = ["gpu", "gpu-audio", "nvme0"]
            .iter()
            .map(|n| t.lookup(n).unwrap())
            .collect();
        let painted = matrix_table_painted(&t, &m, &fns, &|k, text| match k {
            Some(MapType::BusAddr) => format!("<{text}>"),
            _ => text.to_string(),
        });
        // With the marks taken out, the same table.
        assert_eq!(painted.replace(['<', '>'], ""), matrix_table(&t, &m, &fns));
        assert!(painted.contains("<B2 INT>"), "{painted}");
        assert!(
            !painted.contains("<X>") && !painted.contains("<--"),
            "{painted}"
        );
    }

    #[test]
    fn names_longer_than_a_format_width_are_laid_out() {
        // A format width above u16::MAX panics; labels come from files.
        let long = "n".repeat(70_000);
        let text = format!(
            "[cpu]\nvendor = \"amd\"\nfamily = 0x19\n[[host_bridge]]\nname = \"hb\"\n\
             [[device]]\nname = \"rp\"\ntype = \"root_port\"\nparent = \"hb\"\n\
             [[device]]\nname = \"{long}\"\ntype = \"endpoint\"\nparent = \"rp\"\n\
             [[device]]\nname = \"short\"\ntype = \"endpoint\"\nparent = \"rp\"\nfunction = 1\n"
        );
        let raw = peerdma_pci::desc::parse_description(&text, "long.toml").unwrap();
        let t = peerdma_pci::Topology::from_raw(raw, "long.toml").unwrap();
        let m = Matrix::compute(&t);
        let fns: Vec<FnId> = [long.as_str(), "short"]
            .iter()
            .map(|n| t.lookup(n).unwrap())
            .collect();
        let out = matrix_table(&t, &m, &fns);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "header and two rows");
        assert_eq!(lines[1].split_whitespace().next(), Some(long.as_str()));
        assert_eq!(lines[2].split_whitespace().next(), Some("short"));
        // Columns line up: each row's cells start where the header's do.
        let col = lines[0].find("short").unwrap();
        let cell = |row: &str| {
            row.split_at(col)
                .1
                .split_whitespace()
                .next()
                .map(String::from)
        };
        assert_eq!(cell(lines[1]).as_deref(), Some("B2"));
        assert_eq!(cell(lines[2]).as_deref(), Some("X"));
    }
}
