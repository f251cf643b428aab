"""Bad WireGuard key material: refused with a located error everywhere, never echoed.

One working pair of daemons (tund <-> tund, UDP, tun). Then, for every kind of bad key
material, site ``a``'s config is pointed at it and:

* ``tundctl check`` exits 1 naming ``FILE:LINE: tunnels.t1.FIELD: ...`` and the reason;
* a fresh daemon started with it exits 1 with the same located error;
* ``tundctl reload`` is refused with it, and the running tunnel is untouched (same
  worker, still up, still passing traffic).

No secret (the private key, the key file's contents) ever appears in those messages, in
``tundctl status --json`` or in the daemon's log. A final reload of the good config
shows the daemon was never disturbed.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sites import two_sites
from tests.wg_helpers import new_psk, wg_pair, write_key

pytestmark = pytest.mark.usefixtures("privileged")


@dataclass
class Bad:
    name: str
    field: str  # the tunnel key the error is located at
    reason: str  # a piece of the expected message
    secret: str | None = None  # must never be echoed


def _make_cases(d: Path, good_priv: str) -> list[tuple[Bad, Path | str]]:
    d.mkdir()
    (d / "adir").mkdir()
    short = base64.b64encode(bytes(range(1, 32))).decode()  # 31 bytes
    long_ = base64.b64encode(bytes(range(1, 34))).decode()  # 33 bytes
    return [
        (Bad("missing", "private_key_file", "No such file"), d / "nope.key"),
        (Bad("directory", "private_key_file", "regular file"), d / "adir"),
        (Bad("short", "private_key_file", "32", short), write_key(d / "short.key", short)),
        (Bad("long", "private_key_file", "32", long_), write_key(d / "long.key", long_)),
        (Bad("garbage", "private_key_file", "base64", "n0t-a-key!"),
         write_key(d / "garbage.key", "n0t-a-key!")),
        (Bad("world-readable", "private_key_file", "mode 0644", good_priv),
         write_key(d / "open.key", good_priv, mode=0o644)),
        (Bad("group-readable psk", "preshared_key_file", "mode 0640"),
         write_key(d / "open.psk", new_psk(), mode=0o640)),
        (Bad("short psk", "preshared_key_file", "32", short), write_key(d / "short.psk", short)),
        (Bad("peer key length", "peer_public_key", "32"), short),
    ]


def _bad_config(good: str, good_key: Path, good_peer: str, bad: Bad,
                value: Path | str) -> str:
    if bad.field == "private_key_file":
        return good.replace(str(good_key), str(value))
    if bad.field == "peer_public_key":
        return good.replace(good_peer, str(value))
    return good.replace(f'peer_public_key = "{good_peer}"',
                        f'peer_public_key = "{good_peer}"\npreshared_key_file = "{value}"')


def _line_of(text: str, field: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(field + " "))


def test_bad_keys_refused_at_check_start_and_reload(tmp_path: Path) -> None:
    ts = two_sites(tmp_path)
    pair = wg_pair(ts)
    try:
        ts.b.ns.wait_ping(pair.inner("a"), within=20)
        before = ts.a.tunnel("t1")
        good = ts.a.config.read_text()
        good_key = ts.a.dir / "a.key"
        secrets = {pair.ka.priv}
        for bad, value in _make_cases(tmp_path / "bad", pair.ka.priv):
            text = _bad_config(good, good_key, pair.kb.pub, bad, value)
            path = tmp_path / "bad" / f"{bad.name.replace(' ', '-')}.toml"
            path.write_text(text)
            where = f"{path}:{_line_of(text, bad.field)}: tunnels.t1.{bad.field}: "
            if bad.secret:
                secrets.add(bad.secret)

            check = subprocess.run([sys.executable, "-m", "tund.ctl.main", "check", str(path)],
                                   capture_output=True, text=True, timeout=30)
            assert check.returncode == 1, (bad, check)
            assert where in check.stderr and bad.reason in check.stderr, (bad, check.stderr)
            assert "Traceback" not in check.stderr

            start = subprocess.run(
                ts.a.ns.argv(sys.executable, "-m", "tund", "--config", str(path),
                              "--control-socket", str(tmp_path / "bad" / "other.sock")),
                capture_output=True, text=True, timeout=30)
            assert start.returncode == 1, (bad, start)
            assert where in start.stderr and bad.reason in start.stderr, (bad, start.stderr)
            assert "Traceback" not in start.stderr

            ts.a.config.write_text(text)
            reload = ts.a.reload(check=False)
            assert reload.returncode != 0, (bad, reload)
            said = reload.stdout + reload.stderr
            assert f":{_line_of(text, bad.field)}: tunnels.t1.{bad.field}: " in said, (bad, said)
            assert bad.reason in said, (bad, said)
            now = ts.a.tunnel("t1")
            assert (now["pid"], now["state"]) == (before["pid"], "up"), (bad, now)
            for out in (check.stdout + check.stderr, start.stdout + start.stderr, said):
                for s in secrets:
                    assert s not in out, (bad, "secret echoed")
        ts.a.config.write_text(good)
        assert ts.a.reload().returncode == 0
        assert ts.a.ns.ping(pair.inner("b"), count=2)
        after = ts.a.tunnel("t1")
        assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"])
        status = ts.a.ctl("status", "--json").stdout + ts.a.ctl("status").stdout
        log = ts.a.log.read_text()
        for s in secrets:
            assert s not in status and s not in log
        assert ts.a.status()["daemon"]["last_reload"]["ok"] is True
    except AssertionError:
        print(pair.logs())
        raise
    finally:
        pair.stop()
