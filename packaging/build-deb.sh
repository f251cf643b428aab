#!/bin/bash
# Build tund_VERSION_all.deb for Debian trixie, inside a trixie rootfs, so the package is
# made by trixie's python3 (3.13), dh-python and debhelper, whatever the host runs.
#
# Usage: packaging/build-deb.sh OUTDIR
#   Copies the working tree (not .git, caches or venvs) to a scratch directory, puts
#   packaging/debian at ./debian there, and runs `dpkg-buildpackage -us -uc -b` in a
#   systemd-nspawn container (no boot, no network, the rootfs stays pristine).
#   Prints the path of the .deb on stdout; logs go to stderr.
#
# Needs root, systemd-nspawn (systemd-container), debootstrap, zstd.  The rootfs is made
# or restored by tests/system/make_rootfs.sh build (cached in /var/tmp).
# BUILD_ROOTFS=DIR uses an existing trixie rootfs with the build dependencies instead.
set -euo pipefail

OUT=${1:?usage: build-deb.sh OUTDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

log() { printf 'build-deb: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "build-deb.sh: must run as root (systemd-nspawn)" >&2; exit 1; }
ROOTFS=${BUILD_ROOTFS:-$("$REPO/tests/system/make_rootfs.sh" build)}

SCRATCH=$(mktemp -d /var/tmp/tsys-debbuild.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
SRC=$SCRATCH/tund
mkdir -p "$SRC"
tar -C "$REPO" --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis \
    --exclude=build --exclude=dist --exclude=./debian -cf - . | tar -C "$SRC" -xf -
cp -a "$SRC/packaging/debian" "$SRC/debian"

# Files another part of the project provides; a stand-in keeps the build going meanwhile
# (only in this scratch copy, and said loudly).
if [ ! -f "$SRC/etc/tund/tunnels.toml" ]; then
  log "WARNING: etc/tund/tunnels.toml missing in the tree: packaging a minimal placeholder"
  mkdir -p "$SRC/etc/tund"
  printf '%s\n' '# tund configuration: see tunnels.toml(5).' '' '[daemon]' \
    'log_level = "info"' >"$SRC/etc/tund/tunnels.toml"
fi
readme=$(sed -n 's/^readme *= *"\(.*\)"/\1/p' "$SRC/pyproject.toml")
if [ -n "$readme" ] && [ ! -f "$SRC/$readme" ]; then
  log "WARNING: $readme named in pyproject.toml is missing: packaging a placeholder"
  echo "tund: see tund(8)." >"$SRC/$readme"
fi

log "building in $ROOTFS (scratch $SCRATCH)"
# Own mount namespace with a tmpfs on /run: nspawn keeps scratch state there, and on this
# kind of host /run is not a tmpfs (nspawn then refuses to clean up).
if ! unshare --mount --propagation private -- sh -c 'mount -t tmpfs -o mode=755 tmpfs /run && exec "$@"' sh \
    systemd-nspawn -q -D "$ROOTFS" --register=no --keep-unit --volatile=overlay \
      --private-network --console=pipe --bind="$SCRATCH":/build --chdir=/build/tund \
      --setenv=PATH=/usr/sbin:/usr/bin:/sbin:/bin --setenv=LC_ALL=C.UTF-8 \
      --setenv=DEB_BUILD_OPTIONS=nocheck \
      -- dpkg-buildpackage -us -uc -b </dev/null >"$SCRATCH/build.log" 2>&1; then
  tail -n 40 "$SCRATCH/build.log" >&2
  cp "$SCRATCH/build.log" "$OUT/build.log"
  echo "build-deb.sh: dpkg-buildpackage failed; full log in $OUT/build.log" >&2
  exit 1
fi
debs=("$SCRATCH"/tund_*_all.deb)
[ -f "${debs[0]}" ] || { echo "build-deb.sh: no .deb produced" >&2; exit 1; }
cp "${debs[0]}" "$OUT/"
log "built $(basename "${debs[0]}")"
echo "$OUT/$(basename "${debs[0]}")"
