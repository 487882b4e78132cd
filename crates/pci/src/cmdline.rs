//! The kernel command line (`/proc/cmdline`) as the kernel itself splits
//! it: the parameters it parses (everything before a lone `--`, which hands
//! the rest to init), with `next_arg()`'s quoting, and the options of
//! `pci=` as `pci_setup()` sees them (each `pci=` value split at commas,
//! every `pci=` parameter processed in order, so the last
//! `pci=disable_acs_redir=` or `pci=config_acs=` wins).
//!
//! It also edits a command line: [`KernelCmdline::with_pci_options`] sets
//! `pci=` options where the kernel will take them from, which is how a fix
//! that is a kernel parameter is written down and then checked.

use std::fmt;

/// `isspace()` of the kernel's `_ctype` table: the ASCII white space and
/// 0xa0 (which the kernel's Latin-1 table counts as a space).
fn kspace(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0)
}

/// One parameter as `next_arg()` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// The name (before the first `=`), quotes removed as the kernel does.
    pub name: String,
    /// The value after the first `=`; `None` for a bare word.
    pub value: Option<String>,
    /// Byte range of the whole parameter in the command line text.
    span: (usize, usize),
}

/// One option of a `pci=` parameter (`pci=noats,disable_acs_redir=...`
/// has two).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciOption {
    /// Index of the `pci=` parameter in [`KernelCmdline::params`].
    pub param: usize,
    /// Position among that parameter's comma-separated options.
    pub index: usize,
    /// The option's text (`disable_acs_redir=0000:00:02.0`).
    pub text: String,
}

/// A kernel command line, split as the kernel splits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCmdline {
    text: String,
    /// Parameters the kernel parses, in order.
    params: Vec<Param>,
    /// Where the words for init (after ` -- `) begin, if any.
    init_args: Option<usize>,
}

impl fmt::Display for KernelCmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl KernelCmdline {
    /// Split `text` (a `/proc/cmdline`; a trailing newline is ignored).
    pub fn parse(text: &str) -> KernelCmdline {
        let text = text.trim_end_matches(['\n', '\0']).to_string();
        let b = text.as_bytes();
        let mut params = Vec::new();
        let mut init_args = None;
        let mut at = 0;
        while at < b.len() && kspace(b[at]) {
            at += 1;
        }
        while at < b.len() {
            let (param, next) = next_arg(b, at);
            if param.value.is_none() && param.name == "--" {
                init_args = Some(next);
                break;
            }
            params.push(param);
            at = next;
        }
        KernelCmdline {
            text,
            params,
            init_args,
        }
    }

