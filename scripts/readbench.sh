#!/usr/bin/env bash
# Read benchmark, narrower than bench.sh: a 3-node loopback ring (R=3), one put, then per
# round a local `dd` read, a CLI get and a cold read through a fresh mount (caches dropped
# before each), with the CPU seconds each process spent. Everything it starts, it stops.
#
#   scripts/readbench.sh [SIZE_MIB] [ROUNDS] [BIN]     (default 512, 3, target/release/chordfs)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
size_mib=${1:-512}; rounds=${2:-3}; bin=${3:-$here/target/release/chordfs}
# The physical path: /proc/mounts names the mount by it (target/ may be a symlink).
work=$(cd "$(mktemp -d "${CHORDFS_BENCH_DIR:-$here/target}/readbench.XXXXXX")" && pwd -P)
pids=(); mnt=$work/mnt
cleanup() {
  set +e
  grep -qs " $mnt fuse" /proc/mounts && { umount "$mnt" || umount -l "$mnt"; }
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
rate() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.0f", b / t / 1e6 }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
cpu() { local s=0; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $s; }  # clock ticks
secs() { awk -v t="$1" 'BEGIN { printf "%.2f", t / 100 }'; }
for k in 1 2 3; do
  mkdir -p "$work/n$k"; join=()
  [ "$k" -gt 1 ] && join=(--join "$(python3 -c "import json;print(json.load(open('$work/n1/node.json'))['addr'])")")
  "$bin" node --listen 127.0.0.1:0 --data "$work/n$k" --replicas 3 --stabilize-ms 200 "${join[@]}" 2>"$work/n$k.log" &
  pids+=($!)
  for _ in $(seq 1 100); do [ -s "$work/n$k/node.json" ] && break; sleep 0.1; done
done
ring=$(python3 -c "import json;print(json.load(open('$work/n1/node.json'))['addr'])")
sleep 2
bytes=$((size_mib * 1024 * 1024))
head -c $bytes /dev/urandom >"$work/src.bin"
"$bin" put --ring "$ring" "$work/src.bin" /bench/big.bin 2>/dev/null
mkdir -p "$mnt"
for r in $(seq 1 "$rounds"); do
  drop_caches
  t0=$(now); dd if="$work/src.bin" of=/dev/null bs=1M status=none; t1=$(now)
  local_r=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
  drop_caches
  n0=$(cpu "${pids[@]:0:3}")
  t0=$(now); /usr/bin/time -f "%M %U %S" -o "$work/rss" "$bin" get --ring "$ring" /bench/big.bin "$work/back.bin" 2>/dev/null; t1=$(now)
  get_r=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
  n1=$(cpu "${pids[@]:0:3}")
  get_cpu=$(awk '{printf "%.2f", $2+$3}' "$work/rss"); get_rss=$(awk '{print int($1/1024)}' "$work/rss")
  cmp -s "$work/src.bin" "$work/back.bin" && ok=ok || ok=DIFF
  rm -f "$work/back.bin"
  "$bin" mount --foreground --ring "$ring" "$mnt" 2>>"$work/mount.log" &
  mpid=$!; pids+=($mpid)
  for _ in $(seq 1 300); do grep -qs " $mnt fuse" /proc/mounts && break; sleep 0.1; done
  drop_caches
  m0=$(cpu $mpid); n2=$(cpu "${pids[@]:0:3}")
  t0=$(now); dd if="$mnt/bench/big.bin" of=/dev/null bs=1M status=none; t1=$(now)
  m1=$(cpu $mpid); n3=$(cpu "${pids[@]:0:3}")
  mnt_r=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
  mrss=$(awk '/VmHWM/ { print int($2/1024) }' /proc/$mpid/status)
  umount "$mnt"; wait $mpid 2>/dev/null || true
  echo "round $r: local ${local_r} MB/s | get ${get_r} MB/s ($ok, rss $get_rss MiB, cpu client ${get_cpu}s nodes $(secs $((n1-n0)))s) | cold mount read ${mnt_r} MB/s (rss $mrss MiB, cpu mount $(secs $((m1-m0)))s nodes $(secs $((n3-n2)))s) | load $(cut -d' ' -f1 /proc/loadavg)"
done
