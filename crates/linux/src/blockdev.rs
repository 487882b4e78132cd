//! From a PCI function to its block device, through sysfs, and whether that
//! block device is in use.
//!
//! NVMe: `sys/bus/pci/devices/<bdf>/nvme/nvme<C>/nvme<C>n<N>` (or, with
//! native multipath, `nvme<S>c<C>n<N>`, whose block device is the head
//! `nvme<S>n<N>`). Anything else: the first `block/<name>` directory below
//! the function (virtio-blk, AHCI/SCSI disks).

use crate::{Error, Result};
use peerdma_mem::Bdf;
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

/// A whole-disk block device below a PCI function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockDevice {
    /// The PCI function it belongs to (none for loop, dm, ram devices).
    pub bdf: Option<Bdf>,
    /// Kernel name (`nvme0n1`).
    pub name: String,
    /// The device node (`/dev/nvme0n1`).
    pub dev_path: PathBuf,
    /// Major and minor number (from sysfs `dev`).
    pub dev: (u32, u32),
    /// Capacity in bytes.
    pub size: u64,
    /// Logical block size: O_DIRECT offsets and lengths are multiples of it.
    pub logical_block_size: u64,
    /// Partitions (`nvme0n1p1`, ...) with their device numbers.
    #[serde(skip)]
    pub partitions: Vec<(String, (u32, u32))>,
    /// `sys/class/block/<name>` under the sysfs root it was found in.
    #[serde(skip)]
    pub sys_dir: PathBuf,
}

fn read_trim(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io("read", path, e))
}

fn parse_dev(text: &str, path: &Path) -> Result<(u32, u32)> {
    let bad = || Error::Malformed {
        origin: path.display().to_string(),
        detail: format!("expected MAJOR:MINOR, found {text:?}"),
    };
    let (a, b) = text.split_once(':').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

fn parse_u64(text: &str, path: &Path) -> Result<u64> {
    text.trim().parse().map_err(|_| Error::Malformed {
        origin: path.display().to_string(),
        detail: format!("expected a number, found {text:?}"),
    })
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    // nvme0n2 before nvme0n10.
    names.sort_by_key(|n| natural_key(n));
    names
}

fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((std::mem::take(&mut text), num.parse().unwrap_or(u64::MAX)));
                num.clear();
            }
            text.push(c);
        }
    }
    out.push((text, num.parse().unwrap_or(0)));
    out
}

/// `nvme<digits>n<digits>`: a namespace's block device.
fn is_nvme_namespace(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("nvme") else {
        return false;
    };
    let Some((a, b)) = rest.split_once('n') else {
        return false;
    };
    !a.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit())
        && !b.is_empty()
        && b.bytes().all(|c| c.is_ascii_digit())
}

/// `nvme<S>c<C>n<N>` (a multipath controller path) -> `nvme<S>n<N>` (its head).
fn nvme_multipath_head(name: &str) -> Option<String> {
    let rest = name.strip_prefix("nvme")?;
    let (s, rest) = rest.split_once('c')?;
    let (c, n) = rest.split_once('n')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    (digits(s) && digits(c) && digits(n)).then(|| format!("nvme{s}n{n}"))
}

/// Candidate block device names below a PCI function directory.
fn candidates(fn_dir: &Path) -> Vec<String> {
    let nvme = fn_dir.join("nvme");
    let mut found = Vec::new();
    for ctrl in sorted_names(&nvme) {
        for entry in sorted_names(&nvme.join(&ctrl)) {
            if is_nvme_namespace(&entry) {
                found.push(entry);
            } else if let Some(head) = nvme_multipath_head(&entry) {
                if !found.contains(&head) {
                    found.push(head);
                }
            }
        }
    }
    if !found.is_empty() {
        return found;
    }
    // Generic: a `block/` directory a few levels down (not following links,
    // so `driver`, `subsystem` and friends are not walked into).
    let mut level = vec![fn_dir.to_path_buf()];
    for _ in 0..6 {
        let mut next = Vec::new();
        for dir in &level {
            for name in sorted_names(dir) {
                let path = dir.join(&name);
                let is_dir = fs::symlink_metadata(&path)
                    .map(|m| m.file_type().is_dir())
                    .unwrap_or(false);
                if !is_dir {
                    continue;
                }
                if name == "block" {
                    found.extend(sorted_names(&path));
                } else {
                    next.push(path);
                }
            }
        }
        if !found.is_empty() || next.is_empty() {
            break;
        }
        level = next;
    }
    found
}

