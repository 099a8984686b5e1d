#!/usr/bin/env bash
# Prints the path of Alertmanager's binary, installing Debian's
# `prometheus-alertmanager` when it is missing. Its service is never
# started: a policy-rc.d denies service starts during the install (one
# already there is left as it is). Exits 1, saying why, when it cannot be
# had (no apt-get, not root and no sudo, no package).
set -euo pipefail

find_am() {
  command -v prometheus-alertmanager 2>/dev/null && return 0
  command -v alertmanager 2>/dev/null && return 0
  [ -x /usr/bin/prometheus-alertmanager ] && { echo /usr/bin/prometheus-alertmanager; return 0; }
  return 1
}

find_am && exit 0
command -v apt-get >/dev/null 2>&1 || { echo "alertmanager: not installed, and no apt-get to install it" >&2; exit 1; }
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "alertmanager: not installed; installing it needs root or sudo" >&2; exit 1; }
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
log=$(mktemp /tmp/opsloop-alertmanager-install.XXXXXX)
echo "alertmanager: installing Debian's prometheus-alertmanager (log: $log)..." >&2
install() { ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus-alertmanager >>"$log" 2>&1; }
if ! install; then
  ${sudo[@]+"${sudo[@]}"} apt-get update >>"$log" 2>&1 || true
  install || { echo "alertmanager: apt-get install prometheus-alertmanager failed (log: $log)" >&2; exit 1; }
fi
find_am || { echo "alertmanager: installed, but no binary found" >&2; exit 1; }
