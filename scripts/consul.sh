#!/usr/bin/env bash
# Prints the path of a real consul binary for the tests: Debian's consul 1.8.7 from bullseye
# (where Debian still keeps consul), installed into the project's cache on first use by
# scripts/debian-package.sh without touching the machine's apt setup.
# Cache: ${REHYDRATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rehydrator}/consul/<version>/.
set -euo pipefail
exec "$(dirname "$0")/debian-package.sh" consul "1.8.7+dfsg1-2+b3" bullseye \
  e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9 \
  usr/bin/consul \
  a449efb10a03df3cb9310f3a54d933ccda7c4faba4f421f183fc90a82056798e
