#!/usr/bin/env bash
# TLS termination: heliosd and nginx, each terminating TLS (one worker
# pinned to PROXY_CPU) in front of the same hx_backend, measured in one run
# with alternating rounds (the servers alternate inside every round).
#
# Keep-alive (PARTS has "keepalive"), TLS 1.3, ECDSA P-256:
#   - h2load over TLS with ALPN h2 (CONNS connections x STREAMS streams);
#   - wrk over TLS (HTTP/1.1, keep-alive).
#   With CLIENT=heliosd, `heliosd bench` does both: --http http2 --streams
#   STREAMS, then --http http1.
# New connections (PARTS has "new"), every request on a connection of its
# own ('Connection: close', NEW_CONNS connections), for TLS 1.3 and 1.2
# each with an ECDSA P-256 and an RSA-2048 certificate:
#   - full handshakes: `heliosd bench --http http1`, which never resumes a
#     session;
#   - resumed handshakes: wrk, which keeps its SSL object across reconnects
#     (SSL_clear), so each connection offers the ticket the previous one
#     got. Before measuring, a chain of Python connections checks that both
#     servers resume and hand out a ticket every time (a TLS 1.3 ticket is
#     used once): "resumes 5/5".
#   Reported: req/s, p50 and p99 (from the request's send: the handshake
#   is not in them), and the server's CPU (user + system, /proc/PID/stat)
#   per request, which here is per handshake.
# Both servers use the same certificates and keep-alive to the backend;
# access logs off. Prints every round, then the medians and the ratios
# heliosd / nginx, and writes them to OUT_DIR/tls-<time>.txt.
#
# Usage: bench/tls.sh
# Env:   DURATION=10 (seconds, keep-alive runs) ROUNDS=3 CONNS=50 STREAMS=10
#        NEW_DURATION=4 (seconds, new-connection runs) NEW_CONNS=32
#        NEW_KINDS="ec13 rsa13 ec12 rsa12" (certificate ec or rsa, TLS 1.3 or 1.2)
#        PARTS="keepalive new" PROXY_CPU=0 LOAD_CPU=1
#        BUILD_DIR=build NGINX=/usr/sbin/nginx OUT_DIR=bench/results
#        CLIENT=wrk (h2load and wrk for keep-alive; or heliosd: heliosd
#        bench for both). The new-connection runs always use heliosd bench
#        (full) and wrk (resumed), whatever CLIENT says.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
STREAMS=${STREAMS:-10}
NEW_DURATION=${NEW_DURATION:-4}
NEW_CONNS=${NEW_CONNS:-32}
NEW_KINDS=${NEW_KINDS:-ec13 rsa13 ec12 rsa12}
PARTS=${PARTS:-keepalive new}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
NGINX=${NGINX:-/usr/sbin/nginx}
OUT_DIR=${OUT_DIR:-$here/results}

part() { [[ " $PARTS " == *" $1 "* ]]; }
part keepalive || part new || die "PARTS=$PARTS: expected keepalive and/or new"
for k in $NEW_KINDS; do
    case $k in ec13 | rsa13 | ec12 | rsa12) ;; *) die "NEW_KINDS: $k: expected ec13, rsa13, ec12 or rsa12" ;; esac
done

use_build_dir
need_exec "$HELIOSD" "$BACKEND" "$NGINX"
need_tools openssl taskset curl python3
client_check
[ "$CLIENT" = heliosd ] || ! part keepalive || need_tools h2load
if part new; then
    need_tools wrk
    need_files "$MODULES/bench.so"
fi

bench_setup heliosd-tls-bench
private_heliosd
# ports: backend; heliosd and nginx for ec13 (the keep-alive one too), ec12,
# rsa13, rsa12
read -r pb ph_ec13 ph_ec12 ph_rsa13 ph_rsa12 pn_ec13 pn_ec12 pn_rsa13 pn_rsa12 < <(free_ports 9)
declare -A port=([heliosd.ec13]=$ph_ec13 [heliosd.ec12]=$ph_ec12 [heliosd.rsa13]=$ph_rsa13
    [heliosd.rsa12]=$ph_rsa12 [nginx.ec13]=$pn_ec13 [nginx.ec12]=$pn_ec12
    [nginx.rsa13]=$pn_rsa13 [nginx.rsa12]=$pn_rsa12)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
    -keyout "$tmp/ec.key" -out "$tmp/ec.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
    -keyout "$tmp/rsa.key" -out "$tmp/rsa.pem" 2>/dev/null

{
    echo "workers: 1"
    echo "listeners:"
    for k in ec13 ec12 rsa13 rsa12; do
        cert=${k%1?}
        ver=TLSv1.${k: -1}
        cat <<EOF
  - address: 127.0.0.1:${port[heliosd.$k]}
    tls:
      certificates: [{cert: $tmp/$cert.pem, key: $tmp/$cert.key}]
      protocols: [$ver]
EOF
    done
    cat <<EOF
upstreams:
  app:
    backends: [{address: 127.0.0.1:$pb}]
    keepalive: {max_idle: 128, idle_timeout: 60s}
routes:
  - {match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: off}
EOF
} >"$tmp/heliosd.yaml"

