#!/usr/bin/env bash
# Runs many seeds of the deterministic ring simulation (src/sim) in release mode and
# prints a summary: seeds run, invariant checks, failing seeds with their replay commands.
#
#   scripts/sim.sh [SEEDS] [START]     SEEDS seeds (default 2000) from START (default 0)
#
# CHORDFS_SIM_FAULTS=crashes,weather (joins, leaves, crashes, weather, partitions) narrows
# the kinds of fault. A failing seed replays exactly, in debug or release:
#   CHORDFS_SIM_SEED=<seed> cargo test --test sim -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=${1:-2000}
start=${2:-0}
case "$seeds$start" in
  *[!0-9]*) echo "usage: scripts/sim.sh [SEEDS] [START]" >&2; exit 2 ;;
esac

log=$(mktemp "${TMPDIR:-/tmp}/chordfs-sim.XXXXXX")
trap 'rm -f "$log"' EXIT

echo "== simulating $seeds seeds from $start (release build; log: cargo test output)"
began=$(date +%s)
status=0
CHORDFS_SIM_SEEDS=$seeds CHORDFS_SIM_START=$start CHORDFS_SIM_BUDGET_SECS=${CHORDFS_SIM_BUDGET_SECS:-86400} \
  cargo test --release --quiet --test sim seeds_hold_the_invariants -- --nocapture \
  >"$log" 2>&1 || status=$?
took=$(( $(date +%s) - began ))

summary=$(grep -E '^sim summary' "$log" || true)
if [ -z "$summary" ]; then
  echo "the simulation did not finish (exit $status); its output:" >&2
  tail -n 50 "$log" >&2
  exit 1
fi
echo "$summary"
grep -E '^sim: the .* budget ran out' "$log" || true
failed=$(grep -cE '^seed [0-9]+ .*FAILED$' "$log" || true)
echo "wall time ${took}s, $failed failing seed(s)"
if [ "$failed" -gt 0 ]; then
  echo "== failing seeds (first invariant broken, then how to replay)"
  awk '/^seed [0-9]+ .*FAILED$/ { seed = $2; first = 1; next }
       first && /invariant failed/ { sub(/^ +/, ""); print "seed " seed ": " $0; first = 0 }
       /replay: / { sub(/^ +/, ""); print "  " $0 }' "$log"
  exit 1
fi
