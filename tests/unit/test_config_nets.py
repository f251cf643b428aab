"""tund.config.nets (prefixes parsed once) and the parse cache of tund.config.parse."""

from __future__ import annotations

import ipaddress
import random

import pytest

from tund.config import nets
from tund.config.parse import parse_source


def test_within_agrees_with_subnet_of() -> None:
    rnd = random.Random(7)
    samples = []
    for _ in range(400):
        if rnd.random() < 0.5:
            n = ipaddress.ip_network((rnd.getrandbits(32), rnd.randint(0, 32)), strict=False)
        else:
            n = ipaddress.ip_network((rnd.getrandbits(128), rnd.randint(0, 128)), strict=False)
        samples.append(n)
    # nested ones too, or nearly every pair would be disjoint
    samples += [s.supernet(prefixlen_diff=min(3, s.prefixlen)) for s in samples[:100]]
    checked = inside = 0
    for a in samples:
        for b in [*rnd.sample(samples, 40), a]:
            want = a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]
            assert nets.within(a, b) == want, (a, b)
            checked += 1
            inside += want
    assert inside > 100 and checked - inside > 100  # both answers were exercised


def test_network_is_remembered_and_errors_are_not() -> None:
    nets.network.cache_clear()
    a = nets.network("10.1.0.0/16")
    assert a is nets.network("10.1.0.0/16") and a == ipaddress.ip_network("10.1.0.0/16")
    assert nets.network("10.1.2.3/16", strict=False) == a
    for _ in range(2):
        with pytest.raises(ValueError, match="host bits set"):
            nets.network("10.1.2.3/16")


TEXT = '[tunnels.t]\ninterface = "x"\n[tunnels.t.peers.p]\nallowed_ips = ["10.0.0.2/32"]\n'


def test_a_text_parsed_again_is_a_fresh_copy_of_the_first_parse() -> None:
    first = parse_source("a.toml", TEXT, [])
    assert first is not None
    first.data["tunnels"]["t"]["peers"]["p"]["allowed_ips"].append("changed")  # as merge may
    first.data["tunnels"]["t"]["interface"] = "changed"
    again = parse_source("b.toml", TEXT, [])
    assert again is not None and again.name == "b.toml"
    assert again.data == {"tunnels": {"t": {"interface": "x", "peers": {
        "p": {"allowed_ips": ["10.0.0.2/32"]}}}}}
    assert again.lines == first.lines and again.lines[("tunnels", "t", "peers", "p")] == 3
    changed = parse_source("a.toml", TEXT.replace('"x"', '"y"'), [])
    assert changed is not None and changed.data["tunnels"]["t"]["interface"] == "y"
