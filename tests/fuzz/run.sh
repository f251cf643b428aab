#!/usr/bin/env bash
# Fuzz every target with atheris for SECONDS each (default 60), one after the other:
#   bash tests/fuzz/run.sh [SECONDS] [TARGET...]
# Corpora persist in $TUND_FUZZ_DIR (default /var/tmp/tund-fuzz), so later runs start
# where earlier ones stopped; crash-*/timeout-*/oom-* inputs land there too.
# Prints one line per target ("TARGET: N inputs in S s, ok" or "... FAILED") and exits
# non-zero if any target found a crash, a hang (10 s per input) or an allocation over
# 1 GiB.
set -uo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH="${1:-60}"
shift || true
PY="${PYTHON:-python3}"
DIR="${TUND_FUZZ_DIR:-/var/tmp/tund-fuzz}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <("$PY" -c 'from tests.fuzz.targets import TARGETS; print("\n".join(TARGETS))')
fi
failed=0
total=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$DIR/$t"
  log="$DIR/$t.log"
  TMPDIR="$DIR" "$PY" -m tests.fuzz.fuzz "$t" "$DIR/$t" -max_total_time="$SECONDS_EACH" -timeout=10 \
    -rss_limit_mb=1024 -artifact_prefix="$DIR/" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  total=$((total + ${runs:-0}))
  if [ $rc -eq 0 ] && [ -n "$runs" ]; then
    echo "$t: ${runs} inputs in ${SECONDS_EACH} s, no crash, hang or excess allocation"
  else
    echo "$t: FAILED (exit $rc); see $log and $DIR/{crash,timeout,oom}-*"
    tail -n 30 "$log"
    failed=1
  fi
done
echo "total: $total inputs"
exit $failed
