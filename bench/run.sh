#!/usr/bin/env bash
# The benchmark of issue 6: tund and its peers side by side, one command, as root.
#
#   bench/run.sh [--reps N] [--seconds S] [--impls "a b ..."] [--no-loss] [--no-scale]
#                [--scale-only] [--tunnels N] [--rev REV]
#
# --rev REV: run tund as committed at REV (git archive into /tmp/pf-bench/src-REV, first on
# PYTHONPATH) instead of the working tree (the default, through the venv's editable
# install).
#
# Interleaved reps (A B C A B C ...) of single-stream iperf3 TCP + 20 pings through each
# tunnel, then 100 idle pings (bench/tools/idle_ping.py, median), between two namespaces
# (pfA / pfB, from the shared anchors harness), then the
# lossy run (1% random drop of underlay TCP/UDP by nftables, both directions), then the
# scale run (bench/scale.py). Prints a Markdown table with the issue's ratios; results
# under /tmp/pf-bench/<stamp>/. The peers' launchers and measure.py come from the anchors
# harness: $TUND_ANCHORS, else ../shared/anchors next to the repository.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
REV=""; REPS=3; SECS=10; LOSS=1; SCALE=1; ONLY_SCALE=0; TUNNELS=256
IMPLS="direct pyrelay-tcp openvpn-udp-aead wireguard-go wireguard-go-trixie pyfloor-udp-aead tund-udp-wg tund-tcp-plain tund-wggo tund-wggo-trixie"
LOSS_IMPLS="openvpn-udp-aead wireguard-go-trixie tund-udp-wg"
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --seconds) SECS="$2"; shift 2 ;;
    --impls) IMPLS="$2"; shift 2 ;;
    --loss-impls) LOSS_IMPLS="$2"; shift 2 ;;
    --no-loss) LOSS=0; shift ;;
    --no-scale) SCALE=0; shift ;;
    --scale-only) ONLY_SCALE=1; shift ;;
    --tunnels) TUNNELS="$2"; shift 2 ;;
    --rev) REV="$2"; shift 2 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench/run.sh: needs root (namespaces, tun devices)" >&2; exit 2; }

export TUND_ANCHORS="${TUND_ANCHORS:-$REPO/../shared/anchors}"
[ -f "$TUND_ANCHORS/lib.sh" ] || { echo "bench/run.sh: no anchors harness at $TUND_ANCHORS (set TUND_ANCHORS)" >&2; exit 2; }
TUND_ANCHORS="$(cd "$TUND_ANCHORS" && pwd)"

# Peers' packages (tests/setup.sh installs the rest and makes the venv).
need=()
for p in openvpn wireguard-go wireguard-tools iperf3 iputils-ping ethtool procps bc openssl nftables; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
export TUND_VENV="${TUND_VENV:-$(bash "$REPO/tests/setup.sh")}" || exit 3
# tund's workers run as the system user the Debian package creates: make it as it does
if ! getent passwd tund > /dev/null; then
  getent group tund > /dev/null && g=(--gid tund) || g=()
  useradd --system --no-create-home --shell /usr/sbin/nologin "${g[@]}" tund || exit 3
fi

DESC="working tree $(git -C "$REPO" rev-parse --short HEAD) + $(git -C "$REPO" status --porcelain -- tund | wc -l) modified files under tund/"
if [ -n "$REV" ]; then
  sha="$(git -C "$REPO" rev-parse --short "$REV")" || exit 2
  SRC="/tmp/pf-bench/src-$sha"
  [ -d "$SRC/tund" ] || { mkdir -p "$SRC" && git -C "$REPO" archive "$sha" tund | tar -x -C "$SRC"; } || exit 3
  export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
  # `python -m tund.relay` would put the current directory first on sys.path: the workers
  # would run the working tree (when started from the repository) while the daemon runs REV
  export PYTHONSAFEPATH=1
  DESC="commit $sha (from $SRC)"
fi

export TUND_BENCH_DESC="$DESC"
# Byte-compile the code under test, as an installed tund is (pip and Debian's packaging do):
# with PYTHONDONTWRITEBYTECODE set and no cache, every daemon and fork server would
# compile each module from source at start (the scale stage would measure that too).
"$TUND_VENV/bin/python" -m compileall -q "${SRC:-$REPO}/tund" > /dev/null || exit 3

# Our own namespace / device / state names (the anchors' defaults are tbA/tbB); BENCH_TAG
# (default pf) lets two benchmarks run side by side without sharing names.
TAG="${BENCH_TAG:-pf}"
export NS_A="${TAG}A" NS_B="${TAG}B" VETH_A="${TAG}vA" VETH_B="${TAG}vB"
export STATE_ROOT="/tmp/pf-bench/state-$TAG" BUILD_DIR=/tmp/pf-bench/build
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${OUT_DIR:-/tmp/pf-bench/$STAMP}"; mkdir -p "$OUT"
LOG="$OUT/run.log"
echo "bench: results in $OUT (log $LOG)"
{
  echo "date: $(date -Is)  kernel: $(uname -r)  cpus: $(nproc)  reps: $REPS x ${SECS}s"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "tund: $DESC"
} | tee "$OUT/env.txt"

