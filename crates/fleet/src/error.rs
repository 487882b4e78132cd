use std::path::PathBuf;

/// What can go wrong; each message is one line naming the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A snapshot or other source could not be read.
    #[error(transparent)]
    Pci(#[from] peerdma_pci::Error),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{} is not a directory (peerdma fleet reads a directory of snapshots)", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} holds no snapshots (no *.json files in it or below it); write them with `peerdma snapshot -o FILE.json`", .0.display())]
    EmptyFleet(PathBuf),
    /// A label that Kubernetes would refuse.
    #[error("{0}")]
    Label(String),
}
