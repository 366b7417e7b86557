#!/usr/bin/env bash
# Memory: the gateway's RSS at idle, then after it has accepted (and so remembers in the dedup
# cache) STEP, 2×STEP, … distinct event ids, and the growth per 1M ids between the first and
# the last step (which leaves out one-off warm-up: connection buffers, thread stacks, the
# allocator's first arenas). Spool sink, small bodies (the cache holds ids, not bodies), ids of
# the form `load-<pid>-<n>` (17–19 characters; a GitHub delivery id is a 36-character UUID).
#
#   bench/memory.sh                 # STEP=500000 STEPS=2
#   STEP=1000000 STEPS=3 bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
STEP=${STEP:-500000}
STEPS=${STEPS:-2}
C=${C:-64}
cargo build --release --bins --quiet
bin=target/release/portcullis
load=target/release/portcullis-loadgen
work=$(mktemp -d)
gw=
cleanup() { [ -n "$gw" ] && kill "$gw" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/filters"
cat > "$work/filters/github.yaml" <<YAML
name: github
preset: github
secrets: ["bench-secret"]
YAML
port=$(free_port)
admin=$(free_port)
cat > "$work/portcullis.yaml" <<YAML
listen:
  - addr: 127.0.0.1:$port
admin: 127.0.0.1:$admin
filters: filters/
dedup: { backend: memory, max_entries: $((STEP * STEPS + 1000)) }
sinks:
  spool: { type: spool, dir: spool/ }
pingora: { threads: 2 }
YAML
"$bin" run -c "$work/portcullis.yaml" --no-access-log >"$work/log" 2>&1 &
gw=$!
wait_http "http://127.0.0.1:$admin/healthz"
sleep 1

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$gw/status"; }
entries() { curl -fsS "http://127.0.0.1:$admin/metrics" | awk '/^portcullis_dedup_entries / {print $2}'; }
idle=$(rss_kib)
echo "idle: RSS $((idle / 1024)) MiB ($idle KiB), peak $(awk '/^VmHWM:/ {print $2}' "/proc/$gw/status") KiB"
first=
for step in $(seq "$STEPS"); do
  "$load" --url "http://127.0.0.1:$port/webhook/github" --filter "$work/filters/github.yaml" \
    --requests "$STEP" --concurrency "$C" --body-size 64 --label "step$step" >/dev/null
  sleep 2
  rss=$(rss_kib)
  n=$(entries)
  echo "after step $step: $n ids remembered, RSS $((rss / 1024)) MiB ($rss KiB), +$(((rss - idle) / 1024)) MiB over idle"
  if [ -z "$first" ]; then first_rss=$rss; first_n=$n; first=1; fi
  last_rss=$rss; last_n=$n
done
if [ "$STEPS" -gt 1 ]; then
  python3 - "$first_rss" "$first_n" "$last_rss" "$last_n" "$idle" <<'PY'
import sys
first_rss, first_n, last_rss, last_n, idle = map(float, sys.argv[1:])
per_id = (last_rss - first_rss) * 1024 / (last_n - first_n)
print(f"growth between steps: {per_id:.0f} bytes per id = {per_id * 1e6 / 2**20:.0f} MiB per 1M ids")
print(f"from idle: {(last_rss - idle) * 1024 / last_n:.0f} bytes per id (includes warm-up)")
PY
fi
