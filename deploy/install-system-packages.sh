#!/usr/bin/env bash
# Install the Debian packages Berth needs on this machine, if any are missing.
#   deploy/install-system-packages.sh nginx redis-server ...      packages, by name
#   deploy/install-system-packages.sh node:nodejs npm:npm ...     a package for each missing command
# A command that is already on PATH needs nothing, whichever package brought it: nodejs from
# NodeSource contains npm, and asking apt for Debian's npm beside it fails. Commands are looked
# at again after each install, so a package that brought the next command too is enough.
# As root it installs with apt-get; otherwise it says what to install and fails.
set -euo pipefail

needed() {  # needed ITEM: whether ITEM (a package, or command:package) is missing
  case "$1" in
    *:*) ! command -v "${1%%:*}" >/dev/null 2>&1 ;;
    *) ! dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ;;
  esac
}

missing=()
for item in "$@"; do
  if needed "$item"; then missing+=("$item"); fi
done
for argument in "${commands[@]}"; do
  missing+=("${argument#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "Berth needs these Debian packages: ${missing[*]##*:}" >&2
  echo "Install them with: sudo apt-get install ${missing[*]##*:}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
install() {
  echo "Installing $* with apt-get…"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  installed+=("$@")
}
installed=()
packages=()
for item in "${missing[@]}"; do
  case "$item" in *:*) ;; *) packages+=("$item") ;; esac
done
[ ${#packages[@]} -eq 0 ] || install "${packages[@]}"
for item in "${missing[@]}"; do
  case "$item" in
    *:*) if needed "$item"; then install "${item##*:}"; fi ;;  # unless an earlier package brought it
  esac
done
# Debian starts some services on install; Berth runs its own instances, so stop those.
for service in nginx redis-server postgresql; do
  if printf '%s\n' "${installed[@]}" | grep -qx "$service"; then
    service "$service" stop >/dev/null 2>&1 || true
  fi
done
