#!/usr/bin/env bash
# Memory per idle keep-alive client connection: heliosd, nginx and HAProxy,
# HTTP/1.1 and h2c (HTTP/2 with prior knowledge), in one run.
#
# Each server runs one worker/thread answering a fixed 200 "ok" itself (no
# upstream), logging off. For each server and protocol, bench/idle_client.py
# first warms the server up (WARM connections served once and closed: event
# loop arrays, caches and allocator arenas reach their working size), then
# opens CONNS connections, serves one request on each, lets them sit idle,
# and reports (RSS after - RSS before) / CONNS; then every connection must
# answer a second request. A server is restarted for each protocol, so one
# measurement does not inherit the other's heap.
#
# Limits: the client and each server hold CONNS sockets (HAProxy fewer: it
# reserves two descriptors per connection), so CONNS must stay
# below the per-process fd limit (the hard limit is raised to as soft); all on
# 127.0.0.1; every client run is bounded by DEADLINE seconds.
#
# Usage: bench/memory.sh            (see bench/README.md)
# Env:   CONNS=15000 WARM=1000 SETTLE=2 DEADLINE=240 PROTOS="h1 h2c"
#        SERVERS="heliosd nginx haproxy" BUILD_DIR=build NGINX=/usr/sbin/nginx
#        HAPROXY=/usr/sbin/haproxy OUT_DIR=bench/results
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

CONNS=${CONNS:-15000}
WARM=${WARM:-1000}
SETTLE=${SETTLE:-2}
DEADLINE=${DEADLINE:-240}
PROTOS=${PROTOS:-h1 h2c}
SERVERS=${SERVERS:-heliosd nginx haproxy}
BUILD_DIR=${BUILD_DIR:-$root/build}
NGINX=${NGINX:-/usr/sbin/nginx}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
OUT_DIR=${OUT_DIR:-$here/results}

use_build_dir
need_exec "$HELIOSD" "$NGINX" "$HAPROXY"
need_files "$MODULES/static_response.so"
need_tools python3 curl
refuse_sanitizer_build

ulimit -n "$(ulimit -Hn)" || die "cannot raise the open-files limit to $(ulimit -Hn)"
fdmax=$(ulimit -n)
[ "$CONNS" -ge 1 ] || die "CONNS must be >= 1"
[ "$CONNS" -le $((fdmax - 200)) ] ||
    die "CONNS=$CONNS needs more descriptors than the limit allows ($fdmax, hard limit $(ulimit -Hn))"
maxconn=$((CONNS + 100))
# HAProxy sizes its descriptor table for a server side per connection
# (maxsock ~ 2 x maxconn) and refuses to start above the fd limit: it gets
# the most connections the limit allows, and its row says how many.
haproxy_maxconn=$(((fdmax - 300) / 2))
[ "$haproxy_maxconn" -lt "$maxconn" ] || haproxy_maxconn=$maxconn

heliosd_build=$(bench_heliosd_build "$HELIOSD")
bench_setup heliosd-memory
private_heliosd

# --- configurations: one port per protocol --------------------------------

conf_heliosd() { # PORT
    cat <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$1, max_connections: $maxconn, h2c: true}]
timeouts: {keepalive: 10m}
routes:
  - match: {prefix: /}
    handler: {module: static_response, config: {body: "ok\n"}}
logging: {level: warn, access_log: off}
EOF
}

conf_nginx() { # PORT PROTO
    local h2=
    [ "$2" = h2c ] && h2=" http2"
    echo "worker_rlimit_nofile $fdmax;"
    nginx_conf_head "$tmp/nginx" "$fdmax"
    cat <<EOF
    keepalive_timeout 10m;
    server {
        listen 127.0.0.1:$1$h2;
        location / { return 200 "ok\n"; }
    }
}
EOF
}

conf_haproxy() { # PORT PROTO
    local h2=
    [ "$2" = h2c ] && h2=" proto h2"
    cat <<EOF
global
    nbthread 1
    maxconn $haproxy_maxconn
defaults
    mode http
    option http-keep-alive
    timeout client 10m
    timeout http-request 10s
    timeout http-keep-alive 10m
frontend fe
    bind 127.0.0.1:$1$h2
    http-request return status 200 content-type text/plain string "ok"
EOF
}

