# shellcheck shell=bash
# bench/lib.sh - what every bench script shares. Sourced, never run:
#
#     here=$(cd "$(dirname "$0")" && pwd)
#     . "$here/lib.sh"
#
# The rules the helpers keep, so a benchmark never leaves anything behind on a
# shared machine: everything listens on 127.0.0.1 on ports the kernel hands
# out; every process goes through bench_start (or into `pids`), so
# bench_cleanup stops it on exit, Ctrl-C or TERM; every wait is bounded.
#
# Sets: root (the repository), BENCH_NAME (the script's name, for messages),
# clk (clock ticks per second). bench_setup sets tmp, pids and pid[NAME].
# Reads, where a helper says so: BUILD_DIR, LOAD_CPU, PROXY_CPU, LAYOUT, CONNS,
# WRK_THREADS (default 1), CLIENT (wrk or heliosd), IDLE_WAIT,
# MAX_OTHER_LOAD, NGINX, OUT_DIR.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=$(basename "$0")
clk=$(getconf CLK_TCK)

# die MESSAGE: prints "SCRIPT: MESSAGE" on stderr and exits 1.
die() {
    echo "$BENCH_NAME: $*" >&2
    exit 1
}

# ---- checks -----------------------------------------------------------------

# need_exec FILE...: each FILE exists and is executable.
need_exec() {
    local f
    for f; do
        [ -x "$f" ] || die "$f is not executable (build first: cmake --build ${BUILD_DIR:-build})"
    done
}

# need_files FILE...: each FILE exists (libraries, modules).
need_files() {
    local f
    for f; do
        [ -e "$f" ] || die "$f is missing (build first: cmake --build ${BUILD_DIR:-build})"
    done
}

# need_tools COMMAND...: each is a command (a name in PATH, or a path).
need_tools() {
    local t
    for t; do
        command -v "$t" >/dev/null || die "'$t' not found in PATH"
    done
}

# refuse_sanitizer_build: dies when BUILD_DIR is an ASan build (its numbers
# mean nothing).
refuse_sanitizer_build() {
    if grep -q 'HELIOS_SANITIZE:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null; then
        die "$BUILD_DIR is a sanitizer build: its numbers mean nothing"
    fi
}

# use_build_dir: HELIOSD, BACKEND and MODULES (the -m directory) from BUILD_DIR.
use_build_dir() {
    HELIOSD=$BUILD_DIR/heliosd
    BACKEND=$BUILD_DIR/hx_backend
    MODULES=$BUILD_DIR/modules
}

# to_seconds DURATION: "10s", "2m", "1h", "500ms" or a bare number of
# seconds -> whole seconds (milliseconds round up).
to_seconds() {
    case $1 in
    *ms) echo $(((${1%ms} + 999) / 1000)) ;;
    *s) echo "${1%s}" ;;
    *m) echo $((${1%m} * 60)) ;;
    *h) echo $((${1%h} * 3600)) ;;
    *) echo "$1" ;;
    esac
}

# ---- what is measured ------------------------------------------------------------

# bench_commit: the tree's short commit, or "unknown".
bench_commit() {
    git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown
}

# bench_heliosd_build BINARY: "commit abc1234[+dirty], binary built DATE",
# +dirty when core/, modules/ or plugins-sdk/ differ from the commit.
bench_heliosd_build() {
    local s
    s="commit $(bench_commit)"
    git -C "$root" diff --quiet HEAD -- core modules plugins-sdk 2>/dev/null || s="$s+dirty"
    echo "$s, binary built $(date -u -r "$1" '+%F %T UTC')"
}

