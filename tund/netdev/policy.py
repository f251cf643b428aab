"""Full-tunnel routing the wg-quick way: a default route through an interface without a
loop (``[interfaces.X] table = "auto"`` with 0.0.0.0/0 or ::/0 in its routes or its peers'
allowed_ips).

Contract:

* :func:`wanted` (pure) says whether an interface needs it: a :class:`Policy` with the
  table ``T`` (= the mark: the tunnel's ``fwmark``, else :data:`AUTO_MARK`) and the
  families whose default route goes through it; None otherwise (then the default route is
  no business of this module).
* Per family the policy is three kernel objects: ``ip -F route add DEFAULT dev IFACE
  table T proto static``, ``ip -F rule add not fwmark T table T`` (unmarked traffic, the
  host's, takes the tunnel's table) and ``ip -F rule add table main suppress_prefixlength
  0`` (the main table still wins for everything but its default route, so the LAN and the
  underlay path to the peer keep working). The tunnel's underlay socket carries the mark
  T (set by the daemon), so its encrypted packets skip table T: no loop. The main table's
  default route is never touched.
* :func:`read` (I/O) finds which of those exist; :func:`add_steps` returns the
  :class:`~tund.netdev.reconcile.Step` list adding only the missing ones (a restarted
  daemon adopts what a killed one left, without duplicates), :func:`remove_steps` the
  ones deleting what exists. The shared ``suppress_prefixlength`` rule is deleted only
  when ``keep_suppress`` is False (no other interface's policy needs it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tund.config import Config, InterfaceConfig, TunnelConfig, loops
from tund.config.nets import network
from tund.errors import IpCommandError
from tund.netdev.ip import Ip
from tund.netdev.reconcile import Step

#: the mark and table of a full tunnel whose tunnel sets no fwmark (as wg-quick picks)
AUTO_MARK = loops.AUTO_MARK
DEFAULTS = {4: "0.0.0.0/0", 6: "::/0"}


@dataclass(frozen=True)
class Policy:
    """An interface's routes outside the main table: ``routes`` in table ``table``, and
    with ``rules`` (a full tunnel, table = mark) the two rules of each family of
    ``families``."""

    iface: str
    table: int
    families: tuple[int, ...]
    routes: tuple[str, ...] = ()
    rules: bool = True


def default_families(prefixes: Iterable[str]) -> tuple[int, ...]:
    """The families (4, 6) whose default route is among ``prefixes``."""
    found = {network(p, strict=False) for p in prefixes}
    return tuple(f for f in (4, 6) if network(DEFAULTS[f]) in found)


def wanted(iface: str, table: str | int, prefixes: Sequence[str],
           fwmark: int) -> Policy | None:
    """The policy of ``iface`` whose routes and peers' allowed_ips are ``prefixes``: table
    auto with a default route -> that route in table = mark, with the rules; table N ->
    every prefix in table N, no rules; else None."""
    if isinstance(table, int):
        return Policy(iface, table, (), tuple(prefixes), rules=False) if prefixes else None
    fams = default_families(prefixes)
    if table != "auto" or not fams:
        return None
    return Policy(iface, fwmark or AUTO_MARK, fams, tuple(DEFAULTS[f] for f in fams))


def prefixes(iface: InterfaceConfig, tunnel: TunnelConfig | None) -> list[str]:
    """An interface's ``routes`` and its tunnel's enabled peers' ``allowed_ips``, once each."""
    out = dict.fromkeys(iface.routes)  # ordered, and a set (1,000 peers: not O(n^2))
    for p in (tunnel.enabled_peers.values() if tunnel is not None else ()):
        out.update(dict.fromkeys(p.allowed_ips))
    return list(out)


def of(cfg: Config, name: str) -> Policy | None:
    """The policy of interface ``name`` in ``cfg`` (None: none, or no such interface)."""
    iface = cfg.interfaces.get(name)
    if iface is None:
        return None
    found = cfg.tunnel_for(name)
    t = found[1] if found else None
    return wanted(name, iface.table, prefixes(iface, t), t.fwmark if t else 0)


def mark(cfg: Config, tunnel: str) -> int:
    """The SO_MARK of tunnel's socket: its fwmark, else the auto mark of a full tunnel."""
    t = cfg.tunnels[tunnel]
    p = of(cfg, t.interface)
    return t.fwmark or (p.table if p is not None and p.rules else 0)


def needs_src_valid_mark(p: Policy) -> bool:
    """Whether ``p`` has IPv4 rules: then ``net.ipv4.conf.all.src_valid_mark = 1`` goes
    first (:mod:`tund.netdev.sysctl`), as wg-quick sets it, so strict rp_filter does not
    drop the replies that come in through the tunnel; it is never reverted."""
    return p.rules and 4 in p.families


def main_routes(iface: InterfaceConfig) -> InterfaceConfig:
    """``iface`` as :mod:`tund.netdev.reconcile` must see it: only the routes of the main
    table (table off or N: none; auto: all but the default routes)."""
    if iface.table == "auto":
        keep = tuple(r for r in iface.routes if ipaddress.ip_network(r).prefixlen != 0)
    else:
        keep = ()
    return iface if keep == iface.routes else iface.model_copy(update={"routes": keep})


