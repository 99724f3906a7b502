#!/usr/bin/env bash
# Loopback benchmark of cachegate with wrk: every path side by side, same wrk settings.
#
# Rows (req/s, p50, p99 from `wrk --latency`, and server CPU per request):
#   limit              examples/bench_server.rs --limit: a bare hyper 1 server answering the same
#                      bytes from memory, with the headers a cachegate hit adds (2 KiB, 32 KiB)
#   origin direct      the same bench_server without --limit: the 0 ms origin of every proxy
#   memory hit         cachegate, memory tier, one URL repeatedly (2 KiB, 32 KiB)
#   1 worker thread    the limit and the 2 KiB memory hit again, each server on one tokio worker
#                      thread (TOKIO_WORKER_THREADS=1): how a hit scales from 1 to 2 cores
#   Redis hit          cachegate with the memory tier off (0B, 0s) and a real redis-server; wrk
#                      cycles through 1000 pre-filled URLs (scripts/bench/cycle.lua) so coalescing
#                      never merges lookups: one plain GET per request, checked by counting the
#                      GET calls (INFO commandstats) around the measurement
#   miss, memory only  cachegate, a unique query string per request (scripts/bench/unique.lua)
#   miss, with Redis   the same through a cachegate with memory tier + Redis
#   ..., cluster       the Redis hit and the miss with Redis again, against a local Redis Cluster
#                      (3 masters + 3 replicas, redis_url = "redis+cluster://..."); its Redis CPU
#                      and GET count are summed over all six nodes
#   nginx proxy_cache  hit (2 KiB, 32 KiB) and miss (scripts/bench/nginx.conf.in)
#   Varnish            hit (2 KiB, 32 KiB) and miss (scripts/bench/varnish.vcl.in)
#   memory hit, TLS    cachegate ([server] tls) and nginx proxy_cache (listen ... ssl,
#                      scripts/bench/nginx-tls.conf.in), 2 KiB, wrk over https with keep-alive.
#                      One ECDSA P-256 certificate made with openssl for both; both pinned to
#                      TLS 1.3, TLS_AES_128_GCM_SHA256, X25519: nginx by its ssl_* directives,
#                      cachegate (whose rustls follows the client's order) by the client, whose
#                      OpenSSL gets a config (OPENSSL_CONF) offering only that version, suite and
#                      group; `openssl s_client` with the same config checks what both negotiate
#   h2 hit             the same two listeners over h2 (TLS, ALPN h2), and h2c by prior knowledge
#                      (cachegate's plain memory-hit listener; nginx `listen ... http2` without
#                      ssl, scripts/bench/nginx-h2c.conf.in), 2 KiB, with h2load instead of wrk:
#                      the same threads and connections, BENCH_H2_STREAMS streams per connection,
#                      a fixed duration (-D); p50/p99 from h2load's per-request log (--log-file)
# Server CPU = utime + stime (/proc/<pid>/stat) of the serving process tree, plus redis-server
# (every cluster node for the cluster rows) for the Redis rows, sampled right before and right
# after the measured run, per request.
# Then, unless disabled: the purge cost (cargo bench --bench purge) and a bounded-memory run
# (cachegate with memory_capacity = 64MiB under unique 32 KiB misses, RSS and tier bytes every 5 s).
#
# Usage:  scripts/bench.sh
# Env:    BENCH_DURATION (default 5s)          wrk duration per measurement ("5s", "1m", seconds)
#         BENCH_WARMUP (default 2s)            unmeasured warm-up before each measurement ("0" = none)
#         BENCH_THREADS (default 2)            wrk threads
#         BENCH_CONNECTIONS (default 64)       wrk connections
#         BENCH_RUNS (default 3)               repeats of the whole series, interleaved (run 1 of
#                                              every row, then run 2, ...); the table shows medians
#         BENCH_ANCHORS (default 1)            0 = skip nginx and Varnish
#         BENCH_CLUSTER (default 1)            0 = skip the Redis Cluster rows (and the cluster)
#         BENCH_PURGE (default 1)              0 = skip the purge bench
#         BENCH_MEMORY (default 1)             0 = skip the bounded-memory run
#         BENCH_MEMORY_DURATION (default 60s)  length of the bounded-memory run
#         BENCH_TLS (default 1)                0 = skip the TLS and h2 rows; without openssl they
#                                              are skipped, without h2load (Debian nghttp2-client)
#                                              the h2 rows, and nginx's without its ssl / http_v2
#                                              modules, each with a message
#         BENCH_H2_STREAMS (default 4)         h2load's concurrent streams per connection (-m)
#         BENCH_KEEP (unset)                   directory to copy the raw wrk outputs, configs,
#                                              logs and summary into
#         BENCH_BUILD_TIMEOUT (default 1800)   seconds allowed for each build
#         BENCH_TMPDIR (default /dev/shm when it is a tmpfs, else $TMPDIR or /tmp)
#                                              where the temporary work directory goes (configs,
#                                              raw outputs, nginx's cache files, Varnish's work dir)
#
# Everything runs on 127.0.0.1 on free ephemeral ports; every process started here is stopped by
# pid on exit (also on Ctrl-C, TERM or a failure). Every wrk, build and wait is time-bounded.
# Client, proxies, origin and Redis share the machine's cores: compare ratios within one run.
set -euo pipefail

DURATION="${BENCH_DURATION:-5s}"
WARMUP="${BENCH_WARMUP:-2s}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
RUNS="${BENCH_RUNS:-3}"
ANCHORS="${BENCH_ANCHORS:-1}"
CLUSTER="${BENCH_CLUSTER:-1}"
PURGE="${BENCH_PURGE:-1}"
MEMORY="${BENCH_MEMORY:-1}"
MEMORY_DURATION="${BENCH_MEMORY_DURATION:-60s}"
TLS="${BENCH_TLS:-1}"
H2_STREAMS="${BENCH_H2_STREAMS:-4}"
KEEP="${BENCH_KEEP:-}"
BUILD_TIMEOUT="${BENCH_BUILD_TIMEOUT:-1800}"

cd "$(dirname "$0")/.."
REPO="$PWD"
BENCH_DIR="$REPO/scripts/bench"

die() {
    echo "bench: $*" >&2
    exit 1
}
say() {
    echo "bench: $*" >&2
}

