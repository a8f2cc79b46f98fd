#!/bin/sh
# Runs fsx (file system exerciser) against a chordfs mount of a fresh 3-node ring.
#
#   scripts/fsx.sh [SEEDS] [OPS]      default: 5 seeds of 20000 operations each (100,000)
#
# Needs root and `cargo install --locked fsx`. Each seed runs on its own file with
# reads, writes, mmap reads and writes, truncates, fsync, close/reopen, fallocate,
# punch hole, sendfile and copy_file_range (server-side: shared chunks), on 64 KiB
# chunks so that chunk edges are crossed often.
# Environment: CHORDFS_BIN, MOUNT_OPTS (extra -o options), KEEP=1 to keep the work dir.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin="${CHORDFS_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug/chordfs}"
fsx="${FSX:-$(command -v fsx || echo "$HOME/.cargo/bin/fsx")}"
seeds="${1:-5}"
ops="${2:-20000}"
work=$(mktemp -d /tmp/chordfs-fsx.XXXXXX)
. "$here/scripts/lib-ring.sh"

cleanup() {
    ring_unmount "$work/mnt"
    ring_stop "$work"
    [ "${KEEP:-0}" = 1 ] && echo "work dir kept: $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT INT TERM

ring_start "$work" 3
mkdir -p "$work/mnt" "$work/artifacts"
CHORDFS_MOUNT_LOG="$work/mount.log" "$bin" mount --ring "$(ring_addr "$work")" "$work/mnt" \
    -o "chunk_size=65536${MOUNT_OPTS:+,$MOUNT_OPTS}"
cat > "$work/fsx.toml" <<'TOML'
flen = 4194304
[opsize]
max = 262144
min = 0
align = 1
[weights]
close_open = 1
read = 10
write = 10
mapread = 5
mapwrite = 5
invalidate = 1
truncate = 3
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
sendfile = 1
copy_file_range = 1
TOML
failed=0
seed=1
while [ "$seed" -le "$seeds" ]; do
    if "$fsx" -f "$work/fsx.toml" -N "$ops" -S "$seed" -P "$work/artifacts" -q \
        "$work/mnt/fsx.$seed" >"$work/fsx.$seed.out" 2>&1; then
        echo "fsx seed $seed: $ops operations ok"
    else
        echo "fsx seed $seed: FAILED"
        tail -n 40 "$work/fsx.$seed.out"
        failed=$((failed + 1))
    fi
    seed=$((seed + 1))
done
echo "fsx: $((seeds - failed)) of $seeds seeds passed"
[ "$failed" -eq 0 ]
