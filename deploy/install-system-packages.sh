#!/usr/bin/env bash
# Install the Debian packages Berth needs on this machine, if any are missing.
#   deploy/install-system-packages.sh nginx redis-server ...
# As root it installs them with apt-get; otherwise it says what to install and fails.
set -euo pipefail
missing=()
for package in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "Berth needs these Debian packages: ${missing[*]}" >&2
  echo "Install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "Installing ${missing[*]} with apt-get…"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts some services on install; Berth runs its own instances, so stop those.
for service in nginx redis-server postgresql; do
  if printf '%s\n' "${missing[@]}" | grep -qx "$service"; then
    service "$service" stop >/dev/null 2>&1 || true
  fi
done