# private_heliosd: copies heliosd, hx_backend and BUILD_DIR/modules into
# $tmp/bin and points HELIOSD, BACKEND and MODULES at the copies: build/ may
# be rebuilt while a benchmark runs, and every run must measure one binary.
private_heliosd() {
    mkdir -p "$tmp/bin/modules"
    cp "$BUILD_DIR/heliosd" "$BUILD_DIR/hx_backend" "$tmp/bin/"
    cp "$BUILD_DIR"/modules/*.so "$tmp/bin/modules/"
    HELIOSD=$tmp/bin/heliosd
    BACKEND=$tmp/bin/hx_backend
    MODULES=$tmp/bin/modules
    "$HELIOSD" -V >/dev/null || die "the copy of heliosd in $tmp/bin does not run"
}

# ---- temporary directory, processes, cleanup ----------------------------------------

# bench_setup PREFIX: a temporary directory $tmp (/tmp/PREFIX.XXXXXX) and the
# traps that run bench_cleanup on exit and turn INT/TERM into exit 130.
bench_setup() {
    tmp=$(mktemp -d "/tmp/$1.XXXXXX")
    pids=()
    # shellcheck disable=SC2034 # filled by bench_start, read by the scripts
    declare -gA pid=()
    bench_child=
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# alive PID: the process exists and is not a zombie.
alive() {
    local s
    s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$s" ] && [ "${s%% *}" != Z ]
}

# wait_exit PID SECONDS: polls until PID has exited; 1 if it is still alive.
wait_exit() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        alive "$1" || return 0
        sleep 0.1
    done
    ! alive "$1"
}

# bench_cleanup: stops the client being waited for, sends TERM to every
# process in pids, gives them 2 s, KILLs what is left, removes $tmp.
bench_cleanup() {
    local p left i
    if [ -n "${bench_child:-}" ]; then kill -TERM "$bench_child" 2>/dev/null || true; fi
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for ((i = 0; i < 20; i++)); do
        left=0
        for p in "${pids[@]}"; do alive "$p" && left=1; done
        [ $left = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}

# bench_start NAME CPU CMD...: runs CMD in the background, pinned to CPU
# (empty: not pinned), stdout and stderr to $tmp/NAME.log (NAME may hold a
# subdirectory of $tmp). Its pid goes into pids and pid[NAME].
bench_start() {
    local name=$1 cpu=$2
    shift 2
    if [ -n "$cpu" ]; then
        taskset -c "$cpu" "$@" >"$tmp/$name.log" 2>&1 &
    else
        "$@" >"$tmp/$name.log" 2>&1 &
    fi
    pids+=("$!")
    # shellcheck disable=SC2034 # read by the scripts
    pid[$name]=$!
}

# bench_run CMD...: runs a client in the background and waits for it, so a
# signal to the script is handled at once (bash defers traps while a
# foreground child runs); returns its status.
bench_run() {
    local rc=0
    "$@" &
    bench_child=$!
    wait "$bench_child" || rc=$?
    bench_child=
    return $rc
}

# ---- ports and readiness -----------------------------------------------------------

# free_ports N: N distinct ports free on 127.0.0.1 right now, on one line (the
# sockets are closed again; another process may take one, but rarely does).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

free_port() { free_ports 1; }

# wait_ready NAME: waits (at most 5 s) for the "ready" line hx_backend prints
# in $tmp/NAME.log.
wait_ready() {
    local i
    for ((i = 0; i < 50; i++)); do
        grep -qs '^ready' "$tmp/$1.log" && return 0
        sleep 0.1
    done
    die "$1 did not become ready: $(cat "$tmp/$1.log")"
}

# wait_http URL [CURL_ARGS...]: waits (at most 10 s) until URL gives any HTTP
# answer.
wait_http() {
    local url=$1 i
    shift
    for ((i = 0; i < 200; i++)); do
        curl -s -o /dev/null --max-time 2 "$@" "$url" && return 0
        sleep 0.05
    done
    die "nothing answers on $url"
}

# wait_http_ok URL [EXPECTED_BODY_FILE]: waits (at most ~10 s) until URL
# answers 200, with exactly the bytes of EXPECTED_BODY_FILE when given.
# Returns 1 if it never does; last_code holds the last status (000: none).
wait_http_ok() {
    local url=$1 expected=${2:-} i
    for ((i = 0; i < 100; i++)); do
        last_code=$(curl -sS --max-time 2 -o "$tmp/answer.body" -w '%{http_code}' "$url" 2>/dev/null) ||
            last_code=000
        if [ "$last_code" = 200 ] && { [ -z "$expected" ] || cmp -s "$expected" "$tmp/answer.body"; }; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# start_backend NAME CPU PORT ARGS...: hx_backend (BACKEND) on 127.0.0.1:PORT
# with ARGS (--name, --threads), started as bench_start NAME, waited for.
start_backend() {
    local name=$1 cpu=$2 port=$3
    shift 3
    bench_start "$name" "$cpu" "$BACKEND" --listen "127.0.0.1:$port" "$@"
    wait_ready "$name"
}

# static_proxy_conf WORKERS PORT BACKEND_PORT: a heliosd configuration
# answering /static itself (static_response, "ok") and proxying everything
# else to hx_backend on BACKEND_PORT (keep-alive), access log off.
static_proxy_conf() {
    cat <<EOF
workers: $1
listeners: [{address: 127.0.0.1:$2, backlog: 4096}]
upstreams:
  app:
    backends: [{address: 127.0.0.1:$3}]
    keepalive: {max_idle: 64, idle_timeout: 60s}
routes:
  - match: {path: /static}
    handler: {module: static_response, config: {body: "ok\n"}}
  - {match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: off}
EOF
}

# start_heliosd NAME CPU CONFIG: heliosd (HELIOSD) on CONFIG (a file or a
# directory) with -m MODULES, started as bench_start NAME; not waited for.
start_heliosd() {
    bench_start "$1" "$2" "$HELIOSD" -c "$3" -m "$MODULES"
}

# nginx_conf_head DIR WORKER_CONNECTIONS: the start of an nginx.conf every
# script shares: one worker, no master, no daemon, errors to stderr, the pid
# and temp files under DIR, access log off, no cap on requests per client
# connection. Ends inside `http {`: the caller writes the rest and the `}`.
nginx_conf_head() {
    cat <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid $1/nginx.pid;
events { worker_connections $2; }
http {
    access_log off;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
EOF
}

# start_nginx NAME CPU CONF PREFIX: checks CONF with nginx -t, then runs
# NGINX on it with prefix PREFIX, as bench_start NAME; not waited for.
start_nginx() {
    local name=$1 cpu=$2 conf=$3 prefix=$4
    mkdir -p "$prefix"
    "$NGINX" -t -q -e stderr -p "$prefix" -c "$conf" 2>"$tmp/$name.check" ||
        die "nginx rejected $conf: $(cat "$tmp/$name.check")"
    bench_start "$name" "$cpu" "$NGINX" -e stderr -p "$prefix" -c "$conf"
}

# ---- load ------------------------------------------------------------------------

# wrk_report DURATION URL [WRK_ARGS...]: wrk's report of one run of
# -tWRK_THREADS -cCONNS pinned to LOAD_CPU, bounded to DURATION + 30 s.
wrk_report() {
    local dur=$1 url=$2
    shift 2
    timeout $(($(to_seconds "$dur") + 30)) taskset -c "$LOAD_CPU" \
        wrk -t"${WRK_THREADS:-1}" -c"$CONNS" -d"$dur" "$@" "$url" 2>/dev/null
}

# wrk_rps: the Requests/sec of the wrk report on stdin.
wrk_rps() {
    sed -n 's/^Requests\/sec:[[:space:]]*//p'
}

