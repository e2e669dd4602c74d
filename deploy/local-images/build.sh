#!/bin/sh
# Base images for a Docker engine that cannot pull from a registry (an offline machine, CI).
#
#   berth-local/python:3.11   Debian bookworm from debootstrap (apt mirror only), imported with
#                             `docker import`, plus this host's extra certificate authorities:
#                             the BASE of Berth's own Dockerfile
#   berth-local/postgres:15   Debian's postgresql-15 on it, started like the official postgres image
#   berth-local/redis:7       Debian's redis-server on it
#
# Then point docker-compose.yml at them:
#   BERTH_BASE_IMAGE=berth-local/python:3.11 BERTH_POSTGRES_IMAGE=berth-local/postgres:15 \
#   BERTH_REDIS_IMAGE=berth-local/redis:7 docker compose up --build
#
# Needs root (debootstrap), debootstrap, tar and the docker CLI; DOCKER_HOST picks the engine.
# BERTH_ROOTFS_CACHE=DIR keeps the root file system's tarball there between runs (making it takes
# a minute or two). The tarball and the imported image are keyed by the debootstrap command, so a
# change to it makes a new one; the builds on top use Docker's own layer cache.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
docker=${DOCKER:-docker}
mirror=${BERTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump the last word when the preparation below changes, so that cached tarballs are remade.
debootstrap="debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates bookworm"
key=$(printf '%s %s prep-1' "$debootstrap" "$mirror" | sha256sum | cut -c1-16)
rootfs=berth-local/rootfs:$key
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! $docker image inspect "$rootfs" >/dev/null 2>&1; then
  tarball="${BERTH_ROOTFS_CACHE:-$work}/berth-local-python-$key.tar"
  if [ ! -f "$tarball" ]; then
    echo "Making the bookworm root file system with debootstrap (a minute or two)…" >&2
    $debootstrap "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # As in Debian's official images: package installs in a build never start services.
    printf '#!/bin/sh\nexit 101\n' >"$work/root/usr/sbin/policy-rc.d"
    chmod 755 "$work/root/usr/sbin/policy-rc.d"
    rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/archives/"*.deb
    mkdir -p "$(dirname "$tarball")"
    tar -C "$work/root" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"  # only a complete tarball is ever cached
    rm -rf "$work/root"
  fi
  $docker import "$tarball" "$rootfs" >/dev/null
  echo "Imported $rootfs" >&2
fi

# The host's own certificate authorities go into a layer of their own (python/Dockerfile).
mkdir -p "$work/python/ca-certificates"
cp "$here/python/Dockerfile" "$work/python/"
for certificate in /usr/local/share/ca-certificates/*.crt; do
  if [ -f "$certificate" ]; then cp "$certificate" "$work/python/ca-certificates/"; fi
done
$docker build -q --build-arg "ROOTFS=$rootfs" -t berth-local/python:3.11 "$work/python" >/dev/null
echo "Built berth-local/python:3.11" >&2

# --network host: the build reaches the apt mirror even on an engine without a default bridge.
for image in postgres:15 redis:7; do
  $docker build -q --network host --build-arg BASE=berth-local/python:3.11 -t "berth-local/$image" \
    "$here/${image%%:*}" >/dev/null
  echo "Built berth-local/$image" >&2
done
