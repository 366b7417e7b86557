#!/usr/bin/env bash
# Userland instructions per request, counted by callgrind: a measure of CPU per request that
# does not drift with the machine (this VM's speed moves by up to 2x between sittings, which
# hides a 5% change in req/s). Bare Pingora is the reference, as in compare.sh.
#
#   bench/instructions.sh                       # this build: bare, flood, spool, redis, http
#   A=/tmp/portcullis-old B=target/release/portcullis bench/instructions.sh   # A/B two builds
#   N=3000 C=16 bench/instructions.sh
#
# Each target runs under `valgrind --tool=callgrind` with instrumentation off; after 1,000
# warm-up requests it is switched on for N requests (the project's load generator, pre-signed
# 1 KiB GitHub requests, the chain of compare.sh), then the counts are dumped. Every thread
# of the process is counted (the spool writer's userland included); the kernel is not.
# valgrind runs the SHA-256 of the HMAC without the CPU's SHA extensions, so "excl. SHA-256"
# leaves `sha2::sha256::compress256` out: natively it is a small share.
# Needs valgrind (apt-get install valgrind), nginx (the http sink's upstream) and the local Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-3000}
C=${C:-16}
cargo build --release --bins --quiet
load=target/release/portcullis-loadgen
bare=target/release/portcullis-bare
A=${A:-target/release/portcullis}
B=${B:-}
bench_begin "bench:instructions:$$"
chain_filter "$work/filters"
start_nginx upstream 1 "location / { return 202; }"
UPSTREAM_PORT=$NGINX_PORT

# $1 label, $2 port, $3 valgrind's pid, $4 admin port to wait for (or the port), loadgen args after
count() {
  local label=$1 port=$2 vpid=$3 ready=$4
  shift 4
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$ready") 2>/dev/null && break; sleep 0.1; done
  "$load" --url "http://127.0.0.1:$port/webhook/github" --filter "$work/filters/github.yaml" \
    --requests 1000 --concurrency "$C" --label warm "$@" >/dev/null
  callgrind_control -i on "$vpid" >/dev/null
  "$load" --url "http://127.0.0.1:$port/webhook/github" --filter "$work/filters/github.yaml" \
    --requests "$N" --concurrency "$C" --label "$label" "$@" | grep -o 'statuses=[^	]*' >"$work/$label.statuses"
  callgrind_control -d "$vpid" >/dev/null
  callgrind_control -i off "$vpid" >/dev/null
  kill "$vpid"; wait "$vpid" 2>/dev/null || true
  local f total sha
  f=$(ls "$work/cg-$label".*.1)
  total=$(awk '/^summary:/ {print $2}' "$f")
  sha=$(callgrind_annotate "$f" 2>/dev/null | awk '/compress256/ && !done {gsub(",","",$1); print $1; done=1}')
  printf '%s\t%s\t%s\t%s\n' "$label" "$((total / N))" "$(((total - ${sha:-0}) / N))" "$(cat "$work/$label.statuses")" | tee -a "$work/results.tsv"
}
vg() { valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg-$1.%p" "${@:2}" 2>>"$work/valgrind.log" & VG=$!; pids+=("$VG"); }

port=$(free_port)
vg bare "$bare" --listen "127.0.0.1:$port" --threads 2
count bare "$port" "$VG" "$port"
for v in A ${B:+B}; do
  bin=${!v}
  for sink in flood spool redis http; do
    case $sink in
      flood | spool) out="out: { type: spool, dir: $work/spool-$v/ }" ;;
      redis) out="out: { type: redis, url: \"redis://127.0.0.1:6379\", stream: \"bench:instructions:$$\", timeout: 5s }" ;;
      http) out="out: { type: http, url: \"http://127.0.0.1:$UPSTREAM_PORT/ingest\", timeout: 5s }" ;;
    esac
    gport=$(free_port) admin=$(free_port)
    cat >"$work/$v-$sink.yaml" <<YAML
listen: [{ addr: "127.0.0.1:$gport" }]
admin: 127.0.0.1:$admin
filters: filters/
sinks:
  $out
pingora: { threads: 2, pid_file: $work/$v-$sink.pid, upgrade_sock: $work/$v-$sink.sock }
YAML
    vg "$v-$sink" "$bin" run -c "$work/$v-$sink.yaml" --no-access-log
    extra=()
    [ "$sink" = flood ] && extra=(--invalid)
    count "$v-$sink" "$gport" "$VG" "$admin" "${extra[@]}"
  done
done

python3 - "$work/results.tsv" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    label, total, excl, statuses = line.rstrip("\n").split("\t")
    rows[label] = (int(total), int(excl), statuses)
bare = rows["bare"][1]
print("\n| target | instructions/request | excl. SHA-256 | / bare | statuses |")
print("|---|---|---|---|---|")
for label, (total, excl, st) in rows.items():
    print(f"| {label} | {total:,} | {excl:,} | {excl / bare:.2f} | {st} |")
if any(k.startswith("B-") for k in rows):
    print("\n| target | A excl. SHA | B excl. SHA | B / A |")
    print("|---|---|---|---|")
    for sink in ("flood", "spool", "redis", "http"):
        a, b = rows["A-" + sink][1], rows["B-" + sink][1]
        print(f"| {sink} | {a:,} | {b:,} | {b / a:.3f} |")
PY
