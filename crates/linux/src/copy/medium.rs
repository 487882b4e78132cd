//! Where an end's bytes live. Two different files or devices can share
//! bytes: a partition and its whole disk, a loop device and the file behind
//! it, a device-mapper linear target and the device below it. Whether a
//! copy's source and destination overlap is judged on what is below them:
//! each end's byte range is followed down the stacking that sysfs shows to
//! ranges of a *medium* (a disk that stacks on nothing, or a regular file).
//!
//! * a partition: its `start` (in 512-byte sectors, whatever the logical
//!   block size) on its disk;
//! * a loop device: its `loop/backing_file` at `loop/offset`;
//! * device mapper: the `linear` targets of its table (`dmsetup table`);
//!   any other target, or a table that cannot be read, covers all of each
//!   device below it (`slaves/`), so the ranges *may* overlap;
//! * anything else with `slaves/` (md): all of each slave, likewise.

use super::endpoint::{dev_id, Endpoint, Kind};
use std::fs;
use std::path::{Path, PathBuf};

/// A disk that stacks on nothing known, or a regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Medium {
    Disk { dev: (u32, u32), name: String },
    File { id: (u64, u64), path: String },
}

impl Medium {
    fn same(&self, other: &Medium) -> bool {
        match (self, other) {
            (Medium::Disk { dev: a, .. }, Medium::Disk { dev: b, .. }) => a == b,
            (Medium::File { id: a, .. }, Medium::File { id: b, .. }) => a == b,
            _ => false,
        }
    }

    fn name(&self) -> &str {
        match self {
            Medium::Disk { name, .. } => name,
            Medium::File { path, .. } => path,
        }
    }
}

/// A byte range of a medium, and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub medium: Medium,
    pub start: u64,
    pub end: u64,
    /// The stacking followed, in words (`loop0p1 starts at byte 1048576 of
    /// loop0`).
    pub how: Vec<String>,
    /// The mapping is not known: the range covers all of the medium.
    pub exact: bool,
}

/// The device-mapper table of a device, as `dmsetup table` prints it.
pub(crate) type DmTable<'a> = &'a dyn Fn((u32, u32)) -> Option<String>;

