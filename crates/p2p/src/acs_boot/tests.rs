//! `pci_enable_acs()` against what the kernel source and its own words
//! say: the examples of Documentation/admin-guide/kernel-parameters.txt and
//! of the kernel's fix "PCI/ACS: Fix 'pci=config_acs=' parameter" (its
//! commit message logs the mask, flags, control and firmware values and
//! what the kernel configured), and the parser's quirks read off
//! `__pci_config_acs()`, `pci_dev_str_match()` and `vsscanf()`.

use super::*;
use peerdma_pci::config::ConfigBuilder;
use peerdma_pci::raw::{Origin, RawCpu, RawDevice, RawMachine};

/// A function for [`machine`]: sysfs path, config space.
struct Dev {
    path: &'static str,
    config: Vec<u8>,
}

fn host(domain: &'static str) -> Dev {
    Dev {
        path: domain,
        config: ConfigBuilder::new(0x8086, 0x29c0, 0x060000, 0, 0, true)
            .build()
            .bytes()
            .to_vec(),
    }
}

/// A root port (1b36:000c, QEMU's) with buses, an ACS capability and
/// control.
fn port(path: &'static str, vendor_device: (u16, u16), bus: u8, cap: u16, ctrl: u16) -> Dev {
    Dev {
        path,
        config: ConfigBuilder::new(vendor_device.0, vendor_device.1, 0x060400, 0, 1, true)
            .bridge_buses(0, bus, bus)
            .pcie(4, Some((1, 1, 1, 1)))
            .acs(cap, ctrl)
            .build()
            .bytes()
            .to_vec(),
    }
}

fn endpoint(path: &'static str, ids: (u16, u16), subsys: (u16, u16), mf: bool) -> Dev {
    Dev {
        path,
        config: ConfigBuilder::new(ids.0, ids.1, 0x010802, 0, 0, true)
            .multifunction(mf)
            .subsystem(subsys.0, subsys.1)
            .pcie(0, Some((1, 1, 1, 1)))
            .build()
            .bytes()
            .to_vec(),
    }
}

fn machine(devs: Vec<Dev>, cmdline: Option<&str>, iommu: Option<bool>) -> Topology {
    let devices = devs
        .into_iter()
        .map(|d| RawDevice {
            path: d.path.to_string(),
            config: d.config,
            ..Default::default()
        })
        .collect();
    let mut raw = RawMachine::new(
        Origin {
            // A sysfs capture without IOMMU units or groups had no IOMMU;
            // another kind leaves it unknown.
            kind: if iommu.is_some() { "sysfs" } else { "hwloc" }.into(),
            detail: "test".into(),
            cmdline: cmdline.map(str::to_string),
            ..Default::default()
        },
        RawCpu {
            vendor_id: "GenuineIntel".into(),
            family: 6,
            ..Default::default()
        },
        devices,
    );
    raw.iommu_units = iommu.map(|on| if on { vec!["dmar0".into()] } else { vec![] });
    Topology::from_raw(raw, "test").unwrap()
}

const QEMU_RP: (u16, u16) = (0x1b36, 0x000c);
const ALL: u16 = ACS_VALID;

/// q35: host bridge 00:00.0; root port 00:02.0 (ACS SV|TB|RR|CR|UF|DT like
/// QEMU's) over a two-function NVMe 01:00.0/01:00.1; root port 00:03.0
/// (every ACS bit) over 02:00.0.
fn q35(ctrl2: u16, ctrl3: u16, cmdline: Option<&str>, iommu: Option<bool>) -> Topology {
    machine(
        vec![
            host("pci0000:00/0000:00:00.0"),
            port("pci0000:00/0000:00:02.0", QEMU_RP, 1, 0x5f, ctrl2),
            endpoint(
                "pci0000:00/0000:00:02.0/0000:01:00.0",
                (0x1b36, 0x0010),
                (0x1af4, 0x1100),
                true,
            ),
            endpoint(
                "pci0000:00/0000:00:02.0/0000:01:00.1",
                (0x1b36, 0x0010),
                (0x1af4, 0x1100),
                true,
            ),
            port("pci0000:00/0000:00:03.0", (0x8086, 0x1234), 2, ALL, ctrl3),
            endpoint(
                "pci0000:00/0000:00:03.0/0000:02:00.0",
                (0x144d, 0xa808),
                (0x144d, 0xa801),
                false,
            ),
        ],
        cmdline,
        iommu,
    )
}

