#!/usr/bin/env bash
# One node against three behind haproxy, in the same run, alternating: how much the fleet's
# shared state (dedup reserve + commit and a fleet-scope rate limit, each a Redis round trip)
# costs next to a node that keeps its dedup in memory, and whether adding nodes on one box
# changes anything. Every row: the same pre-signed 1 KiB GitHub requests with distinct ids,
# full chain, sink = Redis Streams (XADD). Needs the local Redis and haproxy.
#
#   bench/fleet.sh              # N=50000 requests, C=64 connections, R=2 rounds
#   N=100000 R=3 bench/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-50000}
C=${C:-64}
R=${R:-2}
cargo build --release --bins --quiet
bin=target/release/portcullis
load=target/release/portcullis-loadgen
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli --scan --pattern "bench:$$:*" | xargs -r redis-cli DEL >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
redis_pid=$(redis-cli INFO server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
box_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat; }
redis_calls() { redis-cli INFO stats | awk -F: '/^total_commands_processed/ {print $2}' | tr -d '\r'; }

filter() { # $1 = node|fleet
  mkdir -p "$work/filters-$1"
  cat > "$work/filters-$1/github.yaml" <<YAML
name: github
preset: github
secrets: ["bench-secret"]
rate_limit: { per_second: 10000000, per_ip_per_second: 10000000, scope: $1 }
max_body: 64KiB
content_types: [application/json]
require_fields: [action]
YAML
}
filter node
filter fleet

# $1 = name, $2 = memory|redis, $3 = threads; sets PORT and PID
start_node() {
  local port admin scope dedup
  port=$(free_port); admin=$(free_port)
  if [ "$2" = redis ]; then
    scope=fleet
    dedup="{ backend: redis, url: \"redis://127.0.0.1:6379\", key_prefix: \"bench:$$:dedup:\", timeout: 1s }"
  else
    scope=node
    dedup="{ backend: memory }"
  fi
  cat > "$work/$1.yaml" <<YAML
listen: [{ addr: "127.0.0.1:$port" }]
admin: 127.0.0.1:$admin
filters: filters-$scope/
trusted_proxies: [127.0.0.1/32]
dedup: $dedup
sinks:
  out: { type: redis, url: "redis://127.0.0.1:6379", stream: "bench:$$:{provider}", timeout: 5s }
pingora: { threads: $3, pid_file: $work/$1.pid, upgrade_sock: $work/$1.sock }
YAML
  "$bin" run -c "$work/$1.yaml" --no-access-log 2>"$work/$1.log" &
  local pid=$!
  pids+=("$pid")
  wait_http "http://127.0.0.1:$admin/readyz"
  PORT=$port PID=$pid
}

start_haproxy() { # $@ = backend ports; sets PORT and PID
  local port conf i=0
  port=$(free_port); conf="$work/haproxy-$port.cfg"
  cat > "$conf" <<CFG
global
  maxconn 4096
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend edge
  bind 127.0.0.1:$port
  default_backend gateways
backend gateways
  balance roundrobin
CFG
  for b in "$@"; do echo "  server node$i 127.0.0.1:$b" >> "$conf"; i=$((i + 1)); done
  haproxy -db -f "$conf" >/dev/null 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_port "$port"
  PORT=$port PID=$pid
}

# Runs one target; $1 label, $2 url, $3 = comma-separated gateway pids, $4 haproxy pid or "-",
# $5 requests, $6 concurrency. Adds Redis's and haproxy's CPU per 10k requests, Redis commands
# per request (those run inside scripts included) and how busy the whole box was.
measure() {
  local redis_cpu0 calls0 lb_cpu0=0 line busy0 total0
  redis_cpu0=$(cpu_of "$redis_pid"); calls0=$(redis_calls)
  [ "$4" != - ] && lb_cpu0=$(cpu_of "$4")
  read -r busy0 total0 < <(box_ticks)
  line=$("$load" --url "$2" --filter "$work/filters-node/github.yaml" --requests "$5" \
    --concurrency "$6" --pid "$3" --label "$1 (C=$6)")
  local redis_cpu calls lb_cpu=0 busy total
  read -r busy total < <(box_ticks)
  redis_cpu=$(( $(cpu_of "$redis_pid") - redis_cpu0 ))
  calls=$(( $(redis_calls) - calls0 ))
  [ "$4" != - ] && lb_cpu=$(( $(cpu_of "$4") - lb_cpu0 ))
  # CPU ticks are 1/100 s: per 10k requests = ticks / 100 * 10000 / requests.
  printf '%s\tredis_cpu_s_per_10k=%s\tredis_cmds_per_req=%s\thaproxy_cpu_s_per_10k=%s\tbox_busy=%s%%\n' "$line" \
    "$(awk -v t="$redis_cpu" -v n="$5" 'BEGIN {printf "%.2f", t * 100 / n}')" \
    "$(awk -v c="$calls" -v n="$5" 'BEGIN {printf "%.1f", c / n}')" \
    "$(awk -v t="$lb_cpu" -v n="$5" 'BEGIN {printf "%.2f", t * 100 / n}')" \
    "$(awk -v b="$((busy - busy0))" -v t="$((total - total0))" 'BEGIN {printf "%.0f", 100 * b / t}')"
}

start_node mem memory 2; mem_port=$PORT mem_pid=$PID
start_node one redis 2; one_port=$PORT one_pid=$PID
start_haproxy "$one_port"; lb1_port=$PORT lb1_pid=$PID
nodes=(); node_pids=()
for i in 1 2 3; do
  start_node "n$i" redis 2
  nodes+=("$PORT"); node_pids+=("$PID")
done
start_haproxy "${nodes[@]}"; lb3_port=$PORT lb3_pid=$PID
three=$(IFS=,; echo "${node_pids[*]}")

targets() { # $1 requests, $2 concurrency
  measure "1 node, memory dedup, direct" "http://127.0.0.1:$mem_port/webhook/github" "$mem_pid" - "$1" "$2"
  measure "1 node, redis dedup + fleet limit, direct" "http://127.0.0.1:$one_port/webhook/github" "$one_pid" - "$1" "$2"
  measure "1 node, redis dedup + fleet limit, haproxy" "http://127.0.0.1:$lb1_port/webhook/github" "$one_pid" "$lb1_pid" "$1" "$2"
  measure "3 nodes, redis dedup + fleet limit, haproxy" "http://127.0.0.1:$lb3_port/webhook/github" "$three" "$lb3_pid" "$1" "$2"
}

printf 'requests=%s concurrency=%s body=1KiB rounds=%s sink=redis\n' "$N" "$C" "$R"
echo "# one request at a time: what the Redis round trips add to a request's latency"
targets 3000 1
for round in $(seq "$R"); do
  echo "# round $round, saturated"
  targets "$N" "$C"
done
