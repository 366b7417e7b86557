#!/usr/bin/env bash
# Fairness: one healthy endpoint's end-to-end rate beside another tenant's endpoint getting
# as many messages, interleaved: first a second healthy one (the same load on the API and
# the ledger: the baseline), then a dead one, which accepts connections and never answers,
# so each attempt holds its slot until the 5 s timeout. With the default circuit breaker
# and with the breaker out of the way (fairness alone). `alone` is the healthy one by itself.
#
#   bench/outbound_fairness.sh              # N=10000 C=64 DC=20, SQLite
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-10000}
C=${C:-64}
DC=${DC:-20}
cargo build --release --bin portcullis --bin portcullis-outbound-load --quiet
bin=target/release/portcullis
load=target/release/portcullis-outbound-load
work=$(mktemp -d)
node=""; hole=""
cleanup() {
  [ -n "$node" ] && kill "$node" 2>/dev/null || true
  [ -n "$hole" ] && kill "$hole" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export BENCH_TOKEN=bench-token
# A listener that never accepts: connections complete in the kernel's backlog, requests
# are never read, nothing is ever answered.
dead=$(free_port)
python3 -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $dead)); s.listen(4096)
time.sleep(100000)" &
hole=$!
wait_port "$dead"

printf 'healthy messages=%s api_concurrency=%s delivery_concurrency=%s\n' "$N" "$C" "$DC"
run() { # label breaker-failures [also-tenant]
  local label=$1 failures=$2 also=${3:-}
  local api admin rport dir
  api=$(free_port); admin=$(free_port); rport=$(free_port)
  dir="$work/$label"; mkdir -p "$dir/endpoints"
  cat > "$dir/endpoints/bench.yaml" <<YAML
tenant: bench
endpoints:
  - { name: healthy, url: "http://127.0.0.1:$rport/hook", secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }
YAML
  cat > "$dir/endpoints/other.yaml" <<YAML
tenant: other
endpoints:
  - { name: healthy, url: "http://127.0.0.1:$rport/hook", secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }
YAML
  cat > "$dir/endpoints/dead.yaml" <<YAML
tenant: dead
endpoints:
  - { name: dead, url: "http://127.0.0.1:$dead/hook", secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }
YAML
  cat > "$dir/portcullis.yaml" <<YAML
admin: 127.0.0.1:$admin
store: { url: "sqlite://$dir/ledger.db" }
outbound:
  api: 127.0.0.1:$api
  tokens: [env:BENCH_TOKEN]
  endpoints: endpoints/
  delivery: { allow_http: true, allow_internal: [127.0.0.1/32], concurrency: $DC, breaker: { failures: $failures } }
YAML
  RUST_LOG=warn "$bin" run -c "$dir/portcullis.yaml" --no-access-log > "$dir.log" 2>&1 &
  node=$!
  wait_port "$api"
  local extra=()
  [ -n "$also" ] && extra=(--also-tenant "$also")
  "$load" --api "127.0.0.1:$api" --token "$BENCH_TOKEN" --receiver "127.0.0.1:$rport" \
    --messages "$N" --concurrency "$C" --pid "$node" --label "$label" "${extra[@]}"
  kill "$node"; wait "$node" 2>/dev/null || true; node=""
}
run alone 5
run beside-healthy 5 other
run beside-dead 5 dead
run beside-healthy-no-breaker 10000 other
run beside-dead-no-breaker 10000 dead