@dataclass(frozen=True)
class State:
    """Which objects of a policy exist, per family."""

    routes: frozenset[str] = frozenset()  # on the interface, in the table, proto static
    rule: frozenset[int] = frozenset()
    suppress: frozenset[int] = frozenset()


def _rules(ip: Ip, fam: int) -> list[dict[str, Any]]:
    out = ip.json([f"-{fam}", "rule", "show"])
    return out if isinstance(out, list) else []


def _routes(ip: Ip, p: Policy, fam: int) -> set[str]:
    try:
        routes = ip.json([f"-{fam}", "route", "show", "table", str(p.table), "proto",
                          "static"])
    except IpCommandError:  # "FIB table does not exist": no route in it
        return set()
    return {DEFAULTS[fam] if r.get("dst") == "default"
            else str(ipaddress.ip_network(r["dst"], strict=False))
            for r in routes if r.get("dev") == p.iface and "dst" in r}


def _is_mark_rule(r: dict[str, Any], t: int) -> bool:
    mark = r.get("fwmark")
    return ("not" in r and r.get("table") == str(t) and mark is not None
            and int(str(mark), 0) == t and "fwmask" not in r)


def _is_suppress(r: dict[str, Any]) -> bool:
    return r.get("table") == "main" and r.get("suppress_prefixlen") == 0


def read(ip: Ip, p: Policy) -> State:
    """What of ``p`` exists now (``ip -json rule`` / ``route`` reads)."""
    routes: set[str] = set()
    rule, suppress = set(), set()
    for fam in (4, 6):
        routes |= _routes(ip, p, fam)
    for fam in p.families if p.rules else ():
        rules = _rules(ip, fam)
        if any(_is_mark_rule(r, p.table) for r in rules):
            rule.add(fam)
        if any(_is_suppress(r) for r in rules):
            suppress.add(fam)
    return State(frozenset(routes), frozenset(rule), frozenset(suppress))


def _route(verb: str, p: Policy, dst: str) -> tuple[str, ...]:
    fam = ipaddress.ip_network(dst).version
    return (f"-{fam}", "route", verb, dst, "dev", p.iface, "table", str(p.table),
            "proto", "static")


def _rule(verb: str, p: Policy, fam: int) -> tuple[str, ...]:
    return (f"-{fam}", "rule", verb, "not", "fwmark", str(p.table), "table", str(p.table))


def _suppress(verb: str, fam: int) -> tuple[str, ...]:
    return (f"-{fam}", "rule", verb, "table", "main", "suppress_prefixlength", "0")


def add_steps(p: Policy, st: State) -> list[Step]:
    """The missing objects of ``p``: routes first (so a rule never points at an empty
    table), then the mark rule, then the suppress rule (evaluated before it); the
    table's routes on the interface that ``p`` does not list are deleted. ``ip route
    add`` never replaces a route someone else made."""
    steps = [Step(_route("add", p, r), _route("del", p, r), f"add route {r} table {p.table}")
             for r in p.routes if r not in st.routes]
    steps += [Step(_route("del", p, r), _route("add", p, r), f"del route {r} table {p.table}")
              for r in sorted(st.routes) if r not in p.routes]
    for fam in p.families if p.rules else ():
        # a rule added without a priority goes before the others: the mark rule first,
        # then the suppress rule, which so comes before it (as wg-quick does). A suppress
        # rule found without the mark rule is re-added after it, to stay in front.
        if fam not in st.rule:
            if fam in st.suppress:
                steps.append(Step(_suppress("del", fam), _suppress("add", fam),
                                  f"del rule -{fam} table main suppress_prefixlength 0 "
                                  "(to add it back in front)"))
            steps.append(Step(_rule("add", p, fam), _rule("del", p, fam),
                              f"add rule -{fam} not fwmark {p.table} table {p.table}"))
            steps.append(Step(_suppress("add", fam), _suppress("del", fam),
                              f"add rule -{fam} table main suppress_prefixlength 0"))
        elif fam not in st.suppress:
            steps.append(Step(_suppress("add", fam), _suppress("del", fam),
                              f"add rule -{fam} table main suppress_prefixlength 0"))
    return steps


def remove_steps(p: Policy, st: State, keep_suppress: Sequence[int] = ()) -> list[Step]:
    """Delete what exists of ``p``, the reverse of :func:`add_steps`; the suppress rule of
    the families in ``keep_suppress`` stays (another interface's policy uses it)."""
    steps: list[Step] = []
    for fam in p.families if p.rules else ():
        if fam in st.rule:
            steps.append(Step(_rule("del", p, fam), _rule("add", p, fam),
                              f"del rule -{fam} not fwmark {p.table} table {p.table}"))
        if fam in st.suppress and fam not in keep_suppress:
            steps.append(Step(_suppress("del", fam), _suppress("add", fam),
                              f"del rule -{fam} table main suppress_prefixlength 0"))
    steps += [Step(_route("del", p, r), _route("add", p, r), f"del route {r} table {p.table}")
              for r in sorted(st.routes)]
    return steps