{
    nginx_conf_head "$tmp/nginx" 4096
    echo "    upstream b { server 127.0.0.1:$pb; keepalive 128; }"
    for k in ec13 ec12 rsa13 rsa12; do
        cert=${k%1?}
        h2=""; [ $k = ec13 ] && h2=" http2"
        cat <<EOF
    server {
        listen 127.0.0.1:${port[nginx.$k]} ssl$h2;
        ssl_certificate $tmp/$cert.pem;
        ssl_certificate_key $tmp/$cert.key;
        ssl_protocols TLSv1.${k: -1};
        location / {
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
    done
    echo "}"
} >"$tmp/nginx.conf"

start_backend backend "$LOAD_CPU" "$pb" --name b
start_heliosd heliosd "$PROXY_CPU" "$tmp/heliosd.yaml"
start_nginx nginx "$PROXY_CPU" "$tmp/nginx.conf" "$tmp/nginx"
for p in "${port[@]}"; do wait_http "https://127.0.0.1:$p/" -k; done

# ---- keep-alive ----------------------------------------------------------------

h2() { # port -> req/s
    if [ "$CLIENT" = heliosd ]; then
        hb_report "$DURATION" "https://127.0.0.1:$1/" --http http2 --streams "$STREAMS" --warmup 1 |
            json_get requests_per_s
        return
    fi
    taskset -c "$LOAD_CPU" h2load -c "$CONNS" -m "$STREAMS" -D "$DURATION" --warm-up-time=1 \
        "https://127.0.0.1:$1/" 2>/dev/null | awk '/^finished in/ {gsub(",","",$4); print $4}'
}
h1() {
    if [ "$CLIENT" = heliosd ]; then
        hb_report "$DURATION" "https://127.0.0.1:$1/" --http http1 | json_get requests_per_s
        return
    fi
    wrk_report "${DURATION}s" "https://127.0.0.1:$1/" | wrk_rps
}

# ---- new connections -------------------------------------------------------------

# full PORT PID -> "req/s p50_ms p99_ms cpu_us_per_request errors"
full() {
    local c0 c1
    c0=$(proc_cpu_us "$2")
    CONNS=$NEW_CONNS hb_report "$NEW_DURATION" "https://127.0.0.1:$1/" --http http1 \
        -H 'Connection: close' >"$tmp/full.json" || true
    c1=$(proc_cpu_us "$2")
    python3 - "$tmp/full.json" "$((c1 - c0))" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except ValueError:
    print("0 0 0 0 1"); sys.exit()
n, lat = d["requests"], d["latency_ms"]["uncorrected"]
print("%.0f %.3f %.3f %.1f %d" % (d["requests_per_s"], lat["p50"] or 0, lat["p99"] or 0,
      int(sys.argv[2]) / n if n else 0, d["errors"]["total"]))
EOF
}

# resumed PORT PID -> the same five figures, from wrk --latency
resumed() {
    local c0 c1
    c0=$(proc_cpu_us "$2")
    CONNS=$NEW_CONNS wrk_report "${NEW_DURATION}s" "https://127.0.0.1:$1/" --latency \
        -H 'Connection: close' >"$tmp/resumed.txt" || true
    c1=$(proc_cpu_us "$2")
    awk -v c="$((c1 - c0))" '
        function ms(v) { # "812.00us", "1.23ms", "1.01s" -> ms
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /s$/) return v * 1000
            return v + 0
        }
        /^Requests\/sec:/ {rps = $2}
        / requests in / {n = $1}
        $1 == "50%" {p50 = ms($2)}
        $1 == "99%" {p99 = ms($2)}
        /Socket errors:|Non-2xx/ {err = 1}
        END {printf "%.0f %.3f %.3f %.1f %d\n", rps, p50, p99, (n ? c / n : 0), err + 0}' \
        "$tmp/resumed.txt"
}

# resumes PORT TLS_MAX -> "K/5": of 5 chained connections after a first one,
# how many resumed with the ticket the one before got
resumes() {
    python3 - "$1" "$2" <<'EOF'
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_3 if sys.argv[2] == "3" else ssl.TLSVersion.TLSv1_2
sess, seen, hits = None, set(), 0
for i in range(6):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5),
                        server_hostname="bench.test", session=sess)
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    # TLS 1.3: a session is named after its ticket; a ticket used twice is
    # not a resumption a one-time-ticket client would get
    fresh = sys.argv[2] == "2" or s.session.id not in seen
    hits += i > 0 and s.session_reused and fresh
    sess = s.session
    seen.add(sess.id)
    s.close()
print("%d/5" % hits)
EOF
}