fn id(t: &Topology, bdf: &str) -> FnId {
    t.lookup(bdf).unwrap()
}

fn boot(t: &Topology, bdf: &str) -> FunctionBoot {
    FunctionBoot::new(t, id(t, bdf), &BootFacts::of(t)).unwrap()
}

/// What the kernel writes for `bdf` from firmware value `fw`.
fn after(t: &Topology, bdf: &str, fw: u16) -> Bits {
    boot(t, bdf).apply(Bits::exact(fw))
}

fn lookup_config(t: &Topology, bdf: &str) -> Lookup {
    boot(t, bdf).config_acs
}

#[test]
fn kscanf_is_the_kernels() {
    let s = kscanf(b"0000:00:02.0", b"%x:%x:%x.%x%c");
    assert_eq!((s.num, s.vals), (4, vec![0, 0, 2, 0]));
    // A trailing character is the fifth conversion: the 4-field form fails.
    assert_eq!(kscanf(b"00:02.0z", b"%x:%x:%x.%x%c").num, 2);
    let s = kscanf(b"00:02.0z", b"%x:%x.%x%c");
    assert_eq!((s.num, s.vals), (4, vec![0, 2, 0, u64::from(b'z')]));
    // _parse_integer_fixup_radix() skips a `0x` even with no digit after
    // it: "0x" reads as 0 and leaves nothing for %c, so "00:02.0x" names
    // 00:02.0.
    let s = kscanf(b"00:02.0x", b"%x:%x.%x%c");
    assert_eq!((s.num, s.vals), (3, vec![0, 2, 0]));
    // `0x` prefixes and white space before numbers are taken.
    assert_eq!(kscanf(b"0x1f: 2", b"%x:%x").vals, vec![0x1f, 2]);
    // %hx truncates to 16 bits; %n counts what was read.
    let s = kscanf(b"18086:1234;x", b"%hx:%hx%n");
    assert_eq!((s.num, s.vals, s.n), (2, vec![0x8086, 0x1234], Some(10)));
    // %n at the end of input still counts; a missing field stops.
    assert_eq!(kscanf(b"8086:1234", b"%hx:%hx:%hx:%hx%n").num, 2);
}

#[test]
fn device_specs_match_as_pci_dev_str_match() {
    let t = q35(0, 0, None, Some(false));
    let dev = id(&t, "0000:01:00.1");
    let m = |s: &str| str_match(&t, dev, s.as_bytes()).0;
    // [<domain>:]<bus>:<dev>.<func>, domain 0 when left out.
    assert_eq!(m("0000:01:00.1"), Ok(true));
    assert_eq!(m("01:00.1"), Ok(true));
    assert_eq!(m("01:00.0"), Ok(false));
    assert_eq!(m("0001:01:00.1"), Ok(false));
    // A path of <dev>.<func> below the base address.
    assert_eq!(m("0000:00:02.0/00.1"), Ok(true));
    assert_eq!(m("00:02.0/00.1"), Ok(true));
    assert_eq!(m("00:03.0/00.1"), Ok(false));
    // PCI_DEVFN() masks the slot to 5 bits: 0x20 is slot 0.
    assert_eq!(m("00:02.0/20.1"), Ok(true));
    // pci:<vendor>:<device>[:<subvendor>:<subdevice>], 0 matching anything.
    assert_eq!(m("pci:1b36:0010"), Ok(true));
    assert_eq!(m("pci:1b36:0011"), Ok(false));
    assert_eq!(m("pci:0:0"), Ok(true));
    assert_eq!(m("pci:1b36:0010:1af4:1100"), Ok(true));
    assert_eq!(m("pci:1b36:0010:1af4:1101"), Ok(false));
    assert_eq!(m("pci:0:0:0:1100"), Ok(true));
    // Three fields: the 4-field scan fails, the 2-field one matches on
    // vendor:device alone (the subvendor is not looked at).
    assert_eq!(str_match(&t, dev, b"pci:1b36:0010:ffff"), (Ok(true), 13));
    // Not parseable.
    assert_eq!(m("pci:zz"), Err(()));
    assert_eq!(m("banana"), Err(()));
    assert_eq!(m("1@0000:01:00.1"), Err(()));
    assert_eq!(m("00:02.0/0x"), Err(()));
}

