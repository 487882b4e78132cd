#!/bin/sh
# peerdma hooks, run by init.sh inside the oracle guest (as root).
# Environment: OUT (the directory sent back to the host), SYSROOT (the raw
# sysfs copy, $OUT/root), SCENARIO (the scenario name), FIX (set in a boot
# with a proposed fix: only the snapshot is taken).
# Anything written under $OUT comes back in target/vm/<scenario>/.
#
# 1. `peerdma snapshot --live` -> $OUT/snapshot.json (peerdma's own capture,
#    held against the kernel's verdicts on the host).
# 2. The scenario's P2P smoke tests, one `peerdma probe --json --trace` per line of
#    /etc/peerdma/probes/$SCENARIO ("PROVIDER CLIENT TO SIZE", "-" for a
#    default) -> $OUT/probes/N.{json,err,rc,trace} (N.trace: the kernel's
#    DMA mapping event lines as peerdma read them, PEERDMA_TRACE_RAW). A
#    probe's own exit status is
#    recorded, not fatal: the host compares outcomes with the scenario.
# 3. The scenario's copies, one `peerdma copy --json --trace` per line of
#    /etc/peerdma/copies/$SCENARIO ("SRC DST SKIP SEEK COUNT VIA FLAGS":
#    PCI functions of the two drives, byte offsets and count, a --via
#    provider or "-", and "-" or a comma list of no-bounce, unchecked-via)
#    -> $OUT/copies/N.{json,err,rc,check,trace}. Before each copy a fresh random
#    pattern goes to the source range and other random bytes to the
#    destination range and 4 KiB around it (busybox dd, not peerdma); after
#    it the destination is read back (page cache dropped) and compared
#    byte for byte: inside the range against the pattern (or, for a copy
#    that must be refused, against what was there), outside against what
#    was there. N.check holds the verdict of that comparison.
# 4. In scenario $TRACE_BENCH only, the cost of --trace: the same 32 MiB
#    P2P copy between the first copy case's drives, alternately without and
#    with --trace, 5 times each -> $OUT/trace-overhead.txt (one line per
#    run: "plain|trace WALL_SECONDS BYTES_PER_SEC"; the host prints the
#    medians side by side).
# 5. The kernel log after the probes and copies (DMAR faults, NVMe errors).
set -u
peerdma --version || exit 1
peerdma snapshot --live -o "$OUT/snapshot.json" || exit 1
if [ -n "${FIX:-}" ]; then
	echo "fix run $FIX: snapshot only"
	exit 0
fi

LIST=/etc/peerdma/probes/$SCENARIO
mkdir -p "$OUT/probes"
i=0
if [ -f "$LIST" ]; then
	while read -r provider client to size; do
		[ -n "$provider" ] || continue
		i=$((i + 1))
		set -- probe --json --trace "$provider" "$client"
		[ "$to" = "-" ] || set -- "$@" --to "$to"
		[ "$size" = "-" ] || set -- "$@" --size "$size"
		echo "probe $i: peerdma $*"
		PEERDMA_TRACE_RAW="$OUT/probes/$i.trace" peerdma "$@" >"$OUT/probes/$i.json" 2>"$OUT/probes/$i.err" </dev/null
		rc=$?
		echo "$rc" >"$OUT/probes/$i.rc"
		echo "probe $i: exit $rc, $(grep -m1 '"outcome"' "$OUT/probes/$i.json")"
	done <"$LIST"
fi
echo "$i probe(s) run"

# ns_of BDF: the first namespace of the NVMe controller at BDF (/dev/nvmeXnY).
ns_of() {
	for n in /sys/bus/pci/devices/"$1"/nvme/nvme*/nvme*n*; do
		[ -e "$n" ] || continue
		echo "/dev/${n##*/}"
		return 0
	done
	return 1
}

# differ A B: "exact", or "differ <first differing offset>".
differ() {
	out=$(cmp "$1" "$2" 2>&1)
	case $? in
	0) echo exact ;;
	*)
		at=$(echo "$out" | sed -n 's/.*differ: char \([0-9]*\).*/\1/p')
		if [ -n "$at" ]; then
			echo "differ $((at - 1))"
		else
			echo "differ ? ($out)"
		fi
		;;
	esac
}

# part FILE OFF LEN OUT: bytes [OFF, OFF+LEN) of FILE into OUT.
part() {
	dd if="$1" of="$4" bs=1M skip="$2" count="$3" iflag=skip_bytes,count_bytes status=none
}

