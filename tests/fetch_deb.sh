#!/usr/bin/env bash
# Unpacks one Debian package of another suite (not installed: no dependencies, no
# scripts) into DEST, from this machine's mirror (tests/apt_mirror.sh), with apt's own
# download and a private package list. Idempotent: a DEST holding CHECK is left alone.
#   fetch_deb.sh SUITE PACKAGE DEST CHECK      e.g. trixie wireguard-go DIR usr/bin/wireguard-go
set -euo pipefail
SUITE=$1 PACKAGE=$2 DEST=$3 CHECK=$4
[ -e "$DEST/$CHECK" ] && exit 0
mirror=$(bash "$(dirname "$0")/apt_mirror.sh")
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/lists/partial" "$T/cache/archives/partial"
echo "deb [trusted=yes] $mirror $SUITE main" > "$T/sources.list"
A=(-o Dir::Etc::sourcelist="$T/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::lists="$T/lists"
   -o Dir::Cache="$T/cache" -o Acquire::Languages=none)
apt-get "${A[@]}" update -qq >&2
(cd "$T" && apt-get "${A[@]}" download "$PACKAGE" >&2)
rm -rf "$DEST.tmp"
dpkg-deb -x "$T/${PACKAGE}"_*.deb "$DEST.tmp"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
[ -e "$DEST/$CHECK" ] || { echo "fetch_deb.sh: $PACKAGE ($SUITE) has no $CHECK" >&2; exit 1; }
