#!/usr/bin/env bash
# chordfs benchmarks on a 3-node loopback ring (R=3), next to the local disk, in one run.
#
#   scripts/bench.sh [SIZE_MIB]      (default 1024: the 1 GiB file of the issues)
#
# Prints a table: CLI put/get and mount cp-in/cold read against local-disk dd, small-file
# rates, 4 KiB random-write IOPS, peak RSS of client, mount and nodes, and lookup hop
# counts from an in-process simulation of 1,000 nodes. Everything it starts, it stops.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
size_mib=${1:-1024}
# The physical path: /proc/mounts names the mount by it (target/ may be a symlink).
work=$(cd "$(mktemp -d "${CHORDFS_BENCH_DIR:-$here/target}/bench.XXXXXX")" && pwd -P)
bin=$here/target/release/chordfs
pids=()
mnt=$work/mnt

cleanup() {
  set +e
  grep -qs " $mnt fuse" /proc/mounts && { umount "$mnt" || umount -l "$mnt"; }
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$here" && cargo build --release --quiet --bin chordfs --example lookup_hops)

now() { date +%s.%N; }
rate() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.1f", b / t / 1e6 }'; }   # MB/s
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
hwm_kib() { awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
rss_of() { /usr/bin/time -f "%M" -o "$work/rss" "$@" && cat "$work/rss"; }

# --- ring ---
for k in 1 2 3; do
  mkdir -p "$work/n$k"
  join=()
  [ "$k" -gt 1 ] && join=(--join "$(jq -r .addr "$work/n1/node.json" 2>/dev/null || python3 -c "import json;print(json.load(open('$work/n1/node.json'))['addr'])")")
  "$bin" node --listen 127.0.0.1:0 --data "$work/n$k" --replicas 3 --stabilize-ms 200 "${join[@]}" 2>"$work/n$k.log" &
  pids+=($!)
  for _ in $(seq 1 100); do [ -s "$work/n$k/node.json" ] && break; sleep 0.1; done
done
ring=$(python3 -c "import json;print(json.load(open('$work/n1/node.json'))['addr'])")
sleep 2

head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$work/src.bin"
bytes=$((size_mib * 1024 * 1024))

declare -A R
# --- local disk ---
drop_caches
t0=$(now); dd if="$work/src.bin" of="$work/local.bin" bs=1M conv=fsync status=none; t1=$(now)
R[local_write]=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
# `cp` from the local disk, fsync'ed: what `chordfs get` does (read, write one copy, fsync).
drop_caches
t0=$(now); dd if="$work/local.bin" of="$work/local-out.bin" bs=1M conv=fsync status=none; t1=$(now)
R[local_cp_out]=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
rm -f "$work/local-out.bin"
# A cold sequential read to /dev/null: what a read through the mount does. On a VM, the
# host's page cache may serve this well above what the disk itself gives.
drop_caches
t0=$(now); dd if="$work/local.bin" of=/dev/null bs=1M status=none; t1=$(now)
R[local_read]=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
rm -f "$work/local.bin"

# --- CLI ---
t0=$(now); R[put_rss]=$(rss_of "$bin" put --ring "$ring" "$work/src.bin" /bench/big.bin 2>/dev/null); t1=$(now)
R[put]=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
drop_caches
t0=$(now); R[get_rss]=$(rss_of "$bin" get --ring "$ring" /bench/big.bin "$work/back.bin" 2>/dev/null); t1=$(now)
R[get]=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
cmp -s "$work/src.bin" "$work/back.bin" && R[get_ok]=identical || R[get_ok]=DIFFERENT
rm -f "$work/back.bin"

# --- mount (when the FUSE driver is available) ---
mount_ok=no
mkdir -p "$mnt"
"$bin" mount --foreground --ring "$ring" "$mnt" 2>"$work/mount.log" &
mpid=$!
pids+=($mpid)
for _ in $(seq 1 100); do grep -qs " $mnt fuse" /proc/mounts && { mount_ok=yes; break; }; kill -0 $mpid 2>/dev/null || break; sleep 0.1; done
if [ $mount_ok = yes ]; then
  t0=$(now); dd if="$work/src.bin" of="$mnt/big.bin" bs=1M conv=fsync status=none; t1=$(now)
  R[mnt_write]=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
  R[mnt_rss]=$(hwm_kib $mpid)
  umount "$mnt"; wait $mpid 2>/dev/null || true
  drop_caches
  "$bin" mount --foreground --ring "$ring" "$mnt" 2>>"$work/mount.log" &
  mpid=$!; pids+=($mpid)
  for _ in $(seq 1 100); do grep -qs " $mnt fuse" /proc/mounts && break; sleep 0.1; done
  t0=$(now); dd if="$mnt/big.bin" of=/dev/null bs=1M status=none; t1=$(now)
  R[mnt_read]=$(rate $bytes "$(echo "$t1 - $t0" | bc)")
  cmp -s "$work/src.bin" "$mnt/big.bin" && R[mnt_ok]=identical || R[mnt_ok]=DIFFERENT
  python3 "$here/scripts/smallfiles.py" "$mnt/small" >"$work/small.json"
  python3 "$here/scripts/smallfiles.py" "$work/local-small" >"$work/local-small.json"
  R[mnt_rss]=$(( $(hwm_kib $mpid) > ${R[mnt_rss]} ? $(hwm_kib $mpid) : ${R[mnt_rss]} ))
fi

nodes_rss=""
for p in "${pids[@]:0:3}"; do nodes_rss+="$(( $(hwm_kib "$p") / 1024 )) "; done
hops=$("$here/target/release/examples/lookup_hops" 1000 10000)

py() { python3 -c "import json,sys; d=json.load(open('$1')); print(d['$2'])"; }
echo
echo "chordfs benchmark: ${size_mib} MiB file, 3-node loopback ring, R=3, $(nproc) cores"
printf '%-44s %14s %14s %8s\n' "measure" "chordfs" "local disk" "ratio"
printf '%-44s %14s %14s %8s\n' "put (CLI), MB/s" "${R[put]}" "${R[local_write]}" "$(ratio ${R[put]} ${R[local_write]})"
printf '%-44s %14s %14s %8s\n' "get (CLI, ${R[get_ok]}) vs local cp out, MB/s" "${R[get]}" "${R[local_cp_out]}" "$(ratio ${R[get]} ${R[local_cp_out]})"
printf '%-44s %14s %14s %8s\n' "get (CLI) vs local read to /dev/null, MB/s" "${R[get]}" "${R[local_read]}" "$(ratio ${R[get]} ${R[local_read]})"
if [ $mount_ok = yes ]; then
  printf '%-44s %14s %14s %8s\n' "cp into mount + fsync, MB/s" "${R[mnt_write]}" "${R[local_write]}" "$(ratio ${R[mnt_write]} ${R[local_write]})"
  printf '%-44s %14s %14s %8s\n' "cold read after remount (${R[mnt_ok]}), MB/s" "${R[mnt_read]}" "${R[local_read]}" "$(ratio ${R[mnt_read]} ${R[local_read]})"
  for k in create ls_l read remove; do
    printf '%-44s %14s %14s %8s\n' "1,000 x 4 KiB files: $k, files/s" "$(py "$work/small.json" $k)" "$(py "$work/local-small.json" $k)" "$(ratio "$(py "$work/small.json" $k)" "$(py "$work/local-small.json" $k)")"
  done
  printf '%-44s %14s %14s %8s\n' "4 KiB random writes in 64 MiB file, IOPS" "$(py "$work/small.json" iops)" "$(py "$work/local-small.json" iops)" "$(ratio "$(py "$work/small.json" iops)" "$(py "$work/local-small.json" iops)")"
  printf '%-44s %14s\n' "peak RSS of the mount, MiB" "$(( R[mnt_rss] / 1024 ))"
else
  echo "(mount benchmarks skipped: the mount did not come up; see $work/mount.log)"
fi
printf '%-44s %14s\n' "peak RSS of put / get client, MiB" "$(( R[put_rss] / 1024 )) / $(( R[get_rss] / 1024 ))"
printf '%-44s %14s\n' "peak RSS of the 3 nodes, MiB" "$nodes_rss"
python3 - "$hops" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print(f"{'lookup hops, simulated ring of %d nodes' % d['nodes']:<44} mean {d['mean_hops']:.2f}, p99 {d['p99_hops']} (½·log2 N = {d['half_log2_n']:.2f})")
PY
