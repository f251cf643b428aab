#!/usr/bin/env bash
# tund launcher for the benchmark (sourced by bench/impl/tund-*.sh with TUND_MODE set).
# Runs the real daemon (`tund --config`) in both namespaces of the anchors testbed, one
# tunnel each, from the venv $TUND_VENV. Modes:
#   udp-wg     tund <-> tund, UDP, WireGuard encryption (MTU 1420, as wireguard-go)
#   udp-plain  tund <-> tund, UDP, no encryption
#   tcp-plain  tund <-> tund, TCP (simpletun framing), no encryption
#   wggo       wireguard-go in namespace A <-> tund in namespace B (interop)
#   wggo-trixie  the same with Debian 13's wireguard-go v0.0.20230223 (TUN offloads,
#              UDP GSO/GRO), fetched by the anchors' tools/get_wireguard_go_trixie.sh
# Offload negotiation (the tunnel's `offload` key) is on unless TUND_BENCH_OFFLOAD=false.
# The daemon and tundctl run as `python -m tund` / `python -m tund.ctl.main`, not the venv's
# console scripts, so that `bench/run.sh --rev REV` runs REV's entry points (they moved).
# Usage: tund-<mode>.sh up|down|version
set -euo pipefail
ANCHORS="${TUND_ANCHORS:?set by bench/run.sh}"
. "$ANCHORS/lib.sh"
MODE="${TUND_MODE:?}"
NAME="tund-$MODE"; SD="$(state_dir "$NAME")"
V="${TUND_VENV:?set TUND_VENV to a venv with tund installed}"
PORT=55557
WG_PORT=51820
WG_IF=pfwgA   # wireguard-go's UAPI socket path is global: a name of our own
WGGO=wireguard-go
if [ "$MODE" = wggo-trixie ]; then
  WGGO="$BUILD_DIR/wireguard-go-trixie/usr/bin/wireguard-go"
  [ -x "$WGGO" ] || bash "$ANCHORS/tools/get_wireguard_go_trixie.sh" >&2
fi

conf() {  # side inner endpoint-line keyfile peerpub
  local transport=udp enc=wireguard keys="" mtu=""
  case "$MODE" in
    tcp-plain) transport=tcp; enc=none ;;
    udp-plain) enc=none ;;
    *) mtu="mtu = 1420" ;;
  esac
  [ "$enc" = wireguard ] && keys=$(printf 'private_key_file = "%s"\npeer_public_key = "%s"' "$4" "$5")
  cat <<EOC
[daemon]
control_socket = "$SD/$1.sock"

[interfaces.pft$1]
mode = "tun"
persist = false
addresses = ["$2/24"]
$mtu

[tunnels.bench]
interface = "pft$1"
transport = "$transport"
$3
encryption = "$enc"
offload = ${TUND_BENCH_OFFLOAD:-true}
$keys
EOC
}

up() {
  assert_our_addr "$OUTER_A"; assert_our_addr "$OUTER_B"
  for s in A B; do
    "$V/bin/python" -m tund.ctl.main genkey > "$SD/$s.key"; chmod 600 "$SD/$s.key"
    "$V/bin/python" -m tund.ctl.main pubkey < "$SD/$s.key" > "$SD/$s.pub"
  done
  : > "$SD/pids"
  if [ "${MODE%-trixie}" = wggo ]; then
    spawn "$NS_A" "$SD/pids" "$SD/A.log" env LOG_LEVEL=error "$WGGO" -f "$WG_IF"
    for _ in $(seq 1 50); do [ -S "/var/run/wireguard/$WG_IF.sock" ] && break; sleep 0.1; done
    nsA wg set "$WG_IF" private-key "$SD/A.key" listen-port "$WG_PORT" \
        peer "$(cat "$SD/B.pub")" allowed-ips "$INNER_B/32"
    nsA ip addr add "$INNER_A/24" dev "$WG_IF"; nsA ip link set "$WG_IF" up
    conf B "$INNER_B" "remote = \"$OUTER_A:$WG_PORT\"" "$SD/B.key" "$(cat "$SD/A.pub")" > "$SD/B.toml"
    spawn "$NS_B" "$SD/pids" "$SD/B.log" "$V/bin/python" -m tund --config "$SD/B.toml" --control-socket "$SD/B.sock"
    echo "$WG_IF" > "$SD/ifname"
    return
  fi
  conf A "$INNER_A" "listen = \"$OUTER_A:$PORT\"" "$SD/A.key" "$(cat "$SD/B.pub")" > "$SD/A.toml"
  conf B "$INNER_B" "remote = \"$OUTER_A:$PORT\"" "$SD/B.key" "$(cat "$SD/A.pub")" > "$SD/B.toml"
  spawn "$NS_A" "$SD/pids" "$SD/A.log" "$V/bin/python" -m tund --config "$SD/A.toml" --control-socket "$SD/A.sock"
  if [ "$MODE" = tcp-plain ]; then wait_listen "$NS_A" t "$PORT" 10; else wait_listen "$NS_A" u "$PORT" 10; fi
  spawn "$NS_B" "$SD/pids" "$SD/B.log" "$V/bin/python" -m tund --config "$SD/B.toml" --control-socket "$SD/B.sock"
  echo pftA > "$SD/ifname"
}

down() {
  kill_pidfile "$SD/pids"
  nsA ip link del pftA 2>/dev/null || true; nsB ip link del pftB 2>/dev/null || true
  nsA ip link del "$WG_IF" 2>/dev/null || true
  rm -f "/var/run/wireguard/$WG_IF.sock"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  version)
    v="$("$V/bin/python" -m tund --version 2>&1 | head -1)"
    [ "${MODE%-trixie}" = wggo ] && v="$v <-> $("$WGGO" --version | head -1)"
    echo "$v (${TUND_BENCH_DESC:-working tree})" ;;
  *) echo "usage: $0 up|down|version" >&2; exit 2 ;;
esac
