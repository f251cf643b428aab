"""Full-tunnel policy routing (tund.netdev.policy) and the loop check of issue 19."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tund.config import parse_text
from tund.errors import ConfigError, IpCommandError
from tund.netdev import policy

SERVER = """
[interfaces.wgc]
mode = "tun"
addresses = ["10.8.0.2/24"]
{extra}
[tunnels.vpn]
interface = "wgc"
private_key_file = "/nonexistent"
{fwmark}
[tunnels.vpn.peers.server]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
endpoint = "192.0.2.1:51820"
allowed_ips = [{ips}]
"""


def cfg(ips: str, extra: str = "", fwmark: str = "") -> Any:
    import tund.config.checks as checks
    saved = list(checks._EXTRA_CHECKS)
    checks._EXTRA_CHECKS.clear()  # no key files here
    checks._builtins_registered, was = True, checks._builtins_registered
    try:
        return parse_text(SERVER.format(ips=ips, extra=extra, fwmark=fwmark))
    finally:
        checks._EXTRA_CHECKS[:] = saved
        checks._builtins_registered = was


def test_default_route_in_allowed_ips_is_a_full_tunnel_with_the_auto_mark() -> None:
    c = cfg('"0.0.0.0/0", "::/0"')
    p = policy.of(c, "wgc")
    assert p == policy.Policy("wgc", 51820, (4, 6), ("0.0.0.0/0", "::/0"))
    assert policy.mark(c, "vpn") == 51820
    c2 = cfg('"0.0.0.0/0"', fwmark="fwmark = 4242")
    assert policy.of(c2, "wgc") == policy.Policy("wgc", 4242, (4,), ("0.0.0.0/0",))
    assert policy.mark(c2, "vpn") == 4242


def test_no_default_route_or_table_off_means_no_policy() -> None:
    assert policy.of(cfg('"10.0.0.0/8"'), "wgc") is None
    assert policy.mark(cfg('"10.0.0.0/8"'), "vpn") == 0
    assert policy.of(cfg('"0.0.0.0/0"', 'table = "off"'), "wgc") is None
    numbered = policy.of(cfg('"0.0.0.0/0"', 'table = 7\nroutes = ["10.9.0.0/16"]'), "wgc")
    assert numbered == policy.Policy("wgc", 7, (), ("10.9.0.0/16", "0.0.0.0/0"), rules=False)


def test_main_routes_drops_defaults_for_auto_and_everything_otherwise() -> None:
    c = cfg('"10.0.0.0/8"', 'routes = ["0.0.0.0/0", "10.9.0.0/16"]')
    assert policy.main_routes(c.interfaces["wgc"]).routes == ("10.9.0.0/16",)
    c = cfg('"10.0.0.0/8"', 'routes = ["10.9.0.0/16"]\ntable = 9')
    assert policy.main_routes(c.interfaces["wgc"]).routes == ()


class RuleIp:
    """Answers the reads of tund.netdev.policy.read from canned JSON."""

    def __init__(self, rules4: list[dict[str, Any]], table4: list[dict[str, Any]] | None
                 ) -> None:
        self.rules4, self.table4 = rules4, table4

    def run(self, argv: Sequence[str]) -> str:
        raise AssertionError("a read changes nothing")

    def json(self, argv: Sequence[str]) -> Any:
        a = list(argv)
        if a[:2] == ["-4", "rule"]:
            return self.rules4
        if a[:2] == ["-4", "route"]:
            if self.table4 is None:
                raise IpCommandError(["ip", *a], 2, "Error: ipv4: FIB table does not exist.")
            return self.table4
        return []


P4 = policy.Policy("wgc", 51820, (4,), ("0.0.0.0/0",))


def test_steps_on_a_clean_host_add_route_then_mark_rule_then_suppress_in_front() -> None:
    st = policy.read(RuleIp([{"priority": 0, "table": "local"}], None), P4)
    assert [" ".join(s.argv) for s in policy.add_steps(P4, st)] == [
        "-4 route add 0.0.0.0/0 dev wgc table 51820 proto static",
        "-4 rule add not fwmark 51820 table 51820",
        "-4 rule add table main suppress_prefixlength 0",
    ]


def test_a_suppress_rule_without_the_mark_rule_is_moved_in_front_of_it() -> None:
    left = RuleIp([{"priority": 32765, "table": "main", "suppress_prefixlen": 0}], None)
    st = policy.read(left, P4)
    assert [" ".join(s.argv) for s in policy.add_steps(P4, st)] == [
        "-4 route add 0.0.0.0/0 dev wgc table 51820 proto static",
        "-4 rule del table main suppress_prefixlength 0",
        "-4 rule add not fwmark 51820 table 51820",
        "-4 rule add table main suppress_prefixlength 0",
    ]


def test_what_a_killed_daemon_left_is_adopted_without_duplicates_and_removed() -> None:
    left = RuleIp([{"priority": 32764, "src": "all", "table": "main", "suppress_prefixlen": 0},
                   {"priority": 32765, "not": None, "src": "all", "fwmark": "0xca6c",
                    "table": "51820"}],
                  [{"dst": "default", "dev": "wgc", "protocol": "static"}])
    st = policy.read(left, P4)
    assert policy.add_steps(P4, st) == []
    assert [" ".join(s.argv) for s in policy.remove_steps(P4, st)] == [
        "-4 rule del not fwmark 51820 table 51820",
        "-4 rule del table main suppress_prefixlength 0",
        "-4 route del 0.0.0.0/0 dev wgc table 51820 proto static",
    ]
    # another full tunnel still needs the shared suppress rule
    assert all("suppress" not in s.argv for s in policy.remove_steps(P4, st, (4,)))


def test_a_route_covering_the_peer_is_refused_as_a_loop() -> None:
    with pytest.raises(ConfigError) as e:
        cfg('"0.0.0.0/1", "128.0.0.0/1"')
    [issue] = e.value.issues
    assert issue.path == "tunnels.vpn.peers.server.allowed_ips[1]"
    assert "192.0.2.1" in issue.message and "loop" in issue.message
    with pytest.raises(ConfigError) as e:
        cfg('"10.0.0.0/8"', 'routes = ["192.0.2.0/24"]')
    assert [i.path for i in e.value.issues] == ["interfaces.wgc.routes[0]"]
    cfg('"0.0.0.0/1", "128.0.0.0/1"', "table = 100")  # another table: the user's rules


REMOTE = ('[interfaces.a]\nmode = "tun"\nroutes = ["0.0.0.0/0", "::/0"]\n[tunnels.t]\n'
          'interface = "a"\nremote = "192.0.2.7:5"\nencryption = "none"\n')


def test_a_default_route_on_a_remote_tcp_tunnel_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        parse_text(REMOTE + 'transport = "tcp"\n')
    assert [i.path for i in e.value.issues] == ["interfaces.a.routes[0]",
                                                "interfaces.a.routes[1]"]
    why = e.value.issues[0].message
    assert "connects over tcp" in why and 'use transport = "udp"' in why, why


def test_a_remote_udp_tunnel_routes_everything_with_the_auto_mark() -> None:
    """The road-warrior client in its single-peer form (issue 19): the daemon makes and
    marks its socket."""
    c = parse_text(REMOTE)
    assert policy.of(c, "a") == policy.Policy("a", 51820, (4, 6), ("0.0.0.0/0", "::/0"))
    assert policy.mark(c, "t") == 51820
    c = parse_text(REMOTE + "fwmark = 99\n")
    assert policy.of(c, "a") == policy.Policy("a", 99, (4, 6), ("0.0.0.0/0", "::/0"))
    assert policy.mark(c, "t") == 99
    assert policy.needs_src_valid_mark(policy.Policy("a", 99, (4, 6), ()))
    assert not policy.needs_src_valid_mark(policy.Policy("a", 99, (6,), ()))
    assert not policy.needs_src_valid_mark(policy.Policy("a", 99, (), (), rules=False))


def test_the_kernels_own_tables_are_refused() -> None:
    with pytest.raises(ConfigError) as e:
        parse_text('[interfaces.a]\nmode = "tun"\ntable = 254\n')
    assert any(i.path == "interfaces.a.table" and "main" in i.message for i in e.value.issues)


def test_two_full_tunnels_on_one_table_are_refused() -> None:
    two = "".join(
        f'[interfaces.w{i}]\nmode = "tun"\nroutes = ["0.0.0.0/0"]\n[tunnels.t{i}]\n'
        f'interface = "w{i}"\nlisten = "127.0.0.1:{5000 + i}"\nencryption = "none"\n'
        "fwmark = 0\n" for i in (1, 2))
    with pytest.raises(ConfigError) as e:
        parse_text(two)
    assert [i.path for i in e.value.issues] == ["tunnels.t2"]
    assert "same table and mark 51820" in e.value.issues[0].message
    parse_text(two.replace("fwmark = 0", "fwmark = 7", 1))  # another mark: fine


def test_proc_sysctl_writes_only_a_differing_value_and_logs_it_first(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tund.errors import KernelError
    from tund.netdev.sysctl import SRC_VALID_MARK, ProcSysctl

    knob = tmp_path / "net" / "ipv4" / "conf" / "all" / "src_valid_mark"
    knob.parent.mkdir(parents=True)
    knob.write_text("0\n")
    sc = ProcSysctl(tmp_path)
    with caplog.at_level("INFO", logger="tund.netdev.sysctl"):
        assert sc.ensure(*SRC_VALID_MARK) is True
        assert sc.ensure(*SRC_VALID_MARK) is False  # already 1: nothing written or logged
    assert knob.read_text() == "1\n"
    assert [r.getMessage() for r in caplog.records] == [
        "[#] sysctl -q net.ipv4.conf.all.src_valid_mark=1"]
    with pytest.raises(KernelError, match=r"net\.ipv4\.conf\.nope\.x=1"):
        sc.ensure("net.ipv4.conf.nope.x", "1")
    with pytest.raises(KernelError, match="not a key"):
        sc.ensure("net..x", "1")
