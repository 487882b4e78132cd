#!/bin/sh
# peerdma hooks, run by init.sh inside the oracle guest (as root).
# Environment: OUT (the directory sent back to the host), SYSROOT (the raw
# sysfs copy, $OUT/root), SCENARIO (the scenario name).
# Anything written under $OUT comes back in target/vm/<scenario>/.
#
# 1. `peerdma snapshot --live` -> $OUT/snapshot.json (peerdma's own capture,
#    held against the kernel's verdicts on the host).
# 2. The scenario's P2P smoke tests, one `peerdma probe --json` per line of
#    /etc/peerdma/probes/$SCENARIO ("PROVIDER CLIENT TO SIZE", "-" for a
#    default) -> $OUT/probes/N.{json,err,rc}. A probe's own exit status is
#    recorded, not fatal: the host compares outcomes with the scenario.
# 3. The kernel log after the probes (DMAR faults, NVMe errors).
set -u
peerdma --version || exit 1
peerdma snapshot --live -o "$OUT/snapshot.json" || exit 1

LIST=/etc/peerdma/probes/$SCENARIO
mkdir -p "$OUT/probes"
i=0
if [ -f "$LIST" ]; then
	while read -r provider client to size; do
		[ -n "$provider" ] || continue
		i=$((i + 1))
		set -- probe --json "$provider" "$client"
		[ "$to" = "-" ] || set -- "$@" --to "$to"
		[ "$size" = "-" ] || set -- "$@" --size "$size"
		echo "probe $i: peerdma $*"
		peerdma "$@" >"$OUT/probes/$i.json" 2>"$OUT/probes/$i.err" </dev/null
		rc=$?
		echo "$rc" >"$OUT/probes/$i.rc"
		echo "probe $i: exit $rc, $(grep -m1 '"outcome"' "$OUT/probes/$i.json")"
	done <"$LIST"
fi
echo "$i probe(s) run"
dmesg >"$OUT/peerdma/dmesg-after-probes.txt"
exit 0
