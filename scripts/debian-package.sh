#!/usr/bin/env bash
# Prints the path of a program from Debian's archive, installing its
# package when the program is missing:
#   scripts/debian-package.sh PACKAGE PROGRAM [PROGRAM...]
# (the first PROGRAM found on PATH or in /usr/bin, /usr/sbin wins). A
# package's services are never started: a policy-rc.d denies service starts
# during the install (one already there is left as it is). Exits 1, saying
# why, when it cannot be had (no apt-get, not root and no sudo, no package).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: scripts/debian-package.sh PACKAGE PROGRAM [PROGRAM...]" >&2; exit 2; }
package=$1
shift

find_program() {
  local p
  for p in "$@"; do
    command -v "$p" 2>/dev/null && return 0
    for d in /usr/bin /usr/sbin; do
      [ -x "$d/$p" ] && { echo "$d/$p"; return 0; }
    done
  done
  return 1
}

find_program "$@" && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "$package: not installed, and no apt-get to install it" >&2; exit 1; }
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "$package: not installed; installing it needs root or sudo" >&2; exit 1; }
  sudo=(sudo -n)
fi
ours=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | ${sudo[@]+"${sudo[@]}"} tee /usr/sbin/policy-rc.d >/dev/null
  ${sudo[@]+"${sudo[@]}"} chmod +x /usr/sbin/policy-rc.d
  ours=1
fi
cleanup() { if [ -n "$ours" ]; then ${sudo[@]+"${sudo[@]}"} rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
log=$(mktemp "/tmp/opsloop-$package-install.XXXXXX")
echo "$package: installing Debian's $package (log: $log)..." >&2
install() { ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$package" >>"$log" 2>&1; }
if ! install; then
  ${sudo[@]+"${sudo[@]}"} apt-get update >>"$log" 2>&1 || true
  install || { echo "$package: apt-get install $package failed (log: $log)" >&2; exit 1; }
fi
find_program "$@" || { echo "$package: installed, but none of $* found" >&2; exit 1; }
