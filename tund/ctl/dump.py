"""``tundctl dump``: one tab-separated line per tunnel (:data:`DUMP_COLUMNS`), each followed
by one per peer (:data:`PEER_DUMP_COLUMNS`), no header, stable for scripts. Missing values
become sentinels (``(none)``, ``0``, ``off``), never an empty field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tund.ctl.units import is_num, mapping

#: The columns of :func:`render_dump`, in order. Within one status schema version columns
#: are only ever appended at the end (before ``last_error``, which stays last).
DUMP_COLUMNS: tuple[str, ...] = (
    "tunnel", "interface", "state", "transport", "role", "endpoint", "peer", "encryption",
    "latest_handshake", "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "drops", "errors",
    "restarts", "pid", "since", "last_error")


#: The columns of a peer's line in :func:`render_dump` (it follows its tunnel's line; tell
#: the two apart by the number of fields). Only ever appended to within a schema version.
PEER_DUMP_COLUMNS: tuple[str, ...] = (
    "tunnel", "peer", "state", "public_key", "endpoint", "allowed_ips", "latest_handshake",
    "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "drops", "keepalive", "enabled")


def _field(value: Any, empty: str = "(none)") -> str:
    if value is None or value == "":
        return empty
    text = str(value)
    return " ".join(text.split()) if any(c in text for c in "\t\n\r") else text


def _int(value: Any) -> str:
    return str(int(value)) if is_num(value) else "0"


def _drops_sum(drops: Any) -> str:
    return str(sum(int(n) for n in mapping(drops).values() if is_num(n)))


def dump_row(name: str, t: Mapping[str, Any]) -> list[str]:
    """The :data:`DUMP_COLUMNS` fields of one tunnel, sentinels for what is missing:
    ``(none)`` for text, ``0`` for numbers and times (never), ``off`` for no encryption."""
    encryption = t.get("encryption")
    return [
        _field(name), _field(t.get("interface")), _field(t.get("state"), "unknown"),
        _field(t.get("transport")), _field(t.get("role")), _field(t.get("endpoint")),
        _field(t.get("peer")), "off" if encryption == "none" else _field(encryption),
        _int(t.get("latest_handshake")), _int(t.get("rx_bytes")), _int(t.get("tx_bytes")),
        _int(t.get("rx_packets")), _int(t.get("tx_packets")),
        _drops_sum(t.get("drops")), _int(t.get("errors")),
        _int(t.get("restarts")), _int(t.get("pid")), _int(t.get("since")),
        _field(t.get("last_error")),
    ]


def peer_dump_row(tunnel: str, name: str, peer: Mapping[str, Any]) -> list[str]:
    """The :data:`PEER_DUMP_COLUMNS` fields of one peer: ``allowed_ips`` joined by commas,
    ``enabled`` ``yes``/``no``, sentinels as :func:`dump_row`."""
    ips = peer.get("allowed_ips")
    return [
        _field(tunnel), _field(name), _field(peer.get("state"), "unknown"),
        _field(peer.get("public_key")), _field(peer.get("endpoint")),
        _field(",".join(str(x) for x in ips) if isinstance(ips, list) else None),
        _int(peer.get("latest_handshake")), _int(peer.get("rx_bytes")),
        _int(peer.get("tx_bytes")), _int(peer.get("rx_packets")), _int(peer.get("tx_packets")),
        _drops_sum(peer.get("drops")), _int(peer.get("keepalive")),
        "no" if peer.get("enabled") is False else "yes",
    ]


def render_dump(result: Mapping[str, Any], *, tunnel: str | None = None) -> str:
    """One line per tunnel (name order), fields separated by tabs, no header: see
    :data:`DUMP_COLUMNS` and :func:`dump_row`; after each, one line per peer (name order,
    :func:`peer_dump_row`). Raises KeyError for an unknown ``tunnel``."""
    tunnels = {k: mapping(v) for k, v in mapping(result.get("tunnels")).items()}
    if tunnel is not None:
        tunnels = {tunnel: tunnels[tunnel]}
    lines: list[str] = []
    for n in sorted(tunnels):
        lines.append("\t".join(dump_row(n, tunnels[n])))
        peers = mapping(tunnels[n].get("peers"))
        lines += ["\t".join(peer_dump_row(n, pn, mapping(peers[pn]))) for pn in sorted(peers)]
    return "\n".join(lines)
