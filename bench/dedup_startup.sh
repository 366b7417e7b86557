#!/usr/bin/env bash
# Start-up time with N remembered ids: how long a node takes, before it serves, to read back
# the ids accepted within their TTL from a spool sink's segments (1 KiB bodies, what the
# default config keeps) and from the dedup journal (what a queue sink keeps), and its RSS then.
# Prints the gateway's own measurement (the "dedup: remembered" log line) for each.
#
#   bench/dedup_startup.sh          # N=1000000
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=${N:-1000000}
cargo build --release --bins --quiet
bin=$PWD/target/release/portcullis
work=$(mktemp -d)
gw=
cleanup() { [ -n "$gw" ] && kill "$gw" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/filters" "$work/spool" "$work/journal"
printf 'name: github\npreset: github\nsecrets: ["bench-secret"]\n' > "$work/filters/github.yaml"

python3 - "$work" "$N" <<'PY'
import datetime, json, sys
work, n = sys.argv[1], int(sys.argv[2])
now = datetime.datetime.now(datetime.timezone.utc)
at = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
body = json.dumps({"action": "opened", "pad": "x" * 980})
expires = int(now.timestamp() * 1000) + 3600_000
with open(f"{work}/spool/00000000000000000001.jsonl", "w") as spool, \
     open(f"{work}/journal/00000000000000000001.jsonl", "w") as journal:
    for i in range(n):
        eid = f"a1b2c3d4-e5f6-4711-8899-{i:012d}"
        spool.write(json.dumps({"provider": "github", "event_id": eid, "event_type": "push",
            "received_at": at, "source_ip": "192.30.252.1", "verified": True,
            "headers": {"content-type": "application/json"}, "body": body}) + "\n")
        journal.write(json.dumps({"provider": "github", "event_id": eid, "expires": expires}) + "\n")
PY

run() { # $1: sink line, $2: dedup line
  local port admin
  port=$(free_port); admin=$(free_port)
  cat > "$work/portcullis.yaml" <<YAML
listen:
  - addr: 127.0.0.1:$port
admin: 127.0.0.1:$admin
filters: filters/
dedup: $2
sinks:
$1
pingora: { threads: 2 }
YAML
  local started; started=$(date +%s%N)
  "$bin" run -c "$work/portcullis.yaml" --no-access-log 2> "$work/log" & gw=$!
  wait_http "http://127.0.0.1:$admin/healthz"
  local ready=$(( ($(date +%s%N) - started) / 1000000 ))
  local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$gw/status")
  echo "$3: $(grep -o 'ids=[0-9]*.*ms=[0-9]*' "$work/log" | head -1), healthy after ${ready} ms, RSS $((rss / 1024)) MiB"
  kill "$gw"; wait "$gw" 2>/dev/null || true; gw=
}
echo "N=$N ids, spool $(du -h "$work/spool" | cut -f1), journal $(du -h "$work/journal" | cut -f1)"
run "  spool: { type: spool, dir: spool/ }" "{ backend: memory, max_entries: $((N + 1000)) }" "spool segments"
mv "$work/spool" "$work/spool.read"; mkdir "$work/spool"
run "  spool: { type: spool, dir: spool/ }" "{ backend: memory, max_entries: $((N + 1000)), journal: journal/ }" "journal"
