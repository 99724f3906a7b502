#!/usr/bin/env bash
# Soak: mixed reads/writes through two cachegate processes sharing one redis-server, which is
# restarted twice; reports requests, errors by status, stale reads after writes, and RSS.
# Usage: scripts/soak.sh            (SOAK_SECONDS, default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "soak: needs redis-server (apt-get install -y redis-server)" >&2; exit 1; }
cargo build --release --bin cachegate --example soak
SOAK_BIN="$PWD/target/release/cachegate" timeout "$(( ${SOAK_SECONDS:-300} + 120 ))" target/release/examples/soak
