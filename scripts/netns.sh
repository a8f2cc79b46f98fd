#!/usr/bin/env bash
# Real hosts: one chordfs node per network namespace, joined by veth links to a Linux
# bridge in a namespace of its own, a client in another; then
#   1. cut one node's link (its veth on the bridge goes down), and the client's own link,
#      then bring them back;
#   2. delay and loss on two nodes' and the client's links while putting and getting
#      (tc netem when the kernel has it; else tbf for delay and iptables/nft random drops
#      for loss);
#   3. partition the ring in two (two nodes moved onto a second bridge), write on the
#      majority side, visit the minority side with the client, heal.
# After each: every acknowledged put reads back byte-identical, the ring is one cycle
# again (chordfs status --json), and every client call returned (an error is fine, a
# hang is not). Prints what it did and a summary; exits non-zero on any failure.
# Needs root, iproute2 (ip, tc) and, for loss without netem, iptables or nft. All
# traffic stays inside the namespaces it makes; a trap removes them and the nodes.
#
#   scripts/netns.sh [NODES]        (default 5, at least 4; R=3)
# Environment: CHORDFS_BIN (default: target/debug/chordfs, built if missing).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
nodes=${1:-5}
[ "$nodes" -ge 4 ] || { echo "need at least 4 nodes" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "netns.sh: needs root (network namespaces)" >&2; exit 2; }
command -v ip >/dev/null && command -v tc >/dev/null ||
  { echo "netns.sh: needs iproute2 (ip, tc)" >&2; exit 2; }
bin=${CHORDFS_BIN:-${CARGO_TARGET_DIR:-$here/target}/debug/chordfs}
[ -x "$bin" ] || (cd "$here" && cargo build --quiet --bin chordfs)

tag=$(printf '%04x%04x' $$ $RANDOM)
br=cfs-br-$tag
cns=cfs-c-$tag
work=$(mktemp -d /tmp/chordfs-netns.XXXXXX)
secret=$work/secret
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secret"
port=7400
hang=45 # seconds after which a client call counts as hung
declare -a pids made
acked=()
fails=0
summary=()

nip() { echo "10.77.0.$((10 + $1))"; }
naddr() { echo "$(nip "$1"):$port"; }
nns() { echo "cfs-n$1-$tag"; }
say() { echo "== $*"; }
note() { echo "   $*"; summary+=("$*"); }
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

cleanup() {
  set +e
  exec 2>/dev/null # no "Killed" job notices for the nodes
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  for ((k = ${#made[@]} - 1; k >= 0; k--)); do ip netns del "${made[k]}" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkns() { ip netns add "$1"; made+=("$1"); ip -n "$1" link set lo up; }
host() { # host NS PORT IP
  mkns "$1"
  ip -n "$br" link add "$2" type veth peer name eth0 netns "$1"
  ip -n "$br" link set "$2" master br0 up
  ip -n "$1" addr add "$3/24" dev eth0
  ip -n "$1" link set eth0 up
}

# cli NS SEED ARGS...: chordfs in NS, bounded by $hang; sets rc (124: hung) and took (ms).
cli() {
  local ns=$1 seed=$2 t0
  shift 2
  t0=$(date +%s%N)
  rc=0
  timeout -s KILL "$hang" ip netns exec "$ns" "$bin" "$@" --ring "$seed" \
    --secret-file "$secret" >"$work/out" 2>"$work/err" || rc=$?
  took=$((($(date +%s%N) - t0) / 1000000))
  [ $rc -ne 137 ] || rc=124
}

# ring_ok NS SEED ADDR...: status --json through SEED shows exactly these nodes as one cycle.
ring_ok() {
  local ns=$1 seed=$2
  shift 2
  cli "$ns" "$seed" status --json
  [ $rc -eq 0 ] || return 1
  python3 - "$work/out" "$@" <<'EOF'
import json, sys
rows = sorted(json.load(open(sys.argv[1])), key=lambda r: r["id"])
if sorted(r["addr"] for r in rows) != sorted(sys.argv[2:]): sys.exit(1)
n = len(rows)
for k, r in enumerate(rows):
    if not r["reachable"]: sys.exit(1)
    if n > 1 and (r["successor"] != rows[(k + 1) % n]["id"] or r["predecessor"] != rows[k - 1]["id"]):
        sys.exit(1)
EOF
}

# wait_ring NS SEED NODE...: waits (60 s at most) for ring_ok; prints how long it took.
wait_ring() {
  local ns=$1 seed=$2 addrs=() t0 i
  shift 2
  for i in "$@"; do addrs+=("$(naddr "$i")"); done
  t0=$(date +%s)
  for _ in $(seq 240); do
    if ring_ok "$ns" "$seed" "${addrs[@]}"; then
      waited=$(($(date +%s) - t0))
      return 0
    fi
    [ $(($(date +%s) - t0)) -lt 60 ] || break
    sleep 0.25
  done
  fail "ring of [$*] not formed within 60 s"
  waited=-1
  return 1
}

# put NS SEED PATH BYTES [TRIES]: puts fresh random bytes until acknowledged.
put() {
  local ns=$1 seed=$2 path=$3 len=$4 tries=${5:-1} local
  local=$work/f$(echo "$path" | tr / _)
  head -c "$len" /dev/urandom >"$local"
  for ((t = 1; t <= tries; t++)); do
    cli "$ns" "$seed" put "$local" "$path"
    if [ $rc -eq 0 ]; then
      acked+=("$path")
      return 0
    fi
    [ $rc -ne 124 ] || fail "put $path hung ($hang s)"
    echo "   put $path: error after ${took} ms: $(head -n 1 "$work/err")"
    sleep 0.5
  done
  return 1
}

# verify SEED: every acknowledged file reads back byte-identical through SEED.
verify() {
  local p bad=0
  for p in "${acked[@]}"; do
    cli "$cns" "$1" get "$p" "$work/back"
    if [ $rc -ne 0 ] || ! cmp -s "$work/back" "$work/f$(echo "$p" | tr / _)"; then
      fail "acknowledged $p does not read back intact via $1 (rc $rc)"
      bad=$((bad + 1))
    fi
  done
  note "${#acked[@]} acknowledged files checked via $1: $(( ${#acked[@]} - bad )) intact"
}

impair() { # impair NS KIND
  local x=(ip netns exec "$1")
  case $2 in
    netem) "${x[@]}" tc qdisc add dev eth0 root netem delay 40ms 10ms loss 5% ;;
    *) "${x[@]}" tc qdisc add dev eth0 root tbf rate 8mbit burst 16kb latency 150ms ;;
  esac
  case $2 in
    iptables)
      for c in INPUT OUTPUT; do
        "${x[@]}" iptables -A $c -m statistic --mode random --probability 0.05 -j DROP
      done ;;
    nft)
      "${x[@]}" nft add table inet cfsloss
      for c in input output; do
        "${x[@]}" nft add chain inet cfsloss $c "{ type filter hook $c priority 0; }"
        "${x[@]}" nft add rule inet cfsloss $c numgen random mod 100 '<' 5 drop
      done ;;
  esac
}

