#!/usr/bin/env bash
# Throughput and latency of heliosd, nginx and HAProxy as HTTP/1.1 reverse
# proxies in front of the same hx_backend, measured with wrk in one run.
#
# Each proxy runs one worker/thread pinned to PROXY_CPU, with keep-alive to the
# upstream and access logging off. The backend and wrk share LOAD_CPU, so the
# proxy is the only thing on its core. The three proxies are measured in
# alternating rounds (heliosd, nginx, haproxy, heliosd, ...) so slow drift of
# the machine hits all of them alike; the table reports the median of rounds.
#
# Usage: bench/proxy.sh            (see bench/README.md)
# Env:   DURATION=10s CONNS=50 ROUNDS=3 WARMUP=2s THREADS=1 REQ_PATH=/
#        PROXY_CPU=0 LOAD_CPU=1 BUILD_DIR=build NGINX=/usr/sbin/nginx
#        HAPROXY=/usr/sbin/haproxy OUT_DIR=bench/results
#        MAX_OTHER_LOAD=10 RETRIES=2 IDLE_WAIT=60 (see "Other work" below)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}
REQ_PATH=${REQ_PATH:-/}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
NGINX=${NGINX:-/usr/sbin/nginx}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
OUT_DIR=${OUT_DIR:-$here/results}
MAX_OTHER_LOAD=${MAX_OTHER_LOAD:-10}
RETRIES=${RETRIES:-2}
IDLE_WAIT=${IDLE_WAIT:-60}

HELIOSD=$BUILD_DIR/heliosd
BACKEND=$BUILD_DIR/hx_backend
PROXIES=(heliosd nginx haproxy)

die() { echo "proxy.sh: $*" >&2; exit 1; }

# "10s", "2m", "500ms" or a bare number of seconds -> whole seconds (>= 1).
to_seconds() {
    case $1 in
    *ms) echo $(( (${1%ms} + 999) / 1000 )) ;;
    *s) echo "${1%s}" ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *h) echo $(( ${1%h} * 3600 )) ;;
    *) echo "$1" ;;
    esac
}

for bin in "$HELIOSD" "$BACKEND" "$NGINX" "$HAPROXY"; do
    [ -x "$bin" ] || die "$bin is not executable (build heliosd first: cmake --build build)"
done
for tool in wrk taskset curl python3 timeout; do
    command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
done
[ "$ROUNDS" -ge 1 ] || die "ROUNDS must be >= 1"
dur_s=$(to_seconds "$DURATION")
warm_s=$(to_seconds "$WARMUP")

# Which heliosd: the tree's commit (+dirty if core/, modules/ or plugins-sdk/
# differ from it) and when the binary was built.
heliosd_build="commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$root" diff --quiet HEAD -- core modules plugins-sdk 2>/dev/null || heliosd_build="$heliosd_build+dirty"
heliosd_build="$heliosd_build, binary built $(date -u -r "$HELIOSD" '+%F %T UTC')"

tmp=$(mktemp -d /tmp/heliosd-bench.XXXXXX)
pids=()
declare -A pid=()