# wrk_cpu_round DURATION URL PID [WRK_ARGS...] -> "REQ_PER_S CPU_US_PER_REQUEST":
# wrk's req/s, and the CPU time PID used meanwhile divided by the requests wrk
# completed (less sensitive than req/s to other load on a shared machine).
wrk_cpu_round() {
    local c0 c1 out
    c0=$(proc_cpu_us "$3")
    out=$(wrk_report "$1" "$2" "${@:4}")
    c1=$(proc_cpu_us "$3")
    awk -v c="$((c1 - c0))" '
        /^Requests\/sec:/ {rps = $2}
        / requests in / {n = $1}
        END {if (rps && n) printf "%s %.2f\n", rps, c / n}' <<<"$out"
}

# wrk_timed OUT SECONDS URL [WRK_ARGS...]: like wrk_report, with the report in
# OUT and wrk's own CPU seconds (user + system) in OUT.cpu. wrk runs in the
# background and is waited for, so a signal to the script is handled at once.
wrk_timed() {
    local out=$1 secs=$2 url=$3 TIMEFORMAT='%3U %3S'
    shift 3
    { time {
        timeout $((secs + 30)) taskset -c "$LOAD_CPU" \
            wrk -t"${WRK_THREADS:-1}" -c"$CONNS" -d"${secs}s" "$@" "$url" >"$out" 2>&1 &
        bench_child=$!
        wait "$bench_child" || true
    }; } 2>"$out.time"
    bench_child=
    awk '{ print $1 + $2 }' "$out.time" >"$out.cpu"
}

# ---- the client: wrk or heliosd bench ------------------------------------------------

# client_check: CLIENT is wrk (the default) or heliosd (`heliosd bench`, from
# the bench module in MODULES), and is there. wrk stays the default and the
# cross-check; bench/client.sh compares the two on the same target.
client_check() {
    case ${CLIENT:=wrk} in
    wrk) need_tools wrk ;;
    heliosd)
        need_exec "$HELIOSD"
        need_files "$MODULES/bench.so"
        ;;
    *) die "CLIENT=$CLIENT: expected wrk or heliosd" ;;
    esac
}

