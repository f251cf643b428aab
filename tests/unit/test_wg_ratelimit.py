"""Handshake floods (issue 16.3): the per-source token bucket and the under-load decision."""

from __future__ import annotations

import pytest

from tests.unit.test_wg_codec import SRC, ok, pair
from tund.relay.wireguard.cookie import LoadDetector
from tund.relay.wireguard.ratelimit import RateLimiter, source_key
from tund.relay.wireguard.timers import Timers


def test_bucket_gives_a_burst_then_the_rate() -> None:
    rl = RateLimiter(rate=20, burst=5)
    assert [rl.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert not rl.allow("a", 0.049)  # 0.98 of a token
    assert rl.allow("a", 0.051)
    assert not rl.allow("a", 0.052)
    # one second of 20,000 attempts gets about 20 through, never more than burst + rate
    got = sum(rl.allow("a", 1.0 + i / 20000) for i in range(20000))
    assert 19 <= got <= 25
    assert rl.allow("b", 1.0)  # another source has a bucket of its own


def test_bucket_refills_to_the_burst_only() -> None:
    rl = RateLimiter(rate=20, burst=5)
    rl.allow("a", 0.0)
    assert sum(rl.allow("a", 100.0) for _ in range(10)) == 5


def test_table_is_bounded_and_forgets_idle_sources() -> None:
    rl = RateLimiter(rate=20, burst=5, max_entries=3)
    assert all(rl.allow(k, 0.0) for k in "abc")
    assert not rl.allow("d", 0.1)  # full, nobody idle yet
    assert len(rl) == 3
    assert rl.allow("d", 1.5)  # a, b, c refilled: forgotten
    assert len(rl) == 1


def test_ipv6_sources_share_a_bucket_per_64() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("192.0.2.1") == "192.0.2.1"


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        RateLimiter(rate=0)


def test_load_detector_trips_above_n_per_window_and_stays_for_the_window() -> None:
    d = LoadDetector(Timers(under_load_handshakes=8, under_load_window=1.0))
    for i in range(8):
        d.note(i * 0.01)
    assert not d.under_load(0.08)
    d.note(0.09)
    assert d.under_load(0.09) and d.under_load(1.08)
    assert not d.under_load(1.1)
    # 8 a second spread out never trips it
    d2 = LoadDetector(Timers())
    for i in range(100):
        d2.note(i * 0.125)
        assert not d2.under_load(i * 0.125)


def test_under_load_cookie_replies_are_rate_limited_per_source() -> None:
    """Fails on the old code: every initiation got a cookie reply (411,693 in the PoC)."""
    p = pair(b_kw={"timers": {"under_load_handshakes": 0}})
    (init,) = p.a.on_connected(1.0)
    results = [p.b.open(init, SRC, 1.0 + i / 20000) for i in range(20000)]  # 1 s at 20k/s
    cookies = sum(1 for r in results if r.replies)
    assert 5 <= cookies <= 25
    assert all(r.drop == "handshake_ratelimited" for r in results if not r.replies)
    st = p.b.stats()
    assert st["cookie_replies_sent"] == cookies
    assert st["wg_drops"] == {"cookie": cookies, "handshake_ratelimited": 20000 - cookies}
    # another source still gets its cookie reply
    other = p.b.open(init, ("10.230.0.77", 4000), 2.0)
    assert [len(m) for m in other.replies] == [64]


def test_under_load_mac2_handshakes_are_rate_limited_per_source() -> None:
    """A sender holding a valid cookie still gets no more than the bucket's worth of
    Diffie-Hellmans; the legitimate peer at another address is not affected."""
    p = pair(b_kw={"timers": {"under_load_handshakes": 0, "handshake_initiation_rate": 0}})
    (init,) = p.a.on_connected(1.0)
    (cookie_reply,) = p.b.open(init, SRC, 1.0).replies
    ok(p.a.open(cookie_reply, SRC, 1.0))
    p.wall.t += 10
    deadline = p.a.next_deadline()
    assert deadline is not None
    (retry,) = p.a.tick(deadline)
    results = [p.b.open(retry, SRC, deadline + i * 1e-4) for i in range(50)]
    processed = [r for r in results if r.drop != "handshake_ratelimited"]
    assert len(processed) == 5  # the burst: the first processed, the rest are replays
    assert processed[0].replies and len(processed[0].replies[0]) == 92
    assert {r.drop for r in processed[1:]} == {"stale_timestamp"}


def test_has_token_takes_nothing() -> None:
    rl = RateLimiter(rate=20, burst=2)
    assert rl.has_token("a", 0.0) and len(rl) == 0
    assert rl.allow("a", 0.0) and rl.allow("a", 0.0)
    assert not rl.has_token("a", 0.0)
    assert rl.has_token("a", 0.05) and rl.has_token("a", 0.05)
    assert rl.allow("a", 0.05) and not rl.allow("a", 0.05)


def test_under_load_an_empty_cookie_bucket_drops_before_mac1() -> None:
    """Once the source's cookie bucket is empty, a handshake-sized message without mac2
    is dropped as handshake_ratelimited, even with a bad mac1 (no MAC is computed)."""
    from tund.relay.wireguard import codec as codec_mod
    p = pair(b_kw={"timers": {"under_load_handshakes": 0}})
    (init,) = p.a.on_connected(1.0)
    replies = [p.b.open(init, SRC, 1.0).replies for _ in range(5)]
    assert all(len(r) == 1 for r in replies)  # the burst
    macs = 0
    real_check = p.b._local.checker.check_mac1

    def counting(msg: bytes) -> bool:
        nonlocal macs
        macs += 1
        return real_check(msg)

    p.b._local.checker.check_mac1 = counting  # type: ignore[method-assign]
    bad = bytearray(init)
    bad[-20] ^= 1  # mac1 broken
    for m in (init, bytes(bad)):
        assert p.b.open(m, SRC, 1.0).drop == "handshake_ratelimited"
    assert macs == 0
    assert len(init) == codec_mod.msgs.INITIATION_LEN
