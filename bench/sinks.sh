#!/usr/bin/env bash
# Throughput of each sink, one after the other in the same run: the same pre-signed 1 KiB
# GitHub requests (distinct event ids) through the full chain (rate limit sized not to trigger,
# size and type checks, signature, dedup) into spool, redis, nats, amqp, kafka and http (an
# nginx upstream answering 202). Needs the local brokers, nginx (apt-get install nginx-light)
# and, for kafka, Tansu (cargo install tansu --features libsql), which this script starts on a
# free port with its SQLite storage in the work directory.
#
#   bench/sinks.sh            # N=20000 requests, C=64 connections per target
#   N=50000 C=128 bench/sinks.sh
#   SINKS="redis amqp amqp4" bench/sinks.sh   # amqp: one confirm channel, amqp4: four
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-20000}
C=${C:-64}
cargo build --release --bins --quiet
bin=target/release/portcullis
load=target/release/portcullis-loadgen
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT


# The do-nothing upstream of the http sink.
up=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
error_log $work/nginx/error.log;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  server { listen 127.0.0.1:$up; location / { return 202; } }
}
NGINX
nginx -c "$work/nginx/nginx.conf"
pids+=("$(cat "$work/nginx/nginx.pid" 2>/dev/null || true)")
trap 'kill $(cat "$work/nginx/nginx.pid") 2>/dev/null || true; cleanup' EXIT

mkdir -p "$work/filters"
cat > "$work/filters/github.yaml" <<YAML
name: github
preset: github
secrets: ["bench-secret"]
rate_limit: { per_second: 10000000, per_ip_per_second: 10000000 }
max_body: 64KiB
content_types: [application/json]
require_fields: [action]
YAML

sink_yaml() {
  case "$1" in
    spool) echo "  out: { type: spool, dir: $work/spool/ }" ;;
    redis) echo "  out: { type: redis, url: \"redis://127.0.0.1:6379\", stream: \"bench:{provider}:$$\", timeout: 5s }" ;;
    nats|nats+journal) echo "  out: { type: nats, url: \"nats://127.0.0.1:4222\", stream: BENCH$$, subject: \"bench$$.{provider}\", create_stream: true, timeout: 5s }" ;;
    amqp)  echo "  out: { type: amqp, url: \"amqp://guest:guest@127.0.0.1:5672/%2f\", exchange: bench$$, routing_key: \"{provider}\", timeout: 5s }" ;;
    # amqp4: a pool of four confirm channels (amqp: the default, one).
    amqp4) echo "  out: { type: amqp, url: \"amqp://guest:guest@127.0.0.1:5672/%2f\", exchange: bench$$, routing_key: \"{provider}\", timeout: 5s, channels: 4 }" ;;
    http)  echo "  out: { type: http, url: \"http://127.0.0.1:$up/ingest\", timeout: 5s }" ;;
    kafka) echo "  out: { type: kafka, brokers: \"127.0.0.1:$kafka\", topic: bench$$, timeout: 5s }" ;;
  esac
}

# User+system CPU ticks of a process so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Tansu, only when a kafka row is asked for (one partition: what one topic gets by default).
kafka=$(free_port)
case " ${SINKS:-kafka} " in *" kafka "*)
  mkdir -p "$work/tansu"
  (cd "$work/tansu" && exec tansu broker --listener-url "tcp://127.0.0.1:$kafka" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka" --storage-engine sqlite://tansu.db \
    >"$work/tansu/log" 2>&1) &
  tansu_pid=$!; pids+=("$tansu_pid")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$kafka") 2>/dev/null && break; sleep 0.1; done
  tansu topic create "bench$$" --partitions 1 --broker "tcp://127.0.0.1:$kafka"
esac

# AMQP needs a queue bound, or every event is unroutable (503). rabbitmqadmin talks to the
# management plugin; enable it if it is off.
if ! rabbitmqadmin list exchanges >/dev/null 2>&1; then
  rabbitmq-plugins enable rabbitmq_management >/dev/null
  for _ in $(seq 100); do rabbitmqadmin list exchanges >/dev/null 2>&1 && break; sleep 0.2; done
fi
rabbitmqadmin declare exchange name=bench$$ type=topic durable=true >/dev/null
rabbitmqadmin declare queue name=bench$$ durable=true >/dev/null
rabbitmqadmin declare binding source=bench$$ destination=bench$$ routing_key='#' >/dev/null

printf 'requests=%s concurrency=%s body=1KiB threads=2\n' "$N" "$C"
# nats+journal: the nats sink with the dedup journal (restarts remember the ids; one more
# group-committed fsync per batch on the accepted path).
for sink in ${SINKS:-spool redis nats nats+journal amqp kafka http}; do
  port=$(free_port); admin=$(free_port)
  dedup="{ backend: memory }"
  [ "$sink" = nats+journal ] && dedup="{ journal: $work/journal/ }"
  cat > "$work/$sink.yaml" <<YAML
listen: [{ addr: "127.0.0.1:$port" }]
admin: 127.0.0.1:$admin
filters: filters/
dedup: $dedup
sinks:
$(sink_yaml "$sink")
pingora: { threads: 2, pid_file: $work/$sink.pid, upgrade_sock: $work/$sink.sock }
YAML
  "$bin" run -c "$work/$sink.yaml" --no-access-log 2>"$work/$sink.log" &
  pid=$!; pids+=("$pid")
  wait_http "http://127.0.0.1:$admin/healthz"
  before=$([ "$sink" = kafka ] && cpu_ticks "$tansu_pid" || echo 0)
  line=$("$load" --url "http://127.0.0.1:$port/webhook/github" --filter "$work/filters/github.yaml" \
    --requests "$N" --concurrency "$C" --pid "$pid" --label "$sink")
  if [ "$sink" = kafka ]; then
    # The broker's own CPU, beside the gateway's: Tansu shares the two cores.
    ticks=$(( $(cpu_ticks "$tansu_pid") - before ))
    line=$(printf '%s\tbroker_cpu_s_per_10k=%s' "$line" \
      "$(python3 -c "print(round($ticks / $(getconf CLK_TCK) / $N * 10000, 2))")")
  fi
  echo "$line"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

redis-cli DEL "bench:github:$$" >/dev/null
# Delete the JetStream stream through the JetStream API subject (no nats CLI needed).
exec 3<>/dev/tcp/127.0.0.1/4222
printf 'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.BENCH%s 0\r\n\r\nPING\r\n' "$$" >&3
timeout 1 head -c 300 <&3 >/dev/null || true
exec 3>&-
rabbitmqadmin delete queue name=bench$$ >/dev/null
rabbitmqadmin delete exchange name=bench$$ >/dev/null
