#!/bin/bash
# Build, or restore from a cache, a Debian rootfs that boots systemd under systemd-nspawn.
#
# Usage: make_rootfs.sh run|build [DIR]
#   run    the runtime image: systemd + tund's runtime Depends (the container has no
#          network, so `dpkg -i tund.deb` cannot fetch anything: everything it needs is here;
#          a Depends missing here makes the install test fail, which is how it is noticed)
#   build  the Debian build tool chain only, for packaging/build-deb.sh
#   DIR    defaults to /var/tmp/tsys-rootfs-PROFILE-KEY (never inside the repo; one per KEY,
#          so work trees with different package lists do not replace each other's rootfs)
#
# The cache is /var/tmp/tsys-rootfs-PROFILE-KEY.tar.zst; KEY hashes the suite, the package
# lists and this script's format version, so changing a list rebuilds and an unchanged list
# restores in seconds.  `DIR/.tsys-key` records the key of what DIR holds.
#
# The Debian mirror is read from this machine's apt sources at run time (MIRROR= overrides);
# no host name is ever written into the repository.
#
# Env: SUITE (default trixie), CACHE_DIR (default /var/tmp), MIRROR.
set -euo pipefail

PROFILE=${1:?usage: make_rootfs.sh run|build [DIR]}
SUITE=${SUITE:-trixie}
CACHE_DIR=${CACHE_DIR:-/var/tmp}
FORMAT=3   # bump when the steps below change what a rootfs contains

# tund's runtime Depends (keep in sync with packaging/debian/control) and what tests use.
RUN_PKGS=systemd,systemd-sysv,dbus,python3,python3-pydantic,python3-tomli-w
RUN_PKGS+=,python3-cryptography,python3-cffi-backend,python3-systemd,iproute2,iputils-ping
RUN_PKGS+=,python3-prometheus-client,python3-setproctitle,python3-segno,procps,adduser,passwd,man-db
# debootstrap does not resolve virtual packages: python3-cryptography needs the cffi
# backend named explicitly.
# The build image needs only the tool chain (the package's tests do not run at build
# time), so a change of the runtime list does not rebuild it.
BUILD_PKGS=build-essential,debhelper,dh-python,pybuild-plugin-pyproject,python3-all,python3-setuptools
BUILD_PKGS+=,dpkg-dev,fakeroot

case $PROFILE in
  run) PKGS=$RUN_PKGS ;;
  build) PKGS=$BUILD_PKGS ;;
  *) echo "make_rootfs.sh: unknown profile '$PROFILE' (expected run or build)" >&2; exit 2 ;;
esac
KEY=$(printf '%s|%s|%s' "$SUITE" "$PKGS" "$FORMAT" | sha256sum | cut -c1-12)
CACHE=$CACHE_DIR/tsys-rootfs-$PROFILE-$KEY.tar.zst
ROOT=${2:-/var/tmp/tsys-rootfs-$PROFILE-$KEY}

log() { printf 'make_rootfs[%s]: %s\n' "$PROFILE" "$*" >&2; }

mirror() {  # the first non-security URI of this machine's apt sources
  bash "$(dirname "$0")/../apt_mirror.sh"
}

if [ "$(cat "$ROOT/.tsys-key" 2>/dev/null)" = "$KEY" ]; then
  log "up to date: $ROOT ($KEY)"; echo "$ROOT"; exit 0
fi

# One builder at a time per profile (pytest-xdist workers, a parallel build-deb.sh): they
# share the cache file.
LOCK=$CACHE_DIR/tsys-rootfs-$PROFILE.lock
exec 9>"$LOCK"
flock -w 900 9 || { echo "make_rootfs.sh: timed out waiting for $LOCK" >&2; exit 1; }
if [ "$(cat "$ROOT/.tsys-key" 2>/dev/null)" = "$KEY" ]; then
  log "built meanwhile: $ROOT ($KEY)"; echo "$ROOT"; exit 0
fi

rm -rf "$ROOT"
if [ -f "$CACHE" ]; then
  mkdir -p "$ROOT"
  zstd -dc "$CACHE" | tar -C "$ROOT" --numeric-owner -xf -
  log "restored $ROOT from $CACHE"; echo "$ROOT"; exit 0
fi

MIRROR=${MIRROR:-$(mirror)}
log "debootstrap $SUITE ($PKGS); log in $ROOT.debootstrap.log"
start=$SECONDS
if ! debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$ROOT" "$MIRROR" \
    >"$ROOT.debootstrap.log" 2>&1; then
  tail -n 30 "$ROOT.debootstrap.log" >&2
  exit 1
fi
echo tsys >"$ROOT/etc/hostname"
: >"$ROOT/etc/machine-id"              # empty: systemd makes a fresh one at each boot
# Quiet and fast boots: nothing that runs apt, fsck or waits for a network.
mkdir -p "$ROOT/etc/systemd/system"
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    systemd-networkd-wait-online.service fstrim.timer dpkg-db-backup.timer; do
  ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
done
rm -f "$ROOT"/var/cache/apt/archives/*.deb
echo "$KEY" >"$ROOT/.tsys-key"
log "debootstrap took $((SECONDS - start)) s, $(du -sh "$ROOT" | cut -f1)"
tar -C "$ROOT" --numeric-owner -cf - . | zstd -q -T0 -10 >"$CACHE.tmp.$$"
mv "$CACHE.tmp.$$" "$CACHE"
log "cached as $CACHE ($(du -h "$CACHE" | cut -f1))"
echo "$ROOT"