/// `dmsetup table` for the device, if dmsetup runs and knows it.
pub(crate) fn dmsetup_table(dev: (u32, u32)) -> Option<String> {
    let out = std::process::Command::new("dmsetup")
        .args(["table", "-j", &dev.0.to_string(), "-m", &dev.1.to_string()])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The media ranges behind `[off, off + len)` of an end.
pub(crate) fn extents(
    sys_root: &Path,
    end: &Endpoint,
    off: u64,
    len: u64,
    dm: DmTable<'_>,
) -> Vec<Extent> {
    match (end.kind, end.rdev) {
        (Kind::BlockDevice, Some(dev)) => {
            let mut out = Vec::new();
            block(sys_root, dev, off, len, dm, Vec::new(), true, 0, &mut out);
            out
        }
        _ => vec![Extent {
            medium: Medium::File {
                id: end.identity,
                path: end.path.display().to_string(),
            },
            start: off,
            end: off.saturating_add(len),
            how: Vec::new(),
            exact: true,
        }],
    }
}

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Follow `[off, off+len)` of block device `dev` down its stacking.
#[allow(clippy::too_many_arguments)]
fn block(
    sys_root: &Path,
    dev: (u32, u32),
    off: u64,
    len: u64,
    dm: DmTable<'_>,
    how: Vec<String>,
    exact: bool,
    depth: u32,
    out: &mut Vec<Extent>,
) {
    let dir: Option<PathBuf> =
        fs::canonicalize(sys_root.join(format!("sys/dev/block/{}:{}", dev.0, dev.1))).ok();
    let name = dir
        .as_deref()
        .map(name_of)
        .unwrap_or_else(|| format!("{}:{}", dev.0, dev.1));
    let disk = |how: Vec<String>, out: &mut Vec<Extent>| {
        out.push(Extent {
            medium: Medium::Disk {
                dev,
                name: name.clone(),
            },
            start: off,
            end: off.saturating_add(len),
            how,
            exact,
        })
    };
    let Some(dir) = dir.filter(|_| depth < 16) else {
        return disk(how, out);
    };
    let step = |note: String| {
        let mut h = how.clone();
        h.push(note);
        h
    };
    // A partition: its start on the disk it is in (the parent directory).
    if dir.join("partition").is_file() {
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        if let (Some(start), Some(pdev)) = (
            read(&dir.join("start")).and_then(|s| s.parse::<u64>().ok()),
            read(&parent.join("dev")).as_deref().and_then(parse_dev),
        ) {
            let at = start.saturating_mul(512);
            let note = format!("{name} starts at byte {at} of {}", name_of(&parent));
            return block(
                sys_root,
                pdev,
                off.saturating_add(at),
                len,
                dm,
                step(note),
                exact,
                depth + 1,
                out,
            );
        }
        return disk(how, out);
    }
    // A loop device: its backing file (or device) at its offset.
    if let Some(backing) = read(&dir.join("loop/backing_file")) {
        let loop_off = read(&dir.join("loop/offset"))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let start = off.saturating_add(loop_off);
        let note = format!("{name} is {backing} from byte {loop_off}");
        match rustix::fs::stat(backing.as_str()) {
            Ok(st) => {
                let ty = rustix::fs::FileType::from_raw_mode(st.st_mode);
                let (ma, mi) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
                if ty == rustix::fs::FileType::BlockDevice {
                    let r = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
                    return block(
                        sys_root,
                        r,
                        start,
                        len,
                        dm,
                        step(note),
                        exact,
                        depth + 1,
                        out,
                    );
                }
                out.push(Extent {
                    medium: Medium::File {
                        id: (dev_id(ma, mi), st.st_ino),
                        path: backing,
                    },
                    start,
                    end: start.saturating_add(len),
                    how: step(note),
                    exact,
                });
                return;
            }
            // The file is gone (deleted while attached): it is no end.
            Err(_) => return disk(how, out),
        }
    }
    let slaves: Vec<PathBuf> = fs::read_dir(dir.join("slaves"))
        .map(|rd| {
            rd.filter_map(|e| fs::canonicalize(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() {
        return disk(how, out);
    }
    // Device mapper with a table of linear targets: exact ranges.
    if dir.join("dm").is_dir() {
        if let Some(segments) = dm(dev).and_then(|t| linear_segments(&t)) {
            for s in segments {
                let (s0, s1) = (s.start * 512, (s.start + s.len) * 512);
                let (a, b) = (off.max(s0), off.saturating_add(len).min(s1));
                if a >= b {
                    continue;
                }
                let below = s.offset * 512 + (a - s0);
                let note = format!(
                    "{name} maps bytes [{s0}, {s1}) to {}:{} from byte {}",
                    s.dev.0,
                    s.dev.1,
                    s.offset * 512
                );
                block(
                    sys_root,
                    s.dev,
                    below,
                    b - a,
                    dm,
                    step(note),
                    exact,
                    depth + 1,
                    out,
                );
            }
            return;
        }
    }
    // Stacked in a way not known: all of every device below.
    for s in slaves {
        let Some(sdev) = read(&s.join("dev")).as_deref().and_then(parse_dev) else {
            continue;
        };
        let size = read(&s.join("size"))
            .and_then(|x| x.parse::<u64>().ok())
            .map_or(u64::MAX, |x| x.saturating_mul(512));
        let note = format!(
            "{name} is stacked on {} in a way peerdma cannot map (no readable device-mapper table of linear targets)",
            name_of(&s)
        );
        block(
            sys_root,
            sdev,
            0,
            size,
            dm,
            step(note),
            false,
            depth + 1,
            out,
        );
    }
}

/// One `linear` line of a device-mapper table (all in sectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub start: u64,
    pub len: u64,
    pub dev: (u32, u32),
    pub offset: u64,
}

/// The segments of a table made of `linear` targets only (`start length
/// linear MAJ:MIN offset`); `None` if any line is another target or does
/// not parse.
pub(crate) fn linear_segments(table: &str) -> Option<Vec<Segment>> {
    let mut v = Vec::new();
    for line in table.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [start, len, "linear", dev, offset] = f.as_slice() else {
            return None;
        };
        v.push(Segment {
            start: start.parse().ok()?,
            len: len.parse().ok()?,
            dev: parse_dev(dev)?,
            offset: offset.parse().ok()?,
        });
    }
    (!v.is_empty()).then_some(v)
}

/// The first place where the two ends' ranges share bytes: (source
/// extent, destination extent).
pub(crate) fn overlap<'a>(
    src: &'a [Extent],
    dst: &'a [Extent],
) -> Option<(&'a Extent, &'a Extent)> {
    src.iter().find_map(|a| {
        dst.iter()
            .find(|b| a.medium.same(&b.medium) && a.start < b.end && b.start < a.end)
            .map(|b| (a, b))
    })
}

/// Why two extents overlap, in words: the ranges on the medium and how
/// each end came to them.
pub(crate) fn describe(
    src_range: (u64, u64),
    a: &Extent,
    dst_range: (u64, u64),
    b: &Extent,
) -> String {
    let how = |e: &Extent| {
        if e.how.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.how.join("; "))
        }
    };
    let medium = a.medium.name();
    let certain = if a.exact && b.exact {
        "overlap"
    } else {
        "may overlap (the mapping is not known, so the whole device below counts)"
    };
    format!(
        "the source's bytes [{}, {}) are [{}, {}) of {medium}{}, and the destination's bytes [{}, {}) are [{}, {}) of {medium}{}: they {certain}",
        src_range.0,
        src_range.1,
        a.start,
        a.end,
        how(a),
        dst_range.0,
        dst_range.1,
        b.start,
        b.end,
        how(b)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: disk vda (252:0) with partitions vda1 (sector 2048)
    /// and vda2 (sector 34816); dm-0 (253:0) linear over vda2 at sector
    /// 100; dm-1 (253:1) over vda with a table peerdma cannot map; loop0
    /// (7:0) over `file`.
    fn fake(file: &Path) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let w = |p: &str, s: &str| {
            let p = r.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        let disk = "sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda";
        w(&format!("{disk}/dev"), "252:0\n");
        w(&format!("{disk}/size"), "1000000\n");
        w(&format!("{disk}/vda1/dev"), "252:1\n");
        w(&format!("{disk}/vda1/partition"), "1\n");
        w(&format!("{disk}/vda1/start"), "2048\n");
        w(&format!("{disk}/vda2/dev"), "252:2\n");
        w(&format!("{disk}/vda2/partition"), "2\n");
        w(&format!("{disk}/vda2/start"), "34816\n");
        w(&format!("{disk}/vda2/size"), "30000\n");
        w("sys/devices/virtual/block/dm-0/dev", "253:0\n");
        w("sys/devices/virtual/block/dm-0/dm/name", "lv\n");
        w("sys/devices/virtual/block/dm-1/dev", "253:1\n");
        w("sys/devices/virtual/block/dm-1/dm/name", "crypt\n");
        w("sys/devices/virtual/block/loop0/dev", "7:0\n");
        w(
            "sys/devices/virtual/block/loop0/loop/backing_file",
            &format!("{}\n", file.display()),
        );
        w("sys/devices/virtual/block/loop0/loop/offset", "4096\n");
        fs::create_dir_all(r.join("sys/devices/virtual/block/dm-0/slaves")).unwrap();
        fs::create_dir_all(r.join("sys/devices/virtual/block/dm-1/slaves")).unwrap();
        symlink(
            r.join(format!("{disk}/vda2")),
            r.join("sys/devices/virtual/block/dm-0/slaves/vda2"),
        )
        .unwrap();
        symlink(
            r.join(disk),
            r.join("sys/devices/virtual/block/dm-1/slaves/vda"),
        )
        .unwrap();
        fs::create_dir_all(r.join("sys/dev/block")).unwrap();
        for (d, p) in [
            ("252:0", disk.to_string()),
            ("252:1", format!("{disk}/vda1")),
            ("252:2", format!("{disk}/vda2")),
            ("253:0", "sys/devices/virtual/block/dm-0".into()),
            ("253:1", "sys/devices/virtual/block/dm-1".into()),
            ("7:0", "sys/devices/virtual/block/loop0".into()),
        ] {
            symlink(r.join(p), r.join("sys/dev/block").join(d)).unwrap();
        }
        t
    }

    fn tables(dev: (u32, u32)) -> Option<String> {
        match dev {
            (253, 0) => Some("0 1000 linear 252:2 100\n1000 1000 linear 252:2 5000\n".into()),
            (253, 1) => Some("0 1000 crypt aes-xts-plain64 :64:logon:x 0 252:0 4096\n".into()),
            _ => None,
        }
    }

    fn follow(root: &Path, dev: (u32, u32), off: u64, len: u64) -> Vec<Extent> {
        let mut out = Vec::new();
        block(root, dev, off, len, &tables, Vec::new(), true, 0, &mut out);
        out
    }

    fn ranges(v: &[Extent]) -> Vec<(String, u64, u64, bool)> {
        v.iter()
            .map(|e| (e.medium.name().to_string(), e.start, e.end, e.exact))
            .collect()
    }

    #[test]
    fn partitions_map_to_their_disk() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let t = fake(f.path());
        let v = follow(t.path(), (252, 1), 100, 50);
        assert_eq!(
            ranges(&v),
            vec![("vda".into(), 2048 * 512 + 100, 2048 * 512 + 150, true)]
        );
        assert_eq!(v[0].how, vec!["vda1 starts at byte 1048576 of vda"]);
        // A whole disk is itself.
        let v = follow(t.path(), (252, 0), 0, 10);
        assert_eq!(ranges(&v), vec![("vda".into(), 0, 10, true)]);
    }

    #[test]
    fn dm_linear_maps_each_segment_down() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let t = fake(f.path());
        // Bytes [1000*512 - 10, 1000*512 + 10) of dm-0 straddle both
        // segments: the end of the first and the start of the second, each
        // on vda2 and so on vda.
        let v = follow(t.path(), (253, 0), 1000 * 512 - 10, 20);
        let base = 34816 * 512;
        assert_eq!(
            ranges(&v),
            vec![
                (
                    "vda".into(),
                    base + 100 * 512 + 1000 * 512 - 10,
                    base + 100 * 512 + 1000 * 512,
                    true
                ),
                (
                    "vda".into(),
                    base + 5000 * 512,
                    base + 5000 * 512 + 10,
                    true
                ),
            ]
        );
        assert!(v[1].how[0].contains("dm-0 maps bytes"), "{:?}", v[1].how);
    }

    #[test]
    fn unknown_stacking_covers_the_whole_device_below() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let t = fake(f.path());
        let v = follow(t.path(), (253, 1), 0, 512);
        assert_eq!(ranges(&v), vec![("vda".into(), 0, 1_000_000 * 512, false)]);
        assert!(v[0].how[0].contains("cannot map"), "{:?}", v[0].how);
    }

    #[test]
    fn loop_devices_map_to_their_backing_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let t = fake(f.path());
        let v = follow(t.path(), (7, 0), 10, 20);
        let st = rustix::fs::stat(f.path()).unwrap();
        let id = (
            dev_id(rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev)),
            st.st_ino,
        );
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].medium,
            Medium::File {
                id,
                path: f.path().display().to_string()
            }
        );
        assert_eq!((v[0].start, v[0].end), (4106, 4126));
    }

    #[test]
    fn overlap_is_judged_on_the_medium() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let t = fake(f.path());
        // vda1 [0, 4 MiB) is vda [1 MiB, 5 MiB); vda at 1.5 MiB overlaps.
        let a = follow(t.path(), (252, 1), 0, 4 << 20);
        let b = follow(t.path(), (252, 0), 1536 << 10, 4 << 20);
        let (x, y) = overlap(&a, &b).expect("overlap");
        let why = describe((0, 4 << 20), x, (1536 << 10, (1536 << 10) + (4 << 20)), y);
        assert!(
            why.contains("[1048576, 5242880) of vda")
                && why.contains("[1572864, 5767168) of vda")
                && why.contains("vda1 starts at byte 1048576"),
            "{why}"
        );
        // vda at 8 MiB does not.
        let c = follow(t.path(), (252, 0), 8 << 20, 4 << 20);
        assert!(overlap(&a, &c).is_none());
        // vda1 and vda2 are disjoint.
        let d = follow(t.path(), (252, 2), 0, 4 << 20);
        assert!(overlap(&a, &d).is_none());
        // The unmappable dm-1 may overlap anything on vda.
        let e = follow(t.path(), (253, 1), 0, 512);
        let (_, y) = overlap(&c, &e).expect("may overlap");
        assert!(!y.exact);
    }

    #[test]
    fn tables_other_than_linear_are_not_mapped() {
        assert_eq!(
            linear_segments("0 8 linear 7:0 2048\n"),
            Some(vec![Segment {
                start: 0,
                len: 8,
                dev: (7, 0),
                offset: 2048
            }])
        );
        assert_eq!(linear_segments("0 8 striped 2 128 7:0 0 7:1 0\n"), None);
        assert_eq!(linear_segments(""), None);
        assert_eq!(linear_segments("0 8 linear /dev/loop0 0\n"), None);
    }
}
