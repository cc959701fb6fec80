#!/usr/bin/env bash
# Instructions executed per proxied request by heliosd and nginx, counted by
# valgrind --tool=callgrind.
#
# For each proxy, two runs under callgrind: WARMUP + N1 requests and
# WARMUP + N2 requests, sent one at a time over keep-alive by bench/ka_client.py
# to a native hx_backend. Startup, configuration, warm-up and shutdown cost the
# same in both runs, so (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one proxied
# request: client read + parse + route + upstream write/read + client write.
# Only the proxy runs under valgrind; client and backend are not counted.
# Note that Ir is user-space only: the kernel work behind each system call is
# not in it, which is why the syscalls per request are counted too.
#
# Usage: bench/callgrind.sh        (see bench/README.md)
# Env:   N1=500 N2=2500 WARMUP=100 REQ_PATH=/ BUILD_DIR=build NGINX=/usr/sbin/nginx
#        OUT_DIR=bench/results KEEP=0 (1 keeps the callgrind.out files in OUT_DIR)
#        SYSCALLS=1 (also count system calls per request the same way, with
#        strace -f -c; callgrind sees only user-space instructions)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

N1=${N1:-500}
N2=${N2:-2500}
WARMUP=${WARMUP:-100}
REQ_PATH=${REQ_PATH:-/}
BUILD_DIR=${BUILD_DIR:-$root/build}
NGINX=${NGINX:-/usr/sbin/nginx}
OUT_DIR=${OUT_DIR:-$here/results}
KEEP=${KEEP:-0}
SYSCALLS=${SYSCALLS:-1}

use_build_dir
PROXIES=(heliosd nginx)

need_exec "$HELIOSD" "$BACKEND" "$NGINX"
need_tools valgrind callgrind_annotate python3 curl strace
[ "$N2" -gt "$N1" ] || die "N2 ($N2) must be larger than N1 ($N1)"

heliosd_build=$(bench_heliosd_build "$HELIOSD")
bench_setup heliosd-callgrind
private_heliosd

# The client and the backend run natively, unpinned, and are not counted.
port_backend=$(free_port)
start_backend backend "" "$port_backend" --name bench --threads 1
expected=$tmp/expected.body
curl -sS --max-time 5 -o "$expected" "http://127.0.0.1:$port_backend$REQ_PATH" \
    || die "backend does not answer $REQ_PATH"

# write_config PROXY PORT DIR: prints the command line that runs PROXY on PORT.
write_config() {
    local proxy=$1 port=$2 dir=$3
    case $proxy in
    heliosd)
        cat >"$dir/heliosd.yaml" <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$port}]
upstreams:
  app:
    backends: [{address: 127.0.0.1:$port_backend}]
    keepalive: {max_idle: 64, idle_timeout: 60s}
routes:
  - {match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: off}
EOF
        echo "$HELIOSD -c $dir/heliosd.yaml -m $MODULES"
        ;;
    nginx)
        {
            nginx_conf_head "$dir" 1024
            cat <<EOF
    upstream b {
        server 127.0.0.1:$port_backend;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
        } >"$dir/nginx.conf"
        echo "$NGINX -e stderr -p $dir -c $dir/nginx.conf"
        ;;
    esac
}

