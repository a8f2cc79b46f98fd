#!/bin/sh
# Times a server-side copy (coreutils `cp`, which uses copy_file_range) of a file within
# a chordfs mount against a byte copy of the same file (`dd`, which reads and writes
# every byte; `cat` uses copy_file_range too in coreutils 9), on a fresh 3-node ring;
# checks both copies with `cmp`.
#
#   scripts/copybench.sh [SIZE_MIB] [REPLICAS]     default: 1024 MiB, R=3
#
# Needs root. The ring's data dirs hold SIZE_MIB x REPLICAS of chunks (the byte copy
# adds nothing: its chunks are the source's); check `df` first. Environment:
# CHORDFS_BIN (default the debug build), CHORDFS_BENCH_DIR (where the ring's data goes).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin="${CHORDFS_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug/chordfs}"
mib="${1:-1024}"
replicas="${2:-3}"
work=$(mktemp -d "${CHORDFS_BENCH_DIR:-/tmp}/chordfs-copybench.XXXXXX")
. "$here/scripts/lib-ring.sh"

cleanup() {
    ring_unmount "$work/mnt"
    ring_stop "$work"
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

seconds() { date +%s.%N; }
took() { echo "$(seconds) - $1" | bc; }

RING_NODE_ARGS="--replicas $replicas" ring_start "$work" 3
mkdir -p "$work/mnt"
CHORDFS_MOUNT_LOG="$work/mount.log" "$bin" mount --ring "$(ring_addr "$work")" "$work/mnt"
m="$work/mnt"
t=$(seconds)
head -c "$((mib * 1024 * 1024))" /dev/urandom | dd of="$m/src" bs=1M iflag=fullblock conv=fsync status=none
echo "write ${mib} MiB in: $(took "$t") s"
t=$(seconds)
cp "$m/src" "$m/cp"
echo "cp (copy_file_range, shared chunks): $(took "$t") s"
t=$(seconds)
dd if="$m/src" of="$m/dd" bs=1M status=none
echo "dd bs=1M (byte copy): $(took "$t") s"
t=$(seconds)
cat "$m/src" >"$m/cat"
echo "cat > (copy_file_range in coreutils 9): $(took "$t") s"
cmp "$m/src" "$m/cp"
cmp "$m/src" "$m/dd"
cmp "$m/src" "$m/cat"
echo "every copy equals the source"
