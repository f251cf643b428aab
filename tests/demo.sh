#!/usr/bin/env bash
# tund's main job, end to end, on a fresh Debian machine (as root):
#   sudo bash tests/demo.sh
# Two network namespaces play two sites joined by a veth (10.240.0.1 <-> 10.240.0.2); each
# runs tund with a shipped example config (etc/tund/examples/site-{a,b}.toml): WireGuard over
# UDP, the default users get, with keys made by `tundctl genkey`/`pubkey`; a ping crosses the
# tunnel (10.241.0.2 -> 10.241.0.1); `tundctl status` shows both ends with their handshake;
# then everything is removed again (also on failure). Traffic stays inside the namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(bash tests/setup.sh)"
PY="$VENV/bin/python"
ID=$$
NA="tund-demo-a-$ID" NB="tund-demo-b-$ID"
WORK="$(mktemp -d /tmp/tund-demo.XXXXXX)"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  ip netns del "$NA" 2>/dev/null || true
  ip netns del "$NB" 2>/dev/null || true
  if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

step() { echo; echo "== $*"; }

step "two sites: namespaces $NA and $NB joined by a veth"
ip netns add "$NA"; ip netns add "$NB"
ip link add "dva$ID" netns "$NA" type veth peer name "dvb$ID" netns "$NB"
ip -n "$NA" addr add 10.240.0.1/24 dev "dva$ID"; ip -n "$NA" link set "dva$ID" up; ip -n "$NA" link set lo up
ip -n "$NB" addr add 10.240.0.2/24 dev "dvb$ID"; ip -n "$NB" link set "dvb$ID" up; ip -n "$NB" link set lo up

step "keys: tundctl genkey and tundctl pubkey for each site"
for side in a b; do
  (umask 077; "$VENV/bin/tundctl" genkey > "$WORK/site-$side.key")
  "$VENV/bin/tundctl" pubkey < "$WORK/site-$side.key" > "$WORK/site-$side.pub"
  echo "site $side public key: $(cat "$WORK/site-$side.pub")"
done
for side in a b; do
  other=$([ "$side" = a ] && echo b || echo a)
  other_uc=$(echo "$other" | tr a-z A-Z)
  sed -e "s#/run/tund/site-$side.sock#$WORK/site-$side.sock#" \
      -e "s#/etc/tund/keys/site-$side.key#$WORK/site-$side.key#" \
      -e "s#SITE+$other_uc+PUBLIC+KEY+FROM+tundctl+pubkey+00000=#$(cat "$WORK/site-$other.pub")#" \
      "etc/tund/examples/site-$side.toml" > "$WORK/site-$side.toml"
  "$VENV/bin/tundctl" check "$WORK/site-$side.toml"
done

step "start tund in each site"
ip netns exec "$NA" "$VENV/bin/tund" --config "$WORK/site-a.toml" > "$WORK/a.log" 2>&1 & PIDS+=($!)
ip netns exec "$NB" "$VENV/bin/tund" --config "$WORK/site-b.toml" > "$WORK/b.log" 2>&1 & PIDS+=($!)

step "ping 10.241.0.1 from site b through the tunnel"
ok=0
for _ in $(seq 1 100); do
  if ip netns exec "$NB" ping -n -c1 -W1 10.241.0.1 >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.2
done
if [ $ok != 1 ]; then echo "no ping through the tunnel"; tail -n 20 "$WORK"/a.log "$WORK"/b.log; exit 1; fi
ip netns exec "$NB" ping -n -c3 -i 0.2 10.241.0.1

step "both ends completed a WireGuard handshake"
for side in a b; do
  ip netns exec "$([ $side = a ] && echo "$NA" || echo "$NB")" \
    "$VENV/bin/tundctl" --socket "$WORK/site-$side.sock" status --json | "$PY" -c '
import json, sys
side = sys.argv[1]
(name, t), = json.load(sys.stdin)["tunnels"].items()
if t["encryption"] != "wireguard" or not t["latest_handshake"]:
    sys.exit(f"site {side}: tunnel {name} has no WireGuard handshake: {t}")
print("site", side + ": tunnel", name, t["state"] + ", encryption", t["encryption"] + ", handshake done")
' "$side"
done

step "tundctl status (site a)"
ip netns exec "$NA" "$VENV/bin/tundctl" --socket "$WORK/site-a.sock" status
step "tundctl status (site b)"
ip netns exec "$NB" "$VENV/bin/tundctl" --socket "$WORK/site-b.sock" status

step "clean-up"
