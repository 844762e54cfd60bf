#!/usr/bin/env bash
# A short run of each cargo fuzz target in fuzz/ (the configuration loader, the simulator's
# request decoding, the Consul client's decoding of answers), seeded with its corpus in fuzz/corpus/: a target that no longer builds,
# or a corpus input that now crashes, fails the tests. New inputs go to a temporary folder, so
# the tree is left as it was. Longer runs by hand: docs/development.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-15}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd fuzz
for target in config_load sim_request consul_answer; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "$work/$target"
  # Without a sanitizer: cargo fuzz then needs no nightly flags, and the machine's toolchain is
  # stable. A debug build: the smoke run is short, and building it is what costs.
  if ! cargo fuzz run --dev --sanitizer none "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$work/$target.log" 2>&1; then
    tail -n 40 "$work/$target.log" >&2
    echo "fuzz target $target failed; the input that failed is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$target.log" || true
done
