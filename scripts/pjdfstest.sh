#!/bin/sh
# Runs pjdfstest (POSIX conformance) against a chordfs mount of a fresh 3-node ring.
#
#   scripts/pjdfstest.sh [PJDFSTEST ARGS...]     e.g. scripts/pjdfstest.sh chmod
#
# Needs root, `cargo install --locked pjdfstest`, users nobody:nogroup and daemon:daemon.
# Environment: CHORDFS_BIN (default target/debug/chordfs), MOUNT_OPTS (extra -o options),
# KEEP=1 to leave the work dir (node logs, mount log) behind.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin="${CHORDFS_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug/chordfs}"
pjd="${PJDFSTEST:-$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")}"
work=$(mktemp -d /tmp/chordfs-pjd.XXXXXX)
chmod 0755 "$work" # the suite's unprivileged users must reach the mount
. "$here/scripts/lib-ring.sh"

cleanup() {
    ring_unmount "$work/mnt"
    ring_stop "$work"
    [ "${KEEP:-0}" = 1 ] && echo "work dir kept: $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT INT TERM

ring_start "$work" 3
mkdir -p "$work/mnt"
CHORDFS_MOUNT_LOG="$work/mount.log" "$bin" mount --ring "$(ring_addr "$work")" "$work/mnt" \
    -o "allow_other${MOUNT_OPTS:+,$MOUNT_OPTS}"
mkdir -p "$work/mnt/pjd"
chmod 0777 "$work/mnt/pjd"
cat > "$work/pjdfstest.toml" <<'TOML'
[features]
utime_now = {}
utimensat = {}
rename_ctime = {}
posix_fallocate = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["daemon", "daemon"],
]
TOML
cd "$work/mnt/pjd"
"$pjd" -c "$work/pjdfstest.toml" -p "$work/mnt/pjd" "$@" 2>&1 | tee "$work/pjdfstest.out"