    /// The text as read.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parameters the kernel parses (not the words after `--`).
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The value of the last parameter `name=` (the one most parsers keep),
    /// `Some("")` for `name=`, `None` when absent or only a bare word.
    pub fn last(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|p| param_eq(&p.name, name) && p.value.is_some())
            .and_then(|p| p.value.as_deref())
    }

    /// Every value of `name=`, in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |p| param_eq(&p.name, name))
            .filter_map(|p| p.value.as_deref())
    }

    /// The options of every `pci=` parameter, in the order `pci_setup()`
    /// handles them. Empty options (`pci=a,,b`) are skipped as the kernel
    /// skips them.
    pub fn pci_options(&self) -> Vec<PciOption> {
        let mut out = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            if !param_eq(&p.name, "pci") {
                continue;
            }
            let Some(v) = &p.value else { continue };
            for (j, o) in v.split(',').enumerate() {
                if !o.is_empty() {
                    out.push(PciOption {
                        param: i,
                        index: j,
                        text: o.to_string(),
                    });
                }
            }
        }
        out
    }

    /// The value `pci_setup()` keeps for the option `name` (given without
    /// its `=`, as `disable_acs_redir`): the text after `name=` in the last
    /// such option, `None` when there is none.
    pub fn pci_option(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.pci_options()
            .into_iter()
            .rev()
            .find_map(|o| o.text.strip_prefix(&prefix).map(str::to_string))
    }

    /// Whether `pci=noats` is given (`pci_setup()` matches its first five
    /// characters only, so `pci=noatsX` counts too).
    pub fn pci_noats(&self) -> bool {
        self.pci_options()
            .iter()
            .any(|o| o.text.starts_with("noats"))
    }

    /// The command line with `pci=` options set: each `(name, value)`
    /// replaces the option the kernel would take `name=` from (the last
    /// one, inside its `pci=` parameter, other options kept), or is added
    /// as a new `pci=name=value` parameter after the others (before a
    /// `--`). Replacing a quoted parameter writes it unquoted (option
    /// values hold no spaces).
    pub fn with_pci_options(&self, set: &[(&str, &str)]) -> String {
        // Per parameter index: the new option list.
        let mut replaced: Vec<(usize, Vec<String>)> = Vec::new();
        let mut appended: Vec<String> = Vec::new();
        let opts = self.pci_options();
        for (name, value) in set {
            let prefix = format!("{name}=");
            match opts.iter().rev().find(|o| o.text.starts_with(&prefix)) {
                Some(o) => {
                    let entry = match replaced.iter_mut().find(|(i, _)| *i == o.param) {
                        Some(e) => e,
                        None => {
                            let list = self.params[o.param]
                                .value
                                .as_deref()
                                .unwrap_or("")
                                .split(',')
                                .map(str::to_string)
                                .collect();
                            replaced.push((o.param, list));
                            replaced.last_mut().expect("just pushed")
                        }
                    };
                    entry.1[o.index] = format!("{name}={value}");
                }
                None => appended.push(format!("pci={name}={value}")),
            }
        }
        let mut out = String::new();
        let mut at = 0;
        replaced.sort_by_key(|(i, _)| *i);
        for (i, list) in &replaced {
            let (s, e) = self.params[*i].span;
            out.push_str(&self.text[at..s]);
            out.push_str(&format!("{}={}", self.params[*i].name, list.join(",")));
            at = e;
        }
        let insert_at = match self.init_args {
            // Before the ` -- `: find the start of the `--` word.
            Some(_) => self.params.last().map_or(0, |p| p.span.1),
            None => self.text.len(),
        };
        let insert_at = insert_at.max(at);
        out.push_str(&self.text[at..insert_at]);
        for a in appended {
            if !out.is_empty() && !out.ends_with(|c: char| c.is_ascii_whitespace()) {
                out.push(' ');
            }
            out.push_str(&a);
        }
        let rest = &self.text[insert_at..];
        if !rest.is_empty()
            && !out.is_empty()
            && !rest.starts_with(|c: char| c.is_ascii_whitespace())
        {
            out.push(' ');
        }
        out.push_str(rest);
        out
    }
}

/// `parameq()`: parameter names compare with `-` and `_` as the same.
fn param_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (matches!(x, b'-' | b'_') && matches!(y, b'-' | b'_')))
}