# "10s" / "2m" / "1h" / "10" -> whole seconds.
to_seconds() {
    local v="$1"
    case "$v" in
        *s) v="${v%s}" ;;
        *m) v="$(( ${v%m} * 60 ))" ;;
        *h) v="$(( ${v%h} * 3600 ))" ;;
    esac
    [[ "$v" =~ ^[0-9]+$ ]] || die "cannot read duration '$1' (expected e.g. 10s, 1m)"
    echo "$v"
}
DURATION_S="$(to_seconds "$DURATION")"
WARMUP_S="$(to_seconds "$WARMUP")"
MEMORY_DURATION_S="$(to_seconds "$MEMORY_DURATION")"
(( DURATION_S > 0 )) || die "BENCH_DURATION must be positive"
(( MEMORY_DURATION_S >= 10 )) || die "BENCH_MEMORY_DURATION must be at least 10s"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_THREADS must be a positive integer"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_CONNECTIONS must be a positive integer"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer"
[[ "$H2_STREAMS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_H2_STREAMS must be a positive integer"
(( CONNECTIONS >= THREADS )) || die "BENCH_CONNECTIONS must be >= BENCH_THREADS"
[[ "$BUILD_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "BENCH_BUILD_TIMEOUT must be a positive number of seconds"
CLK_TCK="$(getconf CLK_TCK)"
CORES="$(nproc)"

# --- processes and cleanup --------------------------------------------------------------
# The script runs in two processes. This one (the supervisor) creates the work directory,
# starts a copy of itself as the worker, waits for it, and on exit (normal end, failure,
# Ctrl-C, TERM) stops every process the worker started: the worker records each server's pid
# in $WORKDIR/pids, and anything still running below the worker (wrk, a build) is found from
# the process tree. The worker runs in the background, so it ignores Ctrl-C and never stops
# half-way through a step with its servers gone; the supervisor's wait is interrupted at once.

# descendants PID...: the given pids and all their live descendants, parents first.
descendants() {
    ps -e -o pid=,ppid= | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) { keep[r[i]] = 1; order[++m] = r[i] } }
        { parent[$1] = $2 }
        END {
            changed = 1
            while (changed) {
                changed = 0
                for (c in parent) if (!(c in keep) && (parent[c] in keep)) { keep[c] = 1; order[++m] = c; changed = 1 }
            }
            for (i = 1; i <= m; i++) print order[i]
        }'
}

# stop_pids PID...: TERM them, wait up to 5 s for each, then KILL what is left.
stop_pids() {
    local p
    for p in "$@"; do
        kill "$p" 2>/dev/null || true
        kill -CONT "$p" 2>/dev/null || true
    done
    for p in "$@"; do
        for _ in $(seq 50); do
            kill -0 "$p" 2>/dev/null || break
            # A zombie child of ours counts as gone.
            [[ "$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null)" == Z ]] && break
            sleep 0.1
        done
        kill -9 "$p" 2>/dev/null || true
    done
}

# stop_tree PID: the process and all its descendants.
stop_tree() {
    local all
    all="$(descendants "$1" 2>/dev/null || echo "$1")"
    # shellcheck disable=SC2086
    stop_pids $all
    wait "$1" 2>/dev/null || true
}

if [[ -z "${CACHEGATE_BENCH_WORKDIR:-}" ]]; then
    # On a tmpfs when there is one: nginx's proxy_cache keeps every entry in a file, and on a
    # disk-backed directory its miss path measures the file system (about 10x slower here).
    TMP_BASE="${BENCH_TMPDIR:-}"
    if [[ -z "$TMP_BASE" ]]; then
        TMP_BASE="${TMPDIR:-/tmp}"
        if [[ -d /dev/shm && -w /dev/shm ]] && [[ "$(stat -f -c %T /dev/shm 2>/dev/null)" == tmpfs ]]; then
            TMP_BASE=/dev/shm
        fi
    fi
    WORKDIR="$(mktemp -d "$TMP_BASE/cachegate-bench.XXXXXX")"
    chmod 755 "$WORKDIR"
    mkdir -p "$WORKDIR/raw"
    : >"$WORKDIR/pids"
    WORKER=""

    keep_results() {
        [[ -n "$KEEP" ]] || return 0
        mkdir -p "$KEEP" || { echo "bench: cannot create BENCH_KEEP=$KEEP" >&2; return 0; }
        cp -r "$WORKDIR/raw" "$KEEP/" 2>/dev/null || true
        cp "$WORKDIR"/*.toml "$WORKDIR"/*.log "$WORKDIR"/*.txt "$WORKDIR"/*.tsv "$WORKDIR"/*.md "$KEEP/" 2>/dev/null || true
        cp "$WORKDIR"/nginx/nginx.conf "$KEEP/nginx.conf" 2>/dev/null || true
        cp "$WORKDIR"/nginx/extra-servers.conf "$KEEP/nginx-extra-servers.conf" 2>/dev/null || true
        cp "$WORKDIR"/nginx/error.log "$KEEP/nginx-error.log" 2>/dev/null || true
        cp "$WORKDIR"/varnish.vcl "$KEEP/" 2>/dev/null || true
        echo "bench: results copied to $KEEP" >&2
    }

    cleanup() {
        local all="" p i servers=()
        trap '' INT TERM
        if [[ -n "$WORKER" ]] && kill -0 "$WORKER" 2>/dev/null; then
            # Freeze the worker so it starts nothing new, then stop it and everything below it.
            kill -STOP "$WORKER" 2>/dev/null || true
            all="$(descendants "$WORKER" 2>/dev/null || echo "$WORKER")"
        fi
        mapfile -t servers <"$WORKDIR/pids"
        # Servers in reverse start order (proxies before the origin and Redis behind them),
        # each with its own children (nginx workers, the Varnish child).
        for (( i = ${#servers[@]} - 1; i >= 0; i-- )); do
            [[ "${servers[$i]}" =~ ^[0-9]+$ ]] || continue
            all="$all $(descendants "${servers[$i]}" 2>/dev/null || echo "${servers[$i]}")"
        done
        # shellcheck disable=SC2086
        [[ -z "${all// /}" ]] || stop_pids $all
        [[ -z "$WORKER" ]] || wait "$WORKER" 2>/dev/null || true
        keep_results
        rm -rf "$WORKDIR"
    }
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    CACHEGATE_BENCH_WORKDIR="$WORKDIR" bash "$REPO/scripts/bench.sh" &
    WORKER=$!
    rc=0
    wait "$WORKER" || rc=$?
    exit "$rc"
fi

# --- the worker -------------------------------------------------------------------------------
WORKDIR="$CACHEGATE_BENCH_WORKDIR"
RAW="$WORKDIR/raw"
CHILD=""

# bounded SECONDS CMD...: runs CMD under a time limit (the supervisor stops it, as a descendant
# of this worker, if the run is interrupted).
bounded() {
    local rc=0
    timeout "$1" "${@:2}" &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

# pause SECONDS
pause() {
    sleep "$1"
}

# --- tools ------------------------------------------------------------------------------
for tool in curl python3 cargo timeout ps getconf setsid; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
done
can_install() {
    [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null
}
APT_UPDATED=0
apt_install() { # packages...
    if (( ! APT_UPDATED )); then
        timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
        APT_UPDATED=1
    fi
    timeout 900 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}
need() { # command package
    command -v "$1" >/dev/null && return 0
    can_install || die "'$1' is not installed; install it (e.g. 'sudo apt-get install -y $2') or run as root with apt-get"
    say "installing $2"
    apt_install "$2" || die "installing $2 with apt-get failed"
    command -v "$1" >/dev/null || die "'$1' still missing after installing $2"
}
need wrk wrk
need redis-server redis-server
need redis-cli redis-server

HAVE_NGINX=0
HAVE_VARNISH=0
if [[ "$ANCHORS" != 0 ]]; then
    for pair in nginx:nginx varnishd:varnish; do
        cmd="${pair%%:*}" pkg="${pair#*:}"
        PATH="$PATH:/usr/sbin:/sbin"
        if ! command -v "$cmd" >/dev/null; then
            if can_install; then
                say "installing $pkg"
                apt_install "$pkg" || say "installing $pkg failed: skipping its rows"
            else
                say "$cmd is not installed and apt-get cannot run here (not root): skipping the $pkg rows"
            fi
        fi
    done
    command -v nginx >/dev/null && HAVE_NGINX=1
    command -v varnishd >/dev/null && HAVE_VARNISH=1
else
    say "BENCH_ANCHORS=0: skipping nginx and Varnish"
fi

# The TLS rows need openssl (the certificate, the handshake check); the h2 rows also h2load.
HAVE_TLS=0
HAVE_H2LOAD=0
NGINX_TLS=0
NGINX_H2=0
if [[ "$TLS" != 0 ]]; then
    if command -v openssl >/dev/null; then
        HAVE_TLS=1
    else
        say "openssl is not installed: skipping the TLS and h2 rows"
    fi
    if (( HAVE_TLS )) && ! command -v h2load >/dev/null; then
        if can_install; then
            say "installing nghttp2-client (h2load)"
            apt_install nghttp2-client || say "installing nghttp2-client failed"
        fi
    fi
    if (( HAVE_TLS )); then
        if command -v h2load >/dev/null; then
            HAVE_H2LOAD=1
        else
            say "h2load is not installed (Debian package nghttp2-client): skipping the h2 rows"
        fi
    fi
    if (( HAVE_TLS && HAVE_NGINX )); then
        nginx_build="$(nginx -V 2>&1)"
        if [[ "$nginx_build" == *--with-http_ssl_module* ]]; then
            NGINX_TLS=1
        else
            say "this nginx has no ssl module: skipping its TLS and h2-over-TLS rows"
        fi
        if [[ "$nginx_build" == *--with-http_v2_module* ]]; then
            NGINX_H2=1
        else
            say "this nginx has no http_v2 module: skipping its h2 rows"
        fi
    fi
else
    say "BENCH_TLS=0: skipping the TLS and h2 rows"
fi

# --- build --------------------------------------------------------------------------------
say "building (release): cachegate, examples/bench_server"
bounded "$BUILD_TIMEOUT" cargo build --release --example bench_server --bin cachegate >&2 \
    || die "release build failed or timed out"
BENCH_SERVER_BIN="$REPO/target/release/examples/bench_server"
CACHEGATE_BIN="$REPO/target/release/cachegate"
PURGE_BIN=""
if [[ "$PURGE" != 0 ]]; then
    say "building the purge bench (cargo bench --bench purge --no-run)"
    bounded "$BUILD_TIMEOUT" cargo bench --bench purge --no-run --message-format=json \
        >"$WORKDIR/purge-build.json" 2>"$WORKDIR/purge-build.log" \
        || { cat "$WORKDIR/purge-build.log" >&2; die "building the purge bench failed or timed out"; }
    PURGE_BIN="$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "purge" and m.get("executable"):
        print(m["executable"])
' "$WORKDIR/purge-build.json" | tail -1)"
    [[ -x "$PURGE_BIN" ]] || die "cannot find the purge bench executable"
fi

# --- ports ----------------------------------------------------------------------------------
# Distinct free loopback ports, all held open together so they differ.
PORT_NAMES=(LIMIT_PORT LIMIT1_PORT ORIGIN_PORT REDIS_PORT
    CGMEM_PORT CGMEM_ADMIN CGMEM1_PORT CGMEM1_ADMIN CGMISS_PORT CGMISS_ADMIN CGRED_PORT CGRED_ADMIN CGMIX_PORT CGMIX_ADMIN
    CGBOUND_PORT CGBOUND_ADMIN NGINX_PORT VARNISH_PORT VARNISH_ADMIN)
# The Redis Cluster: six nodes, each with a client port and a cluster bus port (set with
# --cluster-port, never the default client port + 10000, which may be taken), and the two
# cachegate instances in front of it.
CLUSTER_NODES=6
if (( HAVE_TLS )); then
    PORT_NAMES+=(CGTLS_PORT CGTLS_ADMIN NGINX_TLS_PORT NGINX_H2C_PORT)
fi
if [[ "$CLUSTER" != 0 ]]; then
    PORT_NAMES+=(CGREDC_PORT CGREDC_ADMIN CGMIXC_PORT CGMIXC_ADMIN)
    for i in $(seq "$CLUSTER_NODES"); do
        PORT_NAMES+=("CLUSTER_PORT_$i" "CLUSTER_BUS_$i")
    done
fi
read -r -a PORTS < <(python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
' "${#PORT_NAMES[@]}")
(( ${#PORTS[@]} == ${#PORT_NAMES[@]} )) || die "could not find free loopback ports"
for i in "${!PORT_NAMES[@]}"; do
    [[ "${PORTS[$i]}" =~ ^[0-9]+$ ]] || die "could not find free loopback ports"
    printf -v "${PORT_NAMES[$i]}" '%s' "${PORTS[$i]}"
done
LIMIT="http://127.0.0.1:$LIMIT_PORT"
LIMIT1="http://127.0.0.1:$LIMIT1_PORT"
CGMEM1="http://127.0.0.1:$CGMEM1_PORT"
ORIGIN="http://127.0.0.1:$ORIGIN_PORT"
CGMEM="http://127.0.0.1:$CGMEM_PORT"
CGMISS="http://127.0.0.1:$CGMISS_PORT"
CGRED="http://127.0.0.1:$CGRED_PORT"
CGMIX="http://127.0.0.1:$CGMIX_PORT"
NGINX="http://127.0.0.1:$NGINX_PORT"
VARNISH="http://127.0.0.1:$VARNISH_PORT"
if (( HAVE_TLS )); then
    CGTLS="https://127.0.0.1:$CGTLS_PORT"
    NGINX_TLS_URL="https://127.0.0.1:$NGINX_TLS_PORT"
    NGINX_H2C="http://127.0.0.1:$NGINX_H2C_PORT"
fi
CLUSTER_PORTS=() CLUSTER_BUSES=()
if [[ "$CLUSTER" != 0 ]]; then
    CGREDC="http://127.0.0.1:$CGREDC_PORT"
    CGMIXC="http://127.0.0.1:$CGMIXC_PORT"
    for i in $(seq "$CLUSTER_NODES"); do
        port_var="CLUSTER_PORT_$i" bus_var="CLUSTER_BUS_$i"
        CLUSTER_PORTS+=("${!port_var}")
        CLUSTER_BUSES+=("${!bus_var}")
    done
    # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,.../
    CLUSTER_URL="redis+cluster://$(printf '127.0.0.1:%s,' "${CLUSTER_PORTS[@]}")"
    CLUSTER_URL="${CLUSTER_URL%,}/"
fi

# --- TLS material ------------------------------------------------------------------------------
# One self-signed ECDSA P-256 certificate (PKCS#8 key) for cachegate and nginx, and the client
# side's OpenSSL configuration: wrk and `openssl s_client` read it through OPENSSL_CONF and then
# offer TLS 1.3 with TLS_AES_128_GCM_SHA256 and X25519 only (h2load sets its own TLS 1.3 suites,
# so it gets --tls13-ciphers as well).
TLS_SUITE=TLS_AES_128_GCM_SHA256
TLS_GROUP=X25519
if (( HAVE_TLS )); then
    mkdir -p "$WORKDIR/tls"
    bounded 60 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$WORKDIR/tls/key.pem" -out "$WORKDIR/tls/cert.pem" >"$WORKDIR/tls/openssl.log" 2>&1 \
        || { cat "$WORKDIR/tls/openssl.log" >&2; die "openssl could not make the bench certificate"; }
    cat >"$WORKDIR/tls/client.cnf" <<EOF
openssl_conf = bench_conf
[bench_conf]
ssl_conf = bench_ssl
[bench_ssl]
system_default = bench_tls
[bench_tls]
MinProtocol = TLSv1.3
MaxProtocol = TLSv1.3
Ciphersuites = $TLS_SUITE
Groups = $TLS_GROUP
EOF
fi

# --- configs ----------------------------------------------------------------------------------
# write_config FILE LISTEN_PORT ADMIN_PORT DEBUG_HEADERS [SERVER_LINE] <<< "[cache] section": one
# config per cachegate, identical except for the listeners, debug_headers, the [cache] section
# and an optional extra line in [server] (the TLS instance's `tls`).
write_config() {
    local cache_section
    cache_section="$(cat)"
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
debug_headers = $4
${5:-}

[origin]
url = "$ORIGIN"
timeout = "10s"

$cache_section

# Every query parameter is part of the key (the default): a unique query string per request
# is a miss, forwarded and stored.
[[route]]
name = "b2k"
path = "/2k/{*rest}"
ttl = "10m"
tags = ["b2k"]

[[route]]
name = "b32k"
path = "/32k/{*rest}"
ttl = "10m"
tags = ["b32k"]
EOF
    "$CACHEGATE_BIN" check --config "$1" >/dev/null || die "cachegate rejected the bench config $1"
}

# Memory hits, and (a separate instance, so the hit instance's tier stays small) memory-only misses.
write_config "$WORKDIR/cg-mem.toml" "$CGMEM_PORT" "$CGMEM_ADMIN" false <<'EOF'
[cache]
memory_capacity = "512MiB"
memory_ttl = "10m"
EOF
write_config "$WORKDIR/cg-mem1.toml" "$CGMEM1_PORT" "$CGMEM1_ADMIN" false <<'EOF'
[cache]
memory_capacity = "512MiB"
memory_ttl = "10m"
EOF
write_config "$WORKDIR/cg-miss.toml" "$CGMISS_PORT" "$CGMISS_ADMIN" false <<'EOF'
[cache]
memory_capacity = "512MiB"
memory_ttl = "10m"
EOF
# Redis hits: the memory tier disabled by a zero bound and a zero lifetime, so every hit is a
# Redis hit. debug_headers adds X-Cache-Tier (checked below) and X-Cache-Key (~80 bytes more).
write_config "$WORKDIR/cg-redis.toml" "$CGRED_PORT" "$CGRED_ADMIN" true <<EOF
[cache]
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
key_prefix = "bench:hit"
memory_capacity = "0B"
memory_ttl = "0s"
EOF
# Misses with both tiers: every miss is stored in memory and in Redis.
write_config "$WORKDIR/cg-mixed.toml" "$CGMIX_PORT" "$CGMIX_ADMIN" false <<EOF
[cache]
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
key_prefix = "bench:miss"
memory_capacity = "512MiB"
memory_ttl = "10m"
EOF
# The same two against the Redis Cluster.
if [[ "$CLUSTER" != 0 ]]; then
    write_config "$WORKDIR/cg-redis-cluster.toml" "$CGREDC_PORT" "$CGREDC_ADMIN" true <<EOF
[cache]
redis_url = "$CLUSTER_URL"
key_prefix = "bench:hit"
memory_capacity = "0B"
memory_ttl = "0s"
EOF
    write_config "$WORKDIR/cg-mixed-cluster.toml" "$CGMIXC_PORT" "$CGMIXC_ADMIN" false <<EOF
[cache]
redis_url = "$CLUSTER_URL"
key_prefix = "bench:miss"
memory_capacity = "512MiB"
memory_ttl = "10m"
EOF
fi
# Memory hits over TLS (HTTP/1.1 and h2 by ALPN) on a listener of their own.
if (( HAVE_TLS )); then
    write_config "$WORKDIR/cg-tls.toml" "$CGTLS_PORT" "$CGTLS_ADMIN" false \
        "tls = { cert = \"$WORKDIR/tls/cert.pem\", key = \"$WORKDIR/tls/key.pem\" }" <<'EOF'
[cache]
memory_capacity = "512MiB"
memory_ttl = "10m"
EOF
fi
MEMORY_BOUND=$(( 64 * 1024 * 1024 ))
write_config "$WORKDIR/cg-bound.toml" "$CGBOUND_PORT" "$CGBOUND_ADMIN" false <<'EOF'
[cache]
memory_capacity = "64MiB"
memory_ttl = "10m"
EOF

# --- start --------------------------------------------------------------------------------------
start() { # name cmd...: starts cmd in the background, logging to $WORKDIR/name.log; sets LAST_PID
    # Detached from the terminal (setsid), so that a Ctrl-C on the terminal does not reach it: the
    # supervisor stops it by pid, in order. (setsid does not fork here: a background job of
    # this non-interactive shell is not a process group leader, so the pid stays the server's.)
    setsid "${@:2}" >"$WORKDIR/$1.log" 2>&1 &
    LAST_PID=$!
    echo "$LAST_PID" >>"$WORKDIR/pids"
}
wait_ready() { # name url log
    for _ in $(seq 100); do
        if curl -fs -o /dev/null --max-time 1 "$2"; then
            return 0
        fi
        pause 0.1
    done
    cat "$3" >&2 || true
    die "$1 did not become ready at $2 within 10 s"
}

start limit "$BENCH_SERVER_BIN" --listen "127.0.0.1:$LIMIT_PORT" --limit
LIMIT_PID=$LAST_PID
# The same two servers on one worker thread (tokio reads TOKIO_WORKER_THREADS), for scaling.
TOKIO_WORKER_THREADS=1 start limit1 "$BENCH_SERVER_BIN" --listen "127.0.0.1:$LIMIT1_PORT" --limit
LIMIT1_PID=$LAST_PID
start origin "$BENCH_SERVER_BIN" --listen "127.0.0.1:$ORIGIN_PORT"
ORIGIN_PID=$LAST_PID
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORKDIR"
REDIS_PID=$LAST_PID
redis() { # redis-cli against the bench redis-server
    timeout 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}
wait_ready "limit server" "$LIMIT/2k/x" "$WORKDIR/limit.log"
wait_ready "origin" "$ORIGIN/2k/x" "$WORKDIR/origin.log"
for _ in $(seq 100); do
    [[ "$(redis ping 2>/dev/null)" == "PONG" ]] && break
    pause 0.1
done
[[ "$(redis ping 2>/dev/null)" == "PONG" ]] || { cat "$WORKDIR/redis.log" >&2; die "redis-server did not answer on port $REDIS_PORT within 10 s"; }

# The Redis Cluster: six empty nodes, each in its own directory, joined by redis-cli into three
# masters with one replica each; ready when every node says cluster_state:ok.
redis_at() { # PORT args...: redis-cli against one node
    timeout 10 redis-cli -h 127.0.0.1 -p "$1" "${@:2}"
}
CLUSTER_PIDS=""
if [[ "$CLUSTER" != 0 ]]; then
    mkdir -p "$WORKDIR/cluster"
    for i in "${!CLUSTER_PORTS[@]}"; do
        port="${CLUSTER_PORTS[$i]}"
        mkdir -p "$WORKDIR/cluster/$port"
        start "redis-cluster-$port" redis-server --port "$port" --cluster-port "${CLUSTER_BUSES[$i]}" \
            --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "$WORKDIR/cluster/nodes-$port.conf" \
            --cluster-node-timeout 2000 --repl-ping-replica-period 1 --repl-diskless-sync-delay 0 \
            --save "" --appendonly no --dir "$WORKDIR/cluster/$port"
        CLUSTER_PIDS="$CLUSTER_PIDS $LAST_PID"
    done
    for port in "${CLUSTER_PORTS[@]}"; do
        for _ in $(seq 100); do
            [[ "$(redis_at "$port" ping 2>/dev/null)" == "PONG" ]] && break
            pause 0.1
        done
        [[ "$(redis_at "$port" ping 2>/dev/null)" == "PONG" ]] \
            || { cat "$WORKDIR/redis-cluster-$port.log" >&2; die "cluster node $port did not answer within 10 s"; }
    done
    say "creating the Redis Cluster (3 masters, 3 replicas) on ports ${CLUSTER_PORTS[*]}"
    bounded 60 redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" \
        --cluster-replicas 1 --cluster-yes >"$WORKDIR/cluster-create.log" 2>&1 \
        || { cat "$WORKDIR/cluster-create.log" >&2; die "redis-cli --cluster create failed or timed out"; }
    cluster_ok() { # every node: cluster_state:ok
        local port
        for port in "${CLUSTER_PORTS[@]}"; do
            redis_at "$port" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok' || return 1
        done
    }
    for _ in $(seq 300); do
        cluster_ok && break
        pause 0.1
    done
    cluster_ok || {
        for port in "${CLUSTER_PORTS[@]}"; do
            echo "node $port:" >&2
            redis_at "$port" cluster info 2>&1 | tr -d '\r' | grep -E 'cluster_state|cluster_slots_ok|known_nodes' >&2 || true
        done
        die "the Redis Cluster did not reach cluster_state:ok on every node within 30 s"
    }
fi

RUST_LOG=warn start cg-mem "$CACHEGATE_BIN" run --config "$WORKDIR/cg-mem.toml"
CGMEM_PID=$LAST_PID
RUST_LOG=warn TOKIO_WORKER_THREADS=1 start cg-mem1 "$CACHEGATE_BIN" run --config "$WORKDIR/cg-mem1.toml"
CGMEM1_PID=$LAST_PID
RUST_LOG=warn start cg-miss "$CACHEGATE_BIN" run --config "$WORKDIR/cg-miss.toml"
CGMISS_PID=$LAST_PID
RUST_LOG=warn start cg-redis "$CACHEGATE_BIN" run --config "$WORKDIR/cg-redis.toml"
CGRED_PID=$LAST_PID
RUST_LOG=warn start cg-mixed "$CACHEGATE_BIN" run --config "$WORKDIR/cg-mixed.toml"
CGMIX_PID=$LAST_PID
wait_ready "cachegate (memory hit)" "http://127.0.0.1:$CGMEM_ADMIN/healthz" "$WORKDIR/cg-mem.log"
wait_ready "cachegate (memory hit, 1 worker)" "http://127.0.0.1:$CGMEM1_ADMIN/healthz" "$WORKDIR/cg-mem1.log"
wait_ready "cachegate (memory miss)" "http://127.0.0.1:$CGMISS_ADMIN/healthz" "$WORKDIR/cg-miss.log"
wait_ready "cachegate (redis hit)" "http://127.0.0.1:$CGRED_ADMIN/healthz" "$WORKDIR/cg-redis.log"
wait_ready "cachegate (memory + redis)" "http://127.0.0.1:$CGMIX_ADMIN/healthz" "$WORKDIR/cg-mixed.log"
CGTLS_PID=""
if (( HAVE_TLS )); then
    RUST_LOG=warn start cg-tls "$CACHEGATE_BIN" run --config "$WORKDIR/cg-tls.toml"
    CGTLS_PID=$LAST_PID
    wait_ready "cachegate (TLS)" "http://127.0.0.1:$CGTLS_ADMIN/healthz" "$WORKDIR/cg-tls.log"
fi
CGREDC_PID="" CGMIXC_PID=""
if [[ "$CLUSTER" != 0 ]]; then
    RUST_LOG=warn start cg-redis-cluster "$CACHEGATE_BIN" run --config "$WORKDIR/cg-redis-cluster.toml"
    CGREDC_PID=$LAST_PID
    RUST_LOG=warn start cg-mixed-cluster "$CACHEGATE_BIN" run --config "$WORKDIR/cg-mixed-cluster.toml"
    CGMIXC_PID=$LAST_PID
    wait_ready "cachegate (redis hit, cluster)" "http://127.0.0.1:$CGREDC_ADMIN/healthz" "$WORKDIR/cg-redis-cluster.log"
    wait_ready "cachegate (memory + redis, cluster)" "http://127.0.0.1:$CGMIXC_ADMIN/healthz" "$WORKDIR/cg-mixed-cluster.log"
fi

fill_template() { # template output KEY=VALUE...
    local sed_args=() kv
    for kv in "${@:3}"; do
        sed_args+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${sed_args[@]}" "$1" >"$2"
    ! grep -q '@[A-Z_]*@' "$2" || die "unfilled placeholder in $2"
}

NGINX_PID=""
if (( HAVE_NGINX )); then
    mkdir -p "$WORKDIR/nginx"
    user_directive=""
    if [[ "$(id -u)" -eq 0 ]]; then
        # Workers would otherwise switch to 'nobody', who cannot write the cache in $WORKDIR.
        user_directive="user root root;"
    fi
    fill_template "$BENCH_DIR/nginx.conf.in" "$WORKDIR/nginx/nginx.conf" \
        "USER=$user_directive" "WORKERS=$CORES" "DIR=$WORKDIR/nginx" \
        "ORIGIN_PORT=$ORIGIN_PORT" "PORT=$NGINX_PORT"
    # The TLS and h2c servers, when this nginx can have them (nginx.conf includes the file).
    : >"$WORKDIR/nginx/extra-servers.conf"
    if (( NGINX_TLS )); then
        fill_template "$BENCH_DIR/nginx-tls.conf.in" "$WORKDIR/nginx/tls.conf" \
            "PORT=$NGINX_TLS_PORT" "HTTP2=$( (( NGINX_H2 )) && echo http2)" \
            "CERT=$WORKDIR/tls/cert.pem" "KEY=$WORKDIR/tls/key.pem" "SUITE=$TLS_SUITE" "GROUP=$TLS_GROUP"
        cat "$WORKDIR/nginx/tls.conf" >>"$WORKDIR/nginx/extra-servers.conf"
    fi
    if (( HAVE_TLS && NGINX_H2 )); then
        fill_template "$BENCH_DIR/nginx-h2c.conf.in" "$WORKDIR/nginx/h2c.conf" "PORT=$NGINX_H2C_PORT"
        cat "$WORKDIR/nginx/h2c.conf" >>"$WORKDIR/nginx/extra-servers.conf"
    fi
    timeout 30 nginx -t -q -p "$WORKDIR/nginx/" -e "$WORKDIR/nginx/error.log" -c "$WORKDIR/nginx/nginx.conf" \
        || die "nginx rejected $WORKDIR/nginx/nginx.conf"
    start nginx nginx -p "$WORKDIR/nginx/" -e "$WORKDIR/nginx/error.log" -c "$WORKDIR/nginx/nginx.conf"
    NGINX_PID=$LAST_PID
    wait_ready "nginx" "$NGINX/2k/ready" "$WORKDIR/nginx/error.log"
fi
VARNISH_PID=""
if (( HAVE_VARNISH )); then
    fill_template "$BENCH_DIR/varnish.vcl.in" "$WORKDIR/varnish.vcl" "ORIGIN_PORT=$ORIGIN_PORT"
    # -j none: no privilege separation, so the child can read the VCL and work dir in $WORKDIR.
    start varnish varnishd -F -j none -n "$WORKDIR/varnish" -a "127.0.0.1:$VARNISH_PORT" \
        -T "127.0.0.1:$VARNISH_ADMIN" -f "$WORKDIR/varnish.vcl" -s malloc,256m
    VARNISH_PID=$LAST_PID
    wait_ready "varnish" "$VARNISH/2k/ready" "$WORKDIR/varnish.log"
fi

# --- checks: hits are hits -------------------------------------------------------------------
# -k: the TLS rows' certificate is self-signed.
header_of() { # url header [curl args...] -> value of that response header (empty when absent)
    { curl -sk --max-time 5 "${@:3}" -D - -o /dev/null "$1" || true; } | tr -d '\r' \
        | awk -F': *' -v h="$2" 'tolower($1) == h { print $2 }'
}
size_of() { # url -> body size in bytes
    curl -sk --max-time 5 -o /dev/null -w '%{size_download}' "$1" || echo 0
}
expect_hit() { # label url header: a second request must say HIT in that header
    local first second
    first="$(header_of "$2" "$3")"
    for _ in $(seq 20); do
        second="$(header_of "$2" "$3")"
        [[ "$second" == "HIT" ]] && return 0
        pause 0.1
    done
    die "$1: expected $3: HIT from $2, got '$second' (first: '$first')"
}
expect_miss_then_hit() { # label base header: a fresh unique URL is a MISS, then a HIT
    local probe="$2/2k/probe?bench=probe-$RANDOM$RANDOM" first
    first="$(header_of "$probe" "$3")"
    [[ "$first" == "MISS" ]] || die "$1: expected $3: MISS for the new URL $probe, got '$first'"
    expect_hit "$1" "$probe" "$3"
}

for size in 2k:2048 32k:32768; do
    path="/${size%%:*}/x" bytes="${size#*:}"
    [[ "$(size_of "$LIMIT$path")" == "$bytes" ]] || die "limit server: $path is not $bytes bytes"
    [[ "$(size_of "$ORIGIN$path")" == "$bytes" ]] || die "origin: $path is not $bytes bytes"
    expect_hit "cachegate memory hit" "$CGMEM$path" x-cache
    [[ "$(size_of "$CGMEM$path")" == "$bytes" ]] || die "cachegate: $path is not $bytes bytes"
    if (( HAVE_NGINX )); then expect_hit "nginx" "$NGINX$path" x-cache-status; fi
    if (( HAVE_VARNISH )); then expect_hit "varnish" "$VARNISH$path" x-cache; fi
done
expect_miss_then_hit "cachegate miss (memory only)" "$CGMISS" x-cache
expect_miss_then_hit "cachegate miss (with redis)" "$CGMIX" x-cache
if [[ "$CLUSTER" != 0 ]]; then expect_miss_then_hit "cachegate miss (with redis, cluster)" "$CGMIXC" x-cache; fi
if (( HAVE_NGINX )); then expect_miss_then_hit "nginx miss" "$NGINX" x-cache-status; fi
if (( HAVE_VARNISH )); then expect_miss_then_hit "varnish miss" "$VARNISH" x-cache; fi

# TLS: the bench clients' OpenSSL (wrk's, through OPENSSL_CONF) negotiates the pinned version,
# suite and group with both servers, and their answers are hits of the right size.
tls_params() { # port -> "protocol suite group" as `openssl s_client` with the clients' config sees them
    { OPENSSL_CONF="$WORKDIR/tls/client.cnf" timeout 10 openssl s_client -connect "127.0.0.1:$1" </dev/null 2>/dev/null || true; } \
        | awk '
            /^New, / { p = $2; c = $5; sub(/,$/, "", p) }
            /^(Server|Peer) Temp Key:/ { g = $4; sub(/,$/, "", g) }
            END { print p, c, g }'
}
# expect_h2 label url header curl-flag: the answer comes over HTTP/2 and says HIT in that header.
expect_h2() {
    local out
    for _ in $(seq 20); do
        out="$({ curl -sk --max-time 5 "$4" -D - -o /dev/null -w 'http_version=%{http_version}\n' "$2" || true; } | tr -d '\r')"
        if grep -qx 'http_version=2' <<<"$out" && grep -qix "$3: HIT" <<<"$out"; then
            return 0
        fi
        pause 0.1
    done
    die "$1: expected an HTTP/2 answer with $3: HIT from $2 (curl $4), got: $(tr '\n' ' ' <<<"$out")"
}
TLS_ENDPOINTS=()
if (( HAVE_TLS )); then TLS_ENDPOINTS+=("cachegate|$CGTLS_PORT|$CGTLS|x-cache"); fi
if (( NGINX_TLS )); then TLS_ENDPOINTS+=("nginx|$NGINX_TLS_PORT|$NGINX_TLS_URL|x-cache-status"); fi
for endpoint in "${TLS_ENDPOINTS[@]}"; do
    IFS='|' read -r who port base header <<<"$endpoint"
    got="$(tls_params "$port")"
    say "$who over TLS negotiates: $got"
    [[ "$got" == "TLSv1.3 $TLS_SUITE $TLS_GROUP" ]] \
        || die "$who over TLS: expected 'TLSv1.3 $TLS_SUITE $TLS_GROUP' with the bench clients' OpenSSL config, got '$got'"
    expect_hit "$who over TLS" "$base/2k/x" "$header"
    [[ "$(size_of "$base/2k/x")" == 2048 ]] || die "$who over TLS: /2k/x is not 2048 bytes"
    if (( HAVE_H2LOAD )) && [[ "$who" == cachegate || "$NGINX_H2" == 1 ]]; then
        expect_h2 "$who, h2 over TLS" "$base/2k/x" "$header" --http2
    fi
done
if (( HAVE_H2LOAD )); then
    expect_h2 "cachegate, h2c" "$CGMEM/2k/x" x-cache --http2-prior-knowledge
    if (( NGINX_H2 )); then expect_h2 "nginx, h2c" "$NGINX_H2C/2k/x" x-cache-status --http2-prior-knowledge; fi
fi

# The limit must answer what a cachegate memory hit answers: same header names, same body.
hit_headers() { # url -> sorted header names
    { curl -s --max-time 5 -D - -o /dev/null "$1" || true; } | tr -d '\r' \
        | awk -F':' 'NR > 1 && NF > 1 { print tolower($1) }' | sort | tr '\n' ' '
}
HIT_HEADERS="$(hit_headers "$CGMEM/2k/x")"
LIMIT_HEADERS="$(hit_headers "$LIMIT/2k/x")"
say "cachegate memory hit headers: $HIT_HEADERS"
say "limit headers:                $LIMIT_HEADERS"
[[ "$HIT_HEADERS" == "$LIMIT_HEADERS" ]] \
    || say "warning: the limit's header names differ from a cachegate hit's (compare the lines above)"
{ curl -s --max-time 5 -D - -o /dev/null "$CGMEM/2k/x"; curl -s --max-time 5 -D - -o /dev/null "$LIMIT/2k/x"; } \
    >"$WORKDIR/headers.txt" 2>/dev/null || true

# The Redis-hit rows cycle through 1000 URLs: fill them all, then check every one is a Redis hit.
REDIS_URLS=1000
bounded 120 python3 "$BENCH_DIR/fill.py" 127.0.0.1 "$CGRED_PORT" "/2k/r?i=" "$REDIS_URLS" HIT/redis 60 \
    || { cat "$WORKDIR/cg-redis.log" >&2; die "the Redis-hit URLs are not all Redis hits"; }
if [[ "$CLUSTER" != 0 ]]; then
    bounded 120 python3 "$BENCH_DIR/fill.py" 127.0.0.1 "$CGREDC_PORT" "/2k/r?i=" "$REDIS_URLS" HIT/redis 60 \
        || { cat "$WORKDIR/cg-redis-cluster.log" >&2; die "the Redis-hit URLs are not all Redis hits on the cluster"; }
fi

# A Redis-tier lookup is one plain GET of the entry; counting the GET calls (INFO commandstats,
# summed over every node of the row's Redis) around the measurement shows that every measured
# request was one Redis lookup (none answered from memory or coalesced, none a miss).
get_calls() { # PORT...
    local port n total=0
    for port in "$@"; do
        n="$(redis_at "$port" info commandstats | tr -d '\r' \
            | awk -F'[:=,]' '$1 == "cmdstat_get" { print $3 }' | grep . || echo 0)"
        total=$(( total + n ))
    done
    echo "$total"
}
now_s() { date +%s.%N; }
# Any GET the instances make in the background (there should be none: their heartbeat is a
# script) is measured over one idle second and subtracted. The pauses let requests still in
# flight from the warm-up (before) and from the measurement (after) finish first.
lookups_before() { # base path of the row's files, then the Redis ports
    local c0
    pause 0.5
    c0="$(get_calls "${@:2}")"
    pause 1
    echo "$(( $(get_calls "${@:2}") - c0 ))" >"$1.idle"
    echo "$(get_calls "${@:2}") $(now_s)" >"$1.lookups"
}
lookups_after() { # base path, then the Redis ports
    pause 0.5
    echo "$(get_calls "${@:2}") $(now_s)" >>"$1.lookups"
}

# --- CPU accounting -------------------------------------------------------------------------------
# ticks PID...: utime + stime (clock ticks) summed over these processes and their descendants.
ticks() {
    [[ $# -gt 0 ]] || { echo 0; return; }
    local files=() p
    for p in $(descendants "$@"); do
        files+=("/proc/$p/stat")
    done
    # Fields 14 and 15; the command name (field 2) may contain spaces, so count after ") ".
    cat "${files[@]}" 2>/dev/null | awk '{ sub(/^.*\) /, ""); s += $12 + $13 } END { print s + 0 }'
}

# --- rows -----------------------------------------------------------------------------------------
# name, label, body size, kind (limit, origin, hit, redis_hit, miss, redis_miss, h2_hit: a hit
# measured with h2load)
ROWS=(
    "limit_2k|limit: bare hyper, 2 KiB|2k|limit"
    "limit_32k|limit: bare hyper, 32 KiB|32k|limit"
    "origin_2k|origin direct, 2 KiB|2k|origin"
    "cg_mem_hit_2k|cachegate memory hit, 2 KiB|2k|hit"
    "cg_mem_hit_32k|cachegate memory hit, 32 KiB|32k|hit"
    "limit_2k_1w|limit: bare hyper, 2 KiB, 1 worker thread|2k|limit"
    "cg_mem_hit_2k_1w|cachegate memory hit, 2 KiB, 1 worker thread|2k|hit"
    "cg_redis_hit_2k|cachegate Redis hit (memory off), 2 KiB|2k|redis_hit"
)
if [[ "$CLUSTER" != 0 ]]; then
    ROWS+=("cg_cluster_hit_2k|cachegate Redis hit (memory off), cluster, 2 KiB|2k|redis_hit")
fi
ROWS+=(
    "cg_miss_mem_2k|cachegate miss, memory only, 2 KiB|2k|miss"
    "cg_miss_redis_2k|cachegate miss, memory + Redis, 2 KiB|2k|redis_miss"
)
if [[ "$CLUSTER" != 0 ]]; then
    ROWS+=("cg_miss_cluster_2k|cachegate miss, memory + Redis, cluster, 2 KiB|2k|redis_miss")
fi
if (( HAVE_NGINX )); then
    ROWS+=(
        "nginx_hit_2k|nginx proxy_cache hit, 2 KiB|2k|hit"
        "nginx_hit_32k|nginx proxy_cache hit, 32 KiB|32k|hit"
        "nginx_miss_2k|nginx proxy_cache miss, 2 KiB|2k|miss"
    )
fi
if (( HAVE_VARNISH )); then
    ROWS+=(
        "varnish_hit_2k|Varnish hit, 2 KiB|2k|hit"
        "varnish_hit_32k|Varnish hit, 32 KiB|32k|hit"
        "varnish_miss_2k|Varnish miss, 2 KiB|2k|miss"
    )
fi
if (( HAVE_TLS )); then
    ROWS+=("cg_tls_hit_2k|cachegate memory hit, TLS, 2 KiB|2k|hit")
    if (( NGINX_TLS )); then ROWS+=("nginx_tls_hit_2k|nginx proxy_cache hit, TLS, 2 KiB|2k|hit"); fi
fi
if (( HAVE_H2LOAD )); then
    ROWS+=("cg_h2_hit_2k|cachegate memory hit, h2 over TLS, 2 KiB|2k|h2_hit")
    if (( NGINX_TLS && NGINX_H2 )); then ROWS+=("nginx_h2_hit_2k|nginx proxy_cache hit, h2 over TLS, 2 KiB|2k|h2_hit"); fi
    ROWS+=("cg_h2c_hit_2k|cachegate memory hit, h2c, 2 KiB|2k|h2_hit")
    if (( NGINX_H2 )); then ROWS+=("nginx_h2c_hit_2k|nginx proxy_cache hit, h2c, 2 KiB|2k|h2_hit"); fi
fi
: >"$WORKDIR/rows.tsv"
for row in "${ROWS[@]}"; do
    IFS='|' read -r name label size kind <<<"$row"
    printf '%s\t%s\t%s\t%s\n' "$name" "$label" "$size" "$kind" >>"$WORKDIR/rows.tsv"
done

# The wrk results as "rps p50_ms p99_ms requests errors non2xx".
parse_wrk() {
    python3 - "$1" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
units = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
def latency(pct):
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s|m|h)\s*$" % pct, text, re.M)
    if not m:
        sys.exit("no %s%% latency in wrk output:\n%s" % (pct, text))
    return float(m.group(1)) * units[m.group(2)]
rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
total = re.search(r"^\s*(\d+) requests in", text, re.M)
if not rps or not total:
    sys.exit("cannot read wrk output:\n" + text)
err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = sum(int(g) for g in err.groups()) if err else 0
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(float(rps.group(1)), latency(50), latency(99), total.group(1), errors, non2xx.group(1) if non2xx else 0)
EOF
}

# The h2load results in the same form, "rps p50_ms p99_ms requests errors non2xx": req/s and the
# counts from its summary, p50/p99 from its per-request log (start µs, status, µs to the end of
# the response); fails unless it spoke PROTOCOL (h2 or h2c) and, over TLS, the pinned suite.
parse_h2load() { # output log protocol
    python3 - "$1" "$2" "$3" "$TLS_SUITE" "$TLS_GROUP" <<'EOF'
import re, sys
out, log, proto, suite, group = sys.argv[1:6]
text = open(out).read()
def need(pattern):
    m = re.search(pattern, text, re.M)
    if not m:
        sys.exit("cannot read h2load output (%s):\n%s" % (pattern, text))
    return m
got = need(r"^Application protocol: (\S+)").group(1)
if got != proto:
    sys.exit("h2load spoke %s, not %s:\n%s" % (got, proto, text))
if proto == "h2":
    tls = "%s %s %s" % (need(r"^TLS Protocol: (\S+)").group(1), need(r"^Cipher: (\S+)").group(1),
                        need(r"^Server Temp Key: ([^ ,]+)").group(1))
    if tls != "TLSv1.3 %s %s" % (suite, group):
        sys.exit("h2load negotiated %s, not TLSv1.3 %s %s" % (tls, suite, group))
rps = float(need(r"^finished in [\d.]+\w*, ([\d.]+) req/s").group(1))
m = need(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
         r"(\d+) errored, (\d+) timeout")
done, failed, errored, timeout = int(m.group(3)), int(m.group(5)), int(m.group(6)), int(m.group(7))
codes = need(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
non2xx = int(codes.group(3)) + int(codes.group(4))
times = []
for line in open(log):
    f = line.split("\t")
    if len(f) >= 3 and f[2].strip().isdigit():
        times.append(int(f[2]))
if not times:
    sys.exit("no requests in the h2load log " + log)
times.sort()
pct = lambda p: times[min(len(times) - 1, int(len(times) * p / 100))] / 1000.0  # noqa: E731
print(rps, pct(50), pct(99), done, failed + errored + timeout, non2xx)
EOF
}

# measure ROW RUN: warm up, then measure with CPU samples right around the measured wrk run.
measure() {
    local name label size kind run="$2" base url proxy_pids="" redis_pids="" origin_pids="" header="" args=()
    local redis_ports=()
    IFS='|' read -r name label size kind <<<"$1"
    base="$RAW/$name.run$run"
    case "$name" in
        limit_*_1w) url="$LIMIT1/$size/x"; proxy_pids="$LIMIT1_PID" ;;
        limit_*) url="$LIMIT/$size/x"; proxy_pids="$LIMIT_PID" ;;
        origin_*) url="$ORIGIN/$size/x"; proxy_pids="$ORIGIN_PID" ;;
        cg_mem_hit_*_1w) url="$CGMEM1/$size/x"; proxy_pids="$CGMEM1_PID"; header=x-cache ;;
        cg_mem_hit_*) url="$CGMEM/$size/x"; proxy_pids="$CGMEM_PID"; header=x-cache ;;
        cg_redis_hit_*) url="$CGRED/$size/r"; proxy_pids="$CGRED_PID"; redis_pids="$REDIS_PID"
            redis_ports=("$REDIS_PORT"); args=(-s "$BENCH_DIR/cycle.lua") ;;
        cg_cluster_hit_*) url="$CGREDC/$size/r"; proxy_pids="$CGREDC_PID"; redis_pids="$CLUSTER_PIDS"
            redis_ports=("${CLUSTER_PORTS[@]}"); args=(-s "$BENCH_DIR/cycle.lua") ;;
        cg_miss_mem_*) url="$CGMISS/$size/m"; proxy_pids="$CGMISS_PID" ;;
        cg_miss_redis_*) url="$CGMIX/$size/m"; proxy_pids="$CGMIX_PID"; redis_pids="$REDIS_PID" ;;
        cg_miss_cluster_*) url="$CGMIXC/$size/m"; proxy_pids="$CGMIXC_PID"; redis_pids="$CLUSTER_PIDS" ;;
        nginx_hit_*) url="$NGINX/$size/x"; proxy_pids="$NGINX_PID"; header=x-cache-status ;;
        nginx_miss_*) url="$NGINX/$size/m"; proxy_pids="$NGINX_PID" ;;
        varnish_hit_*) url="$VARNISH/$size/x"; proxy_pids="$VARNISH_PID"; header=x-cache ;;
        varnish_miss_*) url="$VARNISH/$size/m"; proxy_pids="$VARNISH_PID" ;;
        cg_tls_hit_* | cg_h2_hit_*) url="$CGTLS/$size/x"; proxy_pids="$CGTLS_PID"; header=x-cache ;;
        cg_h2c_hit_*) url="$CGMEM/$size/x"; proxy_pids="$CGMEM_PID"; header=x-cache ;;
        nginx_tls_hit_* | nginx_h2_hit_*) url="$NGINX_TLS_URL/$size/x"; proxy_pids="$NGINX_PID"; header=x-cache-status ;;
        nginx_h2c_hit_*) url="$NGINX_H2C/$size/x"; proxy_pids="$NGINX_PID"; header=x-cache-status ;;
        *) die "unknown row $name" ;;
    esac
    case "$kind" in
        hit | redis_hit | miss | redis_miss | h2_hit) origin_pids="$ORIGIN_PID" ;;
    esac
    # The clients' TLS: wrk's OpenSSL reads the pinned version, suite and group from this config;
    # h2load takes the suite on its command line. h2load speaks h2 by ALPN over TLS and h2c by
    # prior knowledge without; curl checks the hit the same way after the run.
    local client_env=() curl_args=() h2_proto=""
    if [[ "$url" == https:* ]]; then client_env=(env "OPENSSL_CONF=$WORKDIR/tls/client.cnf"); fi
    if [[ "$kind" == h2_hit ]]; then
        if [[ "$url" == https:* ]]; then h2_proto=h2 curl_args=(--http2); else h2_proto=h2c curl_args=(--http2-prior-knowledge); fi
    fi
    local h2load_cmd=(h2load -t "$THREADS" -c "$CONNECTIONS" -m "$H2_STREAMS" --tls13-ciphers="$TLS_SUITE" --groups="$TLS_GROUP")
    local p
    for p in $proxy_pids $redis_pids $origin_pids; do
        kill -0 "$p" 2>/dev/null || die "$label: a server it needs (pid $p) is no longer running (see the logs in $WORKDIR)"
    done
    case "$kind" in
        miss | redis_miss) args=(-s "$BENCH_DIR/unique.lua") ;;
    esac
    # Script arguments: unique.lua PATH NONCE; cycle.lua PREFIX N THREADS.
    local path="/$size/m" limit=$(( DURATION_S + WARMUP_S + 60 )) script_args=()
    if [[ "$kind" == redis_hit ]]; then
        script_args=("/$size/r?i=" "$REDIS_URLS" "$THREADS")
    elif (( ${#args[@]} )); then
        script_args=("$path")
    fi
    if (( WARMUP_S > 0 )); then
        say "run $run/$RUNS: warming up '$label' for ${WARMUP_S}s"
        local warm_args=("${script_args[@]}")
        [[ "$kind" == *miss ]] && warm_args+=("warm$run-$RANDOM")
        if [[ "$kind" == h2_hit ]]; then
            bounded "$limit" "${client_env[@]}" "${h2load_cmd[@]}" -D "${WARMUP_S}s" "$url" >"$base.warmup.txt" \
                || die "h2load warm-up failed for $name: $(cat "$base.warmup.txt")"
            rm -f "$base.warmup.txt"
        else
            bounded "$limit" "${client_env[@]}" wrk -t "$THREADS" -c "$CONNECTIONS" -d "${WARMUP_S}s" --timeout 5s \
                "${args[@]}" "$url" -- "${warm_args[@]}" >/dev/null || die "wrk warm-up failed for $name"
        fi
    fi
    [[ "$kind" == *miss ]] && script_args+=("$name-$run")
    if [[ "$kind" == redis_hit ]]; then lookups_before "$base" "${redis_ports[@]}"; fi
    say "run $run/$RUNS: measuring '$label' for ${DURATION_S}s: $url"
    local p0 r0 o0 p1 r1 o1 rc=0
    # shellcheck disable=SC2086 # space-separated lists of pids
    p0="$(ticks $proxy_pids)" r0="$(ticks $redis_pids)" o0="$(ticks $origin_pids)"
    if [[ "$kind" == h2_hit ]]; then
        bounded "$limit" "${client_env[@]}" "${h2load_cmd[@]}" -D "${DURATION_S}s" --log-file="$base.log" \
            "$url" >"$base.txt" 2>&1 || rc=$?
    else
        bounded "$limit" "${client_env[@]}" wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION_S}s" --timeout 5s --latency \
            "${args[@]}" "$url" -- "${script_args[@]}" >"$base.txt" || rc=$?
    fi
    # shellcheck disable=SC2086 # space-separated lists of pids
    p1="$(ticks $proxy_pids)" r1="$(ticks $redis_pids)" o1="$(ticks $origin_pids)"
    (( rc == 0 )) || die "the client failed for $name (exit $rc): $(cat "$base.txt")"
    if [[ "$kind" == redis_hit ]]; then lookups_after "$base" "${redis_ports[@]}"; fi
    local result
    if [[ "$kind" == h2_hit ]]; then
        result="$(parse_h2load "$base.txt" "$base.log" "$h2_proto")" || die "cannot use the h2load output of $name"
        # The per-request log is large and read once.
        rm -f "$base.log"
    else
        result="$(parse_wrk "$base.txt")" || die "cannot read the wrk output of $name"
    fi
    echo "$result $(( p1 - p0 )) $(( r1 - r0 )) $(( o1 - o0 ))" >"$base.res"
    # Still hits after the run (the CPU of the origin in the table shows the same for every hit row).
    if [[ -n "$header" ]]; then
        local after
        after="$(header_of "$url" "$header" "${curl_args[@]}")"
        [[ "$after" == "HIT" ]] || say "warning: after the run $url answered $header: '$after', not HIT"
    fi
    if [[ "$kind" == redis_hit ]]; then
        local tier
        tier="$(header_of "$url?i=7" x-cache-tier)"
        [[ "$tier" == "redis" ]] || say "warning: after the run $url?i=7 answered X-Cache-Tier: '$tier', not redis"
    fi
}

SERIES_START=$SECONDS
for run in $(seq "$RUNS"); do
    for row in "${ROWS[@]}"; do
        measure "$row" "$run"
    done
done
say "series done in $(( SECONDS - SERIES_START ))s"

# Proof that the misses were stored: a URL from the last measured miss run is now a hit.
STORED_CHECKS=("cg_miss_mem_2k|$CGMISS" "cg_miss_redis_2k|$CGMIX")
if [[ "$CLUSTER" != 0 ]]; then STORED_CHECKS+=("cg_miss_cluster_2k|$CGMIXC"); fi
for pair in "${STORED_CHECKS[@]}"; do
    IFS='|' read -r name base_url <<<"$pair"
    stored="$(header_of "$base_url/2k/m?bench=$name-$RUNS-1-10" x-cache)"
    [[ "$stored" == "HIT" ]] || say "warning: a URL from the $name run was not stored (X-Cache: '$stored')"
done

# --- purge cost -----------------------------------------------------------------------------------
if [[ -n "$PURGE_BIN" ]]; then
    say "running the purge bench ($PURGE_BIN)"
    bounded 900 "$PURGE_BIN" --bench >"$WORKDIR/purge.txt" 2>"$WORKDIR/purge.log" \
        || { tail -20 "$WORKDIR/purge.log" >&2; say "warning: the purge bench failed or timed out (see purge.log)"; }
fi

# --- bounded memory -------------------------------------------------------------------------------
if [[ "$MEMORY" != 0 ]]; then
    RUST_LOG=warn start cg-bound "$CACHEGATE_BIN" run --config "$WORKDIR/cg-bound.toml"
    CGBOUND_PID=$LAST_PID
    wait_ready "cachegate (bounded memory)" "http://127.0.0.1:$CGBOUND_ADMIN/healthz" "$WORKDIR/cg-bound.log"
    mem_sample() { # t -> "t rss_kib tier_bytes entries"
        local rss stats
        rss="$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$CGBOUND_PID/status" 2>/dev/null || echo -)"
        stats="$(curl -s --max-time 5 "http://127.0.0.1:$CGBOUND_ADMIN/admin/stats" | python3 -c '
import json, sys
try:
    m = json.load(sys.stdin)["memory"]
    print(m["bytes"], m["entries"])
except Exception:
    print("- -")
')"
        echo "$1 ${rss:--} $stats"
    }
    say "bounded memory: ${MEMORY_DURATION_S}s of unique 32 KiB misses through a 64 MiB memory tier"
    : >"$WORKDIR/memory.tsv"
    mem_sample 0 >>"$WORKDIR/memory.tsv"
    timeout $(( MEMORY_DURATION_S + 60 )) wrk -t "$THREADS" -c "$CONNECTIONS" -d "${MEMORY_DURATION_S}s" \
        --timeout 5s --latency -s "$BENCH_DIR/unique.lua" "http://127.0.0.1:$CGBOUND_PORT/32k/m" -- /32k/m memory \
        >"$WORKDIR/memory.wrk.txt" &
    CHILD=$!
    mem_start=$SECONDS
    next=5
    while kill -0 "$CHILD" 2>/dev/null; do
        if (( SECONDS - mem_start >= next )); then
            mem_sample "$next" >>"$WORKDIR/memory.tsv"
            next=$(( next + 5 ))
        fi
        sleep 0.2
    done
    wait "$CHILD" || say "warning: wrk for the bounded-memory run failed"
    CHILD=""
    # One last sample at the end of the load, unless the periodic one was just taken.
    if (( SECONDS - mem_start > next - 5 )); then
        mem_sample "$(( SECONDS - mem_start ))" >>"$WORKDIR/memory.tsv"
    fi
    stop_tree "$CGBOUND_PID"
fi

# --- summary --------------------------------------------------------------------------------------
{
    echo "## Run of $(date -u '+%F %T') UTC"
    echo
    echo "- cores (nproc): $CORES; load average before the summary: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- cachegate commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ has uncommitted changes)')"
    echo "- work directory (nginx cache files) on: $(stat -f -c %T "$WORKDIR" 2>/dev/null || echo unknown) ($(dirname "$WORKDIR"))"
    echo "- $(redis-server --version | cut -d' ' -f1-3)$( (( HAVE_NGINX )) && echo "; $(nginx -v 2>&1)")$( (( HAVE_VARNISH )) && echo "; $(varnishd -V 2>&1 | head -1)")"
    if (( HAVE_TLS )); then
        echo "- $(openssl version)$( (( HAVE_H2LOAD )) && echo "; $(h2load --version | head -1)")"
    else
        echo "- TLS and h2 rows skipped ($( [[ "$TLS" == 0 ]] && echo BENCH_TLS=0 || echo 'no openssl'))"
    fi
    (( HAVE_NGINX && HAVE_VARNISH )) || [[ "$ANCHORS" == 0 ]] || echo "- nginx/Varnish rows missing: not installed"
    if [[ "$CLUSTER" != 0 ]]; then
        echo "- Redis Cluster rows: 3 masters + 3 replicas on loopback (ports ${CLUSTER_PORTS[*]}), cluster-node-timeout 2000 ms"
    else
        echo "- Redis Cluster rows skipped (BENCH_CLUSTER=0)"
    fi
    echo
    CLK_TCK="$CLK_TCK" THREADS="$THREADS" CONNECTIONS="$CONNECTIONS" RUNS="$RUNS" DURATION="$DURATION_S" \
        H2_STREAMS="$H2_STREAMS" TLS_SUITE="$TLS_SUITE" TLS_GROUP="$TLS_GROUP" \
        WARMUP="$WARMUP_S" MEMORY_BOUND="$MEMORY_BOUND" MEMORY_DURATION="$MEMORY_DURATION_S" \
        python3 "$BENCH_DIR/summary.py" "$WORKDIR"
} >"$WORKDIR/summary.md"
echo
cat "$WORKDIR/summary.md"