/// Find the block device of PCI function `bdf`, reading sysfs under
/// `sys_root` (`/` on a live machine) and naming the node under `dev_dir`
/// (`/dev`). Several namespaces: the first (in natural order).
pub fn find_for_function(sys_root: &Path, dev_dir: &Path, bdf: Bdf) -> Result<BlockDevice> {
    let fn_dir = sys_root.join("sys/bus/pci/devices").join(bdf.to_string());
    if !fn_dir.exists() {
        return Err(Error::NoBlockDevice {
            bdf,
            detail: format!("{} does not exist", fn_dir.display()),
        });
    }
    let names = candidates(&fn_dir);
    let Some(name) = names.first() else {
        let driver = fs::read_link(fn_dir.join("driver"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        return Err(Error::NoBlockDevice {
            bdf,
            detail: format!(
                "nothing in {}/nvme/nvme*/nvme*n* nor any block/ directory below it ({}); \
                 an NVMe controller without namespaces has no block device",
                fn_dir.display(),
                match driver {
                    Some(d) => format!("driver {d}"),
                    None => "no driver bound".into(),
                }
            ),
        });
    };
    let sys_dir = sys_root.join("sys/class/block").join(name);
    if !sys_dir.exists() {
        return Err(Error::NoBlockDevice {
            bdf,
            detail: format!("found {name} but {} does not exist", sys_dir.display()),
        });
    }
    BlockDevice::from_class_dir(&sys_dir, dev_dir, name, Some(bdf))
}

impl BlockDevice {
    /// Describe the block device whose `sys/class/block/<name>` directory is
    /// `sys_dir` (a whole disk or a partition), its node under `dev_dir`.
    pub fn from_class_dir(
        sys_dir: &Path,
        dev_dir: &Path,
        name: &str,
        bdf: Option<Bdf>,
    ) -> Result<BlockDevice> {
        let dev_file = sys_dir.join("dev");
        let dev = parse_dev(&read_trim(&dev_file)?, &dev_file)?;
        let size_file = sys_dir.join("size");
        // sysfs `size` is in 512-byte sectors whatever the logical block size.
        let size = parse_u64(&read_trim(&size_file)?, &size_file)?.saturating_mul(512);
        // A partition has no queue/ of its own: its disk's applies.
        let lbs_file = sys_dir.join("queue/logical_block_size");
        let lbs_file = if lbs_file.is_file() {
            lbs_file
        } else {
            sys_dir.join("../queue/logical_block_size")
        };
        let logical_block_size = match fs::read_to_string(&lbs_file) {
            Ok(t) => parse_u64(&t, &lbs_file)?,
            Err(_) => 512,
        };
        let mut partitions = Vec::new();
        for entry in sorted_names(sys_dir) {
            let p = sys_dir.join(&entry);
            if p.join("partition").is_file() {
                let f = p.join("dev");
                partitions.push((entry, parse_dev(&read_trim(&f)?, &f)?));
            }
        }
        Ok(BlockDevice {
            bdf,
            name: name.to_string(),
            dev_path: dev_dir.join(name),
            dev,
            size,
            logical_block_size,
            partitions,
            sys_dir: sys_dir.to_path_buf(),
        })
    }
}

impl BlockDevice {
    /// Why this device must not be written to, if it is in use: mounted
    /// (per `mountinfo`, the text of `/proc/self/mountinfo`), or held by
    /// another block device (device mapper, md, ...), itself or a partition.
    pub fn in_use(&self, mountinfo: &str) -> Option<String> {
        let mut devs = vec![(self.name.clone(), self.dev)];
        devs.extend(self.partitions.iter().cloned());
        let mut why = Vec::new();
        for line in mountinfo.lines() {
            // id parent MAJ:MIN root mountpoint opts [tags] - fstype source superopts
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                continue;
            }
            let source = f
                .iter()
                .position(|x| *x == "-")
                .and_then(|i| f.get(i + 2))
                .copied()
                .unwrap_or("");
            let by_number = parse_dev(f[2], Path::new("mountinfo")).ok();
            for (name, dev) in &devs {
                let by_name =
                    source.rsplit('/').next() == Some(name.as_str()) && source.starts_with("/dev/");
                if by_number == Some(*dev) || by_name {
                    why.push(format!("{name} is mounted on {}", f[4]));
                }
            }
        }
        for (name, _) in &devs {
            let dir = if *name == self.name {
                self.sys_dir.join("holders")
            } else {
                self.sys_dir.join(name).join("holders")
            };
            let holders = sorted_names(&dir);
            if !holders.is_empty() {
                why.push(format!("{name} is held by {}", holders.join(", ")));
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Check that `path` is the block device `dev` (a stale or missing node in
/// /dev would send the I/O elsewhere).
pub fn check_node(path: &Path, dev: (u32, u32)) -> Result<()> {
    let st = rustix::fs::stat(path).map_err(|e| Error::io("stat", path, e.into()))?;
    let ty = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if ty != rustix::fs::FileType::BlockDevice {
        return Err(Error::WrongFileType {
            path: path.to_path_buf(),
            found: format!("{ty:?}"),
            expected: "a block device",
        });
    }
    let got = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if got != dev {
        return Err(Error::StaleNode {
            path: path.to_path_buf(),
            found: got,
            expected: dev,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: one NVMe function with namespaces, one function with a
    /// virtio-style block dir, one without any.
    fn fake() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let w = |p: &str, s: &str| {
            let p = r.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        let d = |p: &str| fs::create_dir_all(r.join(p)).unwrap();
        let nv = "sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0";
        d(&format!("{nv}/nvme/nvme0/nvme0n10"));
        d(&format!("{nv}/nvme/nvme0/nvme0n2"));
        d(&format!("{nv}/nvme/nvme0/device"));
        w(&format!("{nv}/nvme/nvme0/nvme0n2/dev"), "259:1\n");
        w(&format!("{nv}/nvme/nvme0/nvme0n2/size"), "131072\n");
        w(
            &format!("{nv}/nvme/nvme0/nvme0n2/queue/logical_block_size"),
            "4096\n",
        );
        d(&format!("{nv}/nvme/nvme0/nvme0n2/holders"));
        w(
            &format!("{nv}/nvme/nvme0/nvme0n2/nvme0n2p1/partition"),
            "1\n",
        );
        w(&format!("{nv}/nvme/nvme0/nvme0n2/nvme0n2p1/dev"), "259:2\n");
        d(&format!("{nv}/nvme/nvme0/nvme0n2/nvme0n2p1/holders"));
        let vb = "sys/devices/pci0000:00/0000:00:03.0";
        w(&format!("{vb}/virtio1/block/vda/dev"), "254:0\n");
        w(&format!("{vb}/virtio1/block/vda/size"), "2048\n");
        d("sys/devices/pci0000:00/0000:00:04.0");
        d("sys/bus/pci/devices");
        d("sys/class/block");
        for (bdf, dir) in [
            ("0000:01:00.0", nv),
            ("0000:00:03.0", vb),
            ("0000:00:04.0", "sys/devices/pci0000:00/0000:00:04.0"),
        ] {
            symlink(
                format!("../../../../{dir}"),
                r.join("sys/bus/pci/devices").join(bdf),
            )
            .unwrap();
        }
        symlink(
            format!("../../../{nv}/nvme/nvme0/nvme0n2"),
            r.join("sys/class/block/nvme0n2"),
        )
        .unwrap();
        symlink(
            format!("../../../{vb}/virtio1/block/vda"),
            r.join("sys/class/block/vda"),
        )
        .unwrap();
        t
    }

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn nvme_namespace_is_found_in_natural_order() {
        let t = fake();
        // nvme0n10 has no sys/class/block entry; nvme0n2 comes first anyway.
        let b = find_for_function(t.path(), Path::new("/dev"), bdf("0000:01:00.0")).unwrap();
        assert_eq!(b.name, "nvme0n2");
        assert_eq!(b.dev_path, Path::new("/dev/nvme0n2"));
        assert_eq!(b.dev, (259, 1));
        assert_eq!(b.size, 131072 * 512);
        assert_eq!(b.logical_block_size, 4096);
        assert_eq!(b.partitions, vec![("nvme0n2p1".to_string(), (259, 2))]);
    }

    #[test]
    fn generic_block_dir_is_found() {
        let t = fake();
        let b = find_for_function(t.path(), Path::new("/dev"), bdf("0000:00:03.0")).unwrap();
        assert_eq!(b.name, "vda");
        assert_eq!(b.logical_block_size, 512, "default without queue/");
        assert_eq!(b.size, 2048 * 512);
    }

    #[test]
    fn missing_block_device_names_the_function() {
        let t = fake();
        let e = find_for_function(t.path(), Path::new("/dev"), bdf("0000:00:04.0")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("0000:00:04.0 has no block device"), "{msg}");
        assert!(msg.contains("no driver bound"), "{msg}");
        let e = find_for_function(t.path(), Path::new("/dev"), bdf("0000:09:00.0")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn names() {
        assert!(is_nvme_namespace("nvme0n1"));
        assert!(is_nvme_namespace("nvme12n3"));
        assert!(!is_nvme_namespace("nvme0"));
        assert!(!is_nvme_namespace("nvme0n1p1"));
        assert!(!is_nvme_namespace("nvme0c1n1"));
        assert_eq!(nvme_multipath_head("nvme0c1n1").as_deref(), Some("nvme0n1"));
        assert_eq!(nvme_multipath_head("nvme0n1"), None);
    }

    #[test]
    fn in_use_by_mount_number_name_or_holder() {
        let t = fake();
        let b = find_for_function(t.path(), Path::new("/dev"), bdf("0000:01:00.0")).unwrap();
        let root = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";
        assert_eq!(b.in_use(root), None);
        let by_number = format!("{root}30 22 259:2 / /data rw shared:5 - xfs /dev/root rw\n");
        assert_eq!(
            b.in_use(&by_number).as_deref(),
            Some("nvme0n2p1 is mounted on /data")
        );
        let by_name = format!("{root}31 22 0:99 / /mnt rw - ext4 /dev/nvme0n2 rw\n");
        assert_eq!(
            b.in_use(&by_name).as_deref(),
            Some("nvme0n2 is mounted on /mnt")
        );
        fs::create_dir_all(b.sys_dir.join("nvme0n2p1/holders/dm-0")).unwrap();
        assert_eq!(b.in_use(root).as_deref(), Some("nvme0n2p1 is held by dm-0"));
    }

    #[test]
    fn node_check_rejects_non_block_files() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let e = check_node(t.path(), (259, 0)).unwrap_err();
        assert!(e.to_string().contains("not a block device"), "{e}");
        assert!(matches!(e, Error::WrongFileType { .. }), "{e:?}");
        let e = check_node(Path::new("/nonexistent/nvme9n9"), (259, 0)).unwrap_err();
        assert!(
            e.to_string().contains("cannot stat /nonexistent/nvme9n9"),
            "{e}"
        );
    }
}
