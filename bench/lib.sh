# Helpers the bench scripts share (sourced, not run).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits up to 10 s for an HTTP 2xx from $1.
wait_http() { for _ in $(seq 200); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
# Waits up to 10 s for a listener on 127.0.0.1:$1.
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; return 1; }
# Writes $1/github.yaml: the full chain the comparisons measure (allowlist, a rate limit sized
# not to trigger, size and type checks, signature, require_fields, dedup).
chain_filter() {
  mkdir -p "$1"
  cat > "$1/github.yaml" <<YAML
name: github
preset: github
secrets: ["bench-secret"]
allow: ["127.0.0.0/8"]
rate_limit: { per_second: 10000000, per_ip_per_second: 10000000 }
max_body: 64KiB
content_types: [application/json]
require_fields: [action]
YAML
}
# Starts a gateway on ephemeral ports with `filters/` of $work: $1 its name, $2 its one sink
# line (`out: { … }`), $3 more top-level lines. Uses $bin, $work, $THREADS (and, for a TLS
# listener, $TLS_CERT and $TLS_KEY) and appends to pids; sets GW_PORT, GW_ADMIN and GW_PID.
start_gateway() {
  local port admin tls=""
  port=$(free_port); admin=$(free_port)
  if [ -n "${TLS_CERT:-}" ]; then tls=", tls: { cert: $TLS_CERT, key: $TLS_KEY }"; fi
  cat > "$work/$1.yaml" <<YAML
listen: [{ addr: "127.0.0.1:$port"$tls }]
admin: 127.0.0.1:$admin
filters: filters/
sinks:
  $2
pingora: { threads: $THREADS, pid_file: $work/$1.pid, upgrade_sock: $work/$1.sock }
${3:-}
YAML
  "$bin" run -c "$work/$1.yaml" --no-access-log 2>"$work/$1.log" &
  GW_PID=$!
  pids+=("$GW_PID")
  wait_port "$admin"
  GW_PORT=$port GW_ADMIN=$admin
}
# Starts an nginx in $work/nginx-$1: $2 workers, $3 the server block's body, $4 more `listen`
# parameters (e.g. `ssl`). Its `sink` upstream is 127.0.0.1:$UPSTREAM_PORT. Appends to
# nginx_dirs; sets NGINX_PORT and NGINX_PIDS (the workers, comma-separated).
start_nginx() {
  local dir="$work/nginx-$1" port
  port=$(free_port)
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<NGINX
worker_processes $2;
error_log $dir/error.log;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir;
  proxy_temp_path $dir;
  client_max_body_size 1m;
  client_body_buffer_size 64k;
  # Pingora keeps a connection for any number of requests; nginx's default closes it after 1000.
  keepalive_requests 1000000;
  upstream sink { server 127.0.0.1:${UPSTREAM_PORT:-1}; keepalive 128; }
  server {
    listen 127.0.0.1:$port reuseport ${4:-};
    $3
  }
}
NGINX
  nginx -c "$dir/nginx.conf"
  nginx_dirs+=("$dir")
  wait_port "$port"
  NGINX_PORT=$port
  NGINX_PIDS=$(pgrep -P "$(cat "$dir/nginx.pid")" | paste -sd, -)
}
# Begins a run: $work (a temporary directory), the pids and nginx_dirs that start_gateway and
# start_nginx append to, and a trap that on exit stops them, deletes the Redis keys given as
# arguments and removes $work.
bench_begin() {
  work=$(mktemp -d)
  pids=()
  nginx_dirs=()
  bench_redis_keys=("$@")
  trap bench_end EXIT
}
bench_end() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "${nginx_dirs[@]}"; do kill "$(cat "$d/nginx.pid" 2>/dev/null)" 2>/dev/null || true; done
  for k in "${bench_redis_keys[@]}"; do redis-cli DEL "$k" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
