#!/usr/bin/env bash
# A local chordfs ring on loopback, mounted as a filesystem: the embedded default.
#
#   scripts/ring.sh start [N]   build chordfs, start N nodes (default 3) and mount the ring
#   scripts/ring.sh stop        unmount, then stop every node gracefully (by recorded pid)
#   scripts/ring.sh status      show the ring
#
# Environment: CHORDFS_MOUNT (default /mnt/chord), CHORDFS_STATE (default .ring in the
# checkout), CHORDFS_BASE_PORT (default 7400; node k listens on BASE+k-1 and serves its
# status page on BASE+80+k-1), CHORDFS_REPLICAS (default 3), CHORDFS_PROFILE (release).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
state=${CHORDFS_STATE:-$here/.ring}
mnt=${CHORDFS_MOUNT:-/mnt/chord}
base=${CHORDFS_BASE_PORT:-7400}
replicas=${CHORDFS_REPLICAS:-3}
profile=${CHORDFS_PROFILE:-release}
bin=$here/target/$profile/chordfs

build() {
  if [ "$profile" = release ]; then
    (cd "$here" && cargo build --release --quiet)
  else
    (cd "$here" && cargo build --quiet)
  fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS CMD...: poll until CMD succeeds
  local t=$1; shift
  for _ in $(seq 1 $((t * 10))); do
    if "$@" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

settled() { # settled N: every node's successor list is as long as the ring allows
  python3 -c '
import json, sys, urllib.request
base, n = int(sys.argv[1]), int(sys.argv[2])
for k in range(n):
    with urllib.request.urlopen(f"http://127.0.0.1:{base + 80 + k}/status", timeout=2) as r:
        if len(json.load(r)["successors"]) < min(n - 1, 8):
            sys.exit(1)
' "$base" "$1"
}

start() {
  local n=${1:-3}
  build
  mkdir -p "$state"
  for k in $(seq 1 "$n"); do
    local port=$((base + k - 1)) http=$((base + 80 + k - 1)) dir=$state/node$k
    if alive "$dir.pid"; then
      echo "node$k already running (pid $(cat "$dir.pid"))"
      continue
    fi
    mkdir -p "$dir"
    rm -f "$dir/node.json"
    local join=()
    [ "$k" -gt 1 ] && join=(--join "127.0.0.1:$base")
    "$bin" node --listen "127.0.0.1:$port" --http "127.0.0.1:$http" --data "$dir" \
      --replicas "$replicas" "${join[@]}" >"$dir.log" 2>&1 &
    echo $! >"$dir.pid"
    if ! wait_for 20 test -s "$dir/node.json"; then
      echo "node$k did not start; see $dir.log" >&2
      tail -5 "$dir.log" >&2
      exit 1
    fi
  done
  # Mount only once every node's successor list is complete, so the first writes
  # already find R live replicas.
  if ! wait_for 30 settled "$n"; then
    echo "warning: the ring has not settled after 30 s; mounting anyway" >&2
  fi
  mkdir -p "$mnt"
  if ! grep -qs " $mnt fuse" /proc/mounts; then
    "$bin" mount --ring "127.0.0.1:$base" "$mnt"
  fi
  cat <<MSG
chordfs: $n-node ring on 127.0.0.1:$base..$((base + n - 1)), replicas $replicas
  mount:       $mnt          (try: cp some-file $mnt/ && ls -l $mnt)
  data dirs:   $state/node1 .. node$n   (logs: $state/nodeK.log)
  status page: http://127.0.0.1:$((base + 80))/   (JSON: /status /ring /chunks /files /metrics)
  CLI:         $bin status --ring 127.0.0.1:$base
  stop:        scripts/ring.sh stop
MSG
}

stop() {
  if grep -qs " $mnt fuse" /proc/mounts; then
    umount "$mnt" || umount -l "$mnt"
  fi
  # Stop in reverse order, each a graceful leave (SIGTERM), waiting for it to hand off.
  for pidfile in $(ls -r "$state"/node*.pid 2>/dev/null); do
    if alive "$pidfile"; then
      local pid
      pid=$(cat "$pidfile")
      kill -TERM "$pid"
      wait_for 60 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  echo "chordfs: ring stopped (data kept in $state; rm -rf it to start afresh)"
}

case "${1:-}" in
  start) start "${2:-3}" ;;
  stop) stop ;;
  status) "$bin" status --ring "127.0.0.1:$base" ;;
  *) echo "usage: $0 start [N] | stop | status" >&2; exit 2 ;;
esac