loss_rules() {  # on|off: drop 1% of underlay TCP/UDP packets entering either namespace
  # Prerouting at priority -450 runs before IP reassembly (defrag is -400, local delivery
  # later): every IP fragment is a packet on the wire and is dropped with probability 1%.
  # A veth hands a UDP_SEGMENT train (or a TSO burst) over as one buffer, which a real wire
  # would not: segmentation offloads are off on the veths while the loss rules are on, so
  # the kernel cuts trains into datagrams before the veth and each is lost on its own.
  local ns dev
  for ns in "$NS_A" "$NS_B"; do
    dev="$VETH_A"; [ "$ns" = "$NS_B" ] && dev="$VETH_B"
    ip netns exec "$ns" nft delete table inet pfloss 2>/dev/null || true
    local onoff=on; [ "$1" = on ] && onoff=off
    ip netns list | grep -qw "$ns" || continue
    ip netns exec "$ns" ethtool -K "$dev" tx-udp-segmentation "$onoff" tso "$onoff" gso "$onoff" \
      >/dev/null 2>&1 || echo "loss: ethtool -K $dev ... $onoff failed" >&2
    [ "$1" = on ] || continue
    ip netns exec "$ns" nft -f - <<NFT
table inet pfloss {
  chain pre {
    type filter hook prerouting priority -450; policy accept;
    meta nfproto ipv4 ip protocol { tcp, udp } numgen random mod 100 0 drop
  }
}
NFT
  done
}

run_set() {  # results-file impls...
  local rf="$1" rep impl; shift
  for rep in $(seq 1 "$REPS"); do
    for impl in "$@"; do
      echo "=== rep $rep/$REPS $impl" | tee -a "$LOG"
      RESULTS_FILE="$rf" timeout $((4 * SECS + 200)) "$HERE/one.sh" "$impl" "$SECS" "$rep" \
        tcp_single,ping >> "$LOG" 2>&1 || echo "    (failed, see $LOG)"
      grep -E '^(tcp_single|ping) ' "$LOG" | tail -2 | sed 's/^/    /'
    done
  done
}

if [ "$ONLY_SCALE" = 0 ]; then
  "$TUND_ANCHORS/netns.sh" up >> "$LOG" 2>&1 || { echo "testbed failed, see $LOG" >&2; exit 3; }
  trap 'loss_rules off; "$TUND_ANCHORS/netns.sh" down >> "$LOG" 2>&1' EXIT
  # shellcheck disable=SC2086
  run_set "$OUT/results.jsonl" $IMPLS
  if [ "$LOSS" = 1 ]; then
    loss_rules on
    # shellcheck disable=SC2086
    BENCH_LOSS=1 run_set "$OUT/loss.jsonl" $LOSS_IMPLS
    loss_rules off
  fi
  "$TUND_ANCHORS/netns.sh" down >> "$LOG" 2>&1
fi
# Wait (at most 30 s) until the CPUs are quiet: deleting namespaces leaves the kernel work
# to do for seconds after `ip netns del` returns, and a start-up measured on CPUs still
# busy with it measures that work too.
settle() {
  local i a b idle total
  for i in $(seq 1 30); do
    a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
    idle=$(( b[4] + b[5] - a[4] - a[5] ))
    total=$(( b[1]+b[2]+b[3]+b[4]+b[5]+b[6]+b[7]+b[8] - a[1]-a[2]-a[3]-a[4]-a[5]-a[6]-a[7]-a[8] ))
    [ "$total" -gt 0 ] && [ $(( 100 * idle / total )) -ge 90 ] && { echo "    (quiet after ${i} s)"; return 0; }
  done
  echo "    (still busy after 30 s: $(( 100 - 100 * idle / total ))% of the CPUs)"
}

if [ "$SCALE" = 1 ]; then
  echo "=== scale: $TUNNELS tunnels" | tee -a "$LOG"
  settle | tee -a "$LOG"
  "$TUND_VENV/bin/python" "$HERE/scale.py" --venv "$TUND_VENV" -n "$TUNNELS" --out "$OUT/scale.json" >> "$LOG" 2>&1 \
    || echo "    (scale run failed, see $LOG)"
fi
echo
python3 "$HERE/report.py" "$OUT/results.jsonl" --loss "$OUT/loss.jsonl" --scale "$OUT/scale.json" | tee "$OUT/summary.md"
echo; echo "results in $OUT"
