//! Reading a machine from sysfs (live, or a copied tree under `--root`),
//! and writing a capture back out as such a tree.

use crate::error::{Error, Result};
use crate::file::{read_capped, Accept, ReadError, ATTR_CAP, CONFIG_CAP, CPUINFO_CAP};
use crate::raw::{Origin, RawCpu, RawDevice, RawMachine, RawP2pMem};
use peerdma_mem::Bdf;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Single-value attributes captured from each function's directory.
pub const ATTRS: &[&str] = &[
    "vendor",
    "device",
    "class",
    "revision",
    "subsystem_vendor",
    "subsystem_device",
    "numa_node",
    "local_cpulist",
    "current_link_speed",
    "current_link_width",
    "max_link_speed",
    "max_link_width",
    // A physical function's SR-IOV state.
    "sriov_totalvfs",
    "sriov_numvfs",
    // Not a sysfs attribute: hwloc's link rate, kept when a capture read
    // from hwloc XML is written out as a tree and read back.
    "pci_link_speed",
];

/// Why a sysfs or procfs file was not read: an OS error, or a refusal
/// (not a regular file, or larger than any real one) as one line.
fn refusal(
    path: &Path,
    e: ReadError,
    cap: u64,
    what: &str,
) -> std::result::Result<io::Error, Error> {
    match e {
        ReadError::Io(e) => Ok(e),
        ReadError::NotAFile(kind) => Err(Error::bad_file(
            path,
            format!("is {kind}; {what} is a regular file"),
        )),
        ReadError::TooLarge => Err(Error::bad_file(
            path,
            format!(
                "is larger than {}, more than {what} holds",
                peerdma_mem::format_size(cap)
            ),
        )),
    }
}

/// Read a file that must be there.
fn read_required(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    read_capped(path, cap, Accept::Regular).or_else(|e| {
        let e = refusal(path, e, cap, what)?;
        Err(Error::io("read", path, e))
    })
}

/// Read an attribute file that may be missing, as text.
fn read_attr(path: &Path) -> Result<Option<String>> {
    match read_capped(path, ATTR_CAP, Accept::Regular) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) => match refusal(path, e, ATTR_CAP, "a sysfs attribute")? {
            e if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // Some attributes exist but cannot be read (EINVAL/EIO on odd
            // hardware): treat as absent, like lspci does.
            e if matches!(e.raw_os_error(), Some(5) | Some(22)) => Ok(None),
            e => Err(Error::io("read", path, e)),
        },
    }
}

/// Resolve a symlink found under `root` as if `root` were `/`.
fn resolve_link(root: &Path, link: &Path) -> Result<PathBuf> {
    let target = fs::read_link(link).map_err(|e| Error::io("read link", link, e))?;
    let joined = if target.is_absolute() {
        root.join(target.strip_prefix("/").unwrap_or(&target))
    } else {
        link.parent().unwrap_or(root).join(&target)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

fn link_name(dir: &Path, name: &str) -> Option<String> {
    let t = fs::read_link(dir.join(name)).ok()?;
    t.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn parse_cpuinfo(text: &str) -> RawCpu {
    let mut cpu = RawCpu::default();
    let mut first = true;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            if line.trim().is_empty() && cpu.processors > 0 {
                first = false;
            }
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k == "processor" {
            cpu.processors += 1;
        }
        if !first {
            continue;
        }
        match k {
            "vendor_id" => cpu.vendor_id = v.to_string(),
            "cpu family" => cpu.family = v.parse().unwrap_or(0),
            "model" => cpu.model = v.parse().unwrap_or(0),
            "model name" => cpu.model_name = v.to_string(),
            _ => {}
        }
    }
    cpu
}

/// Read a machine from `root` (`/` for this machine): the functions under
/// `root/sys/bus/pci/devices` and the CPU from `root/proc/cpuinfo`.
pub fn read_root(root: &Path) -> Result<RawMachine> {
    // Links are resolved lexically below the root, so the root itself must
    // be absolute and free of `..` (a relative `--root ../x` would lose
    // its leading `..` on the way).
    let root = &fs::canonicalize(root).map_err(|e| Error::io("read", root, e))?;
    let devices_dir = root.join("sys/bus/pci/devices");
    let meta = fs::metadata(root).map_err(|e| Error::io("read", root, e))?;
    if !meta.is_dir() {
        return Err(Error::parse(
            root.display().to_string(),
            None,
            "is not a directory (--root takes a directory holding sys/ and proc/cpuinfo)",
        ));
    }
    let entries = fs::read_dir(&devices_dir).map_err(|e| Error::io("list", &devices_dir, e))?;
    let sys_devices = root.join("sys/devices");
    let mut devices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", &devices_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<Bdf>().is_err() {
            continue;
        }
        let link = entry.path();
        let dir = if fs::symlink_metadata(&link)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            resolve_link(root, &link)?
        } else {
            link.clone()
        };
        let rel = dir.strip_prefix(&sys_devices).map_err(|_| {
            Error::device(
                devices_dir.display().to_string(),
                &name,
                format!(
                    "links to {}, outside {}",
                    dir.display(),
                    sys_devices.display()
                ),
            )
        })?;
        devices.push(read_device(&dir, rel.to_string_lossy().into_owned())?);
    }
    let cpuinfo_path = root.join("proc/cpuinfo");
    let cpuinfo = read_required(&cpuinfo_path, CPUINFO_CAP, "/proc/cpuinfo")?;
    let cpuinfo = String::from_utf8_lossy(&cpuinfo);
    // Facts for the record: absent or unreadable is fine, a FIFO is not.
    let small = |p: &str| -> Result<Option<String>> {
        let path = root.join(p);
        Ok(match read_capped(&path, ATTR_CAP, Accept::Regular) {
            Ok(b) => Some(String::from_utf8_lossy(&b).trim().to_string()).filter(|s| !s.is_empty()),
            Err(e) => {
                refusal(&path, e, ATTR_CAP, "a procfs value")?;
                None
            }
        })
    };
    let origin = Origin {
        kind: "sysfs".into(),
        detail: root.display().to_string(),
        name: None,
        hostname: small("proc/sys/kernel/hostname")?,
        kernel: small("proc/sys/kernel/osrelease")?,
        cmdline: small("proc/cmdline")?,
        tool: Some(format!("peerdma {}", env!("CARGO_PKG_VERSION"))),
        partial: None,
    };
    let mut raw = RawMachine::new(origin, parse_cpuinfo(&cpuinfo), devices);
    raw.iommu_units = read_iommu_units(root)?;
    Ok(raw)
}

