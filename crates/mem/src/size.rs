use std::fmt;

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a size ({}); use a number of bytes with an optional binary suffix K, M, G, T (e.g. 64K, 1.5G) or 0x hex",
            self.input, self.reason
        )
    }
}

impl std::error::Error for SizeError {}

/// Parse a byte count: `4096`, `0x1000`, `64K`, `64KiB`, `1.5G`, `2T`.
/// Suffixes are binary (K = 1024). Fractions must come out whole.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let err = |reason| SizeError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| err("bad hex number"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(err("unknown suffix")),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac.contains('.') {
        return Err(err("more than one '.'"));
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| err("number too large"))?
    };
    let whole = int
        .checked_mul(1u64 << shift)
        .ok_or_else(|| err("number too large"))?;
    if frac.is_empty() {
        return Ok(whole);
    }
    if frac.len() > 6 {
        return Err(err("too many decimals"));
    }
    let denom = 10u128.pow(frac.len() as u32);
    let f: u128 = frac.parse().map_err(|_| err("bad fraction"))?;
    let scaled = f * (1u128 << shift);
    if scaled % denom != 0 {
        return Err(err("fraction is not a whole number of bytes"));
    }
    let extra = u64::try_from(scaled / denom).map_err(|_| err("number too large"))?;
    whole
        .checked_add(extra)
        .ok_or_else(|| err("number too large"))
}

/// A byte count for people: `512 B`, `64 KiB`, `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut v = bytes as f64;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2t").unwrap(), 2 << 40);
        assert_eq!(parse_size(" 16M ").unwrap(), 16 << 20);
    }

    #[test]
    fn refuses() {
        for (bad, why) in [
            ("", "no number"),
            ("K", "no number"),
            ("12Q", "suffix"),
            ("1.2.3", "'.'"),
            ("0.3", "whole"),
            ("99999999999999999999", "large"),
            ("20000000P", "large"),
            ("0xzz", "hex"),
        ] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(65536), "64 KiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }

    proptest! {
        #[test]
        fn no_panic(s in ".{0,12}") { let _ = parse_size(&s); }

        #[test]
        fn plain_numbers_round_trip(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&n.to_string()).unwrap(), n);
        }
    }
}
