#!/usr/bin/env python3
"""Summary of a scripts/bench.sh run: `summary.py RESULTS_DIR`.

Reads RESULTS_DIR/rows.tsv (name, label, size, kind per row, in table order), the per-run
results RESULTS_DIR/raw/<row>.run<k>.res written by bench.sh ("rps p50_ms p99_ms requests errors
non2xx proxy_ticks redis_ticks origin_ticks"), the Redis lookup (GET) counts of the Redis-hit rows, and,
when present, purge.txt (output of `cargo bench --bench purge`) and memory.tsv / memory.wrk.txt
(the bounded-memory run). Prints Markdown."""
import os
import statistics
import sys

d = sys.argv[1]
env = os.environ
CLK_TCK = int(env.get("CLK_TCK", "100"))
THREADS = int(env.get("THREADS", "2"))
CONNECTIONS = int(env.get("CONNECTIONS", "64"))
RUNS = int(env.get("RUNS", "1"))
H2_STREAMS = int(env.get("H2_STREAMS", "4"))
TLS_SUITE = env.get("TLS_SUITE", "?")
TLS_GROUP = env.get("TLS_GROUP", "?")

rows = []  # (name, label, size, kind)
with open(f"{d}/rows.tsv") as f:
    for line in f:
        if line.strip():
            rows.append(tuple(line.rstrip("\n").split("\t")))


def load(name, run):
    path = f"{d}/raw/{name}.run{run}.res"
    if not os.path.exists(path):
        return None
    v = open(path).read().split()
    rps, p50, p99 = float(v[0]), float(v[1]), float(v[2])
    total, errors, non2xx = int(v[3]), int(v[4]), int(v[5])
    proxy, redis, origin = int(v[6]), int(v[7]), int(v[8])
    us = lambda ticks: ticks * 1e6 / CLK_TCK / total if total else float("nan")  # noqa: E731
    return dict(rps=rps, p50=p50, p99=p99, total=total, errors=errors, non2xx=non2xx,
                cpu=us(proxy + redis), redis_cpu=us(redis), origin_cpu=us(origin))


res = {}  # name -> list of per-run results
for name, *_ in rows:
    res[name] = [r for r in (load(name, k) for k in range(1, RUNS + 1)) if r is not None]


def med(name, key):
    vals = [r[key] for r in res.get(name, [])]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(v, spec, none="n/a"):
    return none if v is None else format(v, spec)


print(f"wrk {THREADS} threads, {CONNECTIONS} connections, {env.get('DURATION', '?')} s per measurement after a "
      f"{env.get('WARMUP', '?')} s warm-up; {RUNS} run(s), interleaved; medians per row.")
if any(kind == "h2_hit" for *_, kind in rows):
    print(f"h2 rows: h2load {THREADS} threads, {CONNECTIONS} connections, {H2_STREAMS} streams per connection "
          f"(-m), the same durations (-D); p50/p99 from its per-request log (--log-file).")
if any(name.endswith(("_tls_hit_2k", "_h2_hit_2k")) for name, *_ in rows):
    print(f"TLS rows: TLS 1.3, {TLS_SUITE}, {TLS_GROUP}, one self-signed ECDSA P-256 certificate for every "
          "TLS listener; wrk over https with keep-alive (HTTP/1.1, no ALPN), h2load with ALPN h2.")
