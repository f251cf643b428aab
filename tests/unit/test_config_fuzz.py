"""Property: whatever the input, the loader returns a Config or raises ConfigError.

Every issue it reports has a file and a message, a line that exists (or 0), and at most
one ``(got ...)``. Inputs: arbitrary text, TOML-ish fragments, arbitrary bytes on disk,
and arbitrary (schema-shaped and free-form) tables dumped with tomli_w.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tund.config import (
    Config,
    DaemonConfig,
    InterfaceConfig,
    PeerConfig,
    TunnelConfig,
    load,
    parse_text,
)
from tund.errors import ConfigError

# The key-file checks hook into every load; fuzz them too, whatever the test order.
importlib.import_module("tund.keys")

FIELDS = sorted({*DaemonConfig.model_fields, *InterfaceConfig.model_fields,
                 *TunnelConfig.model_fields, *PeerConfig.model_fields,
                 *Config.model_fields})
NAMES = ["tun0", "tap0", "t", "a/b", "x" * 16, "", "é", "a.b"]
PLAUSIBLE = ["tun", "tap", "udp", "tcp", "none", "wireguard", "info", "10.0.0.1/24",
             "10.0.0.0/24", "10.0.0.1", "1.2.3.4:5", "[::1]:5", "::1:5", "host:0",
             "02:00:00:00:00:01", "01:00:00:00:00:01", "/run/x.sock", "rel.sock", "root",
             "tun0", "br0", "0", "\x00", "\ud800", "0.0.0.0/0", "::/0", "10.0.0.0/8",
             "fd00::/64", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
             "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB="]

FRAGMENTS = ["[", "]", "[[", "]]", "{", "}", "=", " = ", "\n", "\n", '"', "'", '"""', "'''",
             "#", ".", ",", " ", "daemon", "interfaces", "tunnels", "tun0", "t", "mode",
             '"tun"', '"tap"', "mtu", "1500", "70000", "-1", "0x10", "1e99999", "nan", "inf",
             "true", "1979-05-27T07:32:00Z", "07:32:00", "9" * 4400, "[" * 400, "{ a = " * 50,
             "\\u00e9", "\\", "\x00", "\t", "\r\n", "é", *FIELDS]

scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(PLAUSIBLE),
)
keys = st.one_of(st.sampled_from(FIELDS + NAMES), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def section(fields: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A table with some of a model's keys (and, sometimes, a stray one)."""
    return st.dictionaries(st.sampled_from(sorted(fields)) | keys, values, max_size=8)


schema_shaped = st.fixed_dictionaries(
    {},
    optional={
        "daemon": section(DaemonConfig.model_fields),
        "interfaces": st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=17),
                                      section(InterfaceConfig.model_fields), max_size=3),
        "tunnels": st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=5),
                                   section(TunnelConfig.model_fields), max_size=3),
    },
)
# issue 17: tunnels with peers tables, peers with some of PeerConfig's keys
peer_lists = st.lists(st.sampled_from(PLAUSIBLE[-6:-2]) | st.sampled_from(PLAUSIBLE), max_size=4)
peer_section = st.fixed_dictionaries(
    {}, optional={k: (peer_lists if k == "allowed_ips" else values)
                  for k in PeerConfig.model_fields})
peers_shaped = st.fixed_dictionaries({
    "interfaces": st.just({"tun0": {"mode": "tun"}}),
    "tunnels": st.dictionaries(st.sampled_from(NAMES), st.fixed_dictionaries(
        {"interface": st.just("tun0"),
         "peers": st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=4), peer_section,
                                  max_size=4)},
        optional={k: values for k in ("transport", "encryption", "listen", "remote",
                                      "keepalive", "peer_public_key")}), max_size=2),
})
free_form = st.dictionaries(keys, values, max_size=5)
tomlish = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join)

COMMON = settings(max_examples=150, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def check(text: str) -> None:
    try:
        cfg = parse_text(text, "fuzz.toml")
    except ConfigError as e:
        check_issues(e, {"fuzz.toml": text.count("\n") + 1})
    else:
        assert isinstance(cfg, Config)


def check_issues(e: ConfigError, files: dict[str, int]) -> None:
    assert e.issues, "ConfigError without issues"
    for issue in e.issues:
        assert issue.file in files, issue
        assert issue.message, issue
        assert 0 <= issue.line <= files[issue.file] + 1, issue
        assert str(issue).count("(got ") <= 1, issue


@COMMON
@given(st.text())
def test_arbitrary_text(text: str) -> None:
    check(text)


@COMMON
@given(tomlish)
def test_tomlish_text(text: str) -> None:
    check(text)


def raw(text: str) -> bytes:
    """``text`` as bytes; lone surrogates become (invalid) UTF-8 too."""
    return text.encode("utf-8", "surrogatepass")


def dumped(data: dict[str, Any]) -> str | None:
    try:
        return tomli_w.dumps(data)
    except (TypeError, ValueError):  # e.g. a surrogate tomli_w will not write
        return None


@COMMON
@given(schema_shaped)
def test_schema_shaped_tables(data: dict[str, Any]) -> None:
    if (text := dumped(data)) is not None:
        check(text)


@COMMON
@given(peers_shaped)
def test_peers_shaped_tables(data: dict[str, Any]) -> None:
    if (text := dumped(data)) is not None:
        check(text)


@COMMON
@given(peers_shaped, peers_shaped)
def test_peers_in_drop_ins(main: dict[str, Any], dropin: dict[str, Any]) -> None:
    """A main file and a drop-in holding peers (only) of the same tunnels."""
    only_peers = {"tunnels": {n: {"peers": b["peers"]}
                              for n, b in dropin.get("tunnels", {}).items()}}
    texts = [dumped(main), dumped(only_peers)]
    if None in texts:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tunnels.toml"
        (Path(tmp) / "tunnels.d").mkdir()
        second = Path(tmp) / "tunnels.d" / "50-p.toml"
        path.write_text(texts[0] or "", encoding="utf-8", errors="surrogatepass")
        second.write_text(texts[1] or "", encoding="utf-8", errors="surrogatepass")
        try:
            cfg = load(path)
        except ConfigError as e:
            check_issues(e, {str(path): (texts[0] or "").count("\n") + 1,
                             str(second): (texts[1] or "").count("\n") + 1})
        else:
            assert isinstance(cfg, Config)


@COMMON
@given(free_form)
def test_free_form_tables(data: dict[str, Any]) -> None:
    if (text := dumped(data)) is not None:
        check(text)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.binary(max_size=300)
       | tomlish.map(raw)
       | schema_shaped.map(lambda d: raw(dumped(d) or "")))
def test_arbitrary_bytes_on_disk(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tunnels.toml"
        path.write_bytes(data)
        try:
            cfg = load(path)
        except ConfigError as e:
            check_issues(e, {str(path): data.count(b"\n") + 1})
        else:
            assert isinstance(cfg, Config)
