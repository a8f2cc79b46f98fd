#!/usr/bin/env bash
# Runs xfstests (fstests, the kernel's filesystem test suite) against chordfs.
#
#   scripts/xfstests.sh [--quick] [TESTS...]
#   scripts/xfstests.sh --prepare      only install the packages, build, add the users
#
# With no TESTS it runs the whole `generic` group (hours); `--quick` runs the curated CI
# subset in tests/xfstests/quick; TESTS are names such as generic/001 (or 001), or
# check's own arguments (`-g quick`). Tests in tests/xfstests/exclude are never run.
# Prints the passed, failed and not-run tests, then a last line
# `xfstests: N passed, M failed`; exits non-zero on any failure.
#
# Needs root, /dev/fuse and Debian's packages (installed here when missing). It builds
# the xfstests snapshot once into a cache dir outside the checkout, starts two 3-node
# rings (TEST_DEV and SCRATCH_DEV are two separate chordfs filesystems, each ring's data
# on a sparse ext4 image of its own), installs /sbin/mount.fuse.chordfs (a copy of
# mount/mount.chordfs) so that `mount -t fuse.chordfs` works, and mounts with
# `nosubtype` so the kernel shows the type xfstests expects (FSTYP=fuse): see
# docs/xfstests.md. Every process and mount it starts is ended on exit.
#
# Environment:
#   CHORDFS_BIN        the chordfs binary (default: built here, debug profile)
#   XFSTESTS_TARBALL   the snapshot (default: shared/xfstests/xfstests-*.tar.gz beside
#                      the checkout, or /work/shared/xfstests)
#   XFSTESTS_CACHE     where the built suite is kept (default /var/cache/chordfs-xfstests,
#                      or $XDG_CACHE_HOME/chordfs-xfstests when that is set)
#   MOUNT_OPTS         extra -o options for both mounts
#   XFSTESTS_NODES     nodes per ring (default 3)
#   XFSTESTS_TEST_DISK, XFSTESTS_SCRATCH_DISK   size of each ring's image (8G, 10G)
#   XFSTESTS_TEST_TIMEOUT  seconds one test may run before it is killed and counted
#                      failed (default 900; 0: no limit)
#   XFSTESTS_DEADLINE  seconds the whole run may take (default 0: no limit); then check
#                      is stopped and what ran is reported
#   KEEP=1             keep the work dir (results, node and mount logs)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

quick=no
prepare=no
args=()
for a in "$@"; do
    case "$a" in
        --quick) quick=yes ;;
        --prepare) prepare=yes ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        [0-9][0-9][0-9]) args+=("generic/$a") ;;
        *) args+=("$a") ;;
    esac
done
if [ $quick = yes ]; then
    # shellcheck disable=SC2207
    args+=($(sed 's/#.*//' "$here/tests/xfstests/quick"))
