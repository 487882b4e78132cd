use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong reading a machine. Each message is one line
/// that names the file (and line, or device) and what is wrong.
#[derive(Debug)]
pub enum Error {
    /// A file or directory could not be read or written.
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// A path names something that cannot be read as the file expected
    /// (a FIFO, a device, a directory, or a file larger than any real one).
    BadFile { path: PathBuf, msg: String },
    /// A file's contents are malformed.
    Parse {
        /// The file (or preset) the text came from.
        origin: String,
        /// 1-based line, where known.
        line: Option<usize>,
        msg: String,
    },
    /// One function of an otherwise readable capture is wrong.
    Device {
        origin: String,
        device: String,
        msg: String,
    },
    /// A function that the machine does not have was asked for.
    NoSuchFunction {
        origin: String,
        asked: String,
        hint: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
    pub(crate) fn bad_file(path: &Path, msg: impl Into<String>) -> Error {
        Error::BadFile {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub(crate) fn parse(
        origin: impl Into<String>,
        line: Option<usize>,
        msg: impl Into<String>,
    ) -> Error {
        Error::Parse {
            origin: origin.into(),
            line,
            msg: msg.into(),
        }
    }
    pub(crate) fn device(
        origin: impl Into<String>,
        device: impl fmt::Display,
        msg: impl Into<String>,
    ) -> Error {
        Error::Device {
            origin: origin.into(),
            device: device.to_string(),
            msg: msg.into(),
        }
    }
}

/// Writes through to a formatter with control characters escaped, so a
/// message stays one line whatever text from the input it quotes (a name
/// or an attribute value may hold a newline).
struct OneLine<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl fmt::Write for OneLine<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if c.is_control() {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(self.0, c)?;
            }
        }
        Ok(())
    }
}

/// serde's, serde_json's and toml's words in a reader's terms: numeric
/// types become their ranges, and the message one line.
pub(crate) fn in_user_terms(message: &str) -> String {
    let mut m = message.replace('\n', "; ");
    for (ty, range) in [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number from 0 to 18446744073709551615"),
        ("i64", "a whole number"),
    ] {
        m = m.replace(&format!("expected {ty}"), &format!("expected {range}"));
    }
    for (theirs, ours) in [
        ("expected a sequence", "expected a list [...]"),
        (
            "expected newline, `#`",
            "expected the end of the line (or a # comment) after the value",
        ),
        ("expected `.`, `=`", "expected `key = value`"),
        (
            "invalid basic string",
            "a string is not closed (a missing \")",
        ),
    ] {
        m = m.replace(theirs, ours);
    }
    m
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        let mut f = OneLine(f);
        match self {
            Error::Io {
                path,
                action,
                source,
            } => {
                let why = match source.kind() {
                    io::ErrorKind::NotFound => "no such file or directory".to_string(),
                    io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                    _ => source.to_string(),
                };
                write!(f, "cannot {action} {}: {why}", path.display())
            }
            Error::BadFile { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Parse { origin, line, msg } => match line {
                Some(l) => write!(f, "{origin}:{l}: {msg}"),
                None => write!(f, "{origin}: {msg}"),
            },
            Error::Device {
                origin,
                device,
                msg,
            } => write!(f, "{origin}: device {device}: {msg}"),
            Error::NoSuchFunction {
                origin,
                asked,
                hint,
            } => {
                write!(f, "no PCI function {asked} in {origin}")?;
                if !hint.is_empty() {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_stay_one_line_whatever_they_quote() {
        let e = Error::parse("a\nb.toml", Some(3), "name 'x\ny\t' is bad");
        assert_eq!(e.to_string(), "a\\nb.toml:3: name 'x\\ny\\t' is bad");
    }
}