/// `next_arg()` of lib/cmdline.c from byte `start` (not a space): the
/// parameter and where the next one begins (spaces after it skipped).
fn next_arg(b: &[u8], start: usize) -> (Param, usize) {
    let mut args = start;
    let mut in_quote = false;
    let mut quoted = false;
    if b[args] == b'"' {
        args += 1;
        in_quote = true;
        quoted = true;
    }
    let mut equals = 0usize;
    let mut i = 0usize;
    while args + i < b.len() {
        let c = b[args + i];
        if kspace(c) && !in_quote {
            break;
        }
        // The kernel's `equals == 0` test: a '=' at index 0 does not count.
        if equals == 0 && c == b'=' {
            equals = i;
        }
        if c == b'"' {
            in_quote = !in_quote;
        }
        i += 1;
    }
    let end = args + i;
    let word = &b[args..end];
    let (name, value) = if equals == 0 {
        let mut n = word;
        if quoted && n.last() == Some(&b'"') {
            n = &n[..n.len() - 1];
        }
        (n, None)
    } else {
        let name = &word[..equals];
        let mut v = &word[equals + 1..];
        let mut cut_last = false;
        if v.first() == Some(&b'"') {
            v = &v[1..];
            if word.last() == Some(&b'"') {
                cut_last = true;
            }
        }
        if quoted && word.last() == Some(&b'"') {
            cut_last = true;
        }
        if cut_last && !v.is_empty() && v.last() == Some(&b'"') {
            v = &v[..v.len() - 1];
        }
        (name, Some(v))
    };
    let mut next = end;
    if next < b.len() {
        next += 1;
    }
    while next < b.len() && kspace(b[next]) {
        next += 1;
    }
    let lossy = |s: &[u8]| String::from_utf8_lossy(s).into_owned();
    (
        Param {
            name: lossy(name),
            value: value.map(lossy),
            span: (start, end),
        },
        next,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_next_arg() {
        let c = KernelCmdline::parse(
            "BOOT_IMAGE=/vmlinuz ro  quiet pci=noats,disable_acs_redir=0000:00:02.0 \"dyndbg=file drivers/pci/pci.c +p\" x= -- pci=config_acs=1@0000:00:03.0\n",
        );
        let names: Vec<&str> = c.params().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["BOOT_IMAGE", "ro", "quiet", "pci", "dyndbg", "x"]);
        assert_eq!(
            c.params()[4].value.as_deref(),
            Some("file drivers/pci/pci.c +p")
        );
        assert_eq!(c.last("x"), Some(""));
        assert_eq!(c.last("ro"), None);
        // After `--` the words go to init: the kernel never sees that config_acs.
        assert_eq!(c.pci_option("config_acs"), None);
        assert_eq!(
            c.pci_option("disable_acs_redir").as_deref(),
            Some("0000:00:02.0")
        );
        assert!(c.pci_noats());
        // A quoted value: `pci="..."`.
        let c = KernelCmdline::parse("pci=\"config_acs=1@0000:00:02.0\"");
        assert_eq!(
            c.pci_option("config_acs").as_deref(),
            Some("1@0000:00:02.0")
        );
        // '-' and '_' are the same in names.
        let c = KernelCmdline::parse("intel-iommu=on");
        assert_eq!(c.last("intel_iommu"), Some("on"));
    }

    #[test]
    fn the_last_pci_option_wins_and_commas_split_options() {
        let c = KernelCmdline::parse(
            "pci=disable_acs_redir=0000:00:02.0 pci=nomsi,disable_acs_redir=pci:8086:1234,pci:0:0",
        );
        // pci_setup() cuts at the comma: `pci:0:0` is an option of its own
        // (an unknown one), not part of the list.
        assert_eq!(
            c.pci_option("disable_acs_redir").as_deref(),
            Some("pci:8086:1234")
        );
        let texts: Vec<String> = c.pci_options().into_iter().map(|o| o.text).collect();
        assert_eq!(
            texts,
            [
                "disable_acs_redir=0000:00:02.0",
                "nomsi",
                "disable_acs_redir=pci:8086:1234",
                "pci:0:0"
            ]
        );
        assert!(!c.pci_noats());
    }

    #[test]
    fn edits_set_the_option_the_kernel_reads() {
        let c = KernelCmdline::parse("console=ttyS0 pci=config_acs=xxxx11xx@0000:00:02.0 quiet");
        assert_eq!(
            c.with_pci_options(&[("config_acs", "xx0x00xx@0000:00:02.0")]),
            "console=ttyS0 pci=config_acs=xx0x00xx@0000:00:02.0 quiet"
        );
        assert_eq!(
            c.with_pci_options(&[("disable_acs_redir", "0000:00:03.0")]),
            "console=ttyS0 pci=config_acs=xxxx11xx@0000:00:02.0 quiet pci=disable_acs_redir=0000:00:03.0"
        );
        // The last of two, inside a parameter with other options.
        let c = KernelCmdline::parse(
            "pci=disable_acs_redir=0000:00:01.0 pci=noats,disable_acs_redir=0000:00:02.0,nomsi",
        );
        let e = c.with_pci_options(&[("disable_acs_redir", "0000:00:03.0;0000:00:02.0")]);
        assert_eq!(
            e,
            "pci=disable_acs_redir=0000:00:01.0 pci=noats,disable_acs_redir=0000:00:03.0;0000:00:02.0,nomsi"
        );
        assert_eq!(
            KernelCmdline::parse(&e)
                .pci_option("disable_acs_redir")
                .as_deref(),
            Some("0000:00:03.0;0000:00:02.0")
        );
        // Before the words for init.
        let c = KernelCmdline::parse("ro -- single");
        assert_eq!(
            c.with_pci_options(&[("disable_acs_redir", "0000:00:02.0")]),
            "ro pci=disable_acs_redir=0000:00:02.0 -- single"
        );
        assert_eq!(
            KernelCmdline::parse("").with_pci_options(&[("config_acs", "1@pci:0:0")]),
            "pci=config_acs=1@pci:0:0"
        );
        // A quoted parameter is rewritten unquoted.
        let c = KernelCmdline::parse("a \"pci=config_acs=1@0000:00:02.0\" b");
        assert_eq!(
            c.with_pci_options(&[("config_acs", "0@0000:00:02.0")]),
            "a pci=config_acs=0@0000:00:02.0 b"
        );
    }
}
