#!/usr/bin/env bash
# One measurement of one implementation: launcher up, bounded wait for a ping through the
# tunnel, iperf3 server in namespace B, the anchors' tools/measure.py (client in A), down.
# Launchers come from bench/impl/ (tund) or the anchors' impl/ (the peers).
# Usage: one.sh IMPL SECONDS REP TESTS     (called by bench/run.sh, which sets the env)
set -uo pipefail
ANCHORS="${TUND_ANCHORS:?set by bench/run.sh}"
. "$ANCHORS/lib.sh"
HERE="$(cd "$(dirname "$0")" && pwd)"
IMPL="$1"; SECS="$2"; REP="$3"; TESTS="${4:-tcp_single,ping}"
L="$HERE/impl/$IMPL.sh"; [ -x "$L" ] || L="$ANCHORS/impl/$IMPL.sh"
[ -x "$L" ] || { echo "no launcher for $IMPL" >&2; exit 2; }
RESULTS_FILE="${RESULTS_FILE:?}"
SD="$(state_dir "$IMPL")"
assert_our_addr "$INNER_B"

error_line() {
  python3 -c 'import json,sys; print(json.dumps({"impl":sys.argv[1],"rep":int(sys.argv[2]),"test":"error","error":sys.argv[3]}))' \
    "$IMPL" "$REP" "$1" | tee -a "$RESULTS_FILE"
}
cleanup() {
  kill_pidfile "$SD/iperf3.pids"
  timeout 60 "$L" down >> "$SD/launcher.log" 2>&1 || echo "warning: $IMPL down failed" >&2
}

"$ANCHORS/netns.sh" up > /dev/null || { echo "testbed failed" >&2; exit 3; }
timeout 60 "$L" down >> "$SD/launcher.log" 2>&1 || true
trap cleanup EXIT
t0=$(date +%s.%N)
timeout 120 "$L" up >> "$SD/launcher.log" 2>&1 || { error_line "launcher up failed: $(tail -3 "$SD/launcher.log" | tr '\n' ' ')"; exit 4; }
ok=0
for _ in $(seq 1 150); do nsA ping -n -c1 -W1 "$INNER_B" > /dev/null 2>&1 && { ok=1; break; }; sleep 0.2; done
t1=$(date +%s.%N)
if [ $ok != 1 ]; then
  error_line "no ping through the tunnel within 30 s: $(tail -q -n2 "$SD"/*.log 2>/dev/null | tr '\n' ' ' | cut -c1-400)"; exit 5
fi
sleep "${WARMUP_S:-1}"
IFN="$(cat "$SD/ifname" 2>/dev/null || true)"
MTU="$( [ -n "$IFN" ] && nsA cat "/sys/class/net/$IFN/mtu" 2>/dev/null)"
META=$(python3 -c 'import json, sys
mtu = sys.argv[3]
print(json.dumps({"version": sys.argv[1], "ifname": sys.argv[2], "mtu": int(mtu) if mtu.isdigit() else None,
                  "setup_to_ping_s": round(float(sys.argv[4]), 2), "loss": sys.argv[5]}))' \
  "$(timeout 10 "$L" version 2>&1 | head -1)" "$IFN" "$MTU" "$(echo "$t1 - $t0" | bc)" "${BENCH_LOSS:-0}")
: > "$SD/iperf3.pids"
spawn "$NS_B" "$SD/iperf3.pids" "$SD/iperf3-server.log" iperf3 -s -B "$INNER_B" -p 5201
wait_listen "$NS_B" t 5201 10 || { error_line "iperf3 server did not start"; exit 6; }
python3 "$ANCHORS/tools/measure.py" --impl "$IMPL" --seconds "$SECS" --rep "$REP" --tests "$TESTS" \
  --ns "$NS_A" --target "$INNER_B" --pidfile "$SD/pids" --meta "$META" --results "$RESULTS_FILE"
case ",$TESTS," in
  *,ping,*)  # the idle RTT: 100 pings on the quiet tunnel, after iperf3 has settled
    sleep 1
    python3 "$HERE/tools/idle_ping.py" --ns "$NS_A" --target "$INNER_B" --impl "$IMPL" --rep "$REP" \
      | tee -a "$RESULTS_FILE" ;;
esac
