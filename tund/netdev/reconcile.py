"""Link configuration as a diff: what ``ip -json`` reports -> the ``ip`` commands that close
the gap to an :class:`~tund.config.InterfaceConfig`.

Contract:

* :func:`read_state` (I/O) reads one link: admin state, mtu, mac, master, txqueuelen, its
  global/site-scope addresses (link-local and host scope are never read, so never touched)
  and the routes *we* manage: those on this device with ``proto static``.
* :func:`plan_steps` (pure) returns the ordered :class:`Step` list: mtu, mac, txqueuelen,
  master (tap only), link up, addresses, routes. A state that already matches gives ``[]``.
  Each step carries the ``ip`` argv that reverts it (``undo``), computed from the state read.
* :func:`apply` reads, plans and runs the steps. If one fails, the steps already applied are
  undone in reverse order (best effort, each logged) and the IpCommandError is re-raised,
  so the link is left as it was found. A second apply runs no command.
* :func:`read_states` and :func:`apply_many` do the same for many links at once (daemon
  start): three reads in all, and the steps of every link through one ``ip -batch``. A
  failing step fails its own link only (rolled back as in :func:`apply`); the links
  after it are still configured.

The routes wanted are the interface's ``routes``; the daemon passes the interface as
:func:`tund.config.effective_interface` makes it, so those include the routes of its peers'
``allowed_ips`` (issue 17.3).

Known limits: ``ip route replace`` takes over a same-prefix route of the main table with the
same metric (e.g. the kernel's connected route of an address); rolling back deletes it. The
daemon refuses that for a route of another link it does not manage before any step runs
(:func:`tund.netdev.conflicts.check_routes`); on the interface itself it stays.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tund.config import InterfaceConfig
from tund.errors import IpCommandError
from tund.netdev.ip import Ip, IpBatchError, interface_field, run_batch

log = logging.getLogger("tund.netdev.reconcile")

_SCOPES = ("global", "site")


@dataclass(frozen=True)
class Route:
    """A ``proto static`` route on the device; ``via``/``metric`` as ``ip`` reported them."""

    dst: str
    via: str | None = None
    metric: int | None = None


@dataclass(frozen=True)
class LinkState:
    """One link as ``ip -json`` reports it. Addresses are ``ADDR/PREFIXLEN`` normalized like
    the config's; ``secondary`` names the IPv4 ones the kernel marks secondary."""

    name: str
    up: bool = False
    mtu: int = 1500
    mac: str | None = None
    master: str | None = None
    txqueuelen: int = 500
    addresses: tuple[str, ...] = ()
    secondary: frozenset[str] = frozenset()
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class Step:
    """One ``ip`` command (``argv`` is what follows ``ip``) and the one that reverts it."""

    argv: tuple[str, ...]
    undo: tuple[str, ...] | None
    describe: str


# --------------------------------------------------------------------------- reading


def _route_dst(dst: str, family: int) -> str:
    if dst == "default":
        return "0.0.0.0/0" if family == 4 else "::/0"
    return str(ipaddress.ip_network(dst, strict=False))


def parse_state(name: str, link: dict[str, Any], routes4: Iterable[dict[str, Any]],
                routes6: Iterable[dict[str, Any]]) -> LinkState:
    """A LinkState from ``ip -json addr show dev NAME`` (one entry) and the route lists."""
    addresses: list[str] = []
    secondary: set[str] = set()
    for a in link.get("addr_info", []):
        if a.get("family") not in ("inet", "inet6") or a.get("scope") not in _SCOPES:
            continue
        cidr = str(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}"))
        addresses.append(cidr)
        if a.get("secondary"):
            secondary.add(cidr)
    routes = [Route(_route_dst(r["dst"], fam), r.get("gateway"), r.get("metric"))
              for fam, rs in ((4, routes4), (6, routes6)) for r in rs]
    return LinkState(
        name=name,
        up="UP" in link.get("flags", []),
        mtu=int(link["mtu"]),
        mac=link.get("address") if link.get("link_type") == "ether" else None,
        master=link.get("master"),
        txqueuelen=int(link.get("txqlen", 0)),
        addresses=tuple(addresses),
        secondary=frozenset(secondary),
        routes=tuple(routes),
    )