# copy_case N SRC DST SKIP SEEK COUNT VIA FLAGS
copy_case() {
	n=$1 sbdf=$2 dbdf=$3 skip=$4 seek=$5 count=$6 via=$7 flags=$8
	t0=$(cut -d' ' -f1 /proc/uptime)
	C=$OUT/copies/$n
	S=$(ns_of "$sbdf") || { echo "error=no NVMe namespace below $sbdf" >"$C.check"; return; }
	D=$(ns_of "$dbdf") || { echo "error=no NVMe namespace below $dbdf" >"$C.check"; return; }
	pad=4096
	head=$pad
	[ "$seek" -lt "$pad" ] && head=$seek
	roff=$((seek - head))
	rlen=$((head + count + pad))
	T=/tmp/copy
	rm -rf $T && mkdir -p $T
	dd if=/dev/urandom of=$T/pattern bs="$count" count=1 iflag=fullblock status=none
	dd if=/dev/urandom of=$T/before bs="$rlen" count=1 iflag=fullblock status=none
	dd if=$T/pattern of="$S" bs=1M seek="$skip" oflag=seek_bytes conv=notrunc,fsync status=none
	dd if=$T/before of="$D" bs=1M seek="$roff" oflag=seek_bytes conv=notrunc,fsync status=none
	sync
	echo 3 >/proc/sys/vm/drop_caches
	set -- copy --json --trace "$S" "$D" --force-device --verify \
		--skip "$skip" --seek "$seek" --count "$count"
	[ "$via" = "-" ] || set -- "$@" --via "$via"
	unchecked=
	case ",$flags," in *,no-bounce,*) set -- "$@" --no-bounce ;; esac
	case ",$flags," in *,unchecked-via,*) unchecked=1 ;; esac
	echo "copy $n: ${unchecked:+PEERDMA_COPY_UNCHECKED_VIA=1 }peerdma $*"
	if [ -n "$unchecked" ]; then
		PEERDMA_TRACE_RAW="$C.trace" PEERDMA_COPY_UNCHECKED_VIA=1 peerdma "$@" >"$C.json" 2>"$C.err" </dev/null
	else
		PEERDMA_TRACE_RAW="$C.trace" peerdma "$@" >"$C.json" 2>"$C.err" </dev/null
	fi
	rc=$?
	echo "$rc" >"$C.rc"
	sync
	echo 3 >/proc/sys/vm/drop_caches
	part "$D" "$roff" "$rlen" $T/after
	part $T/after "$head" "$count" $T/body
	part $T/before "$head" "$count" $T/body-before
	part $T/after 0 "$head" $T/head
	part $T/before 0 "$head" $T/head-before
	part $T/after $((head + count)) "$pad" $T/tail
	part $T/before $((head + count)) "$pad" $T/tail-before
	zeros=no
	cmp $T/body /dev/zero 2>&1 | grep -q EOF && zeros=yes
	outside=untouched
	[ "$(differ $T/head $T/head-before)" = exact ] || outside="changed before the range"
	[ "$(differ $T/tail $T/tail-before)" = exact ] || outside="changed after the range"
	{
		echo "src_dev=$S"
		echo "dst_dev=$D"
		echo "pattern=$(differ $T/body $T/pattern)"
		echo "unchanged=$(differ $T/body $T/body-before)"
		echo "zeros=$zeros"
		echo "outside=$outside"
	} >"$C.check"
	echo "copy $n: exit $rc, $(grep -m1 -o '"path": "[a-z0-9_]*"' "$C.json"), $(grep pattern= "$C.check") (case from uptime $t0 to $(cut -d' ' -f1 /proc/uptime) s)"
	rm -rf $T
}

LIST=/etc/peerdma/copies/$SCENARIO
mkdir -p "$OUT/copies"
j=0
if [ -f "$LIST" ]; then
	while read -r sbdf dbdf skip seek count via flags; do
		[ -n "$sbdf" ] || continue
		j=$((j + 1))
		copy_case "$j" "$sbdf" "$dbdf" "$skip" "$seek" "$count" "$via" "$flags" </dev/null
	done <"$LIST"
fi
echo "$j copy case(s) run"

TRACE_BENCH=switch-nvme-cmb
if [ "$SCENARIO" = "$TRACE_BENCH" ] && [ -f "$LIST" ]; then
	read -r sbdf dbdf _ <"$LIST"
	S=$(ns_of "$sbdf") && D=$(ns_of "$dbdf") && for k in 1 2 3 4 5; do
		for mode in plain trace; do
			set -- copy --json "$S" "$D" --force-device --count 33554432
			[ "$mode" = trace ] && set -- "$@" --trace
			t0=$(cut -d' ' -f1 /proc/uptime)
			peerdma "$@" >/tmp/bench.json 2>/tmp/bench.err </dev/null
			rc=$?
			t1=$(cut -d' ' -f1 /proc/uptime)
			bps=$(grep -m1 -o '"bytes_per_sec": [0-9.e+]*' /tmp/bench.json | cut -d' ' -f2)
			echo "$mode $(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}') ${bps:-?} rc=$rc" >>"$OUT/trace-overhead.txt"
		done
	done
	echo "trace overhead: $(wc -l <"$OUT/trace-overhead.txt") run(s)"
fi
dmesg >"$OUT/peerdma/dmesg-after-probes.txt"
exit 0
