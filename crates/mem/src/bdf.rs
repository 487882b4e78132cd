use std::fmt;
use std::str::FromStr;

/// A PCI function address: domain (segment), bus, device, function, printed
/// as the kernel's `pci_name()` does (`0000:3b:00.0`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    domain: u32,
    bus: u8,
    device: u8,
    function: u8,
}

/// Why a string is not a PCI function address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdfError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for BdfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a PCI address ({}); expected DDDD:BB:DD.F or BB:DD.F in hex, e.g. 0000:3b:00.0",
            self.input, self.reason
        )
    }
}

impl std::error::Error for BdfError {}

impl Bdf {
    /// A function address; `None` if device > 31 or function > 7.
    pub const fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device > 31 || function > 7 {
            return None;
        }
        Some(Bdf {
            domain,
            bus,
            device,
            function,
        })
    }

    /// From domain, bus and the 8-bit `devfn` (device << 3 | function).
    pub const fn from_devfn(domain: u32, bus: u8, devfn: u8) -> Bdf {
        Bdf {
            domain,
            bus,
            device: devfn >> 3,
            function: devfn & 7,
        }
    }

    pub const fn domain(self) -> u32 {
        self.domain
    }
    pub const fn bus(self) -> u8 {
        self.bus
    }
    pub const fn device(self) -> u8 {
        self.device
    }
    pub const fn function(self) -> u8 {
        self.function
    }
    /// `device << 3 | function`, as `PCI_DEVFN`.
    pub const fn devfn(self) -> u8 {
        (self.device << 3) | self.function
    }
    /// The same device, another function.
    pub const fn with_function(self, function: u8) -> Option<Bdf> {
        Bdf::new(self.domain, self.bus, self.device, function)
    }
    /// Whether two functions belong to the same device (same slot on the same bus).
    pub const fn same_device(self, other: Bdf) -> bool {
        self.domain == other.domain && self.bus == other.bus && self.device == other.device
    }
    /// `BB:DD.F`, the short form lspci prints in domain 0.
    pub fn short(self) -> String {
        format!("{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn hex<T: TryFrom<u64>>(s: &str, max_digits: usize) -> Option<T> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16)
        .ok()
        .and_then(|v| T::try_from(v).ok())
}

impl FromStr for Bdf {
    type Err = BdfError;

    fn from_str(input: &str) -> Result<Bdf, BdfError> {
        let err = |reason| BdfError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        let (head, func) = s
            .rsplit_once('.')
            .ok_or_else(|| err("no '.' before the function"))?;
        let function: u8 = match func {
            f if f.len() == 1 && f.as_bytes()[0].is_ascii_digit() => f.as_bytes()[0] - b'0',
            _ => return Err(err("function must be one digit 0-7")),
        };
        if function > 7 {
            return Err(err("function must be one digit 0-7"));
        }
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, dev) = match parts.as_slice() {
            [d, b, v] => (
                hex::<u32>(d, 8).ok_or_else(|| err("domain must be hex, at most 8 digits"))?,
                *b,
                *v,
            ),
            [b, v] => (0, *b, *v),
            _ => return Err(err("expected two or three ':'-separated fields before '.'")),
        };
        let bus = hex::<u8>(bus, 2).ok_or_else(|| err("bus must be 1-2 hex digits"))?;
        let device = hex::<u8>(dev, 2).ok_or_else(|| err("device must be 1-2 hex digits"))?;
        if device > 31 {
            return Err(err("device must be 00-1f"));
        }
        Ok(Bdf {
            domain,
            bus,
            device,
            function,
        })
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Bdf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Bdf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bdf, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_long_and_short_forms() {
        let b: Bdf = "0000:3b:00.1".parse().unwrap();
        assert_eq!(
            (b.domain(), b.bus(), b.device(), b.function()),
            (0, 0x3b, 0, 1)
        );
        assert_eq!(b.to_string(), "0000:3b:00.1");
        let s: Bdf = "3B:1f.7".parse().unwrap();
        assert_eq!(s.to_string(), "0000:3b:1f.7");
        assert_eq!(s.devfn(), 0xff);
        let vmd: Bdf = "10000:e1:00.0".parse().unwrap();
        assert_eq!(vmd.to_string(), "10000:e1:00.0");
        assert_eq!(vmd.short(), "e1:00.0");
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        for (bad, why) in [
            ("", "no '.'"),
            ("00:01", "no '.'"),
            ("00:01.8", "function"),
            ("00:01.a", "function"),
            ("00:20.0", "00-1f"),
            ("100:01.0", "bus"),
            ("zz:01.0", "bus"),
            ("0000:00:00:01.0", "fields"),
            ("123456789:00:01.0", "domain"),
            ("00:-1.0", "device"),
            ("00:01.", "function"),
        ] {
            let e = bad.parse::<Bdf>().unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(msg.contains(&format!("'{bad}'")), "{msg}");
        }
    }

    #[test]
    fn same_device_and_devfn() {
        let a = Bdf::new(0, 1, 2, 0).unwrap();
        let b = a.with_function(3).unwrap();
        assert!(a.same_device(b));
        assert!(!a.same_device(Bdf::new(0, 1, 3, 0).unwrap()));
        assert_eq!(Bdf::from_devfn(0, 1, b.devfn()), b);
        assert_eq!(Bdf::new(0, 0, 32, 0), None);
        assert_eq!(a.with_function(8), None);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(d in any::<u32>(), b in any::<u8>(), v in 0u8..32, f in 0u8..8) {
            let bdf = Bdf::new(d, b, v, f).unwrap();
            prop_assert_eq!(bdf.to_string().parse::<Bdf>().unwrap(), bdf);
        }

        #[test]
        fn never_panics_on_junk(s in ".{0,20}") {
            let _ = s.parse::<Bdf>();
        }
    }
}
