"""A link's DNS servers and search domains (``[interfaces.X] dns``), set and reverted.

Contract: :func:`set_dns` gives link ``iface`` the entries (IP addresses: name servers;
others: search domains) through ``resolvectl dns`` / ``resolvectl domain`` when
systemd-resolved runs, else ``resolvconf -a IFACE -m 0 -x`` (a resolv.conf fragment on
stdin); :func:`revert` undoes it (``resolvectl revert IFACE`` / ``resolvconf -d IFACE
-f``). Every command is logged ``[#] ...`` before it runs; one that fails raises
:class:`DnsError` naming the command, its status and its stderr. Blocking: call it off
the event loop.
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
import subprocess
from collections.abc import Sequence

from tund import dnsbackend
from tund.errors import KernelError

log = logging.getLogger("tund.netdev.dns")

TIMEOUT = 10.0


class DnsError(KernelError):
    """A resolvectl / resolvconf command failed, or neither exists."""


def split(entries: Sequence[str]) -> tuple[list[str], list[str]]:
    """(name servers, domains) of ``dns`` entries, each in the order given."""
    servers, domains = [], []
    for e in entries:
        try:
            servers.append(str(ipaddress.ip_address(e)))
        except ValueError:
            domains.append(e)
    return servers, domains


def commands(iface: str, entries: Sequence[str],
             tool: dnsbackend.Backend) -> list[tuple[list[str], str | None]]:
    """The (argv, stdin) that set ``entries`` on ``iface`` with ``tool`` (pure)."""
    servers, domains = split(entries)
    if tool == "resolvectl":
        out: list[tuple[list[str], str | None]] = []
        if servers:
            out.append((["resolvectl", "dns", iface, *servers], None))
        if domains:
            out.append((["resolvectl", "domain", iface, *domains], None))
        return out
    text = "".join(f"nameserver {s}\n" for s in servers)
    plain = [d for d in domains if not d.startswith("~")]
    if plain:
        text += "search " + " ".join(plain) + "\n"
    return [(["resolvconf", "-a", iface, "-m", "0", "-x"], text)]


def revert_command(iface: str, tool: dnsbackend.Backend) -> list[str]:
    if tool == "resolvectl":
        return ["resolvectl", "revert", iface]
    return ["resolvconf", "-d", iface, "-f"]


def _run(argv: list[str], stdin: str | None, iface: str) -> None:
    log.info("[#] %s", shlex.join(argv), extra={"TUND_INTERFACE": iface})
    try:
        p = subprocess.run(argv, input=stdin if stdin is not None else "", text=True,
                           capture_output=True, timeout=TIMEOUT)
    except OSError as e:
        raise DnsError(f"interfaces.{iface}.dns: cannot run {argv[0]}: "
                       f"{e.strerror or e}") from e
    except subprocess.TimeoutExpired as e:
        raise DnsError(f"interfaces.{iface}.dns: {shlex.join(argv)}: no answer within "
                       f"{TIMEOUT:g}s") from e
    if p.returncode != 0:
        raise DnsError(f"interfaces.{iface}.dns: {shlex.join(argv)} failed (exit status "
                       f"{p.returncode}): {p.stderr.strip()}")


def _tool(iface: str) -> dnsbackend.Backend:
    tool = dnsbackend.backend()
    if tool is None:
        raise DnsError(f"interfaces.{iface}.dns: {dnsbackend.missing()}")
    return tool


def set_dns(iface: str, entries: Sequence[str]) -> None:
    """Give ``iface`` the ``entries`` (nothing to do for none); DnsError."""
    if not entries:
        return
    tool = _tool(iface)
    for argv, stdin in commands(iface, entries, tool):
        _run(argv, stdin, iface)


def revert(iface: str) -> None:
    """Drop what :func:`set_dns` gave ``iface``; DnsError."""
    _run(revert_command(iface, _tool(iface)), None, iface)
