#!/usr/bin/env bash
# Alternating A/B runs of two builds of the shape_profile example: the way this
# project compares a change against the build before it on a noisy machine.
#
#   cd benches && cargo build --release --example shape_profile
#   cp target/release/examples/shape_profile /tmp/before   # ...then the change...
#   cp target/release/examples/shape_profile /tmp/after
#   ./ab.sh /tmp/before /tmp/after e2e walsink-batch 8
#
# Runs A, B, A, B, ... (a `sync` before each), then prints each side's median and
# minimum, the ratio of the medians (B/A: below 1 means B is faster) and in how many
# of the pairs B was faster. Treat a ratio within the pairs' spread as no difference.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 A_BIN B_BIN <push_all|batch64|e2e> <subject> [pairs=10]" >&2
  exit 2
fi
a=$1 b=$2 shape=$3 who=$4 pairs=${5:-10}
out=$(mktemp)
for _ in $(seq "$pairs"); do
  for side in A B; do
    bin=$a
    [ "$side" = B ] && bin=$b
    sync
    ms=$("$bin" "$shape" "$who" | grep -o 'in [0-9.]* ms' | cut -d' ' -f2)
    echo "$side $ms" >> "$out"
  done
done
python3 - "$out" <<'PY'
import statistics, sys
a, b = [], []
for line in open(sys.argv[1]):
    side, ms = line.split()
    (a if side == "A" else b).append(float(ms))
wins = sum(1 for x, y in zip(a, b) if y < x)
print(f"A median {statistics.median(a):.1f} ms (min {min(a):.1f}) | "
      f"B median {statistics.median(b):.1f} ms (min {min(b):.1f}) | "
      f"B/A {statistics.median(b) / statistics.median(a):.3f} | B faster in {wins} of {len(a)} pairs")
PY
rm -f "$out"
