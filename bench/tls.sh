#!/usr/bin/env bash
# TLS as providers connect: nginx (TLS 1.3, the same certificate) against Portcullis on a TLS
# listener, in one run on one machine, driven by wrk (-t1, pre-signed 1 KiB GitHub requests
# with distinct event ids, bench/wrk_presigned.lua), targets alternated within each round;
# medians over the rounds and ratios.
#
#   1 nginx-202      nginx over TLS answering 202 itself
#   2 nginx-proxy    nginx over TLS, proxy_pass (keep-alive) to a do-nothing upstream
#   3 bare-pingora   bench/bare.rs on Pingora's rustls listener: TLS and HTTP, no checks
#   4 chain-redis    Portcullis, full chain (as bench/compare.sh) -> Redis Streams
#   5 chain-spool    the same -> spool (fsync, group commit)
#
# each under two loads:
#   ka   keep-alive: C connections, as many requests as they can for WRK_D
#   new  `Connection: close` on every request: a full TLS 1.3 handshake (wrk does not resume
#        sessions) and one request per connection, as a provider delivering on a fresh
#        connection does; requests/s is then new connections/s
#
#   bench/tls.sh                   # C=64, R=3 rounds, WRK_D=3s, an ECDSA P-256 certificate
#   KEY=rsa R=5 bench/tls.sh       # an RSA-2048 certificate
# Needs nginx and wrk (apt-get install nginx wrk), openssl and the local Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
C=${C:-64}
R=${R:-3}
WRK_D=${WRK_D:-3s}
WRK_N=${WRK_N:-200000}
WRK_N_NEW=${WRK_N_NEW:-60000}
THREADS=${THREADS:-2}
KEY=${KEY:-ec}
cargo build --release --bins --quiet
bin=target/release/portcullis
load=target/release/portcullis-loadgen
bare=target/release/portcullis-bare
bench_begin "bench:tls:$$"

case $KEY in
  ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
  rsa) newkey=(-newkey rsa:2048) ;;
  *) echo "KEY is ec or rsa" >&2; exit 2 ;;
esac
openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
TLS_CERT=$work/cert.pem TLS_KEY=$work/key.pem
ssl="ssl_certificate $TLS_CERT; ssl_certificate_key $TLS_KEY; ssl_protocols TLSv1.3;"

start_nginx upstream 1 "location / { return 202; }"
UPSTREAM_PORT=$NGINX_PORT
start_nginx ceiling "$THREADS" "$ssl location / { default_type application/json; return 202 '{\"status\":\"accepted\"}'; }" ssl
ceiling_port=$NGINX_PORT ceiling_pids=$NGINX_PIDS
start_nginx proxy "$THREADS" "$ssl location / { proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection \"\"; }" ssl
proxy_port=$NGINX_PORT proxy_pids=$NGINX_PIDS

bare_port=$(free_port)
"$bare" --listen "127.0.0.1:$bare_port" --threads "$THREADS" --cert "$TLS_CERT" --key "$TLS_KEY" 2>"$work/bare.log" &
bare_pid=$!
pids+=("$bare_pid")
wait_port "$bare_port"

chain_filter "$work/filters"
start_gateway redis "out: { type: redis, url: \"redis://127.0.0.1:6379\", stream: \"bench:tls:$$\", timeout: 5s }"
redis_port=$GW_PORT redis_pid=$GW_PID
start_gateway spool "out: { type: spool, dir: $work/spool/ }"
spool_port=$GW_PORT spool_pid=$GW_PID
# Each answers over TLS 1.3 before the run counts.
for port in "$ceiling_port" "$proxy_port" "$bare_port" "$redis_port" "$spool_port"; do
  curl -sk --tlsv1.3 -o /dev/null "https://127.0.0.1:$port/" || { echo "no TLS 1.3 on $port" >&2; exit 1; }
done

results="$work/results.tsv"
# $1 label, $2 port, $3 pids, extra loadgen args after
measure() {
  local label=$1 port=$2 pid=$3
  shift 3
  "$load" --url "https://127.0.0.1:$port/webhook/github" --filter "$work/filters/github.yaml" \
    --concurrency "$C" --pid "$pid" --label "$label" --wrk "$WRK_D" "$@" | tee -a "$results"
}

printf 'concurrency=%s rounds=%s wrk=%s body=1KiB threads/workers=%s key=%s\n' "$C" "$R" "$WRK_D" "$THREADS" "$KEY"
for round in $(seq "$R"); do
  echo "# round $round"
  for mode in ka new; do
    if [ $mode = ka ]; then extra=(--requests "$WRK_N"); else extra=(--requests "$WRK_N_NEW" --close); fi
    measure "$mode-1-nginx-202" "$ceiling_port" "$ceiling_pids" "${extra[@]}"
    measure "$mode-2-nginx-proxy" "$proxy_port" "$proxy_pids" "${extra[@]}"
    measure "$mode-3-bare-pingora" "$bare_port" "$bare_pid" "${extra[@]}"
    measure "$mode-4-chain-redis" "$redis_port" "$redis_pid" "${extra[@]}"
    measure "$mode-5-chain-spool" "$spool_port" "$spool_pid" "${extra[@]}"
  done
done

python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    rows[f[0]].append(dict(kv.split("=", 1) for kv in f[1:]))
med = {}
print("\nmedians over rounds")
print("| target | requests/s | p50 ms | p99 ms | CPU s/10k | statuses (last round) |")
print("|---|---|---|---|---|---|")
for label in sorted(rows):
    rs = rows[label]
    m = {k: statistics.median(float(r[k]) for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_s_per_10k")}
    med[label] = m
    print(f"| {label} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['cpu_s_per_10k']:.2f} | {rs[-1]['statuses']} |")
print("\nratios of median requests/s (target >= 0.9 for Portcullis against nginx)")
for load in ("ka", "new"):
    def ratio(a, b, target=None):
        r = med[f"{load}-{a}"]["rps"] / med[f"{load}-{b}"]["rps"]
        miss = "  MISSED" if target and r < target else ""
        print(f"{load}: {a} / {b}: {r:.2f}{f' (target >= {target})' if target else ''}{miss}")
    ratio("3-bare-pingora", "1-nginx-202")
    ratio("4-chain-redis", "2-nginx-proxy", 0.9)
    ratio("5-chain-spool", "2-nginx-proxy", 0.9)
    c = med[f"{load}-4-chain-redis"]["cpu_s_per_10k"] / med[f"{load}-2-nginx-proxy"]["cpu_s_per_10k"]
    print(f"{load}: CPU per request, 4-chain-redis / 2-nginx-proxy: {c:.2f}")
PY
