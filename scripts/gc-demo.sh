#!/bin/sh
# Space comes back: starts its own 3-node ring (R=3) and a mount in a temp dir, writes
# SIZE_MIB of files (default 1024) through the mount, removes them, runs `chordfs gc`,
# and prints df on the mount and the nodes' stored bytes (sidecar /status) at each step.
#
#   scripts/gc-demo.sh [SIZE_MIB] [FILES]
#
# Uses target/release/chordfs when built, else target/debug (CHORDFS_BIN overrides).
# Needs root (FUSE). Everything it starts is stopped and removed on exit.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
size_mib=${1:-1024}
files=${2:-16}
target=${CARGO_TARGET_DIR:-$here/target}
bin=${CHORDFS_BIN:-}
[ -n "$bin" ] || { [ -x "$target/release/chordfs" ] && bin=$target/release/chordfs; } || true
[ -n "$bin" ] || bin=$target/debug/chordfs
. "$here/scripts/lib-ring.sh"

work=$(mktemp -d /tmp/chordfs-gc-demo.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
    ring_unmount "$mnt" 2>/dev/null || true
    ring_stop "$work"
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# A grace of 5 s so the demo need not wait an hour; the periodic sweep is off, so the
# space comes back when `chordfs gc` runs.
RING_NODE_ARGS="--gc-interval-secs 0 --gc-grace-secs 5" ring_start "$work" 3
ring=$(ring_addr "$work")
CHORDFS_MOUNT_LOG=$work/mount.log "$bin" mount --ring "$ring" "$mnt"

report() {
    used=$(df -B1M --output=used "$mnt" | tail -1 | tr -d ' ')
    total=0
    for j in "$work"/node*/node.json; do
        http=$(sed -n 's/.*"http": *"\([^"]*\)".*/\1/p' "$j")
        b=$(curl -s "http://$http/status" | sed -n 's/.*"bytes":\([0-9]*\).*/\1/p')
        total=$((total + ${b:-0}))
    done
    du=$(du -sm "$work"/node0 "$work"/node1 "$work"/node2 | awk '{s += $1} END {print s}')
    printf '%-28s df used %6s MiB   sidecar bytes (3 nodes) %6s MiB   du of data dirs %6s MiB\n' \
        "$1" "$used" $((total / 1048576)) "$du"
}

report "empty ring:"
per=$((size_mib / files))
i=0
while [ "$i" -lt "$files" ]; do
    head -c $((per * 1048576)) /dev/urandom >"$mnt/f$i"
    i=$((i + 1))
done
sync "$mnt"/f* 2>/dev/null || true
report "after writing ${size_mib} MiB:"
rm -f "$mnt"/f*
report "after rm (before gc):"
sleep 6 # outlive the 5 s grace
start=$(date +%s.%N)
"$bin" gc --ring "$ring"
end=$(date +%s.%N)
report "after gc:"
echo "gc took $(echo "$end - $start" | bc) s"