fi
[ ${#args[@]} -gt 0 ] || args=(-g generic/auto)
exclude="$here/tests/xfstests/exclude"

[ "$(id -u)" = 0 ] || { echo "xfstests.sh: needs root (it mounts)" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "xfstests.sh: needs /dev/fuse" >&2; exit 1; }

# --- Debian packages: what the suite builds with and the tools its tests call. -------
# The tests skip ("not run") when a tool is missing, so every tool a generic test asks
# for is here: fio, dbench, quota, attr/acl, xfsprogs (xfs_io), duperemove, ...
packages=(build-essential autoconf automake libtool libtool-bin pkg-config gawk bc
    uuid-dev uuid-runtime xfslibs-dev xfsprogs libattr1-dev libacl1-dev libaio-dev
    liburing-dev libgdbm-dev libgdbm-compat-dev libcap-dev libssl-dev attr acl dbench fio
    psmisc quota e2fsprogs indent sqlite3 python3 file libcap2-bin xz-utils keyutils)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || {
        echo "xfstests.sh: install these packages first: ${missing[*]}" >&2
        exit 1
    }
    echo "xfstests.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- The suite, built once per snapshot (keyed by the tarball's hash). --------------
tarball="${XFSTESTS_TARBALL:-}"
if [ -z "$tarball" ]; then
    for t in "$here"/../shared/xfstests/xfstests-*.tar.gz /work/shared/xfstests/xfstests-*.tar.gz; do
        [ -f "$t" ] && { tarball=$t; break; }
    done
fi
[ -f "$tarball" ] || {
    echo "xfstests.sh: no xfstests snapshot; set XFSTESTS_TARBALL (see docs/xfstests.md)" >&2
    exit 1
}
if [ -n "${XFSTESTS_CACHE:-}" ]; then
    cache=$XFSTESTS_CACHE
elif [ -n "${XDG_CACHE_HOME:-}" ]; then
    cache=$XDG_CACHE_HOME/chordfs-xfstests
else
    cache=/var/cache/chordfs-xfstests
fi
key=$(sha256sum "$tarball" | cut -c1-16)
suite=$cache/$key/xfstests
mkdir -p "$cache"
(
    flock 9
    if [ ! -f "$suite/.chordfs-built" ]; then
        echo "xfstests.sh: building $(basename "$tarball") into $cache/$key (once)"
        rm -rf "${cache:?}/$key"
        mkdir -p "$cache/$key"
        tar -xzf "$tarball" -C "$cache/$key"
        make -C "$suite" -j"$(nproc)" >"$cache/$key/build.log" 2>&1 || {
            tail -n 30 "$cache/$key/build.log" >&2
            echo "xfstests.sh: the build failed; see $cache/$key/build.log" >&2
            exit 1
        }
        touch "$suite/.chordfs-built"
    fi
) 9>"$cache/lock"

# --- The users and groups the tests switch to (_require_user, _require_group). -------
getent group fsgqa >/dev/null || groupadd fsgqa
getent passwd fsgqa >/dev/null || useradd -m -g fsgqa fsgqa
getent passwd fsgqa2 >/dev/null || useradd -m fsgqa2
getent passwd 123456-fsgqa >/dev/null || useradd -m 123456-fsgqa 2>/dev/null ||
    useradd -m --badname 123456-fsgqa

[ $prepare = no ] || { echo "xfstests.sh: prepared $suite"; exit 0; }

# --- chordfs (debug profile: the one CI builds for every suite; see docs/xfstests.md).
if [ -n "${CHORDFS_BIN:-}" ]; then
    bin=$CHORDFS_BIN
else
    (cd "$here" && cargo build --quiet --bin chordfs)
    bin="${CARGO_TARGET_DIR:-$here/target}/debug/chordfs"
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
export CHORDFS_BIN=$bin

work=$(mktemp -d /tmp/chordfs-xfstests.XXXXXX)
chmod 0755 "$work" # the suite's unprivileged users must reach the mounts
# shellcheck source=SCRIPTDIR/lib-ring.sh
. "$here/scripts/lib-ring.sh"

# descendants PID: every process below PID (for kill).
descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1"); do
        echo "$c"
        descendants "$c"
    done
}

cleanup() {
    set +e
    cd /
    # On an early exit (Ctrl-C, a kill) check and its test still run: end them first,
    # as they hold the mounts.
    for p in ${watchdog_pid:-} ${check_pid:-}; do
        kill -0 "$p" 2>/dev/null || continue
        # shellcheck disable=SC2046
        kill -9 $(descendants "$p") "$p" 2>/dev/null
    done
    ring_unmount "$work/test"
    ring_unmount "$work/scratch"
    ring_stop "$work/test-ring"
    ring_stop "$work/scratch-ring"
    for r in test scratch; do
        if grep -q " $work/$r-ring " /proc/self/mountinfo; then
            for f in "$work/$r-ring"/node*.log; do
                [ -f "$f" ] && cp "$f" "$work/$r-$(basename "$f")"
            done
            umount "$work/$r-ring" 2>/dev/null || umount -l "$work/$r-ring"
        fi
        rm -f "$work/$r-ring.img"
    done
    # The mounts' logs (chordfs mount writes them to /tmp, named after the mountpoint).
    for m in test scratch; do
        log="/tmp/chordfs-mount.$(echo "$work/$m" | tr -c 'A-Za-z0-9.\n-' _).log"
        [ -f "$log" ] && mv "$log" "$work/mount-$m.log"
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Two rings: TEST_DEV and SCRATCH_DEV, each a filesystem of its own. -------------
# Each ring keeps its data on a filesystem image of its own (sparse, ext4 on a loop
# device), so a test that writes until ENOSPC fills that image, not the machine's disk.
nodes=${XFSTESTS_NODES:-3}
mkdir -p "$work/test-ring" "$work/scratch-ring" "$work/test" "$work/scratch"
for r in test:${XFSTESTS_TEST_DISK:-8G} scratch:${XFSTESTS_SCRATCH_DISK:-10G}; do
    img="$work/${r%%:*}-ring.img"
    truncate -s "${r#*:}" "$img"
    mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 "$img"
    # discard: the chunks a sweep frees go back to the machine's disk at once.
    mount -o loop,discard "$img" "$work/${r%%:*}-ring"
done
# The rings never change members during a run: the daemon's usual repair interval
# (5 s) spares the CPU a pass every half second over everything the tests left behind.
export RING_INTERVALS="--stabilize-ms 100 --fix-fingers-ms 200"
# The test device is never emptied and tests write and remove gigabytes: a sweep a
# minute with a grace just over the mount's 5-minute write-back limit (the shortest
# the node allows safely) frees what they leave before the ring's image fills.
export RING_NODE_ARGS="--gc-interval-secs 60 --gc-grace-secs 400"
ring_start "$work/test-ring" "$nodes"
ring_start "$work/scratch-ring" "$nodes"
disown -a # ring_stop ends them; no job notices from bash
test_dev=$(ring_addr "$work/test-ring")
scratch_dev=$(ring_addr "$work/scratch-ring")

# mount(8) runs /sbin/mount.fuse.chordfs for `-t fuse.chordfs`, as xfstests mounts
# (FSTYP=fuse, FUSE_SUBTYP=.chordfs): it is mount/mount.chordfs under that name, which
# finds the binary through $CHORDFS_BIN (exported above; check passes it on). It stays
# installed, as a mount helper does, and every run installs the same file.
helper=/sbin/mount.fuse.chordfs
cmp -s "$here/mount/mount.chordfs" "$helper" || install -m 0755 "$here/mount/mount.chordfs" "$helper"

opts="-o nosubtype${MOUNT_OPTS:+,$MOUNT_OPTS}"
# dev and suid, as a local filesystem mounted by root has them (chordfs mounts nodev,
# nosuid unless asked), for the tests of device nodes and set-id bits; mount(8) drops
# them from -o before it calls the helper, so they go through the helper's variable.
export CHORDFS_MOUNT_OPTIONS=dev,suid
cat >"$work/local.config" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=.chordfs
export TEST_DEV=$test_dev
export TEST_DIR=$work/test
export SCRATCH_DEV=$scratch_dev
export SCRATCH_MNT=$work/scratch
export TEST_FS_MOUNT_OPTS="$opts"
export MOUNT_OPTIONS="$opts"
export RESULT_BASE=$work/results
EOF

# watchdog CHECK_PID LIMIT DEADLINE: kills the test check is running (with everything
# it started) once it has run LIMIT seconds; check then records it as failed and goes
# on with the next test (the names go to $work/timed-out). After DEADLINE seconds in
# all (0: none) it ends check itself, and the run reports what it got through.
watchdog() {
    local pid secs cmd begin
    begin=$(date +%s)
    while kill -0 "$1" 2>/dev/null; do
        sleep 10
        if [ "$3" -gt 0 ] && [ $(($(date +%s) - begin)) -ge "$3" ]; then
            touch "$work/deadline"
            # shellcheck disable=SC2046
            kill -9 $(descendants "$1") "$1" 2>/dev/null
            return
        fi
        while read -r pid secs cmd; do
            # check runs each test as `bash SUITE/tests/generic/NNN`.
            [[ $cmd =~ ^/bin/bash\ .*/tests/([a-z0-9]+/[0-9]+)$ ]] || continue
            [ "$secs" -ge "$2" ] || continue
            echo "${BASH_REMATCH[1]}" >>"$work/timed-out"
            # shellcheck disable=SC2046
            kill -9 "$pid" $(descendants "$pid") 2>/dev/null
        done < <(ps -o pid=,etimes=,args= --ppid "$1")
    done
}

limit=${XFSTESTS_TEST_TIMEOUT:-900}
deadline=${XFSTESTS_DEADLINE:-0}
echo "xfstests.sh: TEST_DEV=$test_dev SCRATCH_DEV=$scratch_dev (rings of $nodes nodes)"
started=$(date +%s)
rc=0
cd "$suite"
HOST_OPTIONS="$work/local.config" ./check -E "$exclude" "${args[@]}" \
    >"$work/check.out" 2>&1 &
check_pid=$!
if [ "$limit" -gt 0 ] || [ "$deadline" -gt 0 ]; then
    [ "$limit" -gt 0 ] || limit=999999999
    watchdog "$check_pid" "$limit" "$deadline" &
    watchdog_pid=$!
fi
wait "$check_pid" || rc=$?
[ -z "${watchdog_pid:-}" ] || { kill "$watchdog_pid" 2>/dev/null; wait "$watchdog_pid" 2>/dev/null; } || true
cd /
elapsed=$(($(date +%s) - started))

# --- The outcome, read from check's own lines. --------------------------------------
set +e # from here on a failing grep or diff is an answer, not an error
out="$work/check.out"
# One line per test: `generic/001 12s` (passed, with check's time), `... [not run] WHY`,
# `... [expunged]`, anything else failed (output mismatch, exit status, dmesg, or cut
# off by the watchdog or the deadline). Read this way a cut-short run still counts.
classify() {
    awk -v want="$1" '$1 ~ /^[a-z]+\/[0-9]+$/ {
        if ($0 ~ /\[not run\]/) k = "notrun"
        else if ($0 ~ /\[expunged\]/) k = "excluded"
        else if ($0 ~ /^[^ ]+ +([0-9]+s \.\.\. +)?[0-9]+s$/) k = "passed"
        else k = "failed"
        if (k == want) printf "%s ", $1
    }' "$out"
}
passed=$(classify passed)
failures=$(classify failed)
notrun=$(classify notrun)
words() { echo "$1" | wc -w; }
cut=""
if [ -f "$work/deadline" ]; then
    # The test the deadline cut short is neither passed nor failed.
    cut=$(awk '$1 ~ /^[a-z]+\/[0-9]+$/ { t = $1 } END { print t }' "$out")
    failures=$(echo " $failures " | sed "s| $cut | |")
fi
n_passed=$(words "$passed")
n_failed=$(words "$failures")
n_notrun=$(words "$notrun")
n_excluded=$(words "$(classify excluded)")
for t in $failures; do
    echo "--- $t"
    bad="$work/results/$t.out.bad"
    [ -f "$bad" ] && diff -u "$suite/tests/$t.out" "$bad" | head -n 40
    full="$work/results/$t.full"
    [ -f "$full" ] && [ ! -f "$bad" ] && tail -n 10 "$full"
done
echo "not run ($n_notrun):"
grep '\[not run\]' "$out" | sed 's/^/  /' || true
echo "passed ($n_passed): $passed"
echo "failed ($n_failed): $failures"
[ ! -f "$work/timed-out" ] || echo "timed out (killed after $limit s): $(sort -u "$work/timed-out" | tr '\n' ' ')"
[ -z "$cut" ] || echo "deadline reached after $deadline s: stopped in $cut (not counted); the tests after it did not run"
echo "excluded: $n_excluded; time: $((elapsed / 60)) min $((elapsed % 60)) s"
if [ $((n_passed + n_failed + n_notrun)) -eq 0 ] && [ "$rc" -ne 0 ]; then
    tail -n 30 "$out"
    n_failed=$((n_failed + 1))
fi
echo "xfstests: $n_passed passed, $n_failed failed"
[ "$n_failed" -eq 0 ]