/// The names in `root/sys/class/iommu` (one per IOMMU unit the kernel
/// registered), sorted; `None` when the tree has no such directory (a
/// copy that did not record it).
fn read_iommu_units(root: &Path) -> Result<Option<Vec<String>>> {
    let dir = root.join("sys/class/iommu");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(Error::bad_file(&dir, "is not a directory"))
        }
        Err(e) => return Err(Error::io("list", &dir, e)),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io("list", &dir, e))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(Some(names))
}

fn read_device(dir: &Path, rel: String) -> Result<RawDevice> {
    let config_path = dir.join("config");
    let config = read_required(&config_path, CONFIG_CAP, "a PCI function's config space")?;
    let mut attrs = BTreeMap::new();
    for a in ATTRS {
        if let Some(v) = read_attr(&dir.join(a))? {
            attrs.insert((*a).to_string(), v.trim().to_string());
        }
    }
    let resource = read_attr(&dir.join("resource"))?;
    let p2p_dir = dir.join("p2pmem");
    let p2pmem = if p2p_dir.is_dir() {
        let num = |f: &str| -> Result<u64> {
            let p = p2p_dir.join(f);
            let s = read_attr(&p)?.unwrap_or_default();
            s.trim().parse().map_err(|_| {
                Error::parse(
                    p.display().to_string(),
                    None,
                    format!("'{}' is not a number", s.trim()),
                )
            })
        };
        Some(RawP2pMem {
            size: num("size")?,
            available: num("available")?,
            published: num("published")? != 0,
        })
    } else {
        None
    };
    Ok(RawDevice {
        path: rel,
        config,
        attrs,
        resource,
        driver: link_name(dir, "driver"),
        iommu_group: link_name(dir, "iommu_group").and_then(|g| g.parse().ok()),
        physfn: link_name(dir, "physfn").and_then(|p| p.parse().ok()),
        p2pmem,
        label: read_attr(&dir.join("label"))?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        ..Default::default()
    })
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    fs::write(path, data).map_err(|e| Error::io("write", path, e))
}

fn symlink(target: &str, at: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        match fs::remove_file(at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("replace", at, e)),
        }
        std::os::unix::fs::symlink(target, at).map_err(|e| Error::io("create link", at, e))
    }
    #[cfg(not(unix))]
    {
        let _ = target;
        Err(Error::io(
            "create link",
            at,
            io::Error::other("symlinks need a Unix system"),
        ))
    }
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| Error::io("create directory", p, e))
}

/// Write a capture as a new tree at `dir`, whole or not at all: `dir` must
/// not exist or be empty; the tree is written beside it under a temporary
/// name and renamed into place, so a failure leaves nothing behind and no
/// files of an earlier tree are mixed in.
pub fn create_root(raw: &RawMachine, dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::bad_file(
                    dir,
                    "exists and is not empty; a tree is written to a new or empty directory",
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(Error::bad_file(dir, "exists and is not a directory"))
        }
        Err(e) => return Err(Error::io("read", dir, e)),
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    mkdir(&parent)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        // As any new directory: 0777 less the umask.
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o777));
    }
    let tmp = builder
        .tempdir_in(&parent)
        .map_err(|e| Error::io("create a directory in", &parent, e))?;
    // Messages name the tree as it will be, not the temporary name.
    write_root(raw, tmp.path()).map_err(|e| match e {
        Error::Io {
            path,
            action,
            source,
        } => Error::Io {
            path: path
                .strip_prefix(tmp.path())
                .map(|rest| dir.join(rest))
                .unwrap_or(path),
            action,
            source,
        },
        e => e,
    })?;
    let kept = tmp.keep();
    fs::rename(&kept, dir).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        Error::io("write", dir, e)
    })
}

