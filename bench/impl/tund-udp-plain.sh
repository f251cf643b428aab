#!/usr/bin/env bash
TUND_MODE=udp-plain exec "$(dirname "$0")/_tund.sh" "$@"
