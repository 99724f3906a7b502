#!/usr/bin/env python3
"""Fills N distinct URLs through a proxy and checks that they are then served from the tier
the benchmark expects: `fill.py HOST PORT PREFIX N EXPECT [DEADLINE_S]`.

Requests PREFIX0 .. PREFIX<N-1> on one kept-alive connection, pass after pass, until a whole
pass answers with EXPECT ("HIT/redis": X-Cache: HIT and X-Cache-Tier: redis) for every URL,
or the deadline (default 30 s) passes. Exits 1 (with the answers seen) when it does not."""
import http.client
import sys
import time


def main():
    host, port, prefix, n, expect = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    deadline = time.monotonic() + (float(sys.argv[6]) if len(sys.argv) > 6 else 30.0)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    passes = 0
    while True:
        passes += 1
        seen = {}
        for i in range(n):
            try:
                conn.request("GET", f"{prefix}{i}")
                resp = conn.getresponse()
                resp.read()
                got = f"{resp.getheader('X-Cache', '')}/{resp.getheader('X-Cache-Tier', '')}"
                if resp.status != 200:
                    got = f"status {resp.status}"
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=5)
                got = f"error {e}"
            seen[got] = seen.get(got, 0) + 1
        if seen == {expect: n}:
            print(f"fill: all {n} URLs {prefix}0..{n - 1} answer {expect} (pass {passes})", file=sys.stderr)
            return 0
        if time.monotonic() > deadline:
            print(f"fill: pass {passes} over {prefix}0..{n - 1} still answered {seen}, expected {expect}", file=sys.stderr)
            return 1
        if passes > 1:
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
