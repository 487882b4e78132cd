//! A destination file that does not exist yet gets its name only when the
//! copy has put data in it.
//!
//! The copy writes a new file with many O_DIRECT writes in flight, which
//! run concurrently only inside the file's size (writes past the end are
//! serialized), so the file is sized up front. Under its final name a
//! killed copy would then leave a file that looks complete. Instead it is
//! written as an unnamed file in the same directory (`O_TMPFILE`) and
//! linked under its name at the end, or when the copy stops early with the
//! prefix it copied (cut to that size, so the printed resume arguments go
//! on from there). A copy that is killed leaves nothing; one that fails or
//! stops before writing anything leaves nothing either.
//!
//! Where the file system has no `O_TMPFILE`, the file is written under a
//! hidden name in the same directory (`.NAME.peerdma-PID.partial`) and
//! renamed at the end; a killed copy leaves that file, whose name says what
//! it is.

use crate::{Error, Result};
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;
use std::path::{Path, PathBuf};

/// A file being written that has not got its name yet.
#[derive(Debug)]
pub(crate) struct NewFile {
    /// The name it gets.
    path: PathBuf,
    /// The hidden name it has meanwhile, when the file system has no
    /// `O_TMPFILE`.
    temp: Option<PathBuf>,
    named: bool,
}

fn mode() -> Mode {
    Mode::from_raw_mode(0o644)
}

/// Open with O_DIRECT where the file system allows it.
fn open_direct(path: &Path, flags: OFlags) -> std::result::Result<(OwnedFd, bool), Errno> {
    match rustix::fs::open(path, flags | OFlags::DIRECT | OFlags::CLOEXEC, mode()) {
        Ok(fd) => Ok((fd, true)),
        Err(Errno::INVAL) => {
            rustix::fs::open(path, flags | OFlags::CLOEXEC, mode()).map(|fd| (fd, false))
        }
        Err(e) => Err(e),
    }
}

impl NewFile {
    /// Create the file that will be `path`: (descriptor, O_DIRECT, the
    /// pending name).
    pub fn create(path: &Path) -> Result<(OwnedFd, bool, NewFile)> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match open_direct(dir, OFlags::RDWR | OFlags::TMPFILE) {
            Ok((fd, direct)) => {
                return Ok((
                    fd,
                    direct,
                    NewFile {
                        path: path.to_path_buf(),
                        temp: None,
                        named: false,
                    },
                ))
            }
            // No O_TMPFILE here (EOPNOTSUPP; EISDIR or EINVAL from older
            // kernels and some file systems): a hidden name instead.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {}
            Err(e) => return Err(Error::io("create a file in", dir, e.into())),
        }
        Self::create_hidden(path, dir)
    }

    /// The fallback: a hidden name in the same directory.
    fn create_hidden(path: &Path, dir: &Path) -> Result<(OwnedFd, bool, NewFile)> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "copy".into());
        let temp = dir.join(format!(".{name}.peerdma-{}.partial", std::process::id()));
        let (fd, direct) = open_direct(&temp, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL)
            .map_err(|e| Error::io("create", &temp, e.into()))?;
        Ok((
            fd,
            direct,
            NewFile {
                path: path.to_path_buf(),
                temp: Some(temp),
                named: false,
            },
        ))
    }

    /// Give the file its name. Fails (and keeps the data unnamed) if
    /// something took the name meanwhile.
    pub fn name(&mut self, fd: &OwnedFd) -> Result<()> {
        if self.named {
            return Ok(());
        }
        match &self.temp {
            None => {
                // An unnamed file is linked through /proc (no privilege
                // needed), or by descriptor (needs CAP_DAC_READ_SEARCH).
                let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
                rustix::fs::linkat(CWD, proc.as_str(), CWD, &self.path, AtFlags::SYMLINK_FOLLOW)
                    .or_else(|e| match e {
                        Errno::NOENT | Errno::NOTDIR if !Path::new("/proc/self/fd").is_dir() => {
                            rustix::fs::linkat(fd, "", CWD, &self.path, AtFlags::EMPTY_PATH)
                        }
                        e => Err(e),
                    })
                    .map_err(|e| Error::io("name the copy", &self.path, e.into()))?;
            }
            Some(temp) => {
                rustix::fs::renameat_with(CWD, temp, CWD, &self.path, RenameFlags::NOREPLACE)
                    .or_else(|e| match e {
                        // No RENAME_NOREPLACE on this file system.
                        Errno::INVAL | Errno::NOSYS => rustix::fs::rename(temp, &self.path),
                        e => Err(e),
                    })
                    .map_err(|e| Error::io("name the copy", &self.path, e.into()))?;
            }
        }
        self.named = true;
        Ok(())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        // Not named: nothing is left (an unnamed file goes with its last
        // descriptor; a hidden name is removed).
        if let (false, Some(t)) = (self.named, &self.temp) {
            let _ = std::fs::remove_file(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::AlignedBuf;
    use std::fs;

    /// Write a block of `b` (aligned, as O_DIRECT wants it).
    fn write_block(fd: &OwnedFd, b: u8) {
        let mut buf = AlignedBuf::zeroed(4096);
        buf.as_mut_slice().fill(b);
        rustix::io::pwrite(fd, buf.as_slice(), 0).unwrap();
    }

    #[test]
    fn a_new_file_has_no_name_until_it_is_given_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new");
        let (fd, _, mut nf) = NewFile::create(&p).unwrap();
        write_block(&fd, 7);
        assert!(!p.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "no name at all");
        nf.name(&fd).unwrap();
        assert_eq!(fs::read(&p).unwrap(), vec![7u8; 4096]);
        drop(nf);
        assert!(p.exists(), "a named file stays");
    }

    #[test]
    fn an_unnamed_file_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new");
        let (fd, _, nf) = NewFile::create(&p).unwrap();
        write_block(&fd, 7);
        drop(nf);
        drop(fd);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_name_taken_meanwhile_is_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new");
        let (fd, _, mut nf) = NewFile::create(&p).unwrap();
        fs::write(&p, b"someone else's").unwrap();
        let e = nf.name(&fd).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"someone else's");
    }

    #[test]
    fn without_o_tmpfile_a_hidden_name_is_used_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("new");
        let (fd, _, mut nf) = NewFile::create_hidden(&p, d.path()).unwrap();
        let hidden = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        assert_eq!(hidden.len(), 1);
        assert!(
            hidden[0].starts_with(".new.peerdma-") && hidden[0].ends_with(".partial"),
            "{hidden:?}"
        );
        write_block(&fd, 7);
        nf.name(&fd).unwrap();
        assert_eq!(fs::read(&p).unwrap(), vec![7u8; 4096]);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "renamed");
        // Dropped unnamed: the hidden file goes.
        let q = d.path().join("other");
        let (_fd, _, nf) = NewFile::create_hidden(&q, d.path()).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
        drop(nf);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_named() {
        let e = NewFile::create(Path::new("/nonexistent/dir/new")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir"), "{e}");
    }
}