def read_state(ip: Ip, name: str) -> LinkState:
    """Read link ``name``; IpCommandError if it does not exist."""
    links = ip.json(["addr", "show", "dev", name])
    if not links:
        raise IpCommandError(["ip", "-json", "addr", "show", "dev", name], 1,
                             f"no link named {name}")
    r4 = ip.json(["-4", "route", "show", "dev", name, "proto", "static"])
    r6 = ip.json(["-6", "route", "show", "dev", name, "proto", "static"])
    return parse_state(name, links[0], r4, r6)


def read_states(ip: Ip, names: Iterable[str]) -> dict[str, LinkState]:
    """Read links ``names`` with three ``ip -json`` reads in all; absent links are left out."""
    wanted = set(names)
    links = {link.get("ifname"): link for link in ip.json(["addr", "show"])}
    routes: dict[int, dict[str, list[dict[str, Any]]]] = {4: {}, 6: {}}
    for fam in (4, 6):
        for r in ip.json([f"-{fam}", "route", "show", "proto", "static"]):
            if r.get("dev") in wanted and "dst" in r:
                routes[fam].setdefault(r["dev"], []).append(r)
    return {name: parse_state(name, links[name], routes[4].get(name, []),
                              routes[6].get(name, []))
            for name in wanted if name in links}


# --------------------------------------------------------------------------- planning


def _link_set(name: str, *args: str) -> tuple[str, ...]:
    return ("link", "set", name, *args)


def _addr(verb: str, name: str, cidr: str) -> tuple[str, ...]:
    # IPv6: nodad makes the address usable at once, with no tentative phase
    nodad = ("nodad",) if verb == "add" and ipaddress.ip_interface(cidr).version == 6 else ()
    return ("addr", verb, cidr, "dev", name, *nodad)


def _route(verb: str, name: str, r: Route) -> tuple[str, ...]:
    via = ("via", r.via) if r.via else ()
    metric = ("metric", str(r.metric)) if r.metric is not None else ()
    return ("route", verb, r.dst, *via, "dev", name, "proto", "static", *metric)


def _link_steps(name: str, iface: InterfaceConfig, st: LinkState) -> list[Step]:
    steps: list[Step] = []
    if iface.mtu is not None and iface.mtu != st.mtu:
        steps.append(Step(_link_set(name, "mtu", str(iface.mtu)),
                          _link_set(name, "mtu", str(st.mtu)),
                          f"mtu {st.mtu} -> {iface.mtu}"))
    if iface.mac is not None and iface.mac != st.mac:
        steps.append(Step(_link_set(name, "address", iface.mac),
                          _link_set(name, "address", st.mac) if st.mac else None,
                          f"mac {st.mac} -> {iface.mac}"))
    if iface.txqueuelen is not None and iface.txqueuelen != st.txqueuelen:
        steps.append(Step(_link_set(name, "txqueuelen", str(iface.txqueuelen)),
                          _link_set(name, "txqueuelen", str(st.txqueuelen)),
                          f"txqueuelen {st.txqueuelen} -> {iface.txqueuelen}"))
    if iface.mode == "tap" and iface.bridge != st.master:
        back = _link_set(name, "master", st.master) if st.master else _link_set(name, "nomaster")
        fwd = _link_set(name, "master", iface.bridge) if iface.bridge else _link_set(name,
                                                                                    "nomaster")
        steps.append(Step(fwd, back, f"master {st.master} -> {iface.bridge}"))
    if not st.up:
        steps.append(Step(_link_set(name, "up"), _link_set(name, "down"), "link up"))
    return steps


def _same_v4_net(a: str, b: str) -> bool:
    ia, ib = ipaddress.ip_interface(a), ipaddress.ip_interface(b)
    return ia.version == ib.version == 4 and ia.network == ib.network


def _address_steps(name: str, want: Sequence[str], st: LinkState) -> list[Step]:
    """Deletes first (so a changed prefix length never collides), then adds.

    Deleting a primary IPv4 address makes the kernel drop (or promote) its secondaries, so a
    kept secondary in the same subnet is deleted first and added back afterwards: every
    step then does exactly what its undo assumes.
    """
    extra = [a for a in st.addresses if a not in want]
    primaries_gone = [a for a in extra if a not in st.secondary]
    readd = [a for a in st.addresses if a in want and a in st.secondary
             and any(_same_v4_net(a, p) for p in primaries_gone)]
    doomed = sorted(readd + extra, key=lambda a: a not in st.secondary)  # secondaries first
    adds = [a for a in want if a not in st.addresses or a in readd]
    return ([Step(_addr("del", name, a), _addr("add", name, a), f"del address {a}")
             for a in doomed]
            + [Step(_addr("add", name, a), _addr("del", name, a), f"add address {a}")
               for a in adds])


