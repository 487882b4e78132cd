//! Colour where it helps a person read: verdicts in `check` and in the
//! matrix of `topo` and `matrix` (green: P2P by bus address, yellow:
//! through the host bridge, red: not supported).
//!
//! Text is written through anstream, which drops the colour when standard
//! output is not a terminal, when NO_COLOR is set (and not empty), or with
//! `--color never`; `--color always` keeps it even then.

use anstyle::{AnsiColor, Style};
use peerdma_p2p::MapType;
use std::io::Write;

/// When to colour (`--color`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// When standard output is a terminal and NO_COLOR is not set.
    #[default]
    Auto,
    /// Always, even when writing to a file or a pipe, or with NO_COLOR set.
    Always,
    /// Never.
    Never,
}

/// Apply `--color` for everything printed after.
pub fn set(when: ColorWhen) {
    anstream::ColorChoice::write_global(match when {
        ColorWhen::Auto => anstream::ColorChoice::Auto,
        ColorWhen::Always => anstream::ColorChoice::Always,
        ColorWhen::Never => anstream::ColorChoice::Never,
    });
}

/// The style of a verdict.
pub fn verdict(m: MapType) -> Style {
    match m {
        MapType::BusAddr => AnsiColor::Green.on_default(),
        MapType::ThruHostBridge => AnsiColor::Yellow.on_default(),
        MapType::NotSupported => AnsiColor::Red.on_default(),
        MapType::None => Style::new(),
    }
}

/// `text` in `style`.
pub fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

/// A matrix cell: its verdict's colour; a function with itself dimmed.
pub fn cell(kind: Option<MapType>, text: &str) -> String {
    match kind {
        Some(m) => paint(verdict(m), text),
        None => paint(Style::new().dimmed(), text),
    }
}

/// The first line of `check`'s explanation with its verdict coloured:
/// `A -> B: bus_addr (...)`.
pub fn check(text: &str, m: MapType) -> String {
    let needle = format!(": {m} (");
    match text.find(&needle) {
        Some(at) if text[..at].find('\n').is_none() => format!(
            "{}: {} ({}",
            &text[..at],
            paint(verdict(m).bold(), m.as_str()),
            &text[at + needle.len()..]
        ),
        _ => text.to_string(),
    }
}

/// Print text that may hold colour: through anstream, which keeps or drops
/// it as the terminal, NO_COLOR and `--color` say. A closed pipe is not an
/// error.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = anstream::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}
