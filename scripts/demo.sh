#!/usr/bin/env bash
# The main job: installs prerequisites when missing, builds datapath, starts a local cluster (etcd, the
# job-tracker, three host-workers), creates two storage domains and a 2 GiB qcow2 disk holding 512 MiB
# of random data, copies it to the other domain on the *third* host with a live progress bar, and
# verifies the copy with qemu-img compare. DATAPATH_DEMO_DIR keeps the cluster's files (default: a
# temporary directory, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export CARGO_INCREMENTAL=0
cargo build --workspace --bins --release --locked
bin=$PWD/target/release
dir=${DATAPATH_DEMO_DIR:-$(mktemp -d -t datapath-demo-XXXXXX)}
mkdir -p "$dir"

"$bin/dpctl" local up --hosts 3 --dir "$dir" &
launcher=$!
cleanup() {
  kill -TERM "$launcher" 2>/dev/null && wait "$launcher" 2>/dev/null || true
  [ -n "${DATAPATH_DEMO_DIR:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 300); do [ -f "$dir/cluster.env" ] && break; sleep 0.1; done
[ -f "$dir/cluster.env" ] || { echo "demo: the cluster did not start" >&2; exit 1; }
set -a; source "$dir/cluster.env"; set +a
dpctl() { "$bin/dpctl" "$@"; }

echo "== hosts"; dpctl hosts
gold=$(dpctl domain create --name gold)
silver=$(dpctl domain create --name silver)
src=$(dpctl volume create --domain "$gold" --format cow --size 2G --description "demo disk")
IFS=/ read -r _ img vol <<<"$src"
echo "== writing 512 MiB of random data into $src"
raw=$(mktemp "$dir/fill.XXXXXX")
truncate -s 2G "$raw"
for i in $(seq 0 7); do
  dd if=/dev/urandom of="$raw" bs=1M count=64 seek=$((i * 256)) conv=notrunc status=none
done
qemu-img convert -n -f raw -O qcow2 "$raw" "$DATAPATH_STORAGE_ROOT/$gold/images/$img/$vol"
rm -f "$raw"
dst=$(dpctl volume create --domain "$silver" --image "$img" --volume "$vol" --format cow --size 2G --illegal)

echo "== copy-data $src -> $dst on host 2 ($DATAPATH_HOST_2_ID)"
dpctl --host "$DATAPATH_HOST_2" copy-data --src "$src" --dst "$dst" --dst-generation 0
echo "== verify"
qemu-img compare "$DATAPATH_STORAGE_ROOT/$gold/images/$img/$vol" "$DATAPATH_STORAGE_ROOT/$silver/images/$img/$vol"
dpctl volume info "$dst"
echo "== jobs"; dpctl jobs list
echo "demo: done"
