"""Every message between the daemon, the fork server and a worker: one frozen dataclass each.

Wire: one JSON object per ``SOCK_SEQPACKET`` datagram, ``{"op": OP, ...fields}``.
``encode()`` gives those bytes; :func:`decode` reads them back into one of the kinds the
reader accepts, and is strict: not JSON, not an object, an op the reader does not take, a
missing or unknown field, or a field of the wrong type or range raises
:class:`MessageError` naming the field and the value. Nothing is coerced.

daemon -> worker    :class:`Start` (first, once), :class:`Ping`, :class:`Update`, :class:`Stop`
worker -> daemon    :class:`Pong` (answers a ping, from the packet loop), :class:`State`
                    (every change of state or peer, and a fatal error)
daemon -> zygote    :class:`Fork` (with the fds attached, ``SCM_RIGHTS``)
zygote -> daemon    :class:`Ready` (once), :class:`Forked` (sent by the new worker itself),
                    :class:`ForkError`

A worker's counters travel as :class:`Stats` (cumulative for the life of the process).
Imports nothing of tund's but :mod:`tund.workerapi.spec`.

Size: one module by design (issue 14.2): every message both sides exchange, each with
its strict decoder, in the one place both sides import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, cast

from tund.workerapi.spec import WorkerSpec, check_peer

MAX_KEEPALIVE = 65535  # seconds, as the config allows
#: The states a live worker reports (tund.states.LIVE; a unit test keeps them equal).
WORKER_STATES = ("connecting", "handshaking", "unverified", "failing", "up")
MAX_MTU = 65535
MIN_MTU = 68


class MessageError(ValueError):
    """A control message that is not one the reader takes; the text names field and value."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------- field readers


class _Fields:
    """The fields of one received object, read once each; leftovers are an error."""

    def __init__(self, what: str, obj: Mapping[str, Any], prefix: str = "") -> None:
        self.what, self.obj, self.prefix = what, obj, prefix
        self.seen: set[str] = set()

    def _bad(self, name: str, want: str, value: object) -> MessageError:
        return MessageError(f"{self.what}: field {self.prefix}{name} must be {want} "
                            f"(got {_show(value)})")

    def get(self, name: str) -> object:
        self.seen.add(name)
        if name not in self.obj:
            raise MessageError(f"{self.what}: field {self.prefix}{name} is missing")
        return self.obj[name]

    def num(self, name: str, low: int = 0, high: int | None = None) -> int:
        v = self.get(name)
        if (not isinstance(v, int) or isinstance(v, bool) or v < low
                or (high is not None and v > high)):
            span = f"an integer {low}..{high}" if high is not None else f"an integer >= {low}"
            raise self._bad(name, span, v)
        return v

    def opt_float(self, name: str) -> float | None:
        v = self.get(name)
        if v is None:
            return None
        if (not isinstance(v, (int, float)) or isinstance(v, bool)
                or not math.isfinite(v) or v < 0):
            raise self._bad(name, "a time (a number >= 0) or null", v)
        return float(v)

    def text(self, name: str, choices: tuple[str, ...] = ()) -> str:
        v = self.get(name)
        if not isinstance(v, str) or (choices and v not in choices):
            raise self._bad(name, " or ".join(map(repr, choices)) or "a string", v)
        return v

    def opt_text(self, name: str) -> str | None:
        v = self.get(name)
        if v is not None and not isinstance(v, str):
            raise self._bad(name, "a string or null", v)
        return v

    def texts(self, name: str) -> list[str]:
        v = self.get(name)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._bad(name, "a list of strings", v)
        return list(v)

    def counts(self, name: str) -> dict[str, int]:
        v = self.get(name)
        if not isinstance(v, dict):
            raise self._bad(name, "an object of cause -> count", v)
        for k, n in v.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise self._bad(f"{name}.{k}", "an integer >= 0", n)
        return dict(v)

    def done(self) -> None:
        extra = sorted(set(self.obj) - self.seen)
        if extra:
            raise MessageError(f"{self.what}: unknown field {self.prefix}{extra[0]} "
                               f"(= {_show(self.obj[extra[0]])})")


# ---------------------------------------------------------------------- stats

#: The counters of one peer in ``Stats.extra["peers"]`` (a tunnel with ``peers``).
PEER_COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
#: a peer's ``offload``: ``in``: a tund peer that sends us super-packets (it gets plain ones)
PEER_OFFLOAD = ("off", "in")
MAX_PEER_NAME = 64


