//! The kernel's P2PDMA rules that more than one place needs, written once:
//! whether an ACS setting redirects peer traffic, and whether the root
//! complex forwards peer traffic between two host bridges. The kernel-walk
//! port ([`crate::calc_map_type_and_dist`]), the fast index, explanations
//! and the simulator's fabric all decide by these functions.

use crate::whitelist::host_bridge_whitelisted;
use peerdma_pci::{Acs, HostBridgeId, Topology};
use serde::Serialize;

/// `pci_bridge_has_acs_redir` on an ACS control register value: P2P
/// Request Redirect, Completion Redirect or Egress Control is set, so the
/// port sends peer requests upstream instead of routing them across.
///
/// The simulator calls this with the live register value (which `setpci`
/// may have changed since the topology was read).
pub fn acs_ctrl_redirects(ctrl: u16) -> bool {
    peerdma_pci::config::acs_ctrl_redirects(ctrl)
}

/// [`acs_ctrl_redirects`] on a function's ACS state as captured: `None`
/// when the capture does not show it (an unprivileged read of config
/// space, hwloc XML); a function without ACS does not redirect; an assumed
/// state (`--assume-acs`) counts as its assumed control bits.
pub fn acs_redirects(acs: &Acs) -> Option<bool> {
    acs.redirects()
}

/// What the host-bridge whitelist says about one host bridge, for both
/// values of `__host_bridge_whitelist`'s same-host-bridge argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Whitelisting {
    /// Forwards between devices below this same host bridge.
    pub same_host_bridge: bool,
    /// Forwards to and from devices below other host bridges.
    pub across_host_bridges: bool,
}

impl Whitelisting {
    /// The whitelist's answers for host bridge `hb` of `topo`.
    pub fn of(topo: &Topology, hb: HostBridgeId) -> Whitelisting {
        Whitelisting {
            same_host_bridge: host_bridge_whitelisted(topo, hb, true),
            across_host_bridges: host_bridge_whitelisted(topo, hb, false),
        }
    }
}

/// Whether the root complex forwards peer traffic between a device below
/// one host bridge and a device below another (or the same): the test of
/// the kernel's `map_through_host_bridge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HostBridgeForwarding {
    /// `host_bridge_whitelist(provider, client)`: one host bridge whose
    /// entry allows it, or two that are both whitelisted across bridges.
    pub whitelisted: bool,
    /// `cpu_supports_p2pdma()`: the AMD Zen rule.
    pub cpu_supports_p2pdma: bool,
}

impl HostBridgeForwarding {
    /// The rule from its facts: `a` and `b` are the whitelist answers of
    /// the provider's and the client's host bridges, `same_host_bridge`
    /// whether they are one bridge.
    #[inline]
    pub fn decide(
        cpu_supports_p2pdma: bool,
        a: Whitelisting,
        b: Whitelisting,
        same_host_bridge: bool,
    ) -> HostBridgeForwarding {
        let whitelisted = if same_host_bridge {
            a.same_host_bridge
        } else {
            a.across_host_bridges && b.across_host_bridges
        };
        HostBridgeForwarding {
            whitelisted,
            cpu_supports_p2pdma,
        }
    }

    /// `cpu_supports_p2pdma() || host_bridge_whitelist()`: whether peer
    /// traffic is forwarded (`PCI_P2PDMA_MAP_THRU_HOST_BRIDGE`) or not
    /// (`PCI_P2PDMA_MAP_NOT_SUPPORTED`).
    #[inline]
    pub fn forwards(self) -> bool {
        self.cpu_supports_p2pdma || self.whitelisted
    }
}

/// The host-bridge rule for a provider below host bridge `provider` and a
/// client below `client`.
pub fn host_bridge_forwarding(
    topo: &Topology,
    provider: HostBridgeId,
    client: HostBridgeId,
) -> HostBridgeForwarding {
    HostBridgeForwarding::decide(
        topo.cpu().supports_p2pdma(),
        Whitelisting::of(topo, provider),
        Whitelisting::of(topo, client),
        provider == client,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdma_pci::config::{ACS_CR, ACS_EC, ACS_RR, ACS_SV, ACS_TB, ACS_UF};

    #[test]
    fn acs_redirect_is_rr_cr_or_ec() {
        for bit in [ACS_RR, ACS_CR, ACS_EC] {
            assert!(acs_ctrl_redirects(bit | ACS_SV));
        }
        assert!(!acs_ctrl_redirects(ACS_SV | ACS_TB | ACS_UF));
        assert_eq!(acs_redirects(&Acs::Absent), Some(false));
        assert_eq!(acs_redirects(&Acs::Unknown), None);
        let present = |ctrl| Acs::Present {
            offset: 0x100,
            cap: 0x7f,
            ctrl,
        };
        assert_eq!(acs_redirects(&present(ACS_RR)), Some(true));
        assert_eq!(acs_redirects(&present(ACS_UF)), Some(false));
    }

    #[test]
    fn host_bridge_rule_truth_table() {
        let w = |same, across| Whitelisting {
            same_host_bridge: same,
            across_host_bridges: across,
        };
        let fwd = |cpu, a, b, same| HostBridgeForwarding::decide(cpu, a, b, same).forwards();
        // One bridge: its same-bridge answer alone.
        assert!(fwd(false, w(true, false), w(true, false), true));
        assert!(!fwd(false, w(false, false), w(false, false), true));
        // Two bridges: both must be whitelisted across.
        assert!(fwd(false, w(true, true), w(true, true), false));
        assert!(!fwd(false, w(true, true), w(true, false), false));
        assert!(!fwd(false, w(true, false), w(true, true), false));
        // The AMD rule forwards regardless.
        assert!(fwd(true, w(false, false), w(false, false), false));
        assert!(fwd(true, w(false, false), w(false, false), true));
    }
}