#[test]
fn the_documented_config_acs_example_needs_its_device() {
    // kernel-parameters.txt of 6.12: "pci=config_acs=10x would configure
    // all devices that support ACS to enable P2P Request Redirect, disable
    // Translation Blocking, and leave Source Validation unchanged". The
    // kernel needs `@<pci_dev>`: it logs "ACS Flags missing" and changes
    // nothing (upstream later corrected the text to `10x@pci:0:0`).
    let t = q35(0, 0, Some("pci=config_acs=10x"), Some(false));
    assert_eq!(
        lookup_config(&t, "0000:00:02.0"),
        Lookup::NoMatch {
            stop: Some(Stop::FlagsMissing { rest: "10x".into() })
        }
    );
    assert_eq!(
        after(&t, "0000:00:02.0", ACS_TB | ACS_SV),
        Bits::exact(ACS_TB | ACS_SV)
    );
    // With the device, every function with ACS: RR on, TB off, SV kept.
    let t = q35(0, 0, Some("pci=config_acs=10x@pci:0:0"), Some(false));
    let e = lookup_config(&t, "0000:00:03.0");
    let e = e.entry().unwrap();
    assert_eq!((e.mask, e.flags), (ACS_RR | ACS_TB, ACS_RR));
    assert_eq!(
        after(&t, "0000:00:03.0", ACS_TB | ACS_SV),
        Bits::exact(ACS_RR | ACS_SV)
    );
    assert_eq!(after(&t, "0000:00:03.0", ACS_TB).value, ACS_RR);
}

/// The machine of the kernel's fix commit: three ports with every ACS bit,
/// in domains 0x20, 0x30 and 0x39, an IOMMU on (its log shows the IOMMU's
/// bits in "ACS control").
fn commit_machine(cmdline: &str) -> Topology {
    machine(
        vec![
            host("pci0020:00/0020:00:00.0"),
            port("pci0020:00/0020:00:01.0", QEMU_RP, 2, ALL, 0),
            port("pci0020:00/0020:00:01.0/0020:02:00.0", QEMU_RP, 3, ALL, 0),
            host("pci0030:00/0030:00:00.0"),
            port("pci0030:00/0030:00:01.0", QEMU_RP, 2, ALL, 0),
            port("pci0030:00/0030:00:01.0/0030:02:00.0", QEMU_RP, 3, ALL, 0),
            port("pci0039:00/0039:00:00.0", QEMU_RP, 1, ALL, 0),
        ],
        Some(cmdline),
        Some(true),
    )
}

#[test]
fn config_acs_as_the_kernels_fix_commit_logs_it() {
    // "pci=config_acs=1111011@0020:02:00.0;101xxxx@0039:00:00.0":
    //   0020:02:00.0: mask 0x7f, flags 0x7b, control 0x5f, fw_ctrl 0x53 -> 0x7b
    //   0039:00:00.0: mask 0x70, flags 0x50, control 0x1d, fw_ctrl 0x00 -> 0x50
    let t = commit_machine("pci=config_acs=1111011@0020:02:00.0;101xxxx@0039:00:00.0");
    let e = lookup_config(&t, "0020:02:00.0");
    let e = e.entry().unwrap();
    assert_eq!((e.index, e.mask, e.flags), (0, 0x7f, 0x7b));
    let b = boot(&t, "0020:02:00.0");
    // The IOMMU's bits on top of the firmware's: the log's "ACS control".
    assert_eq!(0x53 | (b.cap & ACS_STD), 0x5f);
    assert_eq!(after(&t, "0020:02:00.0", 0x53), Bits::exact(0x7b));
    let e = lookup_config(&t, "0039:00:00.0");
    let e = e.entry().unwrap();
    assert_eq!((e.index, e.mask, e.flags), (1, 0x70, 0x50));
    assert_eq!(e.text, "101xxxx@0039:00:00.0");
    assert_eq!(after(&t, "0039:00:00.0", 0x00), Bits::exact(0x50));
    // A port neither entry names keeps the IOMMU's bits.
    assert_eq!(
        lookup_config(&t, "0030:02:00.0"),
        Lookup::NoMatch { stop: None }
    );
    assert_eq!(after(&t, "0030:02:00.0", 0x00), Bits::exact(ACS_STD));
}

