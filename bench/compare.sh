#!/usr/bin/env bash
# Portcullis against nginx, in one run on one machine: the same load generator, the same
# pre-signed 1 KiB JSON GitHub requests with distinct event ids, the same concurrency, targets
# alternated within each round so drift hits them alike; medians over the rounds and ratios.
#
#   1 nginx-202      nginx (Debian) answering 202 itself: the ceiling of HTTP on this box
#   2 nginx-proxy    nginx proxy_pass (keep-alive) to a do-nothing upstream answering 202
#   3 bare-pingora   bench/bare.rs: Pingora reading the body and answering 202, no checks
#   4 chain-spool    Portcullis full chain (allowlist, rate limit sized not to trigger, type,
#                    size, signature, require_fields, dedup) -> spool (fsync, group commit)
#   5 chain-redis    the same -> Redis Streams
#   6 chain-http     the same -> http sink to the upstream of (2)
#   7 flood          invalid signatures into (4): refused with 401, nothing kept
#   wrk-2 … wrk-5    (2)–(5) again, driven by wrk (-t1, the same kind of pre-signed requests,
#                    bench/wrk_presigned.lua) for WRK_D: a second generator, so a latency
#                    tail that one of them hides is seen
#   c1-3 … c1-5      (3)–(5) one request at a time (N1 requests): the latency floor
#
#   bench/compare.sh                 # N=50000 requests, C=64, R=3 rounds
#   N=100000 R=5 bench/compare.sh
#   WRK_D=5s WRK_N=300000 bench/compare.sh   # wrk's run length, and requests signed for it
# Needs nginx and wrk (apt-get install nginx wrk) and the local Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-50000}
C=${C:-64}
R=${R:-3}
WRK_D=${WRK_D:-3s}
N1=${N1:-5000}
# Enough for the gateways in WRK_D (past it ids repeat: 200s); nginx and bare Pingora, which
# check nothing, may run past it (a warning, harmless there).
WRK_N=${WRK_N:-200000}
THREADS=${THREADS:-2}
cargo build --release --bins --quiet
bin=target/release/portcullis
load=target/release/portcullis-loadgen
bare=target/release/portcullis-bare
bench_begin "bench:compare:$$"

chain_filter "$work/filters"

start_nginx upstream 1 "location / { return 202; }"
UPSTREAM_PORT=$NGINX_PORT
start_nginx ceiling "$THREADS" "location / { default_type application/json; return 202 '{\"status\":\"accepted\"}'; }"
ceiling_port=$NGINX_PORT ceiling_pids=$NGINX_PIDS
start_nginx proxy "$THREADS" "location / { proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
proxy_port=$NGINX_PORT proxy_pids=$NGINX_PIDS

bare_port=$(free_port)
"$bare" --listen "127.0.0.1:$bare_port" --threads "$THREADS" 2>"$work/bare.log" &
bare_pid=$!
pids+=("$bare_pid")
wait_port "$bare_port"

start_gateway spool "out: { type: spool, dir: $work/spool/ }"
spool_port=$GW_PORT spool_pid=$GW_PID
start_gateway redis "out: { type: redis, url: \"redis://127.0.0.1:6379\", stream: \"bench:compare:$$\", timeout: 5s }"
redis_port=$GW_PORT redis_pid=$GW_PID
start_gateway http "out: { type: http, url: \"http://127.0.0.1:$UPSTREAM_PORT/ingest\", timeout: 5s }"
http_port=$GW_PORT http_pid=$GW_PID

results="$work/results.tsv"
# $1 label, $2 port, $3 pids, extra loadgen args after
measure() {
  local label=$1 port=$2 pid=$3
  shift 3
  "$load" --url "http://127.0.0.1:$port/webhook/github" --filter "$work/filters/github.yaml" \
    --requests "${REQUESTS:-$N}" --concurrency "$C" --pid "$pid" --label "$label" "$@" | tee -a "$results"
}

