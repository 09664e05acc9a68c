"""The layers the design depends on: the shell side stays standard library, the transport knows no spool.

A shell pays for every module it imports (issue 5: +5 ms at start-up), so nothing a shell
imports may pull in mcp, pydantic, anyio, asyncio or tenacity. Each check runs in a fresh
interpreter: this process has imported all of them long ago.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import oneiric_session

PACKAGE = Path(oneiric_session.__file__).resolve().parent
HEAVY = ("mcp", "pydantic", "pydantic_settings", "anyio", "asyncio", "tenacity")
# What a shell process imports: the providers, the emitter and AdminShell, the tracker protocol,
# events, the spool's outbox (the shell's writes), the agent's wake-up, and the settings' cached view.
SHELL_SIDE = (
    "oneiric_session",
    "oneiric_session.tracking.providers.noop",
    "oneiric_session.tracking.providers.memory",
    "oneiric_session.tracking.providers.session_buddy",
    "oneiric_session.shell.emitter",
    "oneiric_session.shell",
    "oneiric_session.shell.exit_signals",
    "oneiric_session.tracking.tracker",
    "oneiric_session.tracking.registry",
    "oneiric_session.tracking.events",
    "oneiric_session.tracking.metadata",
    "oneiric_session.tracking.limits",
    "oneiric_session.tracking.destination",
    "oneiric_session.tracking.procinfo",
    "oneiric_session.common.safetext",
    "oneiric_session.spool",
    "oneiric_session.spool.outbox",
    "oneiric_session.wakeup",
    "oneiric_session.wakeup.paths",
    "oneiric_session.wakeup.message",
    "oneiric_session.wakeup.waker",
    "oneiric_session.wakeup.spawn",
    "oneiric_session.wakeup.lock",
    "oneiric_session.wakeup.listener",  # the agent's, but loaded with the package
    "oneiric_session.config.sources",
    "oneiric_session.config.files",
    "oneiric_session.config.shell_view",
)
# Standard library only too, though no shell loads them: the spool's database side, which the
# agent and the command line use (`status` reads it without importing mcp or pydantic).
DATABASE_SIDE = (
    "oneiric_session.common.sqlite_files",
    "oneiric_session.spool.schema",
    "oneiric_session.spool.transaction",
    "oneiric_session.spool.opening",
    "oneiric_session.spool.recovery",
    "oneiric_session.spool.connection",
    "oneiric_session.spool.records",
    "oneiric_session.spool.retention",
    "oneiric_session.spool.intake",
    "oneiric_session.spool.outbox_reader",
    "oneiric_session.spool.rejoin",
    "oneiric_session.agent.status",
)
# A shell that uses a tracker, not only imports it (no settings, so nothing validates them).
SHELL_USE = {
    "noop tracker start and end": (
        "from oneiric_session.tracking.providers.noop import NoopTracker\n"
        "t = NoopTracker(); t.end(t.start(component_name='demo', shell_type='TestShell')); t.close()"
    ),
    "memory tracker start and end": (
        "from oneiric_session.tracking.providers.memory import MemoryTracker\n"
        "t = MemoryTracker(); t.end(t.start(component_name='demo', shell_type='TestShell')); t.close()"
    ),
}
TRANSPORT_MUST_NOT_IMPORT = ("oneiric_session.spool", "oneiric_session.agent")
# The spool's database and the agent: a shell writes through spool.outbox and never loads these
# (no `sqlite3` in a shell: it costs a fresh process ~2 ms to import, and a transaction ~1.5 ms).
AGENT_SIDE = (
    "sqlite3",
    "oneiric_session.agent",
    "oneiric_session.agent.core",
    "oneiric_session.spool.connection",
    "oneiric_session.spool.intake",
    "oneiric_session.spool.due",
    "oneiric_session.spool.outcomes",
    "oneiric_session.spool.queue",
    "oneiric_session.spool.full",
)
SHELL_WRITES = (
    "import tempfile, pathlib\n"
    "from oneiric_session.tracking.destination import Destination\n"
    "from oneiric_session.spool.outbox import Outbox\n"
    "outbox = Outbox(pathlib.Path(tempfile.mkdtemp()) / 'spool.sqlite3', caps=(10, 10**6, 86400.0))\n"
    "event = {'event_id': '00000000-0000-4000-8000-000000000001', 'event_type': 'session_start'}\n"
    "assert outbox.append_start('local-1', Destination(command='x'), event, pid=None,"
    " pid_start_time=None, boot_id=None)\n"
    "assert outbox.append_end('local-1', Destination(command='x'), {'event_type': 'session_end'})\n"
)


def _imported_after(code: str) -> list[str]:
    """The HEAVY and no-go modules in sys.modules after running `code` in a fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted(n for n in {HEAVY + TRANSPORT_MUST_NOT_IMPORT!r} if n in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize("module", SHELL_SIDE + DATABASE_SIDE)
def test_importing_a_shell_side_module_loads_no_heavy_dependency(module: str) -> None:
    loaded = _imported_after(f"import {module}")
    assert [name for name in loaded if name in HEAVY] == [], f"{module} imports {loaded}"


@pytest.mark.parametrize("use", sorted(SHELL_USE))
def test_using_a_shell_side_tracker_loads_no_heavy_dependency(use: str) -> None:
    loaded = _imported_after(SHELL_USE[use])
    assert [name for name in loaded if name in HEAVY] == [], f"{use} imports {loaded}"


@pytest.mark.parametrize("code", [f"import {m}" for m in SHELL_SIDE] + [SHELL_WRITES])
def test_the_shell_side_never_loads_the_agents_queue(code: str) -> None:
    probe = f"{code}\nimport sys\nprint(sorted(n for n in {AGENT_SIDE!r} if n in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", code


def test_the_shell_side_defines_its_records_cheaply() -> None:
    """No NamedTuple nor dataclass among the classes a shell defines, and no `dataclasses`: a
    NamedTuple costs a shell 0.1-0.3 ms to define, `dataclasses` ~6 ms to import (common/record.py).
    The `memory` provider is for tests: what they read of it stays a dataclass (`dataclasses.replace`)."""
    in_production = [m for m in SHELL_SIDE if m != "oneiric_session.tracking.providers.memory"]
    probe = "\n".join(f"import {m}" for m in in_production) + (
        "\nimport sys\n"
        "found = sorted(f'{name}.{k}' for name, m in list(sys.modules.items())"
        " if name.startswith('oneiric_session')"
        " for k, v in vars(m).items() if isinstance(v, type) and v.__module__ == name"
        " and ((issubclass(v, tuple) and hasattr(v, '_make')) or hasattr(v, '__dataclass_fields__')))\n"
        "print(found + (['dataclasses'] if 'dataclasses' in sys.modules else []))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Python 3.14's own `logging` loads `dataclasses` (traceback -> _colorize): every shell pays it.
    stdlib = "import logging, sys; print('dataclasses' in sys.modules)"
    logging_loads_it = subprocess.run(
        [sys.executable, "-c", stdlib], capture_output=True, text=True, timeout=60
    )
    expected = "['dataclasses']" if logging_loads_it.stdout.strip() == "True" else "[]"
    assert done.stdout.splitlines()[-1] == expected


def test_the_transport_never_imports_the_spool_or_the_agent() -> None:
    """Neither at import time (a fresh interpreter) nor anywhere in its source (lazy imports too)."""
    modules = sorted(
        "oneiric_session.transport" + ("" if p.stem == "__init__" else f".{p.stem}")
        for p in (PACKAGE / "transport").glob("*.py")
    )
    loaded = _imported_after("\n".join(f"import {m}" for m in modules))
    assert [name for name in loaded if name in TRANSPORT_MUST_NOT_IMPORT] == []
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {name}"
        for path in sorted((PACKAGE / "transport").glob("*.py"))
        for line, name in _imports(path)
        if any(name == banned or name.startswith(banned + ".") for banned in TRANSPORT_MUST_NOT_IMPORT)
    ]
    assert found == []


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an `import` or `from ... import` in the file names (`from pkg import mod` as pkg.mod)."""
    names: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.lineno, node.module))
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return names


# The settings are read by every side; they depend on no side's machinery.
CONFIG_MUST_NOT_IMPORT = (
    "oneiric_session.wakeup",
    "oneiric_session.spool",
    "oneiric_session.agent",
    "oneiric_session.transport",
    "oneiric_session.tracking.providers",
    "oneiric_session.shell",
    "oneiric_session.shell.emitter",
    "oneiric_session.server",
)


def test_the_settings_import_no_sides_machinery() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {name}"
        for path in sorted((PACKAGE / "config").glob("*.py"))
        for line, name in _imports(path)
        if any(name == banned or name.startswith(banned + ".") for banned in CONFIG_MUST_NOT_IMPORT)
    ]
    assert found == []


def test_no_two_modules_import_each_other_even_lazily() -> None:
    """No import cycle in the package, counting imports inside functions and under TYPE_CHECKING."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {
        module: {name for _, name in _imports(path) if name in modules and name != module}
        for module, path in modules.items()
    }
    assert _cycles(graph) == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found