#[test]
fn disable_acs_redir_as_the_kernels_fix_commit_logs_it() {
    // "pci=disable_acs_redir=0020:02:00.0;0030:02:00.0;0039:00:00.0", mask
    // 0x2c: the firmware's value with RR, CR and EC cleared; what the IOMMU
    // driver added (control 0x7f, 0x5f, 0x1d) is not kept.
    let t = commit_machine("pci=disable_acs_redir=0020:02:00.0;0030:02:00.0;0039:00:00.0");
    for (bdf, fw, want) in [
        ("0020:02:00.0", 0x7b, 0x53),
        ("0030:02:00.0", 0x5f, 0x53),
        ("0039:00:00.0", 0x00, 0x00),
    ] {
        let b = boot(&t, bdf);
        let e = b.disable_acs_redir.entry().unwrap();
        assert_eq!((e.mask, e.flags), (0x2c, 0), "{bdf}");
        assert_eq!(after(&t, bdf, fw), Bits::exact(want), "{bdf}");
    }
}

#[test]
fn config_acs_comes_after_disable_acs_redir_from_the_firmware_value() {
    // The case: the port is in both; config_acs wins, starting from
    // the firmware's value, so the disable_acs_redir entry changes nothing.
    let cmd = "pci=disable_acs_redir=0000:00:02.0,config_acs=xxxx11xx@0000:00:02.0";
    let t = q35(ACS_RR | ACS_CR, 0, Some(cmd), Some(false));
    assert_eq!(after(&t, "0000:00:02.0", 0), Bits::exact(ACS_RR | ACS_CR));
    // With an IOMMU too, the IOMMU's SV and UF are gone.
    let t = q35(ACS_RR | ACS_CR, 0, Some(cmd), Some(true));
    assert_eq!(after(&t, "0000:00:02.0", 0), Bits::exact(ACS_RR | ACS_CR));
    // config_acs keeps the firmware's bits it does not force...
    assert_eq!(
        after(&t, "0000:00:02.0", ACS_EC | ACS_SV | ACS_UF).value,
        ACS_RR | ACS_CR | ACS_SV | ACS_UF, // EC is not in QEMU's capability
    );
    // ...and `@dev` with no flags at all resets the port to the firmware's value.
    let t = q35(0, 0, Some("pci=config_acs=@0000:00:03.0"), Some(true));
    assert_eq!(after(&t, "0000:00:03.0", ACS_EC).value, ACS_EC);
    assert_eq!(after(&t, "0000:00:02.0", 0).value, ACS_STD);
}

#[test]
fn bits_the_capability_lacks_read_zero() {
    // QEMU's root port has no Egress Control: forcing EC on leaves no
    // redirect; the port with every bit gets it.
    let t = q35(0, 0, Some("pci=config_acs=1xxxxx@pci:0:0"), Some(false));
    assert_eq!(after(&t, "0000:00:02.0", 0), Bits::exact(0));
    assert_eq!(after(&t, "0000:00:03.0", 0), Bits::exact(ACS_EC));
}