def _peers(f: _Fields, name: str) -> dict[str, dict[str, Any]]:
    """``peers``: peer name -> {public_key: str, endpoint: str|null, latest_handshake:
    time|null, rx_bytes, tx_bytes, rx_packets, tx_packets: int >= 0, drops: {cause: n}},
    every field present, and ``offload`` (``PEER_OFFLOAD``) if given; no other."""
    v = f.get(name)
    if not isinstance(v, dict):
        raise f._bad(name, "an object of peer name -> counters", v)
    out: dict[str, dict[str, Any]] = {}
    for peer, data in v.items():
        if not peer or len(peer) > MAX_PEER_NAME:
            raise f._bad(f"{name}.{_show(peer)}", f"named by 1..{MAX_PEER_NAME} characters",
                         peer)
        if not isinstance(data, dict):
            raise f._bad(f"{name}.{peer}", "an object", data)
        p = _Fields(f.what, data, f"{f.prefix}{name}.{peer}.")
        out[peer] = {"public_key": p.text("public_key"), "endpoint": p.opt_text("endpoint"),
                     "latest_handshake": p.opt_float("latest_handshake"),
                     **{k: p.num(k) for k in PEER_COUNTERS}, "drops": p.counts("drops")}
        if "offload" in data:
            out[peer]["offload"] = p.text("offload", PEER_OFFLOAD)
        p.done()
    return out


#: Fields a codec may add to :class:`Stats` (see ``tund.control.status_schema``), and how
#: each is read.
_EXTRA: dict[str, Callable[[_Fields, str], object]] = {
    "peer_public_key": _Fields.opt_text,
    "latest_handshake": _Fields.opt_float,
    "session": lambda f, n: f.text(n, ("established", "handshaking", "none")),
    "handshakes_sent": _Fields.num,
    "cookie_replies_sent": _Fields.num,
    "wg_drops": _Fields.counts,
    "offload": lambda f, n: f.text(n, ("off", "frames", "chunks")),
    "recovered": _Fields.num,
    "warnings": _Fields.texts,
    "peers": _peers,
}


@dataclass(frozen=True)
class Stats:
    """A worker's counters (``STATS`` in :mod:`tund.workerapi.spec`); ``extra`` holds the
    codec's fields (WireGuard session, offload mode), only those named in ``_EXTRA``."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    drops: Mapping[str, int] = field(default_factory=dict)
    errors: int = 0
    last_rx: float | None = None
    last_tx: float | None = None
    peer: str | None = None
    state: str = "connecting"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object (the extra fields merged in)."""
        return {"rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
                "tx_packets": self.tx_packets, "tx_bytes": self.tx_bytes,
                "drops": dict(self.drops), "errors": self.errors, "last_rx": self.last_rx,
                "last_tx": self.last_tx, "peer": self.peer, "state": self.state,
                **self.extra}

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Stats:
        """Wrap the worker's own dict (its counters, ``peer``, ``state`` and the codec's
        fields), unchecked: the sender's side; the reader checks."""
        extra = {k: v for k, v in data.items() if k not in _BASE}
        return cls(**{k: data[k] for k in _BASE if k in data}, extra=extra)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stats:
        """Build from the worker's own dict (its counters and codec stats); strict."""
        return _stats(data, "stats")

    @classmethod
    def read(cls, f: _Fields, name: str) -> Stats:
        v = f.get(name)
        if not isinstance(v, dict):
            raise f._bad(name, "an object", v)
        return _stats(v, f.what, f"{f.prefix}{name}.")


_BASE = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops", "errors", "last_rx",
         "last_tx", "peer", "state")


def _stats(v: Mapping[str, Any], what: str, prefix: str = "") -> Stats:
    s = _Fields(what, v, prefix)
    out = Stats(s.num("rx_packets"), s.num("rx_bytes"), s.num("tx_packets"),
                s.num("tx_bytes"), s.counts("drops"), s.num("errors"),
                s.opt_float("last_rx"), s.opt_float("last_tx"), s.opt_text("peer"),
                s.text("state", WORKER_STATES),
                {k: _EXTRA[k](s, k) for k in v if k in _EXTRA})
    s.done()
    return out


# ---------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """The base of every message: ``OP`` names it on the wire."""

    OP: ClassVar[str] = ""

    def fields(self) -> dict[str, Any]:
        """The message's fields as JSON values (without ``op``)."""
        return {}

    def encode(self) -> bytes:
        return json.dumps({"op": self.OP, **self.fields()}, separators=(",", ":")).encode()

    @classmethod
    def read(cls, f: _Fields) -> Message:
        return cls()


