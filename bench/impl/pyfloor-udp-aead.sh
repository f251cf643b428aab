#!/usr/bin/env bash
# The Python floor (bench/tools/pyfloor.py): the least a Python data path with tund's AEAD
# does per packet, over UDP between the anchors' namespaces, on persistent tun devices.
# A reference for the RTT goal, not a tunnel (fixed key, no handshake, no replay window).
# Usage: pyfloor-udp-aead.sh up|down|version
set -euo pipefail
ANCHORS="${TUND_ANCHORS:?set by bench/run.sh}"
. "$ANCHORS/lib.sh"
NAME=pyfloor-udp-aead; SD="$(state_dir "$NAME")"
PY="${TUND_VENV:?set TUND_VENV to a venv with cryptography}/bin/python"
TOOL="$(cd "$(dirname "$0")/../tools" && pwd)/pyfloor.py"
PORT=55558
case "${1:-}" in
  up)
    assert_our_addr "$OUTER_A"; assert_our_addr "$OUTER_B"
    head -c 32 /dev/urandom > "$SD/key"; chmod 600 "$SD/key"
    nsA ip tuntap add dev pyfA mode tun; nsB ip tuntap add dev pyfB mode tun
    nsA ip addr add "$INNER_A/24" dev pyfA; nsA ip link set pyfA mtu 1420 up  # as tund-udp-wg
    nsB ip addr add "$INNER_B/24" dev pyfB; nsB ip link set pyfB mtu 1420 up
    : > "$SD/pids"
    spawn "$NS_A" "$SD/pids" "$SD/A.log" "$PY" "$TOOL" --dev pyfA --bind "$OUTER_A:$PORT" \
      --peer "$OUTER_B:$PORT" --key "$SD/key"
    spawn "$NS_B" "$SD/pids" "$SD/B.log" "$PY" "$TOOL" --dev pyfB --bind "$OUTER_B:$PORT" \
      --peer "$OUTER_A:$PORT" --key "$SD/key"
    echo pyfA > "$SD/ifname"
    ;;
  down)
    kill_pidfile "$SD/pids"
    nsA ip tuntap del dev pyfA mode tun 2>/dev/null || true
    nsB ip tuntap del dev pyfB mode tun 2>/dev/null || true
    ;;
  version) echo "$("$PY" --version 2>&1) bench/tools/pyfloor.py, cryptography $("$PY" -c 'import cryptography; print(cryptography.__version__)')" ;;
  *) echo "usage: $0 up|down|version" >&2; exit 2 ;;
esac
