#!/usr/bin/env bash
# Simulator throughput of two tierd builds, taking turns in one script.
#
#   scripts/sim-vs.sh BEFORE NOW [PASSES]
#
# BEFORE and NOW are tierd binaries. Each pass replays every workload of
# $WORKLOADS (default /tmp/simw/final, made as docs/POLICY.md says) with
# `--policy all --moves timed --timing`, first with BEFORE, then with NOW.
# Prints, per workload and policy, the median accesses/s of the passes
# (NOW / BEFORE, millions) and the ratios' median and range.
set -euo pipefail
before=${1:?usage: sim-vs.sh BEFORE NOW [PASSES]}
now=${2:?usage: sim-vs.sh BEFORE NOW [PASSES]}
passes=${3:-7}
dir=${WORKLOADS:-/tmp/simw/final}
workloads=(servegen zipf diurnal bursty bursty-cv2 shift scan azure)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pass in $(seq 1 "$passes"); do
    for w in "${workloads[@]}"; do
        [ -f "$dir/$w/trace.csv" ] || continue
        for build in before now; do
            bin=$before
            [ "$build" = now ] && bin=$now
            "$bin" sim --catalog "$dir/$w/catalog.csv" --trace "$dir/$w/trace.csv" \
                --policy all --moves timed --report json --timing 2>&1 >/dev/null |
                grep "accesses replayed" | sed "s/^/$w $build /" >>"$log"
        done
    done
done
python3 - "$log" <<'PY'
import re, statistics as st, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (\S+) (\S+): \d+ accesses replayed in [\d.]+ s wall \((\d+)/s\)", line)
    if m:
        runs[(m[1], m[3], m[2])].append(int(m[4]))
policies = ["lru", "lfu", "gdsf", "belady", "tierd"]
workloads = list(dict.fromkeys(k[0] for k in runs))
print("| workload | " + " | ".join(policies) + " |")
print("|---|" + "---:|" * len(policies))
ratios = []
for w in workloads:
    cells = []
    for p in policies:
        now, before = st.median(runs[(w, p, "now")]), st.median(runs[(w, p, "before")])
        ratios.append(now / before)
        cells.append(f"{now / 1e6:.2f} / {before / 1e6:.2f}")
    print(f"| {w} | " + " | ".join(cells) + " |")
print(f"now / before: median {st.median(ratios):.3f}, lowest {min(ratios):.3f}, highest {max(ratios):.3f}")
slowest = min(min(v) for k, v in runs.items() if k[2] == "now")
print(f"slowest cell of any pass (now): {slowest / 1e6:.2f} M/s")
PY
