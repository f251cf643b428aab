#!/usr/bin/env bash
# Installs everything tund's tests need on a fresh Debian machine (run as root), then
# prints the path of a virtualenv holding tund (editable) and its test tools.
#   VENV=$(bash tests/setup.sh)
# Idempotent and quick when everything is already there. Output of the installs goes to
# stderr so that stdout is only the venv path.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # build of systemd-python and the venv
  python3 python3-venv python3-dev gcc pkg-config libsystemd-dev
  # real kernel objects and peers for privileged tests
  iproute2 iputils-ping iperf3 nftables socat procps util-linux ethtool bridge-utils
  wireguard-go wireguard-tools openvpn
  # decodes the QR codes of tundctl peer add --qr (tests/unit/test_peer_qr.py)
  zbar-tools
  # real systemd in a container, Debian packaging
  systemd-container debootstrap zstd dpkg-dev debhelper dh-python fakeroot
  pybuild-plugin-pyproject python3-all python3-setuptools
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# Debian 13's wireguard-go (TUN offloads, UDP GSO/GRO), unpacked, not installed: the peer
# of tests/privileged/test_wg_wggo.py's GSO trains test
bash tests/fetch_deb.sh trixie wireguard-go /var/tmp/tund-wggo-trixie usr/bin/wireguard-go >&2 \
  || echo "setup: could not unpack Debian 13's wireguard-go (its test will not run)" >&2

VENV="${TUND_VENV:-/var/tmp/tund-test-venv}"
PY="${PYTHON:-$(command -v python3)}"
stamp="$VENV/.tund-stamp"
want="$(sha256sum pyproject.toml | cut -c1-16)-$("$PY" -c 'import sys; print(sys.version.split()[0])')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating $VENV with $PY" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  "$VENV/bin/pip" install -q -e ".[test,systemd]" >&2
  echo "$want" > "$stamp"
else
  "$VENV/bin/pip" install -q --no-deps -e . >&2
fi
echo "$VENV"