# client_name: "wrk" or "heliosd bench", for messages.
client_name() {
    if [ "${CLIENT:-wrk}" = heliosd ]; then echo "heliosd bench"; else echo wrk; fi
}

# client_desc URL: the client's command line, for the result files.
client_desc() {
    if [ "${CLIENT:-wrk}" = heliosd ]; then
        echo "taskset -c $LOAD_CPU heliosd bench $1 -c$CONNS -t${WRK_THREADS:-1} -d${DURATION:-10s} --warmup 0 --json"
    else
        echo "taskset -c $LOAD_CPU wrk -t${WRK_THREADS:-1} -c$CONNS -d${DURATION:-10s} --latency $1"
    fi
}

# hb_report SECONDS URL [ARGS...]: the --json document of one heliosd bench
# run of -cCONNS -tWRK_THREADS for SECONDS (no warm-up: like wrk), pinned to
# LOAD_CPU, bounded to SECONDS + 30 s. ARGS are heliosd bench options.
hb_report() {
    local secs=$1 url=$2
    shift 2
    timeout $((secs + 30)) taskset -c "$LOAD_CPU" "$HELIOSD" bench -m "$MODULES" "$url" --json \
        --warmup 0 -d "$secs" -c "$CONNS" -t "${WRK_THREADS:-1}" "$@" 2>/dev/null
}

# json_get KEY[.KEY...]: a field of the JSON document on stdin.
json_get() {
    python3 -c 'import json, sys
d = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    d = d[k]
print(d)' "$1"
}

# client_rps DURATION URL: the req/s of one run of CLIENT against URL.
client_rps() {
    if [ "${CLIENT:-wrk}" = heliosd ]; then
        hb_report "$(to_seconds "$1")" "$2" | json_get requests_per_s
    else
        wrk_report "$1" "$2" | wrk_rps
    fi
}

# client_timed OUT SECONDS URL [WRK_ARGS...]: like wrk_timed, with CLIENT:
# OUT is wrk's report or heliosd bench's JSON (which gets no WRK_ARGS), and
# OUT.cpu the client's CPU seconds. bench/wrk_table.py reads either.
client_timed() {
    local out=$1 secs=$2 url=$3 TIMEFORMAT='%3U %3S'
    shift 3
    if [ "${CLIENT:-wrk}" != heliosd ]; then
        wrk_timed "$out" "$secs" "$url" "$@"
        return
    fi
    { time {
        hb_report "$secs" "$url" >"$out" &
        bench_child=$!
        wait "$bench_child" || true
    }; } 2>"$out.time"
    bench_child=
    awk '{ print $1 + $2 }' "$out.time" >"$out.cpu"
}

# first_line: the first line of stdin. It reads all of it: head -1 exits
# early, and under pipefail the writer's SIGPIPE then fails the pipeline.
first_line() { sed -n 1p; }

# ---- numbers ----------------------------------------------------------------------

# median VALUES...: the median (the mean of the middle two for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'
}

# ratio A B [DECIMALS]: A / B with DECIMALS (3) decimals; 0 when B is 0.
ratio() {
    awk -v a="$1" -v b="$2" -v d="${3:-3}" 'BEGIN { printf ("%." d "f"), (b > 0 ? a / b : 0) }'
}

# proc_ticks PID: CPU time (user + system clock ticks, all threads) PID used
# so far; 0 once it has gone. The comm field goes first: it may hold spaces.
proc_ticks() { { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || echo; } | awk '{print $12 + $13 + 0}'; }

# proc_sys_ticks PID: the system (kernel) part of proc_ticks.
proc_sys_ticks() { { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null || echo; } | awk '{print $13 + 0}'; }

# proc_cpu_us PID: proc_ticks in microseconds.
proc_cpu_us() { awk -v t="$(proc_ticks "$1")" -v hz="$clk" 'BEGIN {printf "%.0f", t * 1e6 / hz}'; }

# cpu_ticks CPU: "busy total" clock ticks of CPU since boot, from /proc/stat.
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat
}

# busy_pct BEFORE AFTER: percent busy between two cpu_ticks outputs.
busy_pct() { echo "$1 $2" | awk '{ t = $4 - $2; print (t > 0 ? int(100 * ($3 - $1) / t) : 0) }'; }