printf 'requests=%s concurrency=%s rounds=%s body=1KiB threads/workers=%s\n' "$N" "$C" "$R" "$THREADS"
for round in $(seq "$R"); do
  echo "# round $round"
  measure 1-nginx-202 "$ceiling_port" "$ceiling_pids"
  measure 2-nginx-proxy "$proxy_port" "$proxy_pids"
  measure 3-bare-pingora "$bare_port" "$bare_pid"
  measure 4-chain-spool "$spool_port" "$spool_pid"
  measure 5-chain-redis "$redis_port" "$redis_pid"
  measure 6-chain-http "$http_port" "$http_pid"
  measure 7-flood "$spool_port" "$spool_pid" --invalid
  REQUESTS=$WRK_N measure wrk-2-nginx-proxy "$proxy_port" "$proxy_pids" --wrk "$WRK_D"
  REQUESTS=$WRK_N measure wrk-3-bare-pingora "$bare_port" "$bare_pid" --wrk "$WRK_D"
  REQUESTS=$WRK_N measure wrk-4-chain-spool "$spool_port" "$spool_pid" --wrk "$WRK_D"
  REQUESTS=$WRK_N measure wrk-5-chain-redis "$redis_port" "$redis_pid" --wrk "$WRK_D"
  C=1 REQUESTS=$N1 measure c1-3-bare-pingora "$bare_port" "$bare_pid"
  C=1 REQUESTS=$N1 measure c1-4-chain-spool "$spool_port" "$spool_pid"
  C=1 REQUESTS=$N1 measure c1-5-chain-redis "$redis_port" "$redis_pid"
done

python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    rows[f[0]].append(dict(kv.split("=", 1) for kv in f[1:]))
med = {}
print("\nmedians over rounds")
print("| target | requests/s | p50 ms | p99 ms | p99.9 ms | CPU s/10k | peak RSS MiB | statuses (last round) |")
print("|---|---|---|---|---|---|---|---|")
for label in sorted(rows):
    rs = rows[label]
    m = {k: statistics.median(float(r[k]) for r in rs) for k in ("rps", "p50_ms", "p99_ms", "p999_ms", "cpu_s_per_10k", "peak_rss_mib")}
    med[label] = m
    print(f"| {label} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['p999_ms']:.2f} | {m['cpu_s_per_10k']:.2f} | {m['peak_rss_mib']:.0f} | {rs[-1]['statuses']} |")
def ratio(a, b, target):
    r = med[a]["rps"] / med[b]["rps"]
    print(f"{a} / {b}: {r:.2f} (target >= {target}){'' if r >= target else '  MISSED'}")
print("\nratios of median requests/s")
ratio("3-bare-pingora", "1-nginx-202", 0)
ratio("3-bare-pingora", "2-nginx-proxy", 0)
# Issue 20's targets.
ratio("7-flood", "3-bare-pingora", 0.95)
ratio("4-chain-spool", "3-bare-pingora", 0.7)
ratio("5-chain-redis", "2-nginx-proxy", 1.2)
ratio("6-chain-http", "2-nginx-proxy", 0.8)
p = med["5-chain-redis"]["p99_ms"] / med["2-nginx-proxy"]["p99_ms"]
print(f"p99 5-chain-redis / 2-nginx-proxy: {p:.2f} (target <= 1.0){'' if p <= 1.0 else '  MISSED'}")
print("\nthe tail, p99 / p50 of the medians (target <= 3 for the accepted path), by generator")
for label in ("2-nginx-proxy", "3-bare-pingora", "4-chain-spool", "5-chain-redis"):
    for gen in ("", "wrk-"):
        m = med.get(gen + label)
        if m:
            t = m["p99_ms"] / m["p50_ms"]
            miss = "  MISSED" if label[0] in "45" and t > 3 else ""
            print(f"{gen + label}: {t:.1f}{miss}")
print("\none request at a time, p99 (target <= 0.25 ms for the accepted path)")
for label in ("c1-3-bare-pingora", "c1-4-chain-spool", "c1-5-chain-redis"):
    m = med.get(label)
    if m:
        miss = "  MISSED" if label != "c1-3-bare-pingora" and m["p99_ms"] > 0.25 else ""
        print(f"{label}: p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms{miss}")
PY
