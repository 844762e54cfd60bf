#!/usr/bin/env bash
# Prints the path of a real consul binary for the tests, installing Debian's consul 1.8.7 into
# the project's cache on first use. The machine's apt configuration and installed packages are
# not touched: apt runs with a private sources list (bullseye, where Debian still keeps consul)
# and private state and cache folders, and the package is unpacked with dpkg -x.
#
# Cache: ${REHYDRATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rehydrator}/consul/<version>/.
# The .deb and the binary are checked against the checksums below, on install and on reuse.
# Messages go to stderr; stdout carries only the binary's path. Exit 1 when none could be had.
set -euo pipefail

VERSION="1.8.7+dfsg1-2+b3"
DEB_SHA256="e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9"
BIN_SHA256="a449efb10a03df3cb9310f3a54d933ccda7c4faba4f421f183fc90a82056798e"
SUITE="bullseye"
MIRROR="http://deb.debian.org/debian"

say() { echo "consul.sh: $*" >&2; }

cache="${REHYDRATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rehydrator}/consul/$VERSION"
bin="$cache/root/usr/bin/consul"

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -x "$bin" ] && [ "$(sha "$bin")" = "$BIN_SHA256" ]; then
  echo "$bin"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || { say "apt-get is not available"; exit 1; }
command -v dpkg >/dev/null 2>&1 || { say "dpkg is not available"; exit 1; }

say "installing consul $VERSION from Debian $SUITE into $cache"
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
(cd "$cache/deb" && apt-get "${opts[@]}" download "consul=$VERSION" >&2)
deb=$(ls "$cache"/deb/consul_*.deb)
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