@dataclass(frozen=True)
class Start(Message):
    """daemon -> worker, first: everything the worker needs (secrets travel only here)."""

    OP: ClassVar[str] = "start"
    spec: WorkerSpec

    def fields(self) -> dict[str, Any]:
        return {"spec": {n: getattr(self.spec, n) for n in _SPEC_FIELDS}}

    @classmethod
    def read(cls, f: _Fields) -> Start:
        v = f.get("spec")
        if not isinstance(v, dict):
            raise f._bad("spec", "an object", v)
        try:
            return cls(WorkerSpec.from_dict(v))
        except (TypeError, ValueError) as e:
            raise MessageError(f"{f.what}: field spec: {e}") from None


@dataclass(frozen=True)
class Ping(Message):
    """daemon -> worker: answer with a :class:`Pong` of the same ``seq`` from the loop."""

    OP: ClassVar[str] = "ping"
    seq: int

    def fields(self) -> dict[str, Any]:
        return {"seq": self.seq}

    @classmethod
    def read(cls, f: _Fields) -> Ping:
        return cls(f.num("seq"))


@dataclass(frozen=True)
class Update(Message):
    """daemon -> worker: a reload changed what applies in place; keep running. ``mtu``:
    the device's new MTU; ``keepalive``: the tunnel's new keepalive (seconds, 0 = off).
    At least one is set; an unset one is left out of the message."""

    OP: ClassVar[str] = "update"
    mtu: int | None = None
    keepalive: int | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.mtu is not None:
            out["mtu"] = self.mtu
        if self.keepalive is not None:
            out["keepalive"] = self.keepalive
        return out

    @classmethod
    def read(cls, f: _Fields) -> Update:
        mtu = f.num("mtu", MIN_MTU, MAX_MTU) if "mtu" in f.obj else None
        keepalive = f.num("keepalive", 0, MAX_KEEPALIVE) if "keepalive" in f.obj else None
        if mtu is None and keepalive is None:
            raise MessageError("update: neither field mtu nor field keepalive is given")
        return cls(mtu, keepalive)


@dataclass(frozen=True)
class Peers(Message):
    """daemon -> worker: a reload changed the tunnel's peers; ``peers`` is the whole new
    set (each checked by :func:`~tund.workerapi.spec.check_peer`): peers not in it are
    removed, new ones added, changed ones updated in place; the worker keeps running."""

    OP: ClassVar[str] = "peers"
    peers: tuple[dict[str, Any], ...]

    def fields(self) -> dict[str, Any]:
        return {"peers": [dict(p) for p in self.peers]}

    @classmethod
    def read(cls, f: _Fields) -> Peers:
        v = f.get("peers")
        if not isinstance(v, list):
            raise f._bad("peers", "a list of peers", v)
        try:
            return cls(tuple(check_peer(p) for p in v))
        except ValueError as e:
            raise MessageError(f"{f.what}: field peers: {e}") from None


@dataclass(frozen=True)
class Stop(Message):
    """daemon -> worker: finish the current batch, close, exit 0."""

    OP: ClassVar[str] = "stop"


@dataclass(frozen=True)
class Pong(Message):
    """worker -> daemon: the answer to :class:`Ping` ``seq``, with fresh counters."""

    OP: ClassVar[str] = "pong"
    seq: int
    stats: Stats

    def fields(self) -> dict[str, Any]:
        return {"seq": self.seq, "stats": self.stats.as_dict()}

    @classmethod
    def read(cls, f: _Fields) -> Pong:
        return cls(f.num("seq"), Stats.read(f, "stats"))


@dataclass(frozen=True)
class State(Message):
    """worker -> daemon: its state, peer or ``why`` changed, or (``error``) it hit a fatal
    error. ``why``: what keeps the state short of up ("no reply from ADDR:PORT to 3
    handshake initiations", ...; tund.states.link_state), not fatal; left out when None."""

    OP: ClassVar[str] = "state"
    state: str  # one of WORKER_STATES (the decoder takes nothing else)
    peer: str | None
    error: str | None
    stats: Stats
    why: str | None = None

    def fields(self) -> dict[str, Any]:
        out = {"state": self.state, "peer": self.peer, "error": self.error,
               "stats": self.stats.as_dict()}
        if self.why is not None:
            out["why"] = self.why
        return out

    @classmethod
    def read(cls, f: _Fields) -> State:
        return cls(f.text("state", WORKER_STATES), f.opt_text("peer"),
                   f.opt_text("error"), Stats.read(f, "stats"),
                   f.opt_text("why") if "why" in f.obj else None)