unimpair() { # unimpair NS KIND
  local x=(ip netns exec "$1")
  "${x[@]}" tc qdisc del dev eth0 root
  case $2 in
    iptables) "${x[@]}" iptables -F INPUT; "${x[@]}" iptables -F OUTPUT ;;
    nft) "${x[@]}" nft delete table inet cfsloss ;;
  esac
}

say "building namespaces (tag $tag): bridge $br, $nodes nodes, client $cns"
mkns "$br"
for b in br0 br1; do ip -n "$br" link add $b type bridge; ip -n "$br" link set $b up; done
for ((i = 0; i < nodes; i++)); do host "$(nns $i)" "vn$i" "$(nip $i)"; done
host "$cns" vc 10.77.0.100

say "starting $nodes nodes (R=3, with a cluster secret), logs in $work"
all=()
for ((i = 0; i < nodes; i++)); do
  join=()
  [ $i -eq 0 ] || join=(--join "$(naddr 0)")
  mkdir -p "$work/n$i"
  CHORDFS_LOG=warn,chordfs=info ip netns exec "$(nns $i)" "$bin" node \
    --listen "$(naddr $i)" --data "$work/n$i" --secret-file "$secret" --replicas 3 \
    --http 127.0.0.1:7480 --stabilize-ms 100 --fix-fingers-ms 200 \
    --check-predecessor-ms 200 --repair-ms 500 --rpc-timeout-ms 1000 "${join[@]}" \
    </dev/null >/dev/null 2>"$work/n$i.log" &
  pids+=($!)
  all+=("$i")
  for _ in $(seq 150); do [ -s "$work/n$i/node.json" ] && break; sleep 0.2; done
  [ -s "$work/n$i/node.json" ] || { fail "node $i did not start"; cat "$work/n$i.log"; exit 1; }
done
s0=$(naddr 0)
wait_ring "$cns" "$s0" "${all[@]}" && note "ring of $nodes formed in ${waited}s"
for k in 0 1 2; do put "$cns" "$s0" /before/f$k $((k * 700000 + 10)) 3 || fail "put /before/f$k"; done

say "1. cut node 3's link"
ip -n "$br" link set vn3 down
rest=()
for i in "${all[@]}"; do [ "$i" -eq 3 ] || rest+=("$i"); done
wait_ring "$cns" "$s0" "${rest[@]}" && note "1. node 3 cut: ring of ${#rest[@]} in ${waited}s"
for k in 0 1; do put "$cns" "$s0" /cut/f$k 400000 3 || fail "put /cut/f$k"; done
verify "$s0"
ip -n "$br" link set vc down
cli "$cns" "$s0" get /before/f1 /dev/null
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "get with the client's link cut: rc $rc"
note "1. client's link cut: get exited $rc after ${took} ms: $(head -n 1 "$work/err")"
if put "$cns" "$s0" /cut/unreachable 1000; then fail "put acknowledged without a link"; fi
note "1. client's link cut: put exited $rc after ${took} ms"
ip -n "$br" link set vc up
ip -n "$br" link set vn3 up
wait_ring "$cns" "$s0" "${all[@]}" && note "1. node 3 back: ring of $nodes in ${waited}s"
verify "$(naddr 3)"