#[test]
fn entries_are_taken_in_order_and_a_bad_one_stops_the_walk() {
    // The first entry naming the device wins.
    let t = q35(
        0,
        0,
        Some("pci=config_acs=xx0x00xx@0000:00:02.0;xxxx11xx@pci:1b36:000c"),
        Some(false),
    );
    assert_eq!(lookup_config(&t, "0000:00:02.0").entry().unwrap().index, 0);
    // An invalid flag stops every device that gets there, naming the entry.
    let t = q35(
        0,
        0,
        Some("pci=config_acs=1@0000:00:03.0;1z@0000:00:02.0;1@pci:0:0"),
        Some(false),
    );
    assert_eq!(lookup_config(&t, "0000:00:03.0").entry().unwrap().mask, 1);
    assert_eq!(
        lookup_config(&t, "0000:00:02.0"),
        Lookup::NoMatch {
            stop: Some(Stop::InvalidFlags {
                entry: "1z@0000:00:02.0".into()
            })
        }
    );
    // A forced bit above bit 6: "Invalid ACS flags specified".
    let t = q35(
        0,
        0,
        Some("pci=config_acs=10000000@0000:00:02.0"),
        Some(false),
    );
    assert!(matches!(
        lookup_config(&t, "0000:00:02.0"),
        Lookup::NoMatch {
            stop: Some(Stop::FlagsOutOfRange { .. })
        }
    ));
    // ...but bits 16 to 31 vanish in the u16: accepted, and only bit 0 set.
    let t = q35(
        0,
        0,
        Some("pci=config_acs=1xxxxxxxxxxxxxxx1@0000:00:02.0"),
        Some(false),
    );
    let e = lookup_config(&t, "0000:00:02.0");
    assert_eq!(e.entry().map(|e| (e.mask, e.flags)), Some((1, 1)));
    // Past bit 31 the shift is undefined in C.
    let t = q35(
        0,
        0,
        Some(&format!("pci=config_acs=1{}@0000:00:02.0", "x".repeat(32))),
        Some(false),
    );
    assert!(matches!(
        lookup_config(&t, "0000:00:02.0"),
        Lookup::Undefined { .. }
    ));
    // A missing `@`: strstr() finds the next entry's, whose flags then
    // hold a ':' -> invalid.
    let t = q35(
        0,
        0,
        Some("pci=config_acs=0000:00:03.0;1@0000:00:02.0"),
        Some(false),
    );
    assert!(matches!(
        lookup_config(&t, "0000:00:02.0"),
        Lookup::NoMatch {
            stop: Some(Stop::InvalidFlags { .. })
        }
    ));
    // A device spec that does not parse: "Can't parse ACS command line parameter".
    let t = q35(
        0,
        0,
        Some("pci=disable_acs_redir=foo;0000:00:02.0"),
        Some(false),
    );
    assert!(matches!(
        boot(&t, "0000:00:02.0").disable_acs_redir,
        Lookup::NoMatch {
            stop: Some(Stop::CannotParse { .. })
        }
    ));
    // A pci: entry with three fields leaves ":ffff" behind: a silent stop.
    let t = q35(
        0,
        0,
        Some("pci=disable_acs_redir=pci:8086:1234:ffff;0000:00:02.0"),
        Some(false),
    );
    assert!(matches!(
        boot(&t, "0000:00:02.0").disable_acs_redir,
        Lookup::NoMatch {
            stop: Some(Stop::Trailing { .. })
        }
    ));
    // disable_acs_redir takes devices only: flags are not a device.
    let t = q35(
        0,
        0,
        Some("pci=disable_acs_redir=1@0000:00:02.0"),
        Some(false),
    );
    assert!(matches!(
        boot(&t, "0000:00:02.0").disable_acs_redir,
        Lookup::NoMatch {
            stop: Some(Stop::CannotParse { .. })
        }
    ));
    // pci_setup() splits at commas: the second device is a pci option of
    // its own, never part of the list.
    let t = q35(
        0,
        0,
        Some("pci=disable_acs_redir=0000:00:03.0,0000:00:02.0"),
        Some(false),
    );
    assert!(boot(&t, "0000:00:03.0").disable_acs_redir.entry().is_some());
    assert_eq!(
        boot(&t, "0000:00:02.0").disable_acs_redir,
        Lookup::NoMatch { stop: None }
    );
    // The last pci=config_acs= on the command line is the one that counts.
    let t = q35(
        0,
        0,
        Some("pci=config_acs=1@0000:00:02.0 pci=config_acs=1@0000:00:03.0"),
        Some(false),
    );
    assert_eq!(
        lookup_config(&t, "0000:00:02.0"),
        Lookup::NoMatch { stop: None }
    );
}

