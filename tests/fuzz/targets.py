"""Fuzz targets: one function per parser of hostile input, each taking raw bytes.

A target returns normally for every input, or raises one of the error types documented
for that parser (caught here). Anything else escaping a target is a finding: an uncaught
exception, a violated invariant (AssertionError), or, under the runner's limits, a hang
or unbounded allocation. The same targets are driven by atheris (coverage-guided,
:mod:`tests.fuzz.fuzz`) and by hypothesis (``tests/fuzz/test_properties.py``).

=================  =====================================================  ==================
target             input                                                  allowed errors
=================  =====================================================  ==================
config_bytes       a file's bytes, through :func:`tund.config.load`      ConfigError
config_toml        UTF-8 text, through :func:`tund.config.parse_text`     ConfigError
control_request    a request line, :func:`protocol.decode_request`       ProtocolError
control_reply      a reply line, :func:`protocol.decode_reply`           ProtocolError
dispatch           a request line, decoded, then ``Daemon.dispatch``      ProtocolError,
                   (fake engine) for a peer chosen by the first byte      TundError
framing            a TCP byte stream, split where the input says          (none)
wg_parse           one UDP payload, :func:`messages.parse`                Malformed
wg_open            UDP payloads into ``WireGuardCodec.open``              (none)
wg_peers           UDP payloads into ``PeerCore.open`` (3 peers, one      (none)
                   established), device packets into ``PeerCore.seal``
worker_message     one control datagram, ``workerapi.messages.decode``    MessageError
                   (every kind); what decodes re-encodes to itself
=================  =====================================================  ==================
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tund import config, keys
from tund.config import Config
from tund.control import protocol
from tund.control.protocol import ProtocolError
from tund.control.server import PeerCred
from tund.daemon.engine import NotFound
from tund.daemon.main import Daemon
from tund.errors import ConfigError, TundError
from tund.relay.transport.framing import MAX_FRAME, FrameDecoder, encode
from tund.relay.wireguard import messages
from tund.relay.wireguard.codec import WireGuardCodec
from tund.relay.wireguard.peers import PeerCore
from tund.workerapi.spec import WorkerSpec

Target = Callable[[bytes], None]



def quiet() -> None:
    """Silence logging for a fuzzing process (refusals are logged by design; millions of
    lines help no one). Called by the fuzz runner only, never at import: importing this
    module from a test must not change logging for the tests that follow."""
    logging.disable(logging.CRITICAL)

# --------------------------------------------------------------------------- config

_TMP = Path(tempfile.mkdtemp(prefix="sc-fuzz-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
_CONF = _TMP / "tunnels.toml"


def config_bytes(data: bytes) -> None:
    """Arbitrary bytes as the config file on disk."""
    _CONF.write_bytes(data)
    try:
        cfg = config.load(_CONF)
    except ConfigError as e:
        _check_issues(e)
        return
    assert isinstance(cfg, Config)


def config_toml(data: bytes) -> None:
    """Arbitrary text (decoded leniently) as TOML."""
    try:
        config.parse_text(data.decode("utf-8", "surrogateescape"))
    except ConfigError as e:
        _check_issues(e)


def _check_issues(e: ConfigError) -> None:
    assert e.issues, "ConfigError without issues"
    for issue in e.issues:
        assert issue.file and issue.message and issue.line >= 0, issue


# --------------------------------------------------------------------------- control


def control_request(data: bytes) -> None:
    try:
        req = protocol.decode_request(data, 4096)
    except ProtocolError as e:
        assert e.code in {c.value for c in protocol.ErrorCode}, e.code
        line = protocol.encode_error(e.request_id, e.code, str(e))
        assert protocol.decode_reply(line).error_code == e.code
        return
    again = protocol.decode_request(protocol.encode_request(req.id, req.cmd, req.args), 1 << 30)
    assert (again.id, again.cmd, again.args) == (req.id, req.cmd, req.args)


def control_reply(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.decode_reply(data, 4096)


class FakeEngine:
    """What Daemon.dispatch acts on, with the real engine's lookup semantics."""

    config = None

    def __init__(self) -> None:
        self.tunnels = {"t1": "up", "t2": "failed"}

    def _get(self, name: Any) -> str:
        try:
            return self.tunnels[name]
        except KeyError:
            raise NotFound(f"no tunnel named {name!r}") from None

    async def status(self, tunnel: str | None = None) -> dict[str, Any]:
        names = [tunnel] if tunnel else list(self.tunnels)
        return {"tunnels": {n: {"state": self._get(n)} for n in names}}

    async def reload(self, dry_run: bool = False) -> dict[str, Any]:
        return {"actions": [], "dry_run": dry_run}

    async def tunnel_up(self, name: str) -> dict[str, Any]:
        return {"tunnel": name, "state": self._get(name)}

    tunnel_down = tunnel_up
    tunnel_restart = tunnel_up

    def counts(self) -> tuple[int, int]:
        return 1, len(self.tunnels)