declare -A res
declare -A resumes_of
if part new; then
    for k in $NEW_KINDS; do
        for srv in heliosd nginx; do
            resumes_of[$k.$srv]=$(resumes "${port[$srv.$k]}" "${k: -1}" || echo "?")
        done
    done
fi

for r in $(seq "$ROUNDS"); do
    if part keepalive; then
        for mode in h2 h1; do
            for srv in heliosd nginx; do
                v=$($mode "${port[$srv.ec13]}")
                echo "round $r $mode $srv ${v:-0} req/s"
                res[$mode.$srv]="${res[$mode.$srv]:-} ${v:-0}"
            done
        done
    fi
    if part new; then
        for k in $NEW_KINDS; do
            for mode in full resumed; do
                for srv in heliosd nginx; do
                    read -r rps p50 p99 cpu err < <($mode "${port[$srv.$k]}" "${pid[$srv]}")
                    echo "round $r $mode $k $srv $rps req/s p50 $p50 ms p99 $p99 ms" \
                        "$cpu us CPU/request${err:+ (errors: $err)}"
                    res[$mode.$k.$srv.rps]="${res[$mode.$k.$srv.rps]:-} $rps"
                    res[$mode.$k.$srv.p50]="${res[$mode.$k.$srv.p50]:-} $p50"
                    res[$mode.$k.$srv.p99]="${res[$mode.$k.$srv.p99]:-} $p99"
                    res[$mode.$k.$srv.cpu]="${res[$mode.$k.$srv.cpu]:-} $cpu"
                done
            done
        done
    fi
done

med() { # key -> median of its list
    # shellcheck disable=SC2086 # a list of numbers
    median ${res[$1]}
}

out=$(results_path tls txt)
{
    echo "# bench/tls.sh $(date -u '+%F %T UTC'), commit $(bench_commit); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# $ROUNDS rounds, medians; heliosd and nginx alternate inside each round"
    if part keepalive; then
        echo "# keep-alive: ${DURATION}s, $CONNS connections, h2 with $STREAMS streams each; TLS 1.3 P-256; client $(client_name)"
        printf "%-22s %12s %12s %8s\n" "client" "heliosd" "nginx" "ratio"
        for mode in h2 h1; do
            hv=$(med "$mode.heliosd")
            nv=$(med "$mode.nginx")
            label="h2load (h2 over TLS)"; [ $mode = h1 ] && label="wrk (HTTP/1.1 TLS)"
            if [ "$CLIENT" = heliosd ]; then
                label="heliosd bench (h2)"; [ $mode = h1 ] && label="heliosd bench (h1 TLS)"
            fi
            printf "%-22s %12.0f %12.0f %8.2f\n" "$label" "$hv" "$nv" "$(ratio "$hv" "$nv" 2)"
        done
    fi
    if part new; then
        echo "# new connections ('Connection: close'): ${NEW_DURATION}s, $NEW_CONNS connections;" \
            "full = heliosd bench (no resumption), resumed = wrk (session kept across reconnects);" \
            "p50/p99 from the request's send; CPU = server user+sys per request"
        printf "%-8s %-13s %9s %7s %7s %8s  %9s %7s %7s %8s  %6s %6s\n" "handshake" "" \
            "h req/s" "h p50" "h p99" "h CPU" "n req/s" "n p50" "n p99" "n CPU" "req/s" "CPU"
        for mode in full resumed; do
            for k in $NEW_KINDS; do
                name="${k%1?} TLS1.${k: -1}"; name=${name/ec/ECDSA}; name=${name/rsa/RSA}
                note=""
                [ $mode = resumed ] && note="${resumes_of[$k.heliosd]}|${resumes_of[$k.nginx]}"
                printf "%-8s %-13s %9.0f %7.2f %7.2f %8.0f  %9.0f %7.2f %7.2f %8.0f  %6.2f %6.2f\n" \
                    "$mode" "$name" \
                    "$(med "$mode.$k.heliosd.rps")" "$(med "$mode.$k.heliosd.p50")" \
                    "$(med "$mode.$k.heliosd.p99")" "$(med "$mode.$k.heliosd.cpu")" \
                    "$(med "$mode.$k.nginx.rps")" "$(med "$mode.$k.nginx.p50")" \
                    "$(med "$mode.$k.nginx.p99")" "$(med "$mode.$k.nginx.cpu")" \
                    "$(ratio "$(med "$mode.$k.heliosd.rps")" "$(med "$mode.$k.nginx.rps")" 2)" \
                    "$(ratio "$(med "$mode.$k.heliosd.cpu")" "$(med "$mode.$k.nginx.cpu")" 2)"
                if [ -n "$note" ]; then echo "         (resumes, heliosd|nginx: $note)"; fi
            done
        done
        echo "# h = heliosd, n = nginx; p50/p99 in ms, CPU in us per request; last columns: heliosd / nginx"
    fi
} | tee "$out"