#[test]
fn the_iommu_drivers_bits_and_the_intel_quirks() {
    // IOMMU on: SV|RR|CR|UF as far as the capability has them.
    let t = q35(0, 0, Some(""), Some(true));
    assert_eq!(after(&t, "0000:00:02.0", 0), Bits::exact(ACS_STD));
    // pci=noats adds Translation Blocking.
    let t = q35(0, 0, Some("pci=noats"), Some(true));
    assert_eq!(after(&t, "0000:00:02.0", 0), Bits::exact(ACS_STD | ACS_TB));
    // IOMMU unknown: those bits are unknown unless the firmware set them.
    let t = q35(0, 0, Some(""), None);
    let b = after(&t, "0000:00:02.0", ACS_RR);
    assert_eq!(b.known & ACS_STD, ACS_RR);
    assert_eq!(b.redirect(), Some(true));
    assert_eq!(after(&t, "0000:00:02.0", 0).redirect(), None);

    // An Intel PCH root port: the quirk takes over, the standard register
    // is not touched by the IOMMU's request.
    let pch = |ids: (u16, u16), cmd: &str| {
        machine(
            vec![
                host("pci0000:00/0000:00:00.0"),
                port("pci0000:00/0000:00:1c.0", ids, 1, ALL, ACS_RR),
            ],
            Some(cmd),
            Some(true),
        )
    };
    let t = pch((0x8086, 0x1c10), "");
    let b = boot(&t, "0000:00:1c.0");
    assert_eq!(
        (b.quirk, b.std_enable),
        (Some(Quirk::IntelPch), Some(false))
    );
    assert_eq!(after(&t, "0000:00:1c.0", 0), Bits::exact(0));
    // Sunrise Point: the quirk also takes pci=disable_acs_redir=, and writes
    // elsewhere; what P2PDMA reads cannot be predicted, nor fixed.
    let t = pch((0x8086, 0xa110), "pci=disable_acs_redir=0000:00:1c.0");
    assert_eq!(boot(&t, "0000:00:1c.0").quirk, Some(Quirk::IntelSpt));
    let e = redirect_fix(&t, &[id(&t, "0000:00:1c.0")]).unwrap_err();
    assert!(e[0].contains("cannot be known"), "{e:?}");
    // Another vendor's port with the same device ID is no quirk.
    let t = pch((0x1234, 0xa110), "");
    assert_eq!(boot(&t, "0000:00:1c.0").quirk, None);
}

#[test]
fn where_the_bits_came_from() {
    let origin = |t: &Topology, bdf: &str| AcsOrigin::of(t, id(t, bdf), &BootFacts::of(t)).unwrap();
    // config_acs forces RR|CR; disable_acs_redir before it changed nothing.
    let t = q35(
        ACS_RR | ACS_CR,
        0,
        Some("pci=disable_acs_redir=0000:00:02.0 pci=config_acs=xxxx11xx@0000:00:02.0"),
        Some(false),
    );
    let o = origin(&t, "0000:00:02.0");
    assert_eq!(
        o.setters,
        vec![(
            "RR|CR".into(),
            Setter::ConfigAcs {
                entry: "xxxx11xx@0000:00:02.0".into()
            }
        )]
    );
    assert!(matches!(
        o.disable_acs_redir,
        DisableEffect::Overridden { .. }
    ));
    assert!(o.describe().contains("changes nothing"), "{}", o.describe());
    // The IOMMU driver.
    let t = q35(ACS_STD, 0, Some("ro"), Some(true));
    let o = origin(&t, "0000:00:02.0");
    assert_eq!(o.setters, vec![("RR|CR".into(), Setter::IommuDriver)]);
    assert_eq!(o.disable_acs_redir, DisableEffect::NotGiven);
    // Firmware: no IOMMU, nothing on the command line; EC with an IOMMU too.
    let t = q35(0, ACS_RR | ACS_EC | ACS_SV, Some("ro"), Some(true));
    let o = origin(&t, "0000:00:03.0");
    // SV|RR|CR|UF would be there with the IOMMU: CR and UF missing means
    // they were cleared since; RR is the IOMMU's (and the firmware's);
    // EC is the firmware's.
    assert_eq!(
        o.setters,
        vec![
            ("RR".into(), Setter::IommuDriver),
            ("EC".into(), Setter::Firmware { kept_by: None })
        ]
    );
    let t = q35(ACS_RR, 0, Some("ro"), Some(false));
    assert_eq!(
        origin(&t, "0000:00:02.0").setters,
        vec![("RR".into(), Setter::Firmware { kept_by: None })]
    );
    // disable_acs_redir names the port, yet RR is set: not the boot.
    let t = q35(
        ACS_RR,
        0,
        Some("pci=disable_acs_redir=0000:00:02.0"),
        Some(true),
    );
    let o = origin(&t, "0000:00:02.0");
    assert_eq!(o.setters, vec![("RR".into(), Setter::Unexplained)]);
    let e = redirect_fix(&t, &[id(&t, "0000:00:02.0")]).unwrap_err();
    assert!(e[0].contains("may set it again"), "{e:?}");
    // No command line in the capture, IOMMU unknown.
    let t = q35(ACS_RR, 0, None, None);
    let o = origin(&t, "0000:00:02.0");
    assert_eq!(
        o.setters,
        vec![("RR".into(), Setter::IommuDriverOrFirmware)]
    );
    assert_eq!(o.disable_acs_redir, DisableEffect::CmdlineUnknown);
    assert_eq!(o.notes.len(), 2);
    // A port without redirect has no origin to tell.
    let t = q35(ACS_SV, 0, Some(""), Some(false));
    assert!(AcsOrigin::of(&t, id(&t, "0000:00:02.0"), &BootFacts::of(&t)).is_none());
}

