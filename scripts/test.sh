#!/usr/bin/env bash
# Runs every test. Installs what the tests need that Cargo does not (redis-server, redis-cli,
# prometheus, wrk, curl, chromium; the deployment checks' Python tools in
# scripts/validate-deploy.sh) when it is missing and we are root; otherwise says how to install it.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# redis-cli builds the test Redis Cluster; Debian's redis-server package brings it along.
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
# curl talks HTTP/2 to the binary in tests/binary.rs.
command -v curl >/dev/null 2>&1 || need+=(curl)
# tests/status_page.rs loads the admin status page in headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
  else
    echo "missing: ${need[*]}; install them with: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi

# Examples are built (so they never rot) but hold no tests.
cargo build --examples
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --lib --bins --tests "$@" 2>&1 | tee "$log"
# The deployment files (Kubernetes, Dockerfile, compose, systemd), checked offline.
bash scripts/validate-deploy.sh
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
