"""Every module's `__all__` names only what exists, and only what something else uses.

A name is used when another file (the package, the tests, the benchmarks or the scripts)
imports it from the module, reads it as an attribute (`wakeup.agent_log_path`) or names it
in a string (`monkeypatch.setattr(module, "NAME", ...)`). The names below are exported on
purpose though nothing here reads them yet.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterable
from pathlib import Path

import pytest

import oneiric_session

PACKAGE = Path(oneiric_session.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[1]  # the checkout, whichever copy of the package is imported
# Exported for callers outside this repository: the types of public results and the wire's constants.
PUBLIC_UNUSED = {
    "oneiric_session": {"ConfigError", "activate_oneiric"},  # the package's lazy names; the activation call
    "oneiric_session.shell.oneiric_shells": {"is_active"},
    "oneiric_session.agent.pipeline": {"ACK_BATCH_ROWS", "PIPELINE_SAFE_SERVERS"},
    "oneiric_session.transport.answers": {"MAX_SESSION_ID_CHARS"},
    "oneiric_session.transport.bounded_http": {"AnswerTooLargeError"},
    "oneiric_session.config": {"LoadedConfig", "SessionBuddySettings"},  # load_config and its result
    "oneiric_session.agent": {"ABNORMAL_EXIT_REASON", "ReplayResult"},
    "oneiric_session.config.shell_view": {"CACHE_DIR_NAME"},
    "oneiric_session.tracking.events": {"EVENT_VERSION"},
    "oneiric_session.tracking.providers.session_buddy": {"HANDLE_PREFIX"},
    "oneiric_session.common.safetext": {"DEFAULT_TERMINAL_CHARS"},
    "oneiric_session.spool": {
        "DEFAULT_MAX_AGE_SECONDS",
        "DEFAULT_MAX_BYTES",
        "DEFAULT_MAX_ROWS",
        "SpoolStats",
    },
}


def _modules() -> list[str]:
    found = pkgutil.walk_packages([str(PACKAGE)], "oneiric_session.")
    # __main__ runs the command line when imported.
    return ["oneiric_session", *sorted(m.name for m in found if m.name != "oneiric_session.__main__")]


def _exports(module: str) -> list[str] | None:
    exported = getattr(importlib.import_module(module), "__all__", None)
    return None if exported is None else list(exported)


MODULES = [m for m in _modules() if _exports(m) is not None]


@pytest.mark.parametrize("module", MODULES)
def test_all_names_only_what_the_module_has(module: str) -> None:
    exported = _exports(module)
    assert exported is not None
    assert all(isinstance(name, str) for name in exported)
    assert len(set(exported)) == len(exported), "a name is listed twice"
    imported = importlib.import_module(module)
    assert [name for name in exported if not hasattr(imported, name)] == []


def _uses() -> dict[Path, tuple[set[tuple[str, str]], set[str]]]:
    """Per file: (module, name) pairs imported with `from module import name`, and every attribute
    name read or string written."""
    found: dict[Path, tuple[set[tuple[str, str]], set[str]]] = {}
    # The package where it is imported from (a non-editable install too), the rest in the checkout.
    folders = [PACKAGE, REPO / "tests", REPO / "benchmarks", REPO / "scripts"]
    for folder in folders:
        for path in folder.glob("**/*.py"):
            if path.resolve() == Path(__file__).resolve():
                continue  # PUBLIC_UNUSED names them all
            imports: set[tuple[str, str]] = set()
            words: set[str] = set()
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            listed = {id(node) for stmt in ast.walk(tree) if _is_all(stmt) for node in ast.walk(stmt)}
            for node in ast.walk(tree):
                if id(node) in listed:
                    continue  # another module's __all__ lists its own names, it does not use them
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imports.update((node.module, alias.name) for alias in node.names)
                elif isinstance(node, ast.Attribute):
                    words.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    words.add(node.value)
            found[path.resolve()] = (imports, words)
    return found


def _is_all(node: ast.AST) -> bool:
    return isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign) and any(
        isinstance(target, ast.Name) and target.id == "__all__"
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
    )


def _used_elsewhere(
    module: str, names: Iterable[str], uses: dict[Path, tuple[set[tuple[str, str]], set[str]]]
) -> list[str]:
    """The names that a file other than the module's own imports from it, reads or names."""
    base = PACKAGE.parent.joinpath(*module.split("."))
    own = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    return sorted(
        name
        for name in names
        if any(
            (module, name) in imports or name in words
            for path, (imports, words) in uses.items()
            if path != own
        )
    )


def test_all_names_only_what_something_else_uses() -> None:
    uses = _uses()
    unused = {}
    for module in MODULES:
        exported = set(_exports(module) or ()) - PUBLIC_UNUSED.get(module, set())
        unused[module] = sorted(exported - set(_used_elsewhere(module, exported, uses)))
    assert {module: names for module, names in unused.items() if names} == {}


def test_the_names_kept_for_outside_callers_are_still_exported_and_unused() -> None:
    """The exception list stays true: a name leaves it once it is used or no longer exported."""
    uses = _uses()
    for module, names in PUBLIC_UNUSED.items():
        exported = set(_exports(module) or ())
        assert names <= exported, f"{module}: {sorted(names - exported)} not exported any more"
        used = _used_elsewhere(module, names, uses)
        assert used == [], f"{module}: {used} are used now; drop them from PUBLIC_UNUSED"


# Issue 11's bounds: one job per module shows in its size.
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def test_no_module_is_over_400_lines_and_no_class_over_250() -> None:
    package = Path(oneiric_session.__file__).parent
    over = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(package)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            over.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    over.append(f"{name}: class {node.name}: {lines} lines")
    assert not over, over