#[test]
fn fixes_are_the_edited_command_line_booted() {
    let rp = |t: &Topology| id(t, "0000:00:02.0");
    // IOMMU driver: add the port to disable_acs_redir; SV and UF go too.
    let t = q35(ACS_STD, 0, Some("console=ttyS0 quiet"), Some(true));
    let f = redirect_fix(&t, &[rp(&t)]).unwrap();
    assert_eq!(f.params, ["pci=disable_acs_redir=0000:00:02.0"]);
    assert_eq!(
        f.cmdline_after.as_deref(),
        Some("console=ttyS0 quiet pci=disable_acs_redir=0000:00:02.0")
    );
    assert_eq!(t_ctrl(&f.topology, "0000:00:02.0"), 0);
    assert_eq!(f.lost, vec![(t.function(rp(&t)).bdf, ACS_SV | ACS_UF)]);
    // Untouched functions keep their captured value exactly.
    let other = f
        .predicted
        .iter()
        .find(|(b, _)| b.to_string() == "0000:00:03.0")
        .unwrap();
    assert_eq!(other.1, Bits::exact(0));
    // An existing disable_acs_redir list: ours goes first.
    let t = q35(
        ACS_STD,
        0,
        Some("pci=disable_acs_redir=0000:00:03.0"),
        Some(true),
    );
    let f = redirect_fix(&t, &[rp(&t)]).unwrap();
    assert_eq!(
        f.params,
        ["pci=disable_acs_redir=0000:00:02.0;0000:00:03.0"]
    );
    // config_acs set the bits: change that entry, not disable_acs_redir.
    let cmd = "pci=disable_acs_redir=0000:00:02.0,config_acs=xxxx11xx@0000:00:02.0";
    let t = q35(ACS_RR | ACS_CR, 0, Some(cmd), Some(false));
    let f = redirect_fix(&t, &[rp(&t)]).unwrap();
    assert_eq!(f.params, ["pci=config_acs=xx0x00xx@0000:00:02.0"]);
    assert_eq!(
        f.cmdline_after.as_deref(),
        Some("pci=disable_acs_redir=0000:00:02.0,config_acs=xx0x00xx@0000:00:02.0")
    );
    assert!(f.edits[0].contains("would change nothing"), "{:?}", f.edits);
    assert_eq!(t_ctrl(&f.topology, "0000:00:02.0"), 0);
    // A config_acs entry by IDs (it names other devices too): a new entry
    // for the port goes first, the others keep theirs.
    let t = q35(
        ACS_RR | ACS_CR,
        0,
        Some("pci=config_acs=xxxx11xx@pci:1b36:000c"),
        Some(false),
    );
    let f = redirect_fix(&t, &[rp(&t)]).unwrap();
    assert_eq!(
        f.params,
        ["pci=config_acs=xx0x00xx@0000:00:02.0;xxxx11xx@pci:1b36:000c"]
    );
    // A config_acs entry that keeps the firmware's redirect (the bits are
    // firmware's): still the entry to change, disable_acs_redir would not.
    let t = q35(
        ACS_RR,
        0,
        Some("pci=config_acs=1@0000:00:02.0"),
        Some(false),
    );
    let f = redirect_fix(&t, &[rp(&t)]).unwrap();
    // Bit 0 kept forced on; RR, CR and EC (bits 2, 3, 5) forced off.
    assert_eq!(f.params, ["pci=config_acs=0x00x1@0000:00:02.0"]);
    // No command line captured: assume none, and say so.
    let t = q35(ACS_RR, 0, None, Some(false));
    let f = redirect_fix(&t, &[rp(&t)]).unwrap();
    assert_eq!(f.params, ["pci=disable_acs_redir=0000:00:02.0"]);
    assert!(f.cmdline_after.is_none() && !f.assumptions.is_empty());
}

