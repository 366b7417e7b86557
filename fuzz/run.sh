#!/usr/bin/env bash
# Runs one fuzz target from its seeds (for `config`: conf/ and filters/) for a while, and
# prints libFuzzer's final statistics (executions, coverage, peak RSS). New inputs go to
# fuzz/corpus/<target>, crashes to fuzz/artifacts/<target>.
#
#   fuzz/run.sh raw_request 600          # target, seconds (default 300)
#   FLAGS=-a fuzz/run.sh config 600      # with debug assertions (overflow checks)
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1
seconds=${2:-300}
mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
seeds=("fuzz/seeds/$target")
# The config target starts from the example server and filter files themselves.
[ "$target" = config ] && seeds+=(conf filters)
# shellcheck disable=SC2086
cargo +nightly fuzz run -O ${FLAGS:-} "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
  -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096 -timeout=10