print()
print("| row | req/s | p50 ms | p99 ms | server CPU µs/req | of which Redis | origin CPU µs/req "
      "| req/s ÷ limit | CPU ÷ limit |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, label, size, kind in rows:
    if not res[name]:
        continue
    # A one-worker row compares with the one-worker limit.
    limit = f"limit_{size}" + ("_1w" if name.endswith("_1w") else "")
    has_redis = kind.startswith("redis")
    print(f"| {label} | {med(name, 'rps'):,.0f} | {med(name, 'p50'):.3f} | {med(name, 'p99'):.3f} "
          f"| {med(name, 'cpu'):.1f} | {fmt(med(name, 'redis_cpu') if has_redis else None, '.1f', '')} "
          f"| {fmt(med(name, 'origin_cpu') if kind not in ('limit', 'origin') else None, '.1f', '')} "
          f"| {fmt(ratio(med(name, 'rps'), med(limit, 'rps')), '.2f')}× "
          f"| {fmt(ratio(med(name, 'cpu'), med(limit, 'cpu')), '.2f')}× |")
print()
print("server CPU = utime + stime of the serving process tree (nginx master + workers, varnishd manager + "
      "child, cachegate, bench_server), plus redis-server for the rows that use Redis (all six nodes for the "
      "cluster rows; its share is the 'of which Redis' column), between right before and right after the "
      "measured wrk run, divided by the "
      f"requests wrk counted (clock ticks of 1/{CLK_TCK} s). 'origin CPU' is the origin's share behind a "
      "proxy (about 0 for hits, so it also shows hits were hits). Ratios compare with the limit row of the "
      "same body size.")

# Noise: the per-run ratio of memory hit to the limit.
print()
print("Per-run req/s ratio, cachegate memory hit ÷ limit (shows the run-to-run noise):")
for size in ("2k", "32k"):
    hit, lim = res.get(f"cg_mem_hit_{size}", []), res.get(f"limit_{size}", [])
    vals = [f"{h['rps'] / l['rps']:.2f}" for h, l in zip(hit, lim) if l["rps"]]
    print(f"- {size}: {' / '.join(vals) if vals else 'n/a'}")

# Scaling: the same hit on one tokio worker thread and on two.
if res.get("cg_mem_hit_2k_1w") and res.get("limit_2k_1w"):
    print()
    print("Scaling, 2 KiB, 2 worker threads ÷ 1 (medians; the client shares the same cores):")
    for who, two, one in (("limit", "limit_2k", "limit_2k_1w"), ("cachegate memory hit", "cg_mem_hit_2k", "cg_mem_hit_2k_1w")):
        print(f"- {who}: req/s {fmt(ratio(med(two, 'rps'), med(one, 'rps')), '.2f')}×, "
              f"CPU/req {fmt(ratio(med(two, 'cpu'), med(one, 'cpu')), '.2f')}×")
    print(f"- cachegate ÷ limit on 1 worker: req/s {fmt(ratio(med('cg_mem_hit_2k_1w', 'rps'), med('limit_2k_1w', 'rps')), '.2f')}×, "
          f"CPU/req {fmt(ratio(med('cg_mem_hit_2k_1w', 'cpu'), med('limit_2k_1w', 'cpu')), '.2f')}×")

# Redis lookups (one GET each) per request in the pure Redis-hit rows (single node, cluster: the
# cluster's count is summed over its six nodes).
for name, label, size, kind in rows:
    if kind != "redis_hit" or not res[name]:
        continue
    print()
    for k in range(1, RUNS + 1):
        r = load(name, k)
        base = f"{d}/raw/{name}.run{k}"
        try:
            idle = int(open(f"{base}.idle").read().split()[0])
            (c1, t1), (c2, t2) = [line.split() for line in open(f"{base}.lookups").read().splitlines()]
        except (OSError, ValueError):
            continue
        if r is None:
            continue
        background = round(idle * (float(t2) - float(t1)))
        lookups = int(c2) - int(c1) - background
        per = lookups / r["total"] if r["total"] else float("nan")
        print(f"{label}, run {k}: Redis lookups (GET) for {r['total']:,} requests = {per:.3f} per request "
              f"({lookups:,} lookups: {int(c2) - int(c1):,} GET calls minus ~{background} background calls)")
        slack = CONNECTIONS + 20 + r["total"] // 200
        if not -slack <= lookups - r["total"] <= CONNECTIONS + slack:
            print("  warning: not one Redis lookup per request: the Redis-hit row was not a pure Redis hit")

# The cluster rows against their single-node counterparts.
pairs = [("Redis hit", "cg_cluster_hit_2k", "cg_redis_hit_2k"),
         ("miss, memory + Redis", "cg_miss_cluster_2k", "cg_miss_redis_2k")]
if any(res.get(c) for _, c, _ in pairs):
    print()
    print("Redis Cluster ÷ single Redis node, 2 KiB (medians):")
    for what, cluster, node in pairs:
        print(f"- {what}: req/s {fmt(ratio(med(cluster, 'rps'), med(node, 'rps')), '.2f')}×, "
              f"server CPU/req {fmt(ratio(med(cluster, 'cpu'), med(node, 'cpu')), '.2f')}×, "
              f"Redis CPU/req {fmt(ratio(med(cluster, 'redis_cpu'), med(node, 'redis_cpu')), '.2f')}×")

# TLS and HTTP/2 hits: each against the plain-HTTP limit and the plain hit of the same server,
# and cachegate against nginx, over the same protocol.
if any(res.get(n) for n in ("cg_tls_hit_2k", "cg_h2_hit_2k", "cg_h2c_hit_2k")):
    print()
    print("TLS and HTTP/2 hits, 2 KiB (medians):")
    for who, tls, plain in (("cachegate", "cg_tls_hit_2k", "cg_mem_hit_2k"), ("nginx", "nginx_tls_hit_2k", "nginx_hit_2k")):
        if not res.get(tls):
            continue
        print(f"- TLS hit, {who}: CPU/req ÷ plain limit {fmt(ratio(med(tls, 'cpu'), med('limit_2k', 'cpu')), '.2f')}×, "
              f"req/s ÷ plain limit {fmt(ratio(med(tls, 'rps'), med('limit_2k', 'rps')), '.2f')}×; "
              f"÷ its own plain-HTTP hit: CPU/req {fmt(ratio(med(tls, 'cpu'), med(plain, 'cpu')), '.2f')}×, "
              f"req/s {fmt(ratio(med(tls, 'rps'), med(plain, 'rps')), '.2f')}×")
    for what, cg, ngx in (("TLS hit (HTTP/1.1)", "cg_tls_hit_2k", "nginx_tls_hit_2k"),
                          ("h2 hit over TLS", "cg_h2_hit_2k", "nginx_h2_hit_2k"),
                          ("h2c hit", "cg_h2c_hit_2k", "nginx_h2c_hit_2k")):
        if not res.get(cg) or not res.get(ngx):
            continue
        per_run = [f"{c['rps'] / n['rps']:.2f}" for c, n in zip(res[cg], res[ngx]) if n["rps"]]
        print(f"- {what}, cachegate ÷ nginx: req/s {fmt(ratio(med(cg, 'rps'), med(ngx, 'rps')), '.2f')}× "
              f"(per run: {' / '.join(per_run)}), CPU/req {fmt(ratio(med(cg, 'cpu'), med(ngx, 'cpu')), '.2f')}×, "
              f"p99 {fmt(med(cg, 'p99'), '.3f')} vs {fmt(med(ngx, 'p99'), '.3f')} ms")

# Goals.
checks = []


def check(label, value, op, bound, what):
    if value is None or bound is None:
        checks.append(f"- n/a: {label} (missing {what})")
        return
    ok = value >= bound if op == ">=" else value <= bound
    checks.append(f"- {'PASS' if ok else 'MISS'}: {label}: {value:.3f} {'≥' if op == '>=' else '≤'} {bound:.3f}")


for size in ("2k", "32k"):
    hit, lim, ngx = f"cg_mem_hit_{size}", f"limit_{size}", f"nginx_hit_{size}"
    check(f"memory hit {size} req/s ÷ limit", ratio(med(hit, "rps"), med(lim, "rps")), ">=", 0.85, "rows")
    check(f"memory hit {size} CPU/req ÷ limit", ratio(med(hit, "cpu"), med(lim, "cpu")), "<=", 1.2, "rows")
    check(f"memory hit {size} p99 ms vs nginx hit p99 ms", med(hit, "p99"), "<=", med(ngx, "p99"), "nginx row")
check("Redis hit req/s ÷ limit 2k", ratio(med("cg_redis_hit_2k", "rps"), med("limit_2k", "rps")), ">=", 0.45, "rows")
check("miss (memory only) req/s ÷ nginx miss", ratio(med("cg_miss_mem_2k", "rps"), med("nginx_miss_2k", "rps")),
      ">=", 1.0, "nginx row")
check("miss (with Redis) req/s ÷ nginx miss", ratio(med("cg_miss_redis_2k", "rps"), med("nginx_miss_2k", "rps")),
      ">=", 0.7, "nginx row")
if any(res.get(n) for n in ("cg_tls_hit_2k", "cg_h2_hit_2k")):
    check("TLS hit 2k CPU/req ÷ plain limit", ratio(med("cg_tls_hit_2k", "cpu"), med("limit_2k", "cpu")), "<=", 1.3,
          "rows")
    check("TLS hit 2k req/s ÷ nginx TLS hit", ratio(med("cg_tls_hit_2k", "rps"), med("nginx_tls_hit_2k", "rps")),
          ">=", 1.0, "nginx row")
    check("h2 hit 2k req/s ÷ nginx h2 hit", ratio(med("cg_h2_hit_2k", "rps"), med("nginx_h2_hit_2k", "rps")),
          ">=", 1.0, "h2 rows")
print()
print("Goals:")
print("\n".join(checks))

bad = [label for name, label, *_ in rows for r in res[name] if r["errors"] or r["non2xx"]]
if bad:
    print()
    print("warning: socket errors or non-2xx answers in: " + ", ".join(sorted(set(bad))))

# Purge cost (cargo bench --bench purge).
purge = f"{d}/purge.txt"
if os.path.exists(purge):
    lines = [line.rstrip() for line in open(purge)]
    table = [line for line in lines if line.startswith("|")]
    print()
    print("Purge cost (`cargo bench --bench purge`, one tag covering 1 / 1k / 10k / 100k entries):")
    print()
    if table:
        print("\n".join(table))
        print()
        print("\n".join(f"- {line}" for line in lines if line.startswith("median ")))
    else:
        print("(no table in the purge bench output; see purge.txt)")

# Bounded memory under a miss-heavy load.
mem = f"{d}/memory.tsv"
if os.path.exists(mem):
    samples = []  # (t, rss_kib, tier_bytes, entries)
    for line in open(mem):
        p = line.split()
        if len(p) == 4 and p[1].isdigit() and p[2].isdigit():
            samples.append((float(p[0]), int(p[1]), int(p[2]), int(p[3])))
    bound = int(env.get("MEMORY_BOUND", str(64 << 20)))
    duration = float(env.get("MEMORY_DURATION", "0"))
    print()
    print(f"Bounded memory: memory_capacity = {bound / 1048576:.0f} MiB, {duration:.0f} s of unique 32 KiB URLs "
          f"(misses, each stored), sampled every 5 s ({len(samples)} samples).")
    wrk = f"{d}/memory.wrk.txt"
    if os.path.exists(wrk):
        for line in open(wrk):
            if "requests in" in line or line.startswith("Requests/sec"):
                print(f"- wrk: {line.strip()}")
    if samples:
        max_tier = max(s[2] for s in samples)
        fifth = min(samples, key=lambda s: abs(s[0] - duration / 5))
        end = samples[-1]
        growth = (end[1] - fifth[1]) / 1024
        pct = 100.0 * (end[1] - fifth[1]) / fifth[1] if fifth[1] else float("nan")
        ok = max_tier / bound <= 1.10
        print(f"- {'PASS' if ok else 'MISS'}: max memory-tier bytes ÷ bound = {max_tier:,} ÷ {bound:,} = "
              f"{max_tier / bound:.3f} (goal ≤ 1.10)")
        max_rss = max(s[1] for s in samples) * 1024
        goal = 1.5 * bound + 30 * 1048576
        print(f"- {'PASS' if max_rss <= goal else 'MISS'}: max RSS {max_rss / 1048576:.1f} MiB ≤ 1.5 × bound + 30 MiB "
              f"= {goal / 1048576:.1f} MiB")
        base_rss = samples[0][1] * 1024
        full = max(samples, key=lambda s: s[3])
        if full[3]:
            per = (full[1] * 1024 - base_rss - full[2]) / full[3]
            print(f"- beyond the tier's counted bytes: ({full[1] / 1024:.1f} MiB RSS at {full[0]:.0f} s − "
                  f"{base_rss / 1048576:.1f} MiB before the load − {full[2] / 1048576:.1f} MiB counted) ÷ "
                  f"{full[3]:,} entries = {per / 1024:.1f} KiB per entry")
        print(f"- RSS at {fifth[0]:.0f} s (first fifth): {fifth[1] / 1024:.1f} MiB; at the end ({end[0]:.0f} s): "
              f"{end[1] / 1024:.1f} MiB; growth {growth:+.1f} MiB ({pct:+.1f}%)")
        print()
        print("| t s | RSS MiB | tier MiB | entries |")
        print("|---:|---:|---:|---:|")
        for t, rss, tier, entries in samples:
            print(f"| {t:.0f} | {rss / 1024:.1f} | {tier / 1048576:.1f} | {entries:,} |")