# wait_idle: waits (at most IDLE_WAIT s) until PROXY_CPU and LOAD_CPU are
# each at most MAX_OTHER_LOAD % busy over one second; 1 if they never are.
# Leaves a description in idle_state.
wait_idle() {
    local deadline=$((SECONDS + IDLE_WAIT)) b0 b1 a0 a1 u0 u1
    while :; do
        b0=$(cpu_ticks "$PROXY_CPU")
        b1=$(cpu_ticks "$LOAD_CPU")
        sleep 1
        a0=$(cpu_ticks "$PROXY_CPU")
        a1=$(cpu_ticks "$LOAD_CPU")
        u0=$(busy_pct "$b0" "$a0")
        u1=$(busy_pct "$b1" "$a1")
        # shellcheck disable=SC2034 # read by the scripts
        idle_state="CPU $PROXY_CPU $u0% busy, CPU $LOAD_CPU $u1% busy"
        [ "$u0" -le "$MAX_OTHER_LOAD" ] && [ "$u1" -le "$MAX_OTHER_LOAD" ] && return 0
        [ $SECONDS -ge $deadline ] && return 1
    done
}

# layout_check: LAYOUT is `split` (the default: the proxy alone on
# PROXY_CPU, hx_backend with the client on LOAD_CPU) or `issue` (the client
# alone on LOAD_CPU, hx_backend with the proxy on PROXY_CPU: issue 18's
# setup). Sets BACKEND_CPU and layout_desc (for the report's pinning line).
layout_check() {
    [ "$PROXY_CPU" != "$LOAD_CPU" ] || die "PROXY_CPU and LOAD_CPU are both $PROXY_CPU"
    # shellcheck disable=SC2034 # read by the scripts
    case ${LAYOUT:=split} in
    split)
        BACKEND_CPU=$LOAD_CPU
        layout_desc="layout split: proxy alone on CPU $PROXY_CPU; hx_backend (1 thread) and $(client_name) on CPU $LOAD_CPU"
        ;;
    issue)
        BACKEND_CPU=$PROXY_CPU
        layout_desc="layout issue: proxy and hx_backend (1 thread) on CPU $PROXY_CPU; $(client_name) alone on CPU $LOAD_CPU"
        ;;
    *) die "LAYOUT=$LAYOUT: expected split or issue" ;;
    esac
}

# round_snapshot PROXY_PID BACKEND_PID: "proxy-ticks backend-ticks
# PROXY_CPU-busy PROXY_CPU-total LOAD_CPU-busy LOAD_CPU-total
# proxy-system-ticks", taken before and after a round (bench/wrk_table.py
# reads the same fields).
round_snapshot() {
    echo "$(proc_ticks "$1") $(proc_ticks "$2") $(cpu_ticks "$PROXY_CPU")" \
        "$(cpu_ticks "$LOAD_CPU") $(proc_sys_ticks "$1")"
}

# other_load BEFORE AFTER CLIENT_CPU_SECONDS: percent of each CPU used by
# anything but the benchmark's own processes between two round_snapshot
# outputs: the proxy (and hx_backend, LAYOUT=issue) on PROXY_CPU, the client
# (and hx_backend, LAYOUT=split) on LOAD_CPU. Prints "proxy-cpu-% load-cpu-%".
other_load() {
    echo "$1 $2 $3" | awk -v clk="$clk" -v layout="${LAYOUT:-split}" '{
        proxy = $8 - $1; backend = $9 - $2; client = $15 * clk
        t0 = $11 - $4; t1 = $13 - $6
        mine0 = proxy + (layout == "issue" ? backend : 0)
        mine1 = client + (layout == "issue" ? 0 : backend)
        o0 = t0 > 0 ? 100 * (($10 - $3) - mine0) / t0 : 0
        o1 = t1 > 0 ? 100 * (($12 - $5) - mine1) / t1 : 0
        printf "%d %d\n", (o0 < 0 ? 0 : o0), (o1 < 0 ? 0 : o1) }'
}

# callgrind_total FILE: the total Ir of a callgrind.out file ("totals:",
# which matches valgrind's "Collected"; older files only have "summary:").
callgrind_total() {
    awk '/^totals:/ {t = $2} /^summary:/ {s = $2} END {print t ? t : s}' "$1" 2>/dev/null || true
}

# results_path NAME EXT: OUT_DIR/NAME-<local date-time>.EXT (OUT_DIR created).
results_path() {
    mkdir -p "$OUT_DIR"
    echo "$OUT_DIR/$1-$(date +%Y%m%d-%H%M%S).$2"
}