wrk_pid=
cleanup() {
    local p_
    if [ -n "$wrk_pid" ]; then kill -TERM "$wrk_pid" 2>/dev/null || true; fi
    for p_ in "${pids[@]}"; do kill -TERM "$p_" 2>/dev/null || true; done
    for _ in $(seq 20); do
        local alive=0
        for p_ in "${pids[@]}"; do kill -0 "$p_" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p_ in "${pids[@]}"; do kill -KILL "$p_" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Measure a private copy of heliosd and its modules: build/ may be rebuilt while
# the benchmark runs, and every run must use the same binary.
mkdir -p "$tmp/heliosd-bin/modules"
cp "$HELIOSD" "$tmp/heliosd-bin/heliosd"
cp "$BUILD_DIR"/modules/*.so "$tmp/heliosd-bin/modules/"
HELIOSD=$tmp/heliosd-bin/heliosd
HELIOSD_ARGS=(-m "$tmp/heliosd-bin/modules")
"$HELIOSD" -V >/dev/null || die "the copy of heliosd in $tmp does not run"

# Ask the kernel for free ports on 127.0.0.1 (the sockets are closed again;
# a race with another process grabbing one is possible but unlikely).
read -r port_backend port_heliosd port_nginx port_haproxy < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
declare -A port=([heliosd]=$port_heliosd [nginx]=$port_nginx [haproxy]=$port_haproxy)

# --- configurations -------------------------------------------------------

cat >"$tmp/heliosd.yaml" <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$port_heliosd}]
upstreams:
  app:
    backends: [{address: 127.0.0.1:$port_backend}]
    keepalive: {max_idle: 64, idle_timeout: 60s}
routes:
  - {match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: off}
EOF

# keepalive_requests is raised on both sides because heliosd and HAProxy have
# no per-connection request cap; nginx's default (1000) would make it alone
# reconnect every 1000 requests.
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid $tmp/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/client_body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream b {
        server 127.0.0.1:$port_backend;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$port_nginx;
        location / {
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

cat >"$tmp/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 75s
frontend fe
    bind 127.0.0.1:$port_haproxy
    default_backend be
backend be
    server s1 127.0.0.1:$port_backend
EOF

# --- processes ------------------------------------------------------------

# start NAME CPU CMD... : runs CMD pinned to CPU, logs to $tmp/NAME.log.
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$tmp/$name.log" 2>&1 &
    pids+=("$!")
    pid[$name]=$!
}

start backend "$LOAD_CPU" "$BACKEND" --listen "127.0.0.1:$port_backend" --name bench --threads 1
for _ in $(seq 50); do grep -qs '^ready' "$tmp/backend.log" && break; sleep 0.1; done
grep -q '^ready' "$tmp/backend.log" || die "hx_backend did not become ready: $(cat "$tmp/backend.log")"

"$NGINX" -t -q -e stderr -p "$tmp/nginx" -c "$tmp/nginx.conf" || die "nginx rejected its config"
start heliosd "$PROXY_CPU" "$HELIOSD" -c "$tmp/heliosd.yaml" "${HELIOSD_ARGS[@]}"
start nginx "$PROXY_CPU" "$NGINX" -e stderr -p "$tmp/nginx" -c "$tmp/nginx.conf"
start haproxy "$PROXY_CPU" "$HAPROXY" -db -f "$tmp/haproxy.cfg"

url() { echo "http://127.0.0.1:${port[$1]}$REQ_PATH"; }

expected=$tmp/expected.body
curl -sS --max-time 5 -o "$expected" "http://127.0.0.1:$port_backend$REQ_PATH" \
    || die "backend does not answer $REQ_PATH"

# Each proxy must answer 200 with exactly the backend's body before it is measured.
for p in "${PROXIES[@]}"; do
    ok=0
    for _ in $(seq 50); do
        code=$(curl -sS --max-time 2 -o "$tmp/$p.body" -w '%{http_code}' "$(url "$p")" 2>/dev/null) || code=000
        if [ "$code" = 200 ] && cmp -s "$expected" "$tmp/$p.body"; then ok=1; break; fi
        sleep 0.1
    done
    [ $ok = 1 ] || die "$p did not return 200 with the backend's body on $(url "$p") (last status $code); log: $(tail -5 "$tmp/$p.log")"
done

# --- measurement ----------------------------------------------------------

# CPU time (user+system clock ticks, all threads) used so far by process $1;
# "0" once it has gone. The comm field is stripped first: it may hold spaces.
proc_ticks() { { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || echo; } | awk '{print $12 + $13 + 0}'; }
# System (kernel) part of the same.
proc_sys_ticks() { { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || echo; } | awk '{print $13 + 0}'; }
# "busy total" clock ticks of CPU $1 since boot, from /proc/stat.
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat
}

busy_pct() { echo "$1 $2" | awk '{ t = $4 - $2; print (t > 0 ? int(100 * ($3 - $1) / t) : 0) }'; }

# Snapshot for one round: proxy ticks, backend ticks, "busy total" for the
# proxy CPU and for the load CPU, then the proxy's system ticks.
snapshot() {
    echo "$(proc_ticks "$1") $(proc_ticks "${pid[backend]}") $(cpu_ticks "$PROXY_CPU")" \
        "$(cpu_ticks "$LOAD_CPU") $(proc_sys_ticks "$1")"
}

# other_load BEFORE AFTER WRK_CPU_SECONDS: percent of each CPU used by anything
# but the proxy (CPU PROXY_CPU) or hx_backend and wrk (CPU LOAD_CPU) between two
# snapshots; prints "proxy-cpu-% load-cpu-%".
other_load() {
    echo "$1 $2 $3" | awk -v clk="$clk" '{
        t0 = $11 - $4; t1 = $13 - $6
        o0 = t0 > 0 ? 100 * (($10 - $3) - ($8 - $1)) / t0 : 0
        o1 = t1 > 0 ? 100 * (($12 - $5) - ($9 - $2) - $15 * clk) / t1 : 0
        printf "%d %d\n", (o0 < 0 ? 0 : o0), (o1 < 0 ? 0 : o1) }'
}

# Wait (at most IDLE_WAIT seconds) until both CPUs are at most MAX_OTHER_LOAD %
# busy over one second; leaves a description in idle_state.
wait_idle() {
    local deadline=$((SECONDS + IDLE_WAIT)) b0 b1 a0 a1 u0 u1
    while :; do
        b0=$(cpu_ticks "$PROXY_CPU"); b1=$(cpu_ticks "$LOAD_CPU"); sleep 1
        a0=$(cpu_ticks "$PROXY_CPU"); a1=$(cpu_ticks "$LOAD_CPU")
        u0=$(busy_pct "$b0" "$a0"); u1=$(busy_pct "$b1" "$a1")
        idle_state="CPU $PROXY_CPU $u0% busy, CPU $LOAD_CPU $u1% busy"
        [ "$u0" -le "$MAX_OTHER_LOAD" ] && [ "$u1" -le "$MAX_OTHER_LOAD" ] && return 0
        [ $SECONDS -ge $deadline ] && return 1
    done
}

# wrk_run PROXY SECONDS OUTFILE: wrk's report goes to OUTFILE, its CPU seconds
# (user + system, from bash's time) to OUTFILE.cpu.
# wrk runs in the background and is waited for, so that a signal to this script
# is handled at once (bash defers traps while a foreground child runs).
wrk_run() {
    local TIMEFORMAT='%3U %3S'
    { time {
        timeout $(($2 + 30)) taskset -c "$LOAD_CPU" \
            wrk -t"$THREADS" -c"$CONNS" -d"$2s" --latency "$(url "$1")" >"$3" 2>&1 &
        wrk_pid=$!
        wait "$wrk_pid" || true
    }; } 2>"$3.time"
    wrk_pid=
    awk '{ print $1 + $2 }' "$3.time" >"$3.cpu"
}

clk=$(getconf CLK_TCK)
# Other work on the machine distorts everything: wait for quiet first, and
# repeat a round during which something else took more than MAX_OTHER_LOAD %
# of either CPU (at most RETRIES times; discarded rounds are still reported).
if wait_idle; then
    preflight="$idle_state in the second before the run"
else
    preflight="$idle_state in the second before the run (still busy after waiting ${IDLE_WAIT}s)"
    echo "!! the machine is not idle ($idle_state); results will be noisy" >&2
fi
echo "# $preflight" >&2

echo "# heliosd/nginx/haproxy via wrk -t$THREADS -c$CONNS -d$DURATION --latency, path $REQ_PATH, $ROUNDS rounds" >&2
declare -A dead=()
results=$tmp/results.tsv
: >"$results"
for p in "${PROXIES[@]}"; do wrk_run "$p" "$warm_s" "$tmp/$p.warmup"; done
for r in $(seq "$ROUNDS"); do
    for p in "${PROXIES[@]}"; do
        [ -n "${dead[$p]:-}" ] && continue
        for attempt in $(seq 0 "$RETRIES"); do
            out=$tmp/$p.round$r.$attempt
            before=$(snapshot "${pid[$p]}")
            wrk_run "$p" "$dur_s" "$out"
            after=$(snapshot "${pid[$p]}")
            read -r other0 other1 < <(other_load "$before" "$after" "$(cat "$out.cpu")")
            status=ok
            if ! kill -0 "${pid[$p]}" 2>/dev/null; then
                dead[$p]=1
                status=died
                echo "!! $p exited during round $r; log tail:" >&2
                tail -20 "$tmp/$p.log" >&2
            elif [ "$other0" -gt "$MAX_OTHER_LOAD" ] || [ "$other1" -gt "$MAX_OTHER_LOAD" ]; then
                status=loaded
                [ "$attempt" -lt "$RETRIES" ] && status=discarded
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$r" "$status" "$out" "$before" "$after" \
                "$(cat "$out.cpu")" "$other0 $other1" >>"$results"
            awk -v p="$p" -v r="$r" -v s="$status" -v o="other load $other0%/$other1%" \
                '/Requests\/sec/ {printf "round %s %-8s %10s req/s  %s  %s\n", r, p, $2, o, s}' "$out" >&2
            [ "$status" = discarded ] || break
            wait_idle || true
        done
    done
done

# Proxies that logged anything at warn level or above during the run.
logs_note=$tmp/logs.md
: >"$logs_note"
for p in "${PROXIES[@]}"; do
    if [ -s "$tmp/$p.log" ]; then
        n=$(grep -cv '^\s*$' "$tmp/$p.log" || true)
        { echo; echo "$p log ($n lines, last 10):"; echo '```'; tail -10 "$tmp/$p.log"; echo '```'; } >>"$logs_note"
    fi
done

mkdir -p "$OUT_DIR"
stamp=$(date +%Y%m%d-%H%M%S)
md=$OUT_DIR/proxy-$stamp.md

export BENCH_PREFLIGHT=$preflight BENCH_MAX_OTHER_LOAD=$MAX_OTHER_LOAD
BENCH_CLK_TCK=$(getconf CLK_TCK)
export BENCH_CLK_TCK
export BENCH_RESULTS=$results BENCH_MD=$md BENCH_LOGS=$logs_note
export BENCH_CMD="DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS WARMUP=$WARMUP THREADS=$THREADS REQ_PATH=$REQ_PATH MAX_OTHER_LOAD=$MAX_OTHER_LOAD RETRIES=$RETRIES bench/proxy.sh"
export BENCH_WRK="taskset -c $LOAD_CPU wrk -t$THREADS -c$CONNS -d$DURATION --latency http://127.0.0.1:PORT$REQ_PATH"
export BENCH_PINNING="proxy on CPU $PROXY_CPU; hx_backend (1 thread) and wrk on CPU $LOAD_CPU"
BENCH_VERSIONS="$("$HELIOSD" -V 2>&1 | head -1) ($heliosd_build); $("$NGINX" -v 2>&1); $("$HAPROXY" -v 2>&1 | head -1 | cut -d' ' -f1-3)"
export BENCH_VERSIONS
python3 "$here/wrk_table.py"
echo "wrote $md" >&2
