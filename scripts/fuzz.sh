#!/usr/bin/env bash
# Long fuzzing run: the property tests of tests/fuzz.rs (frame decoder and every
# Request/Response variant, record files, Store::open, a live node's TCP server), in
# release mode with many cases, round after round with a new seed each, for MINUTES.
#
#   scripts/fuzz.sh [MINUTES] [CASES]     (default 15 minutes, 20,000 cases a property a round)
#
# A failing round stops the run and prints its seed and the minimal failing input;
# proptest also stores the failure in tests/fuzz.proptest-regressions, so every later
# `cargo test` replays it first. Replay a round: PROPTEST_RNG_SEED=SEED
# PROPTEST_CASES=CASES cargo test --release --test fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-15}
cases=${2:-20000}
log_dir=${CARGO_TARGET_DIR:-target}/fuzz-logs
mkdir -p "$log_dir"

echo "fuzz: building tests/fuzz.rs (release)"
cargo test --release --quiet --test fuzz --no-run

# Cases a round runs: 8 properties at CASES, the Store::open one at CASES/8, the live
# node at CASES/10 (see config() in tests/fuzz.rs).
per_round=$((8 * cases + cases / 8 + cases / 10))
began=$SECONDS
end=$((SECONDS + minutes * 60))
rounds=0 total=0 failed=0
base=${PROPTEST_RNG_SEED:-$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))}
# Bounded: at most 10,000 rounds, whatever the clock says.
while [ $SECONDS -lt $end ] && [ $rounds -lt 10000 ]; do
  seed=$((base + rounds))
  out=$log_dir/round-$seed.log
  start=$SECONDS
  if PROPTEST_CASES=$cases PROPTEST_RNG_SEED=$seed \
    cargo test --release --quiet --test fuzz -- --test-threads=2 >"$out" 2>&1; then
    rounds=$((rounds + 1))
    total=$((total + per_round))
    echo "fuzz: round $rounds seed $seed: $per_round cases ok in $((SECONDS - start)) s"
    rm -f "$out"
  else
    rounds=$((rounds + 1))
    failed=1
    echo "fuzz: round $rounds seed $seed FAILED (log: $out)"
    grep -E "^test .* FAILED|minimal failing input|panicked at|Test failed" "$out" | head -20 || true
    break
  fi
done
took=$((SECONDS - began))
echo "fuzz: $rounds rounds, $total cases passed, $failed failing round(s)," \
  "$((took / 60)) min $((took % 60)) s of fuzzing (after $began s of build)"
if [ $failed -ne 0 ]; then
  echo "fuzz: replay with PROPTEST_RNG_SEED=$seed PROPTEST_CASES=$cases cargo test --release --test fuzz"
  exit 1
fi
