#!/usr/bin/env bash
# Fuzzes cachegate's parsers and key building with cargo-fuzz (libFuzzer), on the stable
# toolchain. Long-running and non-deterministic: run it by hand, not in CI. See FUZZING.md.
#
# Usage:  scripts/fuzz.sh [TARGET...]     (default: config_parse cache_key purge_body origin_headers)
# Env:    FUZZ_SECONDS (default 60)       seconds per target (libFuzzer -max_total_time)
#         FUZZ_ARGS                       extra libFuzzer flags, e.g. "-max_len=4096 -jobs=2"
#         FUZZ_ASCII_PATHS=1              cache_key: check path idempotence on ASCII paths only
#                                         (masks the known non-ASCII finding in FUZZING.md)
#
# Installs cargo-fuzz when missing. Corpora grow in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>), crashing inputs land in fuzz/artifacts/<target>, full libFuzzer output in
# fuzz/logs/<target>.log. Exits 1 when any target found a crash (or failed to run).
#
# --sanitizer none: AddressSanitizer needs -Zsanitizer (nightly only). Without a sanitizer
# cargo-fuzz passes only -C flags (sancov coverage instrumentation, debug assertions), which the
# stable compiler accepts, so no RUSTC_BOOTSTRAP is needed. Panics (failed asserts, overflow,
# out-of-bounds slicing) are caught; memory errors in unsafe code would not be, which matters
# little for this crate (no unsafe of its own).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-60}
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "FUZZ_SECONDS must be a whole number of seconds >= 1 (0 would mean no limit), got '$seconds'" >&2
  exit 2
fi
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(config_parse cache_key purge_body origin_headers)
fi
for t in "${targets[@]}"; do
  if [ ! -f "fuzz_targets/$t.rs" ]; then
    echo "unknown target '$t' (have: $(cd fuzz_targets && ls *.rs | sed 's/\.rs$//' | tr '\n' ' '))" >&2
    exit 2
  fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
echo "== $(cargo fuzz --version), $(rustc --version)"

echo "== building (release, --sanitizer none)"
for t in "${targets[@]}"; do
  cargo fuzz build --sanitizer none "$t"
done

mkdir -p logs
read -r -a extra <<<"${FUZZ_ARGS:-}"
declare -A secs execs rate crashes status
found=()
failed=0

for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  corpora=("corpus/$t")
  [ -d "seeds/$t" ] && corpora+=("seeds/$t")
  flags=(-max_total_time="$seconds" -print_final_stats=1)
  [ -f "dicts/$t.dict" ] && flags+=(-dict="dicts/$t.dict")
  flags+=(${extra[@]+"${extra[@]}"})
  before=$(ls "artifacts/$t" | sort)
  log="logs/$t.log"

  echo "== $t: ${seconds}s (log: fuzz/$log)"
  start=$(date +%s)
  set +e
  cargo fuzz run --sanitizer none "$t" "${corpora[@]}" -- "${flags[@]}" >"$log" 2>&1
  rc=$?
  set -e
  secs[$t]=$(( $(date +%s) - start ))

  # Final stats: stat::number_of_executed_units (printed on exit and on a crash), else "#N DONE".
  n=$(grep -aoE 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  [ -n "$n" ] || n=$(grep -aoE '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | grep -oE '[0-9]+' || true)
  execs[$t]=${n:-?}
  r=$(grep -aoE 'stat::average_exec_per_sec: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  rate[$t]=${r:-?}

  new=$(comm -13 <(printf '%s\n' "$before") <(ls "artifacts/$t" | sort) | sed '/^$/d' || true)
  count=0
  if [ -n "$new" ]; then
    while IFS= read -r a; do
      found+=("$t|$PWD/artifacts/$t/$a")
      count=$((count + 1))
    done <<<"$new"
  fi
  crashes[$t]=$count
  if [ "$count" -gt 0 ]; then
    status[$t]="CRASH"
    failed=1
  elif [ "$rc" -ne 0 ]; then
    status[$t]="ERROR (exit $rc)"
    failed=1
    tail -20 "$log" >&2
  else
    status[$t]="ok"
  fi
done

echo
echo "== summary ($(date -u +%FT%TZ), $(nproc) cores, FUZZ_SECONDS=$seconds)"
printf '%-14s %8s %14s %10s %8s  %s\n' target seconds executions exec/s crashes status
for t in "${targets[@]}"; do
  printf '%-14s %8s %14s %10s %8s  %s\n' "$t" "${secs[$t]}" "${execs[$t]}" "${rate[$t]}" "${crashes[$t]}" "${status[$t]}"
done

if [ "${#found[@]}" -gt 0 ]; then
  echo
  echo "== crashing inputs"
  for f in "${found[@]}"; do
    t=${f%%|*}
    path=${f#*|}
    echo "$t: $path"
    grep -a -m1 -A2 'panicked at' "logs/$t.log" | sed 's/^/    /' || true
    echo "    reproduce: (cd fuzz && cargo fuzz run --sanitizer none $t $path)"
    echo "    minimise:  (cd fuzz && cargo fuzz tmin --sanitizer none $t $path)"
    echo "    show:      (cd fuzz && cargo fuzz fmt --sanitizer none $t $path)"
  done
fi
exit "$failed"
