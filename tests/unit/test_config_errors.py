"""Malformed configurations -> located, explained ConfigIssues (never a traceback).

Each table row is one broken document and the single issue it must produce: the file,
line, key path and a fragment of the message (``whole`` pins the full rendered line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tund.config import DaemonConfig, load, parse_text
from tund.errors import ConfigError, ConfigIssue

NAME = "t.toml"
NO_USER = "tund-no-such-user"
NO_GROUP = "tund-no-such-group"


def doc(*lines: str) -> str:
    """A TOML document whose line N is ``lines[N-1]``."""
    return "\n".join(lines) + "\n"


TUN = ('[interfaces.tun0]', 'mode = "tun"')  # lines 1-2
TAP = ('[interfaces.tap0]', 'mode = "tap"')  # lines 1-2
# lines 1-2 interface, 3 header, 4 interface, 5 encryption; add listen/remote etc. at 6+
PLAIN = (*TUN, '[tunnels.t]', 'interface = "tun0"', 'encryption = "none"')


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    line: int
    path: str
    fragment: str
    whole: str | None = None  # the entire rendered issue, when pinned


DAEMON_KEYS = ", ".join(DaemonConfig.model_fields)

CASES = [
    # --- TOML syntax (line from tomllib) ---
    Case("toml-missing-value", doc("a = "), 1, "", "not valid TOML: invalid value"),
    Case("toml-error-line-3", doc("[daemon]", 'log_level = "info"', "ping_interval = = 1"),
         3, "", "not valid TOML"),
    Case("toml-table-twice", doc("[daemon]", "[daemon]"), 2, "",
         "cannot declare [daemon] twice"),
    Case("toml-unterminated-string", doc(*TUN, 'mtu = "15'), 3, "", "not valid TOML"),
    # --- unknown keys at each level ---
    Case("unknown-top", doc("foo = 1"), 1, "foo", "unknown key",
         whole="t.toml:1: foo: unknown key (expected one of: daemon, interfaces, tunnels)"),
    Case("unknown-daemon", doc("[daemon]", 'log_levle = "info"'), 2, "daemon.log_levle",
         'did you mean "log_level"?',
         whole=f't.toml:2: daemon.log_levle: unknown key; did you mean "log_level"? '
               f"(expected one of: {DAEMON_KEYS})"),
    Case("unknown-interface", doc(*TUN, "mtuu = 1400"), 3, "interfaces.tun0.mtuu",
         'unknown key; did you mean "mtu"? (expected one of: mode, owner, group,'),
    Case("unknown-tunnel", doc(*PLAIN, 'listen = "10.0.0.1:5"', "peer = 1"), 7,
         "tunnels.t.peer", "unknown key"),
    Case("unknown-inline", doc('interfaces = { tun0 = { mode = "tun", colour = 1 } }'), 1,
         "interfaces.tun0.colour", "unknown key (expected one of: mode,"),
    # --- wrong types ---
    Case("string-for-int", doc(*TUN, 'mtu = "1500"'), 3, "interfaces.tun0.mtu",
         "must be an integer",
         whole='t.toml:3: interfaces.tun0.mtu: must be an integer (got "1500")'),
    Case("int-for-bool", doc(*TUN, "persist = 1"), 3, "interfaces.tun0.persist",
         "must be true or false (got 1)"),
    Case("bool-for-int", doc(*TUN, "mtu = true"), 3, "interfaces.tun0.mtu",
         "must be an integer (got true)"),
    Case("string-for-array", doc(*TUN, 'addresses = "10.0.0.1/24"'), 3,
         "interfaces.tun0.addresses", 'must be an array of strings (got "10.0.0.1/24")'),
    Case("array-for-string", doc(*PLAIN, 'listen = ["10.0.0.1:5"]'), 6, "tunnels.t.listen",
         'must be a string (got ["10.0.0.1:5"])'),
    Case("int-in-array", doc(*TUN, 'addresses = ["10.0.0.1/24", 7]'), 3,
         "interfaces.tun0.addresses[1]", "must be a string (got 7)"),
    Case("float-for-int", doc(*PLAIN, 'listen = "10.0.0.1:5"', "keepalive = 1.5"), 7,
         "tunnels.t.keepalive", "must be an integer (got 1.5)"),
    Case("bool-for-owner", doc(*TUN, "owner = true"), 3, "interfaces.tun0.owner",
         "must be a user name (string) or a numeric uid (got true)"),
    Case("interfaces-not-table", doc("interfaces = 3"), 1, "interfaces",
         "must be a table (got 3)"),
    Case("interface-not-table", doc("[interfaces]", "tun0 = 3"), 2, "interfaces.tun0",
         "must be a table (got 3)"),
    # --- ranges and choices ---
    Case("mtu-too-big", doc(*TUN, "mtu = 70000"), 3, "interfaces.tun0.mtu", "at most",
         whole="t.toml:3: interfaces.tun0.mtu: must be at most 65535 (got 70000)"),
    Case("mtu-too-small", doc(*TUN, "mtu = 67"), 3, "interfaces.tun0.mtu",
         "must be at least 68 (got 67)"),
    Case("bad-mode", doc("[interfaces.tun0]", 'mode = "tin"'), 2, "interfaces.tun0.mode",
         "must be",
         whole='t.toml:2: interfaces.tun0.mode: must be "tun" or "tap" (got "tin")'),
    Case("missing-mode", doc("[interfaces.tun0]", "mtu = 1400"), 1, "interfaces.tun0.mode",
         'required key is missing (expected "tun" or "tap")'),
    Case("bad-transport", doc(*PLAIN, 'listen = "10.0.0.1:5"', 'transport = "sctp"'), 7,
         "tunnels.t.transport", 'must be "tcp" or "udp" (got "sctp")'),
    Case("bad-encryption", doc(*TUN, "[tunnels.t]", 'interface = "tun0"',
                                'listen = "10.0.0.1:5"', 'encryption = "aes"'), 6,
         "tunnels.t.encryption", 'must be "none" or "wireguard" (got "aes")'),
    Case("bad-log-level", doc("[daemon]", 'log_level = "loud"'), 2, "daemon.log_level",
         'must be "debug", "info", "warning" or "error" (got "loud")'),
    # --- listen / remote ---
    Case("listen-and-remote", doc(*PLAIN, 'listen = "10.0.0.1:5"', 'remote = "10.0.0.2:5"'),
         7, "tunnels.t.remote", "either listen or remote, not both",
         whole='t.toml:7: tunnels.t.remote: set either listen or remote, not both '
               '(got listen = "10.0.0.1:5", remote = "10.0.0.2:5")'),
    Case("neither-listen-nor-remote", doc(*PLAIN), 3, "tunnels.t", "got neither"),
    # --- allowed_sources (issue 16.2) ---
    Case("allowed-sources-on-a-connector",
         doc(*PLAIN, 'remote = "10.0.0.2:5"', 'allowed_sources = ["10.0.0.0/24"]'), 7,
         "tunnels.t.allowed_sources", "only valid on a tunnel that listens",
         whole='t.toml:7: tunnels.t.allowed_sources: only valid on a tunnel that listens '
               '(a connecting tunnel talks to its remote only; got allowed_sources = '
               '["10.0.0.0/24"])'),
    Case("allowed-sources-not-a-network",
         doc(*PLAIN, 'listen = "10.0.0.1:5"', 'allowed_sources = ["10.0.0.300/24"]'), 7,
         "tunnels.t.allowed_sources[0]", "is not an IP network"),
    Case("allowed-sources-host-bits",
         doc(*PLAIN, 'listen = "10.0.0.1:5"', 'allowed_sources = ["10.0.0.7/24"]'), 7,
         "tunnels.t.allowed_sources[0]",
         "has host bits set (expected a network, like 10.0.0.0/24)"),
    Case("allowed-sources-twice",
         doc(*PLAIN, 'listen = "10.0.0.1:5"', 'allowed_sources = ["10.0.0.0/24", "10.0.0.0/24"]'),
         7, "tunnels.t.allowed_sources", "lists the network 10.0.0.0/24 twice"),
    Case("endpoint-missing-port", doc(*PLAIN, 'listen = "10.0.0.1"'), 6, "tunnels.t.listen",
         'expected "IPv4:PORT" or "[IPv6]:PORT" (got "10.0.0.1")'),
    Case("endpoint-port-0", doc(*PLAIN, 'listen = "10.0.0.1:0"'), 6, "tunnels.t.listen",
         "port must be a number from 1 to 65535",
         whole='t.toml:6: tunnels.t.listen: port must be a number from 1 to 65535 '
               '(got "10.0.0.1:0")'),
    Case("endpoint-port-70000", doc(*PLAIN, 'remote = "10.0.0.1:70000"'), 6,
         "tunnels.t.remote", 'port must be a number from 1 to 65535 (got "10.0.0.1:70000")'),
    Case("endpoint-ipv6-no-brackets", doc(*PLAIN, 'remote = "fd00::1:5"'), 6,
         "tunnels.t.remote", 'IPv6 address must be written in brackets, as "[ADDR]:PORT"'),
    Case("endpoint-hostname-in-listen", doc(*PLAIN, 'listen = "example.org:5"'), 6,
         "tunnels.t.listen", "a listen address cannot be a host name"),
    Case("endpoint-bad-hostname", doc(*PLAIN, 'remote = "bad_host!:5"'), 6,
         "tunnels.t.remote", '"bad_host!" is neither an IP address nor a host name'),
    # --- addresses, routes, MACs, names ---
    Case("address-without-prefix", doc(*TUN, 'addresses = ["10.0.0.1"]'), 3,
         "interfaces.tun0.addresses[0]", "expected ADDRESS/PREFIXLEN",
         whole='t.toml:3: interfaces.tun0.addresses[0]: expected ADDRESS/PREFIXLEN, like '
               '10.0.0.1/24 or fd00::1/64 (got "10.0.0.1")'),
    Case("address-bad-ip", doc(*TUN, 'addresses = ["10.0.0.1/24", "10.0.0.256/24"]'), 3,
         "interfaces.tun0.addresses[1]", 'is not an IP address with a prefix length'),
    Case("address-twice", doc(*TUN, 'addresses = ["10.0.0.1/24", "10.0.0.1/24"]'), 3,
         "interfaces.tun0.addresses", "lists the address 10.0.0.1/24 twice"),
    Case("route-host-bits", doc(*TUN, 'routes = ["10.1.2.3/16"]'), 3,
         "interfaces.tun0.routes[0]",
         'has host bits set (expected a network, like 10.1.0.0/16) (got "10.1.2.3/16")'),
    Case("mac-malformed", doc(*TAP, 'mac = "02:00:00:00:01"'), 3, "interfaces.tap0.mac",
         "expected six hex octets like 02:00:00:00:00:01"),
    Case("mac-multicast", doc(*TAP, 'mac = "01:00:5e:00:00:01"'), 3, "interfaces.tap0.mac",
         "must be a unicast address"),
    Case("mac-on-tun", doc(*TUN, 'mac = "02:00:00:00:00:01"'), 3, "interfaces.tun0.mac",
         'only valid with mode = "tap"',
         whole='t.toml:3: interfaces.tun0.mac: only valid with mode = "tap" (this interface '
               'is "tun") (got "02:00:00:00:00:01")'),
    Case("bridge-on-tun", doc(*TUN, 'bridge = "br0"'), 3, "interfaces.tun0.bridge",
         'only valid with mode = "tap"'),
    Case("bridge-name-too-long", doc(*TAP, 'bridge = "bridge-name-16by"'), 3,
         "interfaces.tap0.bridge", "bridge name must be at most 15 bytes (is 16)"),
    Case("ifname-16-bytes", doc("[interfaces.abcdefghijklmnop]", 'mode = "tun"'), 1,
         "interfaces.abcdefghijklmnop", "interface name must be at most 15 bytes (is 16)"),
    Case("ifname-multibyte-16-bytes", doc('[interfaces."tün-0123456789a"]', 'mode = "tun"'), 1,
         'interfaces."tün-0123456789a"', "at most 15 bytes (is 16)"),
    Case("ifname-slash", doc('[interfaces."a/b"]', 'mode = "tun"'), 1, 'interfaces."a/b"',
         "must not contain whitespace, '/' or ':'",
         whole="t.toml:1: interfaces.\"a/b\": interface name must not contain whitespace, "
               "'/' or ':' (got \"a/b\")"),
    Case("tunnel-name-bad", doc(*TUN, '[tunnels."a b"]', 'interface = "tun0"',
                                'encryption = "none"', 'listen = "10.0.0.1:5"'), 3,
         'tunnels."a b"', "tunnel name must be 1 to 64 of"),
    # --- cross references ---
    Case("tunnel-missing-interface",
         doc(*TUN, "[tunnels.t]", 'interface = "tun9"', 'encryption = "none"',
             'listen = "10.0.0.1:5"'), 4, "tunnels.t.interface",
         'no interface of that name (expected one of: tun0) (got "tun9")'),
    Case("tunnel-no-interfaces-at-all",
         doc("[tunnels.t]", 'interface = "tun0"', 'encryption = "none"',
             'listen = "10.0.0.1:5"'), 2, "tunnels.t.interface", "no [interfaces] are defined"),
    Case("two-tunnels-one-interface",
         doc(*PLAIN, 'listen = "10.0.0.1:5"', "[tunnels.u]", 'interface = "tun0"',
             'encryption = "none"', 'listen = "10.0.0.1:6"'), 8, "tunnels.u.interface",
         'already used by tunnel "t" (one tunnel per interface) (got "tun0")'),
    Case("keys-with-encryption-none", doc(*PLAIN, 'listen = "10.0.0.1:5"',
                                          'peer_public_key = "x"'), 7,
         "tunnels.t.peer_public_key", 'only valid with encryption = "wireguard"'),
    # --- users, groups, paths, timing ---
    Case("unknown-owner", doc(*TUN, f'owner = "{NO_USER}"'), 3, "interfaces.tun0.owner",
         "no such user on this system",
         whole=f't.toml:3: interfaces.tun0.owner: no such user on this system (got "{NO_USER}")'),
    Case("unknown-group", doc(*TUN, f'group = "{NO_GROUP}"'), 3, "interfaces.tun0.group",
         "no such group on this system"),
    Case("owner-uid-negative", doc(*TUN, "owner = -1"), 3, "interfaces.tun0.owner",
         "user id must be from 0 to 4294967294 (got -1)"),
    Case("unknown-control-group", doc("[daemon]", f'control_group = "{NO_GROUP}"'), 2,
         "daemon.control_group", "no such group on this system"),
    Case("control-socket-relative", doc("[daemon]", 'control_socket = "run/tund.sock"'), 2,
         "daemon.control_socket", "must be an absolute path",
         whole='t.toml:2: daemon.control_socket: must be an absolute path (starting with /) '
               '(got "run/tund.sock")'),
    Case("control-socket-too-long", doc("[daemon]", f'control_socket = "/{"x" * 107}"'), 2,
         "daemon.control_socket", "must be at most 107 bytes"),
    Case("reconnect-min-over-max",
         doc(*PLAIN, 'remote = "10.0.0.1:5"', "reconnect_min = 20", "reconnect_max = 5.0"), 7,
         "tunnels.t.reconnect_min", "must not exceed reconnect_max = 5.0 (got 20)"),
    Case("backoff-min-over-max",
         doc("[daemon]", "restart_backoff_min = 30", "restart_backoff_max = 3"), 2,
         "daemon.restart_backoff_min", "must not exceed restart_backoff_max = 3 (got 30)"),
    Case("seconds-zero", doc("[daemon]", "ping_interval = 0"), 2, "daemon.ping_interval",
         "must be greater than 0 (got 0)"),
    Case("line-separators-in-comments-do-not-shift-lines",
         doc(*TUN, "# caf\u00e9 \u2028 \x85 na\u00efve", "mtu = 1"), 4,
         "interfaces.tun0.mtu", "must be at least 68 (got 1)"),
    Case("unprintable-key-is-escaped", doc("[daemon]", 'log_level = "info"', '"a\\u0085b" = 1'),
         3, 'daemon."a\\u0085b"', "unknown key"),
    # --- parser traps ---
    Case("deep-nesting", doc("[daemon]", "a = " + "[" * 600 + "]" * 600), 2, "",
         "nested too deeply"),
    Case("huge-integer", doc(*TUN, "mtu = " + "9" * 4400), 3, "", "integer too long to parse"),
    Case("float-inf", doc("[daemon]", "ping_interval = 1e99999"), 2, "daemon.ping_interval",
         "must be a finite number (got inf)"),
    Case("float-nan", doc("[daemon]", "crash_window = nan"), 2, "daemon.crash_window",
         "must be a finite number (got nan)"),
]


def issues_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        parse_text(text, NAME)
    return info.value.issues


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES)
    assert sum(c.whole is not None for c in CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_config_gives_one_located_issue(case: Case) -> None:
    issues = issues_of(case.text)
    rendered = "\n".join(map(str, issues))
    assert len(issues) == 1, rendered
    (issue,) = issues
    assert (issue.file, issue.line, issue.path) == (NAME, case.line, case.path), rendered
    assert case.fragment in issue.message, rendered
    assert str(issue).count("(got ") <= 1, rendered
    assert "Traceback" not in rendered and "pydantic" not in rendered
    assert "Input should" not in rendered and "Value error" not in rendered
    if case.whole is not None:
        assert str(issue) == case.whole


def test_several_errors_are_all_reported_in_line_order() -> None:
    text = doc(
        "[daemon]",                                      # 1
        'control_socket = "relative.sock"',              # 2  relative
        'log_level = "loud"',                            # 3  bad literal
        "[interfaces.tun0]",                             # 4
        'mode = "tun"',                                  # 5
        "mtu = 10",                                      # 6  too small
        'mac = "02:00:00:00:00:01"',                     # 7  tap-only key on tun
        "[tunnels.t]",                                   # 8
        'interface = "nope0"',                           # 9  missing interface
        'encryption = "none"',                           # 10
        'listen = "10.0.0.1:0"',                         # 11 port 0
        "colour = 3",                                    # 12 unknown key
    )
    issues = issues_of(text)
    assert [(i.line, i.path) for i in issues] == [
        (2, "daemon.control_socket"),
        (3, "daemon.log_level"),
        (6, "interfaces.tun0.mtu"),
        (7, "interfaces.tun0.mac"),
        (9, "tunnels.t.interface"),
        (11, "tunnels.t.listen"),
        (12, "tunnels.t.colour"),
    ]
    assert str(ConfigError(issues)).count("\n") == 6


def test_wireguard_default_needs_both_keys_located_at_the_tunnel() -> None:
    issues = issues_of(doc(*TUN, "[tunnels.t]", 'interface = "tun0"', 'listen = "10.0.0.1:5"'))
    assert [(i.line, i.path) for i in issues] == [
        (3, "tunnels.t.peer_public_key"), (3, "tunnels.t.private_key_file")]
    assert all('encryption = "none"' in i.message for i in issues)


def test_long_values_are_shortened() -> None:
    (issue,) = issues_of(doc(*TUN, f'mode2 = "{"x" * 500}"', ))
    assert len(str(issue)) < 400
    (issue,) = issues_of(doc(*TUN, f'mtu = "{"x" * 500}"'))
    assert issue.message.endswith('...")') and len(issue.message) < 140


# --------------------------------------------------------------------------- files


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def load_issues(main: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load(main)
    return info.value.issues


def test_name_defined_in_two_dropins_names_both_files(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", doc(*TUN))
    a = write(tmp_path / "tunnels.d" / "10-a.toml", doc("", '[interfaces.tap0]', 'mode = "tap"'))
    b = write(tmp_path / "tunnels.d" / "20-b.toml", doc('[interfaces.tap0]', 'mode = "tap"'))
    (issue,) = load_issues(main)
    assert (issue.file, issue.line, issue.path) == (str(b), 1, "interfaces.tap0")
    assert str(issue) == (f"{b}:1: interfaces.tap0: name defined twice: first in {a}:2, "
                          f"again in {b}")


def test_name_in_main_file_and_dropin(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", doc(*TUN))
    b = write(tmp_path / "tunnels.d" / "x.toml", doc('[interfaces.tun0]', 'mode = "tap"'))
    (issue,) = load_issues(main)
    assert issue.file == str(b) and f"first in {main}:1" in issue.message


def test_daemon_key_twice_across_files(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", doc("[daemon]", 'log_level = "info"'))
    d = write(tmp_path / "tunnels.d" / "log.toml", doc("[daemon]", 'log_level = "debug"'))
    (issue,) = load_issues(main)
    assert str(issue) == (f"{d}:2: daemon.log_level: key defined twice: first in {main}:2, "
                          f"again in {d}")


def test_issue_in_dropin_is_located_in_the_dropin(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", doc(*TUN))
    d = write(tmp_path / "tunnels.d" / "t.toml",
              doc("# the tunnel", "[tunnels.t]", 'interface = "tun0"', 'encryption = "none"',
                  'remote = "10.0.0.1:99999"'))
    (issue,) = load_issues(main)
    assert (issue.file, issue.line, issue.path) == (str(d), 5, "tunnels.t.remote")


def test_issues_are_sorted_in_load_order(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", doc("[daemon]", "crash_limit = 0"))
    d = write(tmp_path / "tunnels.d" / "a.toml", doc(*TUN, "mtu = 1"))
    issues = load_issues(main)
    assert [i.file for i in issues] == [str(main), str(d)]


def test_unreadable_file(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", doc(*TUN))
    (tmp_path / "tunnels.d" / "dir.toml").mkdir(parents=True)  # unreadable even for root
    (issue,) = load_issues(main)
    assert issue.file == str(tmp_path / "tunnels.d" / "dir.toml")
    assert issue.message == "cannot read: Is a directory"


def test_missing_main_file(tmp_path: Path) -> None:
    (issue,) = load_issues(tmp_path / "nope.toml")
    assert str(issue) == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"


def test_unreadable_mode() -> None:
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="tund-cfg-"))  # under /tmp: traversable by anyone
    top.chmod(0o755)
    main = write(top / "tunnels.toml", doc(*TUN))
    main.chmod(0)
    # root reads files whatever their mode: read as an ordinary user (nobody) then
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)
    try:
        (issue,) = load_issues(main)
    finally:
        if as_root:
            os.seteuid(0)
        shutil.rmtree(top)
    assert issue.message == "cannot read: Permission denied"


def test_non_utf8_file_is_located(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", b'[interfaces.tun0]\nmode = "tun"\n# caf\xe9\n')
    (issue,) = load_issues(main)
    assert (issue.file, issue.line, issue.path) == (str(main), 3, "")
    assert issue.message.startswith("not UTF-8 text: byte 0xe9 at column 6")


def test_file_level_problems_in_every_file_are_reported(tmp_path: Path) -> None:
    main = write(tmp_path / "tunnels.toml", doc("[daemon", ""))
    d1 = write(tmp_path / "tunnels.d" / "1.toml", b"\xff")
    d2 = write(tmp_path / "tunnels.d" / "2.toml", doc("x = " + "{ a = " * 700))
    issues = load_issues(main)
    assert [(i.file, i.line) for i in issues] == [(str(main), 1), (str(d1), 1), (str(d2), 1)]
