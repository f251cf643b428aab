#!/usr/bin/env bash
# Prints the Debian mirror (the first non-security URI, deb822 or one-line format) that
# this machine's apt sources name, read at run time: no host name is written into the
# repository. Used by tests/system/make_rootfs.sh and tests/fetch_deb.sh.
set -euo pipefail
f=""
uri=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
  [ -n "$uri" ] && break
done
if [ -z "$uri" ]; then
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) { print $i; exit } ; break } }')
fi
[ -n "$uri" ] || { echo "apt_mirror.sh: no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }
echo "$uri"
