#!/usr/bin/env bash
# The test command (README, .ci/run): installs prerequisites when missing, then formatting, lints,
# the proto lint, a build of every binary, every test — unit tests and the end-to-end suite on
# real etcd, real service binaries and real qemu-img — and every fuzz target for 15 s each.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never

echo "== cargo fmt --check"; cargo fmt --all -- --check
echo "== buf lint"; buf lint
# The API only grows compatibly: every change to proto/ since the baseline (a landed commit of main,
# .ci/api-baseline) must keep old clients working on the wire and in JSON (buf's WIRE_JSON rules).
baseline=$(tr -d '[:space:]' < .ci/api-baseline)
echo "== buf breaking (WIRE_JSON) against $baseline"; buf breaking --against ".git#ref=$baseline"
echo "== cargo clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries the end-to-end tests start)"; cargo build --workspace --bins --locked
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked
else
  cargo test --workspace --locked -- --test-threads 2
fi
echo "== fuzz (every target, 15 s each, on its committed seeds)"
bash fuzz/run.sh 15
