//! Reading input files safely: never more than a stated number of bytes,
//! and never a file that could block or never end. Writing output files
//! whole or not at all.
//!
//! A copied sysfs tree is data like any other: its `config` may be a FIFO
//! (reading would wait forever for a writer) or a link to `/dev/zero`
//! (reading would never end). Every file is opened without blocking,
//! checked with `fstat` on the open descriptor (so what is checked is what
//! is read), and read up to a cap.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

/// PCI configuration space: 4096 bytes for PCI Express, 256 for PCI.
pub(crate) const CONFIG_CAP: u64 = 4096;
/// A sysfs attribute file: at most a page, which is 64 KiB on the largest
/// page size Linux uses.
pub(crate) const ATTR_CAP: u64 = 64 << 10;
/// `/proc/cpuinfo`: about 1.5 KiB per logical processor on x86.
pub(crate) const CPUINFO_CAP: u64 = 64 << 20;
/// A snapshot: ~10 KiB per function; 256 MiB is 25,000 functions.
pub(crate) const SNAPSHOT_CAP: u64 = 256 << 20;
/// A description file, written by hand or generated.
pub(crate) const DESCRIPTION_CAP: u64 = 64 << 20;

/// What kinds of file a read accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Accept {
    /// Regular files only: what sysfs and procfs files are.
    Regular,
    /// Regular files, and pipes (`--snapshot /dev/stdin`, `<(...)`), read
    /// to their end.
    RegularOrPipe,
}

/// Why a file was not read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The operating system refused (including "not found").
    Io(io::Error),
    /// The path names something that is not a file this read accepts.
    NotAFile(&'static str),
    /// The file holds more than the cap.
    TooLarge,
}

/// Read the whole of `path`, at most `cap` bytes. A path that is not a
/// file this read accepts is refused without blocking.
pub(crate) fn read_capped(
    path: &Path,
    cap: u64,
    accept: Accept,
) -> std::result::Result<Vec<u8>, ReadError> {
    let file = open_nonblocking(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    let kind = meta.file_type();
    let pipe = is_fifo(&kind);
    if !(kind.is_file() || (pipe && accept == Accept::RegularOrPipe)) {
        return Err(ReadError::NotAFile(describe(&kind)));
    }
    if pipe {
        // A pipe the user named. Opened without blocking, a read would see
        // the end at once while no writer has come yet; wait until a
        // writer has written or gone, as a blocking open and read would.
        wait_for_writer(&file).map_err(ReadError::Io)?;
    }
    // Sized from the file's length (a snapshot is hundreds of KiB), so the
    // read does not grow and copy the buffer as it goes.
    let mut out = Vec::with_capacity(if kind.is_file() {
        meta.len().min(cap) as usize + 1
    } else {
        0
    });
    file.take(cap + 1)
        .read_to_end(&mut out)
        .map_err(ReadError::Io)?;
    if out.len() as u64 > cap {
        return Err(ReadError::TooLarge);
    }
    Ok(out)
}

/// Read a user-named input file (snapshot or description): one error that
/// names the file, what it is, and the limit.
pub(crate) fn read_input(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    read_capped(path, cap, Accept::RegularOrPipe).map_err(|e| match e {
        ReadError::Io(e) => Error::io("read", path, e),
        ReadError::NotAFile(kind) => {
            Error::bad_file(path, format!("is {kind}, not a file; expected {what}"))
        }
        ReadError::TooLarge => Error::bad_file(
            path,
            format!(
                "is larger than {}, too large for {what}",
                peerdma_mem::format_size(cap)
            ),
        ),
    })
}

/// Write `bytes` to `path` whole or not at all: into a temporary file of
/// its own in the destination's directory, persisted by rename, so that a
/// failure leaves neither a partial file nor a stray temporary one, and
/// no other file is touched. A path that is a device or a pipe
/// (`/dev/stdout`) is written directly; a directory is refused; a link to a
/// file replaces the file it links to.
pub(crate) fn write_whole(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    let meta = fs::metadata(path);
    if let Ok(m) = &meta {
        if m.is_dir() {
            return Err(Error::bad_file(
                path,
                format!("is a directory, not a file to write {what} to"),
            ));
        }
        if !m.is_file() {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io("write", path, e))?;
            return f.write_all(bytes).map_err(|e| Error::io("write", path, e));
        }
    }
    // Follow a link to the file it names, as writing through it would.
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        // As any new file: 0666 less the umask (the open applies it).
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder
        .tempfile_in(&dir)
        .map_err(|e| Error::io("create a file in", &dir, e))?;
    if let Ok(m) = &meta {
        // Replacing a file keeps its permissions.
        let _ = tmp.as_file().set_permissions(m.permissions());
    }
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io("write", path, e))?;
    tmp.persist(&target)
        .map_err(|e| Error::io("write", path, e.error))?;
    Ok(())
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Wait until a pipe has data or its writers have gone, then make reads
/// block until the end.
#[cfg(unix)]
fn wait_for_writer(file: &File) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags};
    use rustix::fs::OFlags;
    let mut fds = [PollFd::new(file, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let flags = rustix::fs::fcntl_getfl(file)?;
    rustix::fs::fcntl_setfl(file, flags - OFlags::NONBLOCK)?;
    Ok(())
}

#[cfg(not(unix))]
fn wait_for_writer(_: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn is_fifo(kind: &std::fs::FileType) -> bool {
    std::os::unix::fs::FileTypeExt::is_fifo(kind)
}

#[cfg(not(unix))]
fn is_fifo(_: &std::fs::FileType) -> bool {
    false
}

/// What a file that is not a regular file is, for messages.
fn describe(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, [7u8; 100]).unwrap();
        assert_eq!(read_capped(&p, 100, Accept::Regular).unwrap().len(), 100);
        assert!(matches!(
            read_capped(&p, 99, Accept::Regular),
            Err(ReadError::TooLarge)
        ));
        assert!(matches!(
            read_capped(&dir.path().join("none"), 10, Accept::Regular),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        for (p, what) in [
            (&fifo, "a FIFO"),
            (&zero, "a character device"),
            (&dir.path().to_path_buf(), "a directory"),
        ] {
            match read_capped(p, 4096, Accept::Regular) {
                Err(ReadError::NotAFile(k)) => assert_eq!(k, what),
                other => panic!("{}: {other:?}", p.display()),
            }
        }
        // A FIFO is accepted where pipes are, and read to its end.
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::write(fifo, b"hello").unwrap())
        };
        assert_eq!(
            read_capped(&fifo, 4096, Accept::RegularOrPipe).unwrap(),
            b"hello"
        );
        writer.join().unwrap();
    }
}
