#!/usr/bin/env bash
# Chaos soak: while a client writes files through the mount, reads them back and verifies
# them, a second loop SIGKILLs and restarts random nodes (never more than R-1 down at
# once). At the end every node is up again, the ring is remounted afresh (so no page
# cache can hide a loss) and every acknowledged file is read back. It prints what it did
# and how many acknowledged files were lost (which must be 0), and exits non-zero if any
# were (or if a read ever returned wrong bytes).
#
#   scripts/chaos.sh [SECONDS] [NODES]        (default 600 s, 5 nodes, R=3)
#
# Environment: CHORDFS_CHAOS_SEED (default: random; printed, so a run can be repeated
# as far as timing allows), CHORDFS_REPLICAS (3), CHORDFS_PROFILE (release | debug),
# CHORDFS_CHAOS_DIR (where the work dir goes; it is kept, with the node and mount logs
# and the timeline, when files were lost), CARGO_TARGET_DIR.
set -euo pipefail
# The whole script is one group, read before it runs: editing this file during a long
# soak cannot change what the running soak does.
{
here=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-600}
nodes=${2:-5}
replicas=${CHORDFS_REPLICAS:-3}
profile=${CHORDFS_PROFILE:-release}
seed=${CHORDFS_CHAOS_SEED:-$(( (RANDOM << 15) | RANDOM ))}
target=${CARGO_TARGET_DIR:-$here/target}
bin=$target/$profile/chordfs
[ "$nodes" -gt "$replicas" ] || { echo "chaos: need more nodes ($nodes) than replicas ($replicas)" >&2; exit 2; }
parent=${CHORDFS_CHAOS_DIR:-$target}
mkdir -p "$parent"
work=$(mktemp -d "$parent/chaos.XXXXXX")
mnt=$work/mnt
keep=no
declare -A port

log() { echo "$(date +%T.%3N) $*" >>"$work/timeline"; }

unmount() {
  if grep -qs " $mnt fuse" /proc/mounts; then
    umount "$mnt" 2>/dev/null || umount -l "$mnt"
  fi
  if [ -n "${mpid:-}" ]; then
    for _ in $(seq 1 100); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$mpid" 2>/dev/null || true
    wait "$mpid" 2>/dev/null || true
    mpid=
  fi
  return 0
}

