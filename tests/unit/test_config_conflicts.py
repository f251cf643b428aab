"""Two listeners on one port and one address on two interfaces are located config errors
(issue 15.3 and 15.5, the config's half); before, both were accepted."""

from __future__ import annotations

import pytest

from tund.config import parse_text
from tund.errors import ConfigError


def tunnels(*listeners: tuple[str, str]) -> str:
    """Interfaces tun0.. and one plaintext tunnel t0.. per (transport, listen)."""
    text = ""
    for i, (transport, listen) in enumerate(listeners):
        text += (f'[interfaces.tun{i}]\nmode = "tun"\n'
                 f'[tunnels.t{i}]\ninterface = "tun{i}"\ntransport = "{transport}"\n'
                 f'{listen}\nencryption = "none"\n')
    return text


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_text(text, "c.toml")
    return [str(i) for i in info.value.issues]


@pytest.mark.parametrize(("first", "second"), [
    ("0.0.0.0:51820", "0.0.0.0:51820"),
    ("0.0.0.0:51820", "10.0.0.1:51820"),
    ("10.0.0.1:51820", "0.0.0.0:51820"),
    ("[::]:51820", "10.0.0.1:51820"),        # dual-stack: [::] takes IPv4 too
    ("0.0.0.0:51820", "[::]:51820"),
    ("[::]:51820", "[fd00::1]:51820"),
    ("127.0.0.1:51820", "[::ffff:127.0.0.1]:51820"),  # the same address, v4-mapped
])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_overlapping_listeners_are_an_error_naming_both(first: str, second: str,
                                                        transport: str) -> None:
    text = tunnels((transport, f'listen = "{first}"'), (transport, f'listen = "{second}"'))
    assert issues(text) == [
        f'c.toml:13: tunnels.t1.listen: overlaps the {transport} listener of tunnel "t0" '
        f'(listen = "{first}"): two listeners cannot share {transport} port 51820 '
        f'(got "{second}")']


@pytest.mark.parametrize(("a", "b"), [
    (("udp", 'listen = "0.0.0.0:51820"'), ("tcp", 'listen = "0.0.0.0:51820"')),
    (("udp", 'listen = "0.0.0.0:51820"'), ("udp", 'listen = "0.0.0.0:51821"')),
    (("udp", 'listen = "10.0.0.1:51820"'), ("udp", 'listen = "10.0.0.2:51820"')),
    (("udp", 'listen = "0.0.0.0:51820"'), ("udp", 'listen = "[fd00::1]:51820"')),
    (("udp", 'listen = "127.0.0.1:51820"'), ("udp", 'listen = "[::1]:51820"')),
    (("udp", 'listen = "0.0.0.0:51820"'), ("udp", 'remote = "192.0.2.1:51820"')),
])
def test_listeners_that_do_not_overlap_are_fine(a: tuple[str, str], b: tuple[str, str]) -> None:
    cfg = parse_text(tunnels(a, b))
    assert set(cfg.tunnels) == {"t0", "t1"}


def test_a_tcp_listener_on_the_metrics_port_is_an_error() -> None:
    text = ('[daemon]\nmetrics_listen = "127.0.0.1:9586"\n'
            + tunnels(("tcp", 'listen = "0.0.0.0:9586"')))
    assert issues(text) == [
        'c.toml:8: tunnels.t0.listen: overlaps the tcp listener of [daemon] '
        '(metrics_listen = "127.0.0.1:9586"): two listeners cannot share tcp port 9586 '
        '(got "0.0.0.0:9586")']
    assert parse_text(text.replace('"tcp"', '"udp"'))  # UDP: another port space


def test_three_on_one_port_give_two_issues_in_a_drop_in_order() -> None:
    text = tunnels(*[("udp", 'listen = "0.0.0.0:5000"')] * 3)
    found = issues(text)
    assert [f.split(": ")[1] for f in found] == ["tunnels.t1.listen", "tunnels.t2.listen"]
    assert all('tunnel "t0"' in f for f in found)


@pytest.mark.parametrize(("first", "second"), [
    ("10.0.0.1/24", "10.0.0.1/24"),
    ("10.0.0.1/24", "10.0.0.1/16"),       # overlapping prefixes, the same host address
    ("10.0.0.1/32", "10.0.0.1/24"),
    ("fd00::1/64", "fd00::1/128"),
])
def test_one_address_on_two_interfaces_is_an_error(first: str, second: str) -> None:
    text = (f'[interfaces.a]\nmode = "tun"\naddresses = ["192.0.2.9/24", "{first}"]\n'
            f'[interfaces.b]\nmode = "tap"\naddresses = ["{second}"]\n')
    ip = first.split("/")[0]
    assert issues(text) == [
        f'c.toml:6: interfaces.b.addresses[0]: {ip} is already an address of interface "a" '
        f'(addresses[1] = "{first}"); an address belongs to one interface (got "{second}")']


def test_different_addresses_in_one_subnet_are_fine() -> None:
    cfg = parse_text('[interfaces.a]\nmode = "tun"\naddresses = ["10.0.0.1/24"]\n'
                     '[interfaces.b]\nmode = "tun"\naddresses = ["10.0.0.2/24"]\n')
    assert set(cfg.interfaces) == {"a", "b"}
