#!/usr/bin/env bash
# The outbound dispatcher end to end, on each store in the same run: N messages through
# POST /outbound (C keep-alive connections) to a local receiver answering 200, reporting the
# enqueue rate, the delivery rate, API call → delivered latency p50/p99 and CPU per 10k
# messages (the node; with PostgreSQL also its backends), then CUT API calls cut off
# mid-request or before their answer, checking that none leaves a message stored undelivered.
#
#   bench/outbound.sh                     # N=20000 C=64, delivery concurrency 20, both stores
#   N=50000 C=128 DC=64 STORES=sqlite bench/outbound.sh
#   RATE=1314 CUT=0 bench/outbound.sh     # offered load fixed at 1,314 calls/s (latency below saturation)
#   BIN=/tmp/portcullis-old bench/outbound.sh   # another build of the node, for an A/B in one sitting
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-20000}
C=${C:-64}
DC=${DC:-20}
CUT=${CUT:-120}
cargo build --release --bin portcullis --bin portcullis-outbound-load --quiet
bin=${BIN:-target/release/portcullis}  # BIN: another build, for an A/B
load=target/release/portcullis-outbound-load
work=$(mktemp -d)
node=""
db=""
cleanup() {
  [ -n "$node" ] && kill "$node" 2>/dev/null || true
  [ -n "$db" ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export BENCH_TOKEN=bench-token

printf 'messages=%s api_concurrency=%s delivery_concurrency=%s payload=~200B\n' "$N" "$C" "$DC"
for store in ${STORES:-sqlite postgres}; do
  api=$(free_port); admin=$(free_port); rport=$(free_port)
  case "$store" in
    sqlite) url="sqlite://$work/$store/ledger.db" ;;
    postgres)
      db="bench_outbound_$$"
      psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null
      url="postgres://postgres@127.0.0.1:5432/$db" ;;
  esac
  mkdir -p "$work/$store/endpoints"
  cat > "$work/$store/endpoints/bench.yaml" <<YAML
tenant: bench
endpoints:
  - name: receiver
    url: http://127.0.0.1:$rport/hook
    secrets: ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
YAML
  cat > "$work/$store/portcullis.yaml" <<YAML
admin: 127.0.0.1:$admin
store: { url: "$url" }
outbound:
  api: 127.0.0.1:$api
  tokens: [env:BENCH_TOKEN]
  endpoints: endpoints/
  delivery: { allow_http: true, allow_internal: [127.0.0.1/32], concurrency: $DC }
YAML
  RUST_LOG=warn "$bin" run -c "$work/$store/portcullis.yaml" --no-access-log > "$work/$store.log" 2>&1 &
  node=$!
  wait_port "$api"
  pids="$node"
  [ "$store" = postgres ] && pids="$node,$(pgrep -d, -x postgres || pgrep -d, postgres)"
  "$load" --api "127.0.0.1:$api" --token "$BENCH_TOKEN" --receiver "127.0.0.1:$rport" \
    --messages "$N" --concurrency "$C" --pid "$pids" --cut "$CUT" --metrics "127.0.0.1:$admin" \
    --label "$store" ${RATE:+--rate "$RATE"}
  kill "$node"; wait "$node" 2>/dev/null || true; node=""
  if [ "$store" = postgres ]; then
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $db" >/dev/null; db=""
  fi
done
