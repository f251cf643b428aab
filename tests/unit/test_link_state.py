"""The state rule (issue 15.1): ``up`` means packets pass. Pure: tund.states.link_state of
what a worker knows, and the WireGuard codec's ``health`` that feeds it.

Before the fix a WireGuard tunnel was ``up`` as soon as its UDP socket had an address
(remote) or a first message arrived (listener), whatever the handshake did."""

from __future__ import annotations

from tests.unit.test_wg_codec import SRC, Wall, handshake, ip_packet, make_spec, pair
from tund.keyformat import encode_key, public_from_private, random_private_key
from tund.relay.wireguard.codec import WireGuardCodec
from tund.states import (
    ALLOWED,
    FAIL_AFTER,
    LIVE,
    SESSION_FRESH,
    Handshakes,
    Link,
    TunnelState,
    can_move,
    link_state,
)

EP = "192.0.2.7:51820"


def wg(path: bool = True, **hs: object) -> Link:
    return Link("udp", path, handshakes=Handshakes(**hs), endpoint=EP)  # type: ignore[arg-type]


def test_wireguard_is_up_only_with_a_fresh_session() -> None:
    now = 1000.0
    assert link_state(wg(), now) == (TunnelState.HANDSHAKING, None)  # the remote, at first
    assert link_state(wg(session=now - 1), now) == (TunnelState.UP, None)
    assert link_state(wg(session=now - SESSION_FRESH + 0.1), now)[0] == TunnelState.UP
    assert link_state(wg(session=now - SESSION_FRESH), now)[0] == TunnelState.HANDSHAKING
    assert link_state(wg(path=False), now) == (TunnelState.CONNECTING, None)
    # a fresh session wins over old failures (they are reset at a handshake anyway)
    assert link_state(wg(session=now, unanswered=9, refused="x"), now)[0] == TunnelState.UP


def test_wireguard_failures_say_why() -> None:
    now = 50.0
    assert link_state(wg(unanswered=FAIL_AFTER - 1), now)[0] == TunnelState.HANDSHAKING
    assert link_state(wg(unanswered=FAIL_AFTER), now) == (
        TunnelState.FAILING, f"no reply from {EP} to {FAIL_AFTER} handshake initiations")
    why = "handshake from an unknown key (fingerprint abc)"
    assert link_state(wg(refused=why), now) == (TunnelState.FAILING, why)
    # a listener that has no peer but hears bad handshakes says so too
    assert link_state(wg(path=False, refused=why), now) == (TunnelState.FAILING, why)


def test_plaintext_udp_is_unverified_until_something_comes_back() -> None:
    assert link_state(Link("udp", True), 0) == (TunnelState.UNVERIFIED, None)
    assert link_state(Link("udp", True, heard=True), 0) == (TunnelState.UP, None)
    assert link_state(Link("tcp", True), 0) == (TunnelState.UP, None)  # connected = up
    err = "cannot resolve 'nowhere.invalid': Name or service not known"
    assert link_state(Link("udp", False, problem=err), 0) == (TunnelState.CONNECTING, err)
    assert link_state(Link("tcp", False), 0) == (TunnelState.CONNECTING, None)


def test_the_supervisor_may_follow_the_worker_between_live_states() -> None:
    for a in LIVE:
        assert can_move(TunnelState.STARTING, a)
        for b in LIVE | {TunnelState.BACKOFF, TunnelState.STOPPED}:
            assert can_move(a, b), (a, b)
    assert set(ALLOWED) == set(TunnelState)


# --------------------------------------------------------------------------- the codec


def test_codec_health_follows_the_handshake() -> None:
    p = pair()
    assert p.a.health(1.0) == Handshakes(None, 0, None)
    handshake(p, 1.0)
    assert p.a.health(1.0).session == 1.0 and p.b.health(1.0).session == 1.0
    assert p.a.health(1.0 + SESSION_FRESH).session is None  # expired with REJECT_AFTER_TIME


def test_unanswered_initiations_are_counted_and_reset_by_a_handshake() -> None:
    p = pair()
    (init,) = p.a.seal(ip_packet(), 1.0)
    t = 1.0
    for _ in range(FAIL_AFTER):
        t += 6.0  # past REKEY_TIMEOUT + jitter: the retry timer fires
        assert len(p.a.tick(t)) == 1  # a new initiation
    assert p.a.health(t).unanswered == FAIL_AFTER
    assert link_state(Link("udp", True, handshakes=p.a.health(t), endpoint=EP), t)[0] \
        == TunnelState.FAILING
    (init,) = p.a.tick(t + 6.0)
    (resp,) = p.b.open(init, SRC, t + 6.0).replies
    assert p.a.open(resp, SRC, t + 6.0).drop is None
    assert p.a.health(t + 6.0) == Handshakes(t + 6.0, 0, None)


def test_a_wrong_peer_key_is_named_on_both_ends() -> None:
    """A has B's key wrong; B has A's right: B's mac1 check refuses A's initiations; A
    decrypts B's and finds B's static key is not the one configured."""
    wall = Wall()
    ka, kb, wrong = random_private_key(), random_private_key(), random_private_key()
    a = WireGuardCodec(make_spec(ka, public_from_private(wrong), "remote"), wall=wall)
    b = WireGuardCodec(make_spec(kb, public_from_private(ka), "remote"), wall=wall)
    (init_a,) = a.on_connected(1.0)
    assert b.open(init_a, SRC, 1.0).drop == "bad_mac"
    refused_b = b.health(1.0).refused
    assert refused_b is not None and "not meant for our key" in refused_b
    assert SRC[0] in refused_b
    (init_b,) = b.on_connected(1.0)
    assert a.open(init_b, SRC, 1.0).drop == "unknown_peer"
    refused_a = a.health(1.0).refused
    fingerprint = encode_key(public_from_private(kb))[:10]
    assert refused_a == (f"handshake from an unknown key (fingerprint {fingerprint}) at "
                         f"{SRC[0]}:{SRC[1]}: not peer_public_key")


def test_a_response_that_does_not_decrypt_is_a_rejection() -> None:
    wall = Wall()
    ka, kb = random_private_key(), random_private_key()
    a = WireGuardCodec(make_spec(ka, public_from_private(kb), psk=b"\x01" * 32), wall=wall)
    b = WireGuardCodec(make_spec(kb, public_from_private(ka), "listen", psk=b"\x02" * 32),
                       wall=wall)
    (init,) = a.on_connected(1.0)
    (resp,) = b.open(init, SRC, 1.0).replies
    assert a.open(resp, SRC, 1.0).drop == "decrypt"
    refused = a.health(1.0).refused
    assert refused is not None and refused.startswith("the peer rejected our handshake")


def test_a_plain_listener_answers_each_hello_and_a_remote_never_does() -> None:
    from tund.relay.codec.plain import PlainCodec
    assert PlainCodec(answer=True).open(b"", SRC, 0.0).replies == [b""]
    assert PlainCodec(hello=True).open(b"", SRC, 0.0).replies == []
    assert PlainCodec(answer=True).on_connected(0.0) == []