fn t_ctrl(t: &Topology, bdf: &str) -> u16 {
    t.function(id(t, bdf)).acs.ctrl().unwrap()
}

#[test]
fn check_shows_who_set_the_bits_and_the_fix_the_kernel_would_apply() {
    use crate::{explain, FixKind, MapType};
    // The case: the port is in disable_acs_redir, config_acs wins.
    let cmd = "pci=disable_acs_redir=0000:00:02.0 pci=config_acs=xxxx11xx@0000:00:02.0";
    let t = q35(ACS_RR | ACS_CR, 0, Some(cmd), Some(false));
    let (a, b) = (id(&t, "0000:01:00.0"), id(&t, "0000:01:00.1"));
    let e = explain(&t, a, b);
    assert_eq!((e.map_type, e.distance), (MapType::NotSupported, None));
    let o = e.acs_redirects[0].origin.as_ref().unwrap();
    assert!(matches!(o.setters[0].1, Setter::ConfigAcs { .. }), "{o:?}");
    assert!(matches!(
        o.disable_acs_redir,
        DisableEffect::Overridden { .. }
    ));
    let f = e
        .fixes
        .iter()
        .find(|f| f.kind == FixKind::KernelParameter)
        .unwrap();
    assert_eq!(f.commands, ["pci=config_acs=xx0x00xx@0000:00:02.0"]);
    assert_eq!((f.gives, f.distance), (MapType::BusAddr, Some(2)));
    assert_eq!(
        f.cmdline.as_deref(),
        Some("pci=disable_acs_redir=0000:00:02.0 pci=config_acs=xx0x00xx@0000:00:02.0")
    );
    // The kernel's own advice stays what the kernel logs.
    assert_eq!(
        e.disable_acs_redir.as_deref(),
        Some("pci=disable_acs_redir=0000:00:02.0")
    );
    let text = e.render();
    assert!(
        text.contains("set by: RR|CR set by pci=config_acs="),
        "{text}"
    );
    // The same fix, once, for every pair it helps, with its predictions.
    let fixes = proposed_fixes(&t);
    assert_eq!(fixes.len(), 1, "{fixes:?}");
    let p = fixes[0]
        .pairs
        .iter()
        .find(|p| {
            p.provider.to_string() == "0000:01:00.0" && p.client.to_string() == "0000:01:00.1"
        })
        .unwrap();
    assert_eq!(
        (p.now.as_str(), p.predicted.as_str()),
        ("not_supported 2", "bus_addr 2")
    );
    assert_eq!(fixes[0].acs.len(), 1);
    assert_eq!(fixes[0].acs[0].0.to_string(), "0000:00:02.0");
    assert_eq!(fixes[0].acs[0].1 & ACS_REDIR_MASK, 0);
    assert_eq!(
        fixes[0].apply_to("intel_iommu=off pci=config_acs=xxxx11xx@0000:00:02.0"),
        "intel_iommu=off pci=config_acs=xx0x00xx@0000:00:02.0"
    );

    // RR set although disable_acs_redir names the port: no parameter can be
    // known to clear it; check says so instead of predicting.
    let t = q35(
        ACS_RR,
        0,
        Some("pci=disable_acs_redir=0000:00:02.0"),
        Some(true),
    );
    let e = explain(&t, id(&t, "0000:01:00.0"), id(&t, "0000:01:00.1"));
    assert!(e.fixes.iter().all(|f| f.kind != FixKind::KernelParameter));
    assert!(
        e.caveats
            .iter()
            .any(|c| c.starts_with("no kernel parameter is proposed")
                && c.contains("may set it again")),
        "{:?}",
        e.caveats
    );
    assert!(proposed_fixes(&t).is_empty());
}