_LOOP = asyncio.new_event_loop()
_DAEMON = Daemon(Config(), _CONF, str(_TMP / "control.sock"))
_DAEMON.engine = FakeEngine()  # type: ignore[assignment]
_PEERS = [PeerCred(1, 0, 0), PeerCred(2, 65534, 65534), PeerCred(3, 4242, 4242),
          PeerCred(4, -1, -1)]


def dispatch(data: bytes) -> None:
    """First byte picks the peer; the rest is a request line for the daemon."""
    peer = _PEERS[data[0] % len(_PEERS)] if data else _PEERS[0]
    try:
        req = protocol.decode_request(data[1:])
        result = _LOOP.run_until_complete(_DAEMON.dispatch(req.cmd, req.args, peer))
    except TundError as e:
        assert isinstance(e.code, str) and e.code, e
        return
    assert isinstance(result, dict)
    protocol.encode_result(req.id, result)  # the reply must be encodable


# --------------------------------------------------------------------------- framing


def framing(data: bytes) -> None:
    """The first 2 bytes: max_size and chunk size; the rest a stream fed in chunks.

    Invariants: never raises; buffers at most one frame (no unbounded growth); packets
    are within max_size; feeding well-formed frames gives them back exactly.
    """
    max_size = 1 + (int.from_bytes(data[:2], "big") % MAX_FRAME) if len(data) >= 2 else 1500
    step = 1 + (data[2] if len(data) > 2 else 0)
    dec = FrameDecoder(max_size)
    stream = data[3:]
    for i in range(0, len(stream), step):
        for packet in dec.feed(stream[i:i + step]):
            assert 0 < len(packet) <= max_size
        assert dec.pending <= max_size + 1, (dec.pending, max_size)
    packets = [p for p in (stream[i:i + 97] for i in range(0, len(stream), 97)) if p]
    good = FrameDecoder(MAX_FRAME)
    wire = b"".join(encode(p) for p in packets)
    out: list[bytes] = []
    for i in range(0, len(wire), step):
        out += good.feed(wire[i:i + step])
    assert out == packets


# --------------------------------------------------------------------------- wireguard


def wg_parse(data: bytes) -> None:
    try:
        m = messages.parse(data)
    except messages.Malformed as e:
        assert e.cause == "malformed"
        return
    assert messages.message_type(data) is not None, m


_PRIV_A, _PRIV_B = keys.generate_private_key(), keys.generate_private_key()


def _codec() -> WireGuardCodec:
    spec = WorkerSpec(tunnel="fuzz", interface="fz0", mode="tun", transport="udp",
                      role="listen", host="127.0.0.1", port=1, device_fd=-1,
                      encryption="wireguard", private_key=_PRIV_A,
                      peer_public_key=keys.public_key(_PRIV_B),
                      preshared_key=base64.b64encode(bytes(32)).decode())
    return WireGuardCodec(spec, wall=lambda: 1_700_000_000.0, rand=lambda n: bytes(n))


_CODEC = _codec()


