//! Graphviz, the layout engine behind peerdma's pictures: the DOT text of a
//! graph in, SVG out, by running Graphviz's `dot` program (Debian's
//! `graphviz` package). peerdma writes the graph; Graphviz places it.
//!
//! The program is `dot` on the `PATH`, or the one `PEERDMA_DOT` names.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// The environment variable that names the `dot` program to run.
pub const DOT_ENV: &str = "PEERDMA_DOT";

/// Why a graph could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum GraphvizError {
    /// The program is not there.
    #[error("cannot draw the picture: Graphviz's `{program}` is not installed (Debian and Ubuntu: apt install graphviz); --dot FILE writes the graph to lay out elsewhere")]
    NotInstalled { program: String },
    /// The program ran and failed, or printed something that is not SVG.
    #[error("cannot draw the picture: `{program} -Tsvg` failed: {detail}")]
    Failed { program: String, detail: String },
}

/// The `dot` program to run.
pub fn program() -> String {
    std::env::var(DOT_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "dot".into())
}

/// Whether Graphviz can be run here.
pub fn available() -> bool {
    Command::new(program())
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Lay `dot` out and draw it as an SVG document.
pub fn svg(dot: &str) -> Result<String, GraphvizError> {
    let program = program();
    let failed = |detail: String| GraphvizError::Failed {
        program: program.clone(),
        detail,
    };
    let mut child = match Command::new(&program)
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GraphvizError::NotInstalled { program })
        }
        Err(e) => return Err(failed(e.to_string())),
    };
    // Feed the graph from another thread while this one reads the picture,
    // so that neither pipe fills up and stalls the other.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = dot.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut out = Vec::new();
    let mut err = Vec::new();
    let read_out = child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_end(&mut out);
    let _ = child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_end(&mut err);
    let status = child.wait().map_err(|e| failed(e.to_string()))?;
    let wrote = writer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
    let first_err_line = String::from_utf8_lossy(&err)
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    if !status.success() {
        return Err(failed(if first_err_line.is_empty() {
            status.to_string()
        } else {
            first_err_line
        }));
    }
    read_out.map_err(|e| failed(format!("reading its output: {e}")))?;
    wrote.map_err(|e| failed(format!("writing the graph to it: {e}")))?;
    let text = String::from_utf8(out).map_err(|_| failed("its output is not UTF-8".into()))?;
    if !text.contains("<svg") {
        return Err(failed("its output holds no <svg> element".into()));
    }
    Ok(text)
}

/// The `<svg>` element of an SVG document, without the XML declaration,
/// doctype and comments before it: what goes inline into an HTML page.
pub fn inline(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => svg[i..].trim_end(),
        None => svg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_drops_the_prolog() {
        let doc = "<?xml version=\"1.0\"?>\n<!DOCTYPE svg>\n<!-- x -->\n<svg width=\"1\"></svg>\n";
        assert_eq!(inline(doc), "<svg width=\"1\"></svg>");
    }
}
