"""tund.workerapi.messages: every message round-trips; the decoder takes nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tund.workerapi import messages as m
from tund.workerapi.spec import WorkerSpec

SPEC = WorkerSpec(tunnel="t", interface="tun0", mode="tun", transport="udp", role="remote",
                  host="192.0.2.1", port=1, device_fd=4, private_key="k" * 44,
                  timers={"rekey_after_time": 5.0})
STATS = m.Stats(rx_packets=1, rx_bytes=2, tx_packets=3, tx_bytes=4, drops={"oversize": 1},
                errors=5, last_rx=1.5, last_tx=None, peer="192.0.2.1:1", state="up",
                extra={"session": "established", "wg_drops": {"replay": 2},
                       "latest_handshake": None, "peer_public_key": "x", "offload": "off",
                       "handshakes_sent": 1, "cookie_replies_sent": 0})
EVERY = [
    m.Start(SPEC), m.Ping(7), m.Update(1300), m.Stop(),
    m.Peers(({"name": "alice", "public_key": "k" * 44, "preshared_key": None,
              "allowed_ips": ["10.8.0.2/32"], "endpoint": None, "keepalive": 0},)),
    m.Pong(9, m.Stats(extra={"peers": {"alice": {
        "public_key": "k" * 44, "endpoint": "192.0.2.5:40000", "latest_handshake": 2.0,
        "rx_bytes": 1, "tx_bytes": 2, "rx_packets": 3, "tx_packets": 4,
        "drops": {"not_allowed": 1}}}})),
    m.Pong(7, STATS), m.Pong(8, m.Stats()),
    m.State("up", "192.0.2.1:1", None, STATS), m.State("connecting", None, "boom", m.Stats()),
    m.Ready(42), m.Fork(1, (10, 11), "65534:65534"), m.Fork(2, (10, 11, 12)),
    m.Forked(1, 43), m.ForkError(1, "no"), m.ForkError(None, "unreadable"),
]


def test_a_bad_peer_entry_or_peer_counter_is_refused() -> None:
    bad = {"op": "peers", "peers": [{"name": "alice", "public_key": "k"}]}
    with pytest.raises(m.MessageError, match="field peers: a peer must have exactly"):
        m.decode(json.dumps(bad).encode(), m.TO_WORKER)
    pong = json.loads(m.Pong(1, m.Stats()).encode())
    pong["stats"]["peers"] = {"alice": {"public_key": "x", "endpoint": None,
                                        "latest_handshake": None, "rx_bytes": "pwn",
                                        "tx_bytes": 0, "rx_packets": 0, "tx_packets": 0,
                                        "drops": {}}}
    with pytest.raises(m.MessageError, match=r"stats\.peers\.alice\.rx_bytes"):
        m.decode(json.dumps(pong).encode(), m.FROM_WORKER)


def test_every_kind_of_message_is_covered() -> None:
    assert {type(x) for x in EVERY} == set(m.ALL)
    assert len({k.OP for k in m.ALL}) == len(m.ALL)


@pytest.mark.parametrize("msg", EVERY, ids=lambda x: type(x).__name__)
def test_round_trip(msg: m.Message) -> None:
    assert m.decode(msg.encode(), m.ALL) == msg
    assert json.loads(msg.encode())["op"] == msg.OP


def test_the_wire_form_is_unchanged() -> None:
    """The JSON is what the loose dicts were (old readers and tests see the same)."""
    assert json.loads(m.Ping(3).encode()) == {"op": "ping", "seq": 3}
    assert json.loads(m.Update(1300).encode()) == {"op": "update", "mtu": 1300}
    assert json.loads(m.Stop().encode()) == {"op": "stop"}
    assert json.loads(m.Start(SPEC).encode()) == {"op": "start", "spec": SPEC.to_dict()}
    assert json.loads(m.State("up", "p", None, STATS).encode()) == {
        "op": "state", "state": "up", "peer": "p", "error": None, "stats": STATS.as_dict()}


def test_stats_of_a_workers_dict() -> None:
    assert m.Stats.of(STATS.as_dict()) == STATS
    assert m.Stats.from_dict(STATS.as_dict()) == STATS


def _state(**stats: Any) -> bytes:
    return json.dumps({"op": "state", "state": "up", "peer": None, "error": None,
                       "stats": {**m.Stats().as_dict(), **stats}}).encode()


@pytest.mark.parametrize(("data", "error"), [
    (_state(rx_packets="pwn"), "field stats.rx_packets must be an integer >= 0 (got 'pwn')"),
    (_state(rx_packets=-1), "field stats.rx_packets must be an integer >= 0 (got -1)"),
    (_state(rx_packets=True), "stats.rx_packets must be an integer >= 0 (got True)"),
    (_state(rx_bytes=1.5), "stats.rx_bytes must be an integer >= 0 (got 1.5)"),
    (_state(drops={"x": "1"}), "field stats.drops.x must be an integer >= 0 (got '1')"),
    (_state(drops=[]), "field stats.drops must be an object of cause -> count (got [])"),
    (_state(last_rx="now"), "field stats.last_rx must be a time"),
    (_state(last_rx=float("nan")), "field stats.last_rx must be a time"),
    (_state(session=1), "field stats.session must be 'established' or 'handshaking' or"),
    (_state(bogus=1), "unknown field stats.bogus (= 1)"),
    (_state(state="pwned"), "field stats.state must be 'connecting' or 'handshaking' or "
                            "'unverified' or 'failing' or 'up' (got 'pwned')"),
    (json.dumps({"op": "state", "stats": {"rx_packets": "pwn"}}).encode(),
     "state message: field state is missing"),
    (json.dumps({"op": "state", "state": "up", "peer": None, "error": None}).encode(),
     "field stats is missing"),
    (json.dumps({"op": "state", "state": "up", "peer": 5, "error": None,
                 "stats": m.Stats().as_dict()}).encode(), "field peer must be a string"),
    (json.dumps({"op": "pong", "seq": "1", "stats": {}}).encode(),
     "pong message: field seq must be an integer >= 0 (got '1')"),
    (json.dumps({"op": "pong", "seq": 1, "stats": {}, "x": 2}).encode(),
     "pong message: field stats.rx_packets is missing"),
    (json.dumps({"op": "stop", "x": 2}).encode(), "expected op 'pong' or 'state'"),
    (json.dumps({"op": "exec"}).encode(), "expected op 'pong' or 'state' (field op, got 'exec')"),
    (json.dumps({"seq": 1}).encode(), "(field op, got None)"),
    (b"[1]", "not a JSON object (got [1])"),
    (b"{", "not JSON"),
    (b"[" * 100000, "not JSON"),
])
def test_the_decoder_is_strict(data: bytes, error: str) -> None:
    with pytest.raises(m.MessageError) as e:
        m.decode(data, m.FROM_WORKER)
    assert error in str(e.value)


@pytest.mark.parametrize(("data", "error"), [
    (b'{"op":"update","mtu":10}', "update message: field mtu must be an integer 68..65535"),
    (b'{"op":"ping","seq":1,"x":1}', "ping message: unknown field x (= 1)"),
    (b'{"op":"stop","now":1}', "stop message: unknown field now"),
    (b'{"op":"start","spec":{"tunnel":"x","bogus":1}}', "unknown WorkerSpec fields"),
    (b'{"op":"start","spec":[]}', "field spec must be an object"),
    (b'{"op":"pong","seq":1,"stats":{}}', "expected op 'start' or 'ping' or 'update' or"),
])
def test_what_a_worker_refuses(data: bytes, error: str) -> None:
    with pytest.raises(m.MessageError) as e:
        m.decode(data, m.TO_WORKER)
    assert error in str(e.value)


@pytest.mark.parametrize(("data", "error"), [
    (b'{"op":"ready","pid":0}', "ready message: field pid must be an integer >= 1 (got 0)"),
    (b'{"op":"forked","id":1,"pid":"2"}', "forked message: field pid must be"),
    (b'{"op":"error","id":"1","error":"x"}', "field id must be an integer or null"),
    (b'{"op":"error","id":1}', "error message: field error is missing"),
])
def test_what_the_daemon_refuses_from_the_zygote(data: bytes, error: str) -> None:
    with pytest.raises(m.MessageError) as e:
        m.decode(data, m.FROM_ZYGOTE)
    assert error in str(e.value)


def test_messages_are_frozen() -> None:
    with pytest.raises(AttributeError):
        m.Ping(1).seq = 2  # type: ignore[misc]


# --------------------------------------------------------------------------- peers (issue 17.5)

PEER = {"public_key": "k" * 44, "endpoint": "192.0.2.7:51820", "latest_handshake": 1.7e9,
        "rx_bytes": 100, "tx_bytes": 200, "rx_packets": 1, "tx_packets": 2,
        "drops": {"not_allowed": 3}}


def test_stats_peers_round_trip() -> None:
    data = _state(peers={"alice": PEER, "bob": {**PEER, "endpoint": None,
                                                  "latest_handshake": None, "offload": "in"}})
    msg = m.decode(data, m.FROM_WORKER)
    assert isinstance(msg, m.State)
    assert msg.stats.extra["peers"]["alice"] == PEER
    assert msg.stats.extra["peers"]["bob"]["endpoint"] is None
    assert msg.stats.extra["peers"]["bob"]["offload"] == "in"
    assert m.decode(msg.encode(), m.FROM_WORKER) == msg


@pytest.mark.parametrize(("peers", "error"), [
    ([], "field stats.peers must be an object of peer name -> counters (got [])"),
    ({"a": 1}, "field stats.peers.a must be an object (got 1)"),
    ({"": PEER}, "must be named by 1..64 characters"),
    ({"a" * 65: PEER}, "must be named by 1..64 characters"),
    ({"a": {**PEER, "rx_bytes": -1}}, "field stats.peers.a.rx_bytes must be an integer >= 0"),
    ({"a": {**PEER, "tx_packets": True}}, "field stats.peers.a.tx_packets must be an integer"),
    ({"a": {**PEER, "public_key": None}}, "field stats.peers.a.public_key must be a string"),
    ({"a": {**PEER, "endpoint": 5}}, "field stats.peers.a.endpoint must be a string or null"),
    ({"a": {**PEER, "latest_handshake": "x"}}, "stats.peers.a.latest_handshake must be a time"),
    ({"a": {**PEER, "drops": {"x": -2}}}, "field stats.peers.a.drops.x must be an integer"),
    ({"a": {k: v for k, v in PEER.items() if k != "drops"}},
     "field stats.peers.a.drops is missing"),
    ({"a": {**PEER, "extra": 1}}, "unknown field stats.peers.a.extra (= 1)"),
    ({"a": {**PEER, "offload": "frames"}}, "field stats.peers.a.offload must be 'off' or 'in'"),
])
def test_stats_peers_decoder_is_strict(peers: Any, error: str) -> None:
    with pytest.raises(m.MessageError) as e:
        m.decode(_state(peers=peers), m.FROM_WORKER)
    assert error in str(e.value)


def test_worker_states_are_the_live_states_and_why_round_trips() -> None:
    """issue 15.1: every state tund.states.link_state gives passes the decoder, and a
    State message carries why the state is short of up (left out when None)."""
    from tund.states import LIVE
    assert set(m.WORKER_STATES) == {str(s) for s in LIVE}
    msg = m.State("failing", "192.0.2.1:1", None, m.Stats(state="failing",
                                                          extra={"warnings": ["w"]}),
                  "no reply from 192.0.2.1:1 to 3 handshake initiations")
    assert m.decode(msg.encode(), m.FROM_WORKER) == msg
    assert "why" not in json.loads(m.State("up", None, None, m.Stats()).encode())
