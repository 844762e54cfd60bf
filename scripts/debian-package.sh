#!/usr/bin/env bash
# Usage: debian-package.sh PACKAGE VERSION SUITE DEB_SHA256 BIN BIN_SHA256
#
# Prints the path of BIN (e.g. usr/bin/consul) from Debian's PACKAGE=VERSION in SUITE, installed
# into the project's cache on first use. The machine's apt configuration and installed packages
# are not touched: apt runs with a private sources list and private state and cache folders, and
# the package is unpacked with dpkg -x (no dependencies, no maintainer scripts: the binaries
# the tests want are static Go programs).
#
# Cache: ${REHYDRATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rehydrator}/<package>/<version>/.
# The .deb and the binary are checked against the checksums given, on install and on reuse.
# Messages go to stderr; stdout carries only the binary's path. Exit 1 when none could be had.
set -euo pipefail

[ $# -eq 6 ] || { echo "usage: $0 PACKAGE VERSION SUITE DEB_SHA256 BIN BIN_SHA256" >&2; exit 2; }
PACKAGE="$1" VERSION="$2" SUITE="$3" DEB_SHA256="$4" BIN="$5" BIN_SHA256="$6"
MIRROR="http://deb.debian.org/debian"

say() { echo "debian-package.sh ($PACKAGE): $*" >&2; }

cache="${REHYDRATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rehydrator}/$PACKAGE/$VERSION"
bin="$cache/root/$BIN"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -x "$bin" ] && [ "$(sha "$bin")" = "$BIN_SHA256" ]; then
  echo "$bin"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || { say "apt-get is not available"; exit 1; }
command -v dpkg >/dev/null 2>&1 || { say "dpkg is not available"; exit 1; }

say "installing $PACKAGE $VERSION from Debian $SUITE into $cache"
rm -rf "$cache"
apt="$cache/apt"
mkdir -p "$apt/etc" "$apt/state/lists/partial" "$apt/cache/archives/partial" "$cache/deb"
echo "deb $MIRROR $SUITE main" >"$apt/etc/sources.list"
opts=(
  -o "Dir::Etc::SourceList=$apt/etc/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State=$apt/state"
  -o "Dir::State::status=/dev/null"
  -o "Dir::Cache=$apt/cache"
  # Only the package lists: the machine's apt.conf.d may ask for more (DEP-11, translations).
  -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
  -o "Acquire::Languages=none"
  # Root downloads into a folder the _apt user cannot write; the checksum below is the guard.
  -o "APT::Sandbox::User=root"
  -q
)
apt-get "${opts[@]}" update >&2
(cd "$cache/deb" && apt-get "${opts[@]}" download "$PACKAGE=$VERSION" >&2)
deb=$(ls "$cache"/deb/"${PACKAGE}"_*.deb)
if [ "$(sha "$deb")" != "$DEB_SHA256" ]; then
  say "checksum mismatch for $deb"
  exit 1
fi
dpkg -x "$deb" "$cache/root"
if [ ! -x "$bin" ] || [ "$(sha "$bin")" != "$BIN_SHA256" ]; then
  say "the unpacked binary $bin does not match its checksum"
  exit 1
fi
rm -rf "$apt" "$cache/deb"
echo "$bin"
