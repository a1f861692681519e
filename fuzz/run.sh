#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 15) on a temporary copy of its committed seed
# corpus, so CI never grows the corpus; exits non-zero if any target crashes.
#
#   bash fuzz/run.sh [SECONDS]
#
# Needs the nightly toolchain (sanitizers); installs cargo-fuzz when it is missing. A crashing
# input is kept under fuzz/artifacts/<target>/ and printed (Base64) in the target's log.
set -euo pipefail

seconds="${1:-15}"
cd "$(dirname "$0")"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Built outside the clone, so a fresh clone (CI) reuses the dependencies built by the last run.
export CARGO_TARGET_DIR="${DATAPATH_FUZZ_TARGET_DIR:-$HOME/.cache/datapath/fuzz-target}"
cargo +nightly fuzz build

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=()
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$work/corpus/$target"
    if [ -d "corpus/$target" ]; then
        cp -R "corpus/$target/." "$work/corpus/$target/"
    fi
    log="$work/$target.log"
    if cargo +nightly fuzz run "$target" "$work/corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        passed=$((passed + 1))
        echo "fuzz $target: $(grep -a '^Done ' "$log" | tail -n 1)"
    else
        failed+=("$target")
        echo "fuzz $target: FAILED" >&2
        tail -n 60 "$log" >&2
    fi
done

echo "fuzz: ${passed} passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]}" >&2
    exit 1
fi
