#!/bin/sh
# peerdma hooks, run by init.sh inside the oracle guest when /bin/peerdma
# exists. Environment: OUT (the directory sent back to the host), SYSROOT
# (the raw sysfs copy, $OUT/root), SCENARIO (the scenario name).
# Anything written under $OUT comes back in target/vm/<scenario>/.
peerdma --version || true
