"""Worker assembly: packet sizes, codec choice, and the lazy WireGuard import."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tund.relay.codec.plain import PlainCodec
from tund.relay.errors import RelayError
from tund.relay.process.build import make_codec, max_packet
from tund.workerapi.spec import WorkerSpec


def spec(**kw: Any) -> WorkerSpec:
    base: dict[str, Any] = {"tunnel": "t", "interface": "t0", "mode": "tun", "transport": "udp",
                            "role": "remote", "host": "127.0.0.1", "port": 1, "device_fd": 3}
    return WorkerSpec(**{**base, **kw})


@pytest.mark.parametrize(("mode", "pi", "want"), [("tun", False, 1400), ("tun", True, 1404),
                                                 ("tap", False, 1414), ("tap", True, 1418)])
def test_max_packet(mode: str, pi: bool, want: int) -> None:
    assert max_packet(spec(mode=mode, packet_info=pi, mtu=1400)) == want


def test_max_packet_never_exceeds_a_frame() -> None:
    assert max_packet(spec(mode="tap", packet_info=True, mtu=65535)) == 65535


def test_plain_codec_settings_follow_the_spec() -> None:
    c = make_codec(spec(keepalive=25))
    assert isinstance(c, PlainCodec)
    assert (c.ip_check, c.min_len, c.keepalive, c.hello) == (True, 1, 25.0, True)
    c = make_codec(spec(mode="tap", packet_info=True, transport="tcp", role="listen"))
    assert isinstance(c, PlainCodec)
    assert (c.ip_check, c.min_len, c.keepalive, c.hello) == (False, 18, 0.0, False)


def test_missing_wireguard_codec_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tund.relay.wireguard.codec", None)  # import fails
    with pytest.raises(RelayError, match="encryption 'wireguard' is not available"):
        make_codec(spec(encryption="wireguard"))
