//! The fallback's test hook, `PEERDMA_COPY_UNCHECKED_VIA=1`: `--via`'s
//! provider is tried even where peerdma's verdict says a drive cannot reach
//! it, and the kernel decides. An environment variable, not an option, so
//! this test has a process of its own (nothing else runs beside it here).

mod common;

use common::{data, fake_root, MACHINE};
use peerdma_linux::copy::{copy, CopyOptions, UNCHECKED_VIA_ENV};
use std::fs;
use std::sync::atomic::AtomicBool;

#[test]
fn unchecked_via_tries_the_provider_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_root(
        &MACHINE.replace("ACS_DP1", "acs = [\"rr\", \"cr\"]"),
        d.path(),
    );
    let src = d.path().join("src");
    fs::write(&src, data(1 << 20)).unwrap();
    let mut o = CopyOptions::new(&src, d.path().join("dst"));
    o.sys_root = root.path().to_path_buf();
    o.via = Some("0000:04:00.0".into());
    let stop = AtomicBool::new(false);
    // Without the hook: held to the kernel's verdict, bounced.
    let r = copy(&o, true, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(r.staging.provider, None);
    // With it (the only test in this process, so setting the environment
    // races with nothing): the provider is tried and the kernel would
    // decide; the report keeps peerdma's verdict and says so.
    std::env::set_var(UNCHECKED_VIA_ENV, "1");
    let r = copy(&o, true, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(r.staging.provider.unwrap().to_string(), "0000:04:00.0");
    let ns = Some(peerdma_p2p::MapType::NotSupported);
    assert_eq!((r.read_leg, r.write_leg), (ns, ns));
    let why = r.reason.unwrap();
    assert!(
        why.contains("cannot reach") && why.contains(UNCHECKED_VIA_ENV),
        "{why}"
    );
}