/// Write a capture out as a tree that [`read_root`] reads back to the same
/// capture: `dir/sys/devices/...`, the `sys/bus/pci/devices` links, and
/// `dir/proc/cpuinfo`.
pub fn write_root(raw: &RawMachine, dir: &Path) -> Result<()> {
    let links = dir.join("sys/bus/pci/devices");
    mkdir(&links)?;
    for d in &raw.devices {
        let ddir = dir.join("sys/devices").join(&d.path);
        mkdir(&ddir)?;
        write(&ddir.join("config"), &d.config)?;
        for (k, v) in &d.attrs {
            write(&ddir.join(k), format!("{v}\n"))?;
        }
        if let Some(r) = &d.resource {
            write(&ddir.join("resource"), r)?;
        }
        if let Some(l) = &d.label {
            write(&ddir.join("label"), format!("{l}\n"))?;
        }
        // Depth of the device directory below sys/.
        let depth = 1 + d.path.split('/').filter(|c| !c.is_empty()).count();
        let up = "../".repeat(depth);
        if let Some(drv) = &d.driver {
            mkdir(&dir.join("sys/bus/pci/drivers").join(drv))?;
            symlink(&format!("{up}bus/pci/drivers/{drv}"), &ddir.join("driver"))?;
        }
        if let Some(g) = d.iommu_group {
            mkdir(&dir.join("sys/kernel/iommu_groups").join(g.to_string()))?;
            symlink(
                &format!("{up}kernel/iommu_groups/{g}"),
                &ddir.join("iommu_group"),
            )?;
        }
        if let Some(pf) = d.physfn {
            symlink(&format!("../{pf}"), &ddir.join("physfn"))?;
        }
        if let Some(p) = &d.p2pmem {
            let pd = ddir.join("p2pmem");
            mkdir(&pd)?;
            write(&pd.join("size"), format!("{}\n", p.size))?;
            write(&pd.join("available"), format!("{}\n", p.available))?;
            write(
                &pd.join("published"),
                format!("{}\n", u8::from(p.published)),
            )?;
        }
        symlink(
            &format!("../../../devices/{}", d.path),
            &links.join(d.name()),
        )?;
    }
    if let Some(units) = &raw.iommu_units {
        let class = dir.join("sys/class/iommu");
        mkdir(&class)?;
        for u in units {
            if u.is_empty() || u.contains('/') || u == "." || u == ".." {
                return Err(Error::bad_file(
                    &class,
                    format!("cannot hold an IOMMU unit named {u:?}"),
                ));
            }
            mkdir(&class.join(u))?;
        }
    }
    let proc_dir = dir.join("proc");
    mkdir(&proc_dir.join("sys/kernel"))?;
    let c = &raw.cpu;
    let mut cpuinfo = String::new();
    for i in 0..c.processors.max(1) {
        cpuinfo.push_str(&format!(
            "processor\t: {i}\nvendor_id\t: {}\ncpu family\t: {}\nmodel\t\t: {}\nmodel name\t: {}\n\n",
            c.vendor_id, c.family, c.model, c.model_name
        ));
    }
    write(&proc_dir.join("cpuinfo"), cpuinfo)?;
    let o = &raw.origin;
    for (file, v) in [
        ("sys/kernel/hostname", &o.hostname),
        ("sys/kernel/osrelease", &o.kernel),
        ("cmdline", &o.cmdline),
    ] {
        if let Some(v) = v {
            write(&proc_dir.join(file), format!("{v}\n"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_first_processor() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7713\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\n";
        let c = parse_cpuinfo(text);
        assert_eq!(c.vendor_id, "AuthenticAMD");
        assert_eq!(c.family, 25);
        assert_eq!(c.model_name, "AMD EPYC 7713");
        assert_eq!(c.processors, 2);
    }

    #[test]
    fn links_resolve_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("sys/devices/pci0000:00/0000:00:01.0")).unwrap();
        fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
        let rel = root.join("sys/bus/pci/devices/0000:00:01.0");
        std::os::unix::fs::symlink("../../../devices/pci0000:00/0000:00:01.0", &rel).unwrap();
        assert_eq!(
            resolve_link(root, &rel).unwrap(),
            root.join("sys/devices/pci0000:00/0000:00:01.0")
        );
        let abs = root.join("sys/bus/pci/devices/0000:00:02.0");
        std::os::unix::fs::symlink("/sys/devices/pci0000:00/0000:00:02.0", &abs).unwrap();
        assert_eq!(
            resolve_link(root, &abs).unwrap(),
            root.join("sys/devices/pci0000:00/0000:00:02.0")
        );
    }
}
