#!/usr/bin/env bash
# Install the Debian packages Berth needs on this machine, if any are missing.
#   deploy/install-system-packages.sh nginx redis-server ...
# An argument command:package stands for a command, and the package that provides it on Debian
# and Ubuntu: the package is installed only when the command is not found (npm comes with
# NodeSource's nodejs, for example, and Debian's npm package would conflict with it).
# As root it installs them with apt-get; otherwise it says what to install and fails.
set -euo pipefail
missing=()
commands=()
for argument in "$@"; do
  if [[ "$argument" == *:* ]]; then
    command -v "${argument%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${argument%%:*}" ] || commands+=("$argument")
  elif ! dpkg-query -W -f='${Status}' "$argument" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$argument")
  fi
done
for argument in "${commands[@]}"; do
  missing+=("${argument#*:}")
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
packages=()
for argument in "$@"; do
  [[ "$argument" == *:* ]] || continue
  # One at a time: an earlier package may have brought the command already (nodejs brings npm).
  if ! command -v "${argument%%:*}" >/dev/null 2>&1 && [ ! -x "/usr/sbin/${argument%%:*}" ]; then
    apt-get install -y -qq --no-install-recommends "${argument#*:}" >/dev/null
  fi
done
for package in "${missing[@]}"; do
  [[ " ${commands[*]} " == *":$package "* ]] || packages+=("$package")
done
[ ${#packages[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# Debian starts some services on install; Berth runs its own instances, so stop those.
for service in nginx redis-server postgresql; do
  if printf '%s\n' "${missing[@]}" | grep -qx "$service"; then
    service "$service" stop >/dev/null 2>&1 || true
  fi
done
