use peerdma_pci::{HostBridgeId, Topology};
use serde::Serialize;

/// An entry of the kernel's `pci_p2pdma_whitelist[]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WhitelistEntry {
    pub vendor: u16,
    pub device: u16,
    /// `REQ_SAME_HOST_BRIDGE`: forwards peer traffic only between devices
    /// below this same host bridge.
    pub same_host_bridge_only: bool,
    pub name: &'static str,
}

const fn e(vendor: u16, device: u16, same: bool, name: &'static str) -> WhitelistEntry {
    WhitelistEntry {
        vendor,
        device,
        same_host_bridge_only: same,
        name,
    }
}

/// The host bridges the kernel trusts to forward peer-to-peer traffic
/// (drivers/pci/p2pdma.c, Linux 6.12).
pub const WHITELIST: &[WhitelistEntry] = &[
    e(0x8086, 0x3c00, true, "Intel Xeon E5/Core i7"),
    e(0x8086, 0x3c01, true, "Intel Xeon E5/Core i7"),
    e(0x8086, 0x2f00, true, "Intel Xeon E7 v3/Xeon E5 v3/Core i7"),
    e(0x8086, 0x2f01, true, "Intel Xeon E7 v3/Xeon E5 v3/Core i7"),
    e(0x8086, 0x2030, false, "Intel Skylake-E"),
    e(0x8086, 0x2031, false, "Intel Skylake-E"),
    e(0x8086, 0x2032, false, "Intel Skylake-E"),
    e(0x8086, 0x2033, false, "Intel Skylake-E"),
    e(0x8086, 0x2020, false, "Intel Skylake-E"),
    e(0x8086, 0x09a2, false, "Intel Ice Lake"),
];

/// The whitelist entry for a vendor/device, if any.
pub fn whitelist_entry(vendor: u16, device: u16) -> Option<&'static WhitelistEntry> {
    WHITELIST
        .iter()
        .find(|e| e.vendor == vendor && e.device == device)
}

/// The kernel's `__host_bridge_whitelist(host, same_host_bridge)`: whether
/// the device standing for the host bridge is whitelisted, honouring the
/// same-host-bridge flag.
pub fn host_bridge_whitelisted(topo: &Topology, hb: HostBridgeId, same_host_bridge: bool) -> bool {
    let Some(root) = topo.host_bridge_device(hb) else {
        return false;
    };
    let f = topo.function(root);
    match whitelist_entry(f.vendor, f.device) {
        Some(e) => !e.same_host_bridge_only || same_host_bridge,
        None => false,
    }
}
