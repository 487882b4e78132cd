//! Where a topology comes from.

use crate::error::{Error, Result};
use crate::file::{read_input, write_whole, DESCRIPTION_CAP, SNAPSHOT_CAP};
use crate::raw::RawMachine;
use crate::{desc, presets, sysfs, Topology};
use std::path::{Path, PathBuf};

/// A machine to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This machine's sysfs and `/proc/cpuinfo`.
    Live,
    /// A directory holding `sys/` and `proc/cpuinfo` as on a live machine.
    Root(PathBuf),
    /// A snapshot written by `peerdma snapshot`.
    Snapshot(PathBuf),
    /// A hand-written description file (TOML).
    Description(PathBuf),
    /// A built-in preset.
    Preset(String),
    /// hwloc XML (`lstopo --of xml`).
    Hwloc(PathBuf),
}

impl Default for Source {
    fn default() -> Self {
        Source::Preset(presets::DEFAULT.to_string())
    }
}

impl Source {
    /// Read the capture.
    pub fn capture(&self) -> Result<RawMachine> {
        match self {
            Source::Live => sysfs::read_root(Path::new("/")),
            Source::Root(dir) => sysfs::read_root(dir),
            Source::Snapshot(path) => read_snapshot(path),
            Source::Description(path) => read_description(path),
            Source::Preset(name) => presets::load(name),
            Source::Hwloc(path) => crate::hwloc::read_hwloc(path),
        }
    }

    /// A label for messages: the file, directory or preset.
    pub fn label(&self) -> String {
        match self {
            Source::Live => "this machine's sysfs".into(),
            Source::Root(d) => d.display().to_string(),
            Source::Snapshot(p) | Source::Description(p) | Source::Hwloc(p) => {
                p.display().to_string()
            }
            Source::Preset(n) => format!("preset '{n}'"),
        }
    }

    /// Read and build the model.
    pub fn load(&self) -> Result<Topology> {
        let mut t = Topology::from_raw(self.capture()?, &self.label())?;
        if let Source::Snapshot(p) = self {
            t.snapshot = Some(p.clone());
        }
        Ok(t)
    }
}

/// Read a description file (TOML).
pub fn read_description(path: &Path) -> Result<RawMachine> {
    let origin = path.display().to_string();
    let bytes = read_input(path, DESCRIPTION_CAP, "a topology description (TOML)")?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        Error::parse(
            &origin,
            Some(line),
            "is not UTF-8 text (a description is a TOML file)",
        )
    })?;
    desc::parse_description(text, &origin)
}

/// Read a snapshot file.
pub fn read_snapshot(path: &Path) -> Result<RawMachine> {
    let origin = path.display().to_string();
    let text = read_input(
        path,
        SNAPSHOT_CAP,
        "a snapshot written by `peerdma snapshot`",
    )?;
    if text.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::parse(
            origin,
            None,
            "is empty, expected a snapshot written by `peerdma snapshot`",
        ));
    }
    let e = match serde_json::from_slice::<RawMachine>(&text) {
        Ok(raw) if raw.format != crate::raw::SNAPSHOT_FORMAT => {
            return Err(Error::parse(
                origin,
                None,
                format!(
                    "is JSON but not a peerdma snapshot (format is \"{}\", expected \"{}\")",
                    raw.format,
                    crate::raw::SNAPSHOT_FORMAT
                ),
            ))
        }
        Ok(raw) if !crate::raw::SNAPSHOT_VERSIONS_READ.contains(&raw.version) => {
            return Err(unreadable_version(origin, u64::from(raw.version)))
        }
        Ok(raw) => return Ok(raw),
        Err(e) => e,
    };
    // Not a snapshot this build reads. If it is JSON, a look at its format
    // and version gives a better message than a field-by-field complaint
    // (another JSON file, or a snapshot of another version).
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) {
        let fmt = v.get("format").and_then(|f| f.as_str());
        if fmt != Some(crate::raw::SNAPSHOT_FORMAT) {
            return Err(Error::parse(
                origin,
                None,
                format!(
                    "is JSON but not a peerdma snapshot (format is {}, expected \"{}\")",
                    fmt.map(|f| format!("\"{f}\""))
                        .unwrap_or_else(|| "missing".into()),
                    crate::raw::SNAPSHOT_FORMAT
                ),
            ));
        }
        if let Some(ver) = v.get("version").and_then(|x| x.as_u64()) {
            if !crate::raw::SNAPSHOT_VERSIONS_READ
                .iter()
                .any(|&r| u64::from(r) == ver)
            {
                return Err(unreadable_version(origin, ver));
            }
        }
    }
    Err({
        let line = (e.line() > 0).then_some(e.line());
        let msg = crate::error::in_user_terms(&e.to_string());
        // serde_json appends " at line L column C"; the line is in the prefix.
        let msg = match msg.rfind(" at line ") {
            Some(i) => format!("{} (column {})", &msg[..i], e.column()),
            None => msg,
        };
        Error::parse(origin, line, format!("not a valid snapshot: {msg}"))
    })
}

fn unreadable_version(origin: String, ver: u64) -> Error {
    let read: Vec<String> = crate::raw::SNAPSHOT_VERSIONS_READ
        .iter()
        .map(u32::to_string)
        .collect();
    Error::parse(
        origin,
        None,
        format!(
            "snapshot version {ver} is not readable by this peerdma (it reads versions {})",
            read.join(" and ")
        ),
    )
}

/// A snapshot as text: the capture as pretty JSON, ending in a newline.
pub fn snapshot_json(raw: &RawMachine) -> String {
    // A RawMachine is strings, numbers and maps with string keys, which
    // always serialize.
    let mut text = serde_json::to_string_pretty(raw).unwrap_or_default();
    text.push('\n');
    text
}

/// Write `bytes` to `path` whole or not at all: into a dot file of its own
/// in the same directory, renamed into place (so a reader that skips dot
/// files, as node-feature-discovery and node_exporter's textfile
/// collector do, never sees half a file). `what` names the contents in
/// errors ("a feature file", "an SVG picture").
pub fn write_file(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    write_whole(path, bytes, what)
}

/// Write a snapshot file, whole or not at all (see the module `file`).
pub fn write_snapshot(raw: &RawMachine, path: &Path) -> Result<()> {
    write_whole(path, snapshot_json(raw).as_bytes(), "a snapshot")
}
