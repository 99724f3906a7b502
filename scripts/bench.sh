#!/usr/bin/env bash
# Loopback benchmark of cachegate with wrk, all scenarios in one run:
#   (a) the demo origin directly (no proxy, no artificial delay)
#   (b) a memory-tier hit through cachegate
#   (c) the miss path through cachegate (a unique URL per request: forward + store)
#   (d) a Redis-tier hit: a second cachegate whose memory tier is disabled
#       (memory_capacity = "0B", memory_ttl = "0s"), sharing a real redis-server, so every
#       hit is one Redis round trip (lookup + validation in one EVALSHA) plus decoding
#
# (a)-(c) run against a memory-only cachegate, as before; (d) against its own instance.
#
# Usage:  scripts/bench.sh
# Env:    BENCH_DURATION (default 10s)   wrk duration per measurement ("10s", "1m", or seconds)
#         BENCH_THREADS (default 2)      wrk threads
#         BENCH_CONNECTIONS (default 64) wrk connections
#         BENCH_WARMUP (default 2s)      unmeasured warm-up before each measurement ("0" = none)
#         BENCH_BUILD_TIMEOUT (default 1800) seconds allowed for the release build
#
# Everything runs on 127.0.0.1 on free ephemeral ports; every process started here (origin,
# both cachegates, redis-server) is stopped on exit. Client, proxy and origin share the machine's cores, so absolute numbers
# depend heavily on the machine: compare the ratios.
set -euo pipefail

DURATION="${BENCH_DURATION:-10s}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
WARMUP="${BENCH_WARMUP:-2s}"
BUILD_TIMEOUT="${BENCH_BUILD_TIMEOUT:-1800}"

cd "$(dirname "$0")/.."

