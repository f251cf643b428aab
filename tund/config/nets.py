"""IP prefixes of a configuration, parsed once per text (pure).

A configuration with 1,000 peers names 1,000 prefixes, and a reload reads each of them in
half a dozen places (the model, the overlap and loop checks, the routes of the old and the
new configuration): ``ipaddress`` takes ~18 us a parse and ~15 us a ``subnet_of``, which
made a reload adding one peer take 160 ms here. :func:`network` remembers what it parsed
(the objects are immutable; errors are not remembered, so they say the same every time);
:func:`within` compares the integers.
"""

from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: distinct prefix texts remembered (a few MB at most); older ones are parsed again
CACHE = 1 << 16


@functools.lru_cache(maxsize=CACHE)
def network(text: str, strict: bool = True) -> Network:
    """``ipaddress.ip_network(text, strict)``, remembered; ValueError as it raises."""
    return ipaddress.ip_network(text, strict=strict)


def within(inner: Network, outer: Network) -> bool:
    """``inner.subnet_of(outer)`` for networks of the same version, else False."""
    return (inner.version == outer.version and outer.prefixlen <= inner.prefixlen
            and int(inner.network_address) & int(outer.netmask)
            == int(outer.network_address))