start_server() { # SERVER PROTO PORT -> pid[SERVER.PROTO]
    local s=$1 proto=$2 port=$3 name="$1.$2"
    case $s in
    heliosd)
        conf_heliosd "$port" >"$tmp/$name.yaml"
        start_heliosd "$name" "" "$tmp/$name.yaml"
        ;;
    nginx)
        conf_nginx "$port" "$proto" >"$tmp/$name.conf"
        start_nginx "$name" "" "$tmp/$name.conf" "$tmp/nginx"
        ;;
    haproxy)
        conf_haproxy "$port" "$proto" >"$tmp/$name.cfg"
        bench_start "$name" "" "$HAPROXY" -db -f "$tmp/$name.cfg"
        ;;
    *) die "unknown server '$s' in SERVERS (heliosd, nginx, haproxy)" ;;
    esac
    if [ "$proto" = h2c ]; then
        wait_http "http://127.0.0.1:$port/" --http2-prior-knowledge
    else
        wait_http "http://127.0.0.1:$port/" --http1.1
    fi
}

stop_server() { # NAME
    local p=${pid[$1]}
    kill -TERM "$p" 2>/dev/null || true
    wait_exit "$p" 5 || kill -KILL "$p" 2>/dev/null || true
}

# --- measurement ----------------------------------------------------------

results=$tmp/results.tsv
: >"$results"
echo "# idle connections: CONNS=$CONNS (warm-up $WARM), protocols: $PROTOS, servers: $SERVERS" >&2
for proto in $PROTOS; do
    for s in $SERVERS; do
        port=$(free_port)
        start_server "$s" "$proto" "$port"
        p=${pid[$s.$proto]}
        n=$CONNS
        [ "$s" = haproxy ] && [ "$n" -gt $((haproxy_maxconn - 100)) ] && n=$((haproxy_maxconn - 100))
        timeout $((DEADLINE + 30)) python3 "$here/idle_client.py" --port "$port" --pid "$p" \
            --conns "$WARM" --proto "$proto" --settle 0 --deadline "$DEADLINE" >/dev/null ||
            die "$s ($proto): the warm-up failed; log: $(tail -5 "$tmp/$s.$proto.log")"
        sleep 1 # the warm-up's connections are closed by the server too
        if ! out=$(timeout $((DEADLINE + 30)) python3 "$here/idle_client.py" --port "$port" \
            --pid "$p" --conns "$n" --proto "$proto" --settle "$SETTLE" --deadline "$DEADLINE"); then
            echo "!! $s ($proto): not every connection answered: $out" >&2
        fi
        alive "$p" || die "$s ($proto) exited; log: $(tail -5 "$tmp/$s.$proto.log")"
        printf '%s\t%s\t%s\n' "$s" "$proto" "$out" >>"$results"
        python3 -c 'import json, sys
d = json.loads(sys.argv[3])
print("%-8s %-4s %6d conns  %8.0f B/conn  answered %d/%d  (%.0fs)" % (sys.argv[1], sys.argv[2],
      d["conns"], d["bytes_per_conn"], d["answered"], d["conns"], d["seconds"]))' "$s" "$proto" "$out" >&2
        stop_server "$s.$proto"
    done
done

md=$(results_path memory md)
python3 - "$results" "$md" "$CONNS" "$WARM" \
    "$("$HELIOSD" -V 2>&1 | first_line) ($heliosd_build); $("$NGINX" -v 2>&1); $("$HAPROXY" -v 2>&1 | first_line | cut -d' ' -f1-3)" <<'EOF'
import json, sys
results, md, conns, warm, versions = sys.argv[1:6]
rows = [l.rstrip("\n").split("\t", 2) for l in open(results) if l.strip()]
data = {(s, p): json.loads(j) for s, p, j in rows}
protos = sorted({p for _, p in data}, key=lambda p: (p != "h1", p))
servers = []
for s, _ in data:
    if s not in servers:
        servers.append(s)
out = ["# Memory per idle keep-alive connection", "",
       "%s connections per server and protocol (HAProxy: as many as its descriptor sizing allows "
       "under the fd limit, see `answered`), each served one request and then idle; "
       "(RSS after - RSS before) / connections, after a warm-up of %s connections. "
       "Every connection then answered a second request (the `answered` column)." % (conns, warm), "",
       "Versions: " + versions, "",
       "| server | protocol | bytes per idle connection | vs nginx | answered |",
       "|---|---|---:|---:|---:|"]
for p in protos:
    ng = data.get(("nginx", p), {}).get("bytes_per_conn")
    for s in servers:
        d = data.get((s, p))
        if d is None:
            continue
        vs = "%.2f" % (d["bytes_per_conn"] / ng) if ng else "-"
        out.append("| %s | %s | %d | %s | %d/%d |" % (s, p, d["bytes_per_conn"], vs, d["answered"], d["conns"]))
open(md, "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF
echo "wrote $md" >&2
