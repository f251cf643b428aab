"""The versioned shape of the ``status`` result (``tundctl status --json``), for scripts.

Contract: the result carries ``"schema": SCHEMA_VERSION`` at its top level. Within one
schema version fields are only ever *added*; a field is never removed, renamed or given
another meaning or type without raising :data:`SCHEMA_VERSION`. Scripts should check
``schema`` and ignore fields they do not know.

The tables below name every field the daemon sends and say what it means; README.md
("Status as JSON") documents the same fields for people, and a test keeps the two and
the daemon's real output in step. Imports nothing from tund.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

TOP_FIELDS: dict[str, str] = {
    "schema": "int: the version of this layout (SCHEMA_VERSION)",
    "daemon": "object: the daemon process (DAEMON_FIELDS)",
    "interfaces": "object: interface name -> INTERFACE_FIELDS (empty when one tunnel was asked)",
    "tunnels": "object: tunnel name -> TUNNEL_FIELDS",
}

DAEMON_FIELDS: dict[str, str] = {
    "version": "str: tund's version",
    "pid": "int: the daemon's process id",
    "config": "str: path of the main configuration file",
    "started": "float: unix time the daemon started",
    "reloads": "int: reloads attempted since start (successful or not)",
    "last_reload": "object or null: {time: float unix time, ok: bool, message: str}",
}

INTERFACE_FIELDS: dict[str, str] = {
    "mode": 'str: "tun" or "tap"',
    "persist": "bool: the device outlives the daemon",
    "exists": "bool: the kernel has a device of this name now",
    "ifindex": "int or null: kernel interface index (null: not open)",
    "mtu": "int or null: the link MTU the kernel reports",
    "addresses": "list of str: configured ADDRESS/PREFIXLEN",
    "owner": "str, int or null: configured owner",
    "group": "str, int or null: configured group",
    "error": "str or null: why the device could not be set up",
}

TUNNEL_FIELDS: dict[str, str] = {
    # from the configuration
    "interface": "str: the interface this tunnel carries",
    "transport": 'str: "udp" or "tcp"',
    "role": 'str: "listen" (waits for the peer) or "remote" (connects to it)',
    "endpoint": 'str: the listen address or the remote "HOST:PORT"',
    "encryption": 'str: "wireguard" or "none"',
    "keepalive": "int: seconds between keepalives (0 = off; a reload changing only this "
                 "tells the running worker)",
    # supervision
    "state": "str: starting, connecting, handshaking, unverified, failing, up, backoff, "
             "failed or stopped (up: packets pass, see tund.states.link_state)",
    "since": "float: unix time of the last state change",
    "pid": "int or null: the worker's process id (null: no worker)",
    "restarts": "int: worker restarts after crashes",
    "last_error": "str or null: the latest error (crash, refusal, hang, why the state "
                  "is short of up)",
    "warnings": "list of str: what works but will hurt (an MTU larger than the underlay "
                "path carries); empty when all is well",
    # counters: cumulative over every worker of this tunnel since the daemon started
    "rx_packets": "int: packets from the peer written to the device",
    "rx_bytes": "int: bytes of those packets",
    "tx_packets": "int: packets read from the device, sent towards the peer",
    "tx_bytes": "int: bytes of those packets",
    "drops": "object: cause -> int, every drop counted once, by cause: the relay's "
             "(no_peer, oversize, queue_full, device_full, malformed; with offloads "
             "offload_stale, duplicate) and, with WireGuard, "
             "its own (malformed, bad_mac, decrypt, unknown_peer, stale_timestamp, flood, "
             "unknown_receiver, bad_cookie, expired, replay, invalid_packet, cookie, "
             "no_session, handshake_timeout); a cause appears once counted",
    "errors": "int: failed system calls that were not fatal",
    "last_rx": "float or null: unix time of the latest packet from the peer",
    "last_tx": "float or null: unix time of the latest packet to the peer",
    "peer": 'str or null: the peer\'s current underlay address "HOST:PORT"',
    # every tunnel; empty for the single-peer form (issue 17)
    "peers": "object: peer name -> PEER_FIELDS, every configured peer of a tunnel with "
             "a peers table (disabled ones too); the tunnel's counters and drops sum its "
             "peers' and add what belongs to none (no_route, unknown_peer, ...)",
    # encryption = "wireguard" only (absent otherwise); of the live worker
    "peer_public_key": "str: the peer's public key (base64)",
    "latest_handshake": "float or null: unix time of the latest completed handshake",
    "session": 'str: "established", "handshaking" or "none"',
    "handshakes_sent": "int: handshake initiations sent",
    "cookie_replies_sent": "int: cookie replies sent (under load)",
    "wg_drops": "object: cause -> int, the live worker's WireGuard causes only (a view "
                "of drops for diagnosis: each is also counted there)",
    # tun mode without packet_info only (a vnet-header device); of the live worker
    "offload": 'str: "off" (the peer has not agreed to offloads), "frames" (super-packets '
               'go whole), "chunks" (cut into MTU-sized chunks: over UDP at first and while '
               "the peer sees many arrive incomplete; always without encryption)",
    "recovered": "int: datagrams of the peer's trains lost on the underlay and rebuilt "
                 "from their parity (chunks over UDP; none were lost to the tunnel)",
}

PEER_FIELDS: dict[str, str] = {
    "public_key": "str: the peer's public key (base64), as configured",
    "endpoint": 'str or null: the peer\'s current underlay address "HOST:PORT" (where its '
                "authenticated packets come from; before any: the configured endpoint; "
                "null for a roaming peer not heard from)",
    "allowed_ips": "list of str: configured prefixes: what the peer may send from, and "
                   "what is sent to it",
    "keepalive": "int: configured seconds between keepalives (0 = off)",
    "enabled": "bool: configured; a disabled peer gets no packets and no routes",
    "latest_handshake": "float or null: unix time of the peer's latest completed handshake",
    "state": 'str: "active" (a handshake within 180 s), "idle" (an older one) or "never"',
    "rx_bytes": "int: bytes from this peer written to the device",
    "tx_bytes": "int: bytes read from the device sent to this peer",
    "rx_packets": "int: packets from this peer written to the device",
    "tx_packets": "int: packets read from the device sent to this peer",
    "drops": "object: cause -> int, this peer's drops (not_allowed: its inner source "
             "address is outside its allowed_ips; decrypt, replay, ...)",
    "offload": 'str: "in" (a tund peer: its offload hello was answered, it sends super-'
               'packets; it gets plain packets, as every peer) or "off"',
    "lifetime": "object: {rx_bytes, tx_bytes, rx_packets, tx_packets} over every worker "
                "and daemon run (kept in the state directory's counters.json; {} before "
                "the peer's first worker)",
}

#: Fields that only some tunnels have (encrypted ones; a live worker).
WIREGUARD_FIELDS = frozenset({"peer_public_key", "latest_handshake", "session",
                              "handshakes_sent", "cookie_replies_sent", "wg_drops"})
OPTIONAL_TUNNEL_FIELDS = WIREGUARD_FIELDS | {"offload", "recovered"}
