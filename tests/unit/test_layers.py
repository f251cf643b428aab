"""The layering of ``tund/`` stays as docs/architecture.md draws it.

Every import of every module under ``tund/`` is read from its source (``ast``: top-level,
inside functions and under ``TYPE_CHECKING`` alike), and the test fails on

* an import circle between tund modules (a package counts as its ``__init__``);
* a forbidden direction: the data path (``tund.relay``) importing the control plane; the
  control plane reaching into the data path other than through ``tund.workerapi``; the
  pure cores (config, plan) importing I/O.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "tund"

#: (importer prefix, imported prefix, why it is forbidden)
FORBIDDEN = (
    ("tund.relay", "tund.daemon", "the data path never imports the daemon"),
    ("tund.relay", "tund.control", "the data path never imports the control socket"),
    ("tund.relay", "tund.supervise", "the data path never imports supervision"),
    ("tund.relay", "tund.ctl", "the data path never imports the CLI"),
    ("tund.relay", "tund.config", "workers get a WorkerSpec, never the configuration"),
    ("tund.relay", "tund.netdev", "workers get fds, they do not make kernel objects"),
    ("tund.workerapi", "tund.relay", "the contract imports neither side"),
    ("tund.workerapi", "tund.daemon", "the contract imports neither side"),
    ("tund.workerapi", "tund.supervise", "the contract imports neither side"),
    ("tund.workerapi", "tund.config", "the contract imports neither side"),
    ("tund.daemon", "tund.relay", "the daemon reaches workers only through tund.workerapi"),
    ("tund.supervise", "tund.relay", "supervision reaches workers only through tund.workerapi"),
    ("tund.control", "tund.relay", "the control socket never imports the data path"),
    ("tund.ctl", "tund.relay", "the CLI never imports the data path"),
    ("tund.ctl", "tund.daemon", "the CLI talks to the daemon over the socket only"),
    ("tund.ctl", "tund.supervise", "the CLI talks to the daemon over the socket only"),
    ("tund.config", "tund.daemon", "config is a pure core"),
    ("tund.config", "tund.netdev", "config is a pure core"),
    ("tund.config", "tund.supervise", "config is a pure core"),
    ("tund.config", "tund.control", "config is a pure core"),
    ("tund.config", "tund.relay", "config is a pure core"),
    ("tund.keys", "tund.relay", "key files are the control plane's; the worker gets keys"),
    ("tund.daemon.plan", "tund.netdev", "planning is pure: it touches nothing"),
    ("tund.daemon.plan", "tund.supervise", "planning is pure: it touches nothing"),
    ("tund.daemon.plan", "tund.daemon.engine", "planning is pure: it touches nothing"),
)
#: standard modules that do I/O; the pure cores import none of them
IO_MODULES = ("socket", "subprocess", "asyncio", "selectors", "fcntl", "ctypes")
PURE = ("tund.config", "tund.daemon.plan")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[str]:
    """Every module name ``path`` imports (``from X import Y`` gives X, and X.Y when that
    is a module of tund)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            yield base
            for a in node.names:
                yield f"{base}.{a.name}"


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules and i != m}
            for m, p in modules.items()}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_every_module_is_seen() -> None:
    g = graph()
    assert "tund.relay.loop.pump" in g and "tund.daemon.engine" in g
    assert "tund.relay.loop.poller" in g["tund.relay.loop.pump"]


def test_no_import_circles() -> None:
    g = graph()
    # a package's __init__ importing its own submodules is not a circle of the layering
    edges = {m: {i for i in deps if not _within(i, m)} for m, deps in g.items()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                circles.append([*stack[stack.index(n):], n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize(("importer", "imported", "why"), FORBIDDEN)
def test_no_forbidden_direction(importer: str, imported: str, why: str) -> None:
    bad = sorted(f"{m} imports {i}" for m, deps in graph().items() if _within(m, importer)
                 for i in deps if _within(i, imported))
    assert not bad, f"{why}:\n" + "\n".join(bad)


@pytest.mark.parametrize("core", PURE)
def test_pure_cores_import_no_io(core: str) -> None:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    bad = sorted(f"{m} imports {i}" for m, p in modules.items() if _within(m, core)
                 for i in imports_of(p) if i.split(".")[0] in IO_MODULES)
    assert not bad, f"{core} must not do I/O:\n" + "\n".join(bad)


def test_the_checker_sees_a_circle_and_a_forbidden_import(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks can fail: a fake tree with a circle and a relay -> daemon import."""
    fake = tmp_path / "tund"
    for rel, text in {"__init__.py": "", "relay/__init__.py": "", "daemon/__init__.py": "",
                      "relay/a.py": "from tund.daemon import b\n",
                      "daemon/b.py": "import tund.relay.a\n"}.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake)
    with pytest.raises(AssertionError, match="import circles"):
        test_no_import_circles()
    with pytest.raises(AssertionError, match="never imports the daemon"):
        test_no_forbidden_direction("tund.relay", "tund.daemon",
                                    "the data path never imports the daemon")
