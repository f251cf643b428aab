"""Many links at once: ``IpRunner.batch`` (one ``ip -batch -``) and ``reconcile.apply_many``.

``IpRunner.batch`` runs against a stand-in ``ip`` (a shell script that records its argv and
stdin and fails at a chosen line the way iproute2 does). ``apply_many`` runs against
FakeIp extended with the all-links reads and a ``batch`` that stops at the first failure.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_netdev_fakeip import FakeIp, FakeLink
from tund.config import InterfaceConfig
from tund.errors import IpCommandError
from tund.netdev import reconcile
from tund.netdev.ip import IpBatchError, IpRunner, run_batch

FAKE_IP = r"""#!/bin/sh
printf "%s\n" "$*" > "{dir}/argv"
cat > "{dir}/stdin"
if [ -n "{fail}" ]; then
    echo "RTNETLINK answers: File exists" >&2
    echo "Command failed -:{fail}" >&2
    exit 1
fi
"""


def fake_ip(tmp_path: Path, fail: str = "") -> IpRunner:
    script = tmp_path / "ip"
    script.write_text(FAKE_IP.format(dir=tmp_path, fail=fail))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return IpRunner(binary=str(script), netns="zsns")


CMDS = [["link", "set", "zs0", "mtu", "1400"], ["link", "set", "zs0", "up"],
        ["addr", "add", "10.9.0.1/24", "dev", "zs0"]]


def test_batch_logs_every_command_then_runs_them_in_one_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ip = fake_ip(tmp_path)
    with caplog.at_level(logging.INFO, logger="tund.netdev.ip"):
        ip.batch(CMDS)
    assert [r.getMessage() for r in caplog.records] == [
        "[#] " + " ".join([str(tmp_path / "ip"), "-n", "zsns", *c]) for c in CMDS]
    assert (tmp_path / "argv").read_text().split() == ["-n", "zsns", "-batch", "-"]
    assert (tmp_path / "stdin").read_text() == "".join(" ".join(c) + "\n" for c in CMDS)


def test_batch_names_the_failing_command_and_how_many_ran(tmp_path: Path) -> None:
    ip = fake_ip(tmp_path, fail="2")
    with pytest.raises(IpBatchError) as e:
        ip.batch(CMDS)
    assert e.value.done == 1
    assert e.value.argv == [str(tmp_path / "ip"), "-n", "zsns", *CMDS[1]]
    assert e.value.stderr == "RTNETLINK answers: File exists"


def test_batch_failure_without_a_line_is_a_plain_error(tmp_path: Path) -> None:
    ip = fake_ip(tmp_path, fail="x")
    with pytest.raises(IpCommandError) as e:
        ip.batch(CMDS)
    assert not isinstance(e.value, IpBatchError)


def test_batch_refuses_arguments_it_cannot_carry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot carry the argument 'a b'"):
        fake_ip(tmp_path).batch([["link", "set", "a b", "up"]])
    assert not (tmp_path / "argv").exists()


class BatchFakeIp(FakeIp):
    """FakeIp that also answers the all-links reads and runs batches (stops at a failure)."""

    def __init__(self, *links: FakeLink) -> None:
        super().__init__(*links)
        self.batches: list[list[list[str]]] = []

    def json(self, argv: Sequence[str]) -> Any:
        args = list(argv)
        if "dev" in args:
            return super().json(argv)
        self.reads.append(args)
        if args == ["addr", "show"]:
            return [self._link_json(link) for link in self.links.values()]
        fam = int(args[0][1])
        return [{"dst": dst, "dev": link.name, **({"gateway": via} if via else {})}
                for link in self.links.values() for dst, (via, _) in link.routes.items()
                if (":" in dst) == (fam == 6)]

    def batch(self, argvs: Sequence[Sequence[str]]) -> None:
        self.batches.append([list(a) for a in argvs])
        for i, argv in enumerate(argvs):
            try:
                self.run(argv)
            except IpCommandError as e:
                raise IpBatchError(e.argv, e.returncode, e.stderr, i) from e


def iface(*addresses: str, mtu: int = 1420) -> InterfaceConfig:
    return InterfaceConfig.model_validate({"mode": "tun", "mtu": mtu,
                                          "addresses": tuple(addresses)})


def test_apply_many_reads_three_times_and_runs_one_batch() -> None:
    ip = BatchFakeIp(FakeLink("zs0", mac=None), FakeLink("zs1", mac=None))
    links = [("zs0", iface("10.9.0.1/24")), ("zs1", iface("10.9.1.1/24"))]
    states = reconcile.read_states(ip, ["zs0", "zs1"])
    out = reconcile.apply_many(ip, links, states)
    assert len(ip.reads) == 3 and len(ip.batches) == 1
    assert all(isinstance(v, list) and len(v) == 3 for v in out.values()), out
    assert ip.links["zs1"].up and ip.links["zs1"].mtu == 1420
    assert [a[0] for a in ip.links["zs1"].addresses] == ["10.9.1.1/24"]
    # a second pass finds nothing to do
    again = reconcile.apply_many(ip, links, reconcile.read_states(ip, ["zs0", "zs1"]))
    assert again == {"zs0": [], "zs1": []}


def test_a_failing_link_is_rolled_back_and_the_others_still_come_up() -> None:
    ip = BatchFakeIp(*(FakeLink(f"zs{i}", mac=None) for i in range(3)))
    ip.fail(lambda a: a[:2] == ["addr", "add"] and a[-1] == "zs1")
    links = [(f"zs{i}", iface(f"10.9.{i}.1/24")) for i in range(3)]
    out = reconcile.apply_many(ip, links, reconcile.read_states(ip, [n for n, _ in links]))
    assert isinstance(out["zs1"], IpBatchError)
    assert isinstance(out["zs0"], list) and isinstance(out["zs2"], list)
    # zs1 is as it was found: its mtu and up steps were undone
    assert (ip.links["zs1"].mtu, ip.links["zs1"].up, ip.links["zs1"].addresses) == (
        1500, False, [])
    assert ip.links["zs0"].up and ip.links["zs2"].up
    assert len(ip.batches) == 2  # the links after the failing one went in a second batch


def test_a_link_missing_from_the_kernel_fails_alone() -> None:
    ip = BatchFakeIp(FakeLink("zs0", mac=None))
    links = [("zs0", iface("10.9.0.1/24")), ("zsgone", iface("10.9.1.1/24"))]
    out = reconcile.apply_many(ip, links, reconcile.read_states(ip, ["zs0", "zsgone"]))
    assert isinstance(out["zsgone"], IpCommandError) and "no link named zsgone" in str(
        out["zsgone"])
    assert isinstance(out["zs0"], list) and ip.links["zs0"].up


def test_run_batch_without_batch_support_runs_one_by_one() -> None:
    ip = FakeIp(FakeLink("zs0", mac=None))
    ip.fail(lambda a: a[-1] == "up")
    with pytest.raises(IpBatchError) as e:
        run_batch(ip, [["link", "set", "zs0", "mtu", "1400"], ["link", "set", "zs0", "up"]])
    assert e.value.done == 1 and ip.links["zs0"].mtu == 1400