# measure TOOL PROXY N: run PROXY under TOOL (callgrind or strace) for WARMUP + N
# requests, leaving the tool's output in $tmp/TOOL-PROXY-N/. Not run in a
# subshell, so pids+= reaches cleanup.
measure() {
    local tool=$1 proxy=$2 n=$3
    local name=$tool-$proxy-$n
    local dir=$tmp/$name port cmd p target sig
    mkdir -p "$dir"
    port=$(free_port)
    cmd=$(write_config "$proxy" "$port" "$dir")
    # shellcheck disable=SC2086 # cmd is a word list built above from safe paths
    case $tool in
    callgrind)
        bench_start "$name/proxy" "" valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
            --trace-children=no $cmd
        ;;
    strace)
        bench_start "$name/proxy" "" strace -f -c -o "$dir/strace.txt" $cmd
        ;;
    esac
    p=${pid[$name/proxy]}

    bench_run python3 "$here/ka_client.py" --port "$port" --path "$REQ_PATH" --requests "$WARMUP" \
        --expect-file "$expected" >/dev/null \
        || die "$proxy under $tool: warm-up requests failed; log: $(tail -5 "$dir/proxy.log")"
    bench_run python3 "$here/ka_client.py" --port "$port" --path "$REQ_PATH" --requests "$n" \
        --expect-file "$expected" >"$dir/client.log" \
        || die "$proxy under $tool: measured requests failed; log: $(tail -5 "$dir/proxy.log")"
    grep -q ' 0 reconnects' "$dir/client.log" \
        || echo "note: $proxy closed the keep-alive connection: $(cat "$dir/client.log")" >&2

    # valgrind runs the proxy in its own process; strace forks it as a child.
    target=$p
    if [ "$tool" = strace ]; then
        target=$(ps -o pid= --ppid "$p" | first_line | tr -d ' ')
        [ -n "$target" ] || die "$proxy under strace: cannot find the traced process"
    fi
    # nginx without a master treats SIGQUIT as graceful shutdown; heliosd uses
    # SIGTERM. Both then exit normally, so the tool writes its output.
    sig=TERM
    [ "$proxy" = nginx ] && sig=QUIT
    kill -s "$sig" "$target"
    if ! wait_exit "$p" 60; then
        kill -KILL "$target" "$p" 2>/dev/null || true
        die "$proxy did not exit within 60 s of SIG$sig under $tool"
    fi
    wait "$p" || echo "note: $proxy under $tool exited with status $?" >&2

    if [ "$tool" = callgrind ]; then
        # "totals:" matches valgrind's "Collected"; older files only have "summary:".
        local total
        total=$(callgrind_total "$dir/callgrind.out")
        [ -n "$total" ] || die "$proxy: no totals in $dir/callgrind.out; log: $(tail -5 "$dir/proxy.log")"
        echo "$total" >"$dir/total"
        callgrind_annotate --threshold=100 --auto=no "$dir/callgrind.out" >"$dir/annotate.txt" 2>/dev/null || true
        if [ "$KEEP" = 1 ]; then
            mkdir -p "$OUT_DIR"
            cp "$dir/callgrind.out" "$OUT_DIR/callgrind.out.$proxy.$n"
        fi
    else
        [ -s "$dir/strace.txt" ] || die "$proxy: strace wrote no summary"
    fi
}

results=$tmp/results.tsv
: >"$results"
tools=(callgrind)
[ "$SYSCALLS" = 1 ] && tools+=(strace)
for tool in "${tools[@]}"; do
    for p in "${PROXIES[@]}"; do
        for n in "$N1" "$N2"; do
            echo "$tool: $p with $WARMUP + $n requests ..." >&2
            measure "$tool" "$p" "$n"
            printf '%s\t%s\t%s\t%s\n' "$tool" "$p" "$n" "$tmp/$tool-$p-$n" >>"$results"
        done
    done
done

md=$(results_path callgrind md)
export CG_RESULTS=$results CG_MD=$md
export CG_CMD="N1=$N1 N2=$N2 WARMUP=$WARMUP REQ_PATH=$REQ_PATH SYSCALLS=$SYSCALLS bench/callgrind.sh"
export CG_N1=$N1 CG_N2=$N2 CG_WARMUP=$WARMUP
CG_VERSIONS="$("$HELIOSD" -V 2>&1 | first_line) ($heliosd_build); $("$NGINX" -v 2>&1); $(valgrind --version)"
export CG_VERSIONS
python3 "$here/callgrind_table.py"
echo "wrote $md" >&2