say "2. delay and loss on node 1, node $((nodes - 1)) and the client"
if ip netns exec "$cns" tc qdisc add dev eth0 root netem delay 1ms 2>/dev/null; then
  ip netns exec "$cns" tc qdisc del dev eth0 root
  kind=netem
  note "2. netem: delay 40ms±10ms, loss 5%"
else
  if command -v iptables >/dev/null; then kind=iptables
  elif command -v nft >/dev/null; then kind=nft
  else kind=tbf; fi
  if [ $kind = tbf ]; then
    note "2. no netem, iptables or nft: delay emulated by tbf (8 Mbit/s, 150 ms queue); no loss"
  else
    note "2. no sch_netem: delay emulated by tbf (8 Mbit/s, 150 ms queue), loss 5% by $kind random drops"
  fi
fi
slow=("$(nns 1)" "$(nns $((nodes - 1)))" "$cns")
for ns in "${slow[@]}"; do impair "$ns" $kind; done
t0=$(date +%s)
for k in 0 1 2; do put "$cns" "$s0" /lossy/f$k 700000 5 || fail "put /lossy/f$k"; done
verify "$s0"
note "2. puts and gets over impaired links took $(($(date +%s) - t0))s"
for ns in "${slow[@]}"; do unimpair "$ns" $kind; done
wait_ring "$cns" "$s0" "${all[@]}" && note "2. impairment removed: ring of $nodes in ${waited}s"

say "3. partition: nodes 0..$((nodes - 3)) | $((nodes - 2)) $((nodes - 1))"
side_a=()
for ((i = 0; i < nodes - 2; i++)); do side_a+=("$i"); done
side_b=($((nodes - 2)) $((nodes - 1)))
sb=$(naddr "${side_b[0]}")
for i in "${side_b[@]}"; do ip -n "$br" link set "vn$i" master br1; done
wait_ring "$cns" "$s0" "${side_a[@]}" && note "3. majority side: ring of ${#side_a[@]} in ${waited}s"
wait_ring "$(nns "${side_b[0]}")" "$sb" "${side_b[@]}" &&
  note "3. minority side: ring of ${#side_b[@]} in ${waited}s"
for k in 0 1 2; do put "$cns" "$s0" /part/a$k 500000 5 || fail "put /part/a$k"; done
ip -n "$br" link set vc master br1
ok=0 refused=0 slowest=0
for p in "${acked[@]}"; do
  cli "$cns" "$sb" get "$p" "$work/back"
  [ "$took" -le "$slowest" ] || slowest=$took
  if [ $rc -eq 124 ]; then fail "get $p on the minority side hung"
  elif [ $rc -eq 0 ]; then
    cmp -s "$work/back" "$work/f$(echo "$p" | tr / _)" && ok=$((ok + 1)) ||
      fail "get $p on the minority side returned wrong bytes"
  else refused=$((refused + 1)); fi
done
# Minority writes should be refused; when one is acknowledged anyway (a known open bug,
# README "Real hosts"), it is kept apart and reported after the heal, not failed on.
n_before=${#acked[@]}
for k in 0 1; do put "$cns" "$sb" /part/b$k 200000 || true; done
minority=("${acked[@]:n_before}")
acked=("${acked[@]:0:n_before}")
note "3. client on the minority side: $ok read intact, $refused refused with an error, ${#minority[@]}/2 puts acknowledged, slowest get ${slowest} ms"
ip -n "$br" link set vc master br0
for i in "${side_b[@]}"; do ip -n "$br" link set "vn$i" master br0; done
wait_ring "$cns" "$s0" "${all[@]}" && note "3. partition healed: ring of $nodes in ${waited}s"
verify "$s0"
verify "$sb"
for p in "${minority[@]}"; do
  cli "$cns" "$s0" get "$p" "$work/back"
  if [ $rc -eq 0 ] && cmp -s "$work/back" "$work/f$(echo "$p" | tr / _)"; then
    note "3. $p, acknowledged on the minority side, survived the heal"
  else
    fail "3. $p, acknowledged on the minority side, is gone after the heal"
  fi
done

echo
echo "== summary"
printf '   %s\n' "${summary[@]}"
if [ $fails -eq 0 ]; then
  echo "netns: all scenarios passed; ${#acked[@]} acknowledged files, none lost"
else
  echo "netns: $fails failures"
  for ((i = 0; i < nodes; i++)); do echo "--- node $i"; tail -n 15 "$work/n$i.log"; done
  exit 1
fi
