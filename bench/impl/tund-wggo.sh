#!/usr/bin/env bash
TUND_MODE=wggo exec "$(dirname "$0")/_tund.sh" "$@"
