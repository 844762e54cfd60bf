#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the simulator's API contract tests, the client
# against the simulator over real HTTP, the end-to-end scenarios, the protocol's model check,
# and a smoke run of the fuzz targets. This is the README's test
# command and what CI runs; it installs what the tests need itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# The toolchain is the machine's (rustup); make sure the parts the checks use are there.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# Blocking-query tests hold many connections open at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# moto's server stands in for AWS in tests/cloud_ec2.rs, tests/cloud_ecs.rs and the rollouts
# through them (which fail, not skip, without it). The ECS tests start it through python3, so
# python3 must import it. 5.2.6 or later: the CloudWatch gate's SDK speaks Smithy RPC v2 CBOR,
# which moto answers from that release (moto.core.cbor). Installed once; a machine that has it
# pays only for this check.
if ! python3 -c 'import moto.server, moto.core.cbor' >/dev/null 2>&1; then
  python3 -m pip install --quiet --upgrade 'moto[server]>=5.2.6'
fi

# cfn-lint checks deploy/*.yaml in tests/deploy.rs (which fails, not skips, without it).
if ! command -v cfn-lint >/dev/null 2>&1 && ! python3 -c 'import cfnlint' >/dev/null 2>&1; then
  python3 -m pip install --quiet cfn-lint
fi

# Headless Chromium renders the status dashboard in tests/dashboard.rs (which fails, not skips,
# without it). Debian's package; the package lists are refreshed only if the install fails.
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends chromium ||
    { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends chromium; }
fi

# A real Consul for the real-Consul tests: CONSUL_BIN if the user set one, else Debian's 1.8.7
# installed into the project's cache by scripts/consul.sh (the machine's apt setup untouched).
# Under CI=true the real-Consul tests fail without one; elsewhere they skip, saying why.
if [ -z "${CONSUL_BIN:-}" ]; then
  if CONSUL_BIN=$(./scripts/consul.sh); then
    export CONSUL_BIN
  else
    unset CONSUL_BIN
    echo "note: no Consul could be installed: the real-Consul tests will" \
      "$([ "${CI:-}" = true ] && echo fail || echo skip)."
  fi
fi
if [ -n "${CONSUL_BIN:-}" ]; then
  echo "Consul for the real-Consul tests: $CONSUL_BIN ($("$CONSUL_BIN" version | head -n 1))"
fi

# A real Prometheus (and its promtool) for the health-gate test and the alert rules' check:
# PROMETHEUS_BIN if set, else Debian's 2.24.1 installed into the project's cache by
# scripts/prometheus.sh. As for Consul: under CI=true those tests fail without it.
if [ -z "${PROMETHEUS_BIN:-}" ]; then
  if PROMETHEUS_BIN=$(./scripts/prometheus.sh); then
    export PROMETHEUS_BIN
  else
    unset PROMETHEUS_BIN
    echo "note: no Prometheus could be installed: the Prometheus tests will" \
      "$([ "${CI:-}" = true ] && echo fail || echo skip)."
  fi
fi

# Eight tests at a time in each test binary, not one per core: the end-to-end tests spend their
# time waiting on timers, Consul agents and replica processes, not on the CPU. On 2 cores the
# end-to-end binary took 321 s at six and 268 s at ten, where the same tests took about 790 s
# as 24 binaries at two at a time. RUST_TEST_THREADS set by the caller wins.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-8}"

# fault-injection: the panic-policy test makes `run` panic on cue; release builds have no such
# switch.
cargo test --workspace --locked --features rehydrator/fault-injection "$@"

# The fuzz targets' smoke run, when the whole suite runs (no test filter given).
if [ $# -eq 0 ]; then
  ./scripts/fuzz-smoke.sh
fi
