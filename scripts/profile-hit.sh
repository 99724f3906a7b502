#!/usr/bin/env bash
# Instructions per memory hit, cachegate against the limit (a bare hyper server answering the
# same bytes), counted by callgrind: repeatable on a noisy, shared machine where wall-clock
# figures are not.
#
# Each server runs under callgrind twice, once answering N_SMALL requests and once N_LARGE
# (h2load --h1, keep-alive, 8 connections, 2 KiB GETs on one URL, so every cachegate answer
# but the first is a memory hit); the difference divided by N_LARGE - N_SMALL is the cost of
# one request without start-up and shutdown. The per-function profile of the larger run is
# kept in the work directory (callgrind_annotate reads it).
#
# Usage:  scripts/profile-hit.sh
# Env:    PROFILE_SMALL (default 2000), PROFILE_LARGE (default 22000)
#         PROFILE_KEEP   directory to copy the callgrind outputs into
# Needs:  valgrind, h2load (nghttp2-client), a release build (made here with cargo).
set -euo pipefail

N_SMALL="${PROFILE_SMALL:-2000}"
N_LARGE="${PROFILE_LARGE:-22000}"
cd "$(dirname "$0")/.."

for tool in valgrind h2load; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "profile: $tool is missing (apt-get install valgrind nghttp2-client)" >&2
        exit 1
    }
done
cargo build --release --bin cachegate --example bench_server >&2
bin=target/release/cachegate
server=target/release/examples/bench_server

work="$(mktemp -d)"
# Every process started here, by pid (a file: runs happen in subshells).
pids="$work/pids"
: >"$pids"
cleanup() {
    while read -r p; do kill "$p" 2>/dev/null || true; done <"$pids"
    [ -n "${PROFILE_KEEP:-}" ] && mkdir -p "$PROFILE_KEEP" && cp "$work"/cg.* "$PROFILE_KEEP"/ 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
    local port="$1" deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "profile: nothing listens on $port" >&2; exit 1; }
        sleep 0.2
    done
}

origin_port="$(free_port)"
"$server" --listen "127.0.0.1:$origin_port" >/dev/null 2>&1 &
echo "$!" >>"$pids"
wait_port "$origin_port"

# Total instructions of one callgrind run answering $2 requests; $1 names the run.
run() {
    local name="$1" n="$2" port out pid
    port="$(free_port)"
    out="$work/cg.$name.$n"
    case "$name" in
        limit)
            valgrind --tool=callgrind --callgrind-out-file="$out" "$server" --listen "127.0.0.1:$port" --limit \
                >/dev/null 2>"$work/$name.$n.log" &
            ;;
        cachegate)
            cat >"$work/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$(free_port)"
[origin]
url = "http://127.0.0.1:$origin_port"
[cache]
memory_ttl = "10m"
[[route]]
name = "bench"
path = "/{*any}"
ttl = "10m"
public = true
EOF
            RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run --config "$work/proxy.toml" \
                >/dev/null 2>"$work/$name.$n.log" &
            ;;
    esac
    pid="$!"
    echo "$pid" >>"$pids"
    wait_port "$port"
    h2load --h1 -n "$n" -c 8 -t 1 "http://127.0.0.1:$port/2k/profile" >"$work/$name.$n.h2load" 2>&1
    grep -q "^requests: .* $n succeeded, 0 failed, 0 errored" "$work/$name.$n.h2load" || {
        echo "profile: h2load failed for $name:" >&2
        cat "$work/$name.$n.h2load" >&2
        exit 1
    }
    # TERM, not INT: a script's background jobs ignore SIGINT. Both servers exit on TERM
    # (cachegate after draining, with nothing left to drain).
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    grep -m1 "^summary:\|^totals:" "$out" | awk '{print $2}'
}

printf "%-10s %14s %14s %12s\n" server "Ir ($N_SMALL)" "Ir ($N_LARGE)" "Ir/request"
declare -A per
for name in limit cachegate; do
    small="$(run "$name" "$N_SMALL")"
    large="$(run "$name" "$N_LARGE")"
    per[$name]=$(( (large - small) / (N_LARGE - N_SMALL) ))
    printf "%-10s %14d %14d %12d\n" "$name" "$small" "$large" "${per[$name]}"
done
awk -v c="${per[cachegate]}" -v l="${per[limit]}" 'BEGIN { printf "cachegate / limit: %.2fx\n", c / l }'
