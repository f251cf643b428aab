#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine, as root:
#   sudo bash tests/run.sh            (extra arguments go to pytest)
# Installs what it needs (tests/setup.sh), then runs every tier: unit, component,
# privileged (throwaway network namespaces) and system (systemd in a container).
# With TUND_REQUIRE_ALL=1 a missing requirement fails instead of skipping (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(bash tests/setup.sh)"
export PATH="$VENV/bin:$PATH"
echo "== lint: ruff, mypy --strict"
"$VENV/bin/ruff" check tund tests
"$VENV/bin/mypy" tund
echo "== tests"
exec "$VENV/bin/pytest" -p no:cacheprovider --durations=15 tests "$@"
