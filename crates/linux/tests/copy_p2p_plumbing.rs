//! The P2P side of `peerdma copy` without P2P hardware (see
//! `common/mod.rs` for the fake machine). The copy must choose the provider
//! like the kernel, stage through it, report the path, and still move the
//! right bytes. Real P2P DMA is checked in QEMU (cargo xtask vm).

mod common;

use common::{data, fake_root, MACHINE};
use peerdma_linux::copy::{copy, CopyOptions, CopyPath};
use std::fs;
use std::sync::atomic::AtomicBool;

#[test]
fn staging_through_the_chosen_provider_reports_p2p() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_root(&MACHINE.replace("ACS_DP1", ""), d.path());
    let src = d.path().join("src");
    let bytes = data(9 << 20);
    fs::write(&src, &bytes).unwrap();
    let mut o = CopyOptions::new(&src, d.path().join("dst"));
    o.sys_root = root.path().to_path_buf();
    o.verify = true;
    o.depth = 4;
    let stop = AtomicBool::new(false);
    let r = copy(&o, false, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(r.path, CopyPath::P2pBusAddr, "{}", r.render());
    assert_eq!(r.staging.kind, "p2p");
    assert_eq!(r.staging.provider.unwrap().to_string(), "0000:04:00.0");
    assert!(r.verify.as_ref().unwrap().equal);
    assert_eq!(fs::read(d.path().join("dst")).unwrap(), bytes);
    assert!(r.render().contains("P2P memory of 0000:04:00.0"));
}

#[test]
fn an_acs_redirect_on_a_whitelistless_host_means_bounce_or_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_root(
        &MACHINE.replace("ACS_DP1", "acs = [\"rr\", \"cr\"]"),
        d.path(),
    );
    let src = d.path().join("src");
    fs::write(&src, data(1 << 20)).unwrap();
    let mut o = CopyOptions::new(&src, d.path().join("dst"));
    o.sys_root = root.path().to_path_buf();
    let stop = AtomicBool::new(false);
    let r = copy(&o, false, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(r.path, CopyPath::Bounced);
    let why = r.reason.clone().unwrap();
    assert!(why.contains("ACS redirect"), "{why}");
    o.no_bounce = true;
    o.dst = d.path().join("dst2");
    let e = copy(&o, false, &stop, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot copy") && e.contains("ACS redirect"),
        "{e}"
    );
    // --via names the provider; it is still held to the kernel's verdict.
    o.no_bounce = false;
    o.via = Some("0000:04:00.0".into());
    let r = copy(&o, true, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(r.path, CopyPath::Bounced);
    assert!(r
        .reason
        .unwrap()
        .contains("cannot reach the P2P memory of 0000:04:00.0"));
}
