"""``man tundctl`` and the bash completion know every command the CLI has, with its options
(issue 15.13).

The COMMANDS section of packaging/man/tundctl.8 has one ``.TP`` entry per command, in the
order of :data:`tund.ctl.main.COMMANDS`; each entry names every option its command's
``--help`` lists (``--socket`` and ``--help`` are in OPTIONS, for all of them).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tund.ctl import main as ctl

MAN = Path(__file__).resolve().parents[2] / "packaging/man/tundctl.8"
_FONT = re.compile(r"\\f[BIRP]")
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def plain(roff: str) -> str:
    """Text of roff source, enough to compare words: escapes and macro names gone."""
    lines = []
    for line in roff.splitlines():
        if line.startswith("."):
            line = line.split(" ", 1)[1] if " " in line else ""
        lines.append(_FONT.sub("", line).replace("\\-", "-").replace('"', ""))
    return "\n".join(lines)


def sections() -> dict[str, str]:
    out: dict[str, str] = {}
    name = ""
    for line in MAN.read_text().splitlines():
        if line.startswith(".SH "):
            name = line[4:].strip().strip('"')
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return out


def entries() -> list[tuple[str, str]]:
    """(command name, plain text of its entry) for each ``.TP`` of COMMANDS."""
    out = []
    for chunk in sections()["COMMANDS"].split(".TP\n")[1:]:
        text = plain(chunk)
        out.append((text.split()[0], text))
    return out


def options_of(name: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The options ``tundctl NAME --help`` lists (``help --help`` is the global usage)."""
    if name == "help":
        return set()
    capsys.readouterr()
    assert ctl.main([name, "--help"]) == 0
    return set(_OPTION.findall(capsys.readouterr().out)) - {"--help", "--socket"}


def test_man_page_lists_every_command_in_order() -> None:
    assert [n for n, _ in entries()] == [c.name for c in ctl.COMMANDS]


@pytest.mark.parametrize("command", [c.name for c in ctl.COMMANDS])
def test_man_page_names_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = dict(entries())[command]
    missing = sorted(o for o in options_of(command, capsys) if o not in text)
    assert not missing, f"man tundctl: {command} does not mention {missing}"


def test_global_options_and_exit_codes() -> None:
    s = sections()
    assert "--socket" in plain(s["OPTIONS"]) and "--json" in plain(s["OPTIONS"])
    codes = re.findall(r"^\.B ([0-9])$", s["EXIT STATUS"], re.M)
    assert codes == [str(c) for c in (ctl.EXIT_OK, ctl.EXIT_REFUSED, ctl.EXIT_USAGE,
                                      ctl.EXIT_UNREACHABLE)]


COMPLETION = MAN.parents[1] / "bash-completion/tundctl"


def test_bash_completion_knows_every_command_and_option(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = COMPLETION.read_text()
    m = re.search(r'local commands="([^"]*)"', text)
    assert m is not None
    assert m.group(1).split() == [c.name for c in ctl.COMMANDS]
    for c in ctl.COMMANDS:
        missing = sorted(o for o in options_of(c.name, capsys) if o not in text)
        assert not missing, f"bash completion: {c.name} lacks {missing}"


def test_bash_completion_parses() -> None:
    import shutil
    import subprocess

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    p = subprocess.run([bash, "-n", str(COMPLETION)], capture_output=True, text=True,
                       timeout=10)
    assert p.returncode == 0, p.stderr
