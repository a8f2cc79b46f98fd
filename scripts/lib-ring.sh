# shellcheck shell=sh disable=SC2154
# Shell helpers for the suite runners: start and stop a local ring, unmount.
# Used as `. scripts/lib-ring.sh`; expects $bin (the chordfs binary).

# ring_start DIR N: N nodes with data under DIR/nodeI, waits for each node.json.
# $RING_NODE_ARGS: extra `chordfs node` arguments for every node.
# $RING_INTERVALS: the maintenance intervals (default: short ones, for quick runs).
ring_start() {
    dir=$1; n=$2; i=0; join=""
    while [ "$i" -lt "$n" ]; do
        mkdir -p "$dir/node$i"
        # shellcheck disable=SC2086
        "$bin" node --listen 127.0.0.1:0 --http 127.0.0.1:0 --data "$dir/node$i" \
            ${RING_INTERVALS---stabilize-ms 100 --repair-ms 500 --fix-fingers-ms 200} \
            $join ${RING_NODE_ARGS:-} \
            >"$dir/node$i.log" 2>&1 &
        echo $! >"$dir/node$i.pid"
        tries=0
        while [ ! -s "$dir/node$i/node.json" ]; do
            tries=$((tries + 1))
            [ "$tries" -lt 500 ] || { echo "node $i did not start" >&2; return 1; }
            sleep 0.02
        done
        [ -n "$join" ] || join="--join $(ring_addr "$dir")"
        i=$((i + 1))
    done
    sleep 2 # let stabilize link the ring
}

ring_addr() {
    sed -n 's/.*"addr": *"\([^"]*\)".*/\1/p' "$1/node0/node.json"
}

# ring_stop DIR: kills the nodes started by ring_start (by pid).
ring_stop() {
    for p in "$1"/node*.pid; do
        if [ -f "$p" ]; then kill "$(cat "$p")" 2>/dev/null || true; fi
    done
    sleep 0.5
    for p in "$1"/node*.pid; do
        if [ -f "$p" ]; then kill -9 "$(cat "$p")" 2>/dev/null || true; fi
    done
}

ring_unmount() {
    if grep -q " $1 " /proc/self/mountinfo; then
        umount "$1" 2>/dev/null || umount -l "$1"
    fi
}
