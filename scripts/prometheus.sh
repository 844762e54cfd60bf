#!/usr/bin/env bash
# Prints the path of a real prometheus binary for the tests (promtool is beside it): Debian's
# prometheus 2.24.1 from bullseye, the suite the Consul package comes from, installed into the
# project's cache on first use by scripts/debian-package.sh without touching the machine's apt
# setup. The health-gate test runs it; tests/deploy.rs runs its promtool on the alert rules.
set -euo pipefail
exec "$(dirname "$0")/debian-package.sh" prometheus "2.24.1+ds-1+b7" bullseye \
  7f98887c0fa36e0dd81bb39abc57a9e2535c2a0dc20442a431255ebc0b87b73a \
  usr/bin/prometheus \
  7dfad7f49eaf24b6c89ccd94917559c2d59750c8a0947786b9f4a9b0072908f7