def wg_open(data: bytes) -> None:
    """Several messages (split at 0xff 0xfe) into one codec; the first byte of each part
    also picks its type byte, so every parser branch is reached."""
    now = 1000.0
    for part in data.split(b"\xff\xfe")[:8]:
        if part:
            part = bytes([1 + part[0] % 4]) + part[1:]
        opened = _CODEC.open(part, ("127.0.0.1", 1), now)
        assert isinstance(opened.packets, list) and isinstance(opened.replies, list)
        assert opened.drop is None or isinstance(opened.drop, str)
        now += 0.5
    _CODEC.tick(now)
    json.dumps(_CODEC.stats())


def _peer_core() -> PeerCore:
    """A server with three peers; the first has a session with an in-memory client."""
    import random

    rng = random.Random(17)
    server_priv, client_priv = rng.randbytes(32), rng.randbytes(32)
    server = PeerCore(server_priv, mtu=1420, wall=lambda: 1_700_000_000.0,
                      rand=rng.randbytes)
    client = PeerCore(client_priv, mtu=1420, wall=lambda: 1_700_000_000.0,
                      rand=rng.randbytes)
    client.add_peer("s", server.public_key, None, ["0.0.0.0/0"], ("127.0.0.1", 1), 0)
    server.add_peer("c", client.public_key, None, ["10.8.0.2/32", "fd08::/64"], None, 0)
    for i in (3, 4):
        server.add_peer(f"p{i}", base64.b64encode(rng.randbytes(32)).decode(), None,
                        [f"10.8.0.{i}/32"], ("127.0.0.1", i), 25)
    packet = bytes([0x45, 0, 0, 28]) + bytes(8) + bytes([10, 8, 0, 2, 10, 8, 0, 1]) + bytes(8)
    queue = [(m, "server") for _, m in client.seal(packet, 1.0)]
    while queue:
        m, to = queue.pop(0)
        if to == "server":
            queue += [(r, "client") for _, r in server.open(m, ("127.0.0.2", 9), 1.0).sends]
        else:
            queue += [(r, "server") for _, r in client.open(m, ("127.0.0.1", 1), 1.0).sends]
    assert server.peer_status("c")["session"] == "established"
    return server


_PEER_CORE = _peer_core()


def wg_peers(data: bytes) -> None:
    """Parts (split at 0xff 0xfe) into a PeerCore: a part whose first byte is even is a
    datagram (type from that byte; a transport message's receiver index is replaced by
    a live one, so decryption and per-peer paths are reached), odd a device packet."""
    now = 1000.0
    live = sorted(_PEER_CORE._local.index) or [0]
    for part in data.split(b"\xff\xfe")[:8]:
        if part and part[0] & 1:
            for address, message in _PEER_CORE.seal(part[1:], now):
                assert isinstance(address, tuple) and isinstance(message, bytes)
        else:
            if part:
                kind = 1 + (part[0] >> 1) % 4
                part = bytes([kind]) + part[1:]
                if kind == 4 and len(part) >= 8:
                    index = live[part[1] % len(live)]
                    part = part[:4] + index.to_bytes(4, "little") + part[8:]
            got = _PEER_CORE.open(part, ("127.0.0.3", 7), now)
            assert isinstance(got.packets, list) and isinstance(got.sends, list)
            assert got.drop is None or isinstance(got.drop, str)
        now += 0.5
    _PEER_CORE.tick(now)
    _PEER_CORE.next_deadline()
    json.dumps(_PEER_CORE.stats())


def worker_message(data: bytes) -> None:
    """A daemon, worker or fork-server message; a decoded one round-trips."""
    from tund.workerapi import messages as wm

    try:
        msg = wm.decode(data, wm.ALL)
    except wm.MessageError as e:
        assert str(e), data
        return
    assert wm.decode(msg.encode(), wm.ALL) == msg, (data, msg)


TARGETS: dict[str, Target] = {
    "config_bytes": config_bytes,
    "config_toml": config_toml,
    "control_request": control_request,
    "control_reply": control_reply,
    "dispatch": dispatch,
    "framing": framing,
    "wg_parse": wg_parse,
    "wg_open": wg_open,
    "wg_peers": wg_peers,
    "worker_message": worker_message,
}
