#!/usr/bin/env bash
# Chaos soak: while a client writes files through the mount, reads them back and verifies
# them, a second loop SIGKILLs and restarts random nodes (never more than R-1 down at
# once). At the end it prints what it did and how many acknowledged files were lost
# (which must be 0), and exits non-zero if any were.
#
#   scripts/chaos.sh [SECONDS] [NODES]        (default 600 s, 5 nodes, R=3)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-600}
nodes=${2:-5}
replicas=${CHORDFS_REPLICAS:-3}
work=$(mktemp -d "${CHORDFS_CHAOS_DIR:-$here/target}/chaos.XXXXXX")
mnt=$work/mnt
bin=$here/target/release/chordfs
declare -A pid port

cleanup() {
  set +e
  [ -n "${killer:-}" ] && kill "$killer" 2>/dev/null
  grep -qs " $mnt fuse" /proc/mounts && { umount "$mnt" || umount -l "$mnt"; }
  # Pids live in files: the killer loop restarts nodes in a subshell.
  for f in "$work"/n*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
  [ -n "${mpid:-}" ] && kill -KILL "$mpid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$here" && cargo build --release --quiet --bin chordfs)

addr_of() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['addr'])" "$1"; }

start_node() { # start_node K [JOIN]
  local k=$1 join=() listen="127.0.0.1:${port[$1]:-0}"
  [ -n "${2:-}" ] && join=(--join "$2")
  rm -f "$work/n$k/node.json"
  mkdir -p "$work/n$k"
  "$bin" node --listen "$listen" --data "$work/n$k" --replicas "$replicas" \
    --stabilize-ms 200 --check-predecessor-ms 300 --repair-ms 1000 --rpc-timeout-ms 1500 \
    "${join[@]}" >>"$work/n$k.log" 2>&1 &
  pid[$k]=$!
  echo "${pid[$k]}" >"$work/n$k.pid"
  for _ in $(seq 1 100); do [ -s "$work/n$k/node.json" ] && break; sleep 0.1; done
  port[$k]=$(addr_of "$work/n$k/node.json" | cut -d: -f2)
}

start_node 1
seed=127.0.0.1:${port[1]}
for k in $(seq 2 "$nodes"); do start_node "$k" "$seed"; done
sleep 2
mkdir -p "$mnt"
"$bin" mount --foreground --ring "$seed" "$mnt" -o timeout=20 2>"$work/mount.log" &
mpid=$!
for _ in $(seq 1 100); do grep -qs " $mnt fuse" /proc/mounts && break; sleep 0.1; done

# The killer: every few seconds, SIGKILL a random live node (if fewer than R-1 are down)
# or restart a dead one on its old address and data dir.
(
  set +e
  kills=0 restarts=0
  declare -A down
  end=$((SECONDS + secs))
  while [ $SECONDS -lt $end ]; do
    sleep $((3 + RANDOM % 5))
    k=$((1 + RANDOM % nodes))
    if [ -n "${down[$k]:-}" ]; then
      start_node "$k" "127.0.0.1:${port[$(( (k % nodes) + 1 ))]}" && { unset "down[$k]"; restarts=$((restarts + 1)); }
      echo "restart n$k" >>"$work/events"
    elif [ ${#down[@]} -lt $((replicas - 1)) ]; then
      kill -KILL "$(cat "$work/n$k.pid")" 2>/dev/null && { down[$k]=1; kills=$((kills + 1)); }
      echo "kill n$k" >>"$work/events"
    fi
  done
  for k in "${!down[@]}"; do start_node "$k" "127.0.0.1:${port[$(( (k % nodes) + 1 ))]}"; echo "restart n$k" >>"$work/events"; done
  echo "$kills $restarts" >"$work/killer.done"
) &
killer=$!

# The client: write a file (random size up to 3 MiB), fsync, close; read back a random
# earlier file and compare with its recorded checksum. Errors are counted, not fatal:
# only a file that was acknowledged and later reads back wrong or missing is a loss.
python3 - "$mnt" "$secs" "$work" <<'PY'
import hashlib, json, os, random, sys, time
mnt, secs, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(7)
acked = {}
stats = dict(writes=0, reads=0, bytes_written=0, bytes_verified=0, write_errors=0, read_errors=0, mismatches=0)
end = time.monotonic() + secs
i = 0
while time.monotonic() < end:
    i += 1
    name = f"f{i:06}"
    data = os.urandom(rng.randrange(0, 3 << 20))
    try:
        with open(os.path.join(mnt, name), "wb") as f:
            f.write(data); f.flush(); os.fsync(f.fileno())
        acked[name] = hashlib.sha1(data).hexdigest()
        stats["writes"] += 1; stats["bytes_written"] += len(data)
    except OSError as e:
        stats["write_errors"] += 1
    if acked:
        name = rng.choice(list(acked))
        try:
            with open(os.path.join(mnt, name), "rb") as f:
                back = f.read()
            stats["reads"] += 1
            if hashlib.sha1(back).hexdigest() == acked[name]:
                stats["bytes_verified"] += len(back)
            else:
                stats["mismatches"] += 1
        except OSError:
            stats["read_errors"] += 1
json.dump(dict(stats=stats, acked=acked), open(os.path.join(work, "client.json"), "w"))
PY
wait "$killer" 2>/dev/null || true
killer=
sleep 5   # let repair settle after the last restart

# Final check: every acknowledged file reads back right, now that all nodes are up.
python3 - "$mnt" "$work" "$secs" <<'PY'
import hashlib, json, os, sys
mnt, work, secs = sys.argv[1], sys.argv[2], sys.argv[3]
d = json.load(open(os.path.join(work, "client.json")))
lost = 0
for name, digest in d["acked"].items():
    try:
        with open(os.path.join(mnt, name), "rb") as f:
            if hashlib.sha1(f.read()).hexdigest() != digest:
                lost += 1
    except OSError:
        lost += 1
kills, restarts = open(os.path.join(work, "killer.done")).read().split()
s = d["stats"]
print(f"chaos soak: {secs} s")
print(f"  client operations: {s['writes']} writes ({s['bytes_written'] / 1e6:.1f} MB), {s['reads']} verified reads ({s['bytes_verified'] / 1e6:.1f} MB verified)")
print(f"  node kills: {kills}, restarts: {restarts}")
print(f"  errors seen by the client: {s['write_errors']} on write, {s['read_errors']} on read, {s['mismatches']} wrong reads")
print(f"  acknowledged files: {len(d['acked'])}, lost: {lost}")
sys.exit(1 if lost or s["mismatches"] else 0)
PY
