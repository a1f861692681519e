#!/usr/bin/env bash
# What etcd spends on an idle cluster (BENCHMARKS.md, "Idle, eighth run"): starts
# `dpctl local up --hosts N` from a release build, waits a minute after it is up, then for each of
# W windows of 60 s prints etcd's CPU (utime + stime from /proc) and the range reads and lease
# keep-alives it received a second (its own /metrics). Extra arguments go to `dpctl local up`.
#   scripts/idle-etcd.sh 500 3 [--session-ttl 30s]
set -euo pipefail
hosts=${1:-500}
windows=${2:-3}
shift $(($# < 2 ? $# : 2))
bin=${DATAPATH_BIN:-$(dirname "$0")/../target/release}
dir=$(mktemp -d /tmp/idle-etcd.XXXX)
ulimit -n "$(ulimit -Hn)"
"$bin/dpctl" local up --hosts "$hosts" --dir "$dir/c" "$@" >"$dir/up.log" 2>&1 &
up=$!
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 600); do grep -q "local cluster up" "$dir/up.log" && break; sleep 1; done
grep -q "local cluster up" "$dir/up.log" || { echo "the cluster did not come up" >&2; exit 1; }
set -a; . "$dir/c/cluster.env"; set +a
etcd=""
for p in $(pgrep -x etcd); do grep -q "$dir" "/proc/$p/cmdline" && etcd=$p; done
ticks() { awk '{print $14 + $15}' "/proc/$etcd/stat"; }
received() {
  curl -s --cacert "$DATAPATH_TLS_CA" --cert "$DATAPATH_TLS_CERT" --key "$DATAPATH_TLS_KEY" \
    "${DATAPATH_ETCD_ENDPOINTS%%,*}/metrics" |
    awk -v m="$1" '/^grpc_server_msg_received_total/ && $0 ~ "grpc_method=\""m"\"" {s += $2} END {print s + 0}'
}
hz=$(getconf CLK_TCK)
sleep 60
for w in $(seq "$windows"); do
  t0=$(ticks); r0=$(received Range); k0=$(received LeaseKeepAlive)
  sleep 60
  t1=$(ticks); r1=$(received Range); k1=$(received LeaseKeepAlive)
  awk -v w="$w" -v t=$((t1 - t0)) -v hz="$hz" -v r=$((r1 - r0)) -v k=$((k1 - k0)) \
    'BEGIN {printf "window %d: etcd %.1f %% of a core, %.1f range reads/s, %.1f keep-alives/s\n", w, 100 * t / hz / 60, r / 60, k / 60}'
done