cleanup() {
  local rc=$?
  set +e
  [ $rc -eq 0 ] || keep=yes
  if [ -n "${killer:-}" ]; then kill "$killer" 2>/dev/null; wait "$killer" 2>/dev/null; fi
  unmount
  # Pids live in files: the killer loop restarts nodes in a subshell.
  for f in "$work"/n*.pid; do [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null; done
  wait 2>/dev/null
  if [ $keep = yes ]; then
    echo "chaos: work dir kept: $work (timeline, n*.log, mount.log)"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

if [ "$profile" = release ]; then
  (cd "$here" && cargo build --release --quiet --bin chordfs)
else
  (cd "$here" && cargo build --quiet --bin chordfs)
fi

build_done=$SECONDS
addr_of() { sed -n 's/.*"addr": *"\([^"]*\)".*/\1/p' "$1"; }
pid_in() { sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$1"; }

start_node() { # start_node K [JOIN]: returns once the node serves, non-zero if it did not
  local k=$1 join=() listen="127.0.0.1:${port[$1]:-0}" p
  [ -n "${2:-}" ] && join=(--join "$2")
  mkdir -p "$work/n$k"
  rm -f "$work/n$k/node.json"
  "$bin" node --listen "$listen" --data "$work/n$k" --replicas "$replicas" \
    --stabilize-ms 200 --check-predecessor-ms 300 --repair-ms 1000 --rpc-timeout-ms 1500 \
    "${join[@]}" >>"$work/n$k.log" 2>&1 &
  p=$!
  disown "$p" 2>/dev/null # no "Killed" job notices: the nodes are killed on purpose
  echo "$p" >"$work/n$k.pid"
  for _ in $(seq 1 300); do
    [ -s "$work/n$k/node.json" ] && [ "$(pid_in "$work/n$k/node.json")" = "$p" ] && break
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  if ! [ -s "$work/n$k/node.json" ] || ! kill -0 "$p" 2>/dev/null; then
    kill -KILL "$p" 2>/dev/null || true
    rm -f "$work/n$k.pid"
    log "n$k failed to start: $(tail -n 1 "$work/n$k.log" | cut -c1-200)"
    return 1
  fi
  port[$k]=$(addr_of "$work/n$k/node.json" | cut -d: -f2)
}

# Every node up, every successor list complete (nodes-1 long, up to 8): the ring has
# healed. Polled through the CLI's status, bounded by the caller.
healed() {
  "$bin" status --ring "127.0.0.1:${port[1]}" --json 2>/dev/null | python3 -c '
import json, sys
n = int(sys.argv[1])
rows = json.load(sys.stdin)
sys.exit(0 if len(rows) == n and all(r["reachable"] for r in rows) else 1)
' "$nodes"
}

echo "chaos: seed $seed, $nodes nodes, R=$replicas, $secs s, work dir $work"
RANDOM=$seed
# Ports below the ephemeral range (32768+ on Linux): an OS-chosen port could be taken by
# some outgoing connection while its node is down, and the restart would fail to bind.
base_port=$((20000 + (seed % 1200) * 10))
for k in $(seq 1 "$nodes"); do port[$k]=$((base_port + k)); done
start_node 1
for k in $(seq 2 "$nodes"); do start_node "$k" "127.0.0.1:${port[1]}"; done
for _ in $(seq 1 300); do healed && break; sleep 0.1; done
log "ring of $nodes nodes up"

mount_ring() {
  mkdir -p "$mnt"
  "$bin" mount --foreground --ring "127.0.0.1:${port[1]}" "$mnt" -o timeout=20 \
    >>"$work/mount.log" 2>&1 &
  mpid=$!
  for _ in $(seq 1 200); do grep -qs " $mnt fuse" /proc/mounts && return 0; sleep 0.1; done
  echo "chaos: the mount did not come up; see $work/mount.log" >&2
  keep=yes
  exit 1
}
mount_ring

# The killer: every 3-7 s, SIGKILL a random live node (if fewer than R-1 are down) or
# restart a dead one on its old address and data dir, joining through a live node.
(
  set +eu
  trap - EXIT
  kills=0 restarts=0 failed=0 maxdown=0 ndown=0
  declare -A down=()
  end=$((SECONDS + secs))
  while [ $SECONDS -lt $end ]; do
    sleep $((3 + RANDOM % 5))
    [ $SECONDS -lt $end ] || break
    k=$((1 + RANDOM % nodes))
    if [ -n "${down[$k]:-}" ]; then
      via=
      for j in $(seq 1 "$nodes"); do [ -z "${down[$j]:-}" ] && { via=127.0.0.1:${port[$j]}; break; }; done
      if start_node "$k" "$via"; then
        unset "down[$k]"; ndown=$((ndown - 1)); restarts=$((restarts + 1))
        log "restart n$k (joined via $via)"
      else
        failed=$((failed + 1))
      fi
    elif [ $ndown -lt $((replicas - 1)) ]; then
      if kill -KILL "$(cat "$work/n$k.pid")" 2>/dev/null; then
        down[$k]=1; ndown=$((ndown + 1)); kills=$((kills + 1))
        [ $ndown -gt $maxdown ] && maxdown=$ndown
        log "SIGKILL n$k (down now: ${!down[*]})"
      fi
    fi
  done
  # Bring every node back (bounded: a few tries each).
  for k in "${!down[@]}"; do
    for _ in 1 2 3; do
      via=
      for j in $(seq 1 "$nodes"); do [ -z "${down[$j]:-}" ] && { via=127.0.0.1:${port[$j]}; break; }; done
      if start_node "$k" "$via"; then
        unset "down[$k]"; ndown=$((ndown - 1)); restarts=$((restarts + 1))
        log "final restart n$k"; break
      fi
      failed=$((failed + 1)); sleep 1
    done
  done
  echo "$kills $restarts $failed $maxdown $ndown" >"$work/killer.done"
) &
killer=$!

# The client: write a file (random size up to 3 MiB, sometimes empty or tiny), fsync,
# close; then read back a random earlier file and compare with its checksum. Errors are
# counted, not fatal: only a file that was acknowledged and later reads back wrong or
# missing is a loss.
python3 - "$mnt" "$secs" "$work" "$seed" <<'PY'
import hashlib, json, os, random, sys, time
mnt, secs, work, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)
acked = {}
stats = dict(writes=0, reads=0, bytes_written=0, bytes_verified=0, write_errors=0,
             read_errors=0, mismatches=0)
errors = {}
def note(kind, e):
    key = f"{kind}: {getattr(e, 'strerror', None) or e}"
    errors[key] = errors.get(key, 0) + 1
    with open(os.path.join(work, "timeline"), "a") as t:
        t.write(time.strftime("%T") + f" client {key}\n")
end = time.monotonic() + secs
i = 0
while time.monotonic() < end and i < 10_000_000:
    i += 1
    name = f"f{i:06}"
    size = rng.choice([0, 1, 4096, rng.randrange(1, 300_000), rng.randrange(1, 3 << 20)])
    data = rng.randbytes(size)
    try:
        with open(os.path.join(mnt, name), "wb") as f:
            f.write(data); f.flush(); os.fsync(f.fileno())
        acked[name] = hashlib.sha1(data).hexdigest()
        stats["writes"] += 1; stats["bytes_written"] += len(data)
    except OSError as e:
        stats["write_errors"] += 1; note("write " + name, e)
    if acked:
        name = rng.choice(list(acked))
        try:
            with open(os.path.join(mnt, name), "rb") as f:
                back = f.read()
            stats["reads"] += 1
            if hashlib.sha1(back).hexdigest() == acked[name]:
                stats["bytes_verified"] += len(back)
            else:
                stats["mismatches"] += 1; note("read " + name, "WRONG BYTES")
        except OSError as e:
            stats["read_errors"] += 1; note("read " + name, e)
json.dump(dict(stats=stats, acked=acked, errors=errors),
          open(os.path.join(work, "client.json"), "w"))
PY
wait "$killer" 2>/dev/null || true
killer=
# Let the ring heal after the last restart (bounded), then remount afresh.
for _ in $(seq 1 600); do healed && break; sleep 0.1; done
log "all nodes back; remounting for the final check"
unmount
mount_ring

# Final check: every acknowledged file reads back right, now that all nodes are up.
# A read that fails is retried for a while (repair may still be moving copies); a read
# that returns wrong bytes is a loss at once.
set +e
python3 - "$mnt" "$work" "$secs" <<'PY'
import hashlib, json, os, sys, time
mnt, work, secs = sys.argv[1], sys.argv[2], sys.argv[3]
d = json.load(open(os.path.join(work, "client.json")))
lost, retried, final_bytes = [], 0, 0
for name, digest in d["acked"].items():
    deadline = time.monotonic() + 60
    for attempt in range(30):
        try:
            with open(os.path.join(mnt, name), "rb") as f:
                back = f.read()
            if hashlib.sha1(back).hexdigest() != digest:
                lost.append((name, "wrong bytes"))
            else:
                final_bytes += len(back)
            break
        except OSError as e:
            if time.monotonic() > deadline or attempt == 29:
                lost.append((name, str(e)))
                break
            retried += 1
            time.sleep(2)
kills, restarts, failed, maxdown, still_down = open(os.path.join(work, "killer.done")).read().split()
s = d["stats"]
print(f"chaos soak: {secs} s")
print(f"  client operations: {s['writes'] + s['reads']} ({s['writes']} writes of {s['bytes_written'] / 1e6:.1f} MB, "
      f"{s['reads']} reads), {s['bytes_verified'] / 1e6:.1f} MB verified during the run")
print(f"  node kills: {kills} (at most {maxdown} down at once), restarts: {restarts}, failed restarts: {failed}")
print(f"  errors seen by the client: {s['write_errors']} on write, {s['read_errors']} on read, {s['mismatches']} wrong reads")
for k, v in sorted(d["errors"].items(), key=lambda kv: -kv[1])[:5]:
    print(f"    {v} x {k}")
print(f"  final check after remount: {len(d['acked']) - len(lost)} of {len(d['acked'])} acknowledged files "
      f"read back right ({final_bytes / 1e6:.1f} MB, {retried} retried reads)")
print(f"  files lost: {len(lost)}")
for name, why in lost[:20]:
    print(f"    {name}: {why}")
if int(still_down):
    print(f"  nodes that could not be restarted at the end: {still_down} (at most R-1; the files must still read)")
sys.exit(1 if lost or s["mismatches"] else 0)
PY
rc=$?
echo "  wall time: $SECONDS s in all (build excluded: $((SECONDS - build_done)) s)"
[ $rc -eq 0 ] || keep=yes
exit $rc
}
