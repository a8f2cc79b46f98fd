#!/usr/bin/env bash
# The differential test at length: random operation sequences on a chordfs ring (two
# mounts, several workers) and on a local directory, compared (tests/differential.rs).
#
#   scripts/difftest.sh [COUNT] [START] [OPS]
#     COUNT  how many seeds (default 50)
#     START  the first seed (default 1)
#     OPS    operations per seed (default 400)
#   Environment: CHORDFS_DIFF_WORKERS (default 3), CHORDFS_DIFF_SHRINK_SECS (300).
#
# Each failing seed is cut down to a short sequence and printed with the command that
# replays it; the last line says how many seeds ran and which failed.
set -euo pipefail
cd "$(dirname "$0")/.."

count=${1:-50}
first=${2:-1}
ops=${3:-400}
for v in "$count" "$first" "$ops"; do
  case $v in
    ''|*[!0-9]*) echo "usage: $0 [COUNT] [START] [OPS] (whole numbers)" >&2; exit 2 ;;
  esac
done
[ "$count" -ge 1 ] || { echo "COUNT must be at least 1" >&2; exit 2; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
rc=0
CHORDFS_DIFF_SEED=$first CHORDFS_DIFF_SEEDS=$count CHORDFS_DIFF_OPS=$ops \
  cargo test --test differential -- --nocapture 2>&1 | tee "$log" || rc=$?
ok=$(grep -c 'ops agree' "$log" || true)
failed=$(sed -n 's/.*seeds that failed: \(\[[^]]*\]\).*/\1/p' "$log" | tail -n 1)
echo "difftest: seeds $first..$((first + count - 1)) x $ops ops: $ok agreed, failed: ${failed:-none} ($(( $(date +%s) - start )) s)"
exit $rc
