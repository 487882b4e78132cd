#!/bin/sh
# PID 1 of the peerdma kernel-oracle guest (initramfs built by `cargo xtask vm`).
#
# Collects into /out: the kernel's P2PDMA verdicts, dmesg after the verbose
# pass, /proc/cmdline, and a raw copy of the PCI sysfs laid out as on a live
# machine (/out/root/sys/..., /out/root/proc/cpuinfo). Runs the peerdma hooks
# if /bin/peerdma is present. Then prints /out as base64(tar.gz) between two
# marker lines carrying the nonce from the kernel command line, and powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
mount -t configfs configfs /sys/kernel/config 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /out
# The console carries the payload: keep kernel messages off it.
dmesg -n 1

SCENARIO=unknown
NONCE=none
# peerdma.fix=K: a second boot with a fix peerdma proposed (cargo xtask vm):
# only the verdicts and the snapshot count, no probes or copies.
FIX=
for word in $(cat /proc/cmdline); do
	case "$word" in
	peerdma.scenario=*) SCENARIO=${word#*=} ;;
	peerdma.nonce=*) NONCE=${word#*=} ;;
	peerdma.fix=*) FIX=${word#*=} ;;
	esac
done
echo "peerdma-guest: scenario $SCENARIO, collecting"

cat /proc/cmdline >/out/cmdline
uname -a >/out/uname

# SR-IOV: enable every virtual function, without binding drivers to them
# (QEMU's NVMe VF controllers stay offline until a Virtualization Management
# command; the nvme driver would wait on them).
for pf in /sys/bus/pci/devices/*; do
	[ -r "$pf/sriov_totalvfs" ] || continue
	n=$(cat "$pf/sriov_totalvfs")
	[ "$n" -gt 0 ] 2>/dev/null || continue
	echo 0 >"$pf/sriov_drivers_autoprobe"
	echo "$n" >"$pf/sriov_numvfs" &&
		echo "peerdma-guest: ${pf##*/}: $n virtual function(s) enabled" ||
		echo "peerdma-guest: ${pf##*/}: enabling $n virtual function(s) failed" | tee -a /out/error
done

V=/sys/kernel/debug/pci_p2pdma
if [ -r "$V/verdicts" ]; then
	cat "$V/verdicts" >/out/verdicts
	cat "$V/verdicts_verbose" >/out/verdicts_verbose
else
	echo "peerdma-guest: $V/verdicts is missing (kernel without the oracle patch?)" | tee /out/error
fi
dmesg >/out/dmesg.txt

# --- raw copy of the PCI sysfs -------------------------------------------
R=/out/root
mkdir -p "$R/proc" "$R/sys/bus/pci/devices"
cat /proc/cpuinfo >"$R/proc/cpuinfo"
cat /proc/cmdline >"$R/proc/cmdline"

FILES="vendor device class revision subsystem_vendor subsystem_device config
resource numa_node local_cpulist current_link_speed current_link_width
max_link_speed max_link_width enable irq secondary_bus_number
subordinate_bus_number sriov_totalvfs sriov_numvfs uevent"

# copy SRC DST: a regular-file copy, dropped if the attribute is unreadable.
copy() {
	cat "$1" >"$2" 2>/dev/null || rm -f "$2"
}

# link SRC DST: reproduce symlink SRC at DST with the same (relative) target
# and create the target's directory so that the link resolves.
link() {
	ln -s "$(readlink "$1")" "$2"
	mkdir -p "$R$(readlink -f "$1")"
}

for dev in /sys/bus/pci/devices/*; do
	[ -e "$dev" ] || continue
	ln -s "$(readlink "$dev")" "$R$dev"
	d=$(readlink -f "$dev")
	mkdir -p "$R$d"
	for f in $FILES; do
		[ -f "$d/$f" ] && copy "$d/$f" "$R$d/$f"
	done
	if [ -d "$d/p2pmem" ]; then
		mkdir -p "$R$d/p2pmem"
		for f in size available published; do
			[ -f "$d/p2pmem/$f" ] && copy "$d/p2pmem/$f" "$R$d/p2pmem/$f"
		done
	fi
	for l in "$d/driver" "$d/iommu_group" "$d/physfn" "$d"/virtfn*; do
		[ -L "$l" ] && link "$l" "$R$l"
	done
done

# The IOMMU units the kernel registered: whether an IOMMU driver was on.
mkdir -p "$R/sys/class/iommu"
for u in /sys/class/iommu/*; do
	[ -e "$u" ] && mkdir -p "$R/sys/class/iommu/${u##*/}"
done

for g in /sys/kernel/iommu_groups/*; do
	[ -d "$g" ] || continue
	mkdir -p "$R$g/devices"
	[ -f "$g/type" ] && copy "$g/type" "$R$g/type"
	for l in "$g"/devices/*; do
		[ -L "$l" ] && ln -s "$(readlink "$l")" "$R$l"
	done
done

# --- peerdma's own checks, when a binary was put into the guest ------------
if [ -x /bin/peerdma ]; then
	mkdir -p /out/peerdma
	OUT=/out SYSROOT="$R" SCENARIO="$SCENARIO" FIX="$FIX" sh /etc/peerdma/peerdma.sh \
		>/out/peerdma/hooks.log 2>&1
	echo $? >/out/peerdma/hooks.rc
fi

# --- hand /out to the host and power off ------------------------------------
(cd /out && tar -czf /tmp/out.tar.gz .)
echo "@@peerdma-out-begin $NONCE"
base64 /tmp/out.tar.gz
echo "@@peerdma-out-end $NONCE"
sync
poweroff -f