die() {
    echo "bench: $*" >&2
    exit 1
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
(( DURATION_S > 0 )) || die "BENCH_DURATION must be positive"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_THREADS must be a positive integer"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_CONNECTIONS must be a positive integer"
(( CONNECTIONS >= THREADS )) || die "BENCH_CONNECTIONS must be >= BENCH_THREADS"

# --- tools ------------------------------------------------------------------------------
for tool in curl python3 cargo timeout; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
done
if ! command -v wrk >/dev/null; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "bench: installing wrk" >&2
        timeout 600 bash -c 'DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk' >&2 \
            || die "installing wrk with apt-get failed"
    else
        die "wrk is not installed; install it (e.g. 'sudo apt-get install -y wrk') or run as root with apt-get"
    fi
fi
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "bench: installing redis-server" >&2
        timeout 600 bash -c 'DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server' >&2 \
            || die "installing redis-server with apt-get failed"
    else
        die "redis-server/redis-cli are not installed; install them (e.g. 'sudo apt-get install -y redis-server') or run as root with apt-get"
    fi
fi

# --- processes and cleanup --------------------------------------------------------------
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/cachegate-bench.XXXXXX")"
PIDS=()
CHILD=""
cleanup() {
    local pid
    if [[ -n "$CHILD" ]]; then
        kill "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Give each process up to 5 s to exit, then force it.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bounded SECONDS CMD...: runs CMD under a time limit, in the background so that a signal
# sent to this script interrupts the wait (and the cleanup then stops CMD).
bounded() {
    local rc=0
    timeout "$1" "${@:2}" &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

echo "bench: building (release)" >&2
bounded "$BUILD_TIMEOUT" cargo build --release --example demo_origin --bin cachegate >&2 \
    || die "release build failed or timed out"
ORIGIN_BIN=target/release/examples/demo_origin
CACHEGATE_BIN=target/release/cachegate

# Six distinct free loopback ports (all held open together so they differ).
read -r ORIGIN_PORT PROXY_PORT ADMIN_PORT RPROXY_PORT RADMIN_PORT REDIS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
')
for port in "$ORIGIN_PORT" "$PROXY_PORT" "$ADMIN_PORT" "$RPROXY_PORT" "$RADMIN_PORT" "$REDIS_PORT"; do
    [[ "$port" =~ ^[0-9]+$ ]] || die "could not find free loopback ports"
done
ORIGIN="http://127.0.0.1:$ORIGIN_PORT"
PROXY="http://127.0.0.1:$PROXY_PORT"
RPROXY="http://127.0.0.1:$RPROXY_PORT"

# write_config FILE LISTEN_PORT ADMIN_PORT DEBUG_HEADERS <<< "[cache] section": one config
# per instance, identical except for the listeners, debug_headers and the [cache] section.
write_config() {
    local cache_section
    cache_section="$(cat)"
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
debug_headers = $4

[origin]
url = "$ORIGIN"
timeout = "10s"

$cache_section

# Hit test: one URL, always served from the cache once warm.
[[route]]
name = "course_list"
path = "/courses/"
ttl = "10m"
query = { include = ["page"] }
tags = ["courses"]

# Miss test: every query parameter is part of the key (the default), so a unique
# query string per request makes every request a miss that is forwarded and stored.
[[route]]
name = "lecture_detail"
path = "/lectures/{id}/"
ttl = "10m"
tags = ["lectures", "lecture:{id}"]
EOF
}

# (a)-(c): memory tier only, as large and long-lived as the run needs.
CONFIG="$WORKDIR/bench-proxy.toml"
write_config "$CONFIG" "$PROXY_PORT" "$ADMIN_PORT" false <<'EOF'
[cache]
memory_capacity = "512MiB"
memory_ttl = "10m"
EOF

# (d): Redis tier, with the memory tier disabled: a zero byte bound and a zero lifetime (either
# alone already keeps the memory tier empty; both make it certain), so every hit is a Redis hit.
# debug_headers adds X-Cache-Tier, which the check below needs (and X-Cache-Key: ~60 bytes more
# per answer than (b)).
RCONFIG="$WORKDIR/bench-proxy-redis.toml"
write_config "$RCONFIG" "$RPROXY_PORT" "$RADMIN_PORT" true <<EOF
[cache]
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
key_prefix = "bench:v1"
memory_capacity = "0B"
memory_ttl = "0s"
EOF

"$CACHEGATE_BIN" check --config "$CONFIG" >&2 || die "cachegate rejected the bench config $CONFIG"
"$CACHEGATE_BIN" check --config "$RCONFIG" >&2 || die "cachegate rejected the bench config $RCONFIG"

# The origin's one-line-per-request log would only measure the terminal or disk: discard it.
"$ORIGIN_BIN" --listen "127.0.0.1:$ORIGIN_PORT" --delay-ms 0 2>/dev/null &
PIDS+=("$!")
RUST_LOG=warn "$CACHEGATE_BIN" run --config "$CONFIG" 2>"$WORKDIR/cachegate.log" &
PIDS+=("$!")
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORKDIR" \
    >"$WORKDIR/redis.log" 2>&1 &
PIDS+=("$!")

wait_ready() { # name url log
    for _ in $(seq 100); do
        if curl -fs -o /dev/null --max-time 1 "$2"; then
            return 0
        fi
        sleep 0.1
    done
    cat "$3" >&2 || true
    die "$1 did not become ready at $2 within 10 s"
}
wait_ready "demo origin" "$ORIGIN/courses/" /dev/null
wait_ready "cachegate" "http://127.0.0.1:$ADMIN_PORT/healthz" "$WORKDIR/cachegate.log"

redis() { # redis-cli against the bench redis-server
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}
for _ in $(seq 100); do
    [[ "$(redis ping 2>/dev/null)" == "PONG" ]] && break
    sleep 0.1
done
[[ "$(redis ping 2>/dev/null)" == "PONG" ]] || { cat "$WORKDIR/redis.log" >&2; die "redis-server did not answer on port $REDIS_PORT within 10 s"; }
RUST_LOG=warn "$CACHEGATE_BIN" run --config "$RCONFIG" 2>"$WORKDIR/cachegate-redis.log" &
PIDS+=("$!")
wait_ready "cachegate (redis)" "http://127.0.0.1:$RADMIN_PORT/healthz" "$WORKDIR/cachegate-redis.log"

header_of() { # url header -> value of that response header (empty when absent)
    { curl -s --max-time 5 -D - -o /dev/null "$1" || true; } | tr -d '\r' \
        | awk -F': *' -v h="$2" 'tolower($1) == h { print $2 }'
}
x_cache() { # url -> value of X-Cache
    header_of "$1" x-cache
}
# url -> "X-Cache/X-Cache-Tier", e.g. "HIT/redis"
cache_and_tier() {
    { curl -s --max-time 5 -D - -o /dev/null "$1" || true; } | tr -d '\r' | awk -F': *' '
        tolower($1) == "x-cache" { c = $2 }
        tolower($1) == "x-cache-tier" { t = $2 }
        END { print c "/" t }'
}
HIT_URL="$PROXY/courses/"
first="$(x_cache "$HIT_URL")"
second="$(x_cache "$HIT_URL")"
[[ "$second" == "HIT" ]] || die "expected X-Cache: HIT on the second request to $HIT_URL, got '$second' (first: '$first')"
probe="$PROXY/lectures/1/?probe=$RANDOM"
[[ "$(x_cache "$probe")" == "MISS" && "$(x_cache "$probe")" == "HIT" ]] \
    || die "the miss route does not key on the query string as expected ($probe)"

# (d) must be served from Redis, never from memory: after the fill (retried until the Redis
# tier is up and the instance hears purges, which takes a moment after start), two consecutive
# requests must both say HIT from the redis tier.
RHIT_URL="$RPROXY/courses/"
rfirst="" rsecond="" rthird=""
for _ in $(seq 50); do
    rfirst="$(cache_and_tier "$RHIT_URL")"
    rsecond="$(cache_and_tier "$RHIT_URL")"
    rthird="$(cache_and_tier "$RHIT_URL")"
    [[ "$rsecond" == "HIT/redis" && "$rthird" == "HIT/redis" ]] && break
    sleep 0.2
done
[[ "$rsecond" == "HIT/redis" && "$rthird" == "HIT/redis" ]] || {
    cat "$WORKDIR/cachegate-redis.log" >&2
    die "expected two consecutive 'X-Cache: HIT' + 'X-Cache-Tier: redis' from $RHIT_URL, got '$rsecond' then '$rthird' (after '$rfirst')"
}
echo "bench: $RHIT_URL answers X-Cache/X-Cache-Tier = $rsecond, $rthird" >&2

# Redis lookups are EVALSHA calls; counting them around the measurement shows that every
# measured request was a Redis lookup (none answered from memory, none skipped as "redis down").
evalsha_calls() {
    redis info commandstats | tr -d '\r' | awk -F'[:=,]' '$1 == "cmdstat_evalsha" { print $3 }' | grep . || echo 0
}

# Each request gets its own query string: <nonce>-<thread>-<counter>. The nonce (a script
# argument) differs per wrk invocation, so the warm-up does not pre-fill the measured URLs.
cat >"$WORKDIR/miss.lua" <<'EOF'
local thread_count = 0
function setup(thread)
    thread_count = thread_count + 1
    thread:set("tid", thread_count)
end
function init(args)
    nonce = args[1] or "run"
    counter = 0
end
function request()
    counter = counter + 1
    return wrk.format(nil, "/lectures/1/?bench=" .. nonce .. "-" .. tid .. "-" .. counter)
end
EOF

# run_wrk name url [lua-script]: warm up, measure, write "rps p50_ms p99_ms requests errors non2xx".
# BEFORE_MEASURE / AFTER_MEASURE, when set, are commands run right around the measurement.
run_wrk() {
    local name="$1" url="$2" script="${3:-}" args=() limit
    if [[ -n "$script" ]]; then
        args=(-s "$script")
    fi
    limit=$(( DURATION_S + WARMUP_S + 60 ))
    if (( WARMUP_S > 0 )); then
        echo "bench: warming up '$name' for ${WARMUP_S}s" >&2
        bounded "$limit" wrk -t "$THREADS" -c "$CONNECTIONS" -d "${WARMUP_S}s" --timeout 5s \
            "${args[@]}" "$url" -- "warm$RANDOM" >/dev/null || die "wrk warm-up failed for $name"
    fi
    echo "bench: measuring '$name' for ${DURATION_S}s: $url" >&2
    if [[ -n "${BEFORE_MEASURE:-}" ]]; then "$BEFORE_MEASURE" "$name"; fi
    bounded "$limit" wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION_S}s" --timeout 5s --latency \
        "${args[@]}" "$url" -- "$name" >"$WORKDIR/$name.txt" || die "wrk failed for $name"
    if [[ -n "${AFTER_MEASURE:-}" ]]; then "$AFTER_MEASURE" "$name"; fi
    python3 - "$WORKDIR/$name.txt" >"$WORKDIR/$name.res" <<'EOF'
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
print(float(rps.group(1)), latency(50), latency(99), total.group(1), errors,
      non2xx.group(1) if non2xx else 0)
EOF
}

# The instance's own background scripts (its coherence heartbeat, every 100 ms) are EVALSHA
# calls too: their rate is measured over one idle second before the run and subtracted. The
# pauses let requests still in flight from the warm-up (before) and from the measurement (after)
# finish, so that they are counted with the right run.
now_s() { date +%s.%N; }
lookups_before() {
    local c0
    sleep 0.5
    c0="$(evalsha_calls)"
    sleep 1
    echo "$(( $(evalsha_calls) - c0 ))" >"$WORKDIR/$1.idle"
    echo "$(evalsha_calls) $(now_s)" >"$WORKDIR/$1.lookups"
}
lookups_after() {
    sleep 0.5
    echo "$(evalsha_calls) $(now_s)" >>"$WORKDIR/$1.lookups"
}

run_wrk origin_direct "$ORIGIN/courses/"
run_wrk memory_hit "$HIT_URL"
BEFORE_MEASURE=lookups_before AFTER_MEASURE=lookups_after run_wrk redis_hit "$RHIT_URL"
run_wrk miss "$PROXY/lectures/1/" "$WORKDIR/miss.lua"

# After the run the Redis instance still answers from Redis (not memory, not the origin).
after="$(cache_and_tier "$RHIT_URL")"
[[ "$after" == "HIT/redis" ]] || echo "bench: warning: after the run $RHIT_URL answered '$after', not HIT/redis" >&2

# A URL from the miss run must now be stored: proof that the misses were stored. (Not the
# first one: wrk calls request() once per thread before sending anything.)
stored="$(x_cache "$PROXY/lectures/1/?bench=miss-1-10")"
[[ "$stored" == "HIT" ]] || echo "bench: warning: a URL from the miss run was not stored (X-Cache: '$stored')" >&2

python3 - "$WORKDIR" "$DURATION_S" "$THREADS" "$CONNECTIONS" <<'EOF'
import sys
workdir, duration, threads, conns = sys.argv[1:5]
res = {}
for name in ("origin_direct", "memory_hit", "redis_hit", "miss"):
    rps, p50, p99, total, errors, non2xx = open(f"{workdir}/{name}.res").read().split()
    res[name] = dict(rps=float(rps), p50=float(p50), p99=float(p99), total=int(total),
                     errors=int(errors), non2xx=int(non2xx))
labels = {
    "origin_direct": "(a) origin direct (no proxy)",
    "memory_hit": "(b) cachegate, memory-tier hit",
    "miss": "(c) cachegate, miss + store",
    "redis_hit": "(d) cachegate, Redis-tier hit",
}
print()
print(f"wrk: {threads} threads, {conns} connections, {duration}s per measurement")
print()
print(f"| {'scenario':<32} | {'req/s':>10} | {'p50 ms':>8} | {'p99 ms':>8} | {'requests':>9} | {'errors':>6} | {'non-2xx':>7} |")
print(f"|{'-' * 34}|{'-' * 11}:|{'-' * 9}:|{'-' * 9}:|{'-' * 10}:|{'-' * 7}:|{'-' * 8}:|")
for name, label in labels.items():
    r = res[name]
    print(f"| {label:<32} | {r['rps']:>10.0f} | {r['p50']:>8.3f} | {r['p99']:>8.3f} | {r['total']:>9} | {r['errors']:>6} | {r['non2xx']:>7} |")
print()
o, h, m, d = res["origin_direct"], res["memory_hit"], res["miss"], res["redis_hit"]
idle_rate = int(open(f"{workdir}/redis_hit.idle").read().split()[0])  # per second
(c1, t1), (c2, t2) = [l.split() for l in open(f"{workdir}/redis_hit.lookups").read().splitlines()]
background = round(idle_rate * (float(t2) - float(t1)))
lookups = int(c2) - int(c1) - background
per_request = lookups / d["total"] if d["total"] else float("nan")
print(f"(d) Redis lookups during the measurement: {lookups} for {d['total']} requests"
      f" = {per_request:.3f} per request ({int(c2) - int(c1)} EVALSHA calls minus ~{background}"
      f" background calls at the idle rate of {idle_rate}/s)")
def ratio(a, b):
    return a / b if b else float("nan")
def rows(title, pairs):
    print(title)
    for label, a, b in pairs:
        print(f"  {label:<34}: req/s {ratio(a['rps'], b['rps']):5.2f}x"
              f" | p50 {ratio(a['p50'], b['p50']):5.2f} ({a['p50']:.3f} vs {b['p50']:.3f} ms)"
              f" | p99 {ratio(a['p99'], b['p99']):5.2f} ({a['p99']:.3f} vs {b['p99']:.3f} ms)")
print()
rows("Ratios (req/s: higher is better; latency: lower is better)", [
    ("memory hit / origin direct", h, o),
    ("memory hit / miss", h, m),
    ("redis hit / origin direct", d, o),
    ("memory hit / redis hit", h, d),
    ("redis hit / miss", d, m),
])
bad = [labels[n] for n, r in res.items() if r["errors"] or r["non2xx"]]
if bad:
    print("\nwarning: socket errors or non-2xx answers in: " + ", ".join(bad))
# wrk stops counting with up to one request per connection still in flight, so up to that many
# more lookups than counted requests are expected (plus a little noise from the background
# estimate). Fewer lookups than requests would mean memory hits or a Redis outage; many more,
# misses (a miss is a lookup plus a guarded store).
slack = int(conns) + 20 + d["total"] // 200
extra = lookups - d["total"]
if not -slack <= extra <= int(conns) + slack:
    print(f"\nwarning: (d) made {lookups} Redis lookups for {d['total']} requests (expected one per"
          " request, plus those still in flight): not every request was a Redis hit")
EOF
echo
echo "cores (nproc): $(nproc)"
echo "date: $(date -u '+%F %T') UTC"
echo "cachegate commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ has uncommitted changes)')"
