"""Hooks, fwmark (issue 19) with a real daemon in a namespace.

* a post_up adds an nftables masquerade rule, a pre_down removes it: the rule is there
  while the daemon runs, gone after it stops, and the hooks ran in order;
* a pre_up that hangs is killed at hook_timeout: only its interface fails (the error,
  located, in status), the daemon answers and the other interface is up;
* ``tundctl reload --dry-run`` lists the hooks an added interface would run;
* ``fwmark`` is on the listener socket the worker uses (``ss -e``).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests import netns
from tests.netns import Netns, unique
from tests.sites import Site, new_ifname

pytestmark = pytest.mark.usefixtures("privileged")


def make_ns() -> Netns:
    ns = Netns(unique("tro"))
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    netns._ALL.append(ns)
    ns.run("ip", "link", "set", "lo", "up")
    return ns


def _cmd(*argv: str) -> str:
    return "[" + ", ".join(json.dumps(a) for a in argv) + "]"


def test_nft_hooks_in_order_a_hanging_hook_killed_and_fwmark_on_the_socket(
        tmp_path: Path) -> None:
    ns = make_ns()
    site = Site(ns, tmp_path / "s", "s")
    a, b, c = new_ifname("tro"), new_ifname("tro"), new_ifname("tro")
    order = tmp_path / "order.log"
    note = lambda what: _cmd("sh", "-c", f"echo '{what}' >> {order}")  # noqa: E731
    base = f'''
[interfaces.{a}]
mode = "tun"
addresses = ["10.79.41.1/24"]
pre_up = [{note("pre_up %i")}]
post_up = [{_cmd("nft", "add", "table", "ip", "tro_%i")},
           {_cmd("nft", "add", "chain", "ip", "tro_%i", "post",
                 "{ type nat hook postrouting priority 100; }")},
           {_cmd("nft", "add", "rule", "ip", "tro_%i", "post", "ip", "saddr",
                 "10.79.41.0/24", "oifname", "!=", "%i", "masquerade")},
           {note("post_up %i")}]
pre_down = [{note("pre_down %i")}, {_cmd("nft", "delete", "table", "ip", "tro_%i")}]
post_down = [{note("post_down %i")}]

[tunnels.t]
interface = "{a}"
listen = "127.0.0.1:56411"
encryption = "none"
fwmark = 0x1234

[interfaces.{b}]
mode = "tun"
pre_up = [["sleep", "60"]]
hook_timeout = 1
'''
    site.write(base)
    try:
        t0 = time.monotonic()
        site.start(extra_env={"TUND_LOG_TARGET": "stderr"})
        deadline = time.monotonic() + 20
        st = site.status()  # the daemon answers while its interfaces come up
        while "t" not in st["tunnels"] and time.monotonic() < deadline:
            time.sleep(0.1)
            st = site.status()
        started = time.monotonic() - t0
        err = st["interfaces"][b]["error"] or ""
        assert f"interfaces.{b}.pre_up[0]" in err and "still running after 1s" in err, st
        assert st["interfaces"][a]["error"] is None, st
        assert not st["interfaces"][b]["exists"], st
        assert started < 10, started  # the 60 s hook was killed after 1 s
        rules = ns.run("nft", "list", "table", "ip", f"tro_{a}").stdout
        assert "masquerade" in rules and f'oifname != "{a}"' in rules, rules
        site.wait_state("t", "connecting")
        ss = ns.run("ss", "-uanpe", "-H", "sport", "=", ":56411").stdout
        assert "fwmark:0x1234" in ss, ss

        # a dry run lists the hooks an added interface would run
        site.config.write_text(site.config.read_text() + f'''
[interfaces.{c}]
mode = "tun"
post_up = [{_cmd("true", "%i")}]
''')
        dry = json.loads(site.ctl("reload", "--dry-run", "--json").stdout)
        assert f"[#] hook post_up of {c}: true {c}" in dry["actions"], dry
        assert dry["actions"].index(f"create device {c} (mode tun)") < \
            dry["actions"].index(f"[#] hook post_up of {c}: true {c}")
    finally:
        site.stop()
    log = site.log.read_text()
    gone = ns.run("nft", "list", "table", "ip", f"tro_{a}", check=False)
    assert gone.returncode != 0, gone.stdout  # pre_down removed it
    assert order.read_text().splitlines() == [f"pre_up {a}", f"post_up {a}", f"pre_down {a}",
                                              f"post_down {a}"], log
    assert f"[#] hook post_up of {a}: nft add table ip tro_{a}" in log
