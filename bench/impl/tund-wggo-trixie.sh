#!/usr/bin/env bash
TUND_MODE=wggo-trixie exec "$(dirname "$0")/_tund.sh" "$@"