def _route_steps(name: str, want: Sequence[str], st: LinkState) -> list[Step]:
    have = {r.dst for r in st.routes}
    steps = [Step(_route("replace", name, Route(dst)), _route("del", name, Route(dst)),
                  f"add route {dst}") for dst in want if dst not in have]
    steps += [Step(_route("del", name, r), _route("replace", name, r), f"del route {r.dst}")
              for r in st.routes if r.dst not in want]
    return steps


def plan_steps(name: str, iface: InterfaceConfig, state: LinkState) -> list[Step]:
    """The ordered steps that turn ``state`` into ``iface`` (pure; ``[]`` when it matches)."""
    return (_link_steps(name, iface, state)
            + _address_steps(name, iface.addresses, state)
            + _route_steps(name, iface.routes, state))


# --------------------------------------------------------------------------- applying


def rollback(ip: Ip, applied: Sequence[Step]) -> list[Step]:
    """Undo ``applied`` in reverse order, best effort; return the steps that could not be
    undone (no undo known, or the undo command failed; each is logged)."""
    failed: list[Step] = []
    for step in reversed(applied):
        if step.undo is None:
            log.error("cannot undo %r: the previous value is unknown", step.describe,
                      extra=interface_field(step.argv))
            failed.append(step)
            continue
        try:
            ip.run(step.undo)
        except IpCommandError as e:
            log.error("undo of %r failed: %s", step.describe, e,
                      extra=interface_field(step.argv))
            failed.append(step)
    return failed


def apply(ip: Ip, name: str, iface: InterfaceConfig) -> list[Step]:
    """Bring link ``name`` to ``iface``; return the steps run (``[]`` if nothing differed).

    On a failing step, undo the ones before it (reverse order) and re-raise its
    IpCommandError.
    """
    steps = plan_steps(name, iface, read_state(ip, name))
    done: list[Step] = []
    for step in steps:
        try:
            ip.run(step.argv)
        except IpCommandError as e:
            log.warning("%s: %r failed (%s); undoing %d applied step(s)", name, step.describe,
                        e.stderr, len(done), extra={"TUND_INTERFACE": name})
            rollback(ip, done)
            raise
        done.append(step)
    return done


# Size: one batch loop: a failure's position decides what is undone and where the next batch starts.
def apply_many(ip: Ip, links: Sequence[tuple[str, InterfaceConfig]],
               states: dict[str, LinkState]) -> dict[str, list[Step] | IpCommandError]:
    """Bring each link to its config, all steps through as few ``ip -batch`` runs as can be.

    ``states`` is what :func:`read_states` found. Returns, per link, the steps run or the
    error that failed it: a link missing from ``states``, or a failing step (its link's
    earlier steps are undone in reverse order, as :func:`apply` does; the links after it
    go on in a new batch). Should ``ip`` fail without naming the command, the remaining
    links are applied one at a time with :func:`apply` (which reads each afresh).
    """
    out: dict[str, list[Step] | IpCommandError] = {}
    plans: list[tuple[str, InterfaceConfig, list[Step]]] = []
    for name, iface in links:
        if name not in states:
            out[name] = IpCommandError(["ip", "-json", "addr", "show", "dev", name], 1,
                                       f"no link named {name}")
            continue
        plans.append((name, iface, plan_steps(name, iface, states[name])))
    while plans:
        argvs = [step.argv for _, _, steps in plans for step in steps]
        try:
            run_batch(ip, argvs)
        except IpBatchError as e:
            first = e.done
            for i, (name, _, steps) in enumerate(plans):
                if first < len(steps):  # the failing link
                    log.warning("%s: %r failed (%s); undoing %d applied step(s)", name,
                                steps[first].describe, e.stderr, first,
                                extra={"TUND_INTERFACE": name})
                    rollback(ip, steps[:first])
                    out[name] = e
                    plans = plans[i + 1:]
                    break
                out[name] = steps
                first -= len(steps)
            else:  # ip named a command past the end: nothing is known to be left
                plans = []
            continue
        except IpCommandError as e:
            log.warning("ip -batch failed without naming a command (%s); configuring the "
                        "%d link(s) one by one", e, len(plans))
            for name, iface, _ in plans:
                try:
                    out[name] = apply(ip, name, iface)
                except IpCommandError as err:
                    out[name] = err
            break
        for name, _, steps in plans:
            out[name] = steps
        break
    return out