@dataclass(frozen=True)
class Ready(Message):
    """zygote -> daemon, once: imports done, requests are taken."""

    OP: ClassVar[str] = "ready"
    pid: int

    def fields(self) -> dict[str, Any]:
        return {"pid": self.pid}

    @classmethod
    def read(cls, f: _Fields) -> Ready:
        return cls(f.num("pid", 1))


@dataclass(frozen=True)
class Fork(Message):
    """daemon -> zygote: fork a worker finding the attached fds under ``fds`` (control
    first; 2 or 3 distinct numbers above 2), switching to ``run_as`` (``"UID:GID"``)."""

    OP: ClassVar[str] = "fork"
    id: int
    fds: tuple[int, ...]
    run_as: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"id": self.id, "fds": list(self.fds), "run_as": self.run_as}

    @classmethod
    def read(cls, f: _Fields) -> Fork:
        rid = f.obj.get("id")
        f.seen.add("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise MessageError(f"fork request without an integer id (got {rid!r})")
        fds = f.obj.get("fds")
        f.seen.add("fds")
        if (not isinstance(fds, list) or not 2 <= len(fds) <= 3
                or not all(isinstance(t, int) and not isinstance(t, bool) and t > 2
                           for t in fds)
                or len(set(fds)) != len(fds)):
            raise MessageError(f"fds must be 2 or 3 distinct numbers above 2 (got {fds!r})")
        run_as = f.obj.get("run_as")
        f.seen.add("run_as")
        if run_as is not None and not _is_uid_gid(run_as):
            raise MessageError(f"run_as must be 'UID:GID' or null (got {run_as!r})")
        return cls(rid, tuple(fds), run_as)


def _is_uid_gid(v: object) -> bool:
    if not isinstance(v, str):
        return False
    uid, sep, gid = v.partition(":")
    return bool(sep) and uid.isascii() and uid.isdigit() and gid.isascii() and gid.isdigit()


@dataclass(frozen=True)
class Forked(Message):
    """zygote (the new worker itself, once re-parented) -> daemon: request ``id`` runs."""

    OP: ClassVar[str] = "forked"
    id: int
    pid: int

    def fields(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.pid}

    @classmethod
    def read(cls, f: _Fields) -> Forked:
        return cls(f.num("id", -(1 << 63)), f.num("pid", 1))


@dataclass(frozen=True)
class ForkError(Message):
    """zygote -> daemon: request ``id`` (None: unreadable) was not forked, and why."""

    OP: ClassVar[str] = "error"
    id: int | None
    error: str

    def fields(self) -> dict[str, Any]:
        return {"id": self.id, "error": self.error}

    @classmethod
    def read(cls, f: _Fields) -> ForkError:
        rid = f.get("id")
        if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool)):
            raise f._bad("id", "an integer or null", rid)
        return cls(rid, f.text("error"))


_SPEC_FIELDS = tuple(WorkerSpec.__dataclass_fields__)

#: What each reader accepts.
TO_WORKER: tuple[type[Start | Ping | Update | Peers | Stop], ...] = (Start, Ping, Update,
                                                                      Peers, Stop)
FROM_WORKER: tuple[type[Pong | State], ...] = (Pong, State)
TO_ZYGOTE: tuple[type[Fork], ...] = (Fork,)
FROM_ZYGOTE: tuple[type[Ready | Forked | ForkError], ...] = (Ready, Forked, ForkError)
ALL: tuple[type[Message], ...] = (*TO_WORKER, *FROM_WORKER, *TO_ZYGOTE, *FROM_ZYGOTE)

M = TypeVar("M", bound=Message)


def decode(data: bytes, kinds: tuple[type[M], ...], what: str = "control message") -> M:
    """The message ``data`` holds, one of ``kinds``; MessageError (naming the field and
    the value) on anything else."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise MessageError(f"{what} is not JSON ({e}): {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"{what} is not a JSON object (got {_show(obj)})")
    op = obj.get("op")
    for kind in kinds:
        if op == kind.OP:
            f = _Fields(f"{op} message", obj)
            f.seen.add("op")
            msg = kind.read(f)
            f.done()
            return cast(M, msg)
    names = " or ".join(repr(k.OP) for k in kinds)
    raise MessageError(f"{what}: expected op {names} (field op, got {_show(op)})")
