#!/usr/bin/env bash
# The main job: installs prerequisites when missing, builds datapath, starts a local cluster (etcd, the
# job-tracker, three host-workers, the scheduler), creates a template holding random data and a disk
# whose chain is a raw base plus two qcow2 snapshot layers (each with its own random data), then
#   1. clones the template into a new qcow2 disk in another storage domain,
#   2. moves the snapshot-chain disk to that domain,
# both through the scheduler with live progress bars (one per volume, one overall), and verifies the
# data with qemu-img compare. DATAPATH_DEMO_DIR keeps the cluster's files (default: a temporary
# directory, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export CARGO_INCREMENTAL=0
cargo build --workspace --bins --release --locked
bin=$PWD/target/release
dir=${DATAPATH_DEMO_DIR:-$(mktemp -d -t datapath-demo-XXXXXX)}
mkdir -p "$dir"

# Each host's storage link is limited to 256 MiB/s so the copies take long enough to watch.
"$bin/dpctl" local up --hosts 3 --dir "$dir" --host-bandwidth-limit $((256 << 20)) &
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
path() { echo "$DATAPATH_STORAGE_ROOT/$1/images/$2/$3"; }
uuid() { cat /proc/sys/kernel/random/uuid; }
# write_random <file> <format> <offset-MiB> <MiB>: fresh random data through the volume's chain.
write_random() {
  local chunk; chunk=$(mktemp "$dir/chunk.XXXXXX")
  head -c "$(($4 << 20))" /dev/urandom >"$chunk"
  qemu-io -f "$2" -c "write -s $chunk $(($3 << 20)) $(($4 << 20))" "$1" >/dev/null
  rm -f "$chunk"
}

echo "== hosts"; dpctl hosts
gold=$(dpctl domain create --name gold)
silver=$(dpctl domain create --name silver)

echo "== a template: 1 GiB raw, 256 MiB of random data"
tpl_img=$(uuid); tpl_vol=$(uuid)
dpctl volume create --domain "$gold" --image "$tpl_img" --volume "$tpl_vol" --format raw --size 1G \
  --role shared --description "demo template" >/dev/null
for i in 0 1 2 3; do write_random "$(path "$gold" "$tpl_img" "$tpl_vol")" raw $((i * 256)) 64; done

echo "== a disk with two snapshots: raw base + qcow2 + qcow2, each holding its own random data"
img=$(uuid); base=$(uuid); snap1=$(uuid); leaf=$(uuid)
dpctl volume create --domain "$gold" --image "$img" --volume "$base" --format raw --size 1G --role internal >/dev/null
for i in 0 1 2 3; do write_random "$(path "$gold" "$img" "$base")" raw $((i * 256 + 8)) 64; done
dpctl volume create --domain "$gold" --image "$img" --volume "$snap1" --format cow --size 1G \
  --parent "$base" --role internal >/dev/null
write_random "$(path "$gold" "$img" "$snap1")" qcow2 100 64
dpctl volume create --domain "$gold" --image "$img" --volume "$leaf" --format cow --size 1G --parent "$snap1" >/dev/null
write_random "$(path "$gold" "$img" "$leaf")" qcow2 600 64
before=$(mktemp "$dir/before.XXXXXX")
qemu-img convert -O raw "$(path "$gold" "$img" "$leaf")" "$before"

echo "== clone the template into a new qcow2 disk in silver"
clone_img=$(uuid); clone_vol=$(uuid)
dpctl disk clone "$gold" "$tpl_img" "$tpl_vol" "$silver" --format cow --allocation sparse \
  --image-id "$clone_img" --volume-id "$clone_vol"
qemu-img compare "$(path "$gold" "$tpl_img" "$tpl_vol")" "$(path "$silver" "$clone_img" "$clone_vol")"

echo "== move the snapshot-chain disk from gold to silver"
dpctl disk move "$gold" "$img" "$silver"
qemu-img compare "$before" "$(path "$silver" "$img" "$leaf")"
[ ! -e "$DATAPATH_STORAGE_ROOT/$gold/images/$img" ] || { echo "demo: the source is still there" >&2; exit 1; }
qemu-img info --backing-chain "$(path "$silver" "$img" "$leaf")" | grep -E '^(image|backing file):'
rm -f "$before"

echo "== disk status"; dpctl disk status "$silver" "$img"
echo "== operations"; dpctl ops list
echo "== where the copies ran"; dpctl jobs list
echo "demo: done"
